"""The synthetic survey's ``"adjusted"`` handover (issue 23): the perturbed model after pycolmap's squared-loss
bundle adjustment, as a mapper hands its model over.

Fast: a 30-image survey (tracks only, no images), one squared-loss adjustment (well under a second).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pycolmap
import pytest

from benchmarks.synthetic_model import SyntheticConfig, generate, generate_handover, reprojection_errors, write_synthetic
from nerf_posefix.sfm.bundle_adjustment import reconstruction_c2w

CONFIG = SyntheticConfig(num_images=30, seed=2)


@pytest.fixture(scope="module")
def adjusted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic(generate_handover(CONFIG, "adjusted"), tmp_path_factory.mktemp("adjusted"), images=False)


def test_adjusted_handover_is_a_squared_loss_minimum_of_the_same_tracks(adjusted: Path) -> None:
    perturbed = generate(CONFIG)
    meta = json.loads((adjusted / "synthetic.json").read_text(encoding="utf-8"))
    assert meta["handover"] == "adjusted"
    record = meta["handover_record"]
    assert record["solver"]["loss"] == "trivial" and record["solver"]["termination"] == "CONVERGENCE"
    # the same tracks: every image, point and observation handed over
    rec = pycolmap.Reconstruction(str(adjusted / "sparse" / "0"))
    assert rec.num_reg_images() == 30
    assert rec.num_points3D() == perturbed.points.shape[0]
    assert rec.compute_num_observations() == perturbed.xy.shape[0]
    # the perturbed model's residuals are the poses' ~2 px; the adjusted one's the keypoints' 0.5 px noise
    # (plus the 2 % outliers, which the squared loss fits partly)
    before = reprojection_errors(perturbed).mean()
    names, c2w = reconstruction_c2w(rec)
    xyz = np.array([rec.points3D[k + 1].xyz for k in range(rec.num_points3D())])
    after = reprojection_errors(perturbed, c2w, xyz).mean()
    assert before > 1.5 and after < 0.5 * before and after < 1.0
    assert record["perturbed"]["reprojection_mean_px"] == pytest.approx(before)
    assert record["handed_over"]["reprojection_mean_px"] == pytest.approx(after, rel=1e-6)
    # the poses moved towards the truth (Sim(3)-aligned errors), the gauge left near the perturbed frame
    assert record["handed_over"]["rotation_median_deg"] < record["perturbed"]["rotation_median_deg"]
    assert names == perturbed.names
    assert np.abs(c2w[:, :3, 3] - perturbed.c2w[:, :3, 3]).max() < 0.1
