"""``posefix refine --intrinsics auto`` (the default): a principal point at COLMAP's placeholder (the image centre) is
refined when the tracks contradict it, and held when they agree with it (nerf_posefix/sfm/principal_point.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from cli_helpers import TINY
from scene_helpers import tiny_model_with_placeholder_principal_point

from nerf_posefix.cli.main import main
from nerf_posefix.geometry.metrics import pairwise_rotation_errors
from nerf_posefix.sfm.bundle_adjustment import reconstruction_c2w
from nerf_posefix.sfm.principal_point import CHI2_2DOF_P001, MIN_IMAGES_PER_CAMERA, examine_principal_points, placeholder_cameras, track_patch

TRUE_SHIFT_PX = (3.0, -2.0)


def test_only_a_shared_camera_at_the_image_centre_is_a_placeholder() -> None:
    rec = pycolmap.Reconstruction(str(TINY / "sparse" / "0"))  # one PINHOLE camera at (32, 32), 16 images
    assert placeholder_cameras(rec) == {1: 16}
    camera = rec.cameras[1]
    params = np.array(camera.params)
    moved = params.copy()
    moved[camera.principal_point_idxs()[0]] += 0.01  # estimated somewhere: not COLMAP's placeholder
    camera.params = moved
    assert placeholder_cameras(rec) == {}
    camera.params = params
    for frame_id in sorted(rec.reg_frame_ids())[MIN_IMAGES_PER_CAMERA - 1:]:  # fewer images than the rule needs
        rec.deregister_frame(frame_id)
    assert rec.num_reg_images() == MIN_IMAGES_PER_CAMERA - 1
    assert placeholder_cameras(rec) == {}


def test_the_tracks_contradict_a_wrong_placeholder_and_agree_with_a_true_one(tmp_path: Path) -> None:
    """Observations re-projected through a camera whose principal point is 3 / -2 px from the centre (0.3 px noise):
    the test finds it within 3 sigma and refines; the same with the truth at the centre: held."""
    truth, (ix, iy) = tiny_model_with_placeholder_principal_point(tmp_path / "wrong", TRUE_SHIFT_PX)
    tiny_model_with_placeholder_principal_point(tmp_path / "right", (0.0, 0.0))
    (wrong,) = examine_principal_points(pycolmap.Reconstruction(str(tmp_path / "wrong")))
    (right,) = examine_principal_points(pycolmap.Reconstruction(str(tmp_path / "right")))
    assert wrong.refined and wrong.chi2 > 100 * CHI2_2DOF_P001
    assert np.all(np.abs(np.subtract(wrong.estimated_px, truth[[ix, iy]])) < 3 * np.array(wrong.sigma_px))
    assert not right.refined and right.chi2 < CHI2_2DOF_P001
    assert right.placeholder_px == (32.0, 32.0) and right.test_images == 16


def test_a_patch_is_linked_by_tracks_and_bounded() -> None:
    rec = pycolmap.Reconstruction(str(TINY / "sparse" / "0"))
    assert track_patch(rec, 100) == sorted(rec.reg_image_ids())
    patch = track_patch(rec, 5)
    assert len(patch) == 5
    shared = {i: {int(e.image_id) for p in rec.points3D.values() if i in {int(e.image_id) for e in p.track.elements}
                  for e in p.track.elements} for i in patch}
    assert all(shared[i] & (set(patch) - {i}) for i in patch)  # every image shares points with another of the patch


def test_refine_by_default_refines_a_contradicted_placeholder_and_holds_a_true_centre(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    truth_c2w = reconstruction_c2w(pycolmap.Reconstruction(str(TINY / "sparse" / "0")))[1]  # [N, 4, 4]
    errors = {}
    for case, shift in (("wrong", TRUE_SHIFT_PX), ("right", (0.0, 0.0))):
        truth, (ix, iy) = tiny_model_with_placeholder_principal_point(tmp_path / case, shift)
        for mode in ("auto", "fixed"):
            out = tmp_path / f"{case}-{mode}"
            code = main(["refine", "--colmap-model", str(tmp_path / case), "--images", str(TINY / "images"), "--output", str(out),
                         "--iterations", "0", "--threads", "1", *(("--intrinsics", mode) if mode != "auto" else ())])
            printed = capsys.readouterr()
            text = printed.out + printed.err
            assert code == 0, text
            rec = pycolmap.Reconstruction(str(out / "sparse" / "0"))
            params = np.array(rec.cameras[1].params)
            errors[case, mode] = float(np.median(pairwise_rotation_errors(truth_c2w, reconstruction_c2w(rec)[1])))
            summary = json.loads((out / "report.json").read_text())["summary"]["bundle_adjustment"]
            if mode == "fixed":
                assert "principal_point_tests" not in summary
                continue
            (test,) = summary["principal_point_tests"]
            assert "COLMAP's placeholder" in text
            if case == "wrong":
                assert test["refined"] and summary["intrinsics_refined"]
                np.testing.assert_allclose(params[[ix, iy]], truth[[ix, iy]], atol=0.5)  # near the truth, not the centre
                assert "intrinsics    camera 1" in text and summary["cameras"]["1"]["after"] == pytest.approx(list(params))
            else:
                assert not test["refined"] and not summary["intrinsics_refined"]
                assert tuple(params[[ix, iy]]) == (32.0, 32.0) and "cameras" not in summary  # held exactly
                assert "intrinsics    camera 1 held" in text
    assert errors["wrong", "auto"] < 0.5 * errors["wrong", "fixed"]
    assert errors["right", "auto"] == errors["right", "fixed"]  # held: the same adjustment


def test_the_adjustment_refines_only_the_cameras_it_is_given(tmp_path: Path) -> None:
    from nerf_posefix.sfm.bundle_adjustment import BundleAdjustmentOptions, bundle_adjust_model

    truth, (ix, iy) = tiny_model_with_placeholder_principal_point(tmp_path / "model", TRUE_SHIFT_PX)
    params = {}
    for ids in ((), (1,)):
        result = bundle_adjust_model(tmp_path / "model", BundleAdjustmentOptions(
            refine_intrinsics=True, refine_principal_point=True, refine_camera_ids=ids))
        params[ids] = np.array(result.reconstruction.cameras[1].params)
    assert tuple(params[()][[ix, iy]]) == (32.0, 32.0)  # camera 1 not among those given: held
    np.testing.assert_allclose(params[(1,)][[ix, iy]], truth[[ix, iy]], atol=0.5)
