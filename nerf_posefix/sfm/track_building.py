r"""Feature tracks built from the images for poses that come without them (pycolmap).

Phone AR sessions, SLAM systems, robots and survey rigs give poses and images, but no tracks. This module
makes the tracks with COLMAP's own bindings (``pycolmap``), the poses held as given:

1. :func:`match_features`: SIFT features of every image and their verified matches, in a COLMAP database
   (``database.db``). Matching is chosen for the capture (:data:`MATCHING_MODES`): ``exhaustive`` (every
   pair; small sets), ``sequential`` (each image with its ``overlap`` successors in **name** order,
   as COLMAP's sequential matcher orders them: frame numbers or timestamps as names; video-like sequences),
   ``spatial`` (pose-guided: each image with its nearest images by the **input poses**, :func:`spatial_pairs`;
   the pairs grow linearly with the images, and revisits, loops and the passes of a survey are paired
   whatever the names' order), ``auto`` (exhaustive up to :data:`EXHAUSTIVE_MAX_IMAGES` images, spatial
   beyond when poses are given, sequential without them). Images with too few features to be held (heavily
   blurred or washed-out frames) are extracted again at a third of COLMAP's DoG peak threshold
   (:func:`few_feature_images`); the blurred frames that the matching then links with few matches are matched
   again against their neighbours blurred alike (:mod:`nerf_posefix.sfm.blur_matching`). Features and exhaustive
   or sequential matches do
   not depend on the poses, so one database serves every pose set of the same images; spatial pairs do.
2. :func:`triangulate_fixed_poses`: the steps of COLMAP's ``point_triangulator`` (``pycolmap.IncrementalMapper``:
   tracks created image by image, completed, merged, re-triangulated and filtered) on the database's verified
   matches with the given poses held fixed, at a reprojection threshold wide enough for poses a few degrees
   off; the database is read once into COLMAP's cache (:func:`open_track_cache`) for all the triangulations of
   the rounds, and the point triangulator's point-only adjustments are left to the rounds' own but in the last. The result is a
   COLMAP model in the **input world frame** with the input poses exactly, and the new points and tracks.
3. :func:`adjust_with_retriangulation`: rounds of (triangulate with the current poses, robust bundle
   adjustment of poses and points) with a shrinking reprojection threshold (default 16, 8, 4, 2 px,
   Cauchy scale a quarter of it): the first, loose round lets tracks form despite the pose noise; later
   rounds re-triangulate from the improved poses and drop what no longer fits; a final round re-triangulates with
   the adjusted poses at 4x the noise they leave (1-2 px) and adjusts again (rounds the points already meet are
   skipped). After every round each group
   of images connected by tracks is mapped back onto the input frame by the similarity that best aligns its
   cameras with their input ones (:func:`fix_gauge_per_component`; rotation from the orientations, scale
   and translation from the centres): noise-free input poses stay where they are, the output is in the
   user's frame, and groups that no track links (two rings matched sequentially, a gap in a video) do not
   float apart.

Conventions
-----------
* Poses in and out are **camera-to-world** ``[N, 4, 4]`` float64 with **OpenCV** camera axes (x right,
  y down, looking along +z), in the input world frame and units. COLMAP stores world-to-camera
  (``cam_from_world``); the conversion is done here, once, when a reconstruction is made or read.
* Intrinsics are COLMAP camera models (:class:`~nerf_posefix.io.camera_set.ImageCamera`) in pixels of the
  full-resolution images, COLMAP's pixel convention (the centre of the top-left pixel is ``(0.5, 0.5)``).
* Image names are paths relative to the images directory, as COLMAP's database stores them.

``pycolmap`` (4.2.1) is a runtime dependency; it is imported inside the functions.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional

import numpy as np

from nerf_posefix.errors import InputError
from nerf_posefix.geometry.alignment import pose_alignment
from nerf_posefix.geometry.poses import invert_poses
from nerf_posefix.io.camera_set import CameraSet, ImageCamera
from nerf_posefix.sfm.blur_matching import rescue_blurred_frames
from nerf_posefix.sfm.bundle_adjustment import POSE_TOLERANCE, adjust_reconstruction, quiet_colmap_log, reconstruction_c2w
from nerf_posefix.sfm.sift_features import SPATIAL_MAX_ANGLE_DEG, extract_sift, match_listed_pairs, register_images

if TYPE_CHECKING:
    import pycolmap

MatchingMode = Literal["auto", "exhaustive", "sequential", "spatial"]
MATCHING_MODES: tuple[str, ...] = ("auto", "exhaustive", "sequential", "spatial")
#: ``matching="auto"``: exhaustive matching up to this many images, spatial (poses given) or sequential beyond.
EXHAUSTIVE_MAX_IMAGES = 150
#: Spatial matching: images paired with each image (its nearest by the input poses).
SPATIAL_NEIGHBORS = 20
#: Rounds of :func:`adjust_with_retriangulation` before the last only prepare the next triangulation: their
#: adjustment stops at this many times the pose tolerance (half the noise level per iteration by default).
EARLY_ROUND_TOLERANCE_FACTOR = 5.0
#: ... and its last round, whose poses are the result, at this many times the pose tolerance (0.02 of the noise
#: level per iteration by default). Measured on castle-P30 from poses 2 deg / 3 % off (seed 0): at 1x the last
#: round stopped after 35 iterations at 0.133 deg, at 0.2x after 95 at 0.055 deg, as Ceres' full 100 iterations
#: per round (0.055 deg); the poses still drift slowly by ~0.02 px per iteration for tens of iterations there.
#: A COLMAP model's own-track adjustment does not need it (castle-P30: 0.051 deg at 1x, 0.052 deg at 0.2x and at
#: the full 100 iterations).
LAST_ROUND_TOLERANCE_FACTOR = 0.2
#: :func:`adjust_with_retriangulation` skips the scheduled thresholds larger than the smallest one that 95 % of the
#: points already meet within this fraction (:func:`_next_round`): straight to the last round when it is the finest
#: (the poses already agree at it: the rounds in between would re-triangulate and re-adjust the same tracks), or
#: on to an intermediate threshold (rendered 300 views, issue 23: after the 16 px round 95 % of the points are
#: within 1.49 px, so the 8 px round is skipped for the 4 px one).
ROUND_SKIP_FRACTION = 0.5
#: The rounds before the last end their adjustment with up to this fraction of the images (rounded down: none
#: below 50 images) still moving faster than their threshold (the final adjustment: ``STRAGGLER_FRACTION``). Their
#: poses only seed the next triangulation, at a threshold of pixels, which an image still moving by a tenth of a
#: pixel per iteration does not change; the last round adjusts every image to the full rule. Measured on the
#: rendered 300-view scene (issue 23): the 16 px round ran a third block of 10 iterations for 2 of 300 images.
EARLY_ROUND_STRAGGLER_FRACTION = 0.02
#: The rounds' adjustments keep fixed blocks of ``BLOCK_ITERATIONS`` (``adaptive_blocks`` of
#: :func:`nerf_posefix.sfm.bundle_adjustment.adjust_reconstruction`): measured on castle-P30 from 2 deg / 3 % (issue 23),
#: blocks sized to the stragglers' pace shortened the early rounds (25 -> 18 iterations) and, through the tracks the
#: next rounds re-triangulate, moved the result by -0.5 / +6 / -1.6 % on seeds 0 / 1 / 2 (seed 1's final round then
#: ran to its 100 iterations); the rendered 300 views' rounds were unchanged by them.
ROUND_ADAPTIVE_BLOCKS = False
#: :func:`adjust_with_retriangulation` ends with a final round: the tracks re-triangulated with the adjusted poses
#: at ``final_round_factor`` x the median point error the previous round left, within
#: [``FINAL_ROUND_MIN_PX``, the schedule's last threshold]. The last scheduled round's tracks were triangulated
#: from the poses before its adjustment; measured on castle-P30 from 2 deg / 3 % (seeds 1, 2): 0.134 / 0.127 deg
#: without, 0.041 / 0.044 deg with a final round at 1 px (0.046 / 0.047 with one more at 2 px).
FINAL_ROUND_MIN_PX = 1.0
#: File of the spatial pairs beside the database (one ``name1 name2`` line per pair, COLMAP's format).
PAIRS_FILE = "pairs.txt"
#: Peak memory model of track building (bytes): fixed part, per feature (keypoints of the database cache)
#: and per verified match (the correspondence graph; a pair keeps up to a tenth of the features).
TRACKS_MEMORY_BASE_BYTES = 900 * 2**20  # the process (Python, torch, pycolmap): 0.9 GiB peak for 300 small images
TRACKS_MEMORY_PER_FEATURE_BYTES = 48
TRACKS_MEMORY_PER_MATCH_BYTES = 16
#: A last resort for the images that could not be held otherwise: an image with fewer SIFT features than
#: LOW_FEATURE_MIN (and than LOW_FEATURE_FRACTION of the capture's median) is extracted again at
#: LOW_FEATURE_PEAK_THRESHOLD (:func:`few_feature_images`). Only then: on castle-P30 with 8 of 30 frames blurred
#: and cut to 40 % contrast, re-extracting frames that had ~300 features and were held (blur 2 px) made the sharp
#: frames worse (0.071 -> 0.239 deg), while frames with 24-28 features and no track (blur 6 px) went from the
#: input's 1.86 deg to 0.37 deg, the sharp frames unchanged.
LOW_FEATURE_MIN = 100
LOW_FEATURE_FRACTION = 0.25
#: A third of COLMAP's SIFT peak threshold (0.02 / 3 octave levels): on castle-P30 blurred 6 px and cut to 40 %
#: contrast, those frames go from 24-28 features and no verified pair at COLMAP's threshold to 180-190 features and
#: 116-343 inlier matches over 4-13 pairs each (threshold 0.002).
LOW_FEATURE_PEAK_THRESHOLD = 0.02 / 9
#: Database file name inside a track-building directory.
DATABASE_FILE = "database.db"


@dataclass
class TrackOptions:
    """How tracks are built from the images.

    Attributes:
        matching: ``"exhaustive"``, ``"sequential"``, ``"spatial"`` or ``"auto"`` (module docstring).
        sequential_overlap: images each image is matched with, forward in name order (sequential; COLMAP
            orders the images by name).
        spatial_neighbors: images each image is paired with by spatial matching (its nearest centres
            whose optical axes are within ``SPATIAL_MAX_ANGLE_DEG``).
        max_num_features: most SIFT features per image (COLMAP's default 8192).
        max_image_size: images are resized for extraction to at most this many pixels on their longer side
            (COLMAP's default 3200); keypoints are in full-resolution pixels either way.
        reproj_schedule_px: the reprojection thresholds (pixels) of the triangulate / adjust rounds of
            :func:`adjust_with_retriangulation`; the first is also the threshold of the initial
            triangulation with the input poses.
        min_points: fewest triangulated points for the tracks to be used; below, refine falls back to the
            photometric refinement and says so.
        min_observations_per_image: an image with fewer track observations is reported as weakly anchored.
        max_iterations, pose_tolerance: the stopping rule of each round's bundle adjustment
            (:func:`nerf_posefix.sfm.bundle_adjustment.adjust_reconstruction`).
        final_round_factor: the final round's threshold in multiples of the median point error left by the
            scheduled rounds (:data:`FINAL_ROUND_MIN_PX`); 0: no final round.
        num_threads: COLMAP's threads (-1: all cores).
        seed: COLMAP's random seed (RANSAC of the match verification).
        blur_matching: match the blurred images the ordinary matching links with few matches against their
            neighbours blurred alike (:mod:`nerf_posefix.sfm.blur_matching`).
    """

    matching: MatchingMode = "auto"
    sequential_overlap: int = 10
    spatial_neighbors: int = SPATIAL_NEIGHBORS
    max_num_features: int = 8192
    max_image_size: int = 3200
    reproj_schedule_px: tuple[float, ...] = (16.0, 8.0, 4.0, 2.0)
    min_points: int = 100
    min_observations_per_image: int = 20
    max_iterations: int = 100
    pose_tolerance: float = POSE_TOLERANCE
    final_round_factor: float = 4.0
    num_threads: int = -1
    seed: int = 0
    blur_matching: bool = True

    def check(self) -> None:
        """Raise :class:`InputError` naming the bad option."""
        if self.matching not in MATCHING_MODES:
            raise InputError(f"--matching must be one of {', '.join(MATCHING_MODES)}, got {self.matching!r}")
        if self.sequential_overlap < 1:
            raise InputError(f"--sequential-overlap must be >= 1, got {self.sequential_overlap}")
        if self.spatial_neighbors < 1:
            raise InputError(f"spatial matching: the number of neighbours must be >= 1, got {self.spatial_neighbors}")
        if self.max_num_features < 64:
            raise InputError(f"--max-num-features must be >= 64, got {self.max_num_features}")
        if not (np.isfinite(self.final_round_factor) and self.final_round_factor >= 0):
            raise InputError(f"the final round's factor must be >= 0, got {self.final_round_factor}")
        if int(self.max_iterations) < 1 or not (np.isfinite(self.pose_tolerance) and self.pose_tolerance >= 0):
            raise InputError(f"bundle adjustment: max_iterations must be >= 1 and pose_tolerance >= 0, got "
                             f"{self.max_iterations} and {self.pose_tolerance}")
        if not self.reproj_schedule_px or not all(np.isfinite(r) and r > 0 for r in self.reproj_schedule_px):
            raise InputError(f"the reprojection schedule must be positive pixels, got {list(self.reproj_schedule_px)}")

    def matching_for(self, num_images: int, has_poses: bool = True) -> str:
        """The matching actually run for ``num_images`` images (``has_poses``: whether input poses are
        given to pair them by)."""
        if self.matching == "auto":
            if num_images <= EXHAUSTIVE_MAX_IMAGES:
                return "exhaustive"
            return "spatial" if has_poses else "sequential"
        return self.matching

    def num_pairs(self, num_images: int, has_poses: bool = True) -> int:
        """Most image pairs the matching compares (exhaustive: ``N(N-1)/2``; sequential: ``2·N·overlap``, COLMAP's
        successors and its successors at powers of two; spatial: ``N·neighbours``, fewer once the symmetric
        duplicates are removed)."""
        n = int(num_images)
        mode = self.matching_for(n, has_poses)
        if mode == "exhaustive":
            return n * (n - 1) // 2
        if mode == "sequential":
            return n * min(2 * self.sequential_overlap, max(0, n - 1))
        return n * min(self.spatial_neighbors, max(0, n - 1))


@dataclass
class MatchSummary:
    """What :func:`match_features` made: ``matching`` used, images, keypoints, image pairs that passed the
    geometric verification and their inlier matches, seconds."""

    database: Path
    matching: str
    num_images: int
    num_keypoints: int
    num_verified_pairs: int
    num_inlier_matches: int
    seconds: dict[str, float] = field(default_factory=dict)
    blur_matched: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"database": str(self.database), "matching": self.matching, "num_images": self.num_images,
                "num_keypoints": self.num_keypoints, "num_verified_pairs": self.num_verified_pairs,
                "num_inlier_matches": self.num_inlier_matches, "seconds": self.seconds, "blur_matched": self.blur_matched}


@dataclass
class TrackStats:
    """How well a reconstruction's tracks anchor its images.

    Attributes:
        num_points: 3D points; num_observations: their 2D observations.
        observations_per_image: ``{image name: observations}``.
        mean_reprojection_error_px: COLMAP's mean over points of their mean residual (pixels).
        weak_images: names of images with fewer than ``min_observations_per_image`` observations.
    """

    num_points: int
    num_observations: int
    observations_per_image: dict[str, int]
    mean_reprojection_error_px: float
    weak_images: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_points": self.num_points,
            "num_observations": self.num_observations,
            "mean_reprojection_error_px": self.mean_reprojection_error_px,
            "median_observations_per_image": float(np.median(list(self.observations_per_image.values()) or [0])),
            "weak_images": self.weak_images,
        }


def track_stats(rec: "pycolmap.Reconstruction", min_observations_per_image: int) -> TrackStats:
    """:class:`TrackStats` of ``rec``."""
    per_image = {}
    for image_id in rec.reg_image_ids():
        image = rec.images[image_id]
        per_image[image.name] = int(image.num_points3D)
    weak = sorted(n for n, k in per_image.items() if k < min_observations_per_image)
    error = float(rec.compute_mean_reprojection_error()) if rec.num_points3D() else float("nan")
    return TrackStats(int(rec.num_points3D()), int(rec.compute_num_observations()), per_image, error, weak)


# ---------------------------------------------------------------------------------------------
# features and matches


def spatial_pairs(
    names: Sequence[str], c2w: np.ndarray, neighbors: int = SPATIAL_NEIGHBORS, max_angle_deg: float = SPATIAL_MAX_ANGLE_DEG,
) -> list[tuple[str, str]]:
    """Pose-guided image pairs: each image with its ``neighbors`` nearest images by camera centre among those
    whose optical axis is within ``max_angle_deg`` of its own (cameras that look apart see different things,
    however close). ``c2w [N, 4, 4]``: camera-to-world, OpenCV axes (the optical axis is the third column).
    Returns unique pairs ``(name_a, name_b)`` with ``a`` before ``b`` in ``names``, at most ``N·neighbors``:
    linear in the number of images, and independent of the names' order (a survey's passes, a walk-through's
    loops and revisits are paired).

    COLMAP's own ``match_spatial`` pairs by position priors only (and by default ignores their height, for
    GPS); it knows nothing of the viewing direction.
    """
    from scipy.spatial import cKDTree

    n = len(names)
    if n < 2:
        return []
    centres = np.asarray(c2w, dtype=np.float64)[:, :3, 3]
    axes = np.asarray(c2w, dtype=np.float64)[:, :3, 2]
    axes = axes / np.linalg.norm(axes, axis=1, keepdims=True)
    k = min(n, 1 + 4 * int(neighbors))
    _, index = cKDTree(centres).query(centres, k=k)  # [N, k], itself first (or a coincident camera)
    index = np.asarray(index).reshape(n, k)
    cos_max = np.cos(np.deg2rad(max_angle_deg))
    pairs: set[tuple[int, int]] = set()
    for i in range(n):
        candidates = index[i][index[i] != i]
        keep = candidates[axes[candidates] @ axes[i] >= cos_max][: int(neighbors)]
        pairs.update((min(i, int(j)), max(i, int(j))) for j in keep)
    return [(names[a], names[b]) for a, b in sorted(pairs)]


def estimate_track_memory(num_images: int, num_pairs: int, features_per_image: float) -> int:
    """Peak memory (bytes) of building tracks from ``num_images`` images of ``features_per_image`` SIFT
    features matched over ``num_pairs`` pairs: the keypoints of every image and the verified matches of every
    pair (up to a tenth of the features) held by COLMAP's correspondence graph during triangulation."""
    features = float(num_images) * features_per_image
    matches = float(num_pairs) * 0.1 * features_per_image
    return int(TRACKS_MEMORY_BASE_BYTES + TRACKS_MEMORY_PER_FEATURE_BYTES * features + TRACKS_MEMORY_PER_MATCH_BYTES * matches)


def features_per_image(camera: ImageCamera, max_num_features: int, max_image_size: int) -> float:
    """Expected SIFT features of an image (one per ~50 pixels of the extraction size, as measured on the
    bundled 128x128 renders, at most ``max_num_features``)."""
    scale = min(1.0, max_image_size / max(camera.width, camera.height, 1))
    return float(min(max_num_features, camera.width * camera.height * scale * scale / 50.0))


def check_track_memory(names: Sequence[str], cameras: dict[str, ImageCamera], options: "TrackOptions", has_poses: bool,
                       available: Optional[int] = None) -> int:
    """Refuse (before extracting anything) a capture whose track building would not fit in memory. Returns
    the estimate (bytes).

    Raises:
        InputError: the estimate, the memory available and what to do.
    """
    from nerf_posefix.sfm.bundle_adjustment import available_memory_bytes

    n = len(names)
    per_image = float(np.mean([features_per_image(cameras[name], options.max_num_features, options.max_image_size) for name in names])) if n else 0.0
    mode = options.matching_for(n, has_poses)
    pairs = options.num_pairs(n, has_poses)
    estimate = estimate_track_memory(n, pairs, per_image)
    available = available_memory_bytes() if available is None else available
    if estimate > 0.9 * available:
        advice = {
            "exhaustive": "use --matching spatial (pairs from the input poses) or sequential, or fewer images",
            "sequential": "use a smaller --sequential-overlap or fewer images",
            "spatial": "use fewer images (every other frame of a video) or fewer features per image",
        }[mode]
        raise InputError(
            f"building tracks from {n} images ({mode} matching: {pairs} image pairs, ~{per_image:.0f} features per "
            f"image) needs about {estimate / 2**30:.1f} GiB of memory and {available / 2**30:.1f} GiB are available: {advice}"
        )
    return estimate


def _extract_features(
    database: Path, images_dir: Path, names: Sequence[str], cameras: dict[str, ImageCamera], options: TrackOptions,
    verbose: bool, log: Callable[[str], None],
) -> None:
    """SIFT features of ``names`` into ``database`` (pycolmap, one COLMAP camera per group of identical
    intrinsics), with COLMAP's DoG peak threshold; then the images with too few features to be held
    (:func:`few_feature_images`: blurred, washed-out or low-texture frames) are extracted again at
    :data:`LOW_FEATURE_PEAK_THRESHOLD`, in a new database that replaces the first (COLMAP skips the images a
    database has features of, so the low ones go first).

    The cameras and images are written into each database first (:func:`~nerf_posefix.sfm.sift_features.register_images`: image ids in the order
    of ``names``), and COLMAP's extraction keeps them: its threads would otherwise add the images in the order they
    finish, so the ids, and with them the order of every later step (matching's pair ids, the triangulation), would
    change from run to run (castle-P30 with blurred frames, two runs of the same command: sharp frames at 0.25 and
    0.09 deg)."""
    def extract(target: Path, subset: Sequence[str], peak_threshold: Optional[float] = None) -> None:
        extract_sift(target, images_dir, subset, cameras, options.num_threads, options.max_image_size, options.max_num_features,
                     peak_threshold, verbose)

    log(f"features of {len(names)} images")
    register_images(database, names, cameras)
    extract(database, names)
    low = few_feature_images(database, names)
    if not low:
        return
    counts = ", ".join(f"{n} {k}" for n, k in list(low.items())[:5]) + (", ..." if len(low) > 5 else "")
    log(f"{len(low)} image(s) with too few SIFT features to be held ({counts}; fewer than {LOW_FEATURE_MIN}): "
        f"extracted again at the DoG peak threshold {LOW_FEATURE_PEAK_THRESHOLD:g}")
    redo = database.with_name(database.name + ".redo")
    redo.unlink(missing_ok=True)
    try:
        register_images(redo, names, cameras)
        extract(redo, list(low), LOW_FEATURE_PEAK_THRESHOLD)
        extract(redo, [n for n in names if n not in low])
        redo.replace(database)
    finally:
        redo.unlink(missing_ok=True)  # a failed extraction leaves no half-made database beside the first


def few_feature_images(database: str | Path, names: Sequence[str]) -> dict[str, int]:
    """The images of ``names`` whose SIFT feature count in ``database`` is below :data:`LOW_FEATURE_MIN` (and
    below :data:`LOW_FEATURE_FRACTION` times the median count), with their counts, in ``names`` order. COLMAP's
    DoG peak threshold is absolute in intensity, so a blurred or washed-out frame keeps a few dozen features of
    the thousands its sharp neighbours have (castle-P30, blur 6 px and contrast 40 %: 24-28 against ~3000)."""
    import pycolmap

    db = pycolmap.Database.open(str(database))
    try:
        ids = {image.name: image.image_id for image in db.read_all_images()}
        counts = {n: int(db.num_keypoints_for_image(ids[n])) for n in names if n in ids}
    finally:
        db.close()
    if len(counts) < 2:
        return {}
    limit = min(LOW_FEATURE_FRACTION * float(np.median(list(counts.values()))), LOW_FEATURE_MIN)
    return {n: k for n, k in counts.items() if k < limit}


def match_features(
    images_dir: str | Path,
    names: Sequence[str],
    cameras: dict[str, ImageCamera],
    database: str | Path,
    options: TrackOptions | None = None,
    verbose: bool = False,
    log: Optional[Callable[[str], None]] = None,
    poses: Optional[CameraSet] = None,
) -> MatchSummary:
    """Extract SIFT features of ``names`` (relative to ``images_dir``) with the given intrinsics and match
    them into a new COLMAP database ``database`` (which must not exist).

    Each distinct :class:`ImageCamera` becomes one COLMAP camera (``CameraMode.SINGLE`` per group). Images
    are matched exhaustively, sequentially in the order of ``names``, or (``poses`` given: camera-to-world,
    OpenCV axes, by name) spatially with the pairs of :func:`spatial_pairs`, written to ``pairs.txt`` beside
    the database (:class:`TrackOptions`); pairs are verified geometrically by COLMAP (RANSAC, seeded).

    Raises:
        InputError: ``database`` exists, a name has no camera, spatial matching without ``poses`` (or with a
            name holding a space, which COLMAP's pair lists cannot carry), or a capture too large for the
            memory available (:func:`check_track_memory`).
    """
    import pycolmap

    options = options or TrackOptions()
    options.check()
    log = log or (lambda message: None)
    database, images_dir = Path(database), Path(images_dir)
    if database.exists():
        raise InputError(f"{database}: a COLMAP database is there already")
    missing = [n for n in names if n not in cameras]
    if missing:
        raise InputError(f"no intrinsics for the images {', '.join(missing[:5])}")
    matching = options.matching_for(len(names), has_poses=poses is not None)
    by_name = dict(zip(poses.names, poses.c2w)) if poses is not None else {}
    c2w = np.stack([by_name[n] for n in names]) if by_name and all(n in by_name for n in names) else None  # names order
    pairs: list[tuple[str, str]] = []
    if matching == "spatial":
        if poses is None:
            raise InputError("spatial matching needs the input poses")
        spaced = [n for n in names if any(c.isspace() for c in n)]
        if spaced:
            raise InputError(f"spatial matching: the image name {spaced[0]!r} holds a space, which COLMAP's pair lists "
                             "cannot carry; use --matching exhaustive or sequential")
        absent = [n for n in names if n not in by_name]
        if absent:
            raise InputError(f"spatial matching: no input pose for the images {', '.join(absent[:5])}")
        pairs = spatial_pairs(list(names), c2w, options.spatial_neighbors)
    check_track_memory(names, cameras, options, has_poses=poses is not None)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    _extract_features(database, images_dir, names, cameras, options, verbose, log)
    seconds["extract"] = time.perf_counter() - t0
    check_database_images(database, names)
    t0 = time.perf_counter()
    matcher = pycolmap.FeatureMatchingOptions()
    matcher.num_threads = options.num_threads
    verification = pycolmap.TwoViewGeometryOptions()
    verification.ransac.random_seed = options.seed
    log(f"{matching} matching of {len(names)} images" + (f" ({len(pairs)} pairs from the input poses)" if matching == "spatial" else ""))
    with quiet_colmap_log(verbose):
        if matching == "exhaustive":
            pycolmap.match_exhaustive(database, matching_options=matcher, verification_options=verification, device=pycolmap.Device.cpu)
        elif matching == "spatial":
            match_listed_pairs(database, pairs, database.parent / PAIRS_FILE, options.num_threads, options.seed, verbose)
        else:
            pairing = pycolmap.SequentialPairingOptions()
            pairing.overlap = options.sequential_overlap
            pairing.num_threads = options.num_threads
            pycolmap.match_sequential(
                database, matching_options=matcher, pairing_options=pairing, verification_options=verification,
                device=pycolmap.Device.cpu,
            )
    seconds["match"] = time.perf_counter() - t0
    rescued = []
    if options.blur_matching:
        t0 = time.perf_counter()
        rescued = rescue_blurred_frames(database, images_dir, names, cameras, database.parent, c2w=c2w, num_threads=options.num_threads,
                                        seed=options.seed, max_image_size=options.max_image_size, verbose=verbose, log=log)
        seconds["blur_matching"] = time.perf_counter() - t0
    summary = database_summary(database, matching, seconds)
    summary.blur_matched = [f.to_dict() for f in rescued]
    if summary.num_images != len(names):
        raise RuntimeError(f"{database}: {summary.num_images} images after feature extraction, expected {len(names)}")
    return summary


def database_summary(database: str | Path, matching: str, seconds: dict[str, float] | None = None) -> MatchSummary:
    """What a COLMAP database holds: images, keypoints, image pairs that passed the geometric verification
    (COLMAP also records those that failed, with no inliers) and their inlier matches."""
    import pycolmap

    db = pycolmap.Database.open(str(database))
    try:
        num_keypoints = int(db.num_keypoints())
        num_images = int(db.num_images())
        _, geometries = db.read_two_view_geometries()
        inliers = [int(g.inlier_matches.shape[0]) for g in geometries]
    finally:
        db.close()
    num_pairs = sum(1 for k in inliers if k > 0)
    return MatchSummary(Path(database), matching, num_images, num_keypoints, num_pairs, sum(inliers), dict(seconds or {}))


def check_database_images(
    database: str | Path, names: Sequence[str], label: str | None = None, images_dir: Optional[str | Path] = None,
    sizes: Optional[dict[str, tuple[int, int]]] = None,
) -> None:
    """Check that ``database`` is a COLMAP database of these images, reading it **read-only**
    (:func:`nerf_posefix.io.colmap.check_colmap_database`: an SQLite file with COLMAP's tables, every one of
    ``names`` an image of it under that name relative to the image directory, as COLMAP stores them; with
    ``sizes`` its cameras have the images' sizes on disk; with ``images_dir`` its keypoints are where SIFT
    finds features in the images on disk). Nothing is written, and a file that is not a database is never
    turned into one.

    Raises:
        InputError: ``label`` (default: the database path) and what is wrong, in one line.
    """
    from nerf_posefix.io.colmap import check_colmap_database

    check_colmap_database(database, names, label, images_dir=images_dir, sizes=sizes)


# ---------------------------------------------------------------------------------------------
# triangulation and adjustment


def reconstruction_from_poses(
    database: str | Path, posed: CameraSet, cameras: dict[str, ImageCamera] | None = None
) -> "pycolmap.Reconstruction":
    """A point-less reconstruction of the database's images (same image and camera ids) with the poses of
    ``posed`` (camera-to-world, OpenCV axes, by name), and the database's cameras or, when given, the
    intrinsics ``cameras`` (by image name; images sharing a database camera must share intrinsics).

    Raises:
        InputError: an image of ``posed`` is not in the database.
    """
    import pycolmap

    db = pycolmap.Database.open(str(database))
    try:
        db_images = {im.name: im for im in db.read_all_images()}
        db_cameras = {cam.camera_id: cam for cam in db.read_all_cameras()}
    finally:
        db.close()
    missing = [n for n in posed.names if n not in db_images]
    if missing:
        raise InputError(f"{database}: images not in the COLMAP database: {', '.join(missing[:5])}")
    rec = pycolmap.Reconstruction()
    for camera_id in sorted({db_images[n].camera_id for n in posed.names}):
        camera = db_cameras[camera_id]
        if cameras is not None:
            given = {cameras[n] for n in posed.names if db_images[n].camera_id == camera_id}
            if len(given) != 1:
                raise InputError(f"{database}: images of camera {camera_id} are given different intrinsics")
            intrinsics = given.pop()
            camera = pycolmap.Camera.create_from_model_name(camera_id, intrinsics.model, 1.0, intrinsics.width, intrinsics.height)
            camera.params = np.asarray(intrinsics.params, dtype=np.float64)
        rec.add_camera_with_trivial_rig(camera)
    w2c = invert_poses(posed.c2w)  # [N, 4, 4] world-to-camera, OpenCV axes
    for k, name in enumerate(posed.names):
        db_image = db_images[name]
        image = pycolmap.Image(name=name, camera_id=db_image.camera_id, image_id=db_image.image_id)
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(pycolmap.Rotation3d(w2c[k, :3, :3]), w2c[k, :3, 3]))
    return rec


def _triangulation_options(max_reproj_px: float, focal_px: float, num_threads: int, seed: int) -> "pycolmap.IncrementalPipelineOptions":
    import pycolmap

    options = pycolmap.IncrementalPipelineOptions()
    options.num_threads = num_threads
    options.random_seed = seed
    options.ba_refine_focal_length = False
    options.ba_refine_principal_point = False
    options.ba_refine_extra_params = False
    options.mapper.filter_max_reproj_error = float(max_reproj_px)
    options.triangulation.merge_max_reproj_error = float(max_reproj_px)
    options.triangulation.complete_max_reproj_error = float(max_reproj_px)
    # Angle thresholds of track creation / continuation: poses a few degrees off must not veto every track
    # in the loose first round.
    angle = max(2.0, float(max_reproj_px) / focal_px * 180.0 / np.pi)
    options.triangulation.create_max_angle_error = angle
    options.triangulation.continue_max_angle_error = angle
    return options


def _focal_px(rec: "pycolmap.Reconstruction") -> float:
    return float(np.mean([cam.mean_focal_length() for cam in rec.cameras.values()]))


def open_track_cache(database: str | Path, min_num_matches: Optional[int] = None) -> "pycolmap.DatabaseCache":
    """COLMAP's in-memory cache of a track database (``pycolmap.DatabaseCache``: cameras, images, keypoints and
    the correspondence graph of the image pairs with at least ``min_num_matches`` verified matches; None:
    COLMAP's mapper default, 15), read once: what COLMAP's point triangulator reads from the database on every
    call. Pass it to :func:`triangulate_fixed_poses` to triangulate several times from the same database (the
    rounds of :func:`adjust_with_retriangulation`). It holds the keypoints and matches in memory
    (:data:`TRACKS_MEMORY_PER_FEATURE_BYTES`, :data:`TRACKS_MEMORY_PER_MATCH_BYTES`); reading it took 0.04 s of
    a 3.4 s triangulation on the rendered 300 views (108k keypoints, 3234 pairs; issue 23)."""
    import pycolmap

    cache_options = pycolmap.DatabaseCacheOptions()
    if min_num_matches is None:
        min_num_matches = pycolmap.IncrementalPipelineOptions().min_num_matches
    cache_options.min_num_matches = int(min_num_matches)
    db = pycolmap.Database.open(str(database))
    try:
        return pycolmap.DatabaseCache.create(db, cache_options)
    finally:
        db.close()


def triangulate_fixed_poses(
    rec: "pycolmap.Reconstruction", database: str | Path, images_dir: str | Path, max_reproj_px: float,
    num_threads: int = -1, seed: int = 0, verbose: bool = False, cache: Optional["pycolmap.DatabaseCache"] = None,
    refine_points: bool = False, colours: bool = True,
) -> "pycolmap.Reconstruction":
    """COLMAP's point triangulation on the database's verified matches with ``rec``'s poses held fixed (its
    points are cleared first; ``rec`` itself is not changed): tracks are created image by image, completed,
    merged and re-triangulated, and the points whose reprojection error exceeds ``max_reproj_px`` pixels or
    whose triangulation angle is below COLMAP's 1.5 degrees are filtered, all through ``pycolmap.IncrementalMapper``
    (the steps of COLMAP's ``point_triangulator``). Returns the new reconstruction (poses and intrinsics
    unchanged, same image ids: ``rec``'s images must carry the database's ids, as
    :func:`reconstruction_from_poses` gives them).

    ``cache``: the database's :func:`open_track_cache`, read once for several triangulations (else read now).
    ``refine_points``: also run the point triangulator's point-only refinements (up to 5 bundle adjustments of
    the points with the poses held, squared loss, each followed by track completion, merging and filtering; the
    tracks then match ``pycolmap.triangulate_points``'). Off by default (on in the last round of
    :func:`adjust_with_retriangulation`): the robust adjustment of poses and points that follows every
    triangulation there refines the points itself, and they
    took 2.7 of a triangulation's 3.5 s (rendered 300 views at 16 px, issue 23, ``benchmarks/triangulation_probe.py``:
    1.1 s without them, the cache given, against 3.5 s for ``triangulate_points`` in the same run). Measured
    without / with them: the rendered 300 views' rounds on one database from poses 1 deg / 2 % off (noise seeds
    0, 1, 2) end at 0.0393 / 0.0403 / 0.0397 deg against 0.0399 / 0.0405 / 0.0400 deg; castle-P30's front end
    from 2 deg / 3 % (``benchmarks.front_end_only``, seeds 0, 1, 2) at 0.0374 / 0.0409 / 0.0407 deg against
    0.0406 / 0.0416 / 0.0425 deg. ``colours``: the points' colours, read from every image under ``images_dir``
    (else black; :func:`adjust_with_retriangulation` reads them once, for its result only).

    Raises:
        InputError: an image of ``rec`` has another id in the database.
    """
    import pycolmap

    options = _triangulation_options(max_reproj_px, _focal_px(rec), num_threads, seed)
    options.fix_existing_frames = True  # as the point triangulator: the poses are not refined
    if cache is None:
        with quiet_colmap_log(verbose):
            cache = open_track_cache(database, options.min_num_matches)
    out = pycolmap.Reconstruction(rec)
    out.delete_all_points2D_and_points3D()
    wrong = [out.images[i].name for i in out.reg_image_ids()
             if cache.exists_image(i) and cache.image(i).name != out.images[i].name]
    if wrong:
        raise InputError(f"{database}: the images {', '.join(wrong[:5])} have other ids in the COLMAP database")
    mapper_options, tri_options = options.get_mapper(), options.get_triangulation()
    with quiet_colmap_log(verbose):
        mapper = pycolmap.IncrementalMapper(cache)
        mapper.begin_reconstruction(out)
        for image_id in sorted(out.reg_image_ids()):
            mapper.triangulate_image(tri_options, image_id)
        if refine_points:
            mapper.iterative_global_refinement(options.ba_global_max_refinements, options.ba_global_max_refinement_change,
                                               mapper_options, options.get_global_bundle_adjustment(), tri_options,
                                               normalize_reconstruction=False)
        else:
            mapper.complete_and_merge_tracks(tri_options)
            mapper.retriangulate(tri_options)
            mapper.filter_points(mapper_options)
        mapper.end_reconstruction(False)
        out.update_point_3d_errors()
        if colours:
            out.extract_colors_for_all_images(str(images_dir))
    return out


def track_components(rec: "pycolmap.Reconstruction") -> list[list[int]]:
    """The registered images grouped by the tracks that connect them (two images are connected when a
    point is observed by both, directly or through other images); image ids, largest group first. Images
    observing no point are groups of their own."""
    ids = sorted(rec.reg_image_ids())
    parent = {i: i for i in ids}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for point in rec.points3D.values():
        observers = [el.image_id for el in point.track.elements]
        for other in observers[1:]:
            parent[root(other)] = root(observers[0])
    groups: dict[int, list[int]] = {}
    for i in ids:
        groups.setdefault(root(i), []).append(i)
    return sorted(groups.values(), key=lambda g: (-len(g), g[0]))


def fix_gauge_per_component(rec: "pycolmap.Reconstruction", input_c2w: dict[str, np.ndarray],
                            groups: Optional[list[list[int]]] = None) -> list[Any]:
    """Map each group of :func:`track_components` (its cameras and the points it observes) onto the input
    frame with the similarity that best aligns its cameras with their input poses
    (:func:`nerf_posefix.geometry.alignment.pose_alignment`). A bundle adjustment fixes nothing but the
    relative poses *within* a connected group: groups that no track links (two rings of a capture matched
    sequentially, a gap in a video) each float in their own similarity frame, and one global alignment would
    leave them misplaced against each other. A group of one image keeps its input pose. ``groups``: ``rec``'s
    :func:`track_components` when the caller has them. Returns the alignments, one per group (None for single
    images)."""
    import pycolmap

    groups = track_components(rec) if groups is None else groups
    alignments: list[Any] = []
    for group in groups:
        if len(group) < 2:
            image = rec.images[group[0]]
            w2c = np.linalg.inv(input_c2w[image.name])
            rec.frames[image.frame_id].rig_from_world = pycolmap.Rigid3d(pycolmap.Rotation3d(w2c[:3, :3]), w2c[:3, 3])
            alignments.append(None)
            continue
        names = [rec.images[i].name for i in group]
        current = invert_poses(np.stack([np.asarray(rec.images[i].cam_from_world().matrix()) for i in group]))  # [G, 4, 4]
        alignment = pose_alignment(current, np.stack([input_c2w[n] for n in names]))
        s, rot, t = float(alignment.scale), np.asarray(alignment.rotation), np.asarray(alignment.translation)
        if len(groups) == 1:  # the whole model: its poses and points mapped by pycolmap (C++) at once
            rec.transform(pycolmap.Sim3d(s, pycolmap.Rotation3d(rot), np.asarray(t, dtype=np.float64)))
            alignments.append(alignment)
            continue
        for i, c2w in zip(group, current):
            new = np.eye(4)
            new[:3, :3] = rot @ c2w[:3, :3]
            new[:3, 3] = s * rot @ c2w[:3, 3] + t
            w2c = np.linalg.inv(new)
            rec.frames[rec.images[i].frame_id].rig_from_world = pycolmap.Rigid3d(pycolmap.Rotation3d(w2c[:3, :3]), w2c[:3, 3])
        members = set(group)
        for point_id, point in rec.points3D.items():
            if point.track.elements and point.track.elements[0].image_id in members:
                rec.points3D[point_id].xyz = s * rot @ np.asarray(point.xyz) + t
        alignments.append(alignment)
    return alignments


@dataclass
class AdjustedTracks:
    """Outcome of :func:`adjust_with_retriangulation`.

    Attributes:
        reconstruction: the adjusted ``pycolmap.Reconstruction``, mapped onto the input frame.
        names: ``[N]`` image names, sorted; c2w: ``[N, 4, 4]`` adjusted camera-to-world poses (OpenCV axes,
            input world frame); input_c2w: the input poses, same order.
        rounds: per round ``{max_reproj_px, loss_scale_px, num_points3D, num_observations,
            mean_reprojection_error_px}``.
        alignment: the similarity that best maps the output cameras onto the input ones (after the gauge of
            every connected group was fixed on its input poses: near the identity).
        seconds: wall time of all rounds.
        support: how well the tracks hold each image of ``reconstruction`` as it is
            (:func:`nerf_posefix.sfm.support.image_support` at the last round's loss scale) when a later stage
            computed it already, else None. Per image, conditional on the points: moving one image's pose leaves
            the others' support as it is.
    """

    reconstruction: Any
    names: list[str]
    c2w: np.ndarray
    input_c2w: np.ndarray
    rounds: list[dict[str, float]]
    alignment: Any
    seconds: float
    support: Optional[list[Any]] = None


def _same_images_and_poses(a: "pycolmap.Reconstruction", b: "pycolmap.Reconstruction") -> bool:
    """Whether two reconstructions register the same images (ids, names, cameras) at the same poses (to 1e-9,
    relative: a model written and read back differs in its last bits)."""
    ids = sorted(a.reg_image_ids())
    if ids != sorted(b.reg_image_ids()):
        return False
    if any(a.images[i].name != b.images[i].name or a.images[i].camera_id != b.images[i].camera_id for i in ids):
        return False
    pa = np.stack([np.asarray(a.images[i].cam_from_world().matrix(), dtype=np.float64) for i in ids]) if ids else np.zeros(0)
    pb = np.stack([np.asarray(b.images[i].cam_from_world().matrix(), dtype=np.float64) for i in ids]) if ids else np.zeros(0)
    return bool(np.allclose(pa, pb, rtol=1e-9, atol=1e-9 * (1.0 + float(np.abs(pa).max(initial=0.0)))))


def _next_round(schedule: Sequence[Optional[float]], k: int, p95: float) -> int:
    """The round after round ``k`` of ``schedule`` (thresholds, the final round ``None`` last), given the 95th
    percentile of the point errors round ``k`` left: the first round of the smallest scheduled threshold ``t``
    beyond ``k`` with ``p95 <= ROUND_SKIP_FRACTION x t`` (the points already agree at it: the larger thresholds
    in between would re-triangulate and re-adjust the same tracks), or straight to the final round when that is
    the last scheduled threshold (with a final round; without one it is run); else round ``k + 1``."""
    has_final = bool(schedule) and schedule[-1] is None
    scheduled_end = len(schedule) - 1 if has_final else len(schedule)
    fits = [j for j in range(k + 1, scheduled_end) if p95 <= ROUND_SKIP_FRACTION * float(schedule[j])]  # type: ignore[arg-type]
    if not fits:
        return k + 1
    j = fits[-1]  # thresholds decrease: the smallest that fits
    if j == scheduled_end - 1 and has_final:
        return len(schedule) - 1  # the last scheduled threshold is met already: the final round re-triangulates
    return j


def adjust_with_retriangulation(
    database: str | Path,
    images_dir: str | Path,
    posed: CameraSet,
    options: TrackOptions | None = None,
    verbose: bool = False,
    log: Optional[Callable[[str], None]] = None,
    cameras: dict[str, ImageCamera] | None = None,
    refine_intrinsics: bool = False,
    first_triangulation: Optional["pycolmap.Reconstruction"] = None,
    gauge: Optional[CameraSet] = None,
) -> AdjustedTracks:
    """Refine ``posed`` (camera-to-world, OpenCV, input frame) by rounds of triangulation with the current
    poses held fixed and robust bundle adjustment (Cauchy, scale a quarter of the round's threshold) of poses
    and points (stopping when the poses stop moving: before the last round at
    ``EARLY_ROUND_TOLERANCE_FACTOR`` times the tolerance, in the last at ``LAST_ROUND_TOLERANCE_FACTOR`` times), over ``options.reproj_schedule_px``, points whose mean residual is still above the round's
    threshold deleted after each adjustment (straight to the last round once the points agree at its threshold:
    ``ROUND_SKIP_FRACTION``); then map the result onto the input frame (module
    docstring). Intrinsics: the database's, or ``cameras`` (see :func:`reconstruction_from_poses`); held
    fixed unless ``refine_intrinsics`` (focal lengths and distortion; the principal point stays).
    ``first_triangulation``: the triangulation of ``posed`` at the schedule's first threshold, already made (the
    front end's tracks stage): the first round starts from a copy of it instead of triangulating again, when its
    images (ids, names) and poses are the round's (else it is triangulated). The rounds' triangulations share one
    read of the database (:func:`open_track_cache`) and leave the points' colours out; the result's are read from
    the images once, at the end. The last round's triangulation, whose tracks are the result's, keeps the point
    triangulator's point-only refinements (``refine_points``; the bundled toybox from 3 deg / 5 %, seeds 0-2: 0.048
    +- 0.001 deg with them, 0.052 +- 0.003 deg without, ``benchmarks.poses_from_anywhere --rows input posefix-tracks``);
    the earlier rounds' only seed the next triangulation. ``gauge``: the poses (camera-to-world, OpenCV, by name) each
    group's gauge is fixed on and the result is measured against (``input_c2w``, ``alignment``); None: ``posed``
    (rounds restarted from corrected poses keep the frame of the poses first given:
    :mod:`nerf_posefix.sfm.outlying_moves`).

    Raises:
        InputError: no point could be triangulated in a round (the message gives the round's threshold).
    """
    import pycolmap

    options = options or TrackOptions()
    options.check()
    log = log or (lambda message: None)
    t0 = time.perf_counter()
    rec = reconstruction_from_poses(database, posed, cameras)
    names, input_c2w = reconstruction_c2w(rec)
    if gauge is not None:
        gauge_by_name = dict(zip(gauge.names, gauge.c2w))
        input_c2w = np.stack([gauge_by_name[n] for n in names])  # [N, 4, 4]
    input_by_name = dict(zip(names, input_c2w))
    rounds: list[dict[str, float]] = []
    schedule: list[Optional[float]] = [*options.reproj_schedule_px, *([None] if options.final_round_factor > 0 else [])]
    last_scheduled = float(options.reproj_schedule_px[-1])
    errors = np.zeros(0)
    cache: Optional["pycolmap.DatabaseCache"] = None  # read on the first triangulation, kept for the next ones
    triangulated = False  # whether the points are this call's (their colours are read once, at the end)
    k = 0
    while k < len(schedule):
        final = schedule[k] is None  # the final round: its threshold from the noise the previous round left
        r = float(np.clip(options.final_round_factor * np.median(errors), FINAL_ROUND_MIN_PX, last_scheduled)) if final else float(schedule[k])
        if k == 0 and first_triangulation is not None and _same_images_and_poses(rec, first_triangulation):
            rec = pycolmap.Reconstruction(first_triangulation)
        else:
            if cache is None:
                with quiet_colmap_log(verbose):
                    cache = open_track_cache(database)
            rec = triangulate_fixed_poses(rec, database, images_dir, r, options.num_threads, options.seed, verbose, cache=cache,
                                          colours=False, refine_points=k == len(schedule) - 1)
            triangulated = True
        if rec.num_points3D() == 0:
            raise InputError(f"no point could be triangulated at {r:g} px from the verified matches and the given poses")
        ba = pycolmap.BundleAdjustmentOptions()
        ba.refine_focal_length = refine_intrinsics
        ba.refine_principal_point = False
        ba.refine_extra_params = refine_intrinsics
        ba.print_summary = False
        ba.ceres.loss_function_type = pycolmap.LossFunctionType.CAUCHY
        ba.ceres.loss_function_scale = float(r) / 4.0
        ba.ceres.solver_options.num_threads = options.num_threads
        last = k == len(schedule) - 1
        tolerance = options.pose_tolerance * (LAST_ROUND_TOLERANCE_FACTOR if last else EARLY_ROUND_TOLERANCE_FACTOR)
        run = adjust_reconstruction(rec, ba, max_iterations=options.max_iterations, pose_tolerance=tolerance, verbose=verbose,
                                    adaptive_blocks=ROUND_ADAPTIVE_BLOCKS,
                                    **({} if last else {"straggler_fraction": EARLY_ROUND_STRAGGLER_FRACTION}))
        rec.update_point_3d_errors()
        outliers = [pid for pid, point in rec.points3D.items() if not point.error <= r]  # NaN too
        for pid in outliers:  # as COLMAP's mapper filters after its adjustments
            rec.delete_point3D(pid)
        groups = track_components(rec)
        fix_gauge_per_component(rec, input_by_name, groups)  # the next round triangulates in the input frame
        errors = np.fromiter((p.error for p in rec.points3D.values()), dtype=np.float64, count=rec.num_points3D())
        p95 = float(np.percentile(errors, 95)) if errors.size else float("inf")
        nxt = _next_round(schedule, k, p95)
        skipped = schedule[k + 1:nxt]
        rounds.append({
            "points_filtered": len(outliers),
            "num_components": len(groups),
            "largest_component": len(groups[0]),
            "max_reproj_px": float(r),
            "loss_scale_px": float(r) / 4.0,
            "num_points3D": int(rec.num_points3D()),
            "num_observations": int(rec.compute_num_observations()),
            "mean_reprojection_error_px": float(rec.compute_mean_reprojection_error()),
            "p95_point_error_px": p95,
            "rounds_skipped_px": [float(x) for x in skipped if x is not None],
            "final": final,
            "iterations": run.iterations,
            "stop": run.stop,
            "linear_solver": run.linear_solver,
            "adjustment_seconds": run.seconds,
        })
        log(f"round {len(rounds)} at {r:.3g} px{' (final: re-triangulated with the adjusted poses)' if final else ''}: "
            f"{rec.num_points3D()} points, mean reprojection error {rounds[-1]['mean_reprojection_error_px']:.3f} px"
            + (f"; 95 % of the points within {p95:.2f} px: " + ("straight to the last round" if nxt == len(schedule) - 1 else
               f"on to {schedule[nxt]:g} px") if skipped else ""))
        k = nxt
    alignment = pose_alignment(reconstruction_c2w(rec)[1], input_c2w)  # what remains of a common drift: ~identity
    rec.update_point_3d_errors()
    if triangulated:
        with quiet_colmap_log(verbose):
            rec.extract_colors_for_all_images(str(images_dir))
    out_names, c2w = reconstruction_c2w(rec)
    if out_names != names:
        raise RuntimeError("the bundle adjustment changed the set of registered images")
    return AdjustedTracks(rec, names, c2w, input_c2w, rounds, alignment, time.perf_counter() - t0)


def copy_database(source: str | Path, target: str | Path) -> Path:
    """Copy a COLMAP database (the input is never modified: triangulation reads it only, but COLMAP opens
    it read-write): :func:`nerf_posefix.io.colmap.copy_colmap_database` (SQLite's backup from a read-only
    connection; a file that is not a COLMAP database, or a copy that cannot be written, is one line).

    Raises:
        InputError: naming the file and the reason.
    """
    from nerf_posefix.io.colmap import copy_colmap_database

    return copy_colmap_database(source, target)


__all__ = [
    "AdjustedTracks",
    "DATABASE_FILE",
    "MATCHING_MODES",
    "MatchSummary",
    "TrackOptions",
    "TrackStats",
    "adjust_with_retriangulation",
    "check_database_images",
    "check_track_memory",
    "estimate_track_memory",
    "features_per_image",
    "spatial_pairs",
    "copy_database",
    "database_summary",
    "fix_gauge_per_component",
    "track_components",
    "match_features",
    "reconstruction_from_poses",
    "open_track_cache",
    "track_stats",
    "triangulate_fixed_poses",
]
