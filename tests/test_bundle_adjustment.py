"""nerf_posefix.sfm.bundle_adjustment: robust BA of a COLMAP model's own tracks with pycolmap.

Runs on the bundled synthetic model ``assets/toybox_tiny/sparse/0`` (16 views of 64x64, exact 2D
observations: the true poses and points reproject with zero error), so the truth is known exactly.
Each bundle adjustment here takes well under a second.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

pycolmap = pytest.importorskip("pycolmap")

from nerf_posefix.errors import InputError  # noqa: E402
from nerf_posefix.geometry.alignment import align, pose_alignment  # noqa: E402
from nerf_posefix.geometry.metrics import pairwise_rotation_errors  # noqa: E402
from nerf_posefix.geometry.poses import invert_poses, rotation_angle_deg  # noqa: E402
from nerf_posefix.sfm.bundle_adjustment import (  # noqa: E402
    BundleAdjustmentOptions,
    bundle_adjust_model,
    reconstruction_c2w,
    write_adjusted_model,
)

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "assets" / "toybox_tiny" / "sparse" / "0"
#: Images whose pose is perturbed (every fifth of the 16, by name order).
PERTURBED_EVERY = 5
PERTURB_ROT_DEG = 2.0
PERTURB_TRANS = np.array([0.1, -0.05, 0.08])  # world-to-camera translation offset (scene radius ~3.2)


@pytest.fixture(scope="module")
def truth() -> tuple[list[str], np.ndarray]:
    """Names and exact camera-to-world poses ``[16, 4, 4]`` of the bundled model."""
    return reconstruction_c2w(pycolmap.Reconstruction(str(MODEL)))


def _scene_radius(c2w: np.ndarray) -> float:
    centres = c2w[:, :3, 3]
    return float(np.linalg.norm(centres - centres.mean(axis=0), axis=1).max())


def _perturbed_model(directory: Path, outlier_fraction: float = 0.0, seed: int = 0) -> Path:
    """Write a copy of the bundled model with every ``PERTURBED_EVERY``-th image's pose rotated by
    ``PERTURB_ROT_DEG`` and shifted; optionally move a fraction of all observations by 5-10 px in random
    directions (gross outliers that COLMAP's 4 px filter would not all remove). Returns the directory."""
    rec = pycolmap.Reconstruction(str(MODEL))
    names = sorted(rec.images[i].name for i in rec.reg_image_ids())
    chosen = set(names[::PERTURBED_EVERY])
    delta = Rotation.from_rotvec(np.deg2rad(PERTURB_ROT_DEG) * np.array([0.6, 0.8, 0.0])).as_matrix()
    for image_id in rec.reg_image_ids():
        image = rec.images[image_id]
        if image.name in chosen:
            frame = rec.frames[image.frame_id]  # the pose lives in the frame (COLMAP 4)
            w2c = frame.rig_from_world.matrix()  # [3, 4]
            frame.rig_from_world = pycolmap.Rigid3d(pycolmap.Rotation3d(delta @ w2c[:, :3]), w2c[:, 3] + PERTURB_TRANS)
    if outlier_fraction > 0:
        rng = np.random.default_rng(seed)
        obs = [(i, k) for i in rec.reg_image_ids() for k, p in enumerate(rec.images[i].points2D) if p.has_point3D()]
        for s in rng.choice(len(obs), size=int(outlier_fraction * len(obs)), replace=False):
            image_id, k = obs[s]
            angle, magnitude = rng.uniform(0, 2 * np.pi), rng.uniform(5.0, 10.0)
            point = rec.images[image_id].points2D[k]
            point.xy = point.xy + magnitude * np.array([np.cos(angle), np.sin(angle)])
    directory.mkdir(parents=True, exist_ok=True)
    rec.write(str(directory))
    return directory


def _errors_to_truth(c2w: np.ndarray, truth_c2w: np.ndarray) -> tuple[float, float]:
    """Max rotation error (deg) and max centre error (truth units) after a Sim(3) of ``c2w`` onto the truth."""
    aligned = align(c2w, truth_c2w, mode="sim3").apply(c2w)
    rot = rotation_angle_deg(truth_c2w[:, :3, :3], aligned[:, :3, :3])
    centre = np.linalg.norm(aligned[:, :3, 3] - truth_c2w[:, :3, 3], axis=-1)
    return float(rot.max()), float(centre.max())


# ------------------------------------------------------------------------------------------------
# (a) an exact model does not move; (c) no drift of the frame


@pytest.mark.parametrize("options", [BundleAdjustmentOptions(), BundleAdjustmentOptions(loss="squared"),
                                     BundleAdjustmentOptions(loss="huber", scale_px=0.5, refine_points=False)],
                         ids=["default", "squared", "huber-fixed-points"])
def test_exact_model_is_unchanged(truth, options):
    names, c2w = truth
    result = bundle_adjust_model(MODEL, options)
    assert result.names == names
    np.testing.assert_allclose(result.input_c2w, c2w, atol=1e-12)
    radius = _scene_radius(c2w)
    rot = rotation_angle_deg(c2w[:, :3, :3], result.c2w[:, :3, :3])  # deg
    centre = np.linalg.norm(result.c2w[:, :3, 3] - c2w[:, :3, 3], axis=-1)
    assert np.deg2rad(rot).max() < 1e-6  # relative: radians
    assert centre.max() / radius < 1e-6  # relative to the scene radius
    assert result.reprojection_error_before_px < 1e-9 and result.reprojection_error_after_px < 1e-6
    ids = result.point3D_ids
    assert ids.shape == (988,) and result.points.shape == (988, 3)
    assert result.wall_time_s > 0 and result.reconstruction.num_reg_images() == 16


@pytest.mark.parametrize("gauge", ["sim3_poses", "sim3_centres"])
def test_exact_model_stays_in_the_input_frame(truth, gauge):
    _, c2w = truth
    result = bundle_adjust_model(MODEL, BundleAdjustmentOptions(fix_gauge=gauge))
    # the similarity applied to fix the gauge, and those between output and input poses: identity
    for alignment in (result.alignment, align(result.c2w, c2w, mode="sim3"), pose_alignment(result.c2w, c2w)):
        assert abs(alignment.scale - 1.0) < 1e-9
        assert rotation_angle_deg(np.eye(3), alignment.rotation) < 1e-7
        assert np.abs(alignment.translation).max() < 1e-9
    # the points are the input's, in the input frame
    rec = pycolmap.Reconstruction(str(MODEL))
    xyz = np.array([rec.points3D[int(i)].xyz for i in result.point3D_ids])
    np.testing.assert_allclose(result.points, xyz, atol=1e-9)


# ------------------------------------------------------------------------------------------------
# (b) perturbed poses come back


@pytest.mark.parametrize("gauge", ["sim3_poses", "sim3_centres"])
def test_perturbed_poses_come_back(tmp_path, truth, gauge):
    """Tolerance: the observations are exact, so the true poses are the (zero-cost) minimum and BA
    converges to them up to the solver's tolerances: 1e-6 deg and 1e-6 x the scene radius after a
    Sim(3) onto the truth (measured: ~1e-10). Before alignment the output sits in the *input* frame,
    whose gauge fit includes the perturbed centres, so it differs from the truth's frame by a small
    similarity (measured: 0.13 deg with ``sim3_centres``, 0.36 deg with ``sim3_poses``, whose rotation
    is the orientations' mean, shifted here by the four cameras all rotated the same way): hence the comparison after Sim(3) (and the pairwise errors, which
    need no alignment). Then the gauge: re-fitting the output onto the input by the gauge's own
    similarity gives the identity (the output *is* in the input frame by that definition)."""
    names, c2w = truth
    model = _perturbed_model(tmp_path / "perturbed")
    result = bundle_adjust_model(model, BundleAdjustmentOptions(loss="cauchy", scale_px=1.0, fix_gauge=gauge))
    assert result.names == names
    before = rotation_angle_deg(c2w[:, :3, :3], result.input_c2w[:, :3, :3])
    assert np.isclose(before.max(), PERTURB_ROT_DEG, atol=1e-6) and (before > 1.0).sum() == 4
    rot, centre = _errors_to_truth(result.c2w, c2w)
    assert rot < 1e-6 and centre < 1e-6 * _scene_radius(c2w)
    assert pairwise_rotation_errors(c2w, result.c2w).max() < 1e-6
    assert result.reprojection_error_before_px > 0.3 and result.reprojection_error_after_px < 1e-6
    # the output frame is the input one: the gauge's similarity of the output onto the input is identity
    fit = pose_alignment if gauge == "sim3_poses" else lambda est, ref: align(est, ref, mode="sim3")
    back = fit(result.c2w, result.input_c2w)
    assert abs(back.scale - 1.0) < 1e-9 and rotation_angle_deg(np.eye(3), back.rotation) < 1e-7
    assert np.abs(back.translation).max() < 1e-9


def test_robust_loss_resists_outlier_observations(tmp_path, truth):
    """3 % of the observations moved by 5-10 px: the Cauchy loss (1 px) recovers the poses to
    < 0.05 deg (measured 0.015 deg: an observation 5-10 px off keeps 1-4 % of its weight), the squared
    loss is pulled away (measured 0.43 deg, asserted > 0.2 deg)."""
    _, c2w = truth
    model = _perturbed_model(tmp_path / "outliers", outlier_fraction=0.03)
    robust = bundle_adjust_model(model, BundleAdjustmentOptions(loss="cauchy", scale_px=1.0))
    squared = bundle_adjust_model(model, BundleAdjustmentOptions(loss="squared"))
    assert squared.scale_px is None
    rot_robust, _ = _errors_to_truth(robust.c2w, c2w)
    rot_squared, _ = _errors_to_truth(squared.c2w, c2w)
    assert rot_robust < 0.05
    assert rot_squared > 0.2


def test_auto_scale_is_resolved(tmp_path):
    """The default scale is 2x the median per-point error, clipped to [0.1, 2] px."""
    exact = bundle_adjust_model(MODEL)
    assert exact.scale_px == pytest.approx(0.1)  # an exact model: the lower clip
    rec = pycolmap.Reconstruction(str(_perturbed_model(tmp_path / "p")))
    rec.update_point_3d_errors()
    median = float(np.median([p.error for p in rec.points3D.values()]))
    perturbed = bundle_adjust_model(tmp_path / "p")
    assert perturbed.scale_px == pytest.approx(float(np.clip(2.0 * median, 0.1, 2.0)))
    assert perturbed.summary()["scale_px"] == perturbed.scale_px


# ------------------------------------------------------------------------------------------------
# (d) bad input


def test_missing_model_dir(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(InputError, match="no_such_model"):
        bundle_adjust_model(missing)


def test_empty_model_dir(tmp_path):
    empty = tmp_path / "empty_model"
    empty.mkdir()
    with pytest.raises(InputError, match="empty_model"):
        bundle_adjust_model(empty)


def test_unreadable_model_dir(tmp_path):
    bad = tmp_path / "garbage_model"
    bad.mkdir()
    for name in ("cameras.bin", "images.bin", "points3D.bin"):
        (bad / name).write_bytes(b"\x07" * 40)
    with pytest.raises(InputError, match="garbage_model"):
        bundle_adjust_model(bad)


def test_bad_options():
    with pytest.raises(InputError, match="loss"):
        bundle_adjust_model(MODEL, BundleAdjustmentOptions(loss="l2"))  # type: ignore[arg-type]
    with pytest.raises(InputError, match="scale_px"):
        bundle_adjust_model(MODEL, BundleAdjustmentOptions(scale_px=0.0))


# ------------------------------------------------------------------------------------------------
# (e) the written model carries the adjusted poses


def test_written_model_reads_back(tmp_path, truth):
    from nerfstudio.data.utils.colmap_parsing_utils import read_images_binary

    result = bundle_adjust_model(_perturbed_model(tmp_path / "in"), BundleAdjustmentOptions(scale_px=1.0))
    out = write_adjusted_model(result, tmp_path / "out")
    for name in ("cameras.bin", "images.bin", "points3D.bin", "rigs.bin", "frames.bin"):
        assert (out / name).is_file(), name
    # pycolmap (poses from frames.bin): cam_from_world() as adjusted
    back = pycolmap.Reconstruction(str(out))
    by_name = {back.images[i].name: back.images[i] for i in back.reg_image_ids()}
    assert sorted(by_name) == result.names
    for name, c2w in zip(result.names, result.c2w):
        image = by_name[name]
        np.testing.assert_allclose(image.cam_from_world().matrix(), invert_poses(c2w[None])[0, :3], atol=1e-12)
        np.testing.assert_allclose(back.frames[image.frame_id].rig_from_world.matrix(), image.cam_from_world().matrix(),
                                   atol=1e-12)  # trivial rig: the frame carries the same pose
    # a reader of the classic files only (nerfstudio's, images.bin qvec/tvec) sees the same poses
    images = read_images_binary(str(out / "images.bin"))
    for im in images.values():
        w2c = invert_poses(result.c2w[result.names.index(im.name)][None])[0]
        np.testing.assert_allclose(Rotation.from_quat(im.qvec[[1, 2, 3, 0]]).as_matrix(), w2c[:3, :3], atol=1e-9)
        np.testing.assert_allclose(im.tvec, w2c[:3, 3], atol=1e-9)
    # points as adjusted
    xyz = np.array([back.points3D[int(i)].xyz for i in result.point3D_ids])
    np.testing.assert_allclose(xyz, result.points, atol=1e-12)
    # the poses differ from the (perturbed) input, i.e. the check above is not vacuous
    assert rotation_angle_deg(result.input_c2w[:, :3, :3], result.c2w[:, :3, :3]).max() > 1.0
    # no overwrite of an existing model
    with pytest.raises(InputError, match="already holds"):
        write_adjusted_model(result, out)


# ------------------------------------------------------------------------------------------------
# pairwise_rotation_errors


def test_pairwise_rotation_errors_is_alignment_free(truth):
    _, c2w = truth
    n = c2w.shape[0]
    sim = np.eye(4)
    sim[:3, :3] = Rotation.from_euler("xyz", [30, -50, 110], degrees=True).as_matrix()
    sim[:3, 3] = [1.0, -2.0, 3.0]
    moved = sim @ c2w  # the same cameras in another world frame
    errors = pairwise_rotation_errors(c2w, moved)
    assert errors.shape == (n * (n - 1) // 2,)
    assert errors.max() < 1e-6
    # one camera rotated by 1 deg (camera side): its n-1 pairs err by 1 deg, the others by 0
    bumped = c2w.copy()
    bumped[3, :3, :3] = bumped[3, :3, :3] @ Rotation.from_rotvec([0, 0, np.deg2rad(1.0)]).as_matrix()
    errors = pairwise_rotation_errors(c2w, bumped)
    i, j = np.triu_indices(n, 1)
    involved = (i == 3) | (j == 3)
    np.testing.assert_allclose(errors[involved], 1.0, atol=1e-9)
    assert errors[~involved].max() < 1e-9


def test_pose_alignment_recovers_a_similarity(truth):
    _, c2w = truth
    rot = Rotation.from_euler("xyz", [10, -20, 35], degrees=True).as_matrix()
    moved = np.zeros_like(c2w)
    moved[:, :3, :3] = rot.T @ c2w[:, :3, :3]
    moved[:, :3, 3] = (c2w[:, :3, 3] - [0.5, 0.2, -1.0]) @ rot / 2.5  # x_moved = R^T (x - t) / s
    moved[:, 3, 3] = 1.0
    fit = pose_alignment(moved, c2w)
    assert fit.scale == pytest.approx(2.5, rel=1e-12)
    np.testing.assert_allclose(fit.rotation, rot, atol=1e-12)
    np.testing.assert_allclose(fit.translation, [0.5, 0.2, -1.0], atol=1e-12)
    np.testing.assert_allclose(fit.apply(moved), c2w, atol=1e-12)
    # one camera: scale 1, the pose itself
    single = pose_alignment(moved[:1], c2w[:1])
    assert single.scale == 1.0
    np.testing.assert_allclose(single.apply(moved[:1])[0, :3, :3], c2w[0, :3, :3], atol=1e-12)


# ------------------------------------------------------------------------------------------------
# issue 23: stopping when the poses stop moving, the linear solver, memory


def test_the_pose_rule_stops_early_at_the_converged_answer(tmp_path, truth):
    """The default stopping rule ends before the iteration cap and lands where running to the cap lands."""
    _, truth_c2w = truth
    model = _perturbed_model(tmp_path / "model", outlier_fraction=0.02)
    early = bundle_adjust_model(model)
    full = bundle_adjust_model(model, BundleAdjustmentOptions(pose_tolerance=0.0))
    assert early.run is not None and full.run is not None
    assert early.run.stop in ("poses_stopped", "converged") and early.run.iterations < 100
    assert early.run.linear_solver == "dense_schur"  # 16 images
    assert early.run.graph["stop_threshold_px_per_iteration"] is not None or early.run.stop == "converged"
    rot_early, centre_early = _errors_to_truth(early.c2w, truth_c2w)
    rot_full, centre_full = _errors_to_truth(full.c2w, truth_c2w)
    assert rot_early < 0.05 and rot_full < 0.05
    assert abs(rot_early - rot_full) < 0.01
    # every block records how far the images moved
    assert all(b["max_update_px"] >= b["median_update_px"] >= 0 for b in early.run.blocks)
    assert early.summary()["solver"]["iterations"] == early.run.iterations


def test_image_motion_ignores_a_common_similarity(truth):
    from nerf_posefix.sfm.bundle_adjustment import image_motion_px

    _, c2w = truth
    n = len(c2w)
    focal, depth = np.full(n, 100.0), np.full(n, 3.0)
    sim = np.eye(4)
    sim[:3, :3] = Rotation.from_rotvec([0.1, -0.2, 0.3]).as_matrix() * 1.5
    sim[:3, 3] = [1.0, 2.0, -1.0]
    moved = sim @ c2w
    moved[:, :3, :3] /= 1.5  # a similarity of the whole set: rotations stay rotations
    assert image_motion_px(c2w, moved, focal, depth).max() < 1e-6
    one = c2w.copy()
    one[3, :3, :3] = Rotation.from_rotvec([0.0, 0.0, 1e-3]).as_matrix() @ one[3, :3, :3]
    motion = image_motion_px(c2w, one, focal, depth)
    assert int(np.argmax(motion)) == 3 and 0.05 < motion[3] < 0.15  # ~1e-3 rad x 100 px (less a share of the fit)


def test_linear_solver_for_the_problem_size():
    from nerf_posefix.sfm.bundle_adjustment import DENSE_SCHUR_MAX_IMAGES, SPARSE_SCHUR_MAX_MEAN_DEGREE, choose_linear_solver

    assert choose_linear_solver(30, 29.0) == "dense_schur"
    assert choose_linear_solver(DENSE_SCHUR_MAX_IMAGES + 1, 50.0) == "sparse_schur"
    assert choose_linear_solver(1000, 22.0) == "sparse_schur"  # a survey's sparse camera graph
    assert choose_linear_solver(5000, 20.0) == "sparse_schur"
    # a dense camera graph (an object-centric capture: 300 views, each seeing 244 others) makes the reduced camera
    # system dense: iterative Schur, whatever the number of images; the threshold on both sides
    assert choose_linear_solver(300, 244.0) == "iterative_schur"
    assert choose_linear_solver(200, SPARSE_SCHUR_MAX_MEAN_DEGREE) == "sparse_schur"
    assert choose_linear_solver(200, SPARSE_SCHUR_MAX_MEAN_DEGREE + 0.5) == "iterative_schur"
    assert choose_linear_solver(5000, 1500.0) == "iterative_schur"  # everyone sees everyone


def test_track_graph_of_the_bundled_model():
    from nerf_posefix.sfm.bundle_adjustment import track_graph

    rec = pycolmap.Reconstruction(str(MODEL))
    graph = track_graph(rec)
    assert graph.num_points == rec.num_points3D() and graph.num_observations == rec.compute_num_observations()
    assert 0 < graph.covisible_pairs <= 16 * 15 // 2
    assert graph.focal_px.shape == (16,) and np.all(graph.focal_px > 0)
    assert np.all(graph.depth > 1.0) and np.all(graph.depth < 10.0)  # cameras ~3 units from the scene


def test_memory_estimate_and_refusal(tmp_path):
    from nerf_posefix.sfm.bundle_adjustment import check_adjustment_memory, estimate_adjustment_memory, model_size

    rec = pycolmap.Reconstruction(str(MODEL))
    images, observations = model_size(MODEL)
    assert images == 16 and observations == rec.compute_num_observations()
    rec.write_text(str(tmp_path))
    images_txt, observations_txt = model_size(tmp_path)
    assert images_txt == 16 and observations_txt > 0
    assert estimate_adjustment_memory(5000, 2_000_000) < 8 * 2**30
    assert check_adjustment_memory(MODEL) > 0
    with pytest.raises(InputError, match=r"GiB of memory .* available"):
        check_adjustment_memory(MODEL, available=100 * 2**20)
    # bundle_adjust_model refuses before reading (the same check, with the machine's memory: passes here)
    assert bundle_adjust_model(MODEL).run is not None


def test_bad_stopping_options():
    for bad in (BundleAdjustmentOptions(pose_tolerance=-1.0), BundleAdjustmentOptions(linear_solver="cholesky")):  # type: ignore[arg-type]
        with pytest.raises(InputError):
            bad.check()


def test_next_block_is_sized_to_the_pace_of_what_the_rule_tests():
    """The block after the second ends, at the measured decay of the motion the rule tests (the largest image's
    after the stragglers allowed), just when that motion should have crossed the threshold."""
    from nerf_posefix.sfm.bundle_adjustment import BLOCK_ITERATIONS, MIN_BLOCK_ITERATIONS, next_block_iterations

    rng = np.random.default_rng(0)
    previous = rng.uniform(0.2, 1.0, 1000)  # px per iteration over a block of 5
    # every image slows by 20 % per iteration, except two that moved faster in this block (neighbours moved them)
    motion = previous * 0.8 ** 7.5
    motion[:2] = previous[:2] * 1.5
    # and one just above the threshold that barely slowed: its own pace would ask for ~80 more iterations, but it
    # is not what the rule tests now (the next measurement says whether it becomes that)
    previous[2], motion[2] = 0.0311, 0.0310
    threshold = 0.03
    # the rule tests the 3rd largest with 2 stragglers allowed; it decays at 0.8 per iteration like the rest
    # (the two that sped up are the stragglers): its motion at the next block's middle, 5 + L / 2 iterations after
    # this block's, must fall below the threshold
    length = next_block_iterations(motion, previous, threshold, 2, 10, 5)
    tested = np.sort(motion)[::-1][2]
    expected = int(np.ceil(2.0 * np.log(threshold / tested) / np.log(0.8) - 10))
    assert MIN_BLOCK_ITERATIONS < length < BLOCK_ITERATIONS
    assert length == expected
    assert tested * 0.8 ** (5 + length / 2) < threshold <= tested * 0.8 ** (5 + (length - 1) / 2)
    # no straggler allowed: the fastest of the two that sped up has no pace to extrapolate, a whole block
    assert next_block_iterations(motion, previous, threshold, 0, 10, 5) == BLOCK_ITERATIONS
    # already below the threshold, or no block before: the fixed block
    assert next_block_iterations(motion * 1e-3, previous, threshold, 2, 10, 5) == BLOCK_ITERATIONS
    assert next_block_iterations(motion, None, threshold, 2, 10, 5) == BLOCK_ITERATIONS
    # fast decay: the shortest block
    assert next_block_iterations(previous * 0.5 ** 7.5 * 10, previous, threshold, 2, 10, 5) == MIN_BLOCK_ITERATIONS


def test_a_wrong_principal_point_is_recovered_only_when_refined(tmp_path, truth):
    """A self-calibrated model whose principal point was held at the image centre (COLMAP's default) while the truth
    is off it: the bundled model with its principal point moved 6 px and -4 px (its observations exact for the true
    one). Held fixed, the poses absorb the error; refined (with the focal length), the principal point comes back
    and the poses with it."""
    from scene_helpers import PRINCIPAL_POINT_SHIFT_PX, tiny_model_with_moved_principal_point

    names, c2w = truth
    model = tmp_path / "pp"
    true_params, (ix, iy) = tiny_model_with_moved_principal_point(model)
    fixed = bundle_adjust_model(model, BundleAdjustmentOptions(loss="cauchy", scale_px=1.0))
    refined = bundle_adjust_model(model, BundleAdjustmentOptions(loss="cauchy", scale_px=1.0, refine_intrinsics=True,
                                                                 refine_principal_point=True))
    got = np.array(refined.reconstruction.cameras[next(iter(refined.reconstruction.cameras))].params)
    assert abs(got[ix] - true_params[ix]) < 0.05 and abs(got[iy] - true_params[iy]) < 0.05
    rot_fixed = pairwise_rotation_errors(c2w, fixed.c2w).max()
    rot_refined = pairwise_rotation_errors(c2w, refined.c2w).max()
    assert rot_refined < 1e-3 < rot_fixed
    held = bundle_adjust_model(model, BundleAdjustmentOptions(loss="cauchy", scale_px=1.0, refine_intrinsics=True))
    held_params = np.array(held.reconstruction.cameras[next(iter(held.reconstruction.cameras))].params)
    shift = PRINCIPAL_POINT_SHIFT_PX
    assert held_params[ix] == true_params[ix] + shift[0] and held_params[iy] == true_params[iy] + shift[1]  # held by default
