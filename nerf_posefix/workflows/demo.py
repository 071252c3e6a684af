"""``posefix demo``: perturb the bundled scene, refine its poses with ``posefix-small`` on the CPU and
report the pose errors before and after.

Steps (everything under ``--output``, default ``outputs/posefix-demo``):

1. ``data/``: the bundled scene (``assets/toybox``, 64 views of 128x128) with every training pose
   perturbed by exactly ``--rotation-deg`` degrees about a random axis and a centre offset of
   ``--translation`` × the scene radius (:func:`nerf_posefix.workflows.perturb.perturb_dataset`). Every
   ``--eval-interval``-th view keeps its exact pose: those are the test views (nerfstudio's
   ``--eval-mode interval``), used for test-view PSNR only.
2. ``run/``: ``posefix-small`` trained in this process (:mod:`nerf_posefix.workflows.experiment`).
3. ``refined/``: the refined training poses, exported as ``posefix export`` does.
4. ``compare/``: pose errors of the noisy and the refined training poses against the ground truth
   (``data/transforms_gt.json`` / ``data/sparse_gt/0``), after a Sim(3) alignment of the camera centres
   (:mod:`nerf_posefix.geometry.metrics`), as JSON/CSV and plots (error CDFs, top view).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nerf_posefix.errors import InputError
from nerf_posefix.io.atomic import MARKER_FILE, check_output_dir

if TYPE_CHECKING:
    from nerf_posefix.io.camera_set import CameraSet

#: The bundled scene (``assets/toybox`` of the source checkout; what
#: :func:`nerf_posefix.workflows.experiment.bundled_scene` gives, known here without importing torch).
DEFAULT_SCENE = Path(__file__).resolve().parents[2] / "assets" / "toybox"
METHODS = ("posefix", "posefix-small")


@dataclass
class DemoOptions:
    """Perturb the bundled scene (3 deg / 5 % of the scene radius), refine the poses with posefix-small
    on the CPU, and print the pose errors before and after (a few minutes on 2 cores)."""

    output: Path = Path("outputs/posefix-demo")
    """Directory for the noisy dataset, the run, the refined poses and the plots."""
    iterations: int = 1200
    """Training iterations (about 0.3 s each on 2 idle CPU cores)."""
    scene: Path | None = None
    """Dataset to perturb (default: the bundled assets/toybox)."""
    rotation_deg: float = 3.0
    """Rotation noise per camera (degrees, random axis)."""
    translation: float = 0.05
    """Centre noise per camera, as a fraction of the scene radius."""
    seed: int = 0
    """Seed of the pose noise (training uses a fixed seed as well)."""
    eval_interval: int = 8
    """Every N-th view is a test view at its exact pose (0: all views train)."""
    method: str = "posefix-small"
    """nerfstudio method to train (posefix or posefix-small)."""
    threads: int | None = None
    """torch CPU threads while training (default: torch's, one per core); 1 is faster when other jobs
    keep the cores busy."""
    overwrite: bool = False
    """Replace --output if it exists (only an earlier posefix demo output)."""


def _fmt_row(label: str, s: dict[str, float]) -> str:
    return (
        f"  {label:<9} rotation median {s['rotation_median_deg']:7.3f} deg  mean {s['rotation_mean_deg']:7.3f} deg   "
        f"translation median {s['translation_median']:.4f} ({100 * s['translation_median_rel']:.2f} % of radius)  "
        f"ATE {s['ate_rmse']:.4f}"
    )


def check_options(cmd: DemoOptions) -> Path:
    """Every check of the demo's options and paths, before anything is created or imported.

    Returns:
        The scene directory.

    Raises:
        InputError: naming the option.
    """
    if cmd.iterations < 1:
        raise InputError(f"--iterations must be >= 1, got {cmd.iterations}")
    if not (math.isfinite(cmd.rotation_deg) and 0.0 <= cmd.rotation_deg <= 180.0):
        raise InputError(f"--rotation-deg must be in [0, 180], got {cmd.rotation_deg}")
    if not (math.isfinite(cmd.translation) and cmd.translation >= 0):
        raise InputError(f"--translation must be a finite number >= 0, got {cmd.translation}")
    if cmd.eval_interval < 0:
        raise InputError(f"--eval-interval must be >= 0, got {cmd.eval_interval}")
    if cmd.threads is not None and cmd.threads < 1:
        raise InputError(f"--threads must be >= 1, got {cmd.threads}")
    if cmd.method not in METHODS:
        raise InputError(f"--method must be one of {', '.join(METHODS)}, got {cmd.method!r}")
    scene = Path(cmd.scene) if cmd.scene is not None else DEFAULT_SCENE
    if not (scene / "transforms.json").is_file():
        raise InputError(
            f"{scene}: no transforms.json (the bundled scene lives in the source checkout's assets/; pass --scene DIR)"
        )
    check_output_dir(cmd.output, [("--scene", scene)], cmd.overwrite)
    return scene


def run_demo(cmd: DemoOptions) -> dict[str, Any]:
    """Run the demo (see the module docstring); returns the summary written to ``summary.json``.

    All options are checked before ``--output`` is created (:func:`check_options`); if the demo fails or
    is interrupted after that, the output directory it created is removed again, so the same command
    can simply be run again.
    """
    scene = check_options(cmd)
    out = Path(cmd.output)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER_FILE).write_text("written by nerf-posefix\n", encoding="utf-8")
    try:
        return _run_demo(cmd, scene, out)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise


def _run_demo(cmd: DemoOptions, scene: Path, out: Path) -> dict[str, Any]:
    from nerf_posefix.io.transforms_json import read_transforms_json
    from nerf_posefix.workflows.experiment import (
        TrainSpec,
        build_trainer_config,
        evaluate_test_views,
        export_refined,
        load_reference,
        pose_errors,
        train,
        train_camera_names,
    )
    from nerf_posefix.workflows.perturb import perturb_dataset

    t0 = time.perf_counter()
    print(f"posefix demo: {scene} -> {out}")

    data = out / "data"
    record = perturb_dataset(
        scene,
        data,
        rotation_deg=cmd.rotation_deg,
        translation=cmd.translation,
        translation_units="scene-fraction",
        seed=cmd.seed,
        holdout_every=cmd.eval_interval,
    )
    names = train_camera_names(data)
    print(
        f"1/4 perturbed {len(names)} training poses by {cmd.rotation_deg:g} deg and {cmd.translation:g} x scene radius "
        f"({record['translation_world']:.4f} units); {len(record['cameras']) - len(names)} test views kept exact"
    )

    print(f"2/4 training {cmd.method} for {cmd.iterations} iterations on the CPU (loading nerfstudio...)")
    spec = TrainSpec(
        data=data,
        output_dir=out,
        experiment_name="run",
        timestamp="posefix",
        method=cmd.method,
        iterations=cmd.iterations,
        eval_interval=cmd.eval_interval,
    )
    config = build_trainer_config(spec)
    run = train(config, progress=True, quiet=True, num_threads=cmd.threads)
    train_seconds = run.seconds
    run_dir = run.run_dir
    psnr = evaluate_test_views(run).get("psnr")

    print("3/4 exporting the refined poses")
    refined = export_refined(run.config_path, out / "refined")

    reference = load_reference(data)
    noisy = read_transforms_json(data / "transforms.json")
    before = pose_errors(reference, noisy, names)
    after = pose_errors(reference, refined, names)
    plots = _write_plots(data, {"noisy": noisy, "refined": refined}, names, out / "compare")

    b, a = before.summary, after.summary
    ratio_r = b["rotation_median_deg"] / max(a["rotation_median_deg"], 1e-12)
    ratio_t = b["translation_median"] / max(a["translation_median"], 1e-12)
    print(f"4/4 pose errors of the {len(names)} training cameras (Sim(3)-aligned to the ground truth):")
    print(_fmt_row("before", b))
    print(_fmt_row("after", a))
    print(f"  median rotation error {ratio_r:.1f}x smaller, median translation error {ratio_t:.1f}x smaller")
    if psnr is not None:
        print(f"  test-view PSNR {psnr:.2f} dB ({len(reference) - len(names)} held-out views at exact poses)")
    summary = {
        "scene": str(scene),
        "method": cmd.method,
        "iterations": cmd.iterations,
        "noise": {"rotation_deg": cmd.rotation_deg, "translation_fraction": cmd.translation, "seed": cmd.seed},
        "before": b,
        "after": a,
        "improvement": {"rotation_median": ratio_r, "translation_median": ratio_t},
        "test_psnr": psnr,
        "train_seconds": train_seconds,
        "total_seconds": time.perf_counter() - t0,
        "run_dir": str(run_dir),
        "refined": str(out / "refined"),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"refined poses: {out / 'refined'}   run: {run_dir}")
    print(f"plots: {', '.join(str(p) for p in plots)}   summary: {out / 'summary.json'}")
    print(f"total {summary['total_seconds']:.0f} s (training {train_seconds:.0f} s)")
    return summary


def _write_plots(data: Path, estimates: dict[str, "CameraSet"], names: list[str], directory: Path) -> list[Path]:
    """``posefix compare``'s outputs (compare.json, CSVs, error_cdf.png, top_view.png, frusta.ply) for the
    estimates restricted to the cameras ``names``, against the ground truth of the dataset ``data``."""
    import numpy as np

    from nerf_posefix.workflows.compare import compare_camera_sets
    from nerf_posefix.workflows.experiment import load_reference
    from nerf_posefix.workflows.reports import write_outputs

    wanted = set(names)
    subsets = {label: est.subset(np.array([i for i, n in enumerate(est.names) if n in wanted])) for label, est in estimates.items()}
    report = compare_camera_sets(load_reference(data), subsets)
    write_outputs(report, directory)
    return [directory / "error_cdf.png", directory / "top_view.png"]
