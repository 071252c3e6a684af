#!/usr/bin/env python
"""Probe (issue 22): castle-P30's motion-blurred frames placed by streak-matched features against the adjusted sharp frames.

A question for the next step of blur matching (:mod:`nerf_posefix.sfm.blur_matching`), not a pipeline stage; the
front end now does it (:mod:`nerf_posefix.sfm.frame_placement`, with its own streak model and a coarse-to-fine
choice; docs/benchmarks.md, thirteenth look), and this probe is kept as the record of the twelfth look. At a
40 px streak (``python -m benchmarks.weak_frames --kind motion --blur 40``) the ordinary matching leaves 7 of 8
degraded frames without a verified pair, and refine's NeRF stage places them at 0.63 deg. Per seed, from what
``posefix refine`` has after its adjustment (the ``adjustment`` row's ``transforms.json``: the sharp frames adjusted,
the degraded ones at their input poses):

1. **The streak, chosen by what matches**: copies of the frame's 2 nearest neighbours (by the input poses) smeared
   along each streak of ``--lengths`` px in 12 directions (and blurred by the frame's Gaussian estimate) are matched
   with the frame at 640 px; the blur with the most verified inlier matches is taken (a streak only when it has
   1.5x the Gaussian's). ``--refine-length K``: then the lengths ``best x 2^(k/4)``, ``0 < |k| <= K``, at that
   direction, and the best of them (measured: the length decides; docs/benchmarks.md, twelfth look).
2. **Matches**: the frame matched against its 10 nearest neighbours blurred by that blur (the module's own side
   database and merge, :func:`nerf_posefix.sfm.blur_matching.merge_matches`), in a copy of the track database.
3. **Placement**: the sharp frames held at their adjusted poses, every track triangulated with them
   (:func:`nerf_posefix.sfm.track_building.triangulate_fixed_poses`, 4 px), then each degraded frame registered by
   COLMAP's absolute-pose registration (``IncrementalMapper.register_next_image``). The sharp frames never move.

Errors as the weak-frames benchmark measures them (a Sim(3) fitted on the sharp frames), the degraded frames at their
registered poses (their adjusted poses where registration fails).

Usage::

    PYTHONPATH=. .venv/bin/python -m benchmarks.streak_registration_probe --frames OUT --blur 40 --seeds 0 1 2 --refine-length 2

(``OUT``: a ``benchmarks.weak_frames --kind motion`` output holding the ``adjustment`` rows.)
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from nerf_posefix.io.camera_set import CameraSet, ImageCamera
from nerf_posefix.sfm import blur_matching as bm

ANGLES = 12
CHOICE_NEIGHBORS = 2
CHOICE_IMAGE_SIZE = 640
STREAK_ADVANTAGE = 1.5


def write_copy(source: Path, target: Path, sigma: float, streak: tuple[float, float] = (0.0, 0.0)) -> None:
    """``source`` blurred (Gaussian ``sigma`` px) or smeared along ``streak`` (length px, angle rad), contrast-normalised
    as :mod:`nerf_posefix.sfm.blur_matching` writes its copies, 8-bit grayscale JPEG."""
    from PIL import Image, ImageFilter

    from benchmarks.weak_frames import smear

    with Image.open(source) as im:
        gray = im.convert("L")
        if sigma > 0:
            gray = gray.filter(ImageFilter.GaussianBlur(sigma))
    a = np.asarray(gray, dtype=np.float64)
    if streak[0] > 0:
        a = smear(a, *streak)
    a = (a - a.mean()) * (bm.NORMALISED_STD / max(float(a.std()), 1e-3)) + bm.NORMALISED_MEAN
    target.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8)).save(target, format="JPEG", quality=98)


def pair_inliers(side: Path, pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """Verified inlier matches per pair of the side database (0 below :data:`bm.MIN_PAIR_INLIERS`)."""
    import pycolmap

    db = pycolmap.Database.open(str(side))
    try:
        ids = {im.name: im.image_id for im in db.read_all_images()}
        out = {}
        for a, b in pairs:
            k = int(db.read_two_view_geometry(ids[a], ids[b]).inlier_matches.shape[0]) if db.exists_two_view_geometry(ids[a], ids[b]) else 0
            out[(a, b)] = k if k >= bm.MIN_PAIR_INLIERS else 0
    finally:
        db.close()
    return out


def choose_blur(frame: str, sigma: float, partners: list[str], images: Path, cameras: dict[str, ImageCamera], work: Path,
                lengths: Sequence[float], threads: int, refine_steps: int = 0) -> tuple[float, tuple[float, float], list[float]]:
    """``(Gaussian σ or 0, (streak length, angle) or (0, 0), scores)``: the blur of the frame's neighbours that
    matches it best (module docstring, step 1). ``refine_steps`` > 0: then the lengths ``best x 2^(k/4)``,
    ``0 < |k| <= refine_steps``, at the best streak's direction, and the best of those."""
    sigma_, streak, scores = _best_blur(frame, sigma, [(0.0, 0.0)] + [(L, k * np.pi / ANGLES) for L in lengths for k in range(ANGLES)],
                                        partners, images, cameras, work, threads)
    if streak[0] == 0 or refine_steps <= 0:
        return sigma_, streak, scores
    candidates = [(streak[0] * 2.0 ** (k / 4.0), streak[1]) for k in range(-refine_steps, refine_steps + 1)]
    _, fine, fine_scores = _best_blur(frame, 0.0, [(0.0, 0.0)] + candidates, partners, images, cameras, work, threads, advantage=0.0)
    return 0.0, fine, scores + fine_scores[1:]


def _best_blur(frame: str, sigma: float, blurs: list[tuple[float, float]], partners: list[str], images: Path,
               cameras: dict[str, ImageCamera], work: Path, threads: int, advantage: float = STREAK_ADVANTAGE
               ) -> tuple[float, tuple[float, float], list[float]]:
    """The best of ``blurs`` (``blurs[0]``: the Gaussian ``sigma``; a streak is taken over it at ``advantage`` x its
    matches)."""
    near = partners[:CHOICE_NEIGHBORS]
    side = work / "choice"
    shutil.rmtree(side, ignore_errors=True)
    write_copy(images / frame, side / "images" / frame, 0.0)
    names, pairs, cams = [frame], [], {frame: cameras[frame]}
    for b, (length, angle) in enumerate(blurs):
        for n in near:
            copy = f"{Path(n).stem}__blur{b}{Path(n).suffix}"
            write_copy(images / n, side / "images" / copy, sigma if length == 0 else 0.0, (length, angle))
            names.append(copy)
            cams[copy] = cameras[n]
            pairs.append((frame, copy))
    db = side / "database.db"
    bm.register_images(db, names, cams)
    bm.extract_sift(db, side / "images", names, cams, threads, CHOICE_IMAGE_SIZE, peak_threshold=bm.PEAK_THRESHOLD)
    bm.match_listed_pairs(db, pairs, side / "pairs.txt", threads, 0, False)
    found = pair_inliers(db, pairs)
    shutil.rmtree(side, ignore_errors=True)
    scores = [float(sum(found[(frame, f"{Path(n).stem}__blur{b}{Path(n).suffix}")] for n in near)) for b in range(len(blurs))]
    best = 1 + int(np.argmax(scores[1:]))
    if scores[best] >= advantage * max(scores[0], 1.0):
        return 0.0, blurs[best], scores
    return sigma, (0.0, 0.0), scores


def match_frame(database: Path, frame: str, sigma: float, streak: tuple[float, float], partners: list[str], names: list[str],
                c2w: np.ndarray, images: Path, cameras: dict[str, ImageCamera], work: Path, threads: int) -> tuple[int, int]:
    """The frame matched against its neighbours blurred alike, merged into ``database`` (module docstring, step 2)."""
    order = {n: i for i, n in enumerate(names)}
    side = work / "side"
    shutil.rmtree(side, ignore_errors=True)
    members = sorted({frame, *partners}, key=order.__getitem__)
    for n in members:
        write_copy(images / n, side / "images" / n, 0.0 if n == frame else sigma, (0.0, 0.0) if n == frame else streak)
    db = side / "database.db"
    bm.register_images(db, members, cameras)
    pairs = [(frame, p) for p in partners]
    links = sorted({tuple(sorted((a, b), key=order.__getitem__)) for a, near in bm.nearest_partners(
        names, partners, c2w, count=bm.PARTNERS, among=partners).items() for b in near})
    bm.extract_sift(db, side / "images", members, cameras, threads, 3200, peak_threshold=bm.PEAK_THRESHOLD)
    bm.match_listed_pairs(db, pairs + links, side / "pairs.txt", threads, 0, False)
    gained = bm.merge_matches(database, db, members, pairs, links)
    shutil.rmtree(side, ignore_errors=True)
    return gained.get(frame, (0, 0))


def probe_seed(frames: Path, blur: float, seed: int, work: Path, lengths: Sequence[float], threads: int, refine_steps: int = 0) -> dict[str, Any]:
    from benchmarks.blur_matching_probe import castle_seed, register_against
    from benchmarks.weak_frames import aligned_errors, scene_tag
    from nerf_posefix.io.transforms_json import read_transforms_json

    tag = scene_tag("motion", blur)
    work = work / f"{tag}_s{seed}"
    scene = castle_seed(frames, tag, seed, work, threads)
    noisy, truth, names, cameras, images, database = (scene[k] for k in ("noisy", "truth", "names", "cameras", "images", "database"))
    adjusted = read_transforms_json(frames / f"work/castle__{tag}__s{seed}__adjustment/refined/transforms.json")
    degraded = [n for n in names if Path(n).name in scene["degraded"]]
    before = bm.verified_inliers(database)
    partners = bm.nearest_partners(names, degraded, noisy.c2w)
    small = {n: bm._reduce(bm._gray(images / n), 2) for n in names}  # noqa: SLF001 (the module's own reduction)
    rows: dict[str, Any] = {}
    for n in degraded:
        sigma = 2.0 * bm.estimate_blur_sigma(small[n], [small[p] for p in partners[n][:bm.SIGMA_NEIGHBORS]], [s / 2.0 for s in bm.SIGMA_LEVELS])
        level = bm.nearest_level(sigma) or bm.SIGMA_LEVELS[0]
        g, streak, scores = choose_blur(n, level, partners[n], images, cameras, work, lengths, threads, refine_steps)
        pairs, inliers = match_frame(database, n, g, streak, partners[n], names, noisy.c2w, images, cameras, work, threads)
        rows[n] = {"inliers_before": before.get(n, 0), "sigma_px": g, "streak_px": streak[0], "streak_angle_deg": float(np.rad2deg(streak[1])),
                   "best_score": max(scores), "gaussian_score": scores[0], "pairs": pairs, "inliers": inliers}
        print(f"  s{seed} {n}: {rows[n]}", flush=True)
    # placement: the sharp frames at their adjusted poses, every track triangulated with them, the degraded registered
    adj_by = dict(zip(adjusted.names, adjusted.c2w))
    registered = register_against(database, images, CameraSet(names=names, c2w=np.stack([adj_by[n] for n in names])), cameras,
                                  degraded, scene["focal_px"], threads)
    placed = dict(adj_by)
    for n in degraded:
        rows[n]["registered"] = registered[n] is not None
        if registered[n] is not None:
            placed[n] = registered[n]
    weak = {Path(n).name for n in degraded}
    out: dict[str, Any] = {"blur": blur, "seed": seed, "frames": rows}
    for label, poses in (("adjusted", adjusted), ("placed", CameraSet(names=names, c2w=np.stack([placed[n] for n in names])))):
        frame_names, sharp, rot, _ = aligned_errors(truth, poses, weak)
        out[label] = {"degraded_median_deg": float(np.median(rot[~sharp])), "sharp_median_deg": float(np.median(rot[sharp])),
                      "degraded_max_deg": float(rot[~sharp].max()), "per_frame": {f: float(r) for f, r, s in zip(frame_names, rot, sharp) if not s}}
    shutil.rmtree(work, ignore_errors=True)
    return out


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=Path, required=True, help="a benchmarks.weak_frames --kind motion output with the adjustment rows")
    parser.add_argument("--blur", type=float, default=40.0, help="the streak length of that output (px)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--lengths", type=float, nargs="+", default=[12.0, 24.0, 48.0], help="streak lengths tried (px)")
    parser.add_argument("--refine-length", type=int, default=0, metavar="K",
                        help="then try the lengths best x 2^(k/4), 0 < |k| <= K, at the best direction")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/streak_registration_probe"))
    parser.add_argument("--output", type=Path, default=None, help="write the records here (JSON)")
    args = parser.parse_args(argv)
    records = []
    for seed in args.seeds:
        result = probe_seed(args.frames, args.blur, seed, args.work, args.lengths, args.threads, args.refine_length)
        records.append(result)
        print(f"motion {args.blur:g} px, seed {seed}: degraded {result['adjusted']['degraded_median_deg']:.3f} -> "
              f"{result['placed']['degraded_median_deg']:.3f} deg (worst {result['placed']['degraded_max_deg']:.3f}), sharp "
              f"{result['placed']['sharp_median_deg']:.4f} deg (unchanged), registered "
              f"{sum(r['registered'] for r in result['frames'].values())} of {len(result['frames'])}", flush=True)
    if args.output:
        args.output.write_text(json.dumps(records, indent=2))


if __name__ == "__main__":
    main()
