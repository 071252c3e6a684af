"""How well the tracks hold each camera (:mod:`nerf_posefix.sfm.support`), on toybox_tiny's COLMAP model
(16 images, ~430 observations each) with some images' observations removed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pycolmap
import pytest

from nerf_posefix.sfm.support import (
    MIN_OBSERVATIONS,
    WEAK_PRIOR_SIGMA_PX,
    image_support,
    prior_sigma_px,
    summarise,
)

TINY = Path(__file__).resolve().parents[1] / "assets" / "toybox_tiny" / "sparse" / "0"


def _keep_observations(rec: pycolmap.Reconstruction, image_id: int, keep: int) -> None:
    """Delete all but ``keep`` of an image's observations (points left with < 2 observations go too)."""
    image = rec.images[image_id]
    observed = [k for k, p in enumerate(image.points2D) if p.has_point3D()]
    for k in observed[keep:]:
        point_id = rec.images[image_id].points2D[k].point3D_id
        if rec.points3D[point_id].track.length() <= 2:
            rec.delete_point3D(point_id)
        else:
            rec.delete_observation(image_id, k)


@pytest.fixture()
def rec() -> pycolmap.Reconstruction:
    return pycolmap.Reconstruction(str(TINY))


def test_every_camera_of_a_complete_model_is_held(rec: pycolmap.Reconstruction) -> None:
    support = image_support(rec)
    assert len(support) == 16 and not any(s.weak for s in support)
    assert all(s.observations > 300 and s.group == 0 for s in support)
    sigma = np.array([s.sigma_rotation_deg for s in support])
    assert np.all(np.isfinite(sigma)) and np.all(sigma > 0) and np.all(sigma < 0.1)
    assert summarise(support)["num_weak"] == 0


def test_a_camera_with_few_observations_is_weak_and_less_certain(rec: pycolmap.Reconstruction) -> None:
    before = {s.name: s for s in image_support(rec)}
    thin_id = next(i for i in rec.reg_image_ids() if rec.images[i].name == "005.png")
    _keep_observations(rec, thin_id, MIN_OBSERVATIONS - 10)
    after = {s.name: s for s in image_support(rec)}
    thin = after["005.png"]
    assert thin.weak and "few tracks" in thin.reason and thin.observations == MIN_OBSERVATIONS - 10
    assert thin.sigma_rotation_deg > 2 * before["005.png"].sigma_rotation_deg  # fewer observations, a less certain pose
    assert [n for n, s in after.items() if s.weak] == ["005.png"]
    assert prior_sigma_px(thin.to_dict()) == WEAK_PRIOR_SIGMA_PX
    held = after["000.png"].to_dict()
    assert prior_sigma_px(held) == pytest.approx(max(held["residual_px"], held["sigma_px"], 0.05))
    counts = summarise(list(after.values()))
    assert counts["num_weak"] == 1 and counts["weak_by_reason"]["few tracks"]["images"] == ["005.png"]


def test_a_camera_without_observations_has_no_finite_uncertainty(rec: pycolmap.Reconstruction) -> None:
    lone_id = next(i for i in rec.reg_image_ids() if rec.images[i].name == "010.png")
    _keep_observations(rec, lone_id, 0)
    lone = next(s for s in image_support(rec) if s.name == "010.png")
    assert lone.weak and lone.observations == 0 and not np.isfinite(lone.sigma_rotation_deg)


def test_the_pipeline_takes_each_cameras_prior_sigma_from_the_dataset(tmp_path: Path) -> None:
    """``posefix refine`` records σ per frame in its NeRF stage's transforms.json; the pipeline's pixels prior
    uses it (frames without it keep σ from their own residuals)."""
    import json
    import shutil

    from nerf_posefix.io.transforms_json import HELD_KEY, PRIOR_SIGMA_KEY
    from nerf_posefix.plugin.method_configs import posefix_small_config

    data = tmp_path / "data"
    shutil.copytree(TINY.parents[1], data)
    meta = json.loads((data / "transforms.json").read_text())
    given = {}
    for k, frame in enumerate(meta["frames"]):
        if k % 4 == 0:
            frame[PRIOR_SIGMA_KEY] = given[Path(frame["file_path"]).name] = float(WEAK_PRIOR_SIGMA_PX if k % 8 == 0 else 0.3)
        frame[HELD_KEY] = not (k % 8 == 0)
    (data / "transforms.json").write_text(json.dumps(meta))
    config = posefix_small_config().pipeline
    config.datamanager.data = data
    config.datamanager.dataparser.eval_mode = "all"
    config.front_end = "off"
    config.model.camera_optimizer.prior = "pixels"
    pipeline = config.setup(device="cpu", test_mode="val")
    sigma = pipeline.model.camera_optimizer.prior_sigma
    names = [Path(p).name for p in pipeline.datamanager.train_dataparser_outputs.image_filenames]
    for name, value in zip(names, sigma.tolist()):
        if name in given:
            assert value == pytest.approx(given[name])
        else:
            assert 0.05 <= value < 5.0  # its median residual at the input pose
    assert len(given) == 4
    # the weakly held cameras are the ones the NeRF refines; the others keep their pose (no adjustment)
    optimizer = pipeline.model.camera_optimizer
    weak = [n for n in names if n in given and given[n] == WEAK_PRIOR_SIGMA_PX]
    assert [n for n, h in zip(names, optimizer.held.tolist()) if not h] == weak
    import torch

    with torch.no_grad():
        optimizer.pose_adjustment.normal_(std=0.01)
    tangent = optimizer.pose_tangent()
    assert torch.all(tangent[optimizer.held] == 0) and torch.all(tangent[~optimizer.held].abs().sum(-1) > 0)
