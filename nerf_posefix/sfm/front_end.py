"""The front end: the SfM stages every posefix path runs before a NeRF, with their cached results.

One implementation, two callers: ``posefix refine`` (:mod:`nerf_posefix.workflows.refine`) and the
nerfstudio methods' pipeline at set-up (:mod:`nerf_posefix.plugin.front_end`).

Stages
------
0. **Tracks** (inputs without SfM tracks only: a transforms.json, a TUM trajectory, a COLMAP model without
   points): SIFT features and verified matches (``work/tracks/database.db``, or a copy of a given
   database), then COLMAP's triangulation with the input poses held fixed (``work/tracks/sparse/0``).
   Fewer than ``TrackOptions.min_points`` points is not an error: the result says so with the counts
   (:attr:`FrontEndResult.fallback`) and the adjustment is skipped.
1. **Adjust**: for a model with its own tracks, pycolmap's robust bundle adjustment of them
   (:func:`nerf_posefix.sfm.bundle_adjustment.bundle_adjust_model`); for built tracks, rounds of
   re-triangulation and robust adjustment
   (:func:`nerf_posefix.sfm.track_building.adjust_with_retriangulation`). Either result is mapped back onto
   the input's world frame and kept in ``work/bundle_adjusted``. With built tracks, the cameras the rounds moved
   far more than the others or hold weakly (an uncertain pose, few tracks) are registered again against the others
   (:func:`nerf_posefix.sfm.outlying_moves.reregister_outlying_moves`: a camera slid along a line of cameras by its
   two-view tracks, or held by few), and the blurred frames the
   adjustment holds weakly or not at all are then placed against the adjusted ones held fixed
   (:func:`nerf_posefix.sfm.frame_placement.place_blurred_frames`: blur-matched features in a copy of the track
   database, COLMAP's registration); a frame the placement holds counts as held (``support.placed``), the others
   stay weak where the adjustment left them. Those still weak are then aligned by their intensities against their
   held neighbours through the points (:func:`nerf_posefix.sfm.photometric_alignment.align_weak_frames`); a frame
   the evidence supports counts as held at its aligned pose (``support.placed``), the others stay weak (the NeRF
   stage's).

Every stage writes its record file last, so a stage is either complete in ``work`` (and reused) or redone.

Conventions: models are COLMAP's (world-to-camera ``qvec``/``tvec``, OpenCV camera axes) in the **input's
world frame** before and after every stage; camera sets are camera-to-world, OpenCV axes.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional

from nerf_posefix.errors import InputError
from nerf_posefix.io.colmap import read_colmap_model
from nerf_posefix.io.posed_images import PosedImages
from nerf_posefix.sfm.frame_placement import PLACEMENT_MAX_FRAMES, Placement, place_blurred_frames
from nerf_posefix.sfm.inputs import ValidatedInput, read_refine_model, validate_model
from nerf_posefix.sfm.outlying_moves import reregister_outlying_moves
from nerf_posefix.sfm.track_building import SPATIAL_NEIGHBORS

if TYPE_CHECKING:
    from nerf_posefix.sfm.track_building import TrackOptions

#: Written when the features and matches of the images are complete (relative to the work directory).
MATCHES_RECORD = "tracks/matches.json"
#: The adjusted model (relative to the work directory).
ADJUSTED_MODEL = "bundle_adjusted/sparse/0"
LossName = Literal["cauchy", "huber", "soft_l1", "squared", "none"]
#: Version of the stages' algorithms, in the cache's stamp: a cache made by an earlier version is redone
#: (2: track building's final round re-triangulated with the adjusted poses; 3: few-feature images extracted again
#: at a lower peak threshold; 4: rounds skipped to the smallest threshold met, early rounds with 2 % stragglers;
#: 5: triangulations without the point triangulator's point-only adjustments, except the last round's; 6: image ids
#: in the database in the images' order, whatever the order COLMAP's extraction threads finish in; 7: blur-matched
#: features for the blurred frames the ordinary matching links with few matches; 8: the blurred frames the adjustment does not
#: hold placed against the adjusted ones; 9-10: the placement's speed and thinly held frames; 11: the cameras the rounds
#: moved far more than the others or hold weakly registered again against the others,
#: :mod:`nerf_posefix.sfm.outlying_moves`; 12: the frames left weakly held aligned by their intensities,
#: :mod:`nerf_posefix.sfm.photometric_alignment`; 13: a frame the placement found streaked aligned with its streak; 14: against the frames the tracks hold, not the
#: placed ones; 15: its evidence's standard error counted over blur-sized cells; 16: its points at depth edges left out;
#: 17: the placement's streak only when chosen on the matches a frame is placed from; 18: the alignment's points with
#: samples on their tangent planes).
FRONT_END_VERSION = 18


@dataclass
class FrontEndOptions:
    """How the front end runs (the ``posefix refine`` options of the same names).

    Attributes:
        build_tracks: ``"auto"``: build tracks when the input has none; ``"always"``: also for a COLMAP
            model with tracks (its own are then ignored).
        matching, sequential_overlap, spatial_neighbors: feature matching when tracks are built
            (:class:`nerf_posefix.sfm.track_building.TrackOptions`).
        database: a COLMAP database of these images to build the tracks from (copied, never modified).
        blur_matching: when tracks are built, match the blurred frames the ordinary matching links with few
            matches against their neighbours blurred alike (:mod:`nerf_posefix.sfm.blur_matching`).
        frame_placement: when tracks are built, place the blurred frames the adjustment holds weakly or not at all against the ones it holds
            (:mod:`nerf_posefix.sfm.frame_placement`).
        placement_max_frames: the most frames placed per capture, the least blurred first (the others are left to the
            NeRF stage).
        photometric_alignment: when tracks are built, align the frames still weakly held after the placement by their
            intensities against their held neighbours through the points (:mod:`nerf_posefix.sfm.photometric_alignment`);
            a frame the evidence supports counts as held at its aligned pose.
        bundle_adjustment: the robust loss of the adjustment, or ``"none"`` (no adjustment: the front end
            returns its input, with built tracks when they were built).
        ba_scale_px: the robust scale of a model's own-track adjustment (None: automatic).
        intrinsics: what a model's own-track adjustment refines of the cameras: ``"fixed"`` (nothing), ``"focal"``
            (focal lengths and distortion), ``"focal-pp"`` (those and the principal point), ``"auto"`` (focal-pp for the
            cameras whose principal point is COLMAP's placeholder at the image centre and whose tracks contradict it,
            :mod:`nerf_posefix.sfm.principal_point`; the others fixed); built tracks keep them fixed.
        threads: COLMAP's threads (0: one per core).
        seed: COLMAP's random seed.
    """

    build_tracks: Literal["auto", "always"] = "auto"
    matching: Literal["auto", "exhaustive", "sequential", "spatial"] = "auto"
    sequential_overlap: int = 10
    spatial_neighbors: int = SPATIAL_NEIGHBORS
    database: Optional[Path] = None
    blur_matching: bool = True
    frame_placement: bool = True
    placement_max_frames: int = PLACEMENT_MAX_FRAMES
    photometric_alignment: bool = True
    bundle_adjustment: LossName = "cauchy"
    ba_scale_px: Optional[float] = None
    intrinsics: Literal["auto", "fixed", "focal", "focal-pp"] = "auto"
    threads: int = 0
    seed: int = 42

    def track_options(self) -> "TrackOptions":
        from nerf_posefix.sfm.track_building import TrackOptions

        return TrackOptions(matching=self.matching, sequential_overlap=self.sequential_overlap,
                            spatial_neighbors=self.spatial_neighbors, seed=self.seed,
                            num_threads=self.threads or -1, blur_matching=self.blur_matching)

    def stamp(self, built: bool) -> dict[str, Any]:
        """The options that decide the front end's result (a cache made with other ones is not reused)."""
        return {
            "version": FRONT_END_VERSION,
            "build_tracks": built,
            "matching": self.matching if built else None,
            "sequential_overlap": self.sequential_overlap if built else None,
            "spatial_neighbors": self.spatial_neighbors if built else None,
            "database": str(self.database) if built and self.database else None,
            "blur_matching": self.blur_matching if built and not self.database else None,
            "frame_placement": self.frame_placement if built else None,
            "placement_max_frames": self.placement_max_frames if built and self.frame_placement else None,
            "photometric_alignment": self.photometric_alignment if built else None,
            "bundle_adjustment": self.bundle_adjustment,
            "ba_scale_px": self.ba_scale_px,
            "intrinsics": None if built else self.intrinsics,
            "seed": self.seed if built else None,
        }


@dataclass
class FrontEndResult:
    """What the front end made.

    Attributes:
        model: the stage's output as a checked input: the adjusted model (poses and points in the input
            frame, same image names), or the input itself when no adjustment ran.
        input: the input poses with their tracks: the input itself, or (tracks built) the input poses with
            the points triangulated from them.
        built: whether tracks were built from the images.
        tracks: stage 0's summary (matches, points, weak images), or None.
        adjustment: stage 1's summary (loss, scale, residuals, seconds), or None when it did not run.
        fallback: why the tracks are not used (too few points), or None.
        seconds: wall time of the stages run now (0 when everything came from the cache).
    """

    model: ValidatedInput
    input: ValidatedInput
    built: bool
    tracks: Optional[dict[str, Any]] = None
    adjustment: Optional[dict[str, Any]] = None
    fallback: Optional[str] = None
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def adjusted(self) -> bool:
        return self.adjustment is not None


def front_end_input(
    posed: PosedImages, build_tracks: str = "auto", log: Optional[Callable[[str], None]] = None,
) -> tuple[ValidatedInput, bool]:
    """The checked input of the front end (nothing written): a COLMAP model with tracks, read and checked
    against its images, or (tracks to be built) a point-less model of the input poses checked against the
    images. Returns it and whether tracks are to be built.

    Raises:
        InputError: naming the file (unreadable model, missing images, wrong sizes, ...).
    """
    built = build_tracks == "always" or not posed.has_tracks
    if posed.kind == "colmap" and not built:
        model, model_dir, ext = read_refine_model(posed.source, posed.colmap_model)
        return validate_model(model, model_dir, ext, posed.images_dir, log=log), False
    model = posed.to_colmap_model()
    return validate_model(model, posed.source, "", posed.images_dir, log=log, require_tracks=False, source=posed.source), True


def run_front_end(
    posed: PosedImages, inp: ValidatedInput, built: bool, work: Path, options: FrontEndOptions,
    log: Callable[[str], None] = print,
) -> FrontEndResult:
    """Run the stages (module docstring) on ``inp`` (from :func:`front_end_input`), reusing what ``work``
    already holds. ``log`` receives the progress lines (without a prefix).

    Raises:
        InputError: bad options or a database that does not hold these images.
    """
    check_front_end_options(options)  # refine checks before writing anything; the plugin's path has only this
    t0 = time.perf_counter()
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    result = FrontEndResult(model=inp, input=inp, built=built)
    if built:
        inp, result.tracks = _track_building_stage(options, posed, inp, work, log)
        result.model = result.input = inp
        min_points = options.track_options().min_points
        if result.tracks["num_points"] < min_points:
            result.fallback = (
                f"only {result.tracks['num_points']} points could be triangulated from "
                f"{result.tracks['matches']['num_verified_pairs']} verified image pairs with "
                f"{result.tracks['matches']['num_inlier_matches']} inlier matches (fewer than {min_points} "
                "points: too little texture, overlap or resolution for tracks): the tracks are not used"
            )
            result.warnings.append(result.fallback)
            result.seconds = time.perf_counter() - t0
            return result
    if options.bundle_adjustment != "none":
        if built:
            result.model, result.adjustment = _cached_adjustment(inp, work, lambda: _adjust_built_tracks(options, posed, inp, work, log))
        else:
            result.model, result.adjustment = _cached_adjustment(inp, work, lambda: _adjust_own_tracks(options, inp, log))
        if "warning" in result.adjustment:
            result.warnings.append(result.adjustment["warning"])
        weak = result.adjustment["support"]["num_weak"]
        if weak:
            why = "; ".join(f"{v['count']} {k}" for k, v in result.adjustment["support"]["weak_by_reason"].items())
            log(f"{weak} of {len(inp.model.images)} images are weakly held by the tracks ({why})")
    result.seconds = time.perf_counter() - t0
    return result


# ---------------------------------------------------------------------------------------------
# stage 0: tracks from the images, the poses held fixed


def _track_building_stage(
    options: FrontEndOptions, posed: PosedImages, inp: ValidatedInput, work: Path, log: Callable[[str], None]
) -> tuple[ValidatedInput, dict[str, Any]]:
    """Features and matches (``work/tracks/database.db``, or a copy of ``options.database``), then COLMAP's
    triangulation with the input poses held fixed (``work/tracks/sparse/0``); both are kept. Returns the model
    with the new tracks (input poses exactly) and a summary."""
    from nerf_posefix.sfm.bundle_adjustment import write_adjusted_model
    from nerf_posefix.sfm.track_building import (
        DATABASE_FILE, check_database_images, copy_database, database_summary, match_features, reconstruction_from_poses, track_stats,
        triangulate_fixed_poses,
    )

    track_dir = work / "tracks"
    track_dir.mkdir(parents=True, exist_ok=True)
    database, matches_record = track_dir / DATABASE_FILE, work / MATCHES_RECORD
    track_options = options.track_options()
    names = [inp.model.images[i].name for i in inp.model.image_ids()]
    if not matches_record.is_file():
        database.unlink(missing_ok=True)
        if options.database is not None:
            log(f"features and matches from {options.database}")
            copy_database(options.database, database)
            check_database_images(database, names, f"--database {options.database} (images under {posed.images_dir})")
            matches = database_summary(database, f"given ({options.database})")
        else:
            t0 = time.perf_counter()
            log(f"building tracks from {len(names)} images (SIFT, {track_options.matching_for(len(names))} matching; pycolmap) ...")
            matches = match_features(posed.images_dir, names, posed.intrinsics, database, track_options, log=lambda m: log(f"  {m}"),
                                     poses=inp.model.to_camera_set())
            log(f"  {matches.num_keypoints} keypoints, {matches.num_verified_pairs} verified pairs ({time.perf_counter() - t0:.0f} s)")
        matches_record.write_text(json.dumps(matches.to_dict(), indent=2), encoding="utf-8")
    matches_summary = json.loads(matches_record.read_text(encoding="utf-8"))
    model_dir, record = track_dir / "sparse" / "0", track_dir / "tracks.json"
    if not record.is_file():
        shutil.rmtree(model_dir, ignore_errors=True)
        threshold = track_options.reproj_schedule_px[0]
        rec = reconstruction_from_poses(database, inp.model.to_camera_set())
        rec = triangulate_fixed_poses(rec, database, posed.images_dir, threshold, track_options.num_threads, track_options.seed)
        stats = track_stats(rec, track_options.min_observations_per_image)
        write_adjusted_model(rec, model_dir)
        summary = {"matches": matches_summary, "triangulation_max_reproj_px": threshold, **stats.to_dict()}
        record.write_text(json.dumps(summary, indent=2), encoding="utf-8")
    summary = json.loads(record.read_text(encoding="utf-8"))
    log(f"{summary['num_points']} points triangulated with the input poses held fixed "
        f"({summary['num_observations']} observations, {len(summary['weak_images'])} weakly anchored images)")
    if summary["weak_images"]:
        log(f"warning: images with fewer than {track_options.min_observations_per_image} track "
            f"observations: {', '.join(summary['weak_images'][:5])}")
    built = read_colmap_model(model_dir)
    names_built = {im.name for im in built.images.values()}
    if names_built != set(names):
        raise RuntimeError(f"{model_dir}: the triangulated model lost images {sorted(set(names) - names_built)[:5]}")
    usable = summary["num_points"] >= track_options.min_points
    return validate_model(built, model_dir, ".bin", posed.images_dir, log=lambda m: None, require_tracks=usable), summary


# ---------------------------------------------------------------------------------------------
# stage 1: the robust adjustment


def _cached_adjustment(
    inp: ValidatedInput, work: Path, adjust: Callable[[], tuple[Any, dict[str, Any]]]
) -> tuple[ValidatedInput, dict[str, Any]]:
    """Run ``adjust()`` (returns an adjusted ``pycolmap.Reconstruction`` in the input frame and a summary)
    unless ``work/bundle_adjusted`` holds its result already; returns the adjusted model (same images and
    names) and the summary."""
    from nerf_posefix.sfm.bundle_adjustment import write_adjusted_model

    ba_dir = work / "bundle_adjusted"
    record = ba_dir / "result.json"
    if not record.is_file():
        from nerf_posefix.sfm.support import ImageSupport, image_support, summarise

        shutil.rmtree(ba_dir, ignore_errors=True)
        reconstruction, summary = adjust()
        scale = summary.get("scale_px") or (summary.get("rounds") or [{}])[-1].get("loss_scale_px")  # the adjustment's robust scale
        support = summary.pop("support_before_placement", None) or image_support(reconstruction, loss_scale_px=scale)
        placed = summary.pop("placed_support", {})  # the frames the placement holds: their support there
        support = [ImageSupport(**placed[s.name]) if s.name in placed else s for s in support]
        summary["support"] = summarise(support)
        summary["images"] = {s.name: s.to_dict() for s in support}
        write_adjusted_model(reconstruction, work / ADJUSTED_MODEL)
        record.write_text(json.dumps(summary, indent=2), encoding="utf-8")
    summary = json.loads(record.read_text(encoding="utf-8"))
    adjusted = read_colmap_model(work / ADJUSTED_MODEL)
    names = {im.name for im in adjusted.images.values()}
    missing = [im.name for im in inp.model.images.values() if im.name not in names]
    if missing:
        raise RuntimeError(f"{ba_dir}: the bundle adjustment lost images {missing[:5]}")
    return replace(inp, model=adjusted, model_dir=work / ADJUSTED_MODEL, ext=".bin"), summary


def _adjust_own_tracks(options: FrontEndOptions, inp: ValidatedInput, log: Callable[[str], None]) -> tuple[Any, dict[str, Any]]:
    """The robust bundle adjustment of a model's own tracks."""
    from nerf_posefix.sfm.bundle_adjustment import BundleAdjustmentOptions, bundle_adjust_model, read_reconstruction

    tests = []
    if options.intrinsics == "auto":  # the cameras whose placeholder principal point the tracks contradict
        from nerf_posefix.sfm.principal_point import examine_principal_points

        try:
            tests = examine_principal_points(read_reconstruction(inp.model_dir), loss=options.bundle_adjustment, scale_px=options.ba_scale_px)
        except (RuntimeError, ValueError) as err:  # pycolmap's checks: the test is an option, the adjustment goes on
            log(f"warning: the principal point test failed ({err}); the intrinsics are held")
            tests = []
        for test in tests:
            log(test.describe())
        refine, refine_ids, with_pp = any(t.refined for t in tests), tuple(t.camera_id for t in tests if t.refined), True
    else:
        refine, refine_ids, with_pp = options.intrinsics != "fixed", None, options.intrinsics == "focal-pp"
    log(f"bundle adjustment of {len(inp.model.images)} images ({options.bundle_adjustment} loss) ...")
    result = bundle_adjust_model(inp.model_dir, BundleAdjustmentOptions(
        loss=options.bundle_adjustment, scale_px=options.ba_scale_px, refine_intrinsics=refine,
        refine_principal_point=refine and with_pp, refine_camera_ids=refine_ids))
    return result.reconstruction, {
        "loss": options.bundle_adjustment,
        "intrinsics": options.intrinsics,
        "intrinsics_refined": bool(refine),
        **({"principal_point_tests": [t.to_dict() for t in tests]} if tests else {}),
        "scale_px": result.scale_px,
        "reprojection_error_before_px": result.reprojection_error_before_px,
        "reprojection_error_after_px": result.reprojection_error_after_px,
        "seconds": result.wall_time_s,
        "gauge": result.options.fix_gauge,
        "solver": result.run.to_dict() if result.run is not None else None,
    }


def _adjust_built_tracks(
    options: FrontEndOptions, posed: PosedImages, inp: ValidatedInput, work: Path, log: Callable[[str], None]
) -> tuple[Any, dict[str, Any]]:
    """Rounds of triangulation from the current poses and robust bundle adjustment, mapped onto the input
    frame (the adjusted tracks' point ids differ from the first triangulation's)."""
    from nerf_posefix.sfm.track_building import DATABASE_FILE, adjust_with_retriangulation

    track_options = options.track_options()
    rounds = ", ".join(f"{r:g}" for r in track_options.reproj_schedule_px)
    log(f"bundle adjustment of {len(inp.model.images)} images, re-triangulating at {rounds} px and once more with the "
        "adjusted poses ...")
    import pycolmap

    start, first = inp.model.to_camera_set(), pycolmap.Reconstruction(str(inp.model_dir))  # the tracks stage's, at the first threshold
    result = adjust_with_retriangulation(work / "tracks" / DATABASE_FILE, posed.images_dir, start, track_options,
                                         log=lambda m: log(f"  {m}"), first_triangulation=first)
    # a camera the rounds moved far more than the others (slid along a line of cameras) or hold weakly (an uncertain
    # pose, few tracks): registered against the others
    result, opinions = reregister_outlying_moves(work / "tracks" / DATABASE_FILE, posed.images_dir, result, start, track_options,
                                                 input_tracks=first, cameras=posed.intrinsics, log=lambda m: log(f"  {m}"))
    placement = Placement()  # nothing placed (--no-frame-placement)
    if options.frame_placement:
        placement = place_blurred_frames(
            work / "tracks" / DATABASE_FILE, posed.images_dir, result.reconstruction, posed.intrinsics, work / "placement",
            track_options.num_threads, track_options.seed, track_options.max_image_size,
            loss_scale_px=result.rounds[-1]["loss_scale_px"], log=lambda m: log(f"  {m}"), max_frames=options.placement_max_frames)
        _set_poses(result.reconstruction, placement.cam_from_world)
        shutil.rmtree(work / "placement", ignore_errors=True)
    support = result.support
    aligned_support: dict[str, Any] = {}
    photometric = None
    if options.photometric_alignment:
        from nerf_posefix.sfm.support import image_support

        if support is None:  # the adjustment's support, before any frame is moved here
            support = image_support(result.reconstruction, loss_scale_px=result.rounds[-1]["loss_scale_px"])
        photometric, aligned_support = _align_weak_frames(result.reconstruction, support, placement, posed.images_dir, log)
    summary: dict[str, Any] = {
        "loss": "cauchy",
        "rounds": result.rounds,
        "reprojection_error_after_px": result.rounds[-1]["mean_reprojection_error_px"],
        "seconds": result.seconds,
        "gauge": "sim3_poses per group of images connected by tracks",
    }
    if opinions:
        summary["second_opinion"] = [o.to_dict() for o in opinions]
    if placement.frames:
        summary["placement"] = placement.to_dict()
    if placement.support or aligned_support:
        summary["placed_support"] = {**{n: s.to_dict() for n, s in placement.support.items()}, **aligned_support}
    if photometric is not None:
        summary["photometric_alignment"] = photometric
    if support is not None:  # computed by the second opinion (or here) on the adjustment's poses and points
        summary["support_before_placement"] = support
    last = result.rounds[-1]
    # a placed frame observed no point of the adjustment (a group of its own there): the placement links it; so does
    # the photometric alignment a group of its own that it holds
    placed = sum(1 for f in placement.frames if f.held and not f.held_before)
    sizes = Counter(s.group for s in support or [])
    placed += sum(1 for s in support or [] if s.name in aligned_support and s.group > 0 and sizes[s.group] == 1)
    groups = last["num_components"] - placed
    if groups > 1:
        summary["warning"] = (
            f"the tracks link the images in {groups} separate groups (largest "
            f"{last['largest_component'] + placed} of {len(result.names)} images): each group is refined within itself and "
            "placed by its input poses, so their relative placement keeps the input's error; more overlap "
            "(--matching exhaustive, --sequential-overlap) can link them"
        )
    return result.reconstruction, summary


def _set_poses(rec: Any, cam_from_world: dict[str, Any]) -> None:
    """Set the poses of the registered images of ``rec`` named in ``cam_from_world`` (``name -> [4, 4]``
    world-to-camera, OpenCV axes, ``rec``'s world frame: the input's)."""
    import pycolmap

    frame_ids = {rec.images[i].name: rec.images[i].frame_id for i in rec.reg_image_ids()}
    for name, w2c in cam_from_world.items():
        rec.frames[frame_ids[name]].rig_from_world = pycolmap.Rigid3d(pycolmap.Rotation3d(w2c[:3, :3]), w2c[:3, 3])


def _align_weak_frames(rec: Any, support: list, placement: Placement, images_dir: Path, log: Callable[[str], None],
                       ) -> tuple[Optional[dict[str, Any]], dict[str, Any]]:
    """The frames still weakly held after the placement (``support``: the adjustment's, list of
    :class:`~nerf_posefix.sfm.support.ImageSupport`) aligned by their intensities against the held ones
    (:func:`nerf_posefix.sfm.photometric_alignment.align_weak_frames`) the tracks hold (not the placed ones: blurred
    themselves, they are poor references; castle motion 40, seed 1: frame 0000 at 1.29 deg against them, 0.17 deg against
    the sharp frames alone); the aligned poses are set in ``rec``. Returns the
    stage's record (None: no frame to align) and, per aligned frame, its support as held (``placed``)."""
    from nerf_posefix.sfm.blur_matching import streaks
    from nerf_posefix.sfm.photometric_alignment import align_weak_frames

    placed = {n for n in placement.support}
    weak = [s.name for s in support if s.weak and s.name not in placed]
    if not weak:
        return None, {}
    held = [s.name for s in support if not s.weak and s.name not in placed]  # the references (the placed ones are blurred)
    t0 = time.perf_counter()
    log(f"  aligning {len(weak)} weakly held image(s) by their intensities against their held neighbours ...")
    aligned, records = align_weak_frames(rec, weak, held, images_dir, log=lambda m: log(f"    {m}"),
                                         streaks=streaks({f.name: f.blur for f in placement.frames if f.blur_supported}))
    _set_poses(rec, aligned)
    by_name = {s.name: s for s in support}
    aligned_support = {
        r.name: replace(by_name[r.name], weak=False, placed=True,
                        reason=f"aligned photometrically ({r.points} points and tangent samples, moved {r.rotation_deg:.3g} deg)").to_dict()
        for r in records if r.kept}
    seconds = time.perf_counter() - t0
    log(f"  {len(aligned)} of {len(weak)} weakly held image(s) aligned photometrically and held ({seconds:.0f} s)")
    return {"frames": [r.to_dict() for r in records], "num_aligned": len(aligned), "seconds": seconds}, aligned_support


def check_front_end_options(options: FrontEndOptions) -> None:
    """Raise :class:`InputError` naming a bad option (before anything runs)."""
    if options.sequential_overlap < 1:
        raise InputError(f"--sequential-overlap must be >= 1, got {options.sequential_overlap}")
    if options.database is not None and not Path(options.database).is_file():
        raise InputError(f"--database {options.database}: no such file")
    if options.threads < 0:
        raise InputError(f"--threads must be >= 0, got {options.threads}")
    if options.placement_max_frames < 0:
        raise InputError(f"--placement-max-frames must be >= 0, got {options.placement_max_frames}")
    if options.intrinsics not in ("auto", "fixed", "focal", "focal-pp"):
        raise InputError(f"--intrinsics must be auto, fixed, focal or focal-pp, got {options.intrinsics!r}")
    if options.intrinsics not in ("auto", "fixed") and options.bundle_adjustment == "none":
        raise InputError(f"--intrinsics {options.intrinsics} refines the cameras in the bundle adjustment: not with --bundle-adjustment none")
