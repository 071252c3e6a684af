"""``ns-train posefix-small`` with and without its front end, against nerfacto-alike baselines, on castle-P30
(issue 21): training-camera pose error against the LIDAR ground truth, held-out rendering quality at the
given and at test-pose-aligned poses, and the front end's cost.

::

    PYTHONPATH=. .venv/bin/python -m benchmarks.plugin_front_end --output benchmark_results/plugin_front_end \\
        --iterations 1000 --seeds 0 1 2

Inputs (``../shared/scenes/castle-P30``, 30 photos 768x512, LIDAR ground truth):

* ``colmap``: COLMAP's own model (``sparse/0``, intrinsics fixed at the ground truth's) and the images, read
  with nerfstudio's ``colmap`` dataparser (a working copy: links to the images, nerfstudio writes its
  ``images_2`` there);
* ``poses``: the ground-truth poses perturbed 2 deg / 3 % of the radius (seeded), as a pose-only
  transforms.json (as ``benchmarks.poses_from_anywhere`` builds it), with an ``images_2`` folder.

Rows, all the same CPU-sized model (``posefix-small``: nerfacto with small grids) and budget, images
downscaled 2x for training, every 4th view held out:

* ``posefix``: the method's defaults: front end on (robust bundle adjustment of the model's tracks, or
  tracks built from the images then adjusted), the cameras the tracks hold kept at the adjusted pose and
  the weakly held ones refined, the pixels prior (σ per camera from its support), the track term;
* ``posefix-homography``: the same with the paper's unscaled homography prior;
* ``posefix-all-cameras``: the defaults, but the NeRF refines every camera (``nerf_cameras all``);
* ``posefix-no-front-end``: the method as it was before issue 21 (front end off);
* ``nerfacto-l2``: nerfstudio's camera optimizer with its L2 penalties (SO3xR3; the posefix optimizer with
  the homography weight 0 and nerfstudio's default penalties), no tracks, no front end;
* ``nerfacto-off``: no camera optimizer.

Per run: the pose error of the training cameras after a Sim(3) alignment to the ground truth (as
``benchmarks.castle_p30``), PSNR / SSIM of the held-out views at their given poses and after test-pose
alignment (each held-out pose optimised against the frozen model: ``--align-steps`` Adam steps), the front
end's seconds and the training's. Each run is a subprocess; results are JSON files under ``OUT/runs``
(resumable: a finished run is not redone); the table goes to ``OUT/plugin_front_end.csv``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CASTLE = ROOT.parent / "shared" / "scenes" / "castle-P30"
ROWS = ("posefix", "posefix-homography", "posefix-all-cameras", "posefix-no-front-end", "nerfacto-l2", "nerfacto-off")
INPUTS = ("colmap", "poses")
DOWNSCALE = 4
EVAL_INTERVAL = 4


@dataclass
class Job:
    input: str
    row: str
    seed: int
    iterations: int
    align_steps: int
    output: Path
    render: bool = True

    @property
    def name(self) -> str:
        return f"{self.input}-{self.row}-s{self.seed}-{self.iterations}it" + ("" if self.render else "-poses-only")

    @property
    def result_path(self) -> Path:
        return self.output / "runs" / self.name / "result.json"


# ------------------------------------------------------------------------------------------------
# data


def _resized(src_dir: Path, names: Sequence[str], target: Path, factor: int) -> None:
    from PIL import Image

    if (target / ".done").is_file():
        return
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        with Image.open(src_dir / name) as im:
            w, h = im.size
            im.convert("RGB").resize((w // factor, h // factor), Image.LANCZOS).save(target / Path(name).name, quality=95)
    (target / ".done").write_text("ok")


def colmap_dataset(output: Path) -> Path:
    """``OUT/data/colmap``: links to castle's images, a copy of its COLMAP model (``sparse/0``) and the
    downscaled images (``images_4``, as nerfstudio's colmap dataparser would write them)."""
    data = output / "data" / "colmap"
    if (data / f"images_{DOWNSCALE}" / ".done").is_file():
        return data
    data.mkdir(parents=True, exist_ok=True)
    if not (data / "images").exists():
        os.symlink(CASTLE / "images", data / "images", target_is_directory=True)
    if not (data / "sparse" / "0").is_dir():
        shutil.copytree(CASTLE / "sparse" / "0", data / "sparse" / "0")
    names = sorted(p.name for p in (CASTLE / "images").iterdir())
    _resized(CASTLE / "images", names, data / f"images_{DOWNSCALE}", DOWNSCALE)
    return data


def poses_dataset(output: Path, seed: int) -> Path:
    """castle's ground truth perturbed 2 deg / 3 % (seeded) as a pose-only transforms.json, with ``images_4``."""
    from benchmarks.poses_from_anywhere import SCENES, noisy_dataset

    scene = SCENES["castle"]
    data = noisy_dataset(scene, scene.levels[0], seed, output / "data" / "poses")
    names = sorted(p.name for p in (CASTLE / "images").iterdir())
    _resized(CASTLE / "images", names, data / f"images_{DOWNSCALE}", DOWNSCALE)
    return data


# ------------------------------------------------------------------------------------------------
# one run (in a subprocess)


def _config(job: Job, data: Path) -> Any:
    from nerfstudio.data.dataparsers.colmap_dataparser import ColmapDataParserConfig

    from nerf_posefix.plugin.training import in_process_config
    from nerf_posefix.workflows.refine import regularizer_overrides

    def edit(config: Any) -> None:
        pipeline = config.pipeline
        if job.input == "colmap":
            pipeline.datamanager.dataparser = ColmapDataParserConfig(data=data, colmap_path=Path("sparse/0"))
            pipeline.datamanager.data = None
        dp = pipeline.datamanager.dataparser
        dp.downscale_factor = DOWNSCALE
        dp.eval_mode = "interval"
        dp.eval_interval = EVAL_INTERVAL
        pipeline.ground_truth_metrics = False
        cam = pipeline.model.camera_optimizer
        pipeline.front_end = "on" if job.row.startswith("posefix") and job.row != "posefix-no-front-end" else "off"
        if job.row == "posefix-homography":
            cam.prior = "homography"
        elif job.row == "posefix-all-cameras":
            pipeline.nerf_cameras = "all"
        elif job.row == "nerfacto-l2":
            for key, value in regularizer_overrides("nerfstudio").items():
                setattr(cam, key.rsplit(".", 1)[-1], value)
            cam.tracks = "off"
        elif job.row == "nerfacto-off":
            cam.mode = "off"
            cam.tracks = "off"

    return in_process_config("posefix-small", data=data, output_dir=job.output / "runs" / job.name, max_iterations=job.iterations,
                             experiment_name="run", seed=job.seed, overrides=edit)


def _eval_metrics(pipeline: Any, steps: int) -> dict[str, float]:
    pipeline.config.eval_pose_alignment_steps = steps
    pipeline.config.eval_pose_alignment_lr = 2e-3
    pipeline.config.eval_pose_alignment_rays = 256
    metrics = pipeline.get_average_eval_image_metrics()
    return {k: float(v) for k, v in metrics.items() if k in ("psnr", "ssim", "pose_alignment_rotation_deg")}


def run_job(job: Job) -> dict[str, Any]:
    import torch

    from benchmarks.castle_p30 import Estimate, GroundTruth, evaluate
    from nerf_posefix.plugin.run_reader import refined_input_poses
    from nerf_posefix.plugin.training import run_training

    torch.set_num_threads(1)
    data = colmap_dataset(job.output) if job.input == "colmap" else poses_dataset(job.output, job.seed)
    config = _config(job, data)
    t0 = time.perf_counter()
    run = run_training(config, progress=False, quiet=True)
    total = time.perf_counter() - t0
    pipeline = run.trainer.pipeline
    front = getattr(pipeline, "front_end", None)
    refined = refined_input_poses(run.config_path)
    train = refined.cameras.subset(np.nonzero(refined.refined)[0])
    gt = GroundTruth.read(CASTLE / "gt_cameras.json")
    pose = evaluate(gt, Estimate(names=[Path(n).name for n in train.names], c2w=train.c2w))
    nan = {"psnr": float("nan"), "ssim": float("nan")}
    given = _eval_metrics(pipeline, 0) if job.render else nan
    aligned = _eval_metrics(pipeline, job.align_steps) if job.render else nan
    return {
        "input": job.input, "row": job.row, "seed": job.seed, "iterations": job.iterations,
        "rot_median_deg": pose["rot_sim3_median_deg"], "rot_max_deg": pose["rot_sim3_max_deg"],
        "centre_median_pct": pose["centre_median_pct"], "num_train": pose["num_matched"],
        "psnr_given": given["psnr"], "ssim_given": given["ssim"],
        "psnr_aligned": aligned["psnr"], "ssim_aligned": aligned["ssim"],
        "test_pose_correction_deg": aligned.get("pose_alignment_rotation_deg"),
        "front_end_s": float(front.summary["seconds"]) if front is not None else 0.0,
        "front_end": front.line if front is not None else "off",
        "training_s": run.seconds, "total_s": total,
    }


# ------------------------------------------------------------------------------------------------
# driver


def _table(results: list[dict[str, Any]], output: Path) -> None:
    """``OUT/plugin_front_end.{csv,md}``: mean ± sd over seeds per (input, row), and the Markdown printed."""
    from benchmarks.tables import seed_rows, write_tables

    values = ["rot_median_deg", "rot_max_deg", "centre_median_pct", "psnr_given", "psnr_aligned", "ssim_aligned", "front_end_s", "training_s"]
    rows = seed_rows(results, ["input", "row"], values, sort_key=lambda k: (INPUTS.index(k[0]), ROWS.index(k[1])))
    columns = [("input", "input", ""), ("row", "row", ""), ("seeds", "seeds", ""),
               ("rot_median_deg", "rotation median (deg)", "{:.4f}"), ("rot_max_deg", "rotation max (deg)", "{:.3f}"),
               ("centre_median_pct", "centre median (%)", "{:.3f}"), ("psnr_given", "PSNR given (dB)", "{:.2f}"),
               ("psnr_aligned", "PSNR aligned (dB)", "{:.2f}"), ("ssim_aligned", "SSIM aligned", "{:.3f}"),
               ("front_end_s", "front end (s)", "{:.1f}"), ("training_s", "training (s)", "{:.0f}")]
    print(write_tables(rows, columns, output / "plugin_front_end"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    parser.add_argument("--inputs", nargs="+", default=list(INPUTS), choices=INPUTS)
    parser.add_argument("--align-steps", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (each one torch thread)")
    parser.add_argument("--no-render", action="store_true", help="pose errors only (no held-out rendering)")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        spec = json.loads(args.worker.read_text())
        job = Job(spec["input"], spec["row"], spec["seed"], spec["iterations"], spec["align_steps"], Path(spec["output"]),
                  render=spec.get("render", True))
        result = run_job(job)
        job.result_path.write_text(json.dumps(result, indent=2))
        return 0
    jobs = [Job(inp, row, seed, args.iterations, args.align_steps, args.output.resolve(), render=not args.no_render)
            for seed in args.seeds for inp in args.inputs for row in args.rows]
    todo = [job for job in jobs if not job.result_path.is_file()]

    def launch(job: Job) -> None:
        job.result_path.parent.mkdir(parents=True, exist_ok=True)
        spec_path = job.result_path.with_name("spec.json")
        spec_path.write_text(json.dumps({"input": job.input, "row": job.row, "seed": job.seed, "iterations": job.iterations,
                                         "align_steps": job.align_steps, "output": str(job.output), "render": job.render}))
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
        t0 = time.perf_counter()
        with open(job.result_path.with_name("log.txt"), "w") as log:
            code = subprocess.run([sys.executable, "-m", "benchmarks.plugin_front_end", "--worker", str(spec_path),
                                   "--output", str(args.output)], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode
        print(f"{job.name}: exit {code} in {time.perf_counter() - t0:.0f} s", flush=True)

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        list(pool.map(launch, todo))
    results = [json.loads(job.result_path.read_text()) for job in jobs if job.result_path.is_file()]
    if results:
        _table(results, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
