#!/usr/bin/env python
r"""Small captures cut from castle-P30: does refine's real-scene result hold on 8-11 photos?

castle-P30 is the only real scene with independent ground truth here; the other scenes of its benchmark (Strecha et
al. 2008: Herz-Jesu-P8, entry-P10, fountain-P11, Herz-Jesu-P25) are small captures. This benchmark cuts windows of
consecutive photos out of castle's loop (``--sizes``, default 8 and 11; windows spread over the loop, every image in
one window per size) and runs, per window, the two inputs a user brings:

* ``colmap`` / ``refine-colmap``: COLMAP's from-scratch pipeline on the window's images (pycolmap SIFT, exhaustive
  matching, incremental mapping; the ground-truth K held fixed, :func:`benchmarks.sfm.run_sfm`), as it is and after
  ``posefix refine --colmap-model`` with its defaults;
* ``input`` / ``refine-poses``: the ground truth perturbed (2° / 3 % of the scene radius, seeded: ``posefix
  perturb``) as a pose-only transforms.json, as it is and after ``posefix refine --poses`` with its defaults;
* ``colmap-selfcal`` / ``refine-selfcal-fixed`` / ``refine-selfcal``: COLMAP self-calibrating the camera as castle's
  ``sparse_selfcal/0`` was made (one shared PINHOLE camera, fx and fy estimated, the principal point held at the image
  centre, COLMAP's placeholder), as it is, after ``posefix refine --colmap-model --intrinsics fixed``, and after
  ``posefix refine --colmap-model`` with its defaults (``--intrinsics auto``; the record keeps the principal point
  test's χ² and whether it refined the camera).

Errors against ``gt_cameras.json`` (camera-to-world, OpenCV axes, metres) after a Sim(3) fitted on the window's
camera centres (:func:`benchmarks.castle_p30.evaluate`): median and max rotation (deg), median centre error (% of the
window's spread). Every row runs in its own process (1 thread), its record in ``OUT/rows/<window>-<row>.json``
(resumable; ``--force`` reruns). Outputs: ``OUT/small_captures.csv`` and the printed table.

Usage::

    python -m benchmarks.small_captures --output OUT                 # both sizes, every window, seed 0
    python -m benchmarks.small_captures --output OUT --sizes 8 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.castle_p30 import Estimate, GroundTruth, evaluate, read_reconstruction, reconstruction_c2w

ROOT = Path(__file__).resolve().parents[1]
CASTLE_DIR = ROOT.parent / "shared" / "scenes" / "castle-P30"
ROWS = ("colmap", "refine-colmap", "input", "refine-poses", "colmap-selfcal", "refine-selfcal-fixed", "refine-selfcal")
#: The loop's images in capture order (0000 was taken far from the rest, between 0029 and 0001).
#: A run whose median pairwise rotation error exceeds this is counted as broken (a wrong reconstruction), not
#: averaged in.
BROKEN_DEG = 5.0
LOOP = tuple(f"{k:04d}.jpg" for k in range(1, 30)) + ("0000.jpg",)


def windows(size: int) -> list[tuple[str, list[str]]]:
    """Windows of ``size`` consecutive images of :data:`LOOP` (wrapping), ``ceil(30 / size)`` of them, evenly
    started, so that every image lies in at least one: ``[(tag, names)]``."""
    count = -(-len(LOOP) // size)
    starts = [round(k * len(LOOP) / count) for k in range(count)]
    return [(f"w{size}-{s:02d}", [LOOP[(s + i) % len(LOOP)] for i in range(size)]) for s in starts]


def _gt(names: Sequence[str]) -> tuple[GroundTruth, dict[str, Any]]:
    data = json.loads((CASTLE_DIR / "gt_cameras.json").read_text())["images"]
    names = sorted(names)
    c2w = np.array([data[n]["c2w"] for n in names], dtype=np.float64).reshape(-1, 4, 4)
    return GroundTruth(names=list(names), c2w=c2w), data[names[0]]


def base_dataset(out: Path, tag: str, names: Sequence[str]) -> Path:
    """``OUT/scenes/TAG/base``: the window's ground truth as a transforms.json (OpenGL axes, COLMAP's pixel
    convention for the principal point) and an images directory of links."""
    from nerf_posefix.io.transforms_json import transforms_meta, write_transforms_json

    base = out / "scenes" / tag / "base"
    if (base / "transforms.json").is_file():
        return base
    gt, first = _gt(names)
    K = np.asarray(first["K"], dtype=np.float64)
    intrinsics = {"camera_model": "PINHOLE", "fl_x": K[0, 0], "fl_y": K[1, 1], "cx": K[0, 2] + 0.5, "cy": K[1, 2] + 0.5,
                  "w": int(first["width"]), "h": int(first["height"])}
    images = base / "images"
    images.mkdir(parents=True, exist_ok=True)
    for n in gt.names:
        link = images / n
        if not link.exists():
            os.symlink((CASTLE_DIR / "images" / n).resolve(), link)
    write_transforms_json(transforms_meta([f"images/{n}" for n in gt.names], gt.c2w, intrinsics), base / "transforms.json")
    return base


def _child(cmd: Sequence[str], log: Path) -> float:
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    with open(log, "w") as f:
        code = subprocess.run(list(cmd), stdout=f, stderr=subprocess.STDOUT, env=env, check=False).returncode
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({code}); see {log}")
    return time.perf_counter() - t0


def _posefix(*args: str) -> list[str]:
    return [sys.executable, "-m", "nerf_posefix.cli.main", *args]


def _model_estimate(model_dir: Path) -> Estimate:
    names, c2w = reconstruction_c2w(read_reconstruction(model_dir))
    return Estimate(names=[Path(n).name for n in names], c2w=c2w)


def _transforms_estimate(path: Path) -> Estimate:
    meta = json.loads(path.read_text())
    flip = np.diag([1.0, -1.0, -1.0, 1.0])  # OpenGL -> OpenCV camera axes
    names = [Path(f["file_path"]).name for f in meta["frames"]]
    c2w = np.array([np.asarray(f["transform_matrix"], dtype=np.float64) @ flip for f in meta["frames"]])
    return Estimate(names=names, c2w=c2w)


#: The rows on a COLMAP model of the window: row -> (self-calibrated, ``posefix refine`` arguments; None: the model as it is).
COLMAP_ROWS: dict[str, tuple[bool, Any]] = {
    "colmap": (False, None), "refine-colmap": (False, ()),
    "colmap-selfcal": (True, None), "refine-selfcal-fixed": (True, ("--intrinsics", "fixed")), "refine-selfcal": (True, ()),
}


def _colmap_model(work: Path, base: Path, names: Sequence[str], seed: int, selfcal: bool) -> tuple[Path, dict[str, Any]]:
    """COLMAP's model of the window (made once, 1 thread): the ground-truth K held fixed, or (``selfcal``) one shared
    PINHOLE camera self-calibrated with the principal point at the image centre. Returns it and its record."""
    sfm = work / ("colmap-selfcal" if selfcal else "colmap")
    if not (sfm / "done").is_file():
        from benchmarks.sfm import PinholeCamera, run_sfm

        t0 = time.perf_counter()
        if selfcal:
            result = run_sfm(base / "images", sfm, intrinsics="free", camera_model="PINHOLE", num_threads=1, seed=seed, overwrite=True)
        else:
            _, first = _gt(names)
            K = np.asarray(first["K"], dtype=np.float64)
            camera = PinholeCamera(width=int(first["width"]), height=int(first["height"]), fx=K[0, 0], fy=K[1, 1],
                                   cx=K[0, 2] + 0.5, cy=K[1, 2] + 0.5)
            result = run_sfm(base / "images", sfm, intrinsics="fixed", camera=camera, num_threads=1, seed=seed, overwrite=True)
        (sfm / "done").write_text(json.dumps({"wall_s": time.perf_counter() - t0, "error": result.error,
                                              "unregistered": list(result.unregistered)}))
    return sfm / "sparse" / "0", json.loads((sfm / "done").read_text())


def run_row(out: Path, tag: str, names: Sequence[str], row: str, seed: int) -> dict[str, Any]:
    """One row of one window: its estimate's errors against the ground truth and its wall time."""
    work = out / "runs" / f"{tag}-s{seed}"
    work.mkdir(parents=True, exist_ok=True)
    base = base_dataset(out, tag, names)
    wall = None
    extra: dict[str, Any] = {}
    if row in COLMAP_ROWS:
        selfcal, refine_args = COLMAP_ROWS[row]
        model, record = _colmap_model(work, base, names, seed, selfcal)
        if refine_args is None:
            est, wall = _model_estimate(model), record["wall_s"]
        else:
            refined = work / row
            if not (refined / "report.json").is_file():
                wall = _child(_posefix("refine", "--colmap-model", str(model), "--images", str(base / "images"), "--output",
                                       str(refined), "--overwrite", "--threads", "1", "--seed", str(seed), *refine_args),
                              work / f"{row}.log")
            est = _model_estimate(refined / "sparse" / "0")
            tests = json.loads((refined / "report.json").read_text())["summary"]["bundle_adjustment"].get("principal_point_tests") or []
            extra = {"chi2": tests[0]["chi2"], "intrinsics_refined": tests[0]["refined"]} if tests else {}
    else:
        data = work / "data"
        if not (data / "transforms.json").is_file():
            _child(_posefix("perturb", "--data", str(base), "--output", str(data), "--rotation-deg", "2", "--translation", "0.03",
                            "--seed", str(seed), "--overwrite"), work / "perturb.log")
        if row == "input":
            est = _transforms_estimate(data / "transforms.json")
        else:
            refined = work / "refine-poses"
            if not (refined / "report.json").is_file():
                wall = _child(_posefix("refine", "--poses", str(data / "transforms.json"), "--output", str(refined),
                                       "--overwrite", "--threads", "1", "--seed", str(seed)), work / "refine-poses.log")
            est = _transforms_estimate(refined / "transforms.json")
    gt, _ = _gt(names)
    metrics = evaluate(gt, est)
    return {"window": tag, "size": len(names), "first": names[0], "seed": seed, "row": row,
            "registered": metrics["num_matched"], "rot_median_deg": metrics["rot_sim3_median_deg"],
            "rot_max_deg": metrics["rot_sim3_max_deg"], "centre_median_pct": metrics["centre_median_pct"],
            "pairwise_median_deg": metrics["pairwise_median_deg"], "pairwise_max_deg": metrics["pairwise_max_deg"],
            "rot_only_median_deg": metrics["rot_only_median_deg"], "wall_s": wall, **extra}


def summarise(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per window size and row, over windows and seeds: the medians of the per-run median pairwise rotation
    error, median rotation error after the Sim(3), and median centre error, the worst run's median pairwise
    error, and how many runs failed (no result, or a median pairwise error above :data:`BROKEN_DEG`)."""
    out = []
    for size in sorted({r["size"] for r in records}):
        for row in ROWS:
            runs = [r for r in records if r["size"] == size and r["row"] == row]
            ok = [r for r in runs if "error" not in r]
            if not runs:
                continue
            good = [r for r in ok if r["pairwise_median_deg"] <= BROKEN_DEG]
            med = lambda key: float(np.median([r[key] for r in good])) if good else float("nan")  # noqa: E731
            out.append({"size": size, "row": row, "runs": len(runs), "broken": len(runs) - len(good),
                        "pairwise_median_deg": med("pairwise_median_deg"), "rot_sim3_median_deg": med("rot_median_deg"),
                        "centre_median_pct": med("centre_median_pct"),
                        "worst_pairwise_median_deg": max((r["pairwise_median_deg"] for r in good), default=float("nan"))})
    return out


def write_summary(records: Sequence[dict[str, Any]], output: Path) -> None:
    rows = summarise(records)
    lines = ["| images | row | runs | broken (pairwise > %g°) | pairwise rotation (deg) | rotation after Sim(3) (deg) | centre (%%) | worst run, pairwise (deg) |" % BROKEN_DEG,
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['size']} | {r['row']} | {r['runs']} | {r['broken']} | {r['pairwise_median_deg']:.3f} | "
                     f"{r['rot_sim3_median_deg']:.3f} | {r['centre_median_pct']:.3f} | {r['worst_pairwise_median_deg']:.3f} |")
    text = "\n".join(lines) + "\n"
    (output / "small_captures.md").write_text(text)
    print(text)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--sizes", type=int, nargs="+", default=[8, 11])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    p.add_argument("--force", action="store_true")
    args = p.parse_args(argv)
    records = []
    for size in args.sizes:
        for tag, names in windows(size):
            for seed in args.seeds:
                for row in args.rows:
                    path = args.output / "rows" / f"{tag}-s{seed}-{row}.json"
                    if path.is_file() and not args.force:
                        records.append(json.loads(path.read_text()))
                        continue
                    try:
                        rec = run_row(args.output, tag, names, row, seed)
                    except Exception as exc:  # a failed row is a result: recorded, the others go on
                        rec = {"window": tag, "size": size, "first": names[0], "seed": seed, "row": row, "error": str(exc)}
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(json.dumps(rec, indent=2))
                    records.append(rec)
                    print(json.dumps(rec), flush=True)
    write_summary(records, args.output)
    keys = ["window", "size", "first", "seed", "row", "registered", "rot_median_deg", "rot_max_deg", "centre_median_pct",
            "pairwise_median_deg", "pairwise_max_deg", "rot_only_median_deg", "wall_s", "chi2", "intrinsics_refined", "error"]
    with open(args.output / "small_captures.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in records:
            w.writerow({k: r.get(k) for k in keys})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
