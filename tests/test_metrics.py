"""Pose-error metrics: known answers, and agreement with evo's APE/RPE."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from evo import main_ape, main_rpe
from evo.core import metrics as evo_metrics
from evo.core.trajectory import PoseTrajectory3D
from scipy.spatial.transform import Rotation

from nerf_posefix.errors import InputError
from nerf_posefix.geometry.homography import homography_error
from nerf_posefix.geometry.poses import scene_radius
from nerf_posefix.geometry.metrics import (
    ErrorStats,
    auc_at,
    common_rotation_dominates,
    compare_poses,
    pairwise_rotation_errors,
    recall_at,
    relative_pose_errors,
)
from nerf_posefix.geometry.poses import make_c2w


def trajectory(n: int, seed: int) -> np.ndarray:
    """A random-walk camera path ``[n, 4, 4]`` with random orientations."""
    rng = np.random.default_rng(seed)
    return make_c2w(Rotation.random(n, random_state=seed).as_matrix(), np.cumsum(rng.normal(size=(n, 3)), axis=0))


def noisy_similar(ref: np.ndarray, seed: int, scale: float = 2.5) -> np.ndarray:
    """``ref`` in another world frame (rotation, translation, ``scale``) with pose noise."""
    rng = np.random.default_rng(seed)
    n = ref.shape[0]
    rot_s = Rotation.random(random_state=seed + 100).as_matrix()
    noise = Rotation.from_rotvec(rng.normal(scale=0.03, size=(n, 3))).as_matrix()
    centres = scale * ref[:, :3, 3] @ rot_s.T + np.array([1.0, -2.0, 3.0]) + rng.normal(scale=0.2, size=(n, 3))
    return make_c2w(rot_s @ ref[:, :3, :3] @ noise, centres)


def evo_traj(c2w: np.ndarray) -> PoseTrajectory3D:
    return PoseTrajectory3D(poses_se3=list(c2w), timestamps=np.arange(c2w.shape[0], dtype=float))


def test_known_rotation_perturbation() -> None:
    ref = trajectory(40, 1)
    rng = np.random.default_rng(2)
    angles = rng.uniform(0.0, 170.0, size=40)
    axes = rng.normal(size=(40, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    est = ref.copy()
    est[:, :3, :3] = ref[:, :3, :3] @ Rotation.from_rotvec(np.radians(angles)[:, None] * axes).as_matrix()
    res = compare_poses(ref, est, mode="none", xmin=1.0, xmax=4.0)
    np.testing.assert_allclose(res.rotation_deg, angles, rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(res.translation, 0.0)
    # same centre: H(x) = R for every plane, so the error is ‖I - R‖²_F = 4 (1 - cos θ)
    np.testing.assert_allclose(res.homography, 4.0 * (1.0 - np.cos(np.radians(angles))), rtol=1e-9, atol=1e-12)
    assert res.stats["rotation_deg"].max == pytest.approx(angles.max(), rel=1e-9)
    assert res.stats["rotation_deg"].median == pytest.approx(np.median(angles), rel=1e-9)


def test_known_translation_offset() -> None:
    ref = trajectory(25, 3)
    est = ref.copy()
    est[:, :3, 3] += np.array([0.3, -0.4, 1.2])  # |d| = 1.3
    res = compare_poses(ref, est, mode="none", xmin=0.5, xmax=2.0)
    np.testing.assert_allclose(res.translation, 1.3, rtol=1e-12)
    assert res.ate_rmse == pytest.approx(1.3, rel=1e-12)
    np.testing.assert_allclose(res.rotation_deg, 0.0, atol=1e-12)
    np.testing.assert_allclose(res.rpe_translation, 0.0, atol=1e-12)  # a common shift keeps relative poses
    # SE(3) alignment removes a common shift entirely
    aligned = compare_poses(ref, est, mode="se3")
    assert aligned.ate_rmse < 1e-12 and aligned.alignment.scale == 1.0
    # homography: t = R_cᵀ (t_r - t_c), R = I  =>  γ ‖d‖² with γ = 1 / (xmin xmax)
    np.testing.assert_allclose(res.homography, 1.3**2 / (0.5 * 2.0), rtol=1e-12)


def test_exact_similarity_gives_zero_errors_and_its_scale() -> None:
    ref = trajectory(30, 4)
    rot_s = Rotation.random(random_state=5).as_matrix()
    est = make_c2w(rot_s @ ref[:, :3, :3], 0.25 * ref[:, :3, 3] @ rot_s.T + 7.0)
    res = compare_poses(ref, est, mode="sim3", xmin=1.0, xmax=3.0)
    assert res.alignment.scale == pytest.approx(4.0, rel=1e-10)
    assert res.stats["rotation_deg"].max < 1e-6 and res.stats["translation"].max < 1e-9
    assert res.stats["homography"].max < 1e-15
    assert res.auc["rotation_deg"] == pytest.approx(1.0, abs=1e-7)
    assert res.recall["translation"] == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("mode", ["se3", "sim3"])
def test_matches_evo_ape_and_rpe(mode: str) -> None:
    ref = trajectory(300, 6)
    est = noisy_similar(ref, 7)
    res = compare_poses(ref, est, mode=mode)
    scale = mode == "sim3"
    ape_t = main_ape.ape(evo_traj(ref), evo_traj(est), evo_metrics.PoseRelation.translation_part, align=True, correct_scale=scale)
    assert res.ate_rmse == pytest.approx(ape_t.stats["rmse"], rel=1e-6)
    np.testing.assert_allclose(res.translation, ape_t.np_arrays["error_array"], rtol=1e-6, atol=1e-12)
    ape_r = main_ape.ape(evo_traj(ref), evo_traj(est), evo_metrics.PoseRelation.rotation_angle_deg, align=True, correct_scale=scale)
    np.testing.assert_allclose(res.rotation_deg, ape_r.np_arrays["error_array"], rtol=1e-6, atol=1e-9)
    for relation, ours in (
        (evo_metrics.PoseRelation.translation_part, res.rpe_translation),
        (evo_metrics.PoseRelation.rotation_angle_deg, res.rpe_rotation_deg),
    ):
        rpe = main_rpe.rpe(
            evo_traj(ref), evo_traj(est), relation, delta=1, delta_unit=evo_metrics.Unit.frames,
            all_pairs=True, align=True, correct_scale=scale,
        )
        assert ours.shape == (299,)
        np.testing.assert_allclose(ours, rpe.np_arrays["error_array"], rtol=1e-6, atol=1e-9)
        assert ErrorStats.of(ours).rmse == pytest.approx(rpe.stats["rmse"], rel=1e-6)
        assert ErrorStats.of(ours).mean == pytest.approx(rpe.stats["mean"], rel=1e-6)
    if mode == "sim3":
        assert res.alignment.scale == pytest.approx(1 / 2.5, rel=0.02)


def test_rpe_with_larger_delta_matches_evo() -> None:
    ref = trajectory(50, 8)
    est = noisy_similar(ref, 9, scale=1.0)
    trans, rot = relative_pose_errors(ref, est, delta=3)
    rpe = main_rpe.rpe(evo_traj(ref), evo_traj(est), evo_metrics.PoseRelation.translation_part, delta=3, delta_unit=evo_metrics.Unit.frames)
    np.testing.assert_allclose(trans, rpe.np_arrays["error_array"], rtol=1e-9)
    assert rot.shape == trans.shape == (16,)


def test_per_camera_bounds_are_used() -> None:
    ref = trajectory(20, 10)
    est = noisy_similar(ref, 11, scale=1.0)
    rng = np.random.default_rng(12)
    xmin = rng.uniform(0.2, 1.0, size=20)
    xmax = xmin + rng.uniform(0.5, 5.0, size=20)
    res = compare_poses(ref, est, mode="se3", xmin=xmin, xmax=xmax)
    direct = homography_error(torch.from_numpy(ref), torch.from_numpy(res.aligned_c2w), torch.from_numpy(xmin), torch.from_numpy(xmax), "opencv")
    np.testing.assert_allclose(res.homography, direct.numpy(), rtol=1e-12)
    wide = compare_poses(ref, est, mode="se3", xmin=100.0, xmax=200.0)
    # far planes: the translation term fades and the homography error tends to the rotation term
    assert not np.allclose(wide.homography, res.homography)


def test_recall_and_auc_known_values() -> None:
    errors = np.array([0.0, 1.0, 2.0, 3.0])
    np.testing.assert_allclose(recall_at(errors, [0.5, 1.0, 2.5, 10.0]), [0.25, 0.5, 0.75, 1.0])
    # exact step integral: mean(max(0, 1 - e/4)) = (1 + 0.75 + 0.5 + 0.25) / 4
    assert auc_at(errors, 4.0) == pytest.approx(0.625)
    assert auc_at(errors, 2.0) == pytest.approx((1 + 0.5 + 0 + 0) / 4)
    # agrees with brute-force integration of the recall curve
    rng = np.random.default_rng(13)
    errs = rng.exponential(2.0, size=200)
    grid = np.linspace(0.0, 5.0, 200_001)
    brute = np.trapz(recall_at(errs, grid), grid) / 5.0
    assert auc_at(errs, 5.0) == pytest.approx(brute, abs=1e-4)
    with pytest.raises(ValueError):
        auc_at(errs, 0.0)


def test_error_stats_and_scene_radius() -> None:
    stats = ErrorStats.of(np.array([3.0, 4.0, 0.0, 1.0]))
    assert (stats.mean, stats.median, stats.max, stats.count) == (2.0, 2.0, 4.0, 4)
    assert stats.rmse == pytest.approx(np.sqrt(26 / 4))
    assert np.isnan(ErrorStats.of(np.zeros(0)).mean)
    centres = np.array([[0.0, 0, 0], [2, 0, 0], [1, 1, 0], [1, -1, 0]])
    assert scene_radius(centres) == pytest.approx(1.0)  # centroid (1, 0, 0), max distance 1


def test_translation_thresholds_scale_with_the_scene() -> None:
    ref = trajectory(30, 14)
    est = noisy_similar(ref, 15, scale=1.0)
    res = compare_poses(ref, est, mode="se3")
    size = scene_radius(ref[:, :3, 3])
    assert res.translation_thresholds == pytest.approx((0.02 * size, 0.04 * size, 0.10 * size))
    assert res.recall["translation"] == pytest.approx(recall_at(res.translation, res.translation_thresholds).tolist())
    assert res.auc["translation"] == pytest.approx(np.mean(np.clip(1 - res.translation / (0.10 * size), 0, 1)))


def test_alignment_errors_propagate() -> None:
    ref = trajectory(2, 16)
    with pytest.raises(InputError, match="at least 3"):
        compare_poses(ref, ref, mode="sim3")


def short_arc(n: int = 8) -> np.ndarray:
    """``n`` cameras on a 40° arc of a circle of radius 20, all in one plane, looking at its centre: the
    camera centres fix an alignment's rotation about the arc's chord only through the arc's small sagitta."""
    angles = np.radians(np.linspace(0.0, 40.0, n))
    centres = np.stack([20.0 * np.cos(angles), 20.0 * np.sin(angles), np.zeros(n)], axis=1)  # [n, 3]
    forward = -centres / np.linalg.norm(centres, axis=1, keepdims=True)  # OpenCV z: towards the circle's centre
    down = np.tile(np.array([0.0, 0.0, 1.0]), (n, 1))
    right = np.cross(down, forward)
    return make_c2w(np.stack([right, down, forward], axis=2), centres)


def test_pairwise_errors_need_no_alignment_and_sample_beyond_the_cap() -> None:
    ref = trajectory(300, 8)
    est = noisy_similar(ref, 9)  # another world frame and scale, 0.03 rad noise per camera
    full = pairwise_rotation_errors(ref, est)
    assert full.shape == (300 * 299 // 2,)
    # the same noise without the change of frame: the same relative errors
    rot_s = Rotation.random(random_state=9 + 100).as_matrix()
    same_frame = make_c2w(rot_s.T @ est[:, :3, :3], est[:, :3, 3])
    np.testing.assert_allclose(pairwise_rotation_errors(ref, same_frame), full, atol=1e-7)
    sampled = pairwise_rotation_errors(ref, est, max_pairs=5000, seed=3)
    assert sampled.shape == (5000,)
    np.testing.assert_array_equal(sampled, pairwise_rotation_errors(ref, est, max_pairs=5000, seed=3))  # seeded
    assert np.median(sampled) == pytest.approx(np.median(full), rel=0.05)
    assert sampled.max() <= full.max() + 1e-9 and sampled.min() > 0.0  # no pair of a camera with itself (error 0)
    # under the cap every pair is taken, in triu order
    np.testing.assert_array_equal(pairwise_rotation_errors(ref[:50], est[:50], max_pairs=5000),
                                  pairwise_rotation_errors(ref[:50], est[:50]))


def test_a_common_rotation_is_told_from_the_cameras_own_errors() -> None:
    ref = short_arc()
    rng = np.random.default_rng(11)
    own = Rotation.from_rotvec(np.radians(0.05) * rng.normal(size=(8, 3))).as_matrix()  # ~0.05° per axis
    # every camera turned by the same 1° about the chord's axis, in place (centres exact): what a centre-only
    # alignment cannot undo
    common = Rotation.from_rotvec(np.radians(1.0) * np.array([0.0, 1.0, 0.0])).as_matrix()
    turned = make_c2w(common @ ref[:, :3, :3] @ own, ref[:, :3, 3])
    res = compare_poses(ref, turned, mode="sim3")
    assert res.stats["rotation_deg"].median > 0.9  # the alignment leaves the common turn
    assert res.stats["pairwise_rotation_deg"].median < 0.2  # the pairs do not see it
    assert res.common_rotation_dominates and res.summary()["common_rotation_dominates"] is True
    # the cameras' own errors alone: not flagged
    alone = compare_poses(ref, make_c2w(ref[:, :3, :3] @ own, ref[:, :3, 3]), mode="sim3")
    assert not alone.common_rotation_dominates
    assert alone.stats["pairwise_rotation_deg"].median == pytest.approx(res.stats["pairwise_rotation_deg"].median, rel=1e-6)
    assert not common_rotation_dominates(np.zeros(0), np.ones(3)) and not common_rotation_dominates(np.ones(3), np.zeros(3))
