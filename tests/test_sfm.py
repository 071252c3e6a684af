"""benchmarks.sfm: pycolmap SfM as a user runs it, downscaling, failure reporting, the BA baseline,
and models written by the project read back by pycolmap (frames included).

Runs offline on the bundled scene (``assets/toybox``, 64 views of 128x128, exact ground truth).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pycolmap = pytest.importorskip("pycolmap")

from nerf_posefix.io.sources import load_camera_set  # noqa: E402
from nerf_posefix.workflows.experiment import pose_errors  # noqa: E402
from nerf_posefix.io.colmap import read_colmap_model, write_colmap_model  # noqa: E402
from nerf_posefix.errors import InputError  # noqa: E402
from nerf_posefix.geometry.noise import perturb_poses  # noqa: E402
from nerf_posefix.geometry.poses import invert_poses  # noqa: E402
from benchmarks.sfm import (  # noqa: E402
    PinholeCamera,
    block_downscale,
    bundle_adjust_from_poses,
    run_sfm,
)

ROOT = Path(__file__).resolve().parents[1]
SCENE = ROOT / "assets" / "toybox"
TINY = ROOT / "assets" / "toybox_tiny"


@pytest.fixture(scope="module")
def truth():
    return load_camera_set(SCENE / "sparse" / "0")


@pytest.fixture(scope="module")
def camera() -> PinholeCamera:
    return PinholeCamera.from_colmap_model(SCENE / "sparse" / "0")


@pytest.fixture(scope="module")
def sfm_fixed(tmp_path_factory, camera):
    """COLMAP on the whole bundled scene with the intrinsics fixed to the truth (~10 s)."""
    return run_sfm(SCENE / "images", tmp_path_factory.mktemp("sfm") / "fixed", intrinsics="fixed", camera=camera)


def _w2c(c2w: np.ndarray) -> np.ndarray:
    return invert_poses(c2w[None])[0]


# ------------------------------------------------------------------------------------------------
# helpers


def test_block_downscale_averages_blocks_and_drops_the_remainder():
    image = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    small = block_downscale(image, 2)
    assert small.shape == (2, 3, 3) and small.dtype == np.uint8
    expected = image[:4, :6].astype(float).reshape(2, 2, 3, 2, 3).mean(axis=(1, 3))
    np.testing.assert_array_equal(small, np.round(expected).astype(np.uint8))
    assert block_downscale(image, 1) is image
    with pytest.raises(ValueError):
        block_downscale(image, 0)


def test_pinhole_camera_scaling_and_colmap_params(camera):
    assert (camera.width, camera.height) == (128, 128)
    quarter = camera.scaled(0.25)
    assert (quarter.width, quarter.height) == (32, 32)
    assert quarter.fx == pytest.approx(camera.fx / 4) and quarter.cx == pytest.approx(16.0)
    assert [float(v) for v in camera.colmap_params().split(",")] == pytest.approx([camera.fx, camera.fy, 64.0, 64.0])


def test_bad_input_is_an_input_error_naming_the_path(tmp_path, camera):
    with pytest.raises(InputError, match="no_such_dir"):
        run_sfm(tmp_path / "no_such_dir", tmp_path / "out")
    with pytest.raises(InputError, match="999.png"):
        run_sfm(SCENE / "images", tmp_path / "out", image_names=["000.png", "999.png"])
    with pytest.raises(InputError, match="needs the known camera"):
        run_sfm(SCENE / "images", tmp_path / "out", intrinsics="fixed")
    with pytest.raises(InputError, match="64x64"):  # a 128x128 camera for 64x64 images
        run_sfm(TINY / "images", tmp_path / "out", intrinsics="fixed", camera=camera)
    (tmp_path / "exists").mkdir()
    with pytest.raises(InputError, match="exists"):
        run_sfm(SCENE / "images", tmp_path / "exists")


# ------------------------------------------------------------------------------------------------
# SfM


def test_sfm_recovers_the_ground_truth(sfm_fixed, truth, camera):
    result = sfm_fixed
    assert result.ok and result.error is None
    assert (result.num_registered, result.num_images) == (64, 64) and result.unregistered == []
    assert result.mean_reprojection_error_px < 0.5
    assert set(result.timings) >= {"extract", "match", "map", "total"}
    json.dumps(result.to_dict())  # serialisable
    # Fixed intrinsics stay the truth.
    assert result.camera_params == pytest.approx([camera.fx, camera.fy, camera.cx, camera.cy])
    errors = pose_errors(truth, result.camera_set())
    # Measured: median 0.13 deg, translation 0.2 % of the scene radius (the rotation error is mostly the
    # centre-based Sim(3) alignment's own uncertainty).
    assert errors.summary["num_cameras"] == 64
    assert errors.summary["rotation_median_deg"] < 0.5
    assert errors.summary["translation_median_rel"] < 0.01
    # COLMAP wrote the model with rigs and frames, and pycolmap reads the same poses back.
    assert (result.model_path / "frames.bin").is_file()
    rec = pycolmap.Reconstruction(str(result.model_path))
    assert rec.num_reg_images() == 64


def test_sfm_failure_is_reported_not_raised(tmp_path):
    """16 views of 64x64: COLMAP cannot initialise (measured); the result says so."""
    result = run_sfm(TINY / "images", tmp_path / "sfm", intrinsics="free")
    assert not result.ok and result.model_path is None
    assert result.num_registered == 0 and len(result.unregistered) == 16
    assert "no model" in result.error
    with pytest.raises(InputError, match="no model"):
        result.camera_set()


def test_downscaled_sfm_writes_a_full_resolution_model(tmp_path, camera, truth):
    """Images upsampled 2x (256x256, pixel-replicated), then SfM with downscale=2: COLMAP sees exactly
    the bundled 128x128 images, and the model is scaled back to the 256x256 camera."""
    import imageio.v3 as iio

    names = [f"{k:03d}.png" for k in range(16)]  # 16 neighbouring views register (measured)
    big = tmp_path / "images"
    big.mkdir()
    for name in names:
        iio.imwrite(big / name, np.repeat(np.repeat(iio.imread(SCENE / "images" / name), 2, axis=0), 2, axis=1))
    camera2 = PinholeCamera(256, 256, 2 * camera.fx, 2 * camera.fy, 2 * camera.cx, 2 * camera.cy)
    result = run_sfm(big, tmp_path / "sfm", intrinsics="fixed", camera=camera2, downscale=2)
    assert result.downscale == 2
    np.testing.assert_array_equal(iio.imread(tmp_path / "sfm" / "images_s2" / "000.png"), iio.imread(SCENE / "images" / "000.png"))
    assert result.num_registered == 16, result
    rec = pycolmap.Reconstruction(str(result.model_path))
    cam = rec.cameras[min(rec.cameras)]
    assert (cam.width, cam.height) == (256, 256)
    np.testing.assert_allclose(cam.params, [camera2.fx, camera2.fy, camera2.cx, camera2.cy], rtol=1e-12)
    # The 2D points were scaled with the camera: the reprojection error at 256x256 is twice the error
    # at SfM resolution.
    assert rec.compute_mean_reprojection_error() == pytest.approx(2 * result.mean_reprojection_error_px, rel=1e-6)
    errors = pose_errors(truth, result.camera_set())
    assert errors.summary["num_cameras"] == 16
    assert errors.summary["rotation_median_deg"] < 2.0  # 16 views on a 170 deg arc: ~0.8 deg measured


# ------------------------------------------------------------------------------------------------
# models written by the project, read by pycolmap


def test_project_written_model_reads_back_in_pycolmap_with_the_new_poses(tmp_path, sfm_fixed):
    """A COLMAP-written model (with rigs/frames) read, re-posed and written back over itself by
    colmap_model.write_colmap_model: pycolmap sees the new poses, through images and frames."""
    target = tmp_path / "model"
    shutil.copytree(sfm_fixed.model_path, target)
    assert (target / "frames.bin").is_file()  # stale frames that would override the new poses
    model = read_colmap_model(target)
    poses = model.to_camera_set()
    moved, _, _ = perturb_poses(poses.c2w, rotation_deg=2.0, translation=0.05, seed=3)
    write_colmap_model(model.with_poses(poses.with_poses(moved)), target)
    assert not (target / "frames.bin").exists()

    rec = pycolmap.Reconstruction(str(target))
    assert rec.num_images() == len(poses) and rec.num_frames() == len(poses) and rec.num_reg_images() == len(poses)
    by_name = dict(zip(poses.names, moved))
    for image in rec.images.values():
        expected = _w2c(by_name[image.name])[:3]
        np.testing.assert_allclose(image.cam_from_world().matrix(), expected, atol=1e-9)
        np.testing.assert_allclose(rec.frames[image.frame_id].rig_from_world.matrix(), expected, atol=1e-9)
    # The project's reader agrees with pycolmap.
    np.testing.assert_allclose(load_camera_set(target).c2w, moved, atol=1e-9)


# ------------------------------------------------------------------------------------------------
# bundle adjustment from noisy poses


def test_bundle_adjustment_from_noisy_poses_recovers_the_truth(tmp_path, sfm_fixed, truth, camera):
    """3 deg / 5 % noise; features and matches from the images (the SfM database), never the scene's
    exact 2D observations."""
    noisy_c2w, _, _ = perturb_poses(truth.c2w, rotation_deg=3.0, translation=0.05, seed=0)
    noisy = truth.with_poses(noisy_c2w)
    result = bundle_adjust_from_poses(SCENE / "images", tmp_path / "ba", noisy, camera, database=sfm_fixed.database_path)
    assert result.error is None and result.model_path is not None
    # the first round (16 px) brings the poses within the last scheduled threshold (2 px): straight to the final
    # round, re-triangulated with the adjusted poses at 4x the median point error, at least 1 px
    assert result.rounds[0]["rounds_skipped_px"] == [8.0, 4.0, 2.0] and result.rounds[0]["p95_point_error_px"] <= 1.0
    assert len(result.rounds) == 2 and result.rounds[1]["final"] and 1.0 <= result.rounds[1]["max_reproj_px"] <= 2.0
    assert result.num_points3D > 500
    before = pose_errors(truth, noisy).summary
    after = pose_errors(truth, load_camera_set(result.model_path)).summary
    assert before["rotation_median_deg"] == pytest.approx(3.0, rel=0.1)
    # Measured: 3.2 -> 0.05 deg, 4.9 % -> 0.10 % of the scene radius.
    assert after["rotation_median_deg"] < 0.3
    assert after["translation_median_rel"] < 0.01
    json.dumps(result.to_dict())
