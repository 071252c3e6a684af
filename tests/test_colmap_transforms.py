"""The COLMAP model -> nerfstudio transforms.json conversion against nerfstudio's own ``colmap_to_json``."""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import open3d as o3d

from nerf_posefix.io.colmap import read_colmap_model, write_colmap_model
from nerf_posefix.io.colmap_transforms import write_nerfstudio_transforms

SCENE = Path(__file__).resolve().parents[1] / "assets" / "toybox"


def _nerfstudio(model_dir: Path, out: Path) -> dict:
    from nerfstudio.process_data import colmap_utils

    out.mkdir(parents=True)
    with contextlib.redirect_stdout(io.StringIO()):
        colmap_utils.colmap_to_json(recon_dir=model_dir, output_dir=out)
    return json.loads((out / "transforms.json").read_text())


def _same_meta(ours: dict, theirs: dict) -> None:
    assert set(ours) == set(theirs)
    for key in theirs:
        if key != "frames":
            if isinstance(theirs[key], str):
                assert ours[key] == theirs[key], key
            else:
                np.testing.assert_allclose(ours[key], theirs[key], atol=1e-12, err_msg=key)
    assert len(ours["frames"]) == len(theirs["frames"])
    for a, b in zip(ours["frames"], theirs["frames"]):
        assert set(a) == set(b)
        assert a["file_path"] == b["file_path"] and a["colmap_im_id"] == b["colmap_im_id"]
        np.testing.assert_allclose(a["transform_matrix"], b["transform_matrix"], atol=1e-12)
        for key in set(a) - {"file_path", "colmap_im_id", "transform_matrix"}:
            assert a[key] == b[key], key


def test_same_file_as_nerfstudio_single_camera(tmp_path: Path) -> None:
    model_dir = SCENE / "sparse" / "0"
    theirs = _nerfstudio(model_dir, tmp_path / "nerfstudio")
    model = read_colmap_model(model_dir)
    assert set(model.cameras) == {1} and model.points3D
    ours = json.loads(write_nerfstudio_transforms(model, tmp_path / "ours").read_text())
    _same_meta(ours, theirs)
    # the point clouds: same points (nerfstudio writes text rounded to 1e-6; ours binary float32), same colours
    a = o3d.io.read_point_cloud(str(tmp_path / "ours" / "sparse_pc.ply"))
    b = o3d.io.read_point_cloud(str(tmp_path / "nerfstudio" / "sparse_pc.ply"))
    assert len(a.points) == len(b.points) == len(model.points3D)
    np.testing.assert_allclose(np.asarray(a.points), np.asarray(b.points), atol=2e-6)
    np.testing.assert_array_equal(np.asarray(a.colors), np.asarray(b.colors))


def test_same_file_as_nerfstudio_several_cameras_no_points(tmp_path: Path) -> None:
    model = read_colmap_model(SCENE / "sparse" / "0")
    cam = model.cameras[1]
    second = cam._replace(id=2, model="OPENCV", params=np.array([*cam.params[:4], 0.01, -0.002, 0.001, 0.0005]))
    images = {k: (im._replace(camera_id=2) if k % 2 else im) for k, im in model.images.items()}
    model = replace(model, cameras={1: cam._replace(model="PINHOLE", params=np.asarray(cam.params[:4])), 2: second}, images=images)
    write_colmap_model(model, tmp_path / "model", formats=("bin",))
    theirs = _nerfstudio(tmp_path / "model", tmp_path / "nerfstudio")
    ours = json.loads(write_nerfstudio_transforms(model, tmp_path / "ours").read_text())
    _same_meta(ours, theirs)
    assert "fl_x" not in ours and {f["k1"] for f in ours["frames"]} == {0.0, 0.01}
    empty = write_nerfstudio_transforms(replace(model, points3D={}), tmp_path / "empty")
    assert "ply_file_path" not in json.loads(empty.read_text()) and not (tmp_path / "empty" / "sparse_pc.ply").exists()


def test_another_applied_transform_is_applied_to_poses_and_points_and_recorded(tmp_path: Path) -> None:
    """With an ``applied_transform`` A given, the file holds ``A · c2w`` and A itself, the point cloud ``A · X``: read back,
    the input poses (A undone) are the model's, whatever A is."""
    from nerf_posefix.io.transforms_json import read_transforms_json

    model = read_colmap_model(SCENE / "sparse" / "0")
    angle = np.radians(30.0)
    applied = np.array([[np.cos(angle), -np.sin(angle), 0.0, 0.5], [np.sin(angle), np.cos(angle), 0.0, -1.0], [0.0, 0.0, 1.0, 2.0]])
    default = json.loads(write_nerfstudio_transforms(model, tmp_path / "default").read_text())
    path = write_nerfstudio_transforms(model, tmp_path / "other", applied_transform=applied)
    other = json.loads(path.read_text())
    np.testing.assert_allclose(other["applied_transform"], applied, atol=0)
    assert not np.allclose(other["frames"][0]["transform_matrix"], default["frames"][0]["transform_matrix"])
    expected = model.to_camera_set()
    for where in (tmp_path / "default" / "transforms.json", path):
        poses = read_transforms_json(where)  # camera-to-world, OpenCV, the input world (A undone)
        index = {n: k for k, n in enumerate(poses.names)}
        order = [index[Path(n).name] for n in expected.names]
        np.testing.assert_allclose(poses.c2w[order], expected.c2w, atol=1e-10)
    xyz = np.array([p.xyz for p in model.points3D.values()])  # [P, 3] COLMAP world
    ply = np.asarray(o3d.io.read_point_cloud(str(tmp_path / "other" / "sparse_pc.ply")).points)
    np.testing.assert_allclose(ply, xyz @ applied[:, :3].T + applied[:, 3], atol=1e-4)
