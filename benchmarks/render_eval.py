"""Render-quality benchmark: does the held-out rendering quality rank pose sets as their pose errors do?

Every pose set is evaluated with ``posefix evaluate`` (:mod:`nerf_posefix.workflows.evaluate`: a fresh
model trained with the poses frozen, the same held-out images, scored at the given poses and after
test-pose alignment with the same fixed budget) and measured against the ground truth (rotation /
translation errors of the training cameras after a Sim(3) alignment,
:func:`nerf_posefix.workflows.experiment.pose_errors`). The table says whether the ranking by aligned
held-out PSNR agrees with the ranking by pose error (Kendall's tau over the sets, and the best set of each).

Bundled scene (default): ``assets/toybox`` (64 views, 128², exact poses). Pose sets:

* ``gt``: the exact poses;
* ``noisy``: the scene perturbed by ``--rotation-deg`` / ``--translation`` (default 3° / 5 % of the scene
  radius; :func:`nerf_posefix.workflows.perturb.perturb_dataset`, seeded; the held-out views keep their
  exact poses, as in ``benchmarks/noisy_pose.py``);
* ``nerfstudio``: the noisy poses refined by nerfstudio's own camera optimizer (``SO3xR3``, its default L2
  penalties), exported with :func:`nerf_posefix.workflows.experiment.export_refined`;
* ``posefix``: the noisy poses refined by posefix's homography prior (global depth bounds).

``--castle``: the real scene ``/work/shared/scenes/castle-P30`` (30 photos, LIDAR ground truth, read
``/work/shared/scenes/README.md``): ``colmap`` (``sparse/0``), ``refined`` (``posefix refine`` output:
``--refined DIR``, or run here into ``OUT/refined`` with ``--refine-iterations``) and ``lidar`` (the
ground truth, written as a transforms.json: its ``K`` uses integer pixel centres, nerfstudio's half-pixel
ones, so ``c = c_K + 0.5``); ``--downscale k`` evaluates on images downscaled by k (written to
``OUT/images_k``; the intrinsics are scaled to them by the evaluation).

Resumable: the perturbed scene, the refinement runs (checkpoints), their exports and every evaluated set
are kept under ``--output`` and reused. Outputs: the printed table, ``render_eval.csv`` and
``render_eval.json`` in ``--output`` (the evaluation itself in ``OUT/evaluation``).

Usage (from the repository root)::

    PYTHONPATH=. .venv/bin/python -m benchmarks.render_eval --output render_eval_out
    PYTHONPATH=. .venv/bin/python -m benchmarks.render_eval --output out --refine-iterations 300 --iterations 600
    PYTHONPATH=. .venv/bin/python -m benchmarks.render_eval --castle --downscale 4 --output castle_eval \
        --refined benchmark_results/castle/rows/posefix-s0/output
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CASTLE = Path("/work/shared/scenes/castle-P30")
#: The refinement variants of the bundled mode (camera-optimizer overrides, as in configs/benchmark.yaml).
VARIANTS = {
    "nerfstudio": {"class": "nerfstudio", "mode": "SO3xR3"},
    "posefix": {"mode": "SO3xR3", "bounds": "points-global"},
}


def _kendall_tau(a: list[float], b: list[float]) -> float:
    """Kendall's tau-a between two score lists (1: same order, -1: reversed; ties count 0)."""
    n, s = len(a), 0.0
    for i in range(n):
        for j in range(i + 1, n):
            s += math.copysign(1, a[i] - a[j]) * math.copysign(1, b[i] - b[j]) if a[i] != a[j] and b[i] != b[j] else 0
    pairs = n * (n - 1) / 2
    return s / pairs if pairs else float("nan")


# ------------------------------------------------------------------------------------------------
# bundled scene


def _refine_variant(name: str, data: Path, out: Path, args: argparse.Namespace) -> Path:
    """Train the refinement ``name`` on the noisy scene ``data`` (resumable) and export its poses to
    ``out/refined/<name>`` (all frames; held-out frames keep their input poses). Returns the export."""
    from nerf_posefix.workflows.experiment import (
        TrainSpec,
        build_trainer_config,
        export_refined,
        train,
    )

    export = out / "refined" / name
    if (export / "transforms.json").is_file():
        return export
    spec = TrainSpec(
        data=data.resolve(), output_dir=(out / "refine_runs" / name).resolve(), experiment_name="run", timestamp="run",
        method=args.method, iterations=args.refine_iterations, eval_interval=args.holdout_every,
        camera_optimizer=dict(VARIANTS[name]), seed=args.seed, device=args.device if args.device != "auto" else "cpu",
    )
    print(f"refining the noisy poses with {name} ({args.refine_iterations} iterations)", flush=True)
    run = train(build_trainer_config(spec), progress=True, quiet=True, resume=True, num_threads=args.threads or None)
    export_refined(run.config_path, export)
    return export


def bundled_sets(out: Path, args: argparse.Namespace) -> tuple[Path, list[tuple[str, Path]], Any, list[str]]:
    """``(images, [(label, pose source)], reference CameraSet, training names)`` of the bundled scene."""
    from nerf_posefix.workflows.experiment import (
        bundled_scene,
        load_reference,
        train_camera_names,
    )
    from nerf_posefix.workflows.perturb import perturb_dataset

    scene = bundled_scene(args.scene)
    data = out / "noisy"
    record = data / "perturbation.json"
    want = {"rotation_deg": args.rotation_deg, "translation": args.translation, "seed": args.noise_seed,
            "holdout_every": args.holdout_every}
    if not (record.is_file() and all(json.loads(record.read_text()).get(k) == v for k, v in want.items())):
        perturb_dataset(scene, data, rotation_deg=args.rotation_deg, translation=args.translation,
                        translation_units="scene-fraction", seed=args.noise_seed, holdout_every=args.holdout_every,
                        overwrite=True)
    sets = [("gt", scene / "transforms.json"), ("noisy", data / "transforms.json")]
    for name in VARIANTS:
        sets.append((name, _refine_variant(name, data, out, args)))
    return data / "images", sets, load_reference(data), train_camera_names(data)


# ------------------------------------------------------------------------------------------------
# castle-P30


def _castle_gt(out: Path) -> Path:
    """``gt_cameras.json`` as a transforms.json (camera-to-world OpenCV -> the file's OpenGL convention,
    K's integer pixel centres -> nerfstudio's half-pixel ones), in ``out/lidar``."""
    import numpy as np

    from nerf_posefix.io.transforms_json import transforms_meta, write_transforms_json

    gt = json.loads((CASTLE / "gt_cameras.json").read_text())["images"]
    names = sorted(gt)
    c2w = np.stack([np.asarray(gt[n]["c2w"], dtype=np.float64) for n in names])  # [N, 4, 4] OpenCV
    extra = []
    for n in names:
        K = np.asarray(gt[n]["K"], dtype=np.float64)
        extra.append({"fl_x": K[0, 0], "fl_y": K[1, 1], "cx": K[0, 2] + 0.5, "cy": K[1, 2] + 0.5,
                      "w": int(gt[n]["width"]), "h": int(gt[n]["height"])})
    meta = transforms_meta([f"images/{n}" for n in names], c2w, intrinsics={"camera_model": "OPENCV"}, frame_extra=extra)
    (out / "lidar").mkdir(parents=True, exist_ok=True)
    return write_transforms_json(meta, out / "lidar" / "transforms.json")


def _castle_images(out: Path, downscale: int) -> Path:
    if downscale <= 1:
        return CASTLE / "images"
    from PIL import Image

    dst = out / f"images_{downscale}"
    dst.mkdir(parents=True, exist_ok=True)
    for src in sorted((CASTLE / "images").glob("*.jpg")):
        target = dst / src.name
        if not target.is_file():
            with Image.open(src) as im:
                im.resize((im.width // downscale, im.height // downscale), Image.LANCZOS).save(target, quality=95)
    return dst


def castle_sets(out: Path, args: argparse.Namespace) -> tuple[Path, list[tuple[str, Path]], Any, list[str] | None]:
    from nerf_posefix.workflows.pose_sources import load_pose_source

    lidar = _castle_gt(out)
    refined = Path(args.refined) if args.refined else out / "refined"
    if not args.refined and not (refined / "sparse").is_dir():
        from nerf_posefix.workflows.refine import RefineOptions, refine

        print(f"posefix refine of castle-P30 ({args.refine_iterations} iterations) into {refined}", flush=True)
        refine(RefineOptions(output=refined, colmap_model=CASTLE / "sparse" / "0", images=CASTLE / "images",
                             iterations=args.refine_iterations, threads=args.threads,
                             downscale_factor=max(args.downscale, 1), resume=(refined.parent / f"{refined.name}.partial").is_dir()))
    sets = [("colmap", CASTLE / "sparse" / "0"), ("refined", refined), ("lidar", lidar)]
    return _castle_images(out, args.downscale), sets, load_pose_source(lidar), None


# ------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--castle", action="store_true", help="the real scene castle-P30 instead of the bundled one")
    parser.add_argument("--scene", default="toybox", help="bundled scene (assets/<name>)")
    parser.add_argument("--method", default="posefix-small", choices=["posefix-small", "posefix"])
    parser.add_argument("--iterations", type=int, default=600, help="training iterations per evaluated set")
    parser.add_argument("--refine-iterations", type=int, default=600, help="iterations of each refinement run")
    parser.add_argument("--holdout-every", type=int, default=8)
    parser.add_argument("--align-steps", type=int, default=200)
    parser.add_argument("--align-lr", type=float, default=1e-3)
    parser.add_argument("--align-rays", type=int, default=256)
    parser.add_argument("--rays-per-batch", type=int, default=None)
    parser.add_argument("--rotation-deg", type=float, default=3.0)
    parser.add_argument("--translation", type=float, default=0.05, help="fraction of the scene radius")
    parser.add_argument("--noise-seed", type=int, default=0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--refined", type=Path, default=None, help="--castle: a posefix refine output to evaluate")
    parser.add_argument("--downscale", type=int, default=1, help="--castle: image downscale factor")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from rich.console import Console
    from rich.table import Table

    from nerf_posefix.workflows.evaluate import EvaluateOptions, evaluate
    from nerf_posefix.workflows.experiment import pose_errors
    from nerf_posefix.workflows.pose_sources import load_pose_source

    console = Console(width=170)
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.castle:
        images, sets, reference, train_names = castle_sets(out, args)
    else:
        images, sets, reference, train_names = bundled_sets(out, args)
    evaluation = out / "evaluation"
    options = EvaluateOptions(
        images=images, pose_sets=tuple(f"{label}={path}" for label, path in sets), output=evaluation,
        intrinsics=sets[-1][1] if args.castle else None, holdout_every=args.holdout_every, method=args.method,
        iterations=args.iterations, rays_per_batch=args.rays_per_batch, align_steps=args.align_steps,
        align_lr=args.align_lr, align_rays=args.align_rays, seed=args.seed, device=args.device, threads=args.threads,
        resume=(evaluation / "evaluation_options.json").is_file(),
    )
    result = evaluate(options, log=console.print)
    rows = []
    for (label, path), r in zip(sets, result.sets):
        names = train_names if train_names is not None else result.train
        errors = pose_errors(reference, load_pose_source(path), [n for n in names if n in set(result.train) | set(names)])
        s = errors.summary
        rows.append({
            "set": label,
            "rotation_median_deg": s["rotation_median_deg"],
            "translation_median_pct": 100.0 * s["translation_median_rel"],
            "psnr_given": r.get("psnr_before"), "psnr_aligned": r.get("psnr_after"),
            "ssim_given": r.get("ssim_before"), "ssim_aligned": r.get("ssim_after"),
            "test_pose_corr_deg": r.get("rotation_median_deg"), "test_pose_corr_pct": r.get("translation_pct_median"),
            "training_seconds": r.get("training_seconds"), "source": str(path),
        })
    # rankings: higher PSNR is better, lower pose error is better
    pose_score = [-(row["rotation_median_deg"] + row["translation_median_pct"] / 10.0) for row in rows]
    tau_aligned = _kendall_tau([row["psnr_aligned"] for row in rows], pose_score)
    tau_given = _kendall_tau([row["psnr_given"] for row in rows], pose_score)
    best_psnr = max(rows, key=lambda row: row["psnr_aligned"])["set"]
    best_pose = max(zip(rows, pose_score), key=lambda rs: rs[1])[0]["set"]

    table = Table(title=f"held-out rendering vs pose error ({'castle-P30' if args.castle else args.scene}; "
                        f"{len(result.held_out)} held-out views, {args.iterations} it., alignment {args.align_steps} steps)")
    for h in ("set", "rot. err (deg)", "trans. err (% radius)", "PSNR given", "PSNR aligned", "SSIM aligned",
              "test-pose corr. (deg)", "train (s)"):
        table.add_column(h, justify="left" if h == "set" else "right")
    for row in rows:
        table.add_row(row["set"], f"{row['rotation_median_deg']:.3f}", f"{row['translation_median_pct']:.2f}",
                      f"{row['psnr_given']:.2f}", f"{row['psnr_aligned']:.2f}", f"{row['ssim_aligned']:.3f}",
                      f"{row['test_pose_corr_deg']:.3f}", f"{row['training_seconds']:.0f}")
    console.print(table)
    console.print(f"ranking agreement with the pose errors (Kendall tau): aligned PSNR {tau_aligned:+.2f}, "
                  f"given-pose PSNR {tau_given:+.2f}; best by aligned PSNR: {best_psnr}, best by pose error: {best_pose}"
                  f" -> {'agree' if best_psnr == best_pose else 'disagree'}")
    summary = {"rows": rows, "kendall_tau_aligned": tau_aligned, "kendall_tau_given": tau_given,
               "best_by_psnr_aligned": best_psnr, "best_by_pose_error": best_pose,
               "pose_score": "-(median rotation error deg + median translation error % radius / 10)",
               "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "wall_seconds": time.perf_counter() - t0}
    (out / "render_eval.json").write_text(json.dumps(summary, indent=2))
    with open(out / "render_eval.csv", "w", newline="") as fid:
        writer = csv.DictWriter(fid, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    console.print(f"wrote {out / 'render_eval.csv'}, {out / 'render_eval.json'} (wall {summary['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
