"""``posefix refine --intrinsics``: the adjustment of a COLMAP model's own tracks may refine its cameras, and the output
model carries them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from cli_helpers import TINY, cli, refused
from scene_helpers import PRINCIPAL_POINT_SHIFT_PX, tiny_model_with_moved_principal_point

from nerf_posefix.geometry.metrics import pairwise_rotation_errors
from nerf_posefix.sfm.bundle_adjustment import reconstruction_c2w


def test_focal_pp_brings_back_the_principal_point_and_the_output_carries_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    truth, (ix, iy) = tiny_model_with_moved_principal_point(tmp_path / "model")
    c2w = reconstruction_c2w(pycolmap.Reconstruction(str(TINY / "sparse" / "0")))[1]  # the truth: [N, 4, 4]
    errors = {}
    for mode in ("fixed", "focal-pp"):
        out = tmp_path / mode
        code, _ = cli(capsys, "refine", "--colmap-model", tmp_path / "model", "--images", TINY / "images", "--output", out,
                      "--iterations", "0", "--intrinsics", mode, "--threads", "1")
        assert code == 0
        rec = pycolmap.Reconstruction(str(out / "sparse" / "0"))
        params = np.array(rec.cameras[next(iter(rec.cameras))].params)
        errors[mode] = pairwise_rotation_errors(c2w, reconstruction_c2w(rec)[1]).max()
        meta = json.loads((out / "transforms.json").read_text())
        summary = json.loads((out / "report.json").read_text())["summary"]["bundle_adjustment"]
        if mode == "fixed":
            assert (params[ix], params[iy]) == (truth[ix] + PRINCIPAL_POINT_SHIFT_PX[0], truth[iy] + PRINCIPAL_POINT_SHIFT_PX[1])  # held
            assert "cameras" not in summary
        else:
            np.testing.assert_allclose(params[[ix, iy]], truth[[ix, iy]], atol=0.05)  # the principal point is back
            assert meta["cx"] == pytest.approx(params[ix]) and meta["cy"] == pytest.approx(params[iy])  # transforms.json too
            assert summary["cameras"]["1"]["after"] == pytest.approx(list(params))
    assert errors["focal-pp"] < 1e-3 < errors["fixed"]


def test_intrinsics_refused_where_nothing_refines_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    refused(capsys, "refine", "--poses", TINY / "transforms.json", "--output", tmp_path / "a", "--intrinsics", "focal",
            says=("--intrinsics focal", "built from the images"))
    refused(capsys, "refine", "--colmap-model", TINY / "sparse" / "0", "--images", TINY / "images", "--output", tmp_path / "b",
            "--intrinsics", "focal-pp", "--bundle-adjustment", "none", says=("--bundle-adjustment none",))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
