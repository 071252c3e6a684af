"""The plugin through nerfstudio's own command lines (four CLI starts, ~1.5 min on 2 cores):

* ``ns-train --help`` lists ``posefix`` and ``posefix-small`` (entry-point discovery);
* ``ns-train posefix-small`` on a capture that does not exist prints one ``posefix: error:`` line, no traceback;
* ``ns-train posefix-small --vis tensorboard`` on ``assets/toybox_tiny`` for 30 iterations writes a
  checkpoint and tensorboard scalars (nerfstudio's camera metrics, the regulariser, the ground-truth
  pose errors), with an empty torch cache (LPIPS skipped, nothing downloaded);
* ``ns-eval`` loads that checkpoint (plain ``torch.load`` under torch >= 2.6) and reports PSNR/SSIM.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "assets" / "toybox_tiny"
BIN = Path(sys.executable).parent


def run_cli(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout, cwd=env["HOME_RUN"])
    assert proc.returncode == 0, f"{args[0]} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("e2e")
    out = dict(os.environ)
    out.update(
        {
            "TORCH_HOME": str(home / "torch_home"),  # empty hub cache: LPIPS weights absent
            "OMP_NUM_THREADS": "1",
            "HOME_RUN": str(home),
            "COLUMNS": "200",
        }
    )
    return out


def test_ns_train_help_lists_both_methods(env: dict[str, str]) -> None:
    proc = run_cli([str(BIN / "ns-train"), "--help"], env)
    text = proc.stdout + proc.stderr
    usage = next(line for line in text.splitlines() if line.startswith("usage:"))
    choices = usage[usage.index("{") + 1 : usage.index("}")].split(",")
    assert "posefix" in choices and "posefix-small" in choices
    assert "homography pose prior" in text  # the method descriptions


def test_ns_train_refuses_bad_input_in_one_line(env: dict[str, str]) -> None:
    missing = Path(env["HOME_RUN"]) / "no_such_capture"
    proc = subprocess.run([str(BIN / "ns-train"), "posefix-small", "--data", str(missing), "--output-dir", str(Path(env["HOME_RUN"]) / "refused")],
                          capture_output=True, text=True, env=env, timeout=300, cwd=env["HOME_RUN"])
    assert proc.returncode == 1, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("posefix: error: ")]
    assert errors == [f"posefix: error: {missing / 'transforms.json'}: no such file"], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def trained_run(env: dict[str, str]) -> Path:
    output = Path(env["HOME_RUN"]) / "outputs"
    proc = run_cli(
        [
            str(BIN / "ns-train"), "posefix-small",
            "--data", str(TINY),
            "--output-dir", str(output),
            "--experiment-name", "e2e",
            "--timestamp", "run",
            "--max-num-iterations", "30",
            "--steps-per-save", "30",
            "--steps-per-eval-batch", "20",
            "--steps-per-eval-image", "20",
            "--vis", "tensorboard",
            "--logging.steps-per-log", "10",
            "--logging.local-writer.enable", "False",
            "--pipeline.datamanager.train-num-rays-per-batch", "512",
        ],
        env,
    )
    (output / "ns-train.log").write_text(proc.stdout + proc.stderr)
    return output / "e2e" / "posefix-small" / "run"


def test_ns_train_writes_checkpoint_and_pose_metrics(trained_run: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    checkpoints = sorted((trained_run / "nerfstudio_models").glob("step-*.ckpt"))
    assert [c.name for c in checkpoints] == ["step-000000029.ckpt"]
    assert (trained_run / "config.yml").is_file() and (trained_run / "dataparser_transforms.json").is_file()
    events = EventAccumulator(str(trained_run))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in (
        "Train Loss Dict/camera_opt_regularizer",
        "Train Metrics Dict/camera_opt_homography_mean",
        "Train Metrics Dict/camera_opt_rotation_mean",
        "Train Metrics Dict/camera_opt_translation_max",
        "Train Metrics Dict/pose_gt_rotation_median_deg",
        "Train Metrics Dict/pose_gt_translation_median",
        "Eval Images Metrics/psnr",
    ):
        assert tag in tags, f"{tag} not among {sorted(tags)}"
    assert "Eval Images Metrics/lpips" not in tags
    gt_rot = [e.value for e in events.Scalars("Train Metrics Dict/pose_gt_rotation_median_deg")]
    assert len(gt_rot) == 3 and all(0.0 < v < 20.0 for v in gt_rot)  # steps 0, 10, 20; the input is noisy
    moved = [e.value for e in events.Scalars("Train Metrics Dict/camera_opt_translation_max")]
    assert moved[0] == 0.0 and moved[-1] == 0.0  # the front end's tracks hold every camera: the NeRF keeps their adjusted poses


def test_ns_eval_loads_the_checkpoint_offline(trained_run: Path, env: dict[str, str]) -> None:
    output = Path(env["HOME_RUN"]) / "eval.json"
    proc = run_cli([str(BIN / "ns-eval"), "--load-config", str(trained_run / "config.yml"), "--output-path", str(output)], env)
    results = json.loads(output.read_text())
    assert results["method_name"] == "posefix-small"
    assert results["checkpoint"].endswith("step-000000029.ckpt")
    assert results["results"]["psnr"] > 5.0 and "ssim" in results["results"]
    assert "lpips" not in results["results"]
    assert "LPIPS disabled" in proc.stdout + proc.stderr
    assert "front end (reused)" in proc.stdout + proc.stderr  # the run's adjusted dataset, not a second adjustment


def test_ns_train_runs_the_front_end_into_the_run_directory(trained_run: Path) -> None:
    """The dataset's COLMAP model beside its transforms.json is bundle-adjusted before the first iteration;
    the result is cached in the run directory, the dataset is not written."""
    import subprocess as sp

    log = (trained_run.parents[2] / "ns-train.log").read_text()
    assert "posefix: front end: bundle adjustment (cauchy) of the COLMAP model's tracks on 16 images" in log
    result = json.loads((trained_run / "front_end" / "result.json").read_text())
    assert result["num_images"] == 16 and result["moved"]["rotation_deg_median"] > 0.0
    assert (trained_run / "front_end" / "dataset" / "transforms.json").is_file()
    status = sp.run(["git", "status", "--porcelain", "--ignored", str(TINY)], capture_output=True, text=True, cwd=ROOT)
    assert status.returncode != 0 or status.stdout == ""  # nothing written into the dataset (when in a git checkout)
