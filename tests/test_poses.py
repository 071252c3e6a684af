"""Pose conversions (COLMAP, OpenGL/OpenCV, TUM) and the geodesic rotation angle."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from evo.core.trajectory import PoseTrajectory3D
from evo.tools import file_interface
from nerfstudio.data.utils.colmap_parsing_utils import qvec2rotmat
from scipy.spatial.transform import Rotation

from nerf_posefix.io.camera_set import CameraSet

from nerf_posefix.io.tum import read_tum, write_tum
from nerf_posefix.errors import InputError
from nerf_posefix.geometry.poses import (
    c2w_to_colmap,
    c2w_to_tum,
    camera_centers,
    colmap_to_c2w,
    invert_poses,
    make_c2w,
    opencv_to_opengl,
    opengl_to_opencv,
    rotation_angle_deg,
    tum_to_c2w,
)


def random_c2w(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return make_c2w(Rotation.random(n, random_state=seed).as_matrix(), rng.normal(scale=2.0, size=(n, 3)))


def test_colmap_known_pose() -> None:
    # world-to-camera: rotation of +90 deg about z, then translation (1, 2, 3)
    qvec = np.array([[math.cos(math.pi / 4), 0.0, 0.0, math.sin(math.pi / 4)]])
    tvec = np.array([[1.0, 2.0, 3.0]])
    c2w = colmap_to_c2w(qvec, tvec)
    r_w2c = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(c2w[0, :3, :3], r_w2c.T, atol=1e-15)
    # centre C = -R^T t: R^T (1,2,3) = (2, -1, 3)
    np.testing.assert_allclose(c2w[0, :3, 3], [-2.0, 1.0, -3.0], atol=1e-15)
    np.testing.assert_array_equal(c2w[0, 3], [0, 0, 0, 1])
    # the world origin projects to the camera point tvec
    w2c = invert_poses(c2w)
    np.testing.assert_allclose(w2c[0, :3, 3], tvec[0], atol=1e-15)


def test_colmap_matches_nerfstudio_quaternion_convention() -> None:
    rng = np.random.default_rng(1)
    qvec = rng.normal(size=(20, 4))
    qvec /= np.linalg.norm(qvec, axis=1, keepdims=True)
    tvec = rng.normal(size=(20, 3))
    c2w = colmap_to_c2w(qvec, tvec)
    for q, t, pose in zip(qvec, tvec, c2w):
        r = qvec2rotmat(q)  # nerfstudio/COLMAP world-to-camera rotation
        np.testing.assert_allclose(pose[:3, :3], r.T, atol=1e-14)
        np.testing.assert_allclose(pose[:3, 3], -r.T @ t, atol=1e-14)
    q_back, t_back = c2w_to_colmap(c2w)
    assert (q_back[:, 0] >= 0).all()
    np.testing.assert_allclose(q_back, qvec * np.sign(qvec[:, :1]), atol=1e-14)
    np.testing.assert_allclose(t_back, tvec, atol=1e-14)


def test_opengl_opencv_keeps_the_camera() -> None:
    c2w = random_c2w(10)
    gl = opencv_to_opengl(c2w)
    np.testing.assert_allclose(gl[:, :3, 3], c2w[:, :3, 3])  # same centre
    np.testing.assert_allclose(-gl[:, :3, 2], c2w[:, :3, 2])  # same viewing direction (-z vs +z)
    np.testing.assert_allclose(-gl[:, :3, 1], c2w[:, :3, 1])  # up vs down
    np.testing.assert_allclose(gl[:, :3, 0], c2w[:, :3, 0])
    np.testing.assert_allclose(opengl_to_opencv(gl), c2w, atol=0)


def test_tum_rows_round_trip_and_quaternion_order() -> None:
    c2w = random_c2w(8, seed=2)
    rows = c2w_to_tum(c2w, np.arange(8) * 0.5)
    assert rows.shape == (8, 8) and (rows[:, 7] >= 0).all()
    np.testing.assert_allclose(rows[:, 1:4], c2w[:, :3, 3])
    # qw last: a 90 deg rotation about x is (qx, qy, qz, qw) = (sin45, 0, 0, cos45)
    pose = make_c2w(Rotation.from_euler("x", 90, degrees=True).as_matrix()[None], np.zeros((1, 3)))
    np.testing.assert_allclose(c2w_to_tum(pose, [3.0])[0], [3.0, 0, 0, 0, math.sqrt(0.5), 0, 0, math.sqrt(0.5)], atol=1e-15)
    stamps, back = tum_to_c2w(rows)
    np.testing.assert_allclose(stamps, np.arange(8) * 0.5)
    np.testing.assert_allclose(back, c2w, atol=1e-14)


def test_tum_file_reads_back_in_evo(tmp_path: Path) -> None:
    c2w = random_c2w(12, seed=3)
    names = [f"frame_{i}.jpg" for i in range(12)]
    path = write_tum(CameraSet(names=names, c2w=c2w, source="test"), tmp_path / "a.tum")
    traj = file_interface.read_tum_trajectory_file(str(path))
    np.testing.assert_allclose(np.stack(traj.poses_se3), c2w, atol=1e-14)
    np.testing.assert_array_equal(traj.timestamps, np.arange(12.0))  # non-numeric names -> indices
    ours = read_tum(path)
    assert ours.names == names
    np.testing.assert_allclose(ours.c2w, c2w, atol=1e-14)
    # numeric names become the timestamps
    stamped = write_tum(CameraSet(names=["1305031102.175304", "1305031102.211214"], c2w=c2w[:2]), tmp_path / "b.tum")
    np.testing.assert_array_equal(file_interface.read_tum_trajectory_file(str(stamped)).timestamps, [1305031102.175304, 1305031102.211214])


def test_evo_written_tum_reads_in_ours(tmp_path: Path) -> None:
    c2w = random_c2w(5, seed=4)
    stamps = np.array([0.1, 0.25, 0.5, 1.0, 2.0])
    traj = PoseTrajectory3D(poses_se3=list(c2w), timestamps=stamps)
    file_interface.write_tum_trajectory_file(str(tmp_path / "evo.txt"), traj)
    ours = read_tum(tmp_path / "evo.txt")
    assert ours.names == ["0.100000", "0.250000", "0.500000", "1.000000", "2.000000"]
    np.testing.assert_allclose(ours.c2w, c2w, atol=1e-12)


def test_bad_tum_files(tmp_path: Path) -> None:
    (tmp_path / "seven.txt").write_text("0 1 2 3 0 0 0\n")
    with pytest.raises(InputError, match=r"seven.txt:1: a TUM row needs 8 values"):
        read_tum(tmp_path / "seven.txt")
    (tmp_path / "nan.txt").write_text("# c\n0 1 2 3 0 0 0 1\n1 1 2 x 0 0 0 1\n")
    with pytest.raises(InputError, match=r"nan.txt:3: not a number"):
        read_tum(tmp_path / "nan.txt")
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(InputError, match="no poses"):
        read_tum(tmp_path / "empty.txt")
    (tmp_path / "zero.txt").write_text("0 1 2 3 0 0 0 0\n")
    with pytest.raises(InputError, match="zero quaternion"):
        read_tum(tmp_path / "zero.txt")


@pytest.mark.parametrize("angle_deg", [0.0, 1e-7, 1e-3, 0.5, 37.0, 90.0, 179.0, 179.9999, 180.0])
def test_rotation_angle_known(angle_deg: float) -> None:
    rng = np.random.default_rng(5)
    base = Rotation.random(50, random_state=6).as_matrix()
    axes = rng.normal(size=(50, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    delta = Rotation.from_rotvec(np.radians(angle_deg) * axes).as_matrix()
    # perturbation on either side of the rotation gives the same angle
    for other in (base @ delta, delta @ base):
        got = rotation_angle_deg(base, other)
        assert got.shape == (50,)
        np.testing.assert_allclose(got, angle_deg, rtol=1e-6, atol=1e-12)


def test_rotation_angle_is_accurate_where_arccos_is_not() -> None:
    base = Rotation.random(1, random_state=0).as_matrix()
    delta = Rotation.from_rotvec([[1e-9, 0.0, 0.0]]).as_matrix()
    got = rotation_angle_deg(base, base @ delta)[0]
    assert abs(got - np.degrees(1e-9)) < 1e-6 * np.degrees(1e-9)
    rel = base[0].T @ (base @ delta)[0]
    naive = np.degrees(np.arccos(np.clip((np.trace(rel) - 1) / 2, -1, 1)))
    assert abs(naive - np.degrees(1e-9)) > 1e-3 * np.degrees(1e-9)  # the arccos form cannot resolve it


def test_camera_centers() -> None:
    c2w = random_c2w(4)
    np.testing.assert_array_equal(camera_centers(c2w), c2w[:, :3, 3])
    # the centre is where the camera-frame origin lands
    np.testing.assert_allclose((c2w @ np.array([0, 0, 0, 1.0]))[:, :3], camera_centers(c2w))
