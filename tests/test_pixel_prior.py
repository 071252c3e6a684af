"""The pixel-displacement pose prior against quadrature, Monte Carlo, hand-derived cases and invariances."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from nerf_posefix.geometry.preconditioning import skew
from nerf_posefix.geometry.homography import relative_pose
from nerf_posefix.geometry.pixel_prior import (
    apply_adjustment,
    camera_motion_from_adjustment,
    pixel_displacement_metric,
    pixel_prior,
    sampled_pixel_displacement,
)

FLIP = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64))  # OpenCV <-> OpenGL camera axes


def random_c2w(rng: np.random.Generator, n: int) -> torch.Tensor:
    c2w = np.tile(np.eye(4), (n, 1, 1))
    c2w[:, :3, :3] = Rotation.random(n, random_state=int(rng.integers(1 << 31))).as_matrix()
    c2w[:, :3, 3] = rng.normal(scale=3.0, size=(n, 3))
    return torch.from_numpy(c2w)


def random_intrinsics(rng: np.random.Generator, n: int) -> dict[str, torch.Tensor]:
    """Off-centre principal points, fx != fy, various aspect ratios and depth ranges."""
    width = rng.uniform(300, 1200, size=n)
    height = rng.uniform(200, 900, size=n)
    fx = rng.uniform(0.6, 1.5, size=n) * width
    fy = fx * rng.uniform(0.9, 1.1, size=n)
    cx = width * rng.uniform(0.35, 0.65, size=n)
    cy = height * rng.uniform(0.35, 0.65, size=n)
    xmin = rng.uniform(0.3, 3.0, size=n)
    xmax = xmin * rng.uniform(1.5, 30.0, size=n)
    values = dict(fx=fx, fy=fy, cx=cx, cy=cy, width=width, height=height, xmin=xmin, xmax=xmax)
    return {k: torch.from_numpy(v) for k, v in values.items()}


def quadrature_metric(fx, fy, cx, cy, width, height, xmin, xmax) -> np.ndarray:
    """``M = E[J_pixᵀ J_pix]`` by Gauss-Legendre quadrature, with ``J_pix`` the autograd Jacobian of the
    exact projection of ``X' = exp([ω]×) X + t`` at ``φ = 0`` (no hand-derived formula).

    4 nodes per image axis integrate the degree-4 polynomials exactly; 40 nodes in depth integrate
    ``1``, ``1/x`` and ``1/x²`` over ``[xmin, xmax]`` (pole at 0, outside) to ~1e-16.
    """
    nodes4, weights4 = np.polynomial.legendre.leggauss(4)
    nodes_x, weights_x = np.polynomial.legendre.leggauss(40)
    px = 0.5 * width * (nodes4 + 1.0)
    py = 0.5 * height * (nodes4 + 1.0)
    depth = xmin + 0.5 * (xmax - xmin) * (nodes_x + 1.0)
    gx, gy, gz = np.meshgrid(px, py, depth, indexing="ij")
    weights = np.einsum("i,j,k->ijk", weights4, weights4, weights_x).reshape(-1) / 8.0  # means, not integrals
    points = np.stack([(gx - cx) / fx * gz, (gy - cy) / fy * gz, gz], axis=-1).reshape(-1, 3)
    points_t = torch.from_numpy(points)

    def pixels(phi: torch.Tensor) -> torch.Tensor:
        moved = points_t @ torch.linalg.matrix_exp(skew(phi[3:])).T + phi[:3]
        return torch.stack([fx * moved[:, 0] / moved[:, 2] + cx, fy * moved[:, 1] / moved[:, 2] + cy], -1)

    jac = torch.func.jacfwd(pixels)(torch.zeros(6, dtype=torch.float64)).numpy()  # [P, 2, 6]
    return np.einsum("p,pai,paj->ij", weights, jac, jac)


def test_metric_matches_quadrature_of_exact_jacobian() -> None:
    rng = np.random.default_rng(0)
    intr = random_intrinsics(rng, 5)
    metric = pixel_displacement_metric(**intr)
    assert metric.shape == (5, 6, 6)
    for i in range(5):
        names = ("fx", "fy", "cx", "cy", "width", "height", "xmin", "xmax")
        expected = quadrature_metric(*(float(intr[k][i]) for k in names))
        np.testing.assert_allclose(metric[i].numpy(), expected, rtol=1e-9, atol=1e-9 * np.abs(expected).max())


def test_metric_is_symmetric_positive_definite_and_broadcasts() -> None:
    rng = np.random.default_rng(1)
    intr = random_intrinsics(rng, 8)
    metric = pixel_displacement_metric(**intr)
    torch.testing.assert_close(metric, metric.transpose(-1, -2), rtol=0, atol=0)
    eigenvalues = torch.linalg.eigvalsh(metric)
    assert bool((eigenvalues > 0).all())
    # scalars broadcast against a batch
    single = pixel_displacement_metric(500.0, 500.0, 320.0, 240.0, 640, 480, 1.0, intr["xmax"])
    assert single.shape == (8, 6, 6)
    # float32 in, float32 out
    values32 = (torch.tensor(v, dtype=torch.float32) for v in (500.0, 500.0, 320.0, 240.0, 640.0, 480.0, 1.0, 5.0))
    assert pixel_displacement_metric(*values32).dtype == torch.float32


def test_zero_at_zero_adjustment_with_zero_gradient() -> None:
    rng = np.random.default_rng(2)
    c2w = random_c2w(rng, 4)
    adjustment = torch.zeros(4, 6, dtype=torch.float64, requires_grad=True)
    prior = pixel_prior(c2w, adjustment, **random_intrinsics(rng, 4))
    assert torch.equal(prior, torch.zeros(4, dtype=torch.float64))
    (grad,) = torch.autograd.grad(prior.sum(), adjustment)
    assert torch.equal(grad, torch.zeros_like(grad))


def test_camera_motion_is_the_relative_pose_of_the_adjustment() -> None:
    """``φ`` against the exact relative pose ``X' = Q X + s`` between the cameras before and after."""
    rng = np.random.default_rng(3)
    c2w_cv = random_c2w(rng, 6)
    adjustment = torch.from_numpy(np.concatenate([rng.normal(size=(6, 3)), rng.normal(scale=0.3, size=(6, 3))], 1))
    rot, trans = relative_pose(c2w_cv, apply_adjustment(c2w_cv, adjustment))
    for convention, pose in (("opencv", c2w_cv), ("opengl", c2w_cv @ FLIP)):
        phi = camera_motion_from_adjustment(pose, adjustment, convention)
        # the rotation part is exact: Q = exp([ω]×)
        np.testing.assert_allclose(Rotation.from_matrix(rot.numpy()).as_rotvec(), phi[:, 3:].numpy(), atol=1e-12)
    # the translation part is first order: s = -Rᵀ exp(-[ω_adj]×) t_adj
    small = adjustment * torch.tensor([1.0, 1.0, 1.0, 1e-4, 1e-4, 1e-4], dtype=torch.float64)
    _, trans_small = relative_pose(c2w_cv, apply_adjustment(c2w_cv, small))
    phi = camera_motion_from_adjustment(c2w_cv, small, "opencv")
    error = (trans_small - phi[:, :3]).norm(dim=-1)
    bound = small[:, 3:].norm(dim=-1) * small[:, :3].norm(dim=-1)
    assert bool((error <= bound * (1 + 1e-9)).all())
    assert bool((trans - camera_motion_from_adjustment(c2w_cv, adjustment, "opencv")[:, :3]).norm(dim=-1).max() > 0.1)


def test_apply_adjustment_matches_nerfstudio_camera_optimizer() -> None:
    from nerfstudio.cameras.camera_optimizers import CameraOptimizerConfig
    from nerfstudio.cameras.cameras import Cameras

    rng = np.random.default_rng(4)
    c2w = random_c2w(rng, 3)[:, :3, :].float()
    adjustment = torch.from_numpy(rng.normal(scale=0.2, size=(3, 6))).float()  # angles > 0.01 rad (no clamping)
    optimizer = CameraOptimizerConfig(mode="SO3xR3").setup(num_cameras=3, device="cpu")
    with torch.no_grad():
        optimizer.pose_adjustment.copy_(adjustment)
    for i in range(3):
        camera = Cameras(
            camera_to_worlds=c2w[i : i + 1], fx=500.0, fy=500.0, cx=320.0, cy=240.0, metadata={"cam_idx": i}
        )
        theirs = optimizer.apply_to_camera(camera).detach()[0]
        ours = apply_adjustment(c2w[i].double(), adjustment[i].double())[:3]
        np.testing.assert_allclose(theirs.numpy(), ours.numpy(), atol=2e-6)


def small_motions(c2w_cv: torch.Tensor, intr: dict[str, torch.Tensor], rng: np.random.Generator) -> torch.Tensor:
    """Per camera, four nerfstudio adjustments ``[N, 4, 6]`` of 0.05 degrees / 0.1 % of the mid depth.

    0: pure translation, 1: pure rotation, 2: rotation about the camera's y axis with the camera-x
    translation that cancels its displacement at the mid depth (exercises the translation-rotation
    cross terms), 3: both, random directions.
    """
    n = c2w_cv.shape[0]
    angle = math.radians(0.05)
    shift = 1e-3 * 0.5 * (intr["xmin"] + intr["xmax"])  # [N]

    def unit(size):
        v = rng.normal(size=size)
        return torch.from_numpy(v / np.linalg.norm(v, axis=-1, keepdims=True))

    rot = c2w_cv[:, :3, :3]
    mid = 0.5 * (intr["xmin"] + intr["xmax"])
    # camera frame: ω = (0, θ, 0), t = (-θ·mid, 0, 0); world adjustment = -R φ
    omega_cam = torch.zeros(n, 3, dtype=torch.float64)
    omega_cam[:, 1] = angle
    trans_cam = torch.zeros(n, 3, dtype=torch.float64)
    trans_cam[:, 0] = -angle * mid
    cancel = torch.cat([-(rot @ trans_cam.unsqueeze(-1)).squeeze(-1), -(rot @ omega_cam.unsqueeze(-1)).squeeze(-1)], -1)
    zeros = torch.zeros(n, 3, dtype=torch.float64)
    motions = [
        torch.cat([shift[:, None] * unit((n, 3)), zeros], -1),
        torch.cat([zeros, angle * unit((n, 3))], -1),
        cancel,
        torch.cat([shift[:, None] * unit((n, 3)), angle * unit((n, 3))], -1),
    ]
    return torch.stack(motions, dim=1)


def test_closed_form_matches_monte_carlo_for_small_motions() -> None:
    """Closed form vs the exact Monte-Carlo definition, 4 cameras x 4 motions.

    Tolerance: 4 Monte-Carlo standard errors (the sampling noise: 0.03-0.5 % of D with 1e5 samples
    and depth ranges xmax/xmin <= 5; wider ranges make 1/x² heavy-tailed) plus the truncation of the
    second-order expansion. The truncation is cubic in the motion and odd, so it is estimated from
    the Monte Carlo itself as half the difference between the motions +φ and -φ drawn with the same
    samples (common random numbers: the difference holds almost no sampling noise; 0.001-0.25 % of
    D here); the quartic remainder is ~|φ|² relative (1e-6) and negligible. The resulting tolerance
    stays below 2.5 % of D, far below the errors of a wrong moment (W instead of W - cx), depth
    factor (E[1/x]² instead of E[1/x²]: 8-23 % here) or cross-term sign (checked with the cancelling
    motion, whose D is several times smaller than with the opposite sign).
    """
    rng = np.random.default_rng(5)
    n = 4
    c2w_cv = random_c2w(rng, n)
    intr = random_intrinsics(rng, n)
    intr["xmax"] = intr["xmin"] * torch.from_numpy(rng.uniform(1.5, 5.0, size=n))
    motions = small_motions(c2w_cv, intr, rng)  # [N, 4, 6]
    c2w_gl = c2w_cv @ FLIP
    num = motions.shape[1]
    ref = c2w_gl.repeat_interleave(num, 0)  # [N·4, 4, 4]
    flat = motions.reshape(-1, 6)
    intr_rep = {k: v.repeat_interleave(num) for k, v in intr.items()}
    closed = pixel_prior(ref, flat, **intr_rep)
    estimates = []
    for sign in (1.0, -1.0):
        generator = torch.Generator().manual_seed(1234)
        mean, stderr = sampled_pixel_displacement(
            ref, apply_adjustment(ref, sign * flat), **intr_rep, num_samples=100_000, generator=generator
        )
        estimates.append((mean, stderr))
    (plus, stderr), (minus, _) = estimates
    truncation = 0.5 * (plus - minus).abs()
    tolerance = 4.0 * stderr + truncation
    assert bool((tolerance < 0.025 * closed).all()), (tolerance / closed).max()
    assert bool(((closed - plus).abs() <= tolerance).all()), ((closed - plus).abs() / tolerance).max()
    # the cancelling motion really exercises the cross terms: flipping its rotation raises D a lot
    cancel = motions[:, 2].clone()
    flipped = torch.cat([cancel[:, :3], -cancel[:, 3:]], -1)
    assert bool((pixel_prior(c2w_gl, flipped, **intr) > 3.0 * pixel_prior(c2w_gl, cancel, **intr)).all())


def test_rotation_about_optical_axis_by_hand() -> None:
    """ω about the optical axis: Δp = θ (-(fx/fy)(py - cy), (fy/fx)(px - cx)), depth-independent, so
    D = θ² [(fx/fy)² E(py - cy)² + (fy/fx)² E(px - cx)²] with E(px - cx)² = (cx³ + (W - cx)³) / (3W)."""
    rng = np.random.default_rng(6)
    n = 5
    c2w_cv = random_c2w(rng, n)
    intr = random_intrinsics(rng, n)
    theta = torch.from_numpy(rng.uniform(-0.02, 0.02, size=n))
    view_dirs = c2w_cv[:, :3, 2]  # OpenCV: the camera looks along its +z
    adjustment = torch.cat([torch.zeros(n, 3, dtype=torch.float64), theta[:, None] * view_dirs], -1)
    fx, fy, cx, cy, w, h = (intr[k] for k in ("fx", "fy", "cx", "cy", "width", "height"))
    ex2 = (cx**3 + (w - cx) ** 3) / (3 * w)
    ey2 = (cy**3 + (h - cy) ** 3) / (3 * h)
    expected = theta**2 * ((fx / fy) ** 2 * ey2 + (fy / fx) ** 2 * ex2)
    ours = pixel_prior(c2w_cv, adjustment, **intr, camera_convention="opencv")
    np.testing.assert_allclose(ours.numpy(), expected.numpy(), rtol=1e-12)
    # fx = fy and a centred principal point: θ²(W² + H²)/12
    centred = pixel_prior(c2w_cv[:1] @ FLIP, adjustment[:1], 800.0, 800.0, 320.0, 240.0, 640.0, 480.0, 1.0, 2.0)
    assert centred.item() == pytest.approx(theta[0].item() ** 2 * (640.0**2 + 480.0**2) / 12.0, rel=1e-12)


def test_monte_carlo_moves_the_camera_exactly() -> None:
    """A large rotation θ about the optical axis (fx = fy) rotates the image about the principal point
    exactly: ‖p' - p‖² = 2(1 - cos θ)‖p - c‖², which the linearisation (θ²‖p - c‖²) misses by θ²/12
    (2 % at θ = 0.5), 10 standard errors here."""
    rng = np.random.default_rng(7)
    c2w_cv = random_c2w(rng, 1)
    theta = 0.5
    adjustment = torch.cat([torch.zeros(3, dtype=torch.float64), theta * c2w_cv[0, :3, 2]])[None]
    width, height, cx, cy = 640.0, 480.0, 250.0, 300.0
    mean, stderr = sampled_pixel_displacement(
        c2w_cv, apply_adjustment(c2w_cv, adjustment), 700.0, 700.0, cx, cy, width, height, 1.0, 4.0,
        camera_convention="opencv", num_samples=200_000, generator=torch.Generator().manual_seed(0),
    )
    radius2 = (cx**3 + (width - cx) ** 3) / (3 * width) + (cy**3 + (height - cy) ** 3) / (3 * height)
    exact = 2.0 * (1.0 - math.cos(theta)) * radius2
    assert abs(mean.item() - exact) <= 4.0 * stderr.item()
    assert abs(theta**2 * radius2 - exact) > 10.0 * stderr.item()


def test_world_frame_invariance() -> None:
    rng = np.random.default_rng(8)
    n = 6
    c2w = random_c2w(rng, n)
    intr = random_intrinsics(rng, n)
    adjustment = torch.from_numpy(rng.normal(scale=0.01, size=(n, 6)))
    world_rot = torch.from_numpy(Rotation.random(random_state=9).as_matrix())
    world_shift = torch.from_numpy(rng.normal(scale=5.0, size=3))
    moved = c2w.clone()
    moved[:, :3, :3] = world_rot @ c2w[:, :3, :3]
    moved[:, :3, 3] = c2w[:, :3, 3] @ world_rot.T + world_shift
    adjustment_moved = torch.cat([adjustment[:, :3] @ world_rot.T, adjustment[:, 3:] @ world_rot.T], -1)
    before = pixel_prior(c2w, adjustment, **intr)
    after = pixel_prior(moved, adjustment_moved, **intr)
    np.testing.assert_allclose(after.numpy(), before.numpy(), rtol=1e-12)
    # the adjustment lives in the world frame: not rotating it changes the prior
    assert not np.allclose(pixel_prior(moved, adjustment, **intr).numpy(), before.numpy(), rtol=1e-3)


def test_opengl_and_opencv_agree() -> None:
    rng = np.random.default_rng(10)
    n = 5
    c2w_cv = random_c2w(rng, n)
    intr = random_intrinsics(rng, n)
    adjustment = torch.from_numpy(rng.normal(scale=0.01, size=(n, 6)))
    cv = pixel_prior(c2w_cv, adjustment, **intr, camera_convention="opencv")
    gl = pixel_prior(c2w_cv @ FLIP, adjustment, **intr, camera_convention="opengl")
    np.testing.assert_allclose(gl.numpy(), cv.numpy(), rtol=1e-12)
    # reading OpenCV poses as OpenGL ones is a different camera (looking backwards)
    misread = pixel_prior(c2w_cv, adjustment, **intr, camera_convention="opengl")
    assert not np.allclose(misread.numpy(), cv.numpy(), rtol=1e-3)
    # the Monte-Carlo definition agrees too (same samples)
    moved = apply_adjustment(c2w_cv, adjustment)
    mc_cv, _ = sampled_pixel_displacement(
        c2w_cv, moved, **intr, camera_convention="opencv", num_samples=1000, generator=torch.Generator().manual_seed(0)
    )
    mc_gl, _ = sampled_pixel_displacement(
        c2w_cv @ FLIP, moved @ FLIP, **intr, camera_convention="opengl", num_samples=1000,
        generator=torch.Generator().manual_seed(0),
    )
    np.testing.assert_allclose(mc_gl.numpy(), mc_cv.numpy(), rtol=1e-10)


def test_scale_invariance() -> None:
    rng = np.random.default_rng(11)
    n = 5
    c2w = random_c2w(rng, n)
    intr = random_intrinsics(rng, n)
    adjustment = torch.from_numpy(rng.normal(scale=0.01, size=(n, 6)))
    scale = 7.3
    scaled_c2w = c2w.clone()
    scaled_c2w[:, :3, 3] *= scale
    scaled_adjustment = torch.cat([scale * adjustment[:, :3], adjustment[:, 3:]], -1)
    scaled_intr = dict(intr, xmin=scale * intr["xmin"], xmax=scale * intr["xmax"])
    before = pixel_prior(c2w, adjustment, **intr)
    after = pixel_prior(scaled_c2w, scaled_adjustment, **scaled_intr)
    np.testing.assert_allclose(after.numpy(), before.numpy(), rtol=1e-12)
    # scaling the translation alone does change it
    assert not np.allclose(pixel_prior(c2w, scaled_adjustment, **intr).numpy(), before.numpy(), rtol=1e-3)


def test_gradcheck_and_quadratic_form() -> None:
    rng = np.random.default_rng(12)
    n = 3
    c2w = random_c2w(rng, n)
    intr = random_intrinsics(rng, n)
    adjustment = torch.from_numpy(rng.normal(scale=0.01, size=(n, 6))).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a: pixel_prior(c2w, a, **intr), (adjustment,), eps=1e-7, atol=1e-6)
    # exactly quadratic in the adjustment: D(2a) = 4 D(a)
    value = pixel_prior(c2w, adjustment, **intr)
    doubled = pixel_prior(c2w, 2.0 * adjustment, **intr).detach()
    np.testing.assert_allclose(doubled.numpy(), 4.0 * value.detach().numpy(), rtol=1e-12)
    # float32 works and agrees
    value32 = pixel_prior(c2w.float(), adjustment.detach().float(), **{k: v.float() for k, v in intr.items()})
    assert value32.dtype == torch.float32
    np.testing.assert_allclose(value32.numpy(), value.detach().numpy(), rtol=1e-4)


def test_bad_arguments_raise() -> None:
    c2w = torch.eye(4, dtype=torch.float64)[None]
    adjustment = torch.zeros(1, 6, dtype=torch.float64)
    good = dict(fx=500.0, fy=500.0, cx=320.0, cy=240.0, width=640.0, height=480.0, xmin=1.0, xmax=5.0)
    with pytest.raises(ValueError, match="camera_convention"):
        pixel_prior(c2w, adjustment, **good, camera_convention="directx")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="xmax"):
        pixel_prior(c2w, adjustment, **dict(good, xmax=0.5))
    with pytest.raises(ValueError, match="fy"):
        pixel_prior(c2w, adjustment, **dict(good, fy=-1.0))
    with pytest.raises(ValueError, match="height"):
        pixel_displacement_metric(**dict(good, height=0.0))
    with pytest.raises(ValueError, match="adjustment"):
        pixel_prior(c2w, torch.zeros(1, 3, dtype=torch.float64), **good)
    with pytest.raises(ValueError, match="c2w_ref"):
        pixel_prior(2.0 * c2w, adjustment, **good)
    with pytest.raises(ValueError, match="behind the moved camera"):
        big = torch.tensor([[0.0, 0.0, 0.0, 0.0, math.pi / 2 + 0.3, 0.0]], dtype=torch.float64)
        sampled_pixel_displacement(c2w, apply_adjustment(c2w, big), **good, camera_convention="opencv", num_samples=100)
