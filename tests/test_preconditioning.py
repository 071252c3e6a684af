"""The closed-form homography metric Q, CamP's sampled metric and the preconditioner."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation
from benchmarks import precondition_toy

from nerf_posefix.geometry.homography import homography_error
from nerf_posefix.geometry.preconditioning import (
    homography_metric,
    preconditioner,
    sampled_metric,
    skew,
    view_directions,
)


def correct(c2w: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """nerfstudio's correction: c2w' = [exp(ω) R | t + τ] for δ = (τ, ω)."""
    rot_adj = torch.linalg.matrix_exp(skew(delta[3:]))
    return torch.cat([rot_adj @ c2w[:3, :3], (c2w[:3, 3] + delta[:3])[:, None]], dim=1)


def random_pose(rng: np.random.Generator) -> torch.Tensor:
    c2w = np.eye(4)[:3]
    c2w[:, :3] = Rotation.random(random_state=rng.integers(1 << 31)).as_matrix()
    c2w[:, 3] = rng.normal(size=3)
    return torch.from_numpy(c2w)


@pytest.mark.parametrize("convention", ["opengl", "opencv"])
def test_metric_is_half_the_hessian_of_the_homography_error(convention: str) -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        c2w = random_pose(rng)
        xmin = float(rng.uniform(0.05, 2.0))
        xmax = xmin * float(rng.uniform(1.1, 100.0))

        def loss(delta: torch.Tensor) -> torch.Tensor:
            return homography_error(c2w, correct(c2w, delta), xmin, xmax, convention)

        hessian = torch.autograd.functional.hessian(loss, torch.zeros(6, dtype=torch.float64))
        metric = homography_metric(view_directions(c2w, convention)[None], xmin, xmax)[0]
        torch.testing.assert_close(metric, 0.5 * hessian, rtol=1e-8, atol=1e-12)


def test_metric_batches_and_is_positive_definite() -> None:
    rng = np.random.default_rng(1)
    c2w = torch.stack([random_pose(rng) for _ in range(8)])
    xmin = torch.from_numpy(rng.uniform(0.1, 1.0, 8))
    xmax = xmin * 50
    metric = homography_metric(view_directions(c2w), xmin, xmax)
    assert metric.shape == (8, 6, 6)
    torch.testing.assert_close(metric, metric.transpose(-1, -2))
    assert (torch.linalg.eigvalsh(metric) > 0).all()
    torch.testing.assert_close(metric[3], homography_metric(view_directions(c2w[3:4]), xmin[3], xmax[3])[0])


def test_preconditioner_whitens_the_metric() -> None:
    rng = np.random.default_rng(2)
    c2w = torch.stack([random_pose(rng) for _ in range(4)])
    metric = homography_metric(view_directions(c2w), 0.2, 30.0)
    p0 = preconditioner(metric, damping=0.0)
    torch.testing.assert_close(p0, p0.transpose(-1, -2))
    assert (torch.linalg.eigvalsh(p0) > 0).all()
    torch.testing.assert_close(p0 @ metric @ p0, torch.eye(6, dtype=torch.float64).expand(4, 6, 6), rtol=0, atol=1e-10)
    # with damping, P (M + λ diag M) P = I
    p = preconditioner(metric, damping=0.1)
    damped = metric + 0.1 * torch.diag_embed(torch.diagonal(metric, dim1=-2, dim2=-1))
    torch.testing.assert_close(p @ damped @ p, torch.eye(6, dtype=torch.float64).expand(4, 6, 6), rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="damping must be >= 0"):
        preconditioner(metric, damping=-1.0)
    with pytest.raises(ValueError, match="not positive definite"):
        preconditioner(torch.zeros(6, 6, dtype=torch.float64), damping=0.1)


def test_sampled_metric_matches_autograd_jacobians() -> None:
    """CamP's Σ against Jacobians of explicitly projected points (same samples)."""
    rng = np.random.default_rng(3)
    c2w = random_pose(rng)[None]  # OpenGL axes
    intrinsics = torch.tensor([60.0, 55.0, 32.0, 30.0], dtype=torch.float64)
    size = (64, 60)
    sigma = sampled_metric(c2w, 0.5, 4.0, intrinsics, size, num_points=7, generator=torch.Generator().manual_seed(0))

    # re-draw the same samples and project them through an explicit pose correction
    uniform = torch.rand((1, 7, 3), dtype=torch.float64, generator=torch.Generator().manual_seed(0))[0]
    pixels = uniform[:, :2] * torch.tensor(size, dtype=torch.float64)
    depth = 0.5 + uniform[:, 2] * 3.5
    cam_cv = depth[:, None] * torch.cat([(pixels - intrinsics[2:]) / intrinsics[:2], torch.ones(7, 1, dtype=torch.float64)], 1)
    cam_gl = cam_cv * torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64)
    world = cam_gl @ c2w[0, :3, :3].T + c2w[0, :3, 3]

    def project(delta: torch.Tensor) -> torch.Tensor:
        pose = correct(c2w[0], delta)
        local = (world - pose[:, 3]) @ pose[:, :3]  # OpenGL camera frame
        return torch.stack([local[:, 0] / -local[:, 2], -local[:, 1] / -local[:, 2]], dim=-1).reshape(-1)

    jac = torch.autograd.functional.jacobian(project, torch.zeros(6, dtype=torch.float64))  # [14, 6]
    torch.testing.assert_close(sigma[0], jac.T @ jac / 7, rtol=1e-9, atol=1e-12)


def test_preconditioned_gradient_descent_needs_fewer_steps() -> None:
    """One camera perturbed by 3 deg / 5 %; the objective is the mean squared reprojection error of
    points in its frustum, minimal at the true pose (``benchmarks/precondition_toy.py``, which also runs Adam).
    Each method gets its best fixed step size from the same grid."""
    toy = precondition_toy
    problem = toy.toy_problem(seed=4)
    grid = (4.0 ** np.arange(-2, 4)).tolist()
    plain, _ = toy.best_steps(problem, toy.preconditioner_for(problem, "off"), "gd", grid, 1e-6, 600)
    precond, _ = toy.best_steps(problem, toy.preconditioner_for(problem, "homography"), "gd", grid, 1e-6, 600)
    assert plain > 2 * precond, (plain, precond)
    assert precond < 100, precond

