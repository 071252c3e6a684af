r"""A second opinion on the cameras the track rounds hold badly: registered again against the others held fixed.

The rounds of :func:`nerf_posefix.sfm.track_building.adjust_with_retriangulation` start from the input poses and adjust
every camera with its own tracks. Two ways a camera ends where its tracks hold it badly:

* **It slides.** A camera whose tracks are mostly two-view tracks with one partner, in a line of cameras (consecutive
  photos along a wall), has its distance along that line held only by its few multi-view tracks. From poses degrees
  off, the first, loose round can slide it along the line into a wrong minimum that its own two-view tracks then hold
  firmly: its covariance is small even with its points free. Seen on castle-P30's photos 0021-0029, 0000, 0001 from
  poses 2 deg / 3 % off (``benchmarks.small_captures``, window ``w11-20``, seed 1): 0024 slid 9.5 m along its line
  to 0025 in the first round, from an input 0.6 m off; the other cameras were 0.1-0.5 m off.
* **Its tracks are few.** Seen on the bundled toybox from 10 deg / 10 % off (``benchmarks.poses_from_anywhere``, seed
  2): 000.png ended 4.5-6.3 deg off on 41-44 observations (the median image has 170), called weak by its σ with the
  benchmark's shared features and held with its own.

After the rounds, :func:`reregister_outlying_moves`

1. asks about the cameras whose move from their input pose, as the shift of their image at their scene depth under
   the input poses (:func:`nerf_posefix.geometry.outliers.pose_change_px`), is an outlier among all the cameras'
   moves (:func:`nerf_posefix.geometry.outliers.outlier_threshold`: the rule of refine's flags, without its
   input-residual part); those the support stage calls weak by their uncertainty alone (at least
   :data:`~nerf_posefix.sfm.support.MIN_OBSERVATIONS` observations, in the largest group:
   :func:`nerf_posefix.sfm.support.image_support`); and those held by few tracks
   (:func:`nerf_posefix.sfm.frame_placement.thinly_held_frames`: under a quarter of the median image's observations)
   that do not look blurred (the blurred ones are the frame placement's); at most :data:`MAX_CAMERAS`, in that order;
2. registers them against the other cameras held at their adjusted poses
   (:func:`nerf_posefix.sfm.frame_placement.register_frames`: every track of the database triangulated without them,
   then COLMAP's absolute-pose registration, RANSAC PnP and a refinement, on points that the other cameras fix);
3. takes the registered pose of a camera when the registration holds it on more observations than the rounds
   did (:func:`nerf_posefix.sfm.frame_placement.placed_frame_held`) **and** it differs from the adjusted pose by more
   than :data:`DISAGREE_PX` (a camera whose input was far off registers where the rounds put it, and keeps its
   adjusted pose);
4. when it took any, runs the rounds again from the corrected poses at the schedule's last threshold and the final
   round (the gauge still on the input poses), so that the tracks the result carries agree with them.

Measured: castle's 0024 registers on 518 observations (the rounds held it on 233) and ends 0.02 m off; toybox's 000.png
on 159 (41), from 4.5 deg to 0.13 deg. Cost: one support estimate of the adjusted model (~2 s at 1000 images), a blur
estimate per thinly held frame, and, only when a camera is asked about, one triangulation of the database, a
registration per camera and two more rounds.

Conventions: poses are camera-to-world, OpenCV axes, in the input's world frame (the rounds' gauge); ``pycolmap`` is
imported inside the functions.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from nerf_posefix.geometry.outliers import outlier_threshold, pose_change_px
from nerf_posefix.io.camera_set import CameraSet, ImageCamera

if TYPE_CHECKING:
    import pycolmap

    from nerf_posefix.sfm.track_building import AdjustedTracks, TrackOptions

#: Most cameras given a second opinion (the largest moves first): each costs a registration, and an outlying move
#: is rare.
MAX_CAMERAS = 20
#: A registered pose replaces the adjusted one only when the two differ by more than this image shift (pixels at the
#: camera's scene depth): the registration's own threshold (:data:`nerf_posefix.sfm.frame_placement.PLACEMENT_REPROJ_PX`).
DISAGREE_PX = 4.0
#: Why a camera gets a second opinion: its move is an outlier, the tracks hold it by an uncertain pose, or by few tracks
#: (a sharp frame: the blurred ones are the frame placement's).
MOVED_FAR = "moved far more than the others"
UNCERTAIN = "uncertain pose"
THIN = "held by few tracks"


@dataclass
class SecondOpinion:
    """What the second opinion did for one camera: its move in the rounds (image shift, pixels), why it was asked
    (:data:`MOVED_FAR`, :data:`UNCERTAIN` or :data:`THIN`), whether it registered,
    its observations in the rounds and in the registration, how far the registered pose is from the adjusted one
    (image shift, pixels), whether the registered pose was taken, and why not."""

    name: str
    move_px: float
    why: str = ""
    registered: bool = False
    observations_before: int = 0
    observations: int = 0
    disagreement_px: float = float("nan")
    replaced: bool = False
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _filled_depths(depth: np.ndarray) -> Optional[np.ndarray]:
    """``depth [N]`` with its unknown (NaN, non-positive) entries set to the median of the known ones; None when none
    is known."""
    depth = np.asarray(depth, dtype=np.float64).copy()
    known = np.isfinite(depth) & (depth > 0)
    if not known.any():
        return None
    depth[~known] = float(np.median(depth[known]))
    return depth


def outlying_moves(names: list[str], input_c2w: np.ndarray, c2w: np.ndarray, depth: np.ndarray,
                   focal_px: np.ndarray) -> tuple[list[str], float, np.ndarray]:
    """The cameras whose move from ``input_c2w`` to ``c2w`` (``[N, 4, 4]`` camera-to-world, same frame), as an image
    shift at ``depth [N]`` (world units; NaN: the median depth) with ``focal_px [N]``, is an outlier among the ``N``
    moves: ``(names, threshold_px, move_px [N])``, the largest moves first; none (and NaN moves) when no depth is
    known."""
    filled = _filled_depths(depth)
    if filled is None:
        return [], float("inf"), np.full(len(names), np.nan)
    move_px = pose_change_px(input_c2w, c2w, filled, focal_px)  # [N]
    threshold, _ = outlier_threshold(move_px)
    order = np.argsort(-move_px)
    return [names[k] for k in order if move_px[k] > threshold], threshold, move_px


def _sharp_thin_frames(adjusted: "AdjustedTracks", images_dir: str | Path, cameras: dict[str, ImageCamera],
                       support: list) -> list[str]:
    """The frames the rounds hold by few tracks (:func:`nerf_posefix.sfm.frame_placement.thinly_held_frames`, not
    weak) that do not look blurred against their nearest neighbours (those are the frame placement's)."""
    from nerf_posefix.sfm import blur_matching as bm
    from nerf_posefix.sfm.frame_placement import thinly_held_frames

    observations = {s.name: s.observations for s in support}
    largest = {s.name for s in support if s.group == 0}  # the support's groups: track_components' order, largest first
    weak = {s.name for s in support if s.weak}
    thin = [n for n in thinly_held_frames(observations, largest) if n not in weak]
    if not thin:
        return []
    partners = bm.nearest_partners(adjusted.names, thin, adjusted.c2w)
    cache: dict[str, np.ndarray] = {}
    return [n for n in thin if partners[n]
            and bm.nearest_level(bm.frame_blur_px(Path(images_dir), cameras, n, partners[n], cache)) is None]


def reregister_outlying_moves(
    database: str | Path, images_dir: str | Path, adjusted: "AdjustedTracks", posed: CameraSet, options: "TrackOptions",
    input_tracks: Optional["pycolmap.Reconstruction"] = None, cameras: Optional[dict[str, ImageCamera]] = None,
    log: Optional[Callable[[str], None]] = None, verbose: bool = False,
) -> tuple["AdjustedTracks", list[SecondOpinion]]:
    """Steps 1-4 of the module docstring on the rounds' result ``adjusted`` (an
    :class:`~nerf_posefix.sfm.track_building.AdjustedTracks` of the track database ``database``'s images, started from
    ``posed``: camera-to-world, OpenCV, the input frame) with the rounds' ``options``
    (:class:`~nerf_posefix.sfm.track_building.TrackOptions`). Returns the result (``adjusted`` itself when no pose
    was taken; else the rounds re-run from the corrected poses, their gauge fixed on ``posed`` as the first rounds',
    with ``adjusted``'s rounds followed by the new ones) and what was done per camera. ``input_tracks``: the tracks triangulated with the input
    poses (a ``pycolmap.Reconstruction`` of the same image ids), whose depths measure the moves as refine's report
    does; None: the adjusted ones (a camera that slid away takes its points with it, which shrinks its measured move).
    ``cameras``: intrinsics by image name, to tell the thinly held frames that look blurred (the frame placement's:
    :mod:`nerf_posefix.sfm.frame_placement`) from the sharp ones asked about here; None: no thinly held frame is asked
    about."""
    from nerf_posefix.sfm.frame_placement import PLACEMENT_REPROJ_PX, placed_frame_held, register_frames
    from nerf_posefix.sfm.support import MIN_OBSERVATIONS, image_support, median_depths
    from nerf_posefix.sfm.track_building import adjust_with_retriangulation

    log = log or (lambda message: None)
    t0 = time.perf_counter()
    rec = adjusted.reconstruction
    ids = {rec.images[i].name: i for i in rec.reg_image_ids()}
    depths = median_depths(input_tracks if input_tracks is not None else rec)
    depth = np.array([depths.get(ids[n], np.nan) for n in adjusted.names])
    focal = np.array([float(rec.cameras[rec.images[ids[n]].camera_id].mean_focal_length()) for n in adjusted.names])
    movers, threshold, move_px = outlying_moves(adjusted.names, adjusted.input_c2w, adjusted.c2w, depth, focal)
    filled = _filled_depths(depth)
    if filled is None:
        return adjusted, []
    loss_scale_px = adjusted.rounds[-1]["loss_scale_px"]
    support_before = image_support(rec, loss_scale_px=loss_scale_px)
    adjusted.support = support_before  # the cache stage's too, unless a pose is replaced below
    uncertain = [s.name for s in support_before if s.weak and s.observations >= MIN_OBSERVATIONS and s.group == 0]  # by σ alone
    thin = _sharp_thin_frames(adjusted, images_dir, cameras, support_before) if cameras is not None else []
    index = {n: k for k, n in enumerate(adjusted.names)}
    asked: dict[str, str] = {}  # name -> why, in asking order
    for names, why in ((movers, MOVED_FAR), (uncertain, UNCERTAIN), (thin, THIN)):
        asked.update((n, why) for n in names if n not in asked)
    if not asked:
        return adjusted, []
    opinions = [SecondOpinion(n, float(move_px[index[n]]), why, observations_before=int(rec.images[ids[n]].num_points3D))
                for n, why in list(asked.items())[:MAX_CAMERAS]]
    log(f"{len(opinions)} camera(s) the rounds moved far more than the others (image shift above {threshold:.3g} px) or hold "
        "weakly (" + ", ".join(f"{o.name}: {o.why}, {o.move_px:.3g} px" for o in opinions[:5])
        + (", ..." if len(opinions) > 5 else "") + "): registered again against the others held fixed ...")
    placement, registered = register_frames(Path(database), rec, [o.name for o in opinions], PLACEMENT_REPROJ_PX,
                                            options.num_threads, options.seed)
    support = {s.name: s for s in image_support(placement, loss_scale_px=loss_scale_px)}
    placed_ids = {placement.images[i].name: i for i in placement.reg_image_ids()}
    corrected = adjusted.c2w.copy()  # [N, 4, 4]
    for o in opinions:
        o.registered = bool(registered.get(o.name)) and o.name in placed_ids and o.name in support
        if not o.registered:
            o.reason = "not registered"
            continue
        k = index[o.name]
        o.observations = support[o.name].observations
        held, why = placed_frame_held(support[o.name], focal[k], observations_before=o.observations_before)
        c2w_registered = np.linalg.inv(np.vstack([np.asarray(placement.images[placed_ids[o.name]].cam_from_world().matrix()),
                                                  [0.0, 0.0, 0.0, 1.0]]))
        o.disagreement_px = float(pose_change_px(adjusted.c2w[k:k + 1], c2w_registered[None], filled[k:k + 1], focal[k:k + 1])[0])
        if not held:
            o.reason = why
        elif not o.disagreement_px > DISAGREE_PX:
            o.reason = f"registered where the rounds put it ({o.disagreement_px:.3g} px <= {DISAGREE_PX:g} px)"
        else:
            o.replaced = True
            corrected[k] = c2w_registered
    for o in opinions:
        log(f"  {o.name}: " + (f"registered on {o.observations} observations (the rounds held it on {o.observations_before}), "
                               f"{o.disagreement_px:.3g} px from the adjusted pose: "
                               if o.registered else "") + ("the registered pose taken" if o.replaced else o.reason))
    if not any(o.replaced for o in opinions):
        return adjusted, opinions
    again = replace(options, reproj_schedule_px=(float(options.reproj_schedule_px[-1]),))
    by_name = {n: corrected[index[n]] for n in adjusted.names}
    start = CameraSet(list(posed.names), np.stack([by_name.get(n, posed.c2w[k]) for k, n in enumerate(posed.names)]),
                      source=posed.source)
    log(f"  the rounds again from the corrected poses, at {again.reproj_schedule_px[0]:g} px and the final threshold ...")
    result = adjust_with_retriangulation(database, images_dir, start, again, verbose=verbose, log=lambda m: log(f"  {m}"),
                                         gauge=posed)  # the gauge on the input poses, as the first rounds'
    result.rounds = [*adjusted.rounds, *({**r, "after_second_opinion": True} for r in result.rounds)]
    result.seconds = adjusted.seconds + (time.perf_counter() - t0)
    return result, opinions


__all__ = ["DISAGREE_PX", "MAX_CAMERAS", "MOVED_FAR", "THIN", "UNCERTAIN", "SecondOpinion", "outlying_moves", "reregister_outlying_moves"]
