"""The NeRF stage of a large capture on its weak frames' neighbourhood against the whole capture (issues 22 / 23).

::

    PYTHONPATH=. .venv/bin/python -m benchmarks.nerf_subset --output benchmark_results/nerf_subset --jobs 2

Scene: the bundled scene's generator (:mod:`benchmarks.make_scene`) with ``--views`` views (default 300, 128x128,
two interleaved rings), every pose perturbed by ``--rotation-deg`` / ``--translation`` (1 deg / 2 % of the radius,
``posefix perturb``, seed ``--seed``), and every ``--every``-th view (default 30: 10 frames) degraded as the
weak-frames benchmark degrades them (:func:`benchmarks.weak_frames.degrade`: Gaussian blur ``--blur`` px, contrast
cut to 40 %), given to ``posefix refine --poses`` as a pose-only transforms.json.

Rows (``posefix refine`` with its defaults, each in its own process: wall time and peak memory):

* ``whole``: ``--nerf-max-images 0``, the NeRF stage on every image (refine before ``--nerf-max-images``);
* ``local-N``: ``--nerf-max-images N`` (``--sizes``, default 60 and 150: with 10 weak frames, 5 and 14 held
  neighbours each; refine's default, 300, trains a 300-view capture whole).

Errors: a Sim(3) fitted on the sharp images (:func:`benchmarks.weak_frames.split_errors`), medians over the degraded
and the sharp ones. Rows write ``rows/<row>.json`` when complete and are skipped when it exists (``--force``).
Table: ``OUT/nerf_subset.{csv,md}``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]


def make_data(output: Path, views: int, rotation_deg: float, translation: float, seed: int, every: int, blur: float) -> tuple[Path, list[str]]:
    """``OUT/data``: the noisy, partly degraded capture (transforms.json, transforms_gt.json, images); returns it and
    the degraded image names."""
    from benchmarks import make_scene
    from benchmarks.weak_frames import degrade
    from nerf_posefix.workflows.perturb import perturb_dataset

    data, record = output / "data", output / "data" / "degraded.json"
    if record.is_file():
        return data, json.loads(record.read_text())["images"]
    scene = output / "scene"
    if not (scene / "transforms.json").is_file():
        shutil.rmtree(scene, ignore_errors=True)
        make_scene.main(["--output", str(scene), "--views", str(views), "--overwrite"])
    shutil.rmtree(data, ignore_errors=True)
    perturb_dataset(scene, data, rotation_deg=rotation_deg, translation=translation, seed=seed)
    names = sorted(p.name for p in (data / "images").iterdir())
    degraded = names[::every]
    for name in degraded:
        degrade(data / "images" / name, data / "images" / name, blur)
    record.write_text(json.dumps({"images": degraded, "blur_px": blur, "every": every}, indent=2))
    return data, degraded


def run_row(row: str, data: Path, output: Path, degraded: list[str], force: bool) -> dict[str, Any]:
    from benchmarks.scaling import run_child
    from benchmarks.weak_frames import split_errors
    from nerf_posefix.io.transforms_json import read_transforms_json

    record = output / "rows" / f"{row}.json"
    if record.is_file() and not force:
        return json.loads(record.read_text())
    cap = "0" if row == "whole" else row.split("-", 1)[1]
    target = output / "runs" / row
    cmd = [sys.executable, "-m", "nerf_posefix.cli.main", "refine", "--poses", str(data / "transforms.json"), "--output", str(target),
           "--nerf-max-images", cap, "--threads", "1", "--overwrite"]
    run = run_child(cmd, output / "logs" / f"{row}.log")
    if run["returncode"] != 0:
        raise RuntimeError(f"{row}: exit {run['returncode']} (see {output / 'logs' / f'{row}.log'})")
    summary = json.loads((target / "report.json").read_text())["summary"]
    errors = split_errors(read_transforms_json(data / "transforms_gt.json"), read_transforms_json(target / "transforms.json"), set(degraded))
    result = {"row": row, "wall_s": run["wall_s"], "peak_rss_mib": run["peak_rss_mib"],
              "trained_images": (summary.get("trained_images") or {}).get("count", len(read_transforms_json(data / "transforms.json"))),
              "weak": ((summary.get("bundle_adjustment") or {}).get("support") or {}).get("num_weak") if isinstance(summary.get("bundle_adjustment"), dict) else None,
              "iterations": summary.get("iterations"), "training_seconds": summary.get("training_seconds"), **errors}
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(result, indent=2))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--views", type=int, default=300)
    parser.add_argument("--rotation-deg", type=float, default=1.0)
    parser.add_argument("--translation", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--every", type=int, default=30)
    parser.add_argument("--blur", type=float, default=3.0)
    parser.add_argument("--sizes", type=int, nargs="+", default=[60, 150])
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    data, degraded = make_data(args.output, args.views, args.rotation_deg, args.translation, args.seed, args.every, args.blur)
    rows = ["whole"] + [f"local-{n}" for n in args.sizes]
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(lambda r: run_row(r, data, args.output, degraded, args.force), rows))
    header = ["row", "trained_images", "weak", "rot_degraded_deg", "rot_sharp_deg", "centre_degraded_pct", "rot_degraded_max_deg",
              "wall_s", "peak_rss_mib"]
    lines = [",".join(header)] + [",".join(str(r.get(k, "")) for k in header) for r in results]
    (args.output / "nerf_subset.csv").write_text("\n".join(lines) + "\n")
    md = ["| row | images trained | weak | rotation, degraded (deg) | rotation, sharp (deg) | centre, degraded (%) | worst degraded (deg) | wall (s) | peak (MiB) |",
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    md += [f"| {r['row']} | {r['trained_images']} | {r['weak']} | {r['rot_degraded_deg']:.3f} | {r['rot_sharp_deg']:.4f} | "
           f"{r['centre_degraded_pct']:.3f} | {r['rot_degraded_max_deg']:.3f} | {r['wall_s']:.0f} | {r['peak_rss_mib']:.0f} |" for r in results]
    (args.output / "nerf_subset.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
