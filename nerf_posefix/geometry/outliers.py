"""Which cameras moved far more than the others (numpy only): the rule shared by ``posefix refine``'s report (its
flags) and the front end's second opinion on such cameras (:mod:`nerf_posefix.sfm.outlying_moves`).

A camera's move is measured as the **shift of its image** at its scene depth, in pixels:
``focal_px · (rotation (rad) + centre distance / depth)`` (:func:`image_shift_px`), so that a turn and a shift
compare on one scale.
"""

from __future__ import annotations

import numpy as np

from nerf_posefix.geometry.poses import rotation_angle_deg

#: An outlying move is more than this many times the median camera's move ...
MEDIAN_FACTOR = 3.0
#: ... and more than this many robust standard deviations (1.4826 · MAD) above the median move ...
MAD_SIGMAS = 5.0
#: ... and at least this many pixels.
MIN_MOVE_PX = 1.0


def image_shift_px(rotation_deg: np.ndarray, centre_distance: np.ndarray, depth: np.ndarray,
                   focal_px: np.ndarray) -> np.ndarray:
    """``[N]`` image shift (pixels) of a move by ``rotation_deg [N]`` (degrees) and ``centre_distance [N]`` (world
    units) for cameras of focal length ``focal_px [N]`` (pixels) seeing their scene at ``depth [N]`` (world units)."""
    return np.asarray(focal_px, dtype=np.float64) * (np.radians(np.asarray(rotation_deg, dtype=np.float64))
                                                     + np.asarray(centre_distance, dtype=np.float64) / np.asarray(depth, dtype=np.float64))


def pose_change_px(from_c2w: np.ndarray, to_c2w: np.ndarray, depth: np.ndarray, focal_px: np.ndarray) -> np.ndarray:
    """``[N]`` image shift (pixels, :func:`image_shift_px`) of the change from ``from_c2w`` to ``to_c2w`` (``[N, 4, 4]``
    camera-to-world, one world frame): the angle between the rotations and the distance between the centres."""
    rotation = rotation_angle_deg(from_c2w[:, :3, :3], to_c2w[:, :3, :3])  # [N]
    centre = np.linalg.norm(from_c2w[:, :3, 3] - to_c2w[:, :3, 3], axis=1)  # [N]
    return image_shift_px(rotation, centre, depth, focal_px)


def outlier_threshold(moves_px: np.ndarray, median_factor: float = MEDIAN_FACTOR, mad_sigmas: float = MAD_SIGMAS,
                      floor_px: float = MIN_MOVE_PX) -> tuple[float, float]:
    """``(threshold, median)`` of the moves ``[N]`` (pixels): a move above ``threshold`` is an outlier, more than
    ``median_factor`` x the median move, ``mad_sigmas`` robust standard deviations above it, and ``floor_px``.
    ``(floor_px, 0)`` for no moves."""
    moves_px = np.asarray(moves_px, dtype=np.float64).reshape(-1)
    if moves_px.size == 0:
        return float(floor_px), 0.0
    median = float(np.median(moves_px))
    sigma = 1.4826 * float(np.median(np.abs(moves_px - median)))
    return max(median_factor * median, median + mad_sigmas * sigma, float(floor_px)), median
