"""``posefix compare`` end to end through ``nerf_posefix.cli.main.main``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import open3d as o3d
import pytest
from evo import main_ape
from evo.core import metrics as evo_metrics
from evo.tools import file_interface
from matplotlib.image import imread
from nerfstudio.data.utils import colmap_parsing_utils as cpu
from scipy.spatial.transform import Rotation

from nerf_posefix.io.camera_set import CameraSet, match_camera_sets

from nerf_posefix.io.sources import load_camera_set

from nerf_posefix.io.transforms_json import read_transforms_json

from nerf_posefix.io.tum import write_tum
from nerf_posefix.cli.main import main
from nerf_posefix.io.colmap import colmap_model_from_poses, write_colmap_model
from nerf_posefix.errors import InputError
from nerf_posefix.geometry.poses import make_c2w, opencv_to_opengl

N = 24


def ring_of_cameras(n: int = N) -> np.ndarray:
    """Cameras on a wavy ring of radius 4 looking at the origin (OpenCV axes), ``[n, 4, 4]``."""
    angles = np.linspace(0, 2 * np.pi, n, endpoint=False)
    centres = np.stack([4 * np.cos(angles), 4 * np.sin(angles), 0.8 * np.sin(3 * angles)], axis=1)
    z = -centres / np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = np.cross(z, x)
    return make_c2w(np.stack([x, y, z], axis=2), centres)


def write_reference(path: Path, c2w: np.ndarray) -> None:
    """A COLMAP model with 200 points near the origin, each camera observing all of them."""
    names = [f"img_{i:02d}.png" for i in range(len(c2w))]
    model = colmap_model_from_poses(names, c2w, 80, 60, 70.0)
    rng = np.random.default_rng(0)
    xyz = rng.uniform(-1, 1, size=(200, 3))
    for k, p in enumerate(xyz):
        model.points3D[k + 1] = cpu.Point3D(
            id=k + 1, xyz=p, rgb=np.array([128, 128, 128]), error=0.1,
            image_ids=np.arange(1, len(c2w) + 1), point2D_idxs=np.full(len(c2w), k),
        )
    for image_id, im in list(model.images.items()):
        model.images[image_id] = im._replace(xys=np.zeros((200, 2)) + 5.0, point3D_ids=np.arange(1, 201))
    write_colmap_model(model, path, formats=("bin",))


def write_transforms(path: Path, names: list[str], c2w_opencv: np.ndarray, applied: np.ndarray | None) -> None:
    """transforms.json with OpenGL poses; with ``applied`` (3x4), the poses are stored in that world."""
    poses = opencv_to_opengl(c2w_opencv)
    meta: dict = {"camera_model": "OPENCV", "fl_x": 70.0, "fl_y": 70.0, "cx": 40, "cy": 30, "w": 80, "h": 60}
    if applied is not None:
        a = np.eye(4)
        a[:3] = applied
        poses = a @ poses
        meta["applied_transform"] = applied.tolist()
    meta["frames"] = [{"file_path": f"images/{n}", "transform_matrix": p.tolist()} for n, p in zip(names, poses)]
    path.write_text(json.dumps(meta))


@pytest.fixture()
def scene(tmp_path: Path) -> dict:
    ref = ring_of_cameras()
    names = [f"img_{i:02d}.png" for i in range(N)]
    write_reference(tmp_path / "ref" / "sparse" / "0", ref)
    # estimate 1: the reference in nerfstudio's ns-process-data world (y/z swap), exactly
    swap = np.array([[0.0, 1, 0, 0], [1, 0, 0, 0], [0, 0, -1, 0]])
    (tmp_path / "est1").mkdir()
    write_transforms(tmp_path / "est1" / "transforms.json", names, ref, swap)
    # estimate 2: noisy, scaled, rotated, two cameras missing, in a TUM file
    rng = np.random.default_rng(1)
    rot_s = Rotation.random(random_state=2).as_matrix()
    noise = Rotation.from_rotvec(rng.normal(scale=np.radians(1.0), size=(N, 3))).as_matrix()
    est2 = make_c2w(rot_s @ ref[:, :3, :3] @ noise, 0.5 * ref[:, :3, 3] @ rot_s.T + rng.normal(scale=0.02, size=(N, 3)))
    keep = [i for i in range(N) if i not in (3, 17)]
    write_tum(CameraSet(names=[names[i] for i in keep] + ["extra.png"], c2w=np.concatenate([est2[keep], est2[:1]])), tmp_path / "est2.tum")
    return {"ref": ref, "names": names, "est2": est2, "keep": keep, "tmp": tmp_path}


def test_transforms_json_reader_undoes_applied_transform(scene: dict) -> None:
    cs = read_transforms_json(scene["tmp"] / "est1" / "transforms.json")
    assert cs.names == scene["names"]
    np.testing.assert_allclose(cs.c2w, scene["ref"], atol=1e-12)
    same = load_camera_set(scene["tmp"] / "est1")  # directory holding transforms.json
    np.testing.assert_allclose(same.c2w, cs.c2w)


def test_match_by_name_and_order(scene: dict) -> None:
    ref = load_camera_set(scene["tmp"] / "ref")
    est = load_camera_set(scene["tmp"] / "est2.tum")
    match = match_camera_sets(ref, est, by="name")
    assert len(match) == N - 2
    assert match.unmatched_ref == ["img_03.png", "img_17.png"] and match.unmatched_est == ["extra.png"]
    assert [est.names[j] for j in match.est_index] == [ref.names[i] for i in match.ref_index]
    by_order = match_camera_sets(ref, est, by="order")
    np.testing.assert_array_equal(by_order.ref_index, np.arange(N - 1))
    assert by_order.unmatched_ref == ["img_23.png"] and by_order.unmatched_est == []


def test_compare_end_to_end(scene: dict, capsys: pytest.CaptureFixture[str]) -> None:
    tmp = scene["tmp"]
    out, tum_dir = tmp / "out", tmp / "tum"
    code = main([
        "compare", "--reference", str(tmp / "ref"), str(tmp / "est1"), str(tmp / "est2.tum"),
        "--align", "sim3", "--output", str(out), "--json", str(tmp / "r.json"), "--export-tum", str(tum_dir),
    ])
    printed = capsys.readouterr().out
    assert code == 0
    assert "ATE RMSE" in printed and "per camera from the reference's 3D points" in printed
    assert "2 reference camera(s) unmatched (img_03.png, img_17.png)" in printed

    report = json.loads((out / "compare.json").read_text())
    assert json.loads((tmp / "r.json").read_text()) == report
    est1, est2 = report["estimates"]
    # estimate 1 is the reference up to nerfstudio's world change: zero error, scale 1
    assert est1["num_matched"] == N and est1["unmatched_reference"] == []
    assert est1["summary"]["alignment"]["scale"] == pytest.approx(1.0, abs=1e-12)
    assert max(est1["per_camera"]["rotation_deg"]) < 1e-6 and est1["summary"]["ate_rmse"] < 1e-12
    assert est1["summary"]["auc"]["rotation_deg"] == pytest.approx(1.0, abs=1e-7)
    # estimate 2: 22 matched cameras, 1 deg noise, scale 2 back to the reference
    assert est2["num_matched"] == N - 2 and est2["unmatched_estimate"] == ["extra.png"]
    assert est2["summary"]["alignment"]["scale"] == pytest.approx(2.0, rel=0.05)
    assert 0.5 < est2["summary"]["stats"]["rotation_deg"]["median"] < 3.0
    assert len(est2["per_camera"]["translation"]) == N - 2 and len(est2["rpe"]["translation"]) == N - 3
    assert est2["rpe"]["pairs"][2] == ["img_02.png", "img_04.png"]  # img_03 is missing
    # bounds from the points: depths of points within 1.73 of the origin seen from radius ~4
    xmin, xmax = np.array(est2["per_camera"]["xmin"]), np.array(est2["per_camera"]["xmax"])
    assert (xmin > 2.0).all() and (xmax < 6.0).all() and (xmin < xmax).all()

    # the exported TUM files reproduce our ATE in evo
    ref_traj = file_interface.read_tum_trajectory_file(str(tum_dir / f"1_{_stem(tmp / 'est2.tum')}_reference.tum"))
    est_traj = file_interface.read_tum_trajectory_file(str(tum_dir / f"1_{_stem(tmp / 'est2.tum')}_estimate.tum"))
    ape = main_ape.ape(ref_traj, est_traj, evo_metrics.PoseRelation.translation_part, align=True, correct_scale=True)
    assert est2["summary"]["ate_rmse"] == pytest.approx(ape.stats["rmse"], rel=1e-6)

    with open(out / "per_camera.csv") as fid:
        rows = list(csv.DictReader(fid))
    assert len(rows) == N + N - 2
    assert rows[N]["name"] == "img_00.png"
    assert float(rows[N + 5]["rotation_deg"]) == pytest.approx(est2["per_camera"]["rotation_deg"][5], rel=1e-15)
    with open(out / "summary.csv") as fid:
        summary = list(csv.reader(fid))
    assert summary[0][1:] == [est1["label"], est2["label"]]
    # the alignment-free pairwise rotation errors: 1 deg per camera composes into ~1.4 deg per pair; a ring's
    # centres fix the alignment well, so no common-rotation warning
    pairwise = {row[0]: row[1:] for row in summary}["pairwise rotation (deg) median"]
    assert float(pairwise[0]) < 1e-6 and 0.7 < float(pairwise[1]) < 4.0
    assert est2["summary"]["pairwise_pairs"] == (N - 2) * (N - 3) // 2
    assert est2["summary"]["common_rotation_dominates"] is False and "shared by every camera" not in printed
    for png in ("error_cdf.png", "top_view.png"):
        image = imread(out / png)
        assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 300
        assert image[..., :3].std() > 0.05  # not blank
    lines = o3d.io.read_line_set(str(out / "frusta.ply"))
    assert len(lines.lines) == 8 * (N + N + N - 2) and len(lines.points) == 5 * (N + N + N - 2)
    colors = np.asarray(lines.colors)
    assert len(np.unique(colors.round(3), axis=0)) == 3  # one colour per set


def _stem(path: Path) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(path)).strip("_")[-60:]


def test_user_bounds_and_no_points(scene: dict, capsys: pytest.CaptureFixture[str]) -> None:
    tmp = scene["tmp"]
    assert main(["compare", "--reference", str(tmp / "est1"), str(tmp / "est2.tum"), "--json", str(tmp / "a.json"), "--align", "se3"]) == 0
    printed = capsys.readouterr().out
    assert "default [" in printed and "pass --bounds" in printed  # transforms.json has no points
    assert main(["compare", "--reference", str(tmp / "ref"), str(tmp / "est2.tum"), "--json", str(tmp / "b.json"), "--bounds", "0.5", "8"]) == 0
    report = json.loads((tmp / "b.json").read_text())
    assert report["homography_bounds"]["source"] == "--bounds [0.5, 8]"
    assert set(report["estimates"][0]["per_camera"]["xmin"]) == {0.5}
    # matching by order pairs ref i with est i: est2.tum lacks img_03, so from there on pairs are off
    args = ["compare", "--reference", str(tmp / "ref"), str(tmp / "est2.tum"), "--json", str(tmp / "c.json")]
    assert main(args + ["--match", "order"]) == 0
    by_order = json.loads((tmp / "c.json").read_text())["estimates"][0]
    assert by_order["num_matched"] == N - 1 and by_order["unmatched_reference"] == ["img_23.png"]
    assert by_order["summary"]["ate_rmse"] > 10 * report["estimates"][0]["summary"]["ate_rmse"]
    # trimmed alignment keeps ceil(0.8 * 22) = 18 cameras
    assert main(args + ["--trim", "0.2"]) == 0
    trimmed = json.loads((tmp / "c.json").read_text())["estimates"][0]
    assert sum(trimmed["per_camera"]["inlier"]) == 18 and trimmed["summary"]["alignment"]["num_inliers"] == 18


def _error_of(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("posefix: error: ") and err.count("\n") == 1  # one line, no traceback
    return err


def test_bad_inputs_exit_2(scene: dict, capsys: pytest.CaptureFixture[str]) -> None:
    tmp = scene["tmp"]
    ref = str(tmp / "ref")
    (tmp / "garbage.txt").write_text("this is not a trajectory\n")
    assert "garbage.txt:1: a TUM row needs 8 values" in _error_of(capsys, ["compare", "--reference", ref, str(tmp / "garbage.txt")])
    assert "no such file" in _error_of(capsys, ["compare", "--reference", ref, str(tmp / "missing.tum")])
    (tmp / "bad.json").write_text("{not json")
    assert "bad.json: cannot read transforms.json" in _error_of(capsys, ["compare", "--reference", ref, str(tmp / "bad.json")])

    other = CameraSet(names=[f"x{i}.png" for i in range(5)], c2w=scene["ref"][:5])
    write_tum(other, tmp / "other.tum")
    assert "no camera in common" in _error_of(capsys, ["compare", "--reference", ref, str(tmp / "other.tum")])

    two = CameraSet(names=scene["names"][:2], c2w=scene["ref"][:2])
    write_tum(two, tmp / "two.tum")
    err = _error_of(capsys, ["compare", "--reference", ref, str(tmp / "two.tum")])
    assert "two.tum: sim3 alignment needs at least 3 matched cameras, got 2" in err
    assert main(["compare", "--reference", ref, str(tmp / "two.tum"), "--align", "none"]) == 0  # fine without alignment
    capsys.readouterr()

    line = scene["ref"][:6].copy()
    line[:, :3, 3] = np.linspace(0, 1, 6)[:, None] * np.array([1.0, 1.0, 0.0])
    write_tum(CameraSet(names=scene["names"][:6], c2w=line), tmp / "line.tum")
    assert "line.tum: estimate: the camera centres are collinear" in _error_of(capsys, ["compare", "--reference", ref, str(tmp / "line.tum")])

    assert "need 0 < XMIN < XMAX" in _error_of(capsys, ["compare", "--reference", ref, str(tmp / "est1"), "--bounds", "2", "1"])
    assert "at least one estimated camera set" in _error_of(capsys, ["compare", "--reference", ref])
    (tmp / "empty_dir").mkdir()
    assert "not a COLMAP model, a directory with transforms.json" in _error_of(capsys, ["compare", "--reference", str(tmp / "empty_dir"), ref])


def test_loader_rejects_duplicate_names(tmp_path: Path) -> None:
    c2w = ring_of_cameras(3)
    write_transforms(tmp_path / "transforms.json", ["a.png", "b.png", "a.png"], c2w, None)
    with pytest.raises(InputError, match="duplicate camera names: a.png"):
        read_transforms_json(tmp_path / "transforms.json")
    c2w[1, :3, :3] *= 2.0
    write_transforms(tmp_path / "transforms.json", ["a.png", "b.png", "c.png"], c2w, None)
    with pytest.raises(InputError, match=r"frame 1 \(images/b.png\): transform_matrix rotation is not a rotation"):
        read_transforms_json(tmp_path / "transforms.json")
