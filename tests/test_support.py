"""How well the tracks hold each camera (:mod:`nerf_posefix.sfm.support`), on toybox_tiny's COLMAP model
(16 images, ~430 observations each) with some images' observations removed, and on a small synthetic survey
(noise and outliers) against a per-image reference: one covariance problem and one residual per image, as
the module computed them before it batched them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pycolmap
import pytest

from nerf_posefix.sfm.support import (
    MEDIAN_NORM_PER_SIGMA,
    MIN_OBSERVATIONS,
    WEAK_PRIOR_SIGMA_PX,
    ImageSupport,
    image_support,
    prior_sigma_px,
    centre_covariance,
    full_angle_covariance,
    summarise,
)

TINY = Path(__file__).resolve().parents[1] / "assets" / "toybox_tiny" / "sparse" / "0"
TOYBOX = Path(__file__).resolve().parents[1] / "assets" / "toybox" / "sparse" / "0"


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


def _reference_support(rec: pycolmap.Reconstruction) -> dict[str, tuple[int, int, float, float, float, float]]:
    """Name -> (observations, group, σ rotation, σ centre, σ px, residual px), the slow way: one covariance
    problem per image (its pose the only variable, its points constant), a Python loop over its observations,
    groups by union-find over the tracks."""
    rec.update_point_3d_errors()
    median = float(np.median([p.error for p in rec.points3D.values()]))
    sigma_kp = max(median / MEDIAN_NORM_PER_SIGMA, 0.05)
    opts = pycolmap.BundleAdjustmentOptions()
    opts.refine_focal_length = opts.refine_principal_point = opts.refine_extra_params = False
    opts.print_summary = False
    opts.ceres.loss_function_type = pycolmap.LossFunctionType.CAUCHY
    opts.ceres.loss_function_scale = max(2.0 * median, 0.1)
    parent = {int(i): int(i) for i in rec.reg_image_ids()}

    def find(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for point in rec.points3D.values():
        ids = sorted({int(el.image_id) for el in point.track.elements})
        for other in ids[1:]:
            a, b = find(ids[0]), find(other)
            if a != b:
                parent[b] = a
    members: dict[int, list[int]] = {}
    for i in parent:
        members.setdefault(find(i), []).append(i)
    group = {i: k for k, m in enumerate(sorted(members.values(), key=lambda m: (-len(m), min(m)))) for i in m}
    out = {}
    for image_id in rec.reg_image_ids():
        image = rec.images[image_id]
        observed = [p for p in image.points2D if p.has_point3D()]
        residual = float(np.median([np.linalg.norm(image.project_point(rec.points3D[p.point3D_id].xyz) - p.xy)
                                    for p in observed])) if observed else float("nan")
        sigma = (float("inf"),) * 3
        if len(observed) >= 3:
            config = pycolmap.BundleAdjustmentConfig()
            config.add_image(image_id)
            for p in observed:
                config.add_constant_point(p.point3D_id)
            adjuster = pycolmap.create_default_ceres_bundle_adjuster(opts, config, rec)
            cov = pycolmap.estimate_ba_covariance(pycolmap.BACovarianceOptions(), rec, adjuster)
            block = full_angle_covariance(cov.get_cam_cov_from_world(image_id)) * sigma_kp**2  # tested below
            rot = float(np.degrees(np.sqrt(np.linalg.eigvalsh(block[:3, :3]).max())))
            centre = float(np.sqrt(np.linalg.eigvalsh(centre_covariance(image.cam_from_world(), block)).max()))
            m = np.asarray(image.cam_from_world().matrix())
            depth = float(np.median([m[2, :3] @ rec.points3D[p.point3D_id].xyz + m[2, 3] for p in observed]))
            focal = rec.cameras[image.camera_id].mean_focal_length()
            sigma = (rot, centre, focal * (np.radians(rot) + centre / depth))
        out[image.name] = (len(observed), group[int(image_id)], *sigma, residual)
    return out


def _assert_matches_reference(support: list[ImageSupport], reference: dict) -> None:
    assert [s.name for s in support] == sorted(reference)
    for s in support:
        observations, group, rot, centre, px, residual = reference[s.name]
        assert (s.observations, s.group) == (observations, group), s.name
        np.testing.assert_allclose([s.sigma_rotation_deg, s.sigma_centre, s.sigma_px, s.residual_px],
                                   [rot, centre, px, residual], rtol=1e-6, atol=1e-9, equal_nan=True, err_msg=s.name)


def test_batched_support_equals_the_per_image_reference(rec: pycolmap.Reconstruction) -> None:
    """One covariance problem for many images (points constant: each pose its own block) gives the numbers of
    one problem per image, with every batch size; thin and empty images included."""
    ids = {rec.images[i].name: i for i in rec.reg_image_ids()}
    _keep_observations(rec, ids["005.png"], MIN_OBSERVATIONS - 10)
    _keep_observations(rec, ids["010.png"], 2)
    reference = _reference_support(rec)
    for batch in (1, 5, 64):
        _assert_matches_reference(image_support(rec, batch_images=batch), reference)


def test_batched_support_equals_the_reference_on_a_noisy_survey(tmp_path: Path) -> None:
    """A synthetic survey (0.5 px noise, 2 % outliers, poses off: the Cauchy loss down-weights many
    observations), in batches of 7 images."""
    from benchmarks.synthetic_model import SyntheticConfig, generate, write_synthetic

    write_synthetic(generate(SyntheticConfig(num_images=30, seed=3)), tmp_path, images=False)
    rec = pycolmap.Reconstruction(str(tmp_path / "sparse" / "0"))
    reference = _reference_support(rec)
    support = image_support(rec, batch_images=7)
    _assert_matches_reference(support, reference)
    assert len({s.sigma_rotation_deg for s in support}) == len(support)  # every pose its own answer


def test_a_failed_batch_is_split_until_the_failing_image_is_alone(rec: pycolmap.Reconstruction,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """pycolmap answers None for a whole problem when one pose is rank deficient: the batch is split and only
    that image goes without a covariance (σ inf, weak), the others keep the reference's numbers."""
    reference = _reference_support(rec)
    bad = next(i for i in rec.reg_image_ids() if rec.images[i].name == "007.png")
    create, estimate = pycolmap.create_default_ceres_bundle_adjuster, pycolmap.estimate_ba_covariance
    problems: list[set[int]] = []

    def create_recording(opts, config, reconstruction):  # noqa: ANN001, ANN202
        problems.append(set(config.images))
        return create(opts, config, reconstruction)

    def estimate_failing(opts, reconstruction, adjuster):  # noqa: ANN001, ANN202
        return None if bad in problems[-1] else estimate(opts, reconstruction, adjuster)

    monkeypatch.setattr(pycolmap, "create_default_ceres_bundle_adjuster", create_recording)
    monkeypatch.setattr(pycolmap, "estimate_ba_covariance", estimate_failing)
    support = image_support(rec, batch_images=16)
    assert len(problems[0]) == 16 and {bad} in problems and len(problems) <= 1 + 2 * 4
    failed = next(s for s in support if s.name == "007.png")
    assert failed.sigma_rotation_deg == failed.sigma_px == np.inf and failed.weak and "uncertain" in failed.reason
    reference["007.png"] = (*reference["007.png"][:2], np.inf, np.inf, np.inf, reference["007.png"][5])
    _assert_matches_reference(support, reference)


def test_groups_are_ordered_by_size_then_smallest_image_id(rec: pycolmap.Reconstruction) -> None:
    """The capture cut in two halves of 8 images (the points they share lose their observations in one half):
    a tie, so group 0 is the half holding the smallest image id, whichever half was cut."""
    names = {i: rec.images[i].name for i in rec.reg_image_ids()}
    first_half = {i for i, n in names.items() if n < "008.png"}
    for cut_half in (set(names) - first_half, first_half):
        cut = pycolmap.Reconstruction(rec)
        for point_id in list(cut.point3D_ids()):
            track = [(el.image_id, el.point2D_idx) for el in cut.points3D[point_id].track.elements]
            if {i for i, _ in track} <= cut_half or not {i for i, _ in track} & cut_half:
                continue
            for image_id, idx in track:
                if image_id in cut_half:
                    if cut.points3D[point_id].track.length() <= 2:
                        cut.delete_point3D(point_id)
                        break
                    cut.delete_observation(image_id, idx)
        support = image_support(cut)
        _assert_matches_reference(support, _reference_support(cut))
        groups = {s.name: s.group for s in support}
        holding_min = first_half if min(names) in first_half else set(names) - first_half
        assert {groups[names[i]] for i in holding_min} == {0}
        assert {groups[names[i]] for i in set(names) - holding_min} == {1}


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


def test_pose_covariance_matches_a_finite_difference_jacobian_in_rotation_vector_and_centre() -> None:
    """pycolmap's covariance (half-angle rotation tangent), converted by ``full_angle_covariance``, and the centre
    covariance from ``centre_covariance``, equal ``(JᵀJ)⁻¹`` of the image's reprojection residuals (squared loss,
    points fixed) differentiated numerically in (rotation vector of ``R' = exp(ω) R``, ``t``) and in (``ω``, centre)."""
    from scipy.spatial.transform import Rotation

    rec = pycolmap.Reconstruction(str(TOYBOX))
    image_id = sorted(rec.reg_image_ids())[5]
    opts = pycolmap.BundleAdjustmentOptions()
    opts.refine_points3D = opts.refine_focal_length = opts.refine_principal_point = opts.refine_extra_params = False
    opts.print_summary = False
    config = pycolmap.BundleAdjustmentConfig()
    config.add_image(image_id)
    adjuster = pycolmap.create_default_ceres_bundle_adjuster(opts, config, rec)
    block = full_angle_covariance(pycolmap.estimate_ba_covariance(pycolmap.BACovarianceOptions(), rec, adjuster).get_cam_cov_from_world(image_id))
    image, pose = rec.images[image_id], rec.images[image_id].cam_from_world()
    camera = rec.cameras[image.camera_id]
    observed = [(p.xy, rec.points3D[p.point3D_id].xyz) for p in image.points2D if p.has_point3D()]
    xy, points = np.array([o[0] for o in observed]), np.array([o[1] for o in observed])
    rotation, t = pose.rotation.matrix(), np.asarray(pose.translation)
    centre = -rotation.T @ t

    def residuals(rot: np.ndarray, trans: np.ndarray) -> np.ndarray:
        return (np.asarray(camera.img_from_cam(points @ rot.T + trans)) - xy).ravel()

    def by_t(p: np.ndarray) -> np.ndarray:
        return residuals(Rotation.from_rotvec(p[:3]).as_matrix() @ rotation, t + p[3:])

    def by_centre(p: np.ndarray) -> np.ndarray:
        rot = Rotation.from_rotvec(p[:3]).as_matrix() @ rotation
        return residuals(rot, -rot @ (centre + p[3:]))

    for f, expected in ((by_t, block), (by_centre, None)):
        jacobian = np.stack([(f(e * 1e-6) - f(-e * 1e-6)) / 2e-6 for e in np.eye(6)], axis=1)
        numeric = np.linalg.inv(jacobian.T @ jacobian)
        if expected is not None:
            np.testing.assert_allclose(expected, numeric, rtol=1e-4, atol=1e-6 * np.abs(numeric).max())
        else:
            np.testing.assert_allclose(centre_covariance(pose, block), numeric[3:, 3:], rtol=1e-4, atol=1e-6 * np.abs(numeric).max())
