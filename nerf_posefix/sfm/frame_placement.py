r"""Blurred frames the adjustment holds weakly or not at all, placed against the frames it holds (pycolmap registration).

A frame blurred by a long motion streak (or a strong defocus) keeps too few SIFT features for the ordinary matching
to verify more than a pair or two with it: the track rounds leave it at its input pose (or hold it by a few tracks),
and before this stage only the NeRF stage could move it. After the adjustment (:func:`nerf_posefix.sfm.track_building.adjust_with_retriangulation`),
this module places each such frame:

1. **Which frames**: those the adjustment does not hold (:func:`unheld_frames`: no verified pair in the track
   database, fewer than 30 observations, or outside the largest group of images linked by tracks), and those it holds
   by few tracks (:func:`thinly_held_frames`: fewer than a quarter of the median image's observations), that look
   blurred against their nearest neighbours (:func:`nerf_posefix.sfm.blur_matching.frame_blur_px`). Neighbours are picked by
   the adjusted poses (the frame's own is its input pose) among the frames the tracks hold.
2. **The blur, chosen by what matches** (:func:`nerf_posefix.sfm.blur_matching.choose_blur`): the frame's Gaussian
   estimate or a motion streak (direction and length), whichever makes its 2 nearest neighbours' copies match it best.
3. **Matches**: the frame against its :data:`~nerf_posefix.sfm.blur_matching.PARTNERS` nearest neighbours blurred
   by that blur (:func:`nerf_posefix.sfm.blur_matching.match_blurred`), merged into a **copy** of the track database
   (``work/placement.db``): the adjustment's own tracks never see these matches, so they cannot pull the frames
   the tracks hold (measured: merged into the rounds, they moved castle-P30's sharp frames from 0.085 to 0.253 deg).
4. **Placement**: the held frames at their adjusted poses, held fixed; every track of the copy triangulated with
   them at :data:`PLACEMENT_REPROJ_PX`; then each frame registered by COLMAP's absolute-pose registration
   (``IncrementalMapper.register_next_image``: RANSAC PnP and a pose refinement on its 2D-3D matches). Nothing else
   moves.
5. **Support**: each placed frame's :class:`~nerf_posefix.sfm.support.ImageSupport` in that placement (its
   observations and the pose's covariance conditional on the points): a frame the placement holds counts as held
   (``placed``), one it does not (a failed registration, few observations, an uncertain pose) stays weak, where the
   adjustment left it, for the NeRF stage: it needs :data:`PLACED_MIN_OBSERVATIONS` observations and an uncertainty of at
   most :data:`PLACED_MAX_SIGMA_DEG` (:func:`placed_frame_held`). A frame the adjustment held by few tracks is placed only
   when a streak matches it best (its tracks were matched against Gaussian copies already), and takes its placed pose
   only when the placement holds it on more observations than the adjustment had; otherwise it keeps the adjustment's
   pose and support.

Measured on castle-P30 (8 of 30 frames smeared by a 40 px streak and cut to 40 % contrast, poses 2 deg / 3 % off;
``python -m benchmarks.weak_frames --scenes castle --kind motion --blur 40 --rows front-end default``, 3 seeds): the
degraded frames from 1.88 deg (the adjustment alone) to 0.149 +- 0.041 deg, 7 of 8 placed and held on 102-425
observations, the sharp frames exactly where the adjustment put them; the eighth (65-71 observations) is left to the
NeRF stage (0.44-0.55 deg). Frames blurred beyond that (a 12 px Gaussian) register on 30-40 tracks at best and are
left to the NeRF stage; docs/benchmarks.md, thirteenth look.

Conventions: poses are COLMAP's ``cam_from_world`` (world-to-camera, OpenCV axes) in the adjusted model's world frame
(the input's); image names as the database stores them. ``pycolmap`` is imported inside the functions.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from nerf_posefix.io.camera_set import ImageCamera
from nerf_posefix.sfm import blur_matching as bm
from nerf_posefix.sfm.support import MIN_OBSERVATIONS, ImageSupport, image_support

if TYPE_CHECKING:
    import pycolmap

#: Reprojection threshold of the placement's triangulation with the held frames fixed (pixels).
PLACEMENT_REPROJ_PX = 4.0
#: A placed frame is held when it has at least :data:`PLACED_MIN_OBSERVATIONS` observations in the placement and its
#: registration's pose uncertainty (:attr:`ImageSupport.sigma_px` over the focal length, as an angle) is at most
#: :data:`PLACED_MAX_SIGMA_DEG`, even where that exceeds the support rule's ``UNCERTAIN_FACTOR`` x the median camera's
#: (a blurred frame's few hundred observations never match a sharp frame's thousands). The covariance assumes the
#: sharp frames' keypoint noise and understates a blurred frame's error by 2-8x; the count is what separates
#: (measured, docs/benchmarks.md thirteenth look: castle-P30's placed frames with 100-430 observations end at
#: 0.02-0.37 deg, those with 30-71 at 0.47-1.33 deg, where the NeRF stage reaches 0.6-0.7 deg; toybox's with 31-34
#: at 0.29-0.34 deg, where it reaches 0.25 deg). The others are left to the NeRF stage.
PLACED_MIN_OBSERVATIONS = 100
PLACED_MAX_SIGMA_DEG = 0.5
#: A frame whose chosen blur scores fewer matches than this fraction of the observations it needs to be held
#: (:func:`nerf_posefix.sfm.blur_matching.choose_blur`: on its 2 nearest neighbours, copies of at most 640 px) is not
#: matched or registered: it would not be held. Measured (docs/benchmarks.md, thirteenth and fourteenth looks): of 63
#: frame-runs on castle-P30 and toybox, those scoring below 100 were placed on at most 40 observations (Gaussian 12 px,
#: toybox 3 px: 15-78 scored), those held scored 110-579.
PLACED_MIN_CHOICE_FRACTION = 0.75
#: At most this many frames are placed per capture (about 10-15 s each on 2 cores), the least blurred first (by
#: their Gaussian estimate); the others are left to the NeRF stage, and the log and the report say so.
PLACEMENT_MAX_FRAMES = 50
#: How the reason of a frame beyond that cap begins.
BEYOND_CAP = "beyond the placement's cap"
#: A frame of the largest group with fewer observations than this fraction of the median image's is a candidate too
#: (:func:`thinly_held_frames`; blur matching's rescue fraction): blurred, it is placed as the unheld ones are, and its
#: placed pose replaces the adjustment's when the placement holds it on more observations than the adjustment had.
#: Only when the blur that matches it best is a streak: its tracks were matched against Gaussian copies
#: (:mod:`nerf_posefix.sfm.blur_matching`), and placed by the same Gaussian the frame gains nothing. Measured
#: (docs/benchmarks.md, fifteenth look): castle-P30's frames smeared by a 20 px streak, held by 39-151 blur-matched
#: observations (the median image: ~640) at 0.10-0.57 deg, placed on 189-1192 at 0.05-0.23 deg; its frames blurred by
#: a 6 px Gaussian, placed by a Gaussian on 183-413 observations: 0.176 deg against the adjustment's 0.169.
THIN_FRACTION = bm.RESCUE_FRACTION
#: The copy of the track database the placement matches into (relative to the work directory).
PLACEMENT_DATABASE = "placement.db"


@dataclass
class PlacedFrame:
    """What the placement did for one frame.

    Attributes:
        name: the image.
        inliers_before: its verified inlier matches in the track database.
        observations_before: its observations in the adjustment; ``held_before``: whether the adjustment held it (by
            few tracks: :func:`thinly_held_frames`).
        sigma_px: its Gaussian blur estimate against its neighbours (full-resolution px).
        blur: the blur chosen for its neighbours (a :class:`nerf_posefix.sfm.blur_matching.Blur` as a dict), and
            ``choice_inliers`` the matches it scored (nothing when the frame was beyond the cap); ``blur_supported``:
            whether those matches reached the floor a frame is placed from. Below it the choice rests on a few dozen
            matches either way (frames blurred by a Gaussian drew streaks on 15-37 matches: castle-P30's 12 px, the
            toybox's 3 px; castle's true 40 px streaks scored 105-554): the photometric alignment and the move check
            take a frame's streak from the placement only when it is True, else their own Gaussian estimate.
        pairs, inliers: verified pairs and inlier matches the frame gained against its blurred neighbours.
        registered: whether COLMAP's registration placed it; ``observations``: its 2D-3D inliers there.
        held: whether the placement holds it (``reason`` when not).
        seconds: wall time spent on it (choice and matching); ``choice_seconds``: the choice's part.
    """

    name: str
    inliers_before: int
    sigma_px: float
    observations_before: int = 0
    held_before: bool = False
    blur: dict[str, float] = field(default_factory=dict)
    choice_inliers: int = 0
    blur_supported: bool = False
    pairs: int = 0
    inliers: int = 0
    registered: bool = False
    observations: int = 0
    held: bool = False
    reason: str = ""
    seconds: float = 0.0
    choice_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Placement:
    """Outcome of :func:`place_blurred_frames`.

    Attributes:
        frames: what was done per frame (empty when no frame needed it).
        cam_from_world: the held placed frames' poses ``[4, 4]`` (world-to-camera, OpenCV axes, the adjusted
            model's frame), by name.
        support: the placed frames' :class:`ImageSupport` in the placement (``placed`` set), by name.
        seconds: wall time.
    """

    frames: list[PlacedFrame] = field(default_factory=list)
    cam_from_world: dict[str, np.ndarray] = field(default_factory=dict)
    support: dict[str, ImageSupport] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"frames": [f.to_dict() for f in self.frames], "num_placed": len(self.cam_from_world), "seconds": self.seconds}


def thinly_held_frames(observations: dict[str, int], largest_group: set[str], fraction: float = THIN_FRACTION) -> list[str]:
    """The images of the largest group (``largest_group``) with at least :data:`~nerf_posefix.sfm.support.MIN_OBSERVATIONS`
    observations but fewer than ``fraction`` times the median image's (``observations``: per image of the adjusted
    reconstruction), in name order: held by the tracks, but by few (a blurred frame held by its blur-matched tracks);
    none in a capture of fewer than 3 images."""
    if len(observations) < 3:
        return []
    median = float(np.median(list(observations.values())))
    return sorted(n for n, k in observations.items() if n in largest_group and MIN_OBSERVATIONS <= k < fraction * median)


def unheld_frames(inliers: dict[str, int], observations: dict[str, int], largest_group: set[str]) -> list[str]:
    """The images the adjustment does not hold, in name order: those whose verified inliers
    (:func:`nerf_posefix.sfm.blur_matching.verified_inliers`) are below one pair's worth
    (:data:`~nerf_posefix.sfm.blur_matching.MIN_PAIR_INLIERS`), those with fewer than
    :data:`~nerf_posefix.sfm.support.MIN_OBSERVATIONS` observations in the adjusted reconstruction, and those outside
    its largest group of images linked by tracks (``largest_group``); none in a capture of fewer than 3 images.
    ``observations``: per image of the reconstruction."""
    if len(observations) < 3:
        return []
    return sorted(n for n, k in observations.items()
                  if inliers.get(n, 0) < bm.MIN_PAIR_INLIERS or k < MIN_OBSERVATIONS or n not in largest_group)


def placed_frame_held(support: ImageSupport, focal_px: float, min_observations: Optional[int] = None,
                      observations_before: int = 0) -> tuple[bool, str]:
    """Whether the placement holds a registered frame, from its support there (:func:`image_support`): at least
    ``min_observations`` observations (None: :data:`PLACED_MIN_OBSERVATIONS`) and more than it had in the adjustment
    (``observations_before``), in the largest group, and an uncertainty ``sigma_px / focal_px`` of at most
    :data:`PLACED_MAX_SIGMA_DEG`. Returns ``(held, why not)``."""
    min_observations = PLACED_MIN_OBSERVATIONS if min_observations is None else int(min_observations)
    if support.observations < min_observations:
        return False, f"few placed tracks ({support.observations} observations < {min_observations})"
    if support.observations <= observations_before:
        return False, f"no better held than by the adjustment ({support.observations} <= {observations_before} observations)"
    if support.group > 0:
        return False, support.reason
    sigma_deg = float(np.degrees(np.arctan(support.sigma_px / focal_px)))
    if not sigma_deg <= PLACED_MAX_SIGMA_DEG:  # NaN and inf too
        return False, f"uncertain placement ({sigma_deg:.3g} deg > {PLACED_MAX_SIGMA_DEG:g} deg)"
    return True, ""


def register_frames(database: Path, rec: "pycolmap.Reconstruction", frames: Sequence[str], max_reproj_px: float,
                    num_threads: int = -1, seed: int = 0) -> tuple["pycolmap.Reconstruction", dict[str, bool]]:
    """Step 4 of the module docstring: ``rec``'s other images held at their poses, the tracks of ``database``
    triangulated with them at ``max_reproj_px``, then each of ``frames`` registered by COLMAP's absolute-pose
    registration. Returns the placement (a new reconstruction: the held images, the points, the registered frames
    with their 2D-3D inliers) and per frame whether it registered."""
    import pycolmap

    from nerf_posefix.sfm import track_building as tb

    held = pycolmap.Reconstruction(rec)
    ids = {held.images[i].name: i for i in held.reg_image_ids()}
    for n in frames:
        held.deregister_frame(held.images[ids[n]].frame_id)
    with tb.quiet_colmap_log(False):
        cache = tb.open_track_cache(database)
    placement = tb.triangulate_fixed_poses(held, database, "", max_reproj_px, num_threads, seed, cache=cache, colours=False)
    options = tb._triangulation_options(max_reproj_px, tb._focal_px(placement), num_threads, seed).get_mapper()  # noqa: SLF001
    registered = {}
    with tb.quiet_colmap_log(False):
        mapper = pycolmap.IncrementalMapper(cache)
        mapper.begin_reconstruction(placement)
        graph = cache.correspondence_graph
        for n in frames:  # a frame no verified pair links (even blur-matched) is not in COLMAP's cache: not registered
            linked = cache.exists_image(ids[n]) and graph.exists_image(ids[n]) and graph.num_correspondences_for_image(ids[n]) > 0
            registered[n] = linked and bool(mapper.register_next_image(options, ids[n]))
        mapper.end_reconstruction(False)
    placement.update_point_3d_errors()
    return placement, registered


def _hold_registered(placement: "pycolmap.Reconstruction", registered: dict[str, bool], frames: Sequence[PlacedFrame],
                     result: Placement, loss_scale_px: Optional[float], min_observations: Optional[int]) -> None:
    """Step 5 of the module docstring for the ``frames`` given to :func:`register_frames` (``placement``, ``registered``:
    its result): each frame's outcome set, and the held ones' poses and support added to ``result``."""
    support = {s.name: s for s in image_support(placement, loss_scale_px=loss_scale_px)}
    ids = {image.name: i for i, image in placement.images.items()}
    for frame in frames:
        frame.registered = registered[frame.name]
        s = support.get(frame.name)
        if not frame.registered or s is None:
            frame.reason = "not registered"
            continue
        frame.observations = s.observations
        focal = float(placement.cameras[placement.images[ids[frame.name]].camera_id].mean_focal_length())
        frame.held, frame.reason = placed_frame_held(s, focal, min_observations, frame.observations_before)
        if frame.held:  # the support of a frame left where it was stays the adjustment's
            s.weak, s.reason, s.placed = False, "", True
            result.support[frame.name] = s
            result.cam_from_world[frame.name] = np.vstack([np.asarray(placement.images[ids[frame.name]].cam_from_world().matrix()),
                                                           [0.0, 0.0, 0.0, 1.0]])


def place_blurred_frames(
    database: str | Path, images_dir: str | Path, rec: "pycolmap.Reconstruction", cameras: dict[str, ImageCamera],
    work: str | Path, num_threads: int = -1, seed: int = 0, max_image_size: int = 3200, loss_scale_px: Optional[float] = None,
    log: Optional[Callable[[str], None]] = None, min_observations: Optional[int] = None, max_frames: int = PLACEMENT_MAX_FRAMES,
) -> Placement:
    """Place the blurred frames the adjustment holds weakly or not at all (module docstring) against ``rec`` (the adjusted
    reconstruction of the track database ``database``'s images, in the input frame; not modified). ``cameras``: intrinsics by image
    name. ``work``: where the database copy and side copies go (removed at the end). ``loss_scale_px``: the
    adjustment's robust scale, for the placed frames' covariances. ``min_observations``: a placed frame's fewest
    observations to be held (None: :data:`PLACED_MIN_OBSERVATIONS`). ``max_frames``: the most frames placed, the least
    blurred first (:data:`PLACEMENT_MAX_FRAMES`). Returns the held placed frames' poses and support, and what was done
    per frame (a frame beyond the cap, or whose blur matches too little to be held, is neither matched nor
    registered: ``reason`` says which)."""
    log = log or (lambda message: None)
    t0 = time.perf_counter()
    database, images_dir, work = Path(database), Path(images_dir), Path(work)
    from nerf_posefix.sfm.bundle_adjustment import reconstruction_c2w
    from nerf_posefix.sfm.track_building import track_components

    names, c2w = reconstruction_c2w(rec)  # sorted; [N, 4, 4] camera-to-world, OpenCV: held adjusted, unheld where left

    observations = {rec.images[i].name: int(rec.images[i].num_points3D) for i in rec.reg_image_ids()}
    largest = {rec.images[i].name for i in (track_components(rec) or [[]])[0]}
    inliers = bm.verified_inliers(database)
    unheld = unheld_frames(inliers, observations, largest)
    thin = set(thinly_held_frames(observations, largest)) - set(unheld)
    result = Placement()
    candidates = sorted(set(unheld) | thin)
    if len(unheld) == len(names) or not candidates:
        return result
    partners = bm.nearest_partners(names, candidates, c2w)
    cache: dict[str, np.ndarray] = {}  # images reduced for the blur statistics, by name
    blurred = []
    for n in candidates:
        if partners[n]:
            sigma = bm.frame_blur_px(images_dir, cameras, n, partners[n], cache)
            if bm.nearest_level(sigma) is not None:
                blurred.append(PlacedFrame(n, int(inliers.get(n, 0)), sigma, observations.get(n, 0), n in thin))
    blurred_names = {f.name for f in blurred}
    sharp = [n for n in unheld if n not in blurred_names]  # thinly held sharp frames: held, nothing to say
    if sharp:
        log(f"{len(sharp)} image(s) the adjustment does not hold do not look blurred against their neighbours ("
            + ", ".join(sharp[:5]) + (", ..." if len(sharp) > 5 else "") + "): not placed (low texture or little overlap)")
    if not blurred:
        return result
    result.frames = blurred
    tried = sorted(blurred, key=lambda f: f.sigma_px)[:max(0, int(max_frames))]  # the least blurred first
    tried_names = {f.name for f in tried}
    for frame in blurred:
        if frame.name not in tried_names:
            frame.reason = f"{BEYOND_CAP} of {int(max_frames)} frames"
    log(f"{len(blurred)} blurred image(s) the adjustment holds weakly or not at all: each matched against its neighbours blurred as it "
        "matches best, then placed against the adjusted images held fixed (10-15 s each on 2 cores)"
        + (f"; only the {len(tried)} least blurred are tried (the cap), the others are left to the NeRF stage" if len(tried) < len(blurred) else ""))
    choice_floor = PLACED_MIN_CHOICE_FRACTION * (PLACED_MIN_OBSERVATIONS if min_observations is None else int(min_observations))
    copy, matched, placement, registered = work / PLACEMENT_DATABASE, [], None, {}
    start = time.perf_counter()
    try:
        for k, frame in enumerate(tried):
            t1 = time.perf_counter()
            level = bm.nearest_level(frame.sigma_px) or bm.SIGMA_LEVELS[0]
            blur, frame.choice_inliers = bm.choose_blur(images_dir, cameras, frame.name, partners[frame.name], level,
                                                        work / "blur_choice", num_threads, seed, cache)
            frame.blur = asdict(blur)
            frame.choice_seconds = time.perf_counter() - t1
            what = f"{blur.describe()} (blur estimate {frame.sigma_px:.1f} px), {frame.choice_inliers} matches on its nearest neighbours"
            frame.blur_supported = frame.choice_inliers >= choice_floor
            if not frame.blur_supported:
                frame.reason = f"few matches even blurred alike ({frame.choice_inliers} < {choice_floor:g} on its nearest neighbours)"
                what += ": too few to be held, not placed"
            elif frame.held_before and blur.streak_px <= 0:
                frame.reason = "a Gaussian blur, as its tracks were matched with: nothing new to place it by"
                what += ": the adjustment's pose kept"
            else:
                if not matched:  # the copy of the track database, made once a frame is worth matching into it
                    work.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(database, copy)
                gained = bm.match_blurred(copy, images_dir, names, cameras, {frame.name: partners[frame.name]}, blur,
                                          work / "blur_side", c2w, num_threads, seed, max_image_size)
                frame.pairs, frame.inliers = gained.get(frame.name, (0, 0))
                matched.append(frame)
                what += f", +{frame.inliers} matches over {frame.pairs} pairs"
            frame.seconds = time.perf_counter() - t1
            left = len(tried) - k - 1
            log(f"  [{k + 1}/{len(tried)}] {frame.name}: {what} ({frame.seconds:.0f} s"
                + (f"; about {(time.perf_counter() - start) / (k + 1) * left:.0f} s left)" if left else ")"))
        if matched:
            placement, registered = register_frames(copy, rec, [f.name for f in matched], PLACEMENT_REPROJ_PX, num_threads, seed)
    finally:
        copy.unlink(missing_ok=True)
    if placement is not None:
        _hold_registered(placement, registered, matched, result, loss_scale_px, min_observations)
    result.seconds = time.perf_counter() - t0
    log(f"placed {len(result.cam_from_world)} of {len(blurred)}: " + ", ".join(
        f"{f.name} held ({f.observations} observations" + (f", {f.observations_before} in the adjustment)" if f.held_before else ")") if f.held
        else f"{f.name} {'keeps the adjustment' if f.held_before else 'left weak'} ("
        + (f"{f.observations} observations: " if f.registered else "") + f"{f.reason})"
        for f in blurred[:8]) + (", ..." if len(blurred) > 8 else "") + f" ({result.seconds:.0f} s)")
    return result


__all__ = ["BEYOND_CAP", "PLACED_MAX_SIGMA_DEG", "PLACED_MIN_CHOICE_FRACTION", "PLACED_MIN_OBSERVATIONS", "PLACEMENT_MAX_FRAMES", "PLACEMENT_REPROJ_PX", "PlacedFrame", "Placement", "unheld_frames", "place_blurred_frames",
           "placed_frame_held", "register_frames"]
