"""``posefix refine``'s stages on a COLMAP model with perturbed poses: the robust bundle adjustment brings
them back, the NeRF stage with the track term keeps the model self-consistent, points are written back
in the input frame (pycolmap reads the result).

The tiny scene's observations are the generator's exact ones: fine for a test of the mechanism (the
truth is the minimum), never for a benchmark row.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pycolmap
import pytest

from nerf_posefix.cli.main import main
from nerf_posefix.geometry.alignment import align
from nerf_posefix.geometry.poses import rotation_angle_deg
from nerf_posefix.io.sources import load_camera_set
from nerf_posefix.workflows.perturb import perturb_dataset

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "assets" / "toybox_tiny"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def noisy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("stages") / "noisy"
    perturb_dataset(TINY, data, rotation_deg=1.0, translation=0.02, seed=5)
    return data


def _rotation_errors(est_dir: Path, gt_dir: Path) -> np.ndarray:
    est, gt = load_camera_set(est_dir), load_camera_set(gt_dir)
    order = [est.names.index(n) for n in gt.names]
    c2w = est.c2w[order]
    aligned = align(c2w, gt.c2w, mode="sim3").apply(c2w)
    return rotation_angle_deg(gt.c2w[:, :3, :3], aligned[:, :3, :3])


def _mean_reprojection_error(model_dir: Path) -> float:
    """pycolmap's own mean reprojection error of the model as written (recomputed: the stored per-point
    errors are whatever the writer put there)."""
    rec = pycolmap.Reconstruction(str(model_dir))
    rec.update_point_3d_errors()
    return float(rec.compute_mean_reprojection_error())


def test_bundle_adjustment_stage_alone_recovers_the_poses(noisy: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    out = tmp_path / "ba"
    code = main(["refine", "--colmap-model", str(noisy / "sparse" / "0"), "--images", str(noisy / "images"),
                 "--output", str(out), "--iterations", "0", "--quiet"])
    assert code == 0, capsys.readouterr().err
    before = _rotation_errors(noisy / "sparse" / "0", noisy / "sparse_gt" / "0")
    after = _rotation_errors(out / "sparse" / "0", noisy / "sparse_gt" / "0")
    assert np.median(before) > 0.8 and after.max() < 1e-3
    assert _mean_reprojection_error(out / "sparse" / "0") < 1e-3 < _mean_reprojection_error(noisy / "sparse" / "0")
    summary = json.loads((out / "report.json").read_text())["summary"]
    assert summary["bundle_adjustment"]["loss"] == "cauchy"
    assert "refined by the bundle adjustment" in summary["points3D"]
    # the gauge is the input's: no common drift beyond what the noise itself implies
    assert summary["drift"]["scale"] == pytest.approx(1.0, abs=0.02)


def test_nerf_stage_with_tracks_keeps_the_model_consistent(noisy: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    out = tmp_path / "full"
    code = main(["refine", "--colmap-model", str(noisy / "sparse" / "0"), "--images", str(noisy / "images"),
                 "--output", str(out), "--iterations", "6", "--threads", "1", "--quiet"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "report.json").read_text())["summary"]
    assert summary["tracks"] == "on" and summary["regularizer"] == "pixels"
    assert "track term" in summary["points3D"]
    errors = summary["reprojection_error_px"]
    assert errors["output"] <= max(errors["input"], 0.05)  # self-consistent: points reproject under the refined poses
    # pycolmap reads the written model, and its own reprojection error agrees
    assert _mean_reprojection_error(out / "sparse" / "0") < 0.1
    assert _rotation_errors(out / "sparse" / "0", noisy / "sparse_gt" / "0").max() < 0.1


def test_models_with_dangling_tracks_are_one_error(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """(A model with points but no observations at all has no tracks: refine builds them from the images,
    tests/test_track_building.py.)"""
    from nerf_posefix.io.colmap import read_colmap_model, write_colmap_model

    model = read_colmap_model(TINY / "sparse" / "0")
    images = model.images
    points = dict(model.points3D)
    del points[sorted(points)[0]]
    expected = "refer to 3D points that are not in the model"
    bad = tmp_path / "bad" / "sparse" / "0"
    write_colmap_model(model.__class__(model.cameras, images, points), bad, formats=("bin",))
    out = tmp_path / "out"
    code = main(["refine", "--colmap-model", str(bad), "--images", str(TINY / "images"), "--output", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and expected in err[0] and "images.bin" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"]  # nothing written


def test_squared_loss_bundle_adjustment_has_no_scale_and_reports(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    out = tmp_path / "sq"
    code = main(["refine", "--colmap-model", str(TINY / "sparse" / "0"), "--images", str(TINY / "images"),
                 "--output", str(out), "--bundle-adjustment", "squared", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "bundle adjustment (squared: mean reprojection error" in captured.out
    assert json.loads((out / "report.json").read_text())["summary"]["bundle_adjustment"]["scale_px"] is None


def test_images_too_small_for_the_nerf_stage_are_one_error_before_anything_is_written(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """64x64 images downscaled 8x train at 8 px: refused up front (the adjustment alone still runs on them)."""
    out = tmp_path / "out"
    args = ["refine", "--colmap-model", str(TINY / "sparse" / "0"), "--images", str(TINY / "images"), "--output", str(out)]
    code = main([*args, "--iterations", "5", "--downscale-factor", "8"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "too small for the NeRF stage" in err[0] and "64x64" in err[0] and "--iterations 0" in err[0]
    assert list(tmp_path.iterdir()) == []  # nothing written: no output, no OUT.partial
    assert main([*args, "--iterations", "0", "--downscale-factor", "8", "--quiet"]) == 0


def test_weakly_held_images_too_small_for_a_nerf_keep_the_adjustments_poses_and_say_why(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """The tiny model with one image's observations removed (weakly held: no tracks) and ``--downscale-factor 8``
    (8 px training images): the default skips the NeRF stage it would run for that image, with a warning, and the
    summary gives that reason (not "--iterations 0", not "every image is held")."""
    from nerf_posefix.io.colmap import read_colmap_model, write_colmap_model

    model = read_colmap_model(TINY / "sparse" / "0")
    weak = model.image_ids()[3]
    points = {pid: p._replace(image_ids=p.image_ids[p.image_ids != weak], point2D_idxs=p.point2D_idxs[p.image_ids != weak])
              for pid, p in model.points3D.items() if int((p.image_ids != weak).sum()) >= 2}
    images = {}
    for image_id, image in model.images.items():
        ids = np.asarray(image.point3D_ids).copy()
        ids[(image_id == weak) | ~np.isin(ids, list(points))] = -1
        images[image_id] = image._replace(point3D_ids=ids)
    write_colmap_model(model.__class__(model.cameras, images, points), tmp_path / "weak" / "sparse" / "0", formats=("bin",))
    out = tmp_path / "out"
    code = main(["refine", "--colmap-model", str(tmp_path / "weak" / "sparse" / "0"), "--images", str(TINY / "images"),
                 "--output", str(out), "--downscale-factor", "8"])
    printed = capsys.readouterr().out
    assert code == 0
    summary = json.loads((out / "report.json").read_text())["summary"]
    assert summary["bundle_adjustment"]["support"]["num_weak"] == 1 and summary["iterations"] == 0
    assert summary["no_nerf_stage"] == "the weakly held images are too small for a NeRF"
    assert "too small for the NeRF stage (shorter side 8 px" in summary["bundle_adjustment"]["warning"]
    assert "NeRF stage    none (the weakly held images are too small for a NeRF)" in printed
    assert "too small for a NeRF stage: they keep the adjustment's poses" in printed and "the default runs one" not in printed
