"""Reprojection of SfM observations against pycolmap, hand-written formulas, gradcheck and Ceres' losses."""

from __future__ import annotations

import math

import numpy as np
import pycolmap
import pytest
import torch
from scipy.spatial.transform import Rotation

from nerf_posefix.geometry.preconditioning import skew
from nerf_posefix.geometry.reprojection import (
    CAMERA_MODEL_PARAMS,
    CameraIntrinsics,
    in_front_mask,
    project_camera_points,
    reproject,
    reprojection_residuals,
    robust_loss,
    world_to_camera_points,
)

WIDTH, HEIGHT = 640, 480

#: Parameters with non-zero distortion for every model (COLMAP's order).
MODEL_PARAMS: dict[str, list[float]] = {
    "SIMPLE_PINHOLE": [520.0, 318.5, 241.25],
    "PINHOLE": [520.0, 505.0, 318.5, 241.25],
    "SIMPLE_RADIAL": [520.0, 318.5, 241.25, -0.12],
    "RADIAL": [520.0, 318.5, 241.25, -0.12, 0.04],
    "OPENCV": [520.0, 505.0, 318.5, 241.25, -0.12, 0.04, 0.003, -0.002],
}


def camera_points(rng: np.random.Generator, n: int) -> np.ndarray:
    """``[n, 3]`` points in front of an OpenCV camera, normalised coordinates within ±0.7."""
    z = rng.uniform(0.5, 8.0, size=n)
    uv = rng.uniform(-0.7, 0.7, size=(n, 2))
    return np.column_stack([uv * z[:, None], z])


def random_c2w(rng: np.random.Generator, n: int) -> np.ndarray:
    c2w = np.tile(np.eye(4), (n, 1, 1))
    c2w[:, :3, :3] = Rotation.random(n, random_state=int(rng.integers(1 << 31))).as_matrix()
    c2w[:, :3, 3] = rng.normal(scale=3.0, size=(n, 3))
    return c2w


def colmap_camera(model: str, params: list[float]) -> pycolmap.Camera:
    return pycolmap.Camera(model=model, width=WIDTH, height=HEIGHT, params=params)


def test_parameter_orders_match_pycolmap() -> None:
    for model, names in CAMERA_MODEL_PARAMS.items():
        camera = colmap_camera(model, MODEL_PARAMS[model])
        assert camera.params_info.replace(" ", "").split(",") == list(names)


@pytest.mark.parametrize("model", list(CAMERA_MODEL_PARAMS))
def test_projection_matches_pycolmap(model: str) -> None:
    rng = np.random.default_rng(list(CAMERA_MODEL_PARAMS).index(model))
    points = camera_points(rng, 500)
    expected = colmap_camera(model, MODEL_PARAMS[model]).img_from_cam(points)  # [n, 2]
    ours = project_camera_points(torch.from_numpy(points), model, MODEL_PARAMS[model]).numpy()
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6)
    # the distortion is not negligible: ignoring it would be off by many pixels
    num_extra = {"SIMPLE_RADIAL": 1, "RADIAL": 2, "OPENCV": 4}.get(model, 0)
    if num_extra:
        undistorted = MODEL_PARAMS[model][:-num_extra] + [0.0] * num_extra
        pinhole = project_camera_points(torch.from_numpy(points), model, undistorted).numpy()
        assert np.max(np.abs(pinhole - expected)) > 5.0
    # float32 follows float64 to float32 precision
    ours32 = project_camera_points(torch.from_numpy(points).float(), model, MODEL_PARAMS[model])
    assert ours32.dtype == torch.float32
    np.testing.assert_allclose(ours32.numpy(), expected, rtol=0, atol=2e-3)


def test_projection_matches_hand_written_radial() -> None:
    rng = np.random.default_rng(3)
    points = camera_points(rng, 200)
    f, cx, cy, k1, k2 = MODEL_PARAMS["RADIAL"]
    u, v = points[:, 0] / points[:, 2], points[:, 1] / points[:, 2]
    r2 = u**2 + v**2
    scale = 1.0 + k1 * r2 + k2 * r2**2
    expected = np.column_stack([f * u * scale + cx, f * v * scale + cy])
    ours = project_camera_points(torch.from_numpy(points), "RADIAL", MODEL_PARAMS["RADIAL"]).numpy()
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-9)
    # plain pinhole: the principal point is where the optical axis lands
    axis = project_camera_points(torch.tensor([[0.0, 0.0, 2.0]]), "PINHOLE", MODEL_PARAMS["PINHOLE"])
    np.testing.assert_allclose(axis.numpy(), [[318.5, 241.25]])


def test_batched_params_per_point() -> None:
    rng = np.random.default_rng(4)
    points = camera_points(rng, 6)
    params = np.array(MODEL_PARAMS["OPENCV"])[None] * rng.uniform(0.8, 1.2, size=(6, 8))
    ours = project_camera_points(torch.from_numpy(points), "OPENCV", torch.from_numpy(params)).numpy()
    for i in range(6):
        expected = colmap_camera("OPENCV", list(params[i])).img_from_cam(points[i : i + 1])
        np.testing.assert_allclose(ours[i : i + 1], expected, atol=1e-6)


def test_unknown_model_and_bad_params_raise() -> None:
    points = torch.ones(2, 3)
    with pytest.raises(ValueError, match=r"'FISHEYE_X'.*SIMPLE_PINHOLE.*OPENCV"):
        project_camera_points(points, "FISHEYE_X", [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"params for camera model PINHOLE must have shape \[\.\.\., 4\]"):
        project_camera_points(points, "PINHOLE", [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="points_cam"):
        project_camera_points(torch.ones(2, 2), "PINHOLE", [1.0, 1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match=r"camera 1: .*'KANNALA'"):
        CameraIntrinsics(["PINHOLE", "KANNALA"], [[1.0, 1.0, 0.0, 0.0], [1.0]])


def test_world_to_camera_points() -> None:
    rng = np.random.default_rng(5)
    c2w = random_c2w(rng, 7)
    points = rng.normal(size=(7, 3))
    expected = np.einsum("nij,nj->ni", np.linalg.inv(c2w), np.column_stack([points, np.ones(7)]))[:, :3]
    for pose in (c2w, c2w[:, :3, :]):
        ours = world_to_camera_points(torch.from_numpy(pose), torch.from_numpy(points)).numpy()
        np.testing.assert_allclose(ours, expected, atol=1e-12)
    # broadcasting: one pose, many points
    one = world_to_camera_points(torch.from_numpy(c2w[0]), torch.from_numpy(points)).numpy()
    np.testing.assert_allclose(one[0], expected[0], atol=1e-12)


def observations(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Random OpenCV c2w poses ``[n, 4, 4]`` and world points ``[n, 3]`` in front of them."""
    c2w = random_c2w(rng, n)
    points_cam = camera_points(rng, n)
    points_world = np.einsum("nij,nj->ni", c2w[:, :3, :3], points_cam) + c2w[:, :3, 3]
    return c2w, points_world


@pytest.mark.parametrize("model", ["SIMPLE_RADIAL", "OPENCV"])
def test_residuals_match_pycolmap_rigid3d(model: str) -> None:
    rng = np.random.default_rng(6)
    c2w, points_world = observations(rng, 40)
    camera = colmap_camera(model, MODEL_PARAMS[model])
    expected = []
    for i in range(40):
        rot_w2c = c2w[i, :3, :3].T
        cam_from_world = pycolmap.Rigid3d(pycolmap.Rotation3d(rot_w2c), -rot_w2c @ c2w[i, :3, 3])
        expected.append(camera.img_from_cam(cam_from_world * points_world[i : i + 1])[0])
    expected = np.array(expected)
    observed = expected + rng.normal(scale=2.0, size=expected.shape)
    residuals = reprojection_residuals(
        torch.from_numpy(c2w), torch.from_numpy(points_world), torch.from_numpy(observed), model, MODEL_PARAMS[model]
    ).numpy()
    np.testing.assert_allclose(residuals, expected - observed, rtol=0, atol=1e-6)


def test_camera_intrinsics_mixes_models() -> None:
    rng = np.random.default_rng(7)
    models = list(CAMERA_MODEL_PARAMS) * 2  # 10 cameras, two of each model
    params = [list(np.array(MODEL_PARAMS[m]) * rng.uniform(0.9, 1.1, size=len(MODEL_PARAMS[m]))) for m in models]
    intrinsics = CameraIntrinsics(models, params)
    c2w, points_world = observations(rng, 60)
    camera_indices = rng.integers(0, len(models), size=60)
    expected = np.array(
        [
            colmap_camera(models[c], params[c]).img_from_cam(
                (c2w[i, :3, :3].T @ (points_world[i] - c2w[i, :3, 3]))[None]
            )[0]
            for i, c in enumerate(camera_indices)
        ]
    )
    observed = expected + 1.5
    residuals, valid = intrinsics.residuals(
        torch.from_numpy(c2w),
        torch.from_numpy(points_world),
        torch.from_numpy(observed),
        torch.from_numpy(camera_indices),
    )
    assert bool(valid.all())
    np.testing.assert_allclose(residuals.numpy(), expected - observed, atol=1e-6)
    with pytest.raises(ValueError, match="camera_indices contains 10"):
        intrinsics.project(torch.ones(1, 3, dtype=torch.float64), torch.tensor([10]))
    # float32 copy
    residuals32, _ = intrinsics.to(dtype=torch.float32).residuals(
        torch.from_numpy(c2w).float(),
        torch.from_numpy(points_world).float(),
        torch.from_numpy(observed).float(),
        torch.from_numpy(camera_indices),
    )
    assert residuals32.dtype == torch.float32
    np.testing.assert_allclose(residuals32.numpy(), expected - observed, atol=5e-2)


def corrected_pose(c2w: torch.Tensor, correction: torch.Tensor) -> torch.Tensor:
    """nerfstudio's correction: ``R' = exp([ω]×) R``, ``C' = C + t`` for ``correction = (t, ω)``."""
    rot = torch.linalg.matrix_exp(skew(correction[:, 3:])) @ c2w[:, :3, :3]
    centre = c2w[:, :3, 3] + correction[:, :3]
    return torch.cat([rot, centre.unsqueeze(-1)], dim=-1)


@pytest.mark.parametrize("model", ["SIMPLE_RADIAL", "OPENCV"])
def test_gradcheck_pose_and_points(model: str) -> None:
    rng = np.random.default_rng(8)
    c2w, points_world = observations(rng, 5)
    c2w_t = torch.from_numpy(c2w)
    observed = torch.from_numpy(rng.uniform(0, 600, size=(5, 2)))
    params = torch.tensor(MODEL_PARAMS[model], dtype=torch.float64)
    correction = torch.from_numpy(rng.normal(scale=0.05, size=(5, 6))).requires_grad_(True)
    points = torch.from_numpy(points_world).requires_grad_(True)

    def residuals(corr: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
        return reprojection_residuals(corrected_pose(c2w_t, corr), pts, observed, model, params)

    assert torch.autograd.gradcheck(residuals, (correction, points), eps=1e-6, atol=1e-5, rtol=1e-5)


def test_points_behind_camera_are_masked_with_finite_gradients() -> None:
    for dtype in (torch.float32, torch.float64):
        points_cam = torch.tensor(
            [[0.1, 0.2, 2.0], [0.1, 0.2, -1.0], [0.3, -0.1, 0.0], [0.0, 0.0, 1e-30]], dtype=dtype, requires_grad=True
        )
        c2w = torch.eye(4, dtype=dtype).expand(4, 4, 4)
        observed = torch.full((4, 2), 300.0, dtype=dtype)
        projection = reproject(c2w, points_cam, "OPENCV", MODEL_PARAMS["OPENCV"])
        assert projection.valid.tolist() == [True, False, False, False]
        assert torch.equal(in_front_mask(points_cam), projection.valid)
        residuals = reprojection_residuals(c2w, points_cam, observed, "OPENCV", MODEL_PARAMS["OPENCV"])
        assert torch.isfinite(residuals).all()
        assert torch.equal(residuals[1:], torch.zeros(3, 2, dtype=dtype))
        for kind in ("squared", "huber", "cauchy", "soft_l1"):
            points_cam.grad = None
            robust_loss(residuals.square().sum(-1), kind, 2.0).sum().backward(retain_graph=True)
            assert torch.isfinite(points_cam.grad).all()
            assert torch.equal(points_cam.grad[1:], torch.zeros(3, 3, dtype=dtype))
            assert points_cam.grad[0].abs().sum() > 0


def ceres_loss(s: float, kind: str, a: float) -> float:
    b = a * a
    if kind == "huber":
        return s if s <= b else 2.0 * a * math.sqrt(s) - b
    if kind == "cauchy":
        return b * math.log(1.0 + s / b)
    if kind == "soft_l1":
        return 2.0 * b * (math.sqrt(1.0 + s / b) - 1.0)
    return s


@pytest.mark.parametrize("kind", ["squared", "huber", "cauchy", "soft_l1"])
def test_robust_losses_follow_ceres(kind: str) -> None:
    a = 1.7
    s_values = [0.0, 0.01, 1.0, 2.5, 2.89, 3.5, 40.0, 1e4]
    s = torch.tensor(s_values, dtype=torch.float64, requires_grad=True)
    rho = robust_loss(s, kind, a)
    np.testing.assert_allclose(rho.detach().numpy(), [ceres_loss(v, kind, a) for v in s_values], rtol=1e-12, atol=1e-15)
    (grad,) = torch.autograd.grad(rho.sum(), s)
    assert torch.isfinite(grad).all()
    assert grad[0].item() == pytest.approx(1.0, abs=1e-12)  # ρ'(0) = 1
    # ρ(s) ≈ s for small s, in float32 as well (no cancellation)
    small = torch.tensor([1e-10, 1e-6], dtype=torch.float32)
    np.testing.assert_allclose(robust_loss(small, kind, a).numpy(), small.numpy(), rtol=1e-5)
    # derivatives of Ceres' losses
    b = a * a
    expected_grad = {
        "squared": [1.0] * len(s_values),
        "huber": [1.0 if v <= b else a / math.sqrt(v) for v in s_values],
        "cauchy": [1.0 / (1.0 + v / b) for v in s_values],
        "soft_l1": [1.0 / math.sqrt(1.0 + v / b) for v in s_values],
    }[kind]
    np.testing.assert_allclose(grad.numpy(), expected_grad, rtol=1e-10)


def test_huber_is_linear_in_norm_beyond_scale() -> None:
    a = 2.0
    norms = torch.tensor([2.5, 3.0, 10.0, 100.0], dtype=torch.float64)
    rho = robust_loss(norms.square(), "huber", a)
    slopes = (rho[1:] - rho[:-1]) / (norms[1:] - norms[:-1])
    np.testing.assert_allclose(slopes.numpy(), 2.0 * a, rtol=1e-12)
    # continuous (value and slope) at the scale
    at = robust_loss(torch.tensor([a * a - 1e-9, a * a + 1e-9], dtype=torch.float64), "huber", a)
    assert abs(at[1] - at[0]) < 1e-8
    inside = robust_loss(torch.tensor([1.0, 3.9], dtype=torch.float64), "huber", a)
    np.testing.assert_allclose(inside.numpy(), [1.0, 3.9])


def test_robust_loss_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="'tukey'"):
        robust_loss(torch.ones(2), "tukey", 1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="scale_px"):
        robust_loss(torch.ones(2), "huber", 0.0)


def test_auto_robust_scale_is_twice_the_median_residual_clipped() -> None:
    """Gaussian keypoint noise of 0.3 px per axis: median norm 1.177 σ, scale ≈ 0.71 px; clipped at both ends;
    a torch tensor and an array give the same scale; no residual is an error."""
    from nerf_posefix.geometry.robust_scale import AUTO_SCALE_MAX_PX, AUTO_SCALE_MIN_PX, auto_robust_scale

    rng = np.random.default_rng(0)
    norms = np.linalg.norm(rng.normal(scale=0.3, size=(20000, 2)), axis=-1)
    assert auto_robust_scale(norms) == pytest.approx(2.0 * 1.1774 * 0.3, rel=0.02)
    assert auto_robust_scale(torch.from_numpy(norms)) == auto_robust_scale(norms)
    assert auto_robust_scale(norms * 100) == AUTO_SCALE_MAX_PX and auto_robust_scale(norms / 100) == AUTO_SCALE_MIN_PX
    with pytest.raises(ValueError):
        auto_robust_scale([])
