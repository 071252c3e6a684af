"""Grouped statistics (geometry/grouped.py) and the batched model residuals (sfm/residuals.py) against
per-group / per-image reference computations."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from nerf_posefix.geometry.grouped import grouped_count, grouped_median, grouped_sorted_element
from nerf_posefix.geometry.homography import depth_bounds_from_points
from nerf_posefix.io.colmap import read_colmap_model
from nerf_posefix.sfm.residuals import model_residuals

SCENE = Path(__file__).resolve().parents[1] / "assets" / "toybox"


def test_grouped_statistics_match_per_group_numpy() -> None:
    rng = np.random.default_rng(0)
    n = 7
    groups = rng.integers(0, n - 1, size=500)  # the last group stays empty
    values = rng.normal(size=500)
    values[rng.random(500) < 0.1] = np.nan
    med, count = grouped_median(values, groups, n), grouped_count(values, groups, n)
    low = grouped_sorted_element(values, groups, n, 0.025)
    for g in range(n):
        mine = values[(groups == g) & ~np.isnan(values)]
        assert count[g] == mine.size
        if mine.size == 0:
            assert np.isnan(med[g]) and np.isnan(low[g])
            continue
        assert med[g] == pytest.approx(np.median(mine), abs=1e-15)
        assert low[g] == np.sort(mine)[int(0.025 * (mine.size - 1))]
    with pytest.raises(ValueError):
        grouped_sorted_element(values, groups, n, 1.5)


def test_model_residuals_match_the_per_image_reference() -> None:
    model = read_colmap_model(SCENE / "sparse" / "0")
    cam = model.cameras[1]  # add distortion, so the projection's camera model matters
    model = replace(model, cameras={1: cam._replace(model="OPENCV", params=np.array([*cam.params, 0.02, -0.01, 0.001, 0.002]))})
    res = model_residuals(model)
    cams = model.to_camera_set()
    obs = model.observations()
    assert res.image_index.tolist() == obs.image_index.tolist()
    # depth: the camera-frame z of each observed point; per image bounds as the homography module computes them
    per_image = [torch.from_numpy(cams.points[obs.point_index[obs.image_index == k]]) for k in range(len(cams))]
    xmin, xmax = depth_bounds_from_points(torch.from_numpy(cams.c2w), per_image, camera_convention="opencv")
    np.testing.assert_allclose(grouped_sorted_element(res.depth, res.image_index, len(cams), 0.025), xmin.numpy(), rtol=1e-12)
    np.testing.assert_allclose(grouped_sorted_element(res.depth, res.image_index, len(cams), 0.975), xmax.numpy(), rtol=1e-12)
    # residual: pycolmap's projection of the same points with the distorted camera, image by image
    import pycolmap

    pc = pycolmap.Camera(model="OPENCV", width=cam.width, height=cam.height, params=[*cam.params, 0.02, -0.01, 0.001, 0.002])
    k = 5
    w2c = np.linalg.inv(cams.c2w[k])
    pts = cams.points[obs.point_index[obs.image_index == k]] @ w2c[:3, :3].T + w2c[:3, 3]
    expected = np.linalg.norm(pc.img_from_cam(pts) - obs.xy[obs.image_index == k], axis=1)
    np.testing.assert_allclose(res.residual_px[res.image_index == k], expected, rtol=1e-9, atol=1e-9)
    assert res.valid.all() and np.median(res.residual_px) > 0.05  # (1.6e-14 without it) the distortion moved the projections
