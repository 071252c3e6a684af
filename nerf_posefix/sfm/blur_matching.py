r"""Blur-matched features: matches for the blurred frames SIFT barely holds, against their neighbours blurred alike.

A frame blurred by motion or defocus (or washed out) keeps a few dozen SIFT features of the thousands its sharp
neighbours have; re-extracted at a lower DoG threshold (:func:`nerf_posefix.sfm.track_building.few_feature_images`)
it matches a few of them, and its pose rests on a few tracks: the sharp images' features describe detail the blurred
frame does not show. Blurring the neighbours alike brings the two back into one scale space. For each frame that
the ordinary matching left with few verified matches (:func:`frames_to_rescue`), this module

1. estimates how it is more blurred than its neighbours: smeared along one direction (:func:`estimate_streak`: the
   direction along which its gradient energy fell most relative to theirs, if it fell at least
   :data:`STREAK_ANISOTROPY` times more than across it, and the streak length that brings theirs down to its own
   along it), else a Gaussian blur (:func:`estimate_blur_sigma`: the σ that brings a neighbour's contrast-normalised
   gradient energy down to the frame's, median over its nearest neighbours); lengths and σ in pixels of the
   full-resolution image; frames that are not blurred are left alone;
2. writes copies of its neighbours blurred alike (smeared along the frame's streak, nearest of
   :data:`STREAK_LEVELS`; or Gaussian, nearest of :data:`SIGMA_LEVELS`), and of itself, all contrast-normalised (the
   DoG peak threshold is absolute in intensity), into a side directory;
3. extracts SIFT from those copies at :data:`PEAK_THRESHOLD` and matches each frame with its neighbours' copies,
   and the neighbours' copies with each other (pycolmap's feature extraction, imported-pairs matching and
   geometric verification, in a side database);
4. appends the copies' keypoints (and descriptors) to the images' own in the main database and records there the
   verified matches of the frame's pairs, and of the neighbours' pairs those that continue the frame's tracks
   (:func:`merge_matches`), with the appended keypoints' indices. A frame that had no verified pair before keeps
   its new matches only when they look like a real frame's (:data:`NEW_FRAME_PAIRS`, :data:`NEW_FRAME_FRACTION`):
   nothing else confirms them.

Blur moves no feature: a keypoint of a blurred copy lies where the structure it describes lies in the image (a
streak is centred on its pixel), so its coordinates are those of the original image (COLMAP's convention,
full-resolution pixels, the centre of the top-left pixel at ``(0.5, 0.5)``). The frames' tracks then run through the
neighbours' appended keypoints and are triangulated and adjusted with every other track; the neighbours' ordinary
tracks are untouched.

Measured on castle-P30, 8 of 30 frames blurred and cut to 40 % contrast, from poses 2 deg / 3 % off (docs/benchmarks.md,
weak frames, tenth and twelfth looks):

* Gaussian blur 6 px: all 8 frames have 132-350 verified matches (a quarter of the median image's is ~500) and gain
  199-686 over 5-10 pairs each; ``posefix refine --iterations 0`` (``benchmarks.weak_frames``, the adjustment row,
  3 seeds) brings them to 0.169 +- 0.007 deg (median), from 0.380 +- 0.042 deg with the ordinary matches;
* Gaussian blur 12 px: no frame has a verified pair; the blurred copies give them 15-121 matches over 1-6 pairs
  (``python -m benchmarks.blur_matching_probe --rescue force``), with which 7 of 24 frame-runs ended 2.5-12.2 deg off
  from the 2 deg input: below :data:`NEW_FRAME_PAIRS`, so they are not kept and those frames stay with the NeRF stage;
* motion blur along a 40 px streak (``benchmarks.weak_frames --kind motion``): 7 of 8 frames have no verified pair;
  neighbours smeared along the frame's streak give them 454-1531 matches over 6-10 pairs, with which each
  registers against the true sharp frames at 0.06-0.9 deg (the true streak; session probe).

``pycolmap`` is imported inside the functions.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from nerf_posefix.io.camera_set import ImageCamera
from nerf_posefix.sfm.sift_features import SPATIAL_MAX_ANGLE_DEG, extract_sift, match_listed_pairs, register_images

#: A frame is rescued when its verified inlier matches (all its pairs with at least
#: :data:`MIN_PAIR_INLIERS`) number fewer than this fraction of the median image's, and fewer than
#: :data:`MAX_INLIERS`, but at least :data:`MIN_PAIR_INLIERS` (one verified pair: module docstring).
RESCUE_FRACTION = 0.25
MAX_INLIERS = 1000
#: COLMAP's mapper counts a pair only from this many verified matches (``min_num_matches``).
MIN_PAIR_INLIERS = 15
#: Neighbours matched with each rescued frame (the nearest by the input poses, else by name order); the blur is
#: estimated on the :data:`SIGMA_NEIGHBORS` nearest of them.
PARTNERS = 10
SIGMA_NEIGHBORS = 3
#: Blur levels (σ, full-resolution px): a frame is matched at the level nearest its estimate in log σ; frames
#: estimated below the first level are not blurred frames (low texture, few overlaps) and are left alone.
SIGMA_LEVELS: tuple[float, ...] = tuple(float(2.0 ** (k / 2)) for k in range(2, 13))  # 2 .. 64 px
#: The gradient statistic is computed on images reduced to at most this many pixels on their longer side.
WORK_SIDE = 512
#: Contrast normalisation of the copies: intensities mapped to this mean and standard deviation (8 bit).
NORMALISED_MEAN, NORMALISED_STD = 128.0, 48.0
#: SIFT's DoG peak threshold on the normalised copies (COLMAP's default is 0.02 / 3 = 0.0067).
PEAK_THRESHOLD = 0.0005
SIDE_DIRECTORY = "blur_matching"
#: Motion blur (:func:`choose_blur`): the blurs tried for a frame beside its Gaussian estimate, streaks of
#: :data:`STREAK_LENGTHS` (full-resolution px) in :data:`STREAK_ANGLES` directions over 180 deg; each is tried on the
#: :data:`CHOICE_NEIGHBORS` nearest neighbours at most :data:`CHOICE_IMAGE_SIZE` px, and a streak is chosen over
#: the Gaussian blur when it gives at least :data:`STREAK_ADVANTAGE` times its verified matches. Neither the
#: direction nor the length of a motion blur can be read reliably off one frame and its neighbours' statistics
#: (measured on castle-P30: gradient-energy ratios per direction rank a 12 px Gaussian blur as more directional than
#: a 40 px streak, and the autocorrelation of the derivatives finds the facades' window rows as often as the
#: streak); what matches decides.
STREAK_ANGLES = 12
STREAK_LENGTHS: tuple[float, ...] = (12.0, 24.0, 48.0)
CHOICE_NEIGHBORS = 2
CHOICE_IMAGE_SIZE = 640
STREAK_ADVANTAGE = 1.5
#: A frame that had no verified pair before is matched too, but its new matches are kept only when they amount to
#: at least :data:`NEW_FRAME_PAIRS` verified pairs and :data:`NEW_FRAME_FRACTION` of the median image's verified
#: inlier matches: matches that nothing else confirms must look like a real frame's. Measured on castle-P30 (8 of 30
#: frames degraded, contrast cut to 40 %): a Gaussian blur of 12 px gave such frames 15-121 matches over 1-6 pairs,
#: with which 7 of 24 frame-runs ended 2.5-12 deg off; a motion blur along a 40 px streak, matched against
#: neighbours smeared along the same streak, 454-1531 over 6-10 pairs, with which all 8 registered (0.06-0.9 deg)
#: against the true sharp frames (the median image: ~2000).
NEW_FRAME_PAIRS = 3
NEW_FRAME_FRACTION = 0.1


@dataclass
class RescuedFrame:
    """What blur matching did for one frame: its blur estimate and level (full-resolution px), the neighbours
    matched, and the verified pairs and inlier matches it gained."""

    name: str
    inliers_before: int
    sigma_px: float
    level_px: float
    partners: list[str]
    pairs: int = 0
    inliers: int = 0
    #: a motion blur (:func:`estimate_streak`): the streak's length (full-resolution px; 0: a Gaussian blur of
    #: ``level_px``) and direction (deg from the image's x axis towards its y axis, in [0, 180)).
    streak_px: float = 0.0
    streak_angle_deg: float = 0.0
    #: the matches found were kept (always, for a frame with a verified pair before; else :data:`NEW_FRAME_PAIRS`).
    kept: bool = True

    @property
    def blur_key(self) -> tuple[float, float, float]:
        """Frames with the same key share their neighbours' blurred copies."""
        return (self.level_px, self.streak_px, self.streak_angle_deg if self.streak_px > 0 else 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "inliers_before": self.inliers_before, "sigma_px": round(self.sigma_px, 2),
                "level_px": round(self.level_px, 2), "streak_px": round(self.streak_px, 1),
                "streak_angle_deg": round(self.streak_angle_deg, 1), "partners": len(self.partners), "pairs": self.pairs,
                "inliers": self.inliers, "kept": self.kept}


# ---------------------------------------------------------------------------------------------
# which frames, and how blurred


def verified_inliers(database: str | Path) -> dict[str, int]:
    """Per image name of ``database``: its verified inlier matches summed over the pairs with at least
    :data:`MIN_PAIR_INLIERS` (those COLMAP's triangulation uses)."""
    import pycolmap

    db = pycolmap.Database.open(str(database))
    try:
        names = {im.image_id: im.name for im in db.read_all_images()}
        pair_ids, geometries = db.read_two_view_geometries()
    finally:
        db.close()
    count = dict.fromkeys(names.values(), 0)
    for pair_id, geometry in zip(pair_ids, geometries):
        k = int(geometry.inlier_matches.shape[0])
        if k >= MIN_PAIR_INLIERS:
            a, b = pycolmap.pair_id_to_image_pair(pair_id)
            count[names[a]] += k
            count[names[b]] += k
    return count


def frames_to_rescue(inliers: dict[str, int], min_inliers: int = 0) -> dict[str, int]:
    """The images whose verified inliers (:func:`verified_inliers`) are below :data:`RESCUE_FRACTION` of the
    median image's and below :data:`MAX_INLIERS`, and not below ``min_inliers`` (default: any), with their counts."""
    if len(inliers) < 3:
        return {}
    limit = min(RESCUE_FRACTION * float(np.median(list(inliers.values()))), MAX_INLIERS)
    return {n: k for n, k in inliers.items() if min_inliers <= k < limit}


def new_frame_kept(pairs: int, inliers: int, median_inliers: float) -> bool:
    """Whether a frame that had no verified pair keeps the blur-matched ``pairs`` (verified) and ``inliers``: at least
    :data:`NEW_FRAME_PAIRS` pairs and :data:`NEW_FRAME_FRACTION` of the median image's verified inliers."""
    return pairs >= NEW_FRAME_PAIRS and inliers >= NEW_FRAME_FRACTION * median_inliers


def nearest_partners(names: Sequence[str], rescue: Sequence[str], c2w: Optional[np.ndarray], count: int = PARTNERS,
                     among: Optional[Sequence[str]] = None) -> dict[str, list[str]]:
    """For each image of ``rescue``: up to ``count`` other images of ``names`` not in ``rescue`` (of ``among``
    when given, itself excluded), nearest first — by camera centre among those whose optical axis is within
    :data:`~nerf_posefix.sfm.sift_features.SPATIAL_MAX_ANGLE_DEG` of its own (all of them when none is) when ``c2w`` ([N, 4, 4], camera-to-world, OpenCV axes, in ``names`` order) is given, else by
    distance in ``names`` order."""
    index = {n: i for i, n in enumerate(names)}
    skip = set(rescue)
    pool = set(among) if among is not None else {n for n in names if n not in skip}
    pool_index = np.asarray([index[n] for n in names if n in pool], dtype=np.int64)
    if c2w is not None:
        c2w = np.asarray(c2w, dtype=np.float64)
        axes = c2w[:, :3, 2] / np.linalg.norm(c2w[:, :3, 2], axis=1, keepdims=True)  # [N, 3] optical axes
    out: dict[str, list[str]] = {}
    for name in rescue:
        i = index[name]
        cand = pool_index[pool_index != i]
        if cand.size == 0:
            out[name] = []
            continue
        if c2w is not None:
            facing = cand[axes[cand] @ axes[i] >= np.cos(np.deg2rad(SPATIAL_MAX_ANGLE_DEG))]
            cand = facing if facing.size else cand
            order = np.argsort(np.linalg.norm(c2w[cand, :3, 3] - c2w[i, :3, 3], axis=1), kind="stable")
        else:
            order = np.argsort(np.abs(cand - i), kind="stable")
        out[name] = [names[j] for j in cand[order][:count]]
    return out


def _gray(path: Path) -> np.ndarray:
    """The image as float32 luminance [H, W] (0-255)."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("L"), dtype=np.float32)


def _reduce(gray: np.ndarray, factor: int) -> np.ndarray:
    """Mean of ``factor`` x ``factor`` blocks (the image cropped to a multiple of it)."""
    if factor <= 1:
        return gray
    h, w = (gray.shape[0] // factor) * factor, (gray.shape[1] // factor) * factor
    return gray[:h, :w].reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))


def gradient_energy(gray: np.ndarray) -> float:
    """Mean gradient magnitude over the intensity's standard deviation (contrast-free: a washed-out frame scores
    as its sharp original), after a Gaussian pre-blur of 1 px that keeps pixel noise and JPEG blocks out of it.
    Falls as the image is blurred."""
    from scipy.ndimage import gaussian_filter

    g = gaussian_filter(np.asarray(gray, dtype=np.float64), 1.0)
    gy, gx = np.gradient(g)
    return float(np.mean(np.hypot(gx, gy)) / max(float(np.std(g)), 1e-6))


def estimate_blur_sigma(frame: np.ndarray, neighbours: Sequence[np.ndarray], levels: Sequence[float] = SIGMA_LEVELS) -> float:
    """How much more blurred ``frame`` is than ``neighbours`` (grayscale [H, W] of the same scale): the Gaussian σ
    (pixels of these arrays) that brings each neighbour's :func:`gradient_energy` down to the frame's, interpolated
    in log σ over ``levels`` (0 when the frame is as sharp as the neighbour; the last level when blurrier than it),
    median over the neighbours."""
    from scipy.ndimage import gaussian_filter

    target = gradient_energy(frame)
    grid = np.concatenate([[0.0], np.asarray(levels, dtype=np.float64)])
    estimates = []
    for image in neighbours:
        energy = np.array([gradient_energy(image)] + [gradient_energy(gaussian_filter(image, s)) for s in grid[1:]])
        if target >= energy[0]:
            estimates.append(0.0)
            continue
        below = np.nonzero(energy <= target)[0]
        if below.size == 0:
            estimates.append(float(grid[-1]))
            continue
        j = int(below[0])  # energy[j - 1] > target >= energy[j]
        lo, hi = grid[j - 1], grid[j]
        t = (energy[j - 1] - target) / max(energy[j - 1] - energy[j], 1e-12)
        estimates.append(float(lo + t * (hi - lo)) if lo == 0 else float(np.exp(np.log(lo) + t * (np.log(hi) - np.log(lo)))))
    return float(np.median(estimates)) if estimates else 0.0


def motion_kernel(length: float, angle_rad: float) -> np.ndarray:
    """``[k, k]`` kernel (sums to 1) of a straight streak ``length`` px long through its centre at ``angle_rad`` (from
    the image's x axis towards its y axis, rows down): points every quarter pixel along it, splatted bilinearly."""
    half = int(np.ceil(length / 2.0)) + 1
    kernel = np.zeros((2 * half + 1, 2 * half + 1))
    t = np.linspace(-length / 2.0, length / 2.0, max(2, int(np.ceil(4 * length)) + 1))
    x, y = half + t * np.cos(angle_rad), half + t * np.sin(angle_rad)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = x - x0, y - y0
    for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        np.add.at(kernel, (y0 + dy, x0 + dx), w)
    return kernel / kernel.sum()


def smear(gray: np.ndarray, length: float, angle_rad: float) -> np.ndarray:
    """``gray`` ``[H, W]`` convolved with :func:`motion_kernel` (edges reflected), same shape."""
    from scipy.signal import fftconvolve

    kernel = motion_kernel(length, angle_rad)
    pad = kernel.shape[0] // 2
    padded = np.pad(np.asarray(gray, dtype=np.float64), pad, mode="reflect")
    return fftconvolve(padded, kernel, mode="valid")


def nearest_level(sigma: float, levels: Sequence[float] = SIGMA_LEVELS) -> Optional[float]:
    """The level of ``levels`` nearest ``sigma`` in log σ, or None below the first level's lower half-step."""
    levels = np.asarray(levels, dtype=np.float64)
    if sigma <= 0 or np.log(sigma) < np.log(levels[0]) - 0.5 * np.log(levels[1] / levels[0]):
        return None
    return float(levels[int(np.argmin(np.abs(np.log(levels) - np.log(sigma))))])


# ---------------------------------------------------------------------------------------------
# copies, side matching and the merge


def _write_copy(source: Path, target: Path, sigma: float, streak: tuple[float, float] = (0.0, 0.0)) -> None:
    """``source`` blurred by ``sigma`` px (Gaussian; none at 0), or smeared along ``streak`` (``(length px,
    angle rad)``, :func:`smear`; none at length 0), and its contrast normalised (:data:`NORMALISED_MEAN`,
    :data:`NORMALISED_STD`), as an 8-bit grayscale file of the same size and name."""
    from PIL import Image, ImageFilter

    with Image.open(source) as im:
        gray = im.convert("L")
        if sigma > 0:
            gray = gray.filter(ImageFilter.GaussianBlur(sigma))
    a = np.asarray(gray, dtype=np.float32)
    if streak[0] > 0:
        a = smear(a, streak[0], streak[1]).astype(np.float32)
    a = (a - a.mean()) * (NORMALISED_STD / max(float(a.std()), 1e-3)) + NORMALISED_MEAN
    target.parent.mkdir(parents=True, exist_ok=True)
    out = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))
    if target.suffix.lower() in (".jpg", ".jpeg"):
        out.save(target, format="JPEG", quality=98)
    else:
        out.save(target, format="PNG")


def merge_matches(database: str | Path, side: str | Path, names: Sequence[str], pairs: Sequence[tuple[str, str]],
                  links: Sequence[tuple[str, str]] = ()) -> dict[str, tuple[int, int]]:
    """Append the keypoints and descriptors of ``names`` in the side database ``side`` to the same images' in
    ``database``, and record there the side database's verified matches of ``pairs`` (a rescued frame, a
    neighbour) with the appended keypoints' indices: merged with the inlier matches a pair already has (its
    geometry kept), or as the side pair's geometry when it has none. Of the pairs ``links`` (two neighbours'
    copies) only the matches of keypoints that some pair of ``pairs`` matched are recorded: they join a rescued
    frame's tracks across its neighbours (a track seen by the frame and by two neighbours is placed by the
    neighbours), and nothing else of the neighbours' blurred copies enters the tracks. Returns per image name of
    ``pairs`` (verified pairs gained, inlier matches gained)."""
    import pycolmap

    side_db = pycolmap.Database.open(str(side))
    try:
        side_ids = {im.name: im.image_id for im in side_db.read_all_images()}
        side_keypoints = {n: side_db.read_keypoints(side_ids[n]) for n in names}
        side_descriptors = {n: side_db.read_descriptors(side_ids[n]) for n in names}
        found = {}
        for a, b in list(pairs) + list(links):
            ia, ib = side_ids[a], side_ids[b]
            if not side_db.exists_two_view_geometry(ia, ib):
                continue
            geometry = side_db.read_two_view_geometry(ia, ib)  # matches as (ia's keypoint, ib's keypoint)
            if int(geometry.inlier_matches.shape[0]) >= MIN_PAIR_INLIERS:
                found[(a, b)] = geometry
    finally:
        side_db.close()
    used: dict[str, set[int]] = {}
    for (a, b) in pairs:
        if (a, b) in found:
            m = np.asarray(found[(a, b)].inlier_matches)
            used.setdefault(b, set()).update(int(k) for k in m[:, 1])
    for (a, b) in links:
        if (a, b) not in found:
            continue
        m = np.asarray(found[(a, b)].inlier_matches)
        keep = np.array([int(i) in used.get(a, ()) or int(j) in used.get(b, ()) for i, j in m], dtype=bool)
        if keep.sum() == 0:
            del found[(a, b)]
        else:
            found[(a, b)].inlier_matches = m[keep]
    rescued_pairs = set(pairs)
    db = pycolmap.Database.open(str(database))
    gained: dict[str, list[int]] = {}
    try:
        ids = {im.name: im.image_id for im in db.read_all_images()}
        offsets = {}
        for n in names:
            own = db.read_keypoints(ids[n])
            offsets[n] = int(own.shape[0])
            extra = side_keypoints[n]
            if own.shape[1] != extra.shape[1]:
                extra = extra[:, : own.shape[1]] if extra.shape[1] > own.shape[1] else np.pad(extra, ((0, 0), (0, own.shape[1] - extra.shape[1])))
            db.update_keypoints(ids[n], np.concatenate([own, extra.astype(own.dtype)]))
        for (a, b), geometry in found.items():
            matches = np.asarray(geometry.inlier_matches, dtype=np.int64) + np.array([offsets[a], offsets[b]])
            ia, ib = ids[a], ids[b]
            if ia > ib:  # the database keeps a pair as (smaller id, larger id)
                ia, ib, matches = ib, ia, matches[:, ::-1]
                geometry.invert()
            matches = matches.astype(np.uint32)
            if db.exists_two_view_geometry(ia, ib):
                old = db.read_two_view_geometry(ia, ib)
                if int(old.inlier_matches.shape[0]) >= MIN_PAIR_INLIERS:
                    old.inlier_matches = np.concatenate([np.asarray(old.inlier_matches, dtype=np.uint32), matches])
                    geometry = old
                else:
                    geometry.inlier_matches = matches
                db.update_two_view_geometry(ia, ib, geometry)
            else:
                geometry.inlier_matches = matches
                db.write_two_view_geometry(ia, ib, geometry)
            if db.exists_matches(ia, ib):
                raw = np.concatenate([np.asarray(db.read_matches(ia, ib), dtype=np.uint32), matches])
                db.delete_matches(ia, ib)
            else:
                raw = matches
            db.write_matches(ia, ib, raw)
            if (a, b) not in rescued_pairs:
                continue
            for n in (a, b):
                entry = gained.setdefault(n, [0, 0])
                entry[0] += 1
                entry[1] += int(matches.shape[0])
    finally:
        db.close()
    _append_descriptors(database, {ids[n]: np.asarray(side_descriptors[n].data) for n in names})
    return {n: (v[0], v[1]) for n, v in gained.items()}


def _append_descriptors(database: str | Path, extra: dict[int, np.ndarray]) -> None:
    """Append rows to the descriptors of the images ``extra`` (image id -> ``[m, 128]``) in COLMAP's database, so
    that every image keeps one descriptor per keypoint. pycolmap can write an image's descriptors once or clear
    them all (every image's, read back in memory: a GiB for a thousand images); this updates the rows of the
    images concerned in COLMAP's ``descriptors`` table (``type, rows, cols, data``: a row-major matrix)."""
    import sqlite3

    connection = sqlite3.connect(str(database))
    try:
        with connection:
            for image_id, rows in extra.items():
                kind, n, cols, data = connection.execute(
                    "SELECT type, rows, cols, data FROM descriptors WHERE image_id = ?", (int(image_id),)).fetchone()
                rows = np.ascontiguousarray(rows)
                if rows.shape[1] != cols or rows.dtype.itemsize * cols * n != len(data):
                    raise RuntimeError(f"{database}: image {image_id}'s descriptors are not {cols} columns of {rows.dtype}")
                merged = np.frombuffer(data, dtype=rows.dtype).reshape(n, cols)
                merged = np.concatenate([merged, rows])
                connection.execute("UPDATE descriptors SET rows = ?, data = ? WHERE image_id = ? AND type = ?",
                                   (int(merged.shape[0]), merged.tobytes(), int(image_id), kind))
    finally:
        connection.close()


def rescue_blurred_frames(
    database: str | Path, images_dir: str | Path, names: Sequence[str], cameras: dict[str, ImageCamera],
    work: str | Path, c2w: Optional[np.ndarray] = None, num_threads: int = -1, seed: int = 0,
    max_image_size: int = 3200, verbose: bool = False, log: Optional[Callable[[str], None]] = None,
    min_inliers: int = 0,
) -> list[RescuedFrame]:
    """Blur-matched features (module docstring) for the images of ``names`` that the ordinary matching left with
    few verified matches (:func:`frames_to_rescue`), written into ``database``. ``c2w``: the input poses
    ([N, 4, 4] camera-to-world, OpenCV axes, in ``names`` order) to pick neighbours by, else name order.
    ``work``: a directory for the side copies and databases, removed at the end. ``min_inliers``: the fewest
    verified inliers a frame must already have (:func:`frames_to_rescue`; a frame with fewer than
    :data:`MIN_PAIR_INLIERS` keeps its new matches only as :data:`NEW_FRAME_PAIRS` says). Returns what was done per
    frame (none when no frame needs it, or none is blurred)."""

    log = log or (lambda message: None)
    images_dir, work = Path(images_dir), Path(work)
    inliers = verified_inliers(database)
    median_inliers = float(np.median(list(inliers.values()))) if inliers else 0.0
    rescue = frames_to_rescue(inliers, min_inliers)
    rescue = {n: k for n, k in rescue.items() if n in set(names)}
    if not rescue:
        return []
    t0 = time.perf_counter()
    partners = nearest_partners(list(names), list(rescue), c2w)
    frames: list[RescuedFrame] = []
    cache: dict[str, np.ndarray] = {}

    def small(name: str) -> tuple[np.ndarray, int]:
        camera = cameras[name]
        factor = max(1, -(-max(int(camera.width), int(camera.height)) // WORK_SIDE))
        if name not in cache:
            cache[name] = _reduce(_gray(images_dir / name), factor)
        return cache[name], factor

    for name, count in rescue.items():
        if not partners[name]:
            continue
        frame, factor = small(name)
        sigma = factor * estimate_blur_sigma(frame, [small(p)[0] for p in partners[name][:SIGMA_NEIGHBORS]],
                                             [s / factor for s in SIGMA_LEVELS])
        level = nearest_level(sigma)
        if level is not None:
            frames.append(RescuedFrame(name, count, sigma, level, partners[name]))
    if not frames:
        return []
    for f in frames:
        choose_blur(f, images_dir, cameras, work, num_threads, seed, verbose)
    log(f"{len(frames)} image(s) with few verified matches look blurred (" + ", ".join(f"{f.name} {_blur_text(f)}" for f in frames[:5])
        + (", ..." if len(frames) > 5 else "") + "): matched against their neighbours blurred alike")
    order = {n: i for i, n in enumerate(names)}
    try:
        for key in sorted({f.blur_key for f in frames}):
            group = [f for f in frames if f.blur_key == key]
            level, streak = key[0], (key[1], float(np.deg2rad(key[2])))
            blurred = {f.name for f in group}
            side = work / (f"{SIDE_DIRECTORY}_{level:.1f}px" if streak[0] == 0 else f"{SIDE_DIRECTORY}_streak{key[1]:.1f}px_{key[2]:.1f}deg")
            shutil.rmtree(side, ignore_errors=True)
            copies = side / "images"
            neighbours = sorted({p for f in group for p in f.partners}, key=order.__getitem__)
            members = sorted(blurred | set(neighbours), key=order.__getitem__)
            log(f"blur {_blur_text(group[0])}: {len(group)} frame(s), {len(neighbours)} neighbour copies")
            for n in members:
                _write_copy(images_dir / n, copies / n, 0.0 if n in blurred else level, (0.0, 0.0) if n in blurred else streak)
            side_db = side / "database.db"
            register_images(side_db, members, cameras)
            pairs = [(f.name, p) for f in group for p in f.partners]
            links = sorted({tuple(sorted((a, b), key=order.__getitem__)) for a, near in nearest_partners(
                list(names), neighbours, c2w, count=PARTNERS, among=neighbours).items() for b in near})
            extract_sift(side_db, copies, members, cameras, num_threads, max_image_size, peak_threshold=PEAK_THRESHOLD, verbose=verbose)
            match_listed_pairs(side_db, pairs + links, side / "pairs.txt", num_threads, seed, verbose)
            found = side_pair_inliers(side_db, pairs)
            for f in group:
                if f.inliers_before < MIN_PAIR_INLIERS:  # nothing confirms these matches: they must look like a frame's
                    f.pairs, f.inliers = found.get(f.name, (0, 0))
                    f.kept = new_frame_kept(f.pairs, f.inliers, median_inliers)
            pairs = [(a, b) for a, b in pairs if next(f for f in group if f.name == a).kept]
            gained = merge_matches(database, side_db, members, pairs, links) if pairs else {}
            for f in group:
                if f.kept:
                    f.pairs, f.inliers = gained.get(f.name, (0, 0))
            shutil.rmtree(side, ignore_errors=True)
    finally:
        for side in work.glob(f"{SIDE_DIRECTORY}_*"):
            shutil.rmtree(side, ignore_errors=True)
    log("blur matching: " + ", ".join(f"{f.name} +{f.inliers} matches over {f.pairs} pairs ({_blur_text(f)})"
                                      + ("" if f.kept else ", not kept") for f in frames[:8])
        + (", ..." if len(frames) > 8 else "") + f" ({time.perf_counter() - t0:.0f} s)")
    return frames


def choose_blur(frame: RescuedFrame, images_dir: Path, cameras: dict[str, ImageCamera], work: Path, num_threads: int = -1,
                seed: int = 0, verbose: bool = False) -> None:
    """Whether ``frame`` is matched against neighbours blurred by its Gaussian estimate (``frame.level_px``) or
    smeared along a streak: every blur of the grid (:data:`STREAK_LENGTHS` x :data:`STREAK_ANGLES`, and the
    Gaussian) is applied to copies of its :data:`CHOICE_NEIGHBORS` nearest neighbours, each copy matched with the
    frame at :data:`CHOICE_IMAGE_SIZE` px in a side database; the streak with the most verified inlier matches is
    taken when it has at least :data:`STREAK_ADVANTAGE` times the Gaussian's (``frame.streak_px``,
    ``frame.streak_angle_deg`` set; else unchanged). The frame's copy is not blurred."""
    neighbours = frame.partners[:CHOICE_NEIGHBORS]
    if not neighbours:
        return
    side = work / f"{SIDE_DIRECTORY}_choice"
    shutil.rmtree(side, ignore_errors=True)
    copies = side / "images"
    blurs: list[tuple[float, float]] = [(0.0, 0.0)] + [(length, k * np.pi / STREAK_ANGLES) for length in STREAK_LENGTHS
                                                          for k in range(STREAK_ANGLES)]
    try:
        _write_copy(images_dir / frame.name, copies / frame.name, 0.0)
        names, pairs, cams = [frame.name], [], {frame.name: cameras[frame.name]}
        for b, (length, angle) in enumerate(blurs):
            for n in neighbours:
                copy = f"{Path(n).stem}__blur{b}{Path(n).suffix}"
                _write_copy(images_dir / n, copies / copy, frame.level_px if length == 0 else 0.0, (length, angle))
                names.append(copy)
                cams[copy] = cameras[n]
                pairs.append((frame.name, copy))
        side_db = side / "database.db"
        register_images(side_db, names, cams)
        extract_sift(side_db, copies, names, cams, num_threads, CHOICE_IMAGE_SIZE, peak_threshold=PEAK_THRESHOLD, verbose=verbose)
        match_listed_pairs(side_db, pairs, side / "pairs.txt", num_threads, seed, verbose)
        per_pair = side_pair_inliers(side_db, pairs, per_pair=True)
    finally:
        shutil.rmtree(side, ignore_errors=True)
    score = np.zeros(len(blurs))
    for b in range(len(blurs)):
        score[b] = sum(per_pair.get((frame.name, f"{Path(n).stem}__blur{b}{Path(n).suffix}"), 0) for n in neighbours)
    best = 1 + int(np.argmax(score[1:]))
    if score[best] >= STREAK_ADVANTAGE * max(score[0], 1.0):
        frame.streak_px, frame.streak_angle_deg = blurs[best][0], float(np.rad2deg(blurs[best][1]))
        frame.level_px = 0.0


def _blur_text(frame: RescuedFrame) -> str:
    return (f"σ {frame.level_px:.1f} px" if frame.streak_px == 0
            else f"streak {frame.streak_px:.0f} px at {frame.streak_angle_deg:.0f} deg")


def side_pair_inliers(side: str | Path, pairs: Sequence[tuple[str, str]], per_pair: bool = False) -> dict[Any, Any]:
    """Per first image of ``pairs`` in the side database ``side``: (verified pairs with at least
    :data:`MIN_PAIR_INLIERS` inlier matches, their inlier matches); with ``per_pair``, per pair: its verified inlier
    matches (0 below :data:`MIN_PAIR_INLIERS`)."""
    import pycolmap

    db = pycolmap.Database.open(str(side))
    try:
        ids = {im.name: im.image_id for im in db.read_all_images()}
        found: dict[tuple[str, str], int] = {}
        for a, b in pairs:
            k = 0
            if db.exists_two_view_geometry(ids[a], ids[b]):
                k = int(db.read_two_view_geometry(ids[a], ids[b]).inlier_matches.shape[0])
            found[(a, b)] = k if k >= MIN_PAIR_INLIERS else 0
    finally:
        db.close()
    if per_pair:
        return found
    out: dict[str, list[int]] = {}
    for (a, _), k in found.items():
        entry = out.setdefault(a, [0, 0])
        entry[0] += int(k > 0)
        entry[1] += k
    return {n: (v[0], v[1]) for n, v in out.items()}
