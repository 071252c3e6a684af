"""``benchmarks/noisy_pose.py``: preset expansion, the table, and a ``--quick`` run end to end."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "noisy_pose.py"


def _load_benchmark():
    from benchmarks import noisy_pose

    return noisy_pose


def test_full_preset_has_every_variant_and_two_decade_sweeps() -> None:
    bench = _load_benchmark()
    preset = bench.load_preset(ROOT / "configs" / "benchmark.yaml")
    names = [v["name"] for v in preset.variants]
    for required in ("no-pose-opt", "nerfstudio-l2", "nerfstudio-free", "posefix-global", "posefix-local"):
        assert required in names
    assert {(lv["rotation_deg"], lv["translation"]) for lv in preset.levels} >= {(1.0, 0.02), (3.0, 0.05)}
    for base in ("nerfstudio-l2", "posefix-global"):
        factors = [v["factor"] for v in preset.variants if v.get("sweep_of") == base] + [1.0]
        assert max(factors) / min(factors) >= 100.0  # at least two decades
    swept = next(v for v in preset.variants if v["name"] == "nerfstudio-l2-x10")
    assert swept["camera_optimizer"] == {"class": "nerfstudio", "mode": "SO3xR3"}
    assert swept["camera_optimizer_scale"] == {"trans_l2_penalty": 10.0, "rot_l2_penalty": 10.0}
    # Same budget and data for all runs of a level.
    runs = bench.plan(preset, Path("/tmp/x"), None, None, None)
    assert len(runs) == len(preset.levels) * len(preset.variants)
    assert len({(r.iterations, r.train_seed, r.noise_seed) for r in runs}) == 1
    assert len({r.data for r in runs}) == len(preset.levels)


def test_trainer_config_applies_variant_settings(tmp_path: Path) -> None:
    from nerfstudio.cameras.camera_optimizers import CameraOptimizerConfig

    from nerf_posefix.workflows.experiment import TrainSpec, build_trainer_config

    base = TrainSpec(data=ROOT / "assets" / "toybox_tiny", output_dir=tmp_path, iterations=7)
    ns = build_trainer_config(
        TrainSpec(**{**base.__dict__, "camera_optimizer": {"class": "nerfstudio", "mode": "SO3xR3"},
                     "camera_optimizer_scale": {"trans_l2_penalty": 10.0}})
    )
    cam = ns.pipeline.model.camera_optimizer
    assert type(cam) is CameraOptimizerConfig
    assert cam.trans_l2_penalty == pytest.approx(10 * CameraOptimizerConfig().trans_l2_penalty)
    assert cam.rot_l2_penalty == CameraOptimizerConfig().rot_l2_penalty
    pf = build_trainer_config(TrainSpec(**{**base.__dict__, "camera_optimizer": {"bounds": "points-per-camera"},
                                           "camera_optimizer_scale": {"weight": 0.1}}))
    default_weight = build_trainer_config(base).pipeline.model.camera_optimizer.weight
    assert pf.pipeline.model.camera_optimizer.weight == pytest.approx(0.1 * default_weight)
    assert pf.pipeline.model.camera_optimizer.bounds == "points-per-camera"
    assert pf.max_num_iterations == 7 and pf.machine.device_type == "cpu"
    assert type(pf.pipeline.datamanager).__name__ == "PosefixDataManagerConfig"  # vanilla: no worker processes
    assert pf.pipeline.datamanager.dataparser.eval_mode == "interval"


def test_quick_benchmark_produces_a_well_formed_table(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    cmd = [sys.executable, "-m", "benchmarks.noisy_pose", "--quick", "--iterations", "4", "--jobs", "2", "--threads", "1", "--output", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    stdout = proc.stdout
    assert "rot med (deg)" in stdout and "PSNR (dB)" in stdout and "ATE" in stdout

    results = json.loads((out / "results.json").read_text())
    rows = {r["variant"]: r for r in results["rows"]}
    assert set(rows) == {"input", "no-pose-opt", "posefix-global"}
    for variant in ("no-pose-opt", "posefix-global"):
        row = rows[variant]
        for key in ("rotation_median_deg", "rotation_mean_deg", "translation_median", "translation_mean",
                    "homography_median", "ate_rmse", "psnr", "wall_time_s"):
            assert isinstance(row[key], float) and math.isfinite(row[key]), (variant, key)
        assert row["num_cameras"] == 14  # 16 views, 2 held out (every 8th)
        assert 5.0 < row["psnr"] < 40.0
    # The noise level is what was asked: 3 deg per camera before alignment, ~3 deg after.
    assert 2.0 < rows["input"]["rotation_median_deg"] < 3.5
    # Without pose optimisation the exported poses are the input poses: same errors.
    for key in ("rotation_median_deg", "translation_median", "ate_rmse"):
        assert rows["no-pose-opt"][key] == pytest.approx(rows["input"][key], rel=1e-6, abs=1e-9)

    with open(out / "results.csv", newline="") as fid:
        csv_rows = list(csv.DictReader(fid))
    assert [r["variant"] for r in csv_rows] == ["input", "no-pose-opt", "posefix-global"]
    assert (out / "error_cdf.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Resumable: a second run skips both variants and reproduces the table.
    proc2 = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc2.returncode == 0, proc2.stdout[-3000:]
    assert proc2.stdout.count("done already (skipped)") == 2
    again = {r["variant"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert again["posefix-global"]["rotation_median_deg"] == rows["posefix-global"]["rotation_median_deg"]


def test_precondition_preset_plans_seeds_and_learning_rate_sweeps() -> None:
    bench = _load_benchmark()
    preset = bench.load_preset(ROOT / "configs" / "benchmark_precondition.yaml")
    assert preset.seeds == [0, 1, 2]
    runs = bench.plan(preset, Path("/tmp/x"), None, None, None)
    by_variant: dict[str, list] = {}
    for run in runs:
        by_variant.setdefault(run.variant["name"], []).append(run)
    for kind in ("off", "homography", "sampled"):  # {L2, prior} x {off, homography, sampled}, 3 seeds each
        for reg in ("nerfstudio-l2", "posefix-global"):
            name = reg if kind == "off" else f"{reg}-precond-{kind}"
            assert sorted(r.seed for r in by_variant[name]) == [0, 1, 2], name
    lr = {name: rs for name, rs in by_variant.items() if "-lr-x" in name}
    assert len(lr) == 8 and all([r.seed for r in rs] == [0] for rs in lr.values())
    assert sorted({rs[0].variant["camera_lr_scale"] for rs in lr.values()}) == [0.1, 10.0]  # two decades
    seed1 = next(r for r in by_variant["posefix-global"] if r.seed == 1)
    seed0 = next(r for r in by_variant["posefix-global"] if r.seed == 0)
    assert (seed1.train_seed, seed1.noise_seed) == (seed0.train_seed + 1, seed0.noise_seed + 1)
    assert seed1.data.name == "data-seed1" and seed0.data.name == "data"
    assert seed1.directory.name == "posefix-global.seed1" and seed0.directory.name == "posefix-global"


def test_camera_learning_rate_scale(tmp_path: Path) -> None:
    from nerf_posefix.workflows.experiment import TrainSpec, build_trainer_config
    from nerf_posefix.plugin.method_configs import posefix_small_method

    registered = posefix_small_method.config.optimizers["camera_opt"]
    config = build_trainer_config(TrainSpec(data=ROOT / "assets" / "toybox_tiny", output_dir=tmp_path, camera_lr_scale=10.0))
    group = config.optimizers["camera_opt"]
    assert group["optimizer"].lr == pytest.approx(10 * registered["optimizer"].lr)
    assert group["scheduler"].lr_final == pytest.approx(10 * registered["scheduler"].lr_final)
    assert registered["optimizer"].lr == 1e-3  # the registered method is untouched
    fields_lr = posefix_small_method.config.optimizers["fields"]["optimizer"].lr
    assert config.optimizers["fields"]["optimizer"].lr == fields_lr  # only the camera optimizer's rate changes


def test_divergence_and_convergence_speed_from_curves() -> None:
    bench = _load_benchmark()

    def run(variant: str, rot: list[float], tr: list[float], seed: int = 0) -> dict:
        return {"scene": "s", "level": "l", "variant": variant, "seed": seed, "settings": {"iterations": 40},
                "summary": {"rotation_median_deg": rot[-1], "translation_median": tr[-1]},
                "curve": {"step": [0, 10, 20, 30], "rotation_median_deg": rot, "translation_median_pct": tr}}

    results = [
        {"scene": "s", "level": "l", "variant": "input", "seed": 0,
         "summary": {"rotation_median_deg": 3.0, "translation_median": 0.1}},
        run("reg", [3.0, 1.0, 0.5, 0.4], [0.1, 0.05, 0.02, 0.01]),
        run("reg-precond-homography", [3.0, 0.6, 0.3, 0.3], [0.1, 0.02, 0.011, 0.009]),  # both reached at 30
        run("reg-precond-sampled", [3.0, 0.3, 0.3, 0.3], [0.1, 0.2, 0.2, 0.2]),  # translation never reached
    ]
    bench.mark_divergence(results)
    assert [r.get("diverged") for r in results] == [None, False, False, True]
    speed = {c["variant"]: c for c in bench.convergence_speed(results)}
    assert speed["reg-precond-homography"]["reached_at"] == 30
    assert speed["reg-precond-homography"]["fraction"] == pytest.approx(0.75)
    assert speed["reg-precond-sampled"]["reached_at"] is None
    assert speed["reg-precond-homography"]["baseline"] == "reg"


def test_bad_preset_is_one_error_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\niterations: 10\nscenes: [assets/toybox_tiny]\n"
                   "levels: [{name: a, rotation_deg: 1, translation: 0.01}]\nvariants: [{name: v}]\n"
                   "sweeps: [{base: v, fields: [camera_lr, weight], factors: [2]}]\n")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.noisy_pose", "--config", str(bad), "--list"], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"benchmark: error: {bad}: sweep of 'v': camera_lr is swept on its own"]
