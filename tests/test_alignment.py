"""Umeyama alignment (none / SE(3) / Sim(3)), its trimmed variant, and its input checks."""

from __future__ import annotations

import numpy as np
import pytest
from evo.core.geometry import umeyama_alignment
from scipy.spatial.transform import Rotation

from nerf_posefix.geometry.alignment import Alignment, align
from nerf_posefix.errors import InputError
from nerf_posefix.geometry.poses import make_c2w, rotation_angle_deg


def random_c2w(n: int, seed: int = 0, spread: float = 3.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return make_c2w(Rotation.random(n, random_state=seed).as_matrix(), rng.normal(scale=spread, size=(n, 3)))


def similarity(scale: float, seed: int = 11) -> Alignment:
    return Alignment(
        rotation=Rotation.random(random_state=seed).as_matrix(),
        translation=np.array([4.0, -1.5, 0.25]),
        scale=scale,
        mode="sim3",
    )


@pytest.mark.parametrize("mode,scale", [("sim3", 0.37), ("sim3", 5.0), ("se3", 1.0)])
def test_known_similarity_is_recovered(mode: str, scale: float) -> None:
    ref = random_c2w(30)
    truth = similarity(scale)
    # the estimate lives in a world where ref = truth(est): est = truth^-1(ref)
    inverse = Alignment(
        rotation=truth.rotation.T,
        translation=-truth.rotation.T @ truth.translation / scale,
        scale=1.0 / scale,
        mode="sim3",
    )
    est = inverse.apply(ref)
    fit = align(est, ref, mode=mode)
    np.testing.assert_allclose(fit.rotation, truth.rotation, atol=1e-12)
    np.testing.assert_allclose(fit.translation, truth.translation, atol=1e-9)
    assert abs(fit.scale - scale) < 1e-9 * scale
    aligned = fit.apply(est)
    np.testing.assert_allclose(aligned, ref, atol=1e-9)  # rotations and centres
    assert fit.inliers.all() and fit.mode == mode


def test_apply_acts_on_poses_as_documented() -> None:
    sim = similarity(2.0)
    c2w = random_c2w(5, seed=3)
    out = sim.apply(c2w)
    for pose, new in zip(c2w, out):
        np.testing.assert_allclose(new[:3, :3], sim.rotation @ pose[:3, :3], atol=1e-15)
        np.testing.assert_allclose(new[:3, 3], 2.0 * sim.rotation @ pose[:3, 3] + sim.translation, atol=1e-14)
    # world points seen by a camera stay in front of it at the scaled depth
    point = c2w[0, :3, :3] @ np.array([0.1, -0.2, 3.0]) + c2w[0, :3, 3]
    moved = sim.apply_points(point)
    local = out[0, :3, :3].T @ (moved - out[0, :3, 3])
    np.testing.assert_allclose(local, 2.0 * np.array([0.1, -0.2, 3.0]), atol=1e-13)


@pytest.mark.parametrize("with_scale", [False, True])
def test_matches_evo_umeyama_on_noisy_data(with_scale: bool) -> None:
    rng = np.random.default_rng(7)
    ref = random_c2w(100, seed=8)
    est = random_c2w(100, seed=8)
    est[:, :3, 3] = 0.5 * est[:, :3, 3] @ Rotation.random(random_state=9).as_matrix().T + rng.normal(scale=0.3, size=(100, 3))
    fit = align(est, ref, mode="sim3" if with_scale else "se3")
    r, t, c = umeyama_alignment(est[:, :3, 3].T, ref[:, :3, 3].T, with_scale)
    np.testing.assert_allclose(fit.rotation, r, atol=1e-12)
    np.testing.assert_allclose(fit.translation, t, atol=1e-12)
    assert abs(fit.scale - c) < 1e-12
    assert np.linalg.det(fit.rotation) == pytest.approx(1.0, abs=1e-12)


def test_mirrored_estimate_still_gives_a_rotation() -> None:
    ref = random_c2w(20, seed=1)
    est = ref.copy()
    est[:, 0, 3] *= -1  # reflected centres: the best orthogonal map would be a reflection
    fit = align(est, ref, mode="se3")
    assert np.linalg.det(fit.rotation) == pytest.approx(1.0, abs=1e-12)
    r, _, _ = umeyama_alignment(est[:, :3, 3].T, ref[:, :3, 3].T, False)
    np.testing.assert_allclose(fit.rotation, r, atol=1e-12)


def test_trimmed_alignment_ignores_gross_outliers() -> None:
    ref = random_c2w(50, seed=2)
    truth = similarity(1.8, seed=4)
    inverse = Alignment(truth.rotation.T, -truth.rotation.T @ truth.translation / 1.8, 1 / 1.8, "sim3")
    est = inverse.apply(ref)
    rng = np.random.default_rng(3)
    outliers = rng.choice(50, size=8, replace=False)
    est[outliers, :3, 3] += rng.normal(scale=20.0, size=(8, 3))
    plain = align(est, ref, mode="sim3")
    assert abs(plain.scale - 1.8) > 1e-2  # least squares is pulled away by the outliers
    robust = align(est, ref, mode="sim3", trim=0.25)
    assert abs(robust.scale - 1.8) < 1e-9
    np.testing.assert_allclose(robust.rotation, truth.rotation, atol=1e-9)
    assert not robust.inliers[outliers].any()
    assert robust.inliers.sum() == 38  # ceil(0.75 * 50)
    assert 0 <= robust.iterations <= 10


def test_none_is_identity_and_needs_one_camera() -> None:
    c2w = random_c2w(1)
    fit = align(c2w, c2w, mode="none")
    np.testing.assert_array_equal(fit.apply(c2w), c2w)
    assert fit.scale == 1.0


@pytest.mark.parametrize("mode", ["se3", "sim3"])
def test_too_few_cameras(mode: str) -> None:
    c2w = random_c2w(2)
    with pytest.raises(InputError, match=f"{mode} alignment needs at least 3 matched cameras, got 2"):
        align(c2w, c2w, mode=mode)


def test_degenerate_centres() -> None:
    c2w = random_c2w(10)
    line = c2w.copy()
    line[:, :3, 3] = np.linspace(0, 1, 10)[:, None] * np.array([1.0, 2.0, -0.5]) + 3.0
    with pytest.raises(InputError, match="reference: the camera centres are collinear"):
        align(c2w, line, mode="sim3")
    with pytest.raises(InputError, match="estimate: the camera centres are collinear"):
        align(line, c2w, mode="se3")
    same = c2w.copy()
    same[:, :3, 3] = [1.0, 2.0, 3.0]
    with pytest.raises(InputError, match="estimate: all camera centres coincide"):
        align(same, c2w, mode="sim3")
    # slightly non-collinear (a real, if thin, configuration) is accepted
    thin = line.copy()
    thin[:, 2, 3] += 1e-3 * np.sin(np.arange(10))
    fit = align(thin, thin, mode="sim3")
    assert rotation_angle_deg(fit.rotation, np.eye(3)) < 1e-6


def test_bad_arguments() -> None:
    c2w = random_c2w(5)
    with pytest.raises(ValueError, match="mode must be"):
        align(c2w, c2w, mode="affine")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="trim must be in"):
        align(c2w, c2w, mode="sim3", trim=1.0)
    with pytest.raises(ValueError, match="4 estimated poses for 5 reference poses"):
        align(c2w[:4], c2w, mode="sim3")
