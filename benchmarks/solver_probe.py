"""Probe (issue 23): which Ceres linear solver the bundle adjustment of a few hundred images wants.

Two measurements::

    # Ceres' own time split, 10 fixed iterations of the robust adjustment of a model, per solver
    PYTHONPATH=. .venv/bin/python -m benchmarks.solver_probe split --model RUN/sparse/0 \\
        --solvers sparse_schur dense_schur iterative_schur

    # posefix refine --poses end to end with the rounds' solver forced (auto: refine's own choice), scored on the
    # rendered scene's truth (benchmarks.scaling's rendered views)
    PYTHONPATH=. .venv/bin/python -m benchmarks.solver_probe rounds --scene benchmark_results/scaling/scenes \\
        --output /tmp/solver_probe --solvers auto iterative_schur auto iterative_schur

Each ``rounds`` run is its own process (``solver`` is set by replacing
:func:`nerf_posefix.sfm.bundle_adjustment.choose_linear_solver` there), run one after the other: compare pairs,
the machine's load moves whole-process times by 20 %.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence


def split(model: Path, solvers: Sequence[str], iterations: int, loss_scale_px: float) -> None:
    """Ceres' time split of ``iterations`` Levenberg-Marquardt iterations (no early stop) per solver."""
    import pycolmap

    from nerf_posefix.sfm.bundle_adjustment import _set_linear_solver

    for solver in solvers:
        rec = pycolmap.Reconstruction(str(model))
        ba = pycolmap.BundleAdjustmentOptions()
        ba.refine_focal_length = ba.refine_principal_point = ba.refine_extra_params = False
        ba.print_summary = False
        ba.ceres.loss_function_type = pycolmap.LossFunctionType.CAUCHY
        ba.ceres.loss_function_scale = loss_scale_px
        ba.ceres.solver_options.num_threads = -1
        _set_linear_solver(ba, solver)  # as refine's adjustment sets it
        ba.ceres.solver_options.max_num_iterations = iterations
        ba.ceres.solver_options.function_tolerance = 0.0
        ba.ceres.solver_options.gradient_tolerance = 0.0
        ba.ceres.solver_options.parameter_tolerance = 0.0
        config = pycolmap.BundleAdjustmentConfig()
        for image_id in rec.reg_image_ids():
            config.add_image(image_id)
        config.fix_gauge(pycolmap.BundleAdjustmentGauge.TWO_CAMS_FROM_WORLD)
        t0 = time.perf_counter()
        summary = pycolmap.create_default_bundle_adjuster(ba, config, rec).solve().ceres_summary
        wall = time.perf_counter() - t0
        steps = int(summary.num_successful_steps) + int(summary.num_unsuccessful_steps)
        print(f"{solver}: {wall:.2f} s for {steps} iterations (linear solver {summary.linear_solver_time_in_seconds:.2f} s, "
              f"Jacobians {summary.jacobian_evaluation_time_in_seconds:.2f} s, residuals "
              f"{summary.residual_evaluation_time_in_seconds:.2f} s)", flush=True)


def rounds_child(poses: Path, truth: Path, output: Path, solver: str) -> None:
    """One ``posefix refine --poses`` with the rounds' solver forced; prints one JSON line."""
    import shutil

    import nerf_posefix.sfm.bundle_adjustment as bundle_adjustment

    if solver != "auto":
        default = bundle_adjustment.choose_linear_solver
        bundle_adjustment.choose_linear_solver = lambda n, degree: solver if n > bundle_adjustment.DENSE_SCHUR_MAX_IMAGES else default(n, degree)
    from benchmarks.scaling import pose_errors
    from nerf_posefix.io.sources import load_camera_set
    from nerf_posefix.workflows.refine import RefineOptions, refine

    shutil.rmtree(output, ignore_errors=True)
    t0 = time.perf_counter()
    refine(RefineOptions(output=output, poses=poses, quiet=True))  # posefix refine --poses POSES --output OUTPUT --quiet
    wall = time.perf_counter() - t0
    est = load_camera_set(output / "transforms.json")
    gt = load_camera_set(truth)
    errors = pose_errors(list(est.names), est.c2w, list(gt.names), gt.c2w)
    rounds = json.loads((output / "report.json").read_text())["summary"]["bundle_adjustment"]["rounds"]
    print(json.dumps({"solver": solver, "wall_s": round(wall, 1),
                      "rounds": [[r["max_reproj_px"], r["iterations"], round(r["adjustment_seconds"], 2)] for r in rounds],
                      "adjustments_s": round(sum(r["adjustment_seconds"] for r in rounds), 2),
                      "rotation_median_deg": round(errors["rotation_median_deg"], 5)}), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p_split = sub.add_parser("split", help="Ceres' time split per solver on a model")
    p_split.add_argument("--model", type=Path, required=True, help="a COLMAP model (e.g. a refine run's sparse/0)")
    p_split.add_argument("--solvers", nargs="+", default=["sparse_schur", "dense_schur", "iterative_schur"])
    p_split.add_argument("--iterations", type=int, default=10)
    p_split.add_argument("--loss-scale-px", type=float, default=0.25, help="Cauchy scale (the last round's: 1 px / 4)")
    p_rounds = sub.add_parser("rounds", help="refine --poses end to end, the rounds' solver forced")
    p_rounds.add_argument("--scene", type=Path, default=Path("benchmark_results/scaling/scenes"),
                          help="benchmarks.scaling's scenes folder (rendered-300 and rendered-300-noisy)")
    p_rounds.add_argument("--output", type=Path, default=Path("/tmp/solver_probe"))
    p_rounds.add_argument("--solvers", nargs="+", default=["auto", "iterative_schur"])
    p_rounds.add_argument("--child", nargs=4, metavar=("POSES", "TRUTH", "OUTPUT", "SOLVER"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.what == "split":
        split(args.model, args.solvers, args.iterations, args.loss_scale_px)
        return 0
    if args.child:
        rounds_child(Path(args.child[0]), Path(args.child[1]), Path(args.child[2]), args.child[3])
        return 0
    poses = args.scene / "rendered-300-noisy" / "transforms.json"
    truth = args.scene / "rendered-300" / "transforms.json"
    for k, solver in enumerate(args.solvers):
        cmd = [sys.executable, "-m", "benchmarks.solver_probe", "rounds", "--child", str(poses), str(truth),
               str(args.output / f"{k}_{solver}"), solver]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()
        print(out[-1], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
