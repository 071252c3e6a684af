#!/usr/bin/env python
"""The photometric alignment of streaked frames: a Gaussian blur model against the streak (issue 22).

``posefix refine``'s front end aligns the frames its tracks do not hold by their intensities
(:mod:`nerf_posefix.sfm.photometric_alignment`), with each frame's neighbours blurred like the frame. This probe
runs that stage (:func:`~nerf_posefix.sfm.photometric_alignment.align_weak_frames`) on the adjustment row's model of
the weak-frames benchmark for a motion degradation (``--frames OUT``: the output of ``python -m benchmarks.weak_frames
--kind motion --blur L --rows adjustment``): every degraded frame from where the adjustment left it (its input pose:
no track holds it), against the frames the adjustment holds, with

* ``gaussian``: the frame's Gaussian blur estimated against its neighbours (what the stage did for every frame before
  it took the placement's streaks);
* ``streak``: the streak the benchmark applied (its length and angle; the front end's placement estimates them, within
  a few pixels and degrees on castle: docs/benchmarks.md).

Errors as the benchmark measures them (a Sim(3) fitted on the sharp frames), medians over the degraded frames.

Usage::

    PYTHONPATH=. .venv/bin/python -m benchmarks.streak_alignment_probe --frames OUT --blur 40 --seeds 0 1 2 \
        --output docs/benchmarks/streak_alignment_castle_motion40.csv

Conventions: camera-to-world poses, OpenCV axes, the model's world frame.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def run_seed(frames: Path, scene: str, blur: float, seed: int) -> list[dict[str, Any]]:
    import pycolmap

    from benchmarks.weak_frames import LEVEL, aligned_errors, motion_angle, scene_tag
    from nerf_posefix.io.camera_set import CameraSet
    from nerf_posefix.io.transforms_json import read_transforms_json
    from nerf_posefix.sfm.blur_matching import Blur
    from nerf_posefix.sfm.photometric_alignment import align_weak_frames

    tag = scene_tag("motion", blur)
    model = frames / "work" / f"{scene}__{tag}__s{seed}__adjustment" / "refined" / "sparse" / "0"
    data = frames / "scenes" / f"{scene}-{tag}" / LEVEL[scene] / f"s{seed}" / "data"
    weak = set(json.loads((frames / "sources" / f"{scene}_{tag}" / "degraded.json").read_text())["images"])
    rec = pycolmap.Reconstruction(str(model))
    gt = read_transforms_json(data / "transforms_gt.json")
    names = [rec.images[i].name for i in rec.reg_image_ids()]
    degraded = [n for n in names if Path(n).name in weak]
    held = [n for n in names if n not in degraded]
    applied = {n: Blur(0.0, blur, float(np.degrees(motion_angle(Path(n).name)))) for n in degraded}
    before = {}
    for i in rec.reg_image_ids():
        w2c = np.eye(4)
        w2c[:3, :4] = rec.images[i].cam_from_world().matrix()
        before[rec.images[i].name] = np.linalg.inv(w2c)
    rows = []
    for model_name, streaks in (("input", None), ("gaussian", None), ("streak", applied)):
        t0 = time.perf_counter()
        aligned, _ = ({}, []) if model_name == "input" else align_weak_frames(rec, degraded, held, data, streaks=streaks)
        c2w = {**before, **{n: np.linalg.inv(m) for n, m in aligned.items()}}
        estimate = CameraSet(names=[Path(n).name for n in c2w], c2w=np.stack(list(c2w.values())))
        names_e, sharp, rot, _ = aligned_errors(gt, estimate, weak)
        per = [float(r) for r, s in zip(rot, sharp) if not s]
        rows.append({"scene": scene, "blur": blur, "seed": seed, "model": model_name, "kept": len(aligned),
                     "frames": len(degraded), "rot_degraded_deg": float(np.median(per)),
                     "rot_degraded_max_deg": float(np.max(per)), "seconds": time.perf_counter() - t0,
                     "per_frame_deg": " ".join(f"{v:.3f}" for v in per)})
        print(f"s{seed} {model_name:8s} median {np.median(per):.3f} deg, kept {len(aligned)}/{len(degraded)}, "
              f"{time.perf_counter() - t0:.0f} s: {rows[-1]['per_frame_deg']}", flush=True)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=Path, required=True, help="a weak-frames benchmark output with the adjustment rows")
    parser.add_argument("--scene", default="castle")
    parser.add_argument("--blur", type=float, default=40.0, help="the streak's length (benchmarks.weak_frames --kind motion --blur)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--output", type=Path, default=None, help="write the rows here (CSV)")
    args = parser.parse_args(argv)
    rows = [r for seed in args.seeds for r in run_seed(args.frames, args.scene, args.blur, seed)]
    for model_name in ("input", "gaussian", "streak"):
        vals = [r["rot_degraded_deg"] for r in rows if r["model"] == model_name]
        print(f"{model_name:8s}: degraded {np.mean(vals):.3f} ± {np.std(vals):.3f} deg over {len(vals)} seeds "
              f"({' / '.join(f'{v:.3f}' for v in vals)})")
    if args.output:
        with open(args.output, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
