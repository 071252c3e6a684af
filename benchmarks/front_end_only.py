"""The front end alone on the pose-only datasets of :mod:`benchmarks.plugin_front_end` (castle-P30, 2 deg / 3 %).

``posefix refine --poses`` (no NeRF stage) is the front end the posefix methods run at set-up; with every camera
well held they keep its poses, so this scores the poses a ``--inputs poses`` run starts from and keeps, without
its 1000 training iterations::

    PYTHONPATH=. .venv/bin/python -m benchmarks.front_end_only --output benchmark_results/plugin_front_end --seeds 0 1 2

Errors: median rotation error on the 22 training cameras (every 4th view in name order held out, a Sim(3) fitted
on the 22) and on all 30, against the LIDAR ground truth.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import Sequence


def score(output: Path, seed: int) -> dict[str, float]:
    from nerf_posefix.io.camera_set import CameraSet
    from nerf_posefix.io.transforms_json import read_transforms_json
    from nerf_posefix.workflows.experiment import pose_errors
    from nerf_posefix.workflows.refine import RefineOptions, refine

    from benchmarks.plugin_front_end import poses_dataset

    data = poses_dataset(output, seed)
    out = output / "front_end_only" / f"s{seed}"
    result = refine(RefineOptions(output=out, poses=data / "transforms.json", iterations=0, threads=1, seed=seed, quiet=True,
                                  overwrite=True))
    est, gt = read_transforms_json(out / "transforms.json"), read_transforms_json(data / "transforms_gt.json")
    est = CameraSet(names=[Path(n).name for n in est.names], c2w=est.c2w)
    gt = CameraSet(names=[Path(n).name for n in gt.names], c2w=gt.c2w)
    train = [n for i, n in enumerate(sorted(gt.names)) if i % 4 != 0]

    def sub(c: CameraSet) -> CameraSet:
        return CameraSet(names=train, c2w=c.c2w[[c.names.index(n) for n in train]])

    return {"seed": seed, "rot_median_train_deg": pose_errors(sub(gt), sub(est)).summary["rotation_median_deg"],
            "rot_median_all_deg": pose_errors(gt, est).summary["rotation_median_deg"],
            "seconds": result.summary["total_seconds"]}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, required=True, help="the plugin_front_end benchmark's output (its data)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    for seed in args.seeds:
        r = score(args.output.resolve(), seed)
        print(f"seed {seed}: training cameras {r['rot_median_train_deg']:.4f} deg, all {r['rot_median_all_deg']:.4f} deg, "
              f"{r['seconds']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
