#!/usr/bin/env python
"""Noisy-pose benchmark: pose refinement with and without regularisers, on the same noisy scenes.

For every scene and noise level of a preset (``configs/*.yaml``), the scene is perturbed once
(:func:`nerf_posefix.cli.perturb.perturb_dataset`, seeded; every ``eval_interval``-th view keeps its
exact pose and serves as a test view), then every variant trains the same method for the same number
of iterations with the same training seed; only the camera optimizer differs:

* ``no-pose-opt``: poses stay at the noisy input;
* ``nerfstudio-l2``: nerfstudio's own ``SO3xR3`` optimizer with its default L2 penalties;
* ``nerfstudio-free``: the same, penalties 0;
* ``posefix-global`` / ``posefix-local``: the homography prior with global / per-camera depth bounds;
* weight sweeps of each regulariser (``<base>-x<factor>``).

Each variant runs in its own Python process (``--worker``), which trains in-process with nerfstudio's
``Trainer`` (:mod:`nerf_posefix.cli.demo` helpers), renders the test views (PSNR), exports the refined
poses with the plugin's export and measures them against the ground truth (``sparse_gt/0`` /
``transforms_gt.json``) after a Sim(3) alignment (:mod:`nerf_posefix.metrics`), on the training cameras.
It writes ``<output>/<scene>/<level>/<variant>/result.json``; a variant whose result exists with the
same settings is skipped, so an interrupted benchmark resumes where it stopped.

Outputs in ``<output>``: ``results.json``, ``results.csv``, ``error_cdf.png`` and the printed table
(median/mean rotation error in degrees, median/mean translation error in scene units and as a
percentage of the scene radius, median homography error, ATE RMSE after Sim(3), test-view PSNR, wall
time). The ``input`` rows are the noisy poses themselves.

Usage::

    python scripts/benchmark.py                       # configs/benchmark.yaml (slow on a CPU: hours)
    python scripts/benchmark.py --iterations 600 --levels 3deg-5pct --variants 'posefix-*' no-pose-opt
    python scripts/benchmark.py --quick               # configs/benchmark_quick.yaml: tiny scene, 2 variants
    python scripts/benchmark.py --list                # the planned runs, nothing trained
    python scripts/benchmark.py --track colmap [...]  # the COLMAP-pose track (scripts/colmap_track.py)
    python scripts/benchmark.py --report-only         # tabulate the results that exist
    python scripts/benchmark.py --device cuda --jobs 9  # on a GPU machine, 9 variants at a time

On shared CPU cores ``--threads 1`` is faster per variant (OpenMP oversubscription otherwise). The
``time (s)`` column is per device and per ``--jobs`` setting: compare timings only within one run.
"""

from __future__ import annotations

import argparse
import copy
import csv
import fnmatch
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "configs" / "benchmark.yaml"
QUICK_CONFIG = ROOT / "configs" / "benchmark_quick.yaml"
RESULT_FILE = "result.json"

#: Columns of the table / CSV: (key, header, format).
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("rotation_median_deg", "rot med (deg)", "{:.3f}"),
    ("rotation_mean_deg", "rot mean (deg)", "{:.3f}"),
    ("translation_median", "trans med", "{:.4f}"),
    ("translation_mean", "trans mean", "{:.4f}"),
    ("translation_median_pct", "trans med (% r)", "{:.2f}"),
    ("homography_median", "homog med", "{:.2e}"),
    ("ate_rmse", "ATE", "{:.4f}"),
    ("psnr", "PSNR (dB)", "{:.2f}"),
    ("wall_time_s", "time (s)", "{:.0f}"),
)


@dataclass
class Run:
    """One (scene, level, variant) training run."""

    scene: str
    scene_path: Path
    level: dict[str, Any]
    variant: dict[str, Any]
    method: str
    iterations: int
    eval_interval: int
    train_seed: int
    noise_seed: int
    data: Path  # the perturbed dataset
    directory: Path  # <output>/<scene>/<level>/<variant>
    timeout_s: float | None = None
    device: str = "cpu"
    threads: int | None = None  # torch CPU threads of the worker (None: torch's default)

    @property
    def name(self) -> str:
        return f"{self.scene}/{self.level['name']}/{self.variant['name']}"

    def settings(self) -> dict[str, Any]:
        """Everything that determines the result (compared when resuming)."""
        return {
            "scene": str(self.scene_path),
            "level": self.level,
            "variant": self.variant,
            "method": self.method,
            "iterations": self.iterations,
            "eval_interval": self.eval_interval,
            "train_seed": self.train_seed,
            "noise_seed": self.noise_seed,
        }


@dataclass
class Preset:
    name: str
    method: str
    iterations: int
    eval_interval: int
    train_seed: int
    noise_seed: int
    scenes: list[Path]
    levels: list[dict[str, Any]]
    variants: list[dict[str, Any]] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------
# presets


def expand_variants(variants: list[dict[str, Any]], sweeps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The variants plus, for each sweep ``{base, fields, factors}``, one variant per factor named
    ``<base>-x<factor>`` whose ``camera_optimizer_scale`` multiplies ``fields`` of the base by the factor."""
    by_name = {v["name"]: v for v in variants}
    out = [copy.deepcopy(v) for v in variants]
    for sweep in sweeps:
        base = by_name.get(sweep["base"])
        if base is None:
            raise ValueError(f"sweep base {sweep['base']!r} is not a variant ({', '.join(by_name)})")
        for factor in sweep["factors"]:
            variant = copy.deepcopy(base)
            variant["name"] = f"{base['name']}-x{factor:g}"
            variant["sweep_of"] = base["name"]
            variant["factor"] = float(factor)
            variant["camera_optimizer_scale"] = {f: float(factor) for f in sweep["fields"]}
            out.append(variant)
    names = [v["name"] for v in out]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate variant names: {names}")
    return out


def load_preset(path: Path) -> Preset:
    import yaml

    raw = yaml.safe_load(Path(path).read_text())
    scenes = [Path(s) if Path(s).is_absolute() else ROOT / s for s in raw["scenes"]]
    return Preset(
        name=str(raw.get("name", Path(path).stem)),
        method=str(raw.get("method", "posefix-small")),
        iterations=int(raw["iterations"]),
        eval_interval=int(raw.get("eval_interval", 8)),
        train_seed=int(raw.get("train_seed", 42)),
        noise_seed=int(raw.get("noise_seed", 0)),
        scenes=scenes,
        levels=list(raw["levels"]),
        variants=expand_variants(list(raw["variants"]), list(raw.get("sweeps") or [])),
    )


def plan(preset: Preset, output: Path, variant_patterns: list[str] | None, level_names: list[str] | None,
         timeout_s: float | None) -> list[Run]:
    runs = []
    for scene_path in preset.scenes:
        scene = scene_path.name
        for level in preset.levels:
            if level_names and level["name"] not in level_names:
                continue
            for variant in preset.variants:
                if variant_patterns and not any(fnmatch.fnmatch(variant["name"], p) for p in variant_patterns):
                    continue
                runs.append(
                    Run(
                        scene=scene,
                        scene_path=scene_path,
                        level=level,
                        variant=variant,
                        method=preset.method,
                        iterations=preset.iterations,
                        eval_interval=preset.eval_interval,
                        train_seed=preset.train_seed,
                        noise_seed=preset.noise_seed,
                        data=output / scene / level["name"] / "data",
                        directory=output / scene / level["name"] / variant["name"],
                        timeout_s=timeout_s,
                    )
                )
    return runs


# ------------------------------------------------------------------------------------------------
# noisy datasets and the input rows


def ensure_dataset(run: Run) -> None:
    """Perturb the scene for this level once (re-done if the recorded parameters differ)."""
    from nerf_posefix.cli.perturb import perturb_dataset

    record_path = run.data / "perturbation.json"
    want = {
        "rotation_deg": float(run.level["rotation_deg"]),
        "translation": float(run.level["translation"]),
        "seed": run.noise_seed,
        "holdout_every": run.eval_interval,
    }
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        if all(record.get(k) == v for k, v in want.items()) and record.get("source") == str(run.scene_path):
            return
    perturb_dataset(
        run.scene_path,
        run.data,
        rotation_deg=want["rotation_deg"],
        translation=want["translation"],
        translation_units="scene-fraction",
        seed=run.noise_seed,
        holdout_every=run.eval_interval,
        overwrite=True,
    )


def input_errors(data: Path) -> dict[str, Any]:
    """Errors of the noisy training poses themselves (the ``input`` row of a level)."""
    from nerf_posefix.camera_sets import read_transforms_json
    from nerf_posefix.cli.demo import load_reference, pose_errors, train_camera_names

    names = train_camera_names(data)
    errors = pose_errors(load_reference(data), read_transforms_json(data / "transforms.json"), names)
    return {
        "summary": errors.summary,
        "per_camera": {"name": errors.names, "rotation_deg": errors.rotation_deg.tolist(),
                       "translation": errors.translation.tolist()},
    }


# ------------------------------------------------------------------------------------------------
# one variant (worker process)


def run_worker(spec_path: Path) -> int:
    """Train, evaluate, export and measure one run described by ``spec_path`` (see :func:`launch`)."""
    from nerf_posefix.cli.demo import (
        TrainSpec,
        build_trainer_config,
        evaluate_test_views,
        export_refined,
        load_reference,
        pose_errors,
        train,
        train_camera_names,
    )

    spec = json.loads(Path(spec_path).read_text())
    directory = Path(spec["directory"])
    data = Path(spec["data"])
    variant = spec["settings"]["variant"]
    train_spec = TrainSpec(
        data=data,
        output_dir=directory,
        experiment_name="run",
        timestamp="run",
        method=spec["settings"]["method"],
        iterations=int(spec["settings"]["iterations"]),
        eval_interval=int(spec["settings"]["eval_interval"]),
        camera_optimizer=dict(variant.get("camera_optimizer", {})),
        camera_optimizer_scale=dict(variant.get("camera_optimizer_scale", {})),
        seed=int(spec["settings"]["train_seed"]),
        device=str(spec.get("device", "cpu")),
    )
    config = build_trainer_config(train_spec)
    cam_opt = config.pipeline.model.camera_optimizer
    optimizer_settings = {
        "class": type(cam_opt).__name__,
        **{k: getattr(cam_opt, k) for k in ("mode", "trans_l2_penalty", "rot_l2_penalty", "weight", "bounds") if hasattr(cam_opt, k)},
    }
    print(f"camera optimizer: {optimizer_settings}", flush=True)
    start = time.perf_counter()
    # Resumable: an interrupted worker continues from the run's latest checkpoint.
    run = train(config, progress=True, quiet=True, resume=True, num_threads=spec.get("threads"))
    train_seconds = time.perf_counter() - start
    image_metrics = evaluate_test_views(run)
    eval_seconds = time.perf_counter() - start - train_seconds
    run_dir = run.run_dir
    refined = export_refined(run.config_path, directory / "refined")
    errors = pose_errors(load_reference(data), refined, train_camera_names(data))
    result = {
        "settings": spec["settings"],
        "camera_optimizer": optimizer_settings,
        "summary": errors.summary,
        "psnr": image_metrics.get("psnr"),
        "ssim": image_metrics.get("ssim"),
        "train_seconds": train_seconds,
        "trained_iterations": run.completed_iterations - run.start_iteration,
        "eval_seconds": eval_seconds,
        "wall_time_s": time.perf_counter() - start,
        "device": train_spec.device,
        "run_dir": str(run_dir),
        "per_camera": {"name": errors.names, "rotation_deg": errors.rotation_deg.tolist(),
                       "translation": errors.translation.tolist(), "homography": errors.homography.tolist()},
    }
    tmp = directory / (RESULT_FILE + ".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(directory / RESULT_FILE)
    print(f"result: {json.dumps(errors.summary)}", flush=True)
    return 0


def existing_result(run: Run) -> dict[str, Any] | None:
    path = run.directory / RESULT_FILE
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
    except ValueError:
        return None
    return result if result.get("settings") == json.loads(json.dumps(run.settings())) else None


def launch(run: Run, force: bool) -> dict[str, Any] | None:
    """Run one variant in a subprocess (skipped when its result exists); returns the result or None."""
    if not force:
        found = existing_result(run)
        if found is not None:
            print(f"  {run.name}: done already (skipped)", flush=True)
            return found
    spec_path = run.directory / "spec.json"
    spec = {"directory": str(run.directory), "data": str(run.data), "settings": run.settings(),
            "device": run.device, "threads": run.threads}
    try:
        same = json.loads(spec_path.read_text())["settings"] == json.loads(json.dumps(run.settings()))
    except (OSError, ValueError, KeyError):
        same = False
    if run.directory.exists() and (force or not same):
        import shutil

        shutil.rmtree(run.directory)  # a different or forced run: start from scratch
    # Otherwise an interrupted run of the same settings resumes from its latest checkpoint.
    run.directory.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(json.dumps(spec, indent=2))
    log_path = run.directory / "log.txt"
    print(f"  {run.name}: training {run.iterations} iterations ...", flush=True)
    start = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "ignore"}
    with open(log_path, "w") as log:
        try:
            proc = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path)],
                stdout=log, stderr=subprocess.STDOUT, env=env, timeout=run.timeout_s, check=False,
            )
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    elapsed = time.perf_counter() - start
    result = existing_result(run)
    if result is None:
        tail = log_path.read_text().strip().splitlines()[-3:]
        print(f"  {run.name}: FAILED ({code}, {elapsed:.0f} s); see {log_path}: {' | '.join(tail)}", flush=True)
        return None
    s = result["summary"]
    print(f"  {run.name}: {elapsed:.0f} s, rotation median {s['rotation_median_deg']:.3f} deg, translation median "
          f"{100 * s['translation_median_rel']:.2f} % of radius", flush=True)
    return result


# ------------------------------------------------------------------------------------------------
# reporting


def table_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        s = r["summary"]
        rows.append(
            {
                "scene": r["scene"],
                "level": r["level"],
                "variant": r["variant"],
                "rotation_median_deg": s["rotation_median_deg"],
                "rotation_mean_deg": s["rotation_mean_deg"],
                "translation_median": s["translation_median"],
                "translation_mean": s["translation_mean"],
                "translation_median_pct": 100.0 * s["translation_median_rel"],
                "homography_median": s["homography_median"],
                "ate_rmse": s["ate_rmse"],
                "psnr": r.get("psnr"),
                "wall_time_s": r.get("wall_time_s"),
                "num_cameras": s["num_cameras"],
            }
        )
    return rows


def _cell(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return fmt.format(value)


def format_table(rows: list[dict[str, Any]]) -> str:
    headers = ["scene", "level", "variant", *[h for _, h, _ in COLUMNS]]
    body = [[r["scene"], r["level"], r["variant"], *[_cell(r.get(k), f) for k, _, f in COLUMNS]] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) if i < 3 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths)))]
    lines.append("  ".join("-" * w for w in widths))
    for b in body:
        lines.append("  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(b, widths))))
    return "\n".join(lines)


def sweep_spread(results: list[dict[str, Any]], preset: Preset) -> list[str]:
    """Per level and regulariser: the range of the median errors over its weight sweep (base included)."""
    lines = []
    bases = sorted({v["sweep_of"] for v in preset.variants if "sweep_of" in v})
    for level in dict.fromkeys((r["scene"], r["level"]) for r in results):
        for base in bases:
            family = [r for r in results if (r["scene"], r["level"]) == level
                      and (r["variant"] == base or r.get("sweep_of") == base)]
            if len(family) < 2:
                continue
            rot = [r["summary"]["rotation_median_deg"] for r in family]
            tr = [100 * r["summary"]["translation_median_rel"] for r in family]
            lines.append(
                f"{level[0]}/{level[1]} {base} sweep ({len(family)} weights): rotation median "
                f"{min(rot):.3f}..{max(rot):.3f} deg (x{max(rot) / max(min(rot), 1e-12):.1f}), translation median "
                f"{min(tr):.2f}..{max(tr):.2f} % (x{max(tr) / max(min(tr), 1e-12):.1f})"
            )
    return lines


def plot_cdfs(results: list[dict[str, Any]], path: Path) -> None:
    """Error CDFs (rotation and translation, one line per variant), one row of plots per scene/level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    groups = list(dict.fromkeys((r["scene"], r["level"]) for r in results))
    variants = list(dict.fromkeys(r["variant"] for r in results if r["variant"] != "input"))
    colours = {v: plt.cm.tab20(i % 20) for i, v in enumerate(variants)}
    fig, axes = plt.subplots(len(groups), 2, figsize=(11, 3.6 * len(groups)), squeeze=False)
    for row, group in enumerate(groups):
        members = [r for r in results if (r["scene"], r["level"]) == group]
        for col, (key, label) in enumerate((("rotation_deg", "rotation error (deg)"), ("translation", "translation error (scene units)"))):
            ax = axes[row, col]
            for r in members:
                errors = np.sort(np.asarray(r["per_camera"][key], dtype=np.float64))
                if errors.size == 0:
                    continue
                frac = np.arange(1, errors.size + 1) / errors.size
                if r["variant"] == "input":
                    style = {"color": "black", "linestyle": "--", "linewidth": 1.5}
                else:  # swept weights dotted, the main variants solid
                    style = {"color": colours[r["variant"]], "linestyle": ":" if r.get("sweep_of") else "-",
                             "linewidth": 1.2}
                ax.step(errors, frac, where="post", label=r["variant"], **style)
            ax.set_xscale("log")
            ax.set_xlabel(label)
            ax.set_ylabel("fraction of cameras")
            ax.set_title(f"{group[0]} {group[1]}")
            ax.grid(True, alpha=0.3)
        axes[row, 1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_reports(results: list[dict[str, Any]], output: Path, preset: Preset) -> list[dict[str, Any]]:
    rows = table_rows(results)
    (output / "results.json").write_text(
        json.dumps({"preset": preset.name, "rows": rows, "runs": results}, indent=2)
    )
    with open(output / "results.csv", "w", newline="") as fid:
        writer = csv.DictWriter(fid, fieldnames=list(rows[0].keys()) if rows else ["scene"])
        writer.writeheader()
        writer.writerows(rows)
    plot_cdfs(results, output / "error_cdf.png")
    return rows


# ------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--track" in argv:  # `--track colmap` runs scripts/colmap_track.py with the other arguments
        i = argv.index("--track")
        track = argv[i + 1] if i + 1 < len(argv) else ""
        rest = argv[:i] + argv[i + 2 :]
        if track == "colmap":
            sys.path.insert(0, str(ROOT / "scripts"))
            import colmap_track

            return colmap_track.main(rest)
        if track != "noise":
            print(f"benchmark: --track must be 'noise' or 'colmap', got {track!r}", file=sys.stderr)
            return 2
        argv = rest
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=None, help="preset YAML (default configs/benchmark.yaml)")
    parser.add_argument("--quick", action="store_true", help="configs/benchmark_quick.yaml: tiny scene, 2 variants, few iterations")
    parser.add_argument("--output", type=Path, default=None, help="results directory (default benchmark_results/<preset>)")
    parser.add_argument("--iterations", type=int, default=None, help="training iterations per variant (overrides the preset)")
    parser.add_argument("--variants", nargs="+", default=None, help="only these variants (glob patterns)")
    parser.add_argument("--levels", nargs="+", default=None, help="only these noise levels")
    parser.add_argument("--force", action="store_true", help="re-run variants whose results exist")
    parser.add_argument("--timeout-s", type=float, default=None, help="kill a variant after this many seconds")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="training device (timings are per device)")
    parser.add_argument("--jobs", type=int, default=1, help="variants trained at the same time (subprocesses)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads per variant (1 is faster on busy shared cores; default: torch's)")
    parser.add_argument("--list", action="store_true", help="print the planned runs and exit")
    parser.add_argument("--report-only", action="store_true", help="only tabulate the results that exist (train nothing)")
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker is not None:
        import warnings

        warnings.filterwarnings("ignore")
        return run_worker(args.worker)

    config_path = args.config or (QUICK_CONFIG if args.quick else DEFAULT_CONFIG)
    preset = load_preset(config_path)
    if args.iterations is not None:
        if args.iterations < 1:
            parser.error("--iterations must be >= 1")
        preset.iterations = args.iterations
    output = args.output or ROOT / "benchmark_results" / preset.name
    runs = plan(preset, output, args.variants, args.levels, args.timeout_s)
    for run in runs:
        run.device = args.device
        run.threads = args.threads
    if not runs:
        parser.error("no run matches --variants / --levels")
    if args.list:
        for run in runs:
            state = "done" if existing_result(run) else "todo"
            print(f"{state}  {run.name}  {json.dumps(run.variant.get('camera_optimizer', {}))} "
                  f"{json.dumps(run.variant.get('camera_optimizer_scale', {}))}")
        return 0

    output.mkdir(parents=True, exist_ok=True)
    print(f"benchmark {preset.name}: {len(runs)} runs of {preset.method}, {preset.iterations} iterations each -> {output}")
    start = time.perf_counter()
    results: list[dict[str, Any]] = []
    # The noisy datasets and the errors of their poses (the "input" rows), once per scene and level.
    for key in dict.fromkeys((run.scene, run.level["name"]) for run in runs):
        first = next(run for run in runs if (run.scene, run.level["name"]) == key)
        ensure_dataset(first)
        results.append({"scene": key[0], "level": key[1], "variant": "input", **input_errors(first.data),
                        "psnr": None, "wall_time_s": None})
    from concurrent.futures import ThreadPoolExecutor

    if args.report_only:
        outcomes = [existing_result(run) for run in runs]
    else:
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            outcomes = list(pool.map(lambda run: launch(run, args.force), runs))
    failed = 0
    for run, result in zip(runs, outcomes):
        if result is None:
            failed += 1
            continue
        results.append({"scene": run.scene, "level": run.level["name"], "variant": run.variant["name"],
                        "sweep_of": run.variant.get("sweep_of"), **result})
    if len(results) == len({(r["scene"], r["level"]) for r in results}):
        print("no results yet")
        return 1
    # One block per scene/level (preset order), its input row first, then the variants in preset order.
    groups = list(dict.fromkeys((r["scene"], r["level"]) for r in results))
    results.sort(key=lambda r: (groups.index((r["scene"], r["level"])), r["variant"] != "input"))
    write_reports(results, output, preset)
    print()
    print(format_table(table_rows(results)))
    spread = sweep_spread(results, preset)
    if spread:
        print()
        print("\n".join(spread))
    print(f"\nwrote {output / 'results.json'}, {output / 'results.csv'}, {output / 'error_cdf.png'} "
          f"({time.perf_counter() - start:.0f} s; {failed} failed)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
