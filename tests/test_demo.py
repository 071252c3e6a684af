"""Issue 24: ``posefix demo`` shows the best path in under a minute.

The default demo perturbs the bundled scene by 3 deg / 5 % and runs ``posefix refine``'s default pipeline
(tracks built from the images, robust bundle adjustment): the errors must be those of the pipeline's
benchmark row (toybox 3 deg / 5 %: 0.050 deg, 0.099 % of the scene radius) or better, within 60 s.
``--nerf`` adds the two NeRF refiners as rows of the same table (a 2-iteration run here, to check the
path, not its accuracy).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from nerf_posefix.cli.main import main
from nerf_posefix.workflows.demo import NERF_NERFSTUDIO, NERF_POSEFIX, NOISY, REFINED


def test_demo_runs_the_default_pipeline_in_under_a_minute(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    out = tmp_path / "demo"
    code = main(["demo", "--output", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["total_seconds"] < 60, summary["total_seconds"]
    before, after = summary["errors"][NOISY], summary["errors"][REFINED]
    assert before["rotation_median_deg"] > 2.5 and before["translation_median_rel"] > 0.04
    # the benchmark row of the default pipeline (0.050 deg / 0.099 %, demo seed 0.049 / 0.102 %) or better
    assert after["rotation_median_deg"] < 0.06 and after["translation_median_rel"] < 0.0012, after
    assert summary["num_cameras"] == 64 and summary["flagged"] == 0
    assert set(summary["errors"]) == {NOISY, REFINED} and not (out / "nerf").exists()
    for path in ("data/transforms.json", "data/transforms_gt.json", "refined/transforms.json", "refined/report.csv",
                 "compare/error_cdf.png", "compare/top_view.png", "compare/per_camera.csv"):
        assert (out / path).is_file(), path
    text = captured.out
    assert "posefix refine (default)" in text and "noisy input" in text and "x smaller" in text
    wrote = text.split("\nwrote\n", 1)[1].splitlines()
    paths = [line.split()[0] for line in wrote]
    assert paths == [str(out / p) for p in ("data", "refined", "compare", "summary.json")]  # each once, with what it holds
    assert all(len(line.split(None, 1)) == 2 for line in wrote)


def test_demo_nerf_adds_the_nerf_refiners(tmp_path: Path, capsys, one_torch_thread) -> None:  # noqa: ANN001
    out = tmp_path / "demo"
    code = main(["demo", "--output", str(out), "--nerf", "--iterations", "2", "--threads", "1"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["errors"]) == [NOISY, REFINED, NERF_POSEFIX, NERF_NERFSTUDIO]
    assert summary["num_cameras"] == 56  # every 8th view is a test view at its exact pose
    for label in (NERF_POSEFIX, NERF_NERFSTUDIO):
        info = summary["nerf"][label]
        assert Path(info["refined"]).is_dir() and info["test_psnr"] is not None
    assert "NeRF, homography prior, 2 it" in captured.out and "NeRF, nerfstudio's L2, 2 it" in captured.out


def test_demo_output_that_cannot_be_created_is_one_line_in_words(capsys) -> None:  # noqa: ANN001
    if not os.path.isdir("/proc/self"):
        pytest.skip("needs /proc")
    code = main(["demo", "--output", "/proc/posefix-demo-test"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "[Errno" not in err[0] and "--output /proc/posefix-demo-test: cannot create it: /proc" in err[0], err
