r"""Pose conversions between COLMAP, nerfstudio and TUM conventions (pure numpy/scipy).

Conventions
-----------
* The project's internal pose is a **camera-to-world** matrix ``c2w`` of shape ``[N, 4, 4]``,
  float64, with **OpenCV camera axes** (x right, y down, the camera looks along +z), in the world
  frame (and units) of the file it came from. ``c2w[:, :3, 3]`` is the camera centre.
* COLMAP stores **world-to-camera** poses with OpenCV axes: ``qvec = (qw, qx, qy, qz)`` (Hamilton,
  scalar first) and ``tvec``, so that ``X_cam = R(qvec) X_world + tvec``.
* nerfstudio ``transforms.json`` stores camera-to-world poses with **OpenGL camera axes** (x right,
  y up, the camera looks along -z). The two camera frames differ by ``F = diag(1, -1, -1)`` acting on
  the camera side: ``c2w_opencv = c2w_opengl @ diag(1, -1, -1, 1)`` (and the same matrix back).
* TUM trajectories hold one row ``timestamp tx ty tz qx qy qz qw`` per pose, the pose being
  camera-to-world (position and orientation of the camera in the world), quaternion scalar last, as
  ``evo.tools.file_interface`` reads and writes them. TUM says nothing about camera axes; we write
  our OpenCV-axes poses unchanged (so rotation errors computed by evo match ours).

Quaternion maths is delegated to :class:`scipy.spatial.transform.Rotation` (scalar-last ``xyzw``).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

#: Right-multiplying a camera-to-world pose by this flips the camera's y and z axes
#: (OpenGL <-> OpenCV camera axes). It is its own inverse.
OPENGL_OPENCV_FLIP = np.diag([1.0, -1.0, -1.0, 1.0])


def as_4x4(c2w: np.ndarray, name: str = "c2w") -> np.ndarray:
    """``[N, 3|4, 4]`` -> ``[N, 4, 4]`` float64 (the last row set to ``0 0 0 1``)."""
    c2w = np.asarray(c2w, dtype=np.float64)
    if c2w.ndim != 3 or c2w.shape[-1] != 4 or c2w.shape[-2] not in (3, 4):
        raise ValueError(f"{name} must have shape [N, 3, 4] or [N, 4, 4], got {c2w.shape}")
    out = np.zeros((c2w.shape[0], 4, 4))
    out[:, :3, :] = c2w[:, :3, :]
    out[:, 3, 3] = 1.0
    return out


#: Largest ``max |RᵀR - I|`` and ``|det R - 1|`` of a matrix accepted as a rotation when read from a file.
ROTATION_TOLERANCE = 1e-3


def rotation_defect(rot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """How far matrices ``[..., 3, 3]`` are from rotations: ``(max |RᵀR - I| [...], det R [...])``."""
    rot = np.asarray(rot, dtype=np.float64)
    ortho = np.abs(np.swapaxes(rot, -1, -2) @ rot - np.eye(3)).max(axis=(-2, -1))
    return ortho, np.linalg.det(rot)


def is_rotation(rot: np.ndarray, tolerance: float = ROTATION_TOLERANCE) -> np.ndarray:
    """Whether each of ``rot [..., 3, 3]`` is a finite rotation within ``tolerance`` (bool ``[...]``)."""
    rot = np.asarray(rot, dtype=np.float64)
    finite = np.isfinite(rot).all(axis=(-2, -1))
    ortho, det = rotation_defect(np.where(finite[..., None, None], rot, np.eye(3)))
    return finite & (ortho <= tolerance) & (np.abs(det - 1.0) <= tolerance)


def apply_pose_correction(c2w, rot, trans):  # noqa: ANN001, ANN201 (numpy arrays or torch tensors)
    """The pose nerfstudio renders for a correction ``[R_adj | t_adj]``: ``[R_adj · R | t + t_adj]``.

    This is how ``CameraOptimizer.apply_to_raybundle`` moves the rays (origins + t_adj, directions
    R_adj · d): the correction rotates the camera about its own centre, in the world frame, and shifts
    the centre. Works on numpy arrays and torch tensors alike (any camera axes, any world frame, as long
    as the correction is expressed in the same world frame).

    Args:
        c2w: camera-to-world ``[N, 3|4, 4]``.
        rot: ``R_adj [N, 3, 3]``; trans: ``t_adj [N, 3]``.

    Returns:
        ``[N, 3, 4]``.
    """
    rotated = rot @ c2w[..., :3, :3]  # [N, 3, 3]
    moved = c2w[..., :3, 3:] + trans[..., :, None]  # [N, 3, 1]
    if isinstance(rotated, np.ndarray):
        return np.concatenate([rotated, moved], axis=-1)
    import torch

    return torch.cat([rotated, moved], dim=-1)


def make_c2w(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """Stack rotations ``[N, 3, 3]`` and translations ``[N, 3]`` into 4x4 poses ``[N, 4, 4]``."""
    rotation = np.asarray(rotation, dtype=np.float64)
    translation = np.asarray(translation, dtype=np.float64)
    n = rotation.shape[0]
    out = np.zeros((n, 4, 4))
    out[:, :3, :3] = rotation
    out[:, :3, 3] = translation
    out[:, 3, 3] = 1.0
    return out


def invert_poses(pose: np.ndarray) -> np.ndarray:
    """Inverse of rigid poses ``[N, 3|4, 4]`` -> ``[N, 4, 4]`` (``[R | t]^-1 = [Rᵀ | -Rᵀ t]``)."""
    pose = as_4x4(pose, "pose")
    rot_t = np.swapaxes(pose[:, :3, :3], -1, -2)  # [N, 3, 3]
    trans = -np.einsum("nij,nj->ni", rot_t, pose[:, :3, 3])  # [N, 3]
    return make_c2w(rot_t, trans)


def colmap_to_c2w(qvec: np.ndarray, tvec: np.ndarray) -> np.ndarray:
    """COLMAP world-to-camera ``qvec [N, 4] (w, x, y, z)`` and ``tvec [N, 3]`` -> camera-to-world
    ``[N, 4, 4]`` with OpenCV axes. Quaternions need not be normalised (scipy normalises them)."""
    qvec = np.asarray(qvec, dtype=np.float64).reshape(-1, 4)
    tvec = np.asarray(tvec, dtype=np.float64).reshape(-1, 3)
    if qvec.shape[0] != tvec.shape[0]:
        raise ValueError(f"{qvec.shape[0]} quaternions for {tvec.shape[0]} translations")
    rot_w2c = Rotation.from_quat(qvec[:, [1, 2, 3, 0]]).as_matrix().reshape(-1, 3, 3)  # [N, 3, 3]
    rot_c2w = np.swapaxes(rot_w2c, -1, -2)
    centre = -np.einsum("nij,nj->ni", rot_c2w, tvec)  # C = -Rᵀ t, [N, 3]
    return make_c2w(rot_c2w, centre)


def c2w_to_colmap(c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Camera-to-world ``[N, 3|4, 4]`` (OpenCV axes) -> COLMAP world-to-camera ``(qvec [N, 4] wxyz
    with w >= 0, tvec [N, 3])``."""
    w2c = invert_poses(c2w)
    quat_xyzw = Rotation.from_matrix(w2c[:, :3, :3]).as_quat().reshape(-1, 4)  # [N, 4]
    qvec = quat_xyzw[:, [3, 0, 1, 2]]
    qvec = np.where(qvec[:, :1] < 0, -qvec, qvec)
    return qvec, w2c[:, :3, 3].copy()


def opengl_to_opencv(c2w: np.ndarray) -> np.ndarray:
    """Camera-to-world with OpenGL camera axes (nerfstudio) -> OpenCV camera axes; ``[N, 4, 4]``."""
    return as_4x4(c2w) @ OPENGL_OPENCV_FLIP


def opencv_to_opengl(c2w: np.ndarray) -> np.ndarray:
    """Camera-to-world with OpenCV camera axes -> OpenGL camera axes (nerfstudio); ``[N, 4, 4]``."""
    return as_4x4(c2w) @ OPENGL_OPENCV_FLIP


def c2w_to_tum(c2w: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
    """Camera-to-world ``[N, 3|4, 4]`` and ``timestamps [N]`` -> TUM rows
    ``[N, 8] = (timestamp, tx, ty, tz, qx, qy, qz, qw)`` with ``qw >= 0``."""
    c2w = as_4x4(c2w)
    timestamps = np.asarray(timestamps, dtype=np.float64).reshape(-1)
    if timestamps.shape[0] != c2w.shape[0]:
        raise ValueError(f"{timestamps.shape[0]} timestamps for {c2w.shape[0]} poses")
    quat = Rotation.from_matrix(c2w[:, :3, :3]).as_quat().reshape(-1, 4)  # xyzw, [N, 4]
    quat = np.where(quat[:, 3:] < 0, -quat, quat)
    return np.column_stack([timestamps, c2w[:, :3, 3], quat])


def tum_to_c2w(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TUM rows ``[N, 8] = (timestamp, tx, ty, tz, qx, qy, qz, qw)`` -> ``(timestamps [N],
    c2w [N, 4, 4])``. Quaternions are normalised (as evo does)."""
    rows = np.asarray(rows, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[1] != 8:
        raise ValueError(f"TUM rows must have shape [N, 8], got {rows.shape}")
    rot = Rotation.from_quat(rows[:, 4:8]).as_matrix().reshape(-1, 3, 3)
    return rows[:, 0].copy(), make_c2w(rot, rows[:, 1:4])


def rotation_angle_deg(rot_a: np.ndarray, rot_b: np.ndarray) -> np.ndarray:
    """Geodesic angle in degrees between rotations ``[..., 3, 3]`` (broadcast): the angle of
    ``R_aᵀ R_b``.

    Computed as ``atan2(‖skew part‖, (tr - 1)/2)`` where the skew part of ``M = R_aᵀ R_b`` gives
    ``sin θ`` and the trace ``cos θ``, which is accurate near 0 and near 180 degrees (``arccos`` of
    the trace is not: its derivative diverges there).
    """
    rot_a = np.asarray(rot_a, dtype=np.float64)
    rot_b = np.asarray(rot_b, dtype=np.float64)
    rel = np.swapaxes(rot_a, -1, -2) @ rot_b  # [..., 3, 3]
    skew = np.stack(
        [rel[..., 2, 1] - rel[..., 1, 2], rel[..., 0, 2] - rel[..., 2, 0], rel[..., 1, 0] - rel[..., 0, 1]],
        axis=-1,
    )  # 2 sin θ · axis, [..., 3]
    sin = 0.5 * np.linalg.norm(skew, axis=-1)
    cos = 0.5 * (np.trace(rel, axis1=-2, axis2=-1) - 1.0)
    return np.degrees(np.arctan2(sin, cos))


def scene_radius(centres: np.ndarray) -> float:
    """The scene extent used everywhere in this package: the largest distance of a camera centre
    ``centres [N, 3]`` from their centroid (world units; 0 for no camera). Noise levels, relative
    translation errors and default depth ranges are fractions of it."""
    centres = np.asarray(centres, dtype=np.float64).reshape(-1, 3)
    if centres.shape[0] == 0:
        return 0.0
    return float(np.linalg.norm(centres - centres.mean(axis=0), axis=1).max())


def camera_centers(c2w: np.ndarray) -> np.ndarray:
    """Camera centres in world coordinates, ``[N, 3]``, of camera-to-world poses ``[N, 3|4, 4]``."""
    return np.asarray(c2w, dtype=np.float64)[:, :3, 3].copy()
