"""The homography-based pose error in NumPy, for reports that need no gradient and should not load torch.

:func:`nerf_posefix.geometry.homography.homography_error` is the reference (torch, differentiable, the loss of
the NeRF stage); this is the same closed form evaluated in float64 NumPy, so that ``posefix refine`` without a
NeRF stage (a COLMAP model of 1000 images: ~20 s in all) does not spend ~2 s importing torch for one column of its
report. ``tests/test_homography.py`` checks the two against each other.

Conventions (as :mod:`nerf_posefix.geometry.homography`): **camera-to-world** poses ``[..., 3|4, 4]``; camera axes
``"opengl"`` (looking along -z) or ``"opencv"`` (along +z); depth bounds along the reference camera's optical axis,
in world units. The value is ``‖I - R‖²_F - 2β tᵀ(I - R)n + γ‖t‖²`` with ``R = R_cᵀ R_r``, ``t = R_cᵀ(t_r - t_c)``,
``β = ln(xmax/xmin)/(xmax - xmin)``, ``γ = 1/(xmin·xmax)`` (the derivation is in that module's docstring).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

#: Optical axis ``n`` of a camera in its own frame, per axis convention.
OPTICAL_AXES: dict[str, tuple[float, float, float]] = {"opengl": (0.0, 0.0, -1.0), "opencv": (0.0, 0.0, 1.0)}


def homography_error_numpy(
    c2w_ref: np.ndarray, c2w: np.ndarray, xmin: float | np.ndarray, xmax: float | np.ndarray,
    camera_convention: Literal["opengl", "opencv"] = "opengl",
) -> np.ndarray:
    """Mean over fronto-parallel planes at depths in ``[xmin, xmax]`` of ``‖I - H(x)‖²_F`` between the reference
    cameras ``c2w_ref`` and the cameras ``c2w`` (``[..., 3|4, 4]``, broadcastable), per pair: ``[...]``.

    Raises:
        ValueError: an unknown axis convention; bounds not finite, ``xmin <= 0`` or ``xmax <= xmin``.
    """
    if camera_convention not in OPTICAL_AXES:
        raise ValueError(f"camera_convention must be 'opengl' or 'opencv', got {camera_convention!r}")
    axis = np.asarray(OPTICAL_AXES[camera_convention])  # [3]
    xmin_a, xmax_a = np.broadcast_arrays(np.asarray(xmin, dtype=np.float64), np.asarray(xmax, dtype=np.float64))
    if not (np.isfinite(xmin_a).all() and np.isfinite(xmax_a).all()) or (xmin_a <= 0).any() or (xmax_a <= xmin_a).any():
        raise ValueError("the depth bounds must be finite with 0 < xmin < xmax")
    ref = np.asarray(c2w_ref, dtype=np.float64)
    cam = np.asarray(c2w, dtype=np.float64)
    rot = np.einsum("...ji,...jk->...ik", cam[..., :3, :3], ref[..., :3, :3])  # R_cᵀ R_r, [..., 3, 3]
    trans = np.einsum("...ji,...j->...i", cam[..., :3, :3], ref[..., :3, 3] - cam[..., :3, 3])  # R_cᵀ (t_r - t_c), [..., 3]
    a = np.eye(3) - rot  # [..., 3, 3]
    width = xmax_a - xmin_a
    beta, gamma = np.log1p(width / xmin_a) / width, 1.0 / (xmin_a * xmax_a)
    cross = np.einsum("...i,...i->...", trans, a @ axis)  # tᵀ A n
    return np.einsum("...ij,...ij->...", a, a) - 2.0 * beta * cross + gamma * np.einsum("...i,...i->...", trans, trans)
