r"""Blur-matched features: matches for the blurred frames SIFT barely holds, against their neighbours blurred alike.

A frame blurred by motion or defocus (or washed out) keeps a few dozen SIFT features of the thousands its sharp
neighbours have; re-extracted at a lower DoG threshold (:func:`nerf_posefix.sfm.track_building.few_feature_images`)
it matches a few of them, and its pose rests on a few tracks: the sharp images' features describe detail the blurred
frame does not show. Blurring the neighbours alike brings the two back into one scale space. For each frame that
the ordinary matching links to the others (at least one verified pair) but with few matches
(:func:`frames_to_rescue`), this module

1. estimates how much more blurred it is than its neighbours (:func:`estimate_blur_sigma`: the Gaussian σ that
   brings a neighbour's contrast-normalised gradient energy down to the frame's, median over its nearest
   neighbours; σ in pixels of the full-resolution image), and leaves the frames that are not blurred alone;
2. writes copies of its neighbours blurred by that σ (nearest of :data:`SIGMA_LEVELS`), and of itself, all
   contrast-normalised (the DoG peak threshold is absolute in intensity), into a side directory;
3. extracts SIFT from those copies at :data:`PEAK_THRESHOLD` and matches each frame with its neighbours' copies,
   and the neighbours' copies with each other (pycolmap's feature extraction, imported-pairs matching and
   geometric verification, in a side database);
4. appends the copies' keypoints (and descriptors) to the images' own in the main database and records there the
   verified matches of the frame's pairs, and of the neighbours' pairs those that continue the frame's tracks
   (:func:`merge_matches`), with the appended keypoints' indices.

Blur moves no feature: a keypoint of a blurred copy lies where the structure it describes lies in the image, so
its coordinates are those of the original image (COLMAP's convention, full-resolution pixels, the centre of the
top-left pixel at ``(0.5, 0.5)``). The frames' tracks then run through the neighbours' appended keypoints and are
triangulated and adjusted with every other track; the neighbours' ordinary tracks are untouched.

Measured on castle-P30, 8 of 30 frames blurred and cut to 40 % contrast, from poses 2 deg / 3 % off (docs/benchmarks.md,
weak frames, tenth look):

* blur 6 px: all 8 frames have 132-350 verified matches (a quarter of the median image's is ~500) and gain 199-686
  over 5-10 pairs each; ``posefix refine --iterations 0`` (``benchmarks.weak_frames``, the adjustment row, 3 seeds)
  brings them to 0.169 +- 0.007 deg (median), from 0.380 +- 0.042 deg with the ordinary matches;
* blur 12 px: no frame has a verified pair, so none is matched again (the adjustment row is unchanged). Forced
  (``python -m benchmarks.blur_matching_probe --rescue force``), the blurred copies give 15-121 matches over 1-6
  pairs per frame, and from the 2 deg input 7 of 24 frame-runs ended 2.5-12.2 deg off: matches that nothing else
  confirms do not place a frame. Those frames stay with the NeRF stage.

``pycolmap`` is imported inside the functions.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Mapping, Sequence
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

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "inliers_before": self.inliers_before, "sigma_px": round(self.sigma_px, 2),
                "level_px": round(self.level_px, 2), "partners": len(self.partners), "pairs": self.pairs,
                "inliers": self.inliers}


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


def frames_to_rescue(inliers: dict[str, int], min_inliers: int = MIN_PAIR_INLIERS) -> dict[str, int]:
    """The images whose verified inliers (:func:`verified_inliers`) are below :data:`RESCUE_FRACTION` of the
    median image's and below :data:`MAX_INLIERS`, but not below ``min_inliers`` (default: one verified pair), with
    their counts."""
    if len(inliers) < 3:
        return {}
    limit = min(RESCUE_FRACTION * float(np.median(list(inliers.values()))), MAX_INLIERS)
    return {n: k for n, k in inliers.items() if min_inliers <= k < limit}


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


def _work_image(images_dir: Path, cameras: dict[str, ImageCamera], name: str,
                cache: Optional[dict[str, np.ndarray]] = None) -> tuple[np.ndarray, int]:
    """Image ``name`` as grayscale reduced to at most :data:`WORK_SIDE` px ``[H', W']``, and the reduction factor
    (``cache``: reduced images by name, filled as read)."""
    cache = {} if cache is None else cache
    camera = cameras[name]
    factor = max(1, -(-max(int(camera.width), int(camera.height)) // WORK_SIDE))
    if name not in cache:
        cache[name] = _reduce(_gray(images_dir / name), factor)
    return cache[name], factor


def frame_blur_px(images_dir: Path, cameras: dict[str, ImageCamera], frame: str, partners: Sequence[str],
                  cache: Optional[dict[str, np.ndarray]] = None) -> float:
    """:func:`estimate_blur_sigma` of image ``frame`` against its :data:`SIGMA_NEIGHBORS` first ``partners``, on the
    images reduced to at most :data:`WORK_SIDE` px (``cache``: reduced images by name, filled as read); σ in pixels of
    the full-resolution image."""
    cache = {} if cache is None else cache
    image, factor = _work_image(images_dir, cameras, frame, cache)
    neighbours = [_work_image(images_dir, cameras, p, cache)[0] for p in partners[:SIGMA_NEIGHBORS]]
    return factor * estimate_blur_sigma(image, neighbours, [s / factor for s in SIGMA_LEVELS])


def directional_gradient_energy(gray: np.ndarray, angles_rad: Sequence[float]) -> np.ndarray:
    """``[A]``: per angle (from the image's x axis towards its y axis, rows down), the mean absolute derivative of
    ``gray`` ``[H, W]`` along that direction over the intensity's standard deviation (contrast-free), after the
    1 px Gaussian pre-blur of :func:`gradient_energy`."""
    from scipy.ndimage import gaussian_filter

    g = gaussian_filter(np.asarray(gray, dtype=np.float64), 1.0)
    gy, gx = np.gradient(g)
    scale = max(float(np.std(g)), 1e-6)
    return np.array([float(np.mean(np.abs(np.cos(a) * gx + np.sin(a) * gy))) for a in angles_rad]) / scale


def streak_direction_ratios(frame: np.ndarray, neighbours: Sequence[np.ndarray], angles_rad: Sequence[float]) -> np.ndarray:
    """``[A]``: per angle, the frame's :func:`directional_gradient_energy` over a neighbour's, median over
    ``neighbours`` (grayscale arrays of the frame's scale). A motion streak smooths an image along itself only, so
    the ratio is lowest near the streak's direction; the neighbours' ratio takes the scene's own anisotropy out.
    Measured on castle-P30's 8 frames smeared by a 40 px streak: the true direction (to the nearest of 12) is within
    the 3 lowest of 12 ratios for every frame, the lowest for 4 of them (docs/benchmarks.md, fourteenth look)."""
    energy = directional_gradient_energy(frame, angles_rad)
    return np.median(np.stack([energy / np.maximum(directional_gradient_energy(n, angles_rad), 1e-12) for n in neighbours]), axis=0)


def nearest_level(sigma: float, levels: Sequence[float] = SIGMA_LEVELS) -> Optional[float]:
    """The level of ``levels`` nearest ``sigma`` in log σ, or None below the first level's lower half-step."""
    levels = np.asarray(levels, dtype=np.float64)
    if sigma <= 0 or np.log(sigma) < np.log(levels[0]) - 0.5 * np.log(levels[1] / levels[0]):
        return None
    return float(levels[int(np.argmin(np.abs(np.log(levels) - np.log(sigma))))])


# ---------------------------------------------------------------------------------------------
# copies, side matching and the merge


def streak_kernel(length: float, angle_rad: float) -> np.ndarray:
    """``[k, k]`` kernel (sums to 1) of a straight motion streak ``length`` px long centred on the kernel's middle, at
    ``angle_rad`` from the image's x axis towards its y axis (rows down): each pixel weighted by the length of the
    segment within one pixel of its centre along the streak, times a tent of its distance across (1 on the line, 0
    one pixel away): an anti-aliased line. Symmetric about its centre, so smearing moves no feature."""
    half = int(np.ceil(length / 2.0)) + 1
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1].astype(np.float64)  # [k, k] offsets from the centre
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    along, across = xx * c + yy * s, -xx * s + yy * c
    overlap = np.clip(np.minimum(along + 0.5, length / 2.0) - np.maximum(along - 0.5, -length / 2.0), 0.0, 1.0)
    kernel = overlap * np.clip(1.0 - np.abs(across), 0.0, None)
    return kernel / kernel.sum()


def smear_streak(gray: np.ndarray, length: float, angle_rad: float) -> np.ndarray:
    """``gray`` ``[H, W]`` convolved with :func:`streak_kernel` (edges reflected): same shape, float64."""
    from scipy.signal import fftconvolve

    kernel = streak_kernel(length, angle_rad)
    pad = kernel.shape[0] // 2
    return fftconvolve(np.pad(np.asarray(gray, dtype=np.float64), pad, mode="reflect"), kernel, mode="valid")


@dataclass(frozen=True)
class Blur:
    """A blur applied to sharp neighbours to look like a blurred frame: a Gaussian of ``sigma_px`` and / or a motion
    streak ``streak_px`` long at ``angle_deg`` (from the image's x axis towards its y axis), in pixels of the
    full-resolution image."""

    sigma_px: float = 0.0
    streak_px: float = 0.0
    angle_deg: float = 0.0

    def describe(self) -> str:
        if self.streak_px > 0:
            return f"streak {self.streak_px:.1f} px at {self.angle_deg:.0f} deg"
        return f"Gaussian {self.sigma_px:.1f} px"


def streaks(blurs: Mapping[str, Mapping[str, float]]) -> dict[str, Blur]:
    """The streaked ones of ``blurs`` (``name -> Blur`` as a dict: the frame placement's choices, from its frames or
    its record) as :class:`Blur` s."""
    return {name: Blur(**blur) for name, blur in blurs.items() if (blur or {}).get("streak_px", 0.0) > 0}


def _write_copy(source: Path, target: Path, blur: Blur = Blur(), scale: float = 1.0) -> None:
    """``source`` blurred by ``blur`` (the Gaussian, then the streak; nothing for ``Blur()``) and its contrast
    normalised (:data:`NORMALISED_MEAN`, :data:`NORMALISED_STD`), as an 8-bit grayscale file of the same name;
    ``scale`` < 1: reduced by that factor first (the blur scaled alike)."""
    from PIL import Image, ImageFilter

    with Image.open(source) as im:
        gray = im.convert("L")
        if scale < 1.0:
            gray = gray.resize((max(1, round(gray.width * scale)), max(1, round(gray.height * scale))), Image.Resampling.BOX)
        if blur.sigma_px > 0:
            gray = gray.filter(ImageFilter.GaussianBlur(blur.sigma_px * scale))
    a = np.asarray(gray, dtype=np.float32)
    if blur.streak_px * scale >= 1.0:
        a = smear_streak(a, blur.streak_px * scale, np.deg2rad(blur.angle_deg)).astype(np.float32)
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
                data = data or b""  # an image without a feature: no blob
                if rows.shape[1] != cols or rows.dtype.itemsize * cols * n != len(data):
                    raise RuntimeError(f"{database}: image {image_id}'s descriptors are not {cols} columns of {rows.dtype}")
                merged = np.concatenate([np.frombuffer(data, dtype=rows.dtype).reshape(n, cols), rows])
                connection.execute("UPDATE descriptors SET rows = ?, data = ? WHERE image_id = ? AND type = ?",
                                   (int(merged.shape[0]), merged.tobytes(), int(image_id), kind))
    finally:
        connection.close()


def match_blurred(
    database: str | Path, images_dir: str | Path, names: Sequence[str], cameras: dict[str, ImageCamera],
    partners: dict[str, list[str]], blur: Blur, side: str | Path, c2w: Optional[np.ndarray] = None, num_threads: int = -1,
    seed: int = 0, max_image_size: int = 3200, verbose: bool = False,
) -> dict[str, tuple[int, int]]:
    """Steps 2-4 of the module docstring for the frames ``partners`` (frame -> its neighbours) at one ``blur``: the
    frames' copies (contrast-normalised only) and their neighbours' (blurred by ``blur``) in the side directory
    ``side`` (emptied first, removed at the end), SIFT at :data:`PEAK_THRESHOLD`, each frame matched with its
    neighbours and the neighbours with their :data:`PARTNERS` nearest among them (``c2w``: the poses to pick them
    by, [N, 4, 4] camera-to-world in ``names`` order, else name order), merged into ``database``
    (:func:`merge_matches`). Returns per image (verified pairs gained, inlier matches gained)."""
    images_dir, side = Path(images_dir), Path(side)
    order = {n: i for i, n in enumerate(names)}
    blurred = set(partners)
    neighbours = sorted({p for near in partners.values() for p in near} - blurred, key=order.__getitem__)
    members = sorted(blurred | set(neighbours), key=order.__getitem__)
    shutil.rmtree(side, ignore_errors=True)
    try:
        copies = side / "images"
        for n in members:
            _write_copy(images_dir / n, copies / n, Blur() if n in blurred else blur)
        side_db = side / "database.db"
        register_images(side_db, members, cameras)
        pairs = [(f, p) for f, near in partners.items() for p in near if p not in blurred]
        links = sorted({tuple(sorted((a, b), key=order.__getitem__)) for a, near in nearest_partners(
            list(names), neighbours, c2w, count=PARTNERS, among=neighbours).items() for b in near})
        extract_sift(side_db, copies, members, cameras, num_threads, max_image_size, peak_threshold=PEAK_THRESHOLD, verbose=verbose)
        match_listed_pairs(side_db, pairs + links, side / "pairs.txt", num_threads, seed, verbose)
        return merge_matches(database, side_db, members, pairs, links)
    finally:
        shutil.rmtree(side, ignore_errors=True)


#: The blur of a frame the adjustment does not hold is chosen by matching (:func:`choose_blur`): streaks of these fractions of the
#: image's longer side (12, 24, 48 and 96 px at 768 px) in :data:`CHOICE_DIRECTIONS` directions over [0, 180) deg, against
#: the Gaussian of the frame's estimate; copies at most :data:`CHOICE_IMAGE_SIDE` px, the frame's
#: :data:`CHOICE_NEIGHBORS` nearest neighbours. A streak is taken when it matches :data:`STREAK_ADVANTAGE` times the
#: Gaussian's inliers; then its length is searched and refined (x 2^(k/4), |k| <= :data:`LENGTH_STEPS`) at its direction.
STREAK_FRACTIONS: tuple[float, ...] = (1 / 64, 1 / 32, 1 / 16, 1 / 8)
CHOICE_DIRECTIONS = 12
#: The coarse stage matches streaks in only this many of the :data:`CHOICE_DIRECTIONS`: those along which the frame
#: is smoothest against its neighbours (:func:`streak_direction_ratios`, lowest first).
CHOICE_RANKED_DIRECTIONS = 4
CHOICE_IMAGE_SIDE = 640
CHOICE_NEIGHBORS = 2
STREAK_ADVANTAGE = 1.5
LENGTH_STEPS = 2


def _scaled_camera(camera: ImageCamera, scale: float) -> ImageCamera:
    """``camera`` for the image reduced by ``scale`` (COLMAP's ``Camera.rescale``)."""
    import pycolmap

    c = pycolmap.Camera(model=camera.model, width=int(camera.width), height=int(camera.height), params=[float(p) for p in camera.params])
    c.rescale(float(scale))
    return ImageCamera(model=camera.model, width=int(c.width), height=int(c.height), params=tuple(float(p) for p in c.params))


def _pair_inliers(database: Path, pairs: Sequence[tuple[str, str]]) -> list[int]:
    """Verified inlier matches of each pair of ``database`` (0 below :data:`MIN_PAIR_INLIERS`)."""
    import pycolmap

    db = pycolmap.Database.open(str(database))
    try:
        ids = {im.name: im.image_id for im in db.read_all_images()}
        out = []
        for a, b in pairs:
            k = int(db.read_two_view_geometry(ids[a], ids[b]).inlier_matches.shape[0]) if db.exists_two_view_geometry(ids[a], ids[b]) else 0
            out.append(k if k >= MIN_PAIR_INLIERS else 0)
    finally:
        db.close()
    return out


def blur_scores(images_dir: Path, cameras: dict[str, ImageCamera], frame: str, neighbours: Sequence[str], blurs: Sequence[Blur],
                side: Path, num_threads: int = -1, seed: int = 0) -> list[int]:
    """Per blur of ``blurs``: the verified inlier matches of ``frame`` with copies of ``neighbours`` blurred by it,
    summed over the neighbours (copies reduced to at most :data:`CHOICE_IMAGE_SIDE` px, contrast-normalised, SIFT at
    :data:`PEAK_THRESHOLD`; side directory ``side``, removed at the end)."""
    shutil.rmtree(side, ignore_errors=True)
    try:
        scale = min(1.0, CHOICE_IMAGE_SIDE / max(int(cameras[frame].width), int(cameras[frame].height)))
        copies = side / "images"
        _write_copy(images_dir / frame, copies / frame, Blur(), scale)
        names, pairs, cams = [frame], [], {frame: _scaled_camera(cameras[frame], scale)}
        for b, blur in enumerate(blurs):
            for n in neighbours:
                copy = f"{Path(n).stem}__blur{b}{Path(n).suffix}"
                _write_copy(images_dir / n, copies / copy, blur, scale)
                names.append(copy)
                cams[copy] = _scaled_camera(cameras[n], scale)
                pairs.append((frame, copy))
        database = side / "database.db"
        register_images(database, names, cams)
        extract_sift(database, copies, names, cams, num_threads, CHOICE_IMAGE_SIDE, peak_threshold=PEAK_THRESHOLD)
        match_listed_pairs(database, pairs, side / "pairs.txt", num_threads, seed)
        found = _pair_inliers(database, pairs)
    finally:
        shutil.rmtree(side, ignore_errors=True)
    k = len(neighbours)
    return [int(sum(found[b * k:(b + 1) * k])) for b in range(len(blurs))]


def ranked_streak_directions(images_dir: Path, cameras: dict[str, ImageCamera], frame: str, neighbours: Sequence[str],
                             cache: Optional[dict[str, np.ndarray]] = None) -> list[float]:
    """The :data:`CHOICE_DIRECTIONS` directions over [0, 180) deg (from the image's x axis towards its y axis), those
    along which ``frame`` is smoothest against its :data:`SIGMA_NEIGHBORS` first ``neighbours`` first
    (:func:`streak_direction_ratios` on the images reduced to :data:`WORK_SIDE` px; ``cache`` as
    :func:`frame_blur_px`'s)."""
    cache = {} if cache is None else cache
    angles = np.arange(CHOICE_DIRECTIONS) * (np.pi / CHOICE_DIRECTIONS)  # [A] rad
    image = _work_image(images_dir, cameras, frame, cache)[0]
    ratios = streak_direction_ratios(image, [_work_image(images_dir, cameras, n, cache)[0] for n in neighbours[:SIGMA_NEIGHBORS]], angles)
    return [180.0 * int(k) / CHOICE_DIRECTIONS for k in np.argsort(ratios, kind="stable")]


def choose_blur(images_dir: Path, cameras: dict[str, ImageCamera], frame: str, neighbours: Sequence[str], sigma_px: float,
                side: Path, num_threads: int = -1, seed: int = 0, cache: Optional[dict[str, np.ndarray]] = None) -> tuple[Blur, int]:
    """The blur of ``frame``'s neighbours that matches it best, and its score (:func:`blur_scores`, on the
    :data:`CHOICE_NEIGHBORS` first ``neighbours``), coarse to fine:

    1. the Gaussian ``sigma_px`` (the frame's estimate) against streaks of the two middle :data:`STREAK_FRACTIONS` of
       the longer side in the :data:`CHOICE_RANKED_DIRECTIONS` directions of :func:`ranked_streak_directions`' first
       (``cache`` as there); the Gaussian is kept unless a streak matches :data:`STREAK_ADVANTAGE` times its inliers;
    2. the other fractions at the best streak's direction;
    3. the best streak's length refined at its direction (x 2^(k/4), ``0 < |k| <= LENGTH_STEPS``).

    Measured on castle-P30 (a 40 px streak, seed 0): the same blur for all 8 frames as the full grid (every fraction in
    every direction) in 0.58x its time; the directions land within 7 deg and the length decides (docs/benchmarks.md,
    twelfth and thirteenth looks). With the directions ranked first (4 of 12 tried): the same blur in 23 of 24
    frame-runs (3 seeds), the other one's direction at 150 deg instead of 135 (the truth: 149), in half the time
    (fourteenth look)."""
    near = list(neighbours[:CHOICE_NEIGHBORS])
    side_px = max(int(cameras[frame].width), int(cameras[frame].height))

    def best_of(scored: list[tuple[int, Blur]]) -> tuple[int, Blur]:
        return max(scored, key=lambda c: c[0])  # the first of equal scores

    gaussian = Blur(sigma_px=sigma_px)
    middle = STREAK_FRACTIONS[1:-1] if len(STREAK_FRACTIONS) > 2 else STREAK_FRACTIONS
    directions = ranked_streak_directions(images_dir, cameras, frame, neighbours, cache)[:CHOICE_RANKED_DIRECTIONS]
    streaks = [Blur(streak_px=f * side_px, angle_deg=a) for a in directions for f in middle]
    scores = blur_scores(images_dir, cameras, frame, near, [gaussian, *streaks], side, num_threads, seed)
    score, streak = best_of(list(zip(scores[1:], streaks)))
    if score < STREAK_ADVANTAGE * max(scores[0], 1):
        return gaussian, scores[0]
    others = [Blur(streak_px=f * side_px, angle_deg=streak.angle_deg) for f in STREAK_FRACTIONS if f not in middle]
    if others:
        score, streak = best_of([(score, streak), *zip(blur_scores(images_dir, cameras, frame, near, others, side, num_threads, seed), others)])
    lengths = [Blur(streak_px=streak.streak_px * 2.0 ** (k / 4.0), angle_deg=streak.angle_deg)
               for k in range(-LENGTH_STEPS, LENGTH_STEPS + 1) if k != 0]
    score, streak = best_of([(score, streak), *zip(blur_scores(images_dir, cameras, frame, near, lengths, side, num_threads, seed), lengths)])
    return streak, int(score)


def rescue_blurred_frames(
    database: str | Path, images_dir: str | Path, names: Sequence[str], cameras: dict[str, ImageCamera],
    work: str | Path, c2w: Optional[np.ndarray] = None, num_threads: int = -1, seed: int = 0,
    max_image_size: int = 3200, verbose: bool = False, log: Optional[Callable[[str], None]] = None,
    min_inliers: int = MIN_PAIR_INLIERS,
) -> list[RescuedFrame]:
    """Blur-matched features (module docstring) for the images of ``names`` that the ordinary matching left with
    few verified matches (:func:`frames_to_rescue`), written into ``database``. ``c2w``: the input poses
    ([N, 4, 4] camera-to-world, OpenCV axes, in ``names`` order) to pick neighbours by, else name order.
    ``work``: a directory for the side copies and databases, removed at the end. ``min_inliers``: the fewest
    verified inliers a frame must already have (:func:`frames_to_rescue`). Returns what was done per frame (none
    when no frame needs it, or none is blurred)."""

    log = log or (lambda message: None)
    images_dir, work = Path(images_dir), Path(work)
    rescue = frames_to_rescue(verified_inliers(database), min_inliers)
    rescue = {n: k for n, k in rescue.items() if n in set(names)}
    if not rescue:
        return []
    t0 = time.perf_counter()
    partners = nearest_partners(list(names), list(rescue), c2w)
    frames: list[RescuedFrame] = []
    cache: dict[str, np.ndarray] = {}
    for name, count in rescue.items():
        if not partners[name]:
            continue
        sigma = frame_blur_px(images_dir, cameras, name, partners[name], cache)
        level = nearest_level(sigma)
        if level is not None:
            frames.append(RescuedFrame(name, count, sigma, level, partners[name]))
    if not frames:
        return []
    log(f"{len(frames)} image(s) with few verified matches look blurred (" + ", ".join(f"{f.name} {f.sigma_px:.1f} px" for f in frames[:5])
        + (", ..." if len(frames) > 5 else "") + "): matched against their neighbours blurred alike")
    try:
        for level in sorted({f.level_px for f in frames}):
            group = [f for f in frames if f.level_px == level]
            log(f"blur {level:.1f} px: {len(group)} frame(s)")
            gained = match_blurred(database, images_dir, names, cameras, {f.name: f.partners for f in group}, Blur(sigma_px=level),
                                   work / f"{SIDE_DIRECTORY}_{level:.1f}px", c2w, num_threads, seed, max_image_size, verbose)
            for f in group:
                f.pairs, f.inliers = gained.get(f.name, (0, 0))
    finally:
        for side in work.glob(f"{SIDE_DIRECTORY}_*"):
            shutil.rmtree(side, ignore_errors=True)
    log("blur matching: " + ", ".join(f"{f.name} +{f.inliers} matches over {f.pairs} pairs (σ {f.level_px:.1f} px)" for f in frames[:8])
        + (", ..." if len(frames) > 8 else "") + f" ({time.perf_counter() - t0:.0f} s)")
    return frames
