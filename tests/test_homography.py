"""The homography pose error against brute force and against properties that can be proven."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import simpson
from scipy.spatial.transform import Rotation

from nerf_posefix.geometry.homography import (
    HomographyLoss,
    depth_bounds_from_points,
    global_depth_bounds,
    homography_error,
)

FLIP = np.diag([1.0, -1.0, -1.0, 1.0])  # OpenCV <-> OpenGL camera axes (right-multiplied on c2w)


def random_c2w(rng: np.random.Generator, n: int, max_angle: float = math.pi, spread: float = 2.0) -> np.ndarray:
    """``[n, 4, 4]`` camera-to-world poses, rotation angles uniform in [0, max_angle]."""
    axes = rng.normal(size=(n, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    angles = rng.uniform(0.0, max_angle, size=(n, 1))
    c2w = np.tile(np.eye(4), (n, 1, 1))
    c2w[:, :3, :3] = Rotation.from_rotvec(axes * angles).as_matrix()
    c2w[:, :3, 3] = rng.normal(scale=spread, size=(n, 3))
    return c2w


def explicit_homography(c2w_ref: np.ndarray, c2w: np.ndarray, depth: float, axis: np.ndarray) -> np.ndarray:
    """H with X = H X_ref for points of the plane nᵀX_ref = depth, built from three plane points.

    Independent of the formula ``R + t nᵀ / x``: three non-collinear points of the plane, expressed
    in both camera frames, determine the linear map (the plane does not pass through the origin).
    """
    # two directions spanning the plane, orthogonal to the axis
    u = np.cross(axis, [1.0, 0.3, 0.2])
    u /= np.linalg.norm(u)
    v = np.cross(axis, u)
    pts_ref = np.stack([depth * axis, depth * axis + u, depth * axis + v], axis=1)  # [3, 3] columns
    pts_world = c2w_ref[:3, :3] @ pts_ref + c2w_ref[:3, 3:4]
    pts_cam = c2w[:3, :3].T @ (pts_world - c2w[:3, 3:4])
    return pts_cam @ np.linalg.inv(pts_ref)


def brute_force_error(c2w_ref: np.ndarray, c2w: np.ndarray, xmin: float, xmax: float, axis: np.ndarray) -> float:
    """Mean of ‖I - H(x)‖² over x in [xmin, xmax] by Simpson's rule on 4001 planes.

    The planes are spaced uniformly in log depth (x = e^u, dx = e^u du), where the integrand is smooth.
    """
    u = np.linspace(math.log(xmin), math.log(xmax), 4001)
    depths = np.exp(u)
    values = np.array(
        [np.sum((np.eye(3) - explicit_homography(c2w_ref, c2w, x, axis)) ** 2) * x for x in depths]
    )
    return simpson(values, x=u) / (xmax - xmin)


@pytest.mark.parametrize("convention,axis", [("opencv", np.array([0.0, 0.0, 1.0])), ("opengl", np.array([0.0, 0.0, -1.0]))])
def test_matches_numerical_integration(convention: str, axis: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    c2w_ref = random_c2w(rng, 12)
    c2w = random_c2w(rng, 12)
    xmin = rng.uniform(0.05, 2.0, size=12)
    xmax = xmin * rng.uniform(1.5, 200.0, size=12)
    closed = homography_error(
        torch.from_numpy(c2w_ref), torch.from_numpy(c2w), torch.from_numpy(xmin), torch.from_numpy(xmax), convention
    ).numpy()
    brute = np.array([brute_force_error(c2w_ref[i], c2w[i], xmin[i], xmax[i], axis) for i in range(12)])
    np.testing.assert_allclose(closed, brute, rtol=1e-6)
    # The other sign of the cross term (a plane behind the camera) is measurably different.
    assert np.max(np.abs(closed - brute) / brute) < 1e-6


def test_large_rotations_up_to_180_degrees() -> None:
    rng = np.random.default_rng(1)
    c2w_ref = random_c2w(rng, 4)
    c2w = c2w_ref.copy()
    for i, angle in enumerate([math.pi, math.pi - 1e-3, 2.5, 1e-4]):
        c2w[i, :3, :3] = c2w_ref[i, :3, :3] @ Rotation.from_rotvec(angle * np.array([0.0, 0.6, 0.8])).as_matrix()
    closed = homography_error(torch.from_numpy(c2w_ref), torch.from_numpy(c2w), 0.5, 5.0, "opencv").numpy()
    brute = [brute_force_error(c2w_ref[i], c2w[i], 0.5, 5.0, np.array([0.0, 0.0, 1.0])) for i in range(4)]
    np.testing.assert_allclose(closed, brute, rtol=1e-6)


def test_zero_for_equal_poses_and_positive_otherwise() -> None:
    rng = np.random.default_rng(2)
    c2w = torch.from_numpy(random_c2w(rng, 50))
    assert torch.all(homography_error(c2w, c2w, 0.1, 10.0) < 1e-25)  # RᵀR = I up to rounding
    other = torch.from_numpy(random_c2w(rng, 50))
    assert torch.all(homography_error(c2w, other, 0.1, 10.0) > 0)


def test_pure_rotation_and_pure_translation_closed_values() -> None:
    # pure rotation about the camera centre: ‖I - R‖² = 8 sin²(θ/2), whatever the bounds
    rng = np.random.default_rng(3)
    c2w_ref = random_c2w(rng, 1)[0]
    theta = 0.7
    c2w = c2w_ref.copy()
    c2w[:3, :3] = c2w_ref[:3, :3] @ Rotation.from_rotvec(theta * np.array([1.0, 0.0, 0.0])).as_matrix()
    for xmin, xmax in [(0.1, 1.0), (3.0, 300.0)]:
        value = homography_error(torch.from_numpy(c2w_ref), torch.from_numpy(c2w), xmin, xmax).item()
        assert value == pytest.approx(8 * math.sin(theta / 2) ** 2, rel=1e-12)
    # pure translation of the centre by d: ‖t‖² · mean(1/x²) = d² / (xmin · xmax)
    c2w = c2w_ref.copy()
    c2w[:3, 3] += np.array([0.3, -0.4, 1.2])
    value = homography_error(torch.from_numpy(c2w_ref), torch.from_numpy(c2w), 2.0, 8.0).item()
    assert value == pytest.approx((0.09 + 0.16 + 1.44) / 16.0, rel=1e-12)


def test_invariant_to_world_frame_and_scale_with_bounds() -> None:
    rng = np.random.default_rng(4)
    c2w_ref = random_c2w(rng, 20)
    c2w = random_c2w(rng, 20)
    base = homography_error(torch.from_numpy(c2w_ref), torch.from_numpy(c2w), 0.3, 7.0).numpy()
    world = random_c2w(rng, 1)[0]  # a rigid change of world frame
    moved = homography_error(torch.from_numpy(world @ c2w_ref), torch.from_numpy(world @ c2w), 0.3, 7.0).numpy()
    np.testing.assert_allclose(moved, base, rtol=1e-10)
    # scaling the world by s leaves the error unchanged when the bounds scale too
    s = 3.7
    c2w_ref_s, c2w_s = c2w_ref.copy(), c2w.copy()
    c2w_ref_s[:, :3, 3] *= s
    c2w_s[:, :3, 3] *= s
    scaled = homography_error(torch.from_numpy(c2w_ref_s), torch.from_numpy(c2w_s), 0.3 * s, 7.0 * s).numpy()
    np.testing.assert_allclose(scaled, base, rtol=1e-10)


def test_opengl_and_opencv_axes_give_the_same_value() -> None:
    rng = np.random.default_rng(5)
    c2w_ref_cv = random_c2w(rng, 30)
    c2w_cv = random_c2w(rng, 30)
    cv = homography_error(torch.from_numpy(c2w_ref_cv), torch.from_numpy(c2w_cv), 0.5, 20.0, "opencv")
    gl = homography_error(torch.from_numpy(c2w_ref_cv @ FLIP), torch.from_numpy(c2w_cv @ FLIP), 0.5, 20.0, "opengl")
    torch.testing.assert_close(gl, cv, rtol=1e-12, atol=0)
    # and the convention matters: the same matrices read with the wrong axes give other values
    wrong = homography_error(torch.from_numpy(c2w_ref_cv @ FLIP), torch.from_numpy(c2w_cv @ FLIP), 0.5, 20.0, "opencv")
    assert not torch.allclose(wrong, cv)


def test_swapping_the_cameras_gives_the_same_value() -> None:
    """Swapping the cameras maps (R, t) to (Rᵀ, -Rᵀt): ‖I - Rᵀ‖ = ‖I - R‖, ‖Rᵀt‖ = ‖t‖ and
    (-Rᵀt)ᵀ(I - Rᵀ)n = -tᵀ(R - I)n = tᵀ(I - R)n, so the error is symmetric."""
    rng = np.random.default_rng(6)
    a = random_c2w(rng, 10)
    c = random_c2w(rng, 10)
    ac = homography_error(torch.from_numpy(a), torch.from_numpy(c), 1.0, 4.0)
    ca = homography_error(torch.from_numpy(c), torch.from_numpy(a), 1.0, 4.0)
    torch.testing.assert_close(ac, ca, rtol=1e-12, atol=0)
    # but the depth range matters: the same pairs with other bounds give other values
    assert not torch.allclose(homography_error(torch.from_numpy(a), torch.from_numpy(c), 1.0, 40.0), ac)


def test_shapes_3x4_4x4_and_broadcasting() -> None:
    rng = np.random.default_rng(7)
    ref = torch.from_numpy(random_c2w(rng, 6)).reshape(2, 3, 4, 4)
    est = torch.from_numpy(random_c2w(rng, 6)).reshape(2, 3, 4, 4)
    xmin = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    full = homography_error(ref, est, xmin, 10.0)
    assert full.shape == (2, 3)
    torch.testing.assert_close(homography_error(ref[..., :3, :], est[..., :3, :], xmin, 10.0), full)
    # one reference against a batch
    one = homography_error(ref[0, 0], est, 1.0, 10.0)
    assert one.shape == (2, 3)
    torch.testing.assert_close(one[1, 2], homography_error(ref[0, 0], est[1, 2], 1.0, 10.0))


def test_gradcheck_float64() -> None:
    rng = np.random.default_rng(8)
    ref = torch.from_numpy(random_c2w(rng, 3)[:, :3]).requires_grad_(True)
    est = torch.from_numpy(random_c2w(rng, 3)[:, :3]).requires_grad_(True)
    xmin = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64, requires_grad=True)
    xmax = torch.tensor([5.0, 3.0, 2.5], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, lo, hi: homography_error(a, b, lo, hi), (ref, est, xmin, xmax))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_finite_at_identity(dtype: torch.dtype) -> None:
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        c2w = torch.eye(4, dtype=dtype, device=device)[:3].repeat(4, 1, 1)
        ref = c2w.clone().requires_grad_(True)
        est = c2w.clone().requires_grad_(True)
        # a narrow range too (xmax barely above xmin)
        xmax = torch.tensor([10.0, 1.0 + 1e-6, 2.0, 3.0], dtype=dtype, device=device)
        value = homography_error(ref, est, 1.0, xmax).sum()
        value.backward()
        assert value.item() == 0
        assert torch.isfinite(ref.grad).all() and torch.isfinite(est.grad).all()
        assert ref.grad.abs().max() == 0  # the identity is a minimum: zero gradient


def test_float32_agrees_with_float64() -> None:
    rng = np.random.default_rng(9)
    ref = random_c2w(rng, 100, max_angle=0.2)
    est = random_c2w(rng, 100, max_angle=0.2)
    e64 = homography_error(torch.from_numpy(ref), torch.from_numpy(est), 0.5, 5.0)
    e32 = homography_error(torch.from_numpy(ref).float(), torch.from_numpy(est).float(), 0.5, 5.0)
    assert e32.dtype == torch.float32
    torch.testing.assert_close(e32.double(), e64, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "xmin,xmax,message",
    [
        (torch.tensor([1.0, -1.0]), 5.0, r"xmin\[1\] = -1 must be > 0"),
        (torch.tensor([1.0, 0.0]), 5.0, r"xmin\[1\] = 0 must be > 0"),
        (1.0, torch.tensor([5.0, 0.5]), r"xmax\[1\] = 0.5 must be > xmin\[1\] = 1"),
        (2.0, 2.0, r"xmax = 2 must be > xmin = 2"),
        (1.0, torch.tensor([float("inf"), 5.0]), r"xmax\[0\] = inf is not finite"),
        (float("nan"), 5.0, r"xmin = nan is not finite"),
    ],
)
def test_rejects_bad_bounds(xmin, xmax, message: str) -> None:
    c2w = torch.eye(4, dtype=torch.float64).repeat(2, 1, 1)
    with pytest.raises(ValueError, match=message):
        homography_error(c2w, c2w, xmin, xmax)


def test_rejects_bad_poses_naming_the_index() -> None:
    c2w = torch.eye(4, dtype=torch.float64).repeat(3, 1, 1)
    scaled = c2w.clone()
    scaled[2, :3, :3] *= 1.1
    with pytest.raises(ValueError, match=r"c2w\[2\] is not a rotation"):
        homography_error(c2w, scaled, 1.0, 2.0)
    reflected = c2w.clone()
    reflected[1, 0, 0] = -1.0
    with pytest.raises(ValueError, match=r"c2w_ref\[1\] is not a rotation: det = -1"):
        homography_error(reflected, c2w, 1.0, 2.0)
    nan = c2w.clone()
    nan[0, 1, 3] = float("nan")
    with pytest.raises(ValueError, match=r"c2w\[0\] has non-finite entries"):
        homography_error(c2w, nan, 1.0, 2.0)
    with pytest.raises(ValueError, match=r"shape \[\.\.\., 3, 4\] or \[\.\.\., 4, 4\]"):
        homography_error(c2w[:, :3, :3], c2w[:, :3, :3], 1.0, 2.0)


def test_loss_module_reductions() -> None:
    rng = np.random.default_rng(10)
    ref = torch.from_numpy(random_c2w(rng, 5))
    est = torch.from_numpy(random_c2w(rng, 5))
    per_pair = homography_error(ref, est, 0.5, 4.0)
    torch.testing.assert_close(HomographyLoss(0.5, 4.0, reduction="mean")(ref, est), per_pair.mean())
    torch.testing.assert_close(HomographyLoss(0.5, 4.0, reduction="sum")(ref, est), per_pair.sum())
    torch.testing.assert_close(HomographyLoss(0.5, 4.0, reduction="none")(ref, est, xmax=4.0), per_pair)
    with pytest.raises(ValueError, match="xmax = 0.1 must be > xmin = 0.5"):
        HomographyLoss(0.5, 0.1)


def test_depth_bounds_from_points_quantiles() -> None:
    # OpenGL camera at the origin looking along -z; points at depths 1..200
    c2w = torch.eye(4, dtype=torch.float64).repeat(2, 1, 1)
    c2w[1, :3, 3] = torch.tensor([0.0, 0.0, 10.0])  # second camera 10 units behind
    depths = torch.arange(1, 201, dtype=torch.float64)
    points = torch.stack([torch.zeros(200), torch.zeros(200), -depths], dim=1)
    behind = torch.tensor([[0.0, 0.0, 50.0]], dtype=torch.float64)  # behind camera 0 and 1: ignored
    xmin, xmax = depth_bounds_from_points(c2w, [torch.cat([points, behind]), points])
    # sorted depths, index int(q (n-1)): int(0.025*199)=4 -> 5, int(0.975*199)=194 -> 195
    torch.testing.assert_close(xmin, torch.tensor([5.0, 15.0], dtype=torch.float64))
    torch.testing.assert_close(xmax, torch.tensor([195.0, 205.0], dtype=torch.float64))
    lo, hi = global_depth_bounds(c2w, [points, points], 0.0, 1.0)
    assert (lo, hi) == (1.0, 210.0)
    # the same in OpenCV axes: points in front are at +z
    xmin_cv, _ = depth_bounds_from_points(c2w[:1], [-points], camera_convention="opencv")
    assert xmin_cv.item() == 5.0


def test_depth_bounds_error_for_camera_without_points() -> None:
    c2w = torch.eye(4, dtype=torch.float64).repeat(2, 1, 1)
    points = torch.tensor([[0.0, 0.0, -3.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match="camera 1 observes 0 points in front of it"):
        depth_bounds_from_points(c2w, [points, -points])


def test_correction_form_equals_the_pose_form() -> None:
    """nerfstudio's correction c2w' = [R_adj R | t + t_adj] measured from the correction alone."""
    from nerf_posefix.geometry.homography import correction_homography_error

    rng = np.random.default_rng(11)
    c2w = random_c2w(rng, 16)
    rot_adj = Rotation.from_rotvec(rng.normal(scale=0.5, size=(16, 3))).as_matrix()
    trans_adj = rng.normal(scale=0.3, size=(16, 3))
    corrected = c2w.copy()
    corrected[:, :3, :3] = rot_adj @ c2w[:, :3, :3]
    corrected[:, :3, 3] += trans_adj
    xmin = rng.uniform(0.1, 1.0, size=16)
    xmax = xmin + rng.uniform(0.5, 10.0, size=16)
    for convention, sign in (("opengl", -1.0), ("opencv", 1.0)):
        expected = homography_error(
            torch.from_numpy(c2w), torch.from_numpy(corrected), torch.from_numpy(xmin), torch.from_numpy(xmax), convention
        )
        view_dirs = torch.from_numpy(sign * c2w[:, :3, 2])
        got = correction_homography_error(
            torch.from_numpy(rot_adj), torch.from_numpy(trans_adj), view_dirs, torch.from_numpy(xmin), torch.from_numpy(xmax)
        )
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("scale", [1e-6, 1e-3, 0.5, 3.0])
def test_adjustment_form_equals_the_correction_form(scale: float) -> None:
    from nerf_posefix.geometry.homography import adjustment_homography_error, correction_homography_error
    from nerf_posefix.geometry.preconditioning import skew

    rng = np.random.default_rng(12)
    adjustment = torch.from_numpy(rng.normal(scale=scale, size=(32, 6)))
    view_dirs = torch.from_numpy(Rotation.random(32, random_state=1).as_matrix()[:, :, 2])
    rot_adj = torch.linalg.matrix_exp(skew(adjustment[:, 3:]))
    expected = correction_homography_error(rot_adj, adjustment[:, :3], view_dirs, 0.3, 9.0)
    got = adjustment_homography_error(adjustment, view_dirs, 0.3, 9.0)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-30)
    # float32 stays accurate for small corrections (no 1 - cos θ cancellation)
    got32 = adjustment_homography_error(adjustment.float(), view_dirs.float(), 0.3, 9.0)
    torch.testing.assert_close(got32.double(), expected, rtol=1e-4, atol=1e-30)


def test_adjustment_form_gradients_at_zero() -> None:
    from nerf_posefix.geometry.homography import adjustment_homography_error

    view_dirs = torch.tensor([[0.0, 0.0, -1.0]], dtype=torch.float64)
    adjustment = torch.zeros(1, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: adjustment_homography_error(a, view_dirs, 0.5, 3.0), (adjustment,))
    adjustment32 = torch.zeros(1, 6, requires_grad=True)
    adjustment_homography_error(adjustment32, view_dirs.float(), 0.5, 3.0).sum().backward()
    assert torch.isfinite(adjustment32.grad).all()


@pytest.mark.parametrize("convention,axis", [("opencv", np.array([0.0, 0.0, 1.0])), ("opengl", np.array([0.0, 0.0, -1.0]))])
def test_numpy_twin_matches_brute_force_and_the_torch_error(convention: str, axis: np.ndarray) -> None:
    """The NumPy evaluation the reports use (no torch import) gives the brute-force mean of explicitly built
    homographies and the torch error to float64 precision, per pair with per-pair bounds and broadcast."""
    from nerf_posefix.geometry.homography_numpy import homography_error_numpy

    rng = np.random.default_rng(7)
    ref, cam = random_c2w(rng, 6), random_c2w(rng, 6)
    xmin, xmax = rng.uniform(0.5, 2.0, 6), rng.uniform(3.0, 20.0, 6)
    values = homography_error_numpy(ref, cam, xmin, xmax, camera_convention=convention)  # [6]
    assert values.shape == (6,)
    for k in range(3):
        assert values[k] == pytest.approx(brute_force_error(ref[k], cam[k], xmin[k], xmax[k], axis), rel=1e-6)
    reference = homography_error(torch.from_numpy(ref), torch.from_numpy(cam), torch.from_numpy(xmin), torch.from_numpy(xmax),
                                 camera_convention=convention).numpy()
    np.testing.assert_allclose(values, reference, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(homography_error_numpy(ref[:1], cam, 1.0, 5.0, convention)[:, None],
                               homography_error_numpy(ref[:1, None], cam[:, None], 1.0, 5.0, convention), rtol=1e-12)
    assert homography_error_numpy(ref, ref, xmin, xmax, convention) == pytest.approx(np.zeros(6), abs=1e-12)
    with pytest.raises(ValueError, match="0 < xmin < xmax"):
        homography_error_numpy(ref, cam, 2.0, 1.0, convention)
