#!/usr/bin/env python
"""Noisy-pose benchmark: pose refinement with and without regularisers, on the same noisy scenes.

For every scene and noise level of a preset (``configs/*.yaml``), the scene is perturbed once
(:func:`nerf_posefix.workflows.perturb.perturb_dataset`, seeded; every ``eval_interval``-th view keeps its
exact pose and serves as a test view), then every variant trains the same method for the same number
of iterations with the same training seed; only the camera optimizer differs:

* ``no-pose-opt``: poses stay at the noisy input;
* ``nerfstudio-l2``: nerfstudio's own ``SO3xR3`` optimizer with its default L2 penalties;
* ``nerfstudio-free``: the same, penalties 0;
* ``posefix-global`` / ``posefix-local``: the homography prior with global / per-camera depth bounds;
* weight sweeps of each regulariser (``<base>-x<factor>``).

Each variant runs in its own Python process (``--worker``), which trains in-process with nerfstudio's
``Trainer`` (:mod:`nerf_posefix.workflows.experiment` helpers), renders the test views (PSNR), exports the refined
poses with the plugin's export and measures them against the ground truth (``sparse_gt/0`` /
``transforms_gt.json``) after a Sim(3) alignment (:mod:`nerf_posefix.geometry.metrics`), on the training cameras.
It writes ``<output>/<scene>/<level>/<variant>/result.json``; a variant whose result exists with the
same settings is skipped, so an interrupted benchmark resumes where it stopped.

Outputs in ``<output>``: ``results.json``, ``results.csv``, ``error_cdf.png`` and the printed table
(median/mean rotation error in degrees, median/mean translation error in scene units and as a
percentage of the scene radius, median homography error, ATE RMSE after Sim(3), test-view PSNR, wall
time). The ``input`` rows are the noisy poses themselves.

Usage::

    python -m benchmarks.noisy_pose                       # configs/benchmark.yaml (slow on a CPU: hours)
    python -m benchmarks.noisy_pose --iterations 600 --levels 3deg-5pct --variants 'posefix-*' no-pose-opt
    python -m benchmarks.noisy_pose --quick               # configs/benchmark_quick.yaml: tiny scene, 2 variants
    python -m benchmarks.noisy_pose --list                # the planned runs, nothing trained
    python -m benchmarks.noisy_pose --track colmap [...]  # the COLMAP-pose track (benchmarks/colmap_track.py)
    python -m benchmarks.noisy_pose --report-only         # tabulate the results that exist
    python -m benchmarks.noisy_pose --device cuda --jobs 9  # on a GPU machine, 9 variants at a time

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
    seed: int = 0  # seed index: train_seed and noise_seed are the preset's plus this

    @property
    def name(self) -> str:
        suffix = f"#seed{self.seed}" if self.seed else ""
        return f"{self.scene}/{self.level['name']}/{self.variant['name']}{suffix}"

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
    seeds: list[int] = field(default_factory=lambda: [0])


# ------------------------------------------------------------------------------------------------
# presets


def expand_variants(variants: list[dict[str, Any]], sweeps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The variants plus, for each sweep ``{base, fields, factors[, seeds]}``, one variant per factor named
    ``<base>-x<factor>`` whose ``camera_optimizer_scale`` multiplies ``fields`` of the base by the factor.
    The field ``camera_lr`` is the camera optimizer's learning rate instead (``camera_lr_scale``; variant
    ``<base>-lr-x<factor>``). ``seeds`` limits the sweep's runs to those seed indices."""
    by_name = {v["name"]: v for v in variants}
    out = [copy.deepcopy(v) for v in variants]
    for sweep in sweeps:
        base = by_name.get(sweep["base"])
        if base is None:
            raise ValueError(f"sweep base {sweep['base']!r} is not a variant ({', '.join(by_name)})")
        fields = list(sweep["fields"])
        is_lr = fields == ["camera_lr"]
        if "camera_lr" in fields and not is_lr:
            raise ValueError(f"sweep of {sweep['base']!r}: camera_lr is swept on its own")
        for factor in sweep["factors"]:
            variant = copy.deepcopy(base)
            variant["name"] = f"{base['name']}-{'lr-' if is_lr else ''}x{factor:g}"
            variant["sweep_of"] = base["name"]
            variant["factor"] = float(factor)
            if is_lr:
                variant["camera_lr_scale"] = float(factor) * float(base.get("camera_lr_scale", 1.0))
            else:
                variant["camera_optimizer_scale"] = {f: float(factor) for f in fields}
            if sweep.get("seeds") is not None:
                variant["seeds"] = [int(k) for k in sweep["seeds"]]
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
        seeds=[int(k) for k in raw.get("seeds", [0])],
    )


def plan(preset: Preset, output: Path, variant_patterns: list[str] | None, level_names: list[str] | None,
         timeout_s: float | None) -> list[Run]:
    runs = []
    for scene_path in preset.scenes:
        scene = scene_path.name
        for level in preset.levels:
            if level_names and level["name"] not in level_names:
                continue
            for seed in preset.seeds:
                for variant in preset.variants:
                    if variant_patterns and not any(fnmatch.fnmatch(variant["name"], p) for p in variant_patterns):
                        continue
                    if seed not in variant.get("seeds", preset.seeds):
                        continue
                    # Seed 0 keeps the original paths (results of single-seed presets stay valid).
                    data_name = "data" if seed == 0 else f"data-seed{seed}"
                    run_name = variant["name"] if seed == 0 else f"{variant['name']}.seed{seed}"
                    runs.append(
                        Run(
                            scene=scene,
                            scene_path=scene_path,
                            level=level,
                            variant=variant,
                            method=preset.method,
                            iterations=preset.iterations,
                            eval_interval=preset.eval_interval,
                            train_seed=preset.train_seed + seed,
                            noise_seed=preset.noise_seed + seed,
                            data=output / scene / level["name"] / data_name,
                            directory=output / scene / level["name"] / run_name,
                            timeout_s=timeout_s,
                            seed=seed,
                        )
                    )
    return runs


# ------------------------------------------------------------------------------------------------
# noisy datasets and the input rows


def ensure_dataset(run: Run) -> None:
    """Perturb the scene for this level once (re-done if the recorded parameters differ)."""
    from nerf_posefix.workflows.perturb import perturb_dataset

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
    from nerf_posefix.io.transforms_json import read_transforms_json
    from nerf_posefix.workflows.experiment import load_reference, pose_errors, train_camera_names

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
        camera_lr_scale=float(variant.get("camera_lr_scale", 1.0)),
        seed=int(spec["settings"]["train_seed"]),
        device=str(spec.get("device", "cpu")),
    )
    config = build_trainer_config(train_spec)
    cam_opt = config.pipeline.model.camera_optimizer
    optimizer_settings = {
        "class": type(cam_opt).__name__,
        **{k: getattr(cam_opt, k) for k in ("mode", "trans_l2_penalty", "rot_l2_penalty", "weight", "bounds", "precondition")
           if hasattr(cam_opt, k)},
        "lr": config.optimizers["camera_opt"]["optimizer"].lr,
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


#: Tensorboard tags of the ground-truth pose metrics the posefix model logs while training
#: (:meth:`nerf_posefix.plugin.model.PosefixModel.pose_errors_vs_ground_truth`) -> curve keys.
CURVE_TAGS = {
    "Train Metrics Dict/pose_gt_rotation_median_deg": "rotation_median_deg",
    "Train Metrics Dict/pose_gt_translation_median_rel": "translation_median_pct",
}
#: The logged translation is a fraction of the scene radius (:func:`nerf_posefix.geometry.poses.scene_radius`);
#: curves give it in % of the radius, like the table.
CURVE_SCALE = {"rotation_median_deg": 1.0, "translation_median_pct": 100.0}


def read_curve(run_dir: Path | str) -> dict[str, list[float]] | None:
    """The median pose errors against iteration logged during a run (every ``steps_per_log`` steps),
    read from the run's tensorboard events: ``{"step": [...], "rotation_median_deg": [...],
    "translation_median_pct": [...]}`` (training-time metrics of the training cameras: Sim(3)-aligned like
    the final ones; translation in % of the radius of their ground-truth centres), or None when the run
    has no such events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(Path(run_dir).glob("events.out.tfevents.*"))
    series: dict[str, dict[int, float]] = {key: {} for key in CURVE_TAGS.values()}
    for path in files:  # a resumed run has several event files
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
        acc.Reload()
        tags = set(acc.Tags().get("scalars", []))
        for tag, key in CURVE_TAGS.items():
            if tag in tags:
                series[key].update({int(e.step): CURVE_SCALE[key] * float(e.value) for e in acc.Scalars(tag)})
    steps = sorted(set.intersection(*(set(v) for v in series.values())))
    if not steps:
        return None
    return {"step": steps, **{key: [values[k] for k in steps] for key, values in series.items()}}


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
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "ignore", "PYTHONPATH": pythonpath}
    with open(log_path, "w") as log:
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "benchmarks.noisy_pose", "--worker", str(spec_path)],
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
                "seed": r.get("seed", 0),
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
                "diverged": r.get("diverged"),
            }
        )
    return rows


def _cell(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return fmt.format(value)


def _label(row: dict[str, Any]) -> str:
    """Variant name, ``#seedK`` for seed index K > 0, `` DIVERGED`` when it ended worse than its input."""
    label = row["variant"] + (f"#seed{row['seed']}" if row.get("seed") else "")
    return label + (" DIVERGED" if row.get("diverged") else "")


def text_table(headers: list[str], body: list[list[str]], left: int, title: str | None = None) -> str:
    """A rich table rendered to text: the first ``left`` columns left-aligned, the others right-aligned."""
    import io

    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, box=box.SIMPLE_HEAD)
    for i, header in enumerate(headers):
        table.add_column(header, justify="left" if i < left else "right", no_wrap=True)
    for cells in body:
        table.add_row(*cells)
    console = Console(width=400, file=io.StringIO(), record=True, color_system=None)
    console.print(table)
    return console.export_text().rstrip()


def format_table(rows: list[dict[str, Any]]) -> str:
    headers = ["scene", "level", "variant", *[h for _, h, _ in COLUMNS]]
    body = [[r["scene"], r["level"], _label(r), *[_cell(r.get(k), f) for k, _, f in COLUMNS]] for r in rows]
    return text_table(headers, body, left=3)


def mark_divergence(results: list[dict[str, Any]]) -> None:
    """Set ``diverged`` on every run: its final median rotation or translation error is larger than that
    of its noisy input (same scene, level and seed)."""
    inputs = {(r["scene"], r["level"], r.get("seed", 0)): r["summary"] for r in results if r["variant"] == "input"}
    for r in results:
        base = inputs.get((r["scene"], r["level"], r.get("seed", 0)))
        if r["variant"] == "input" or base is None:
            continue
        s = r["summary"]
        worse = 1.0 + 1e-6  # an unchanged pose is not "worse" by rounding
        r["diverged"] = bool(s["rotation_median_deg"] > worse * base["rotation_median_deg"]
                             or s["translation_median"] > worse * base["translation_median"])


#: Columns of the over-seeds summary: (key of a row, header, format).
SEED_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("rotation_median_deg", "rot med (deg)", "{:.3f}"),
    ("translation_median_pct", "trans med (% r)", "{:.2f}"),
    ("psnr", "PSNR (dB)", "{:.2f}"),
)


def seed_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per scene, level and variant: the mean and standard deviation over seeds of the table's median
    errors and PSNR, the number of seeds and of diverged runs."""
    import numpy as np

    out = []
    for key in dict.fromkeys((r["scene"], r["level"], r["variant"]) for r in rows):
        members = [r for r in rows if (r["scene"], r["level"], r["variant"]) == key]
        entry: dict[str, Any] = {"scene": key[0], "level": key[1], "variant": key[2], "seeds": len(members),
                                 "diverged": sum(bool(r.get("diverged")) for r in members)}
        for k, _, _ in SEED_COLUMNS:
            values = np.array([r[k] for r in members if r.get(k) is not None], dtype=np.float64)
            entry[f"{k}_mean"] = float(values.mean()) if values.size else None
            entry[f"{k}_std"] = float(values.std(ddof=1)) if values.size > 1 else None
        out.append(entry)
    return out


def format_seed_summary(entries: list[dict[str, Any]]) -> str:
    headers = ["level", "variant", "seeds", *[f"{h} mean±sd" for _, h, _ in SEED_COLUMNS], "diverged"]
    body = []
    for e in entries:
        cells = []
        for k, _, f in SEED_COLUMNS:
            mean, std = e[f"{k}_mean"], e[f"{k}_std"]
            cells.append(_cell(mean, f) + ("" if std is None else "±" + _cell(std, f)))
        body.append([e["level"], e["variant"], str(e["seeds"]), *cells, str(e["diverged"]) if e["variant"] != "input" else "-"])
    return text_table(headers, body, left=2)


def unpreconditioned_of(variant: str) -> str | None:
    """``<base>-precond-<kind>[...]`` -> ``<base>`` (the same regulariser without preconditioning)."""
    return variant.split("-precond-")[0] if "-precond-" in variant else None


def convergence_speed(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For every preconditioned run and seed: the first logged iteration at which both its median rotation
    and translation errors are at most the final ones of the unpreconditioned run of the same regulariser,
    scene, level and seed (None: never), as a fraction of the iterations. Uses the training-time curves."""
    by_key = {(r["scene"], r["level"], r["variant"], r.get("seed", 0)): r for r in results}
    out = []
    for r in results:
        base_name = unpreconditioned_of(r["variant"])
        if base_name is None or r.get("sweep_of"):
            continue
        base = by_key.get((r["scene"], r["level"], base_name, r.get("seed", 0)))
        if base is None or not r.get("curve") or not base.get("curve"):
            continue
        target_rot = base["curve"]["rotation_median_deg"][-1]
        target_tr = base["curve"]["translation_median_pct"][-1]
        curve = r["curve"]
        reached = next((step for step, rot, tr in zip(curve["step"], curve["rotation_median_deg"], curve["translation_median_pct"])
                        if rot <= target_rot and tr <= target_tr), None)
        total = r["settings"]["iterations"] if "settings" in r else base["curve"]["step"][-1]
        out.append({"scene": r["scene"], "level": r["level"], "variant": r["variant"], "baseline": base_name,
                    "seed": r.get("seed", 0), "target_rotation_deg": target_rot, "target_translation_pct": target_tr,
                    "reached_at": reached, "fraction": None if reached is None else reached / total})
    return out


def plot_convergence(results: list[dict[str, Any]], path: Path) -> bool:
    """Median rotation and translation error against iteration, one line per variant (mean over seeds, band
    min..max), one row per scene/level; sweeps are left out. False when no run has a curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    runs = [r for r in results if r.get("curve") and r["variant"] != "input" and not r.get("sweep_of")]
    if not runs:
        return False
    groups = list(dict.fromkeys((r["scene"], r["level"]) for r in runs))
    variants = list(dict.fromkeys(r["variant"] for r in runs))
    colours = {v: plt.cm.tab10(i % 10) for i, v in enumerate(variants)}
    fig, axes = plt.subplots(len(groups), 2, figsize=(12, 3.8 * len(groups)), squeeze=False)
    for row, group in enumerate(groups):
        for col, (key, label) in enumerate((("rotation_median_deg", "median rotation error (deg)"),
                                            ("translation_median_pct", "median translation error (% radius)"))):
            ax = axes[row, col]
            for variant in variants:
                curves = [r["curve"] for r in runs if (r["scene"], r["level"], r["variant"]) == (*group, variant)]
                if not curves:
                    continue
                n = min(len(c["step"]) for c in curves)
                steps = np.asarray(curves[0]["step"][:n])
                values = np.array([c[key][:n] for c in curves])
                style = "--" if unpreconditioned_of(variant) else "-"
                ax.plot(steps, values.mean(axis=0), style, color=colours[variant], lw=1.3,
                        label=f"{variant} ({len(curves)} seed{'s' if len(curves) > 1 else ''})")
                if len(curves) > 1:
                    ax.fill_between(steps, values.min(axis=0), values.max(axis=0), color=colours[variant], alpha=0.12)
            ax.set_yscale("log")
            ax.set_xlabel("iteration")
            ax.set_ylabel(label)
            ax.set_title(f"{group[0]} {group[1]}")
            ax.grid(True, which="both", alpha=0.3)
        axes[row, 1].legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def sweep_spread(results: list[dict[str, Any]], preset: Preset) -> list[str]:
    """Per level and regulariser: the range of the median errors over its weight sweep (base included)."""
    lines = []
    bases = sorted({v["sweep_of"] for v in preset.variants if "sweep_of" in v})
    for level in dict.fromkeys((r["scene"], r["level"]) for r in results):
        for base in bases:
            family = [r for r in results if (r["scene"], r["level"]) == level and not r.get("seed")
                      and (r["variant"] == base or r.get("sweep_of") == base)]
            if len(family) < 2:
                continue
            rot = [r["summary"]["rotation_median_deg"] for r in family]
            tr = [100 * r["summary"]["translation_median_rel"] for r in family]
            lines.append(
                f"{level[0]}/{level[1]} {base} sweep ({len(family)} settings): rotation median "
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
    report: dict[str, Any] = {"preset": preset.name, "rows": rows, "runs": results}
    if len(preset.seeds) > 1:
        report["seed_summary"] = seed_summary(rows)
        with open(output / "seed_summary.csv", "w", newline="") as fid:
            writer = csv.DictWriter(fid, fieldnames=list(report["seed_summary"][0].keys()))
            writer.writeheader()
            writer.writerows(report["seed_summary"])
    report["convergence"] = convergence_speed(results)
    plot_convergence(results, output / "convergence.png")
    (output / "results.json").write_text(json.dumps(report, indent=2))
    with open(output / "results.csv", "w", newline="") as fid:
        writer = csv.DictWriter(fid, fieldnames=list(rows[0].keys()) if rows else ["scene"])
        writer.writeheader()
        writer.writerows(rows)
    plot_cdfs([r for r in results if not r.get("seed")], output / "error_cdf.png")
    return rows


# ------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--track" in argv:  # `--track colmap` runs benchmarks/colmap_track.py with the other arguments
        i = argv.index("--track")
        track = argv[i + 1] if i + 1 < len(argv) else ""
        rest = argv[:i] + argv[i + 2 :]
        if track == "colmap":
            from benchmarks import colmap_track

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
    try:
        preset = load_preset(config_path)
    except (OSError, ValueError, KeyError, TypeError) as err:  # unreadable file, bad sweep, missing key
        reason = f"missing key {err}" if isinstance(err, KeyError) else str(err)
        print(f"benchmark: error: {config_path}: {reason}", file=sys.stderr)
        return 2
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
            lr = f" lr x{run.variant['camera_lr_scale']:g}" if "camera_lr_scale" in run.variant else ""
            print(f"{state}  {run.name}  {json.dumps(run.variant.get('camera_optimizer', {}))} "
                  f"{json.dumps(run.variant.get('camera_optimizer_scale', {}))}{lr}")
        return 0

    output.mkdir(parents=True, exist_ok=True)
    print(f"benchmark {preset.name}: {len(runs)} runs of {preset.method}, {preset.iterations} iterations each -> {output}")
    start = time.perf_counter()
    results: list[dict[str, Any]] = []
    # The noisy datasets and the errors of their poses (the "input" rows), once per scene and level.
    for key in dict.fromkeys((run.scene, run.level["name"], run.seed) for run in runs):
        first = next(run for run in runs if (run.scene, run.level["name"], run.seed) == key)
        ensure_dataset(first)
        results.append({"scene": key[0], "level": key[1], "variant": "input", "seed": key[2],
                        **input_errors(first.data), "psnr": None, "wall_time_s": None})
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
        if result.get("run_dir") and Path(result["run_dir"]).is_dir():  # curves: read from the run's events
            result["curve"] = read_curve(result["run_dir"])
        results.append({"scene": run.scene, "level": run.level["name"], "variant": run.variant["name"],
                        "sweep_of": run.variant.get("sweep_of"), "seed": run.seed, **result})
    if all(r["variant"] == "input" for r in results):
        print("no results yet")
        return 1
    mark_divergence(results)
    # One block per scene/level (preset order), its input rows first, then the variants in preset order.
    groups = list(dict.fromkeys((r["scene"], r["level"]) for r in results))
    order = {v["name"]: i for i, v in enumerate(preset.variants)}
    results.sort(key=lambda r: (groups.index((r["scene"], r["level"])), r["variant"] != "input",
                                order.get(r["variant"], -1), r.get("seed", 0)))
    rows = write_reports(results, output, preset)
    print()
    print(format_table(rows))
    if len(preset.seeds) > 1:
        print()
        print(f"over seeds {preset.seeds} (mean ± standard deviation of the per-run medians):")
        print(format_seed_summary(seed_summary(rows)))
    speed = convergence_speed(results)
    if speed:
        print()
        print("iterations for a preconditioned run to reach its unpreconditioned run's final median errors:")
        for c in speed:
            reached = "never" if c["reached_at"] is None else f"{c['reached_at']} ({100 * c['fraction']:.0f} %)"
            print(f"  {c['level']} {c['variant']}#seed{c['seed']} vs {c['baseline']} "
                  f"({c['target_rotation_deg']:.3f} deg, {c['target_translation_pct']:.2f} %): {reached}")
    spread = sweep_spread(results, preset)
    if spread:
        print()
        print("\n".join(spread))
    print(f"\nwrote {output / 'results.json'}, {output / 'results.csv'}, {output / 'error_cdf.png'}, "
          f"{output / 'convergence.png'} "
          f"({time.perf_counter() - start:.0f} s; {failed} failed)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
