r"""The homography-based pose error (Boittiaux et al., RA-L 2022, arXiv 2205.01937).

Pure torch; no nerfstudio import.

Conventions
-----------
* Poses are **camera-to-world** matrices ``c2w = [R_c2w | t_c2w]`` of shape ``[..., 3, 4]`` or
  ``[..., 4, 4]`` (the last row of a 4x4 is ignored).
* Camera axes: ``"opengl"`` (nerfstudio: x right, y up, the camera looks along -z; default) or
  ``"opencv"`` (COLMAP: x right, y down, the camera looks along +z). The optical axis ``n`` is the unit
  viewing direction in the camera frame: ``(0, 0, -1)`` for OpenGL, ``(0, 0, 1)`` for OpenCV.
* Depths ``xmin``/``xmax`` are distances along the optical axis of the reference camera, in world
  units (the same units as the translations).

Derivation of the closed form
-----------------------------
Let ``c2w_ref = [R_r | t_r]`` and ``c2w = [R_c | t_c]``. A point ``X_r`` in the reference camera
frame is the world point ``R_r X_r + t_r``, which is ``X = R X_r + t`` in the other camera's frame
with ``R = R_cᵀ R_r`` and ``t = R_cᵀ (t_r - t_c)``. On the plane fronto-parallel to the reference
camera at depth ``x`` we have ``nᵀ X_r = x``, so ``t = t nᵀ X_r / x`` and
``X = (R + t nᵀ / x) X_r = H(x) X_r``. With ``A = I - R``:

.. math::

    ‖I - H(x)‖²_F = ‖A - t nᵀ/x‖²_F = ‖A‖²_F - (2/x) ⟨A, t nᵀ⟩_F + ‖t nᵀ‖²_F / x²
                  = ‖A‖²_F - (2/x) tᵀ A n + ‖t‖² / x²,

using ``⟨A, t nᵀ⟩_F = tr(Aᵀ t nᵀ) = tᵀ A n`` and ``‖t nᵀ‖_F = ‖t‖ ‖n‖ = ‖t‖``. Averaging over
``x`` uniform in ``[a, b] = [xmin, xmax]`` only needs the means of ``1/x`` and ``1/x²``:

.. math::

    β = \frac{1}{b-a}\int_a^b \frac{dx}{x} = \frac{\ln(b/a)}{b-a}, \qquad
    γ = \frac{1}{b-a}\int_a^b \frac{dx}{x^2} = \frac{1}{ab},

    L = ‖I - R‖²_F - 2 β\, tᵀ (I - R)\, n + γ ‖t‖².

The cross term is written with the plane *in front of* the reference camera (``x > 0``); using
``ln(a/b)`` instead (as the reference code's global variant does) integrates over a plane behind
the camera. ``tests/test_homography.py`` checks the sign against Simpson quadrature of explicitly
built homographies.

Properties: ``L = 0`` iff the poses are equal (each term of ``‖I - H(x)‖²`` vanishes for all x only
then); it is invariant to a change of world frame (only ``R`` and ``t`` enter, both relative); and
the same physical cameras in OpenGL or OpenCV axes give the same value, since with
``F = diag(1, -1, -1)`` the OpenGL quantities are ``F R F``, ``F t``, ``F n`` and
``‖I - F H F‖ = ‖I - H‖``; and it is symmetric in the two cameras, since swapping them maps
``(R, t)`` to ``(Rᵀ, -Rᵀt)`` and ``(-Rᵀt)ᵀ(I - Rᵀ)n = tᵀ(I - R)n``.

Numerics: no square root, and ``β`` is computed as ``log1p((b-a)/a) / (b-a)``, which is accurate for
narrow ranges, so values and gradients are finite everywhere, including at equal poses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from nerf_posefix.geometry.homography_numpy import OPTICAL_AXES

CameraConvention = Literal["opengl", "opencv"]

#: Largest ``|det R - 1|`` and ``max |RᵀR - I|`` accepted for a rotation block.
ROTATION_TOLERANCE = 1e-3


def optical_axis(camera_convention: CameraConvention, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Unit viewing direction of a camera in its own frame (:data:`OPTICAL_AXES`): ``[3]``."""
    if camera_convention not in OPTICAL_AXES:
        raise ValueError(f"camera_convention must be 'opengl' or 'opencv', got {camera_convention!r}")
    return torch.tensor(OPTICAL_AXES[camera_convention], dtype=dtype, device=device)


def inverse_depth_moments(xmin: Tensor, xmax: Tensor) -> tuple[Tensor, Tensor]:
    """Means of ``1/x`` and ``1/x²`` for ``x`` uniform in ``[xmin, xmax]``.

    Args:
        xmin, xmax: positive depths with ``xmax > xmin``, any broadcastable shapes.

    Returns:
        ``(beta, gamma)`` with ``beta = ln(xmax/xmin)/(xmax-xmin)`` and ``gamma = 1/(xmin·xmax)``.
    """
    width = xmax - xmin
    beta = torch.log1p(width / xmin) / width
    gamma = 1.0 / (xmin * xmax)
    return beta, gamma


def _first_bad_index(mask: Tensor) -> str:
    """``"[i, j]"`` of the first True entry of ``mask`` (or ``""`` for a 0-d mask)."""
    if mask.dim() == 0:
        return ""
    index = torch.nonzero(mask)[0].tolist()
    return "[" + ", ".join(str(i) for i in index) + "]"


def _as_bounds(value: float | Tensor, name: str, like: Tensor) -> Tensor:
    if isinstance(value, Tensor):
        return value.to(dtype=like.dtype, device=like.device)
    return torch.as_tensor(float(value), dtype=like.dtype, device=like.device)


def check_depth_bounds(xmin: Tensor, xmax: Tensor) -> None:
    """Raise ``ValueError`` naming the first index where the bounds are not finite, ``xmin <= 0`` or
    ``xmax <= xmin``."""
    xmin_b, xmax_b = torch.broadcast_tensors(xmin, xmax)
    for name, value in (("xmin", xmin_b), ("xmax", xmax_b)):
        bad = ~torch.isfinite(value)
        if bad.any():
            idx = _first_bad_index(bad)
            raise ValueError(f"{name}{idx} = {value[bad][0].item()} is not finite")
    bad = xmin_b <= 0
    if bad.any():
        idx = _first_bad_index(bad)
        raise ValueError(f"xmin{idx} = {xmin_b[bad][0].item():g} must be > 0")
    bad = xmax_b <= xmin_b
    if bad.any():
        idx = _first_bad_index(bad)
        raise ValueError(
            f"xmax{idx} = {xmax_b[bad][0].item():g} must be > xmin{idx} = {xmin_b[bad][0].item():g}"
        )


def check_poses(c2w: Tensor, name: str, tolerance: float = ROTATION_TOLERANCE) -> None:
    """Raise ``ValueError`` naming the first pose of ``c2w [..., 3|4, 4]`` that is not finite or whose
    rotation block is not a rotation (``|det - 1|`` or ``max |RᵀR - I|`` above ``tolerance``)."""
    if c2w.dim() < 2 or c2w.shape[-1] != 4 or c2w.shape[-2] not in (3, 4):
        raise ValueError(f"{name} must have shape [..., 3, 4] or [..., 4, 4], got {tuple(c2w.shape)}")
    pose = c2w[..., :3, :4]
    bad = ~torch.isfinite(pose).all(dim=-1).all(dim=-1)
    if bad.any():
        raise ValueError(f"{name}{_first_bad_index(bad)} has non-finite entries")
    rot = pose[..., :3, :3].detach()
    eye = torch.eye(3, dtype=rot.dtype, device=rot.device)
    ortho_err = (rot.transpose(-1, -2) @ rot - eye).abs().amax(dim=(-1, -2))
    det_err = (torch.linalg.det(rot) - 1.0).abs()
    bad = (ortho_err > tolerance) | (det_err > tolerance)
    if bad.any():
        idx = _first_bad_index(bad)
        raise ValueError(
            f"{name}{idx} is not a rotation: det = {torch.linalg.det(rot)[bad][0].item():.6g}, "
            f"max |RᵀR - I| = {ortho_err[bad][0].item():.3g} (tolerance {tolerance:g})"
        )


def relative_pose(c2w_ref: Tensor, c2w: Tensor) -> tuple[Tensor, Tensor]:
    """Motion from the reference camera frame to the other camera frame.

    Args:
        c2w_ref, c2w: camera-to-world poses ``[..., 3|4, 4]`` (broadcastable batch shapes).

    Returns:
        ``(R [..., 3, 3], t [..., 3])`` such that ``X = R X_ref + t`` for a point given as ``X_ref`` in
        the reference camera frame and ``X`` in the other camera frame.
    """
    rot_r, trans_r = c2w_ref[..., :3, :3], c2w_ref[..., :3, 3]
    rot_c, trans_c = c2w[..., :3, :3], c2w[..., :3, 3]
    rot_ct = rot_c.transpose(-1, -2)
    rot = rot_ct @ rot_r  # [..., 3, 3]
    trans = (rot_ct @ (trans_r - trans_c).unsqueeze(-1)).squeeze(-1)  # [..., 3]
    return rot, trans


def homography_error_from_relative(rot: Tensor, trans: Tensor, beta: Tensor, gamma: Tensor, axis: Tensor) -> Tensor:
    """Closed form ``‖I - R‖² - 2β tᵀ(I - R)n + γ‖t‖²`` (no input checks).

    Args:
        rot: relative rotation ``[..., 3, 3]``; trans: relative translation ``[..., 3]``
            (see :func:`relative_pose`).
        beta, gamma: means of ``1/x`` and ``1/x²`` (see :func:`inverse_depth_moments`), broadcastable
            to the batch shape.
        axis: optical axis ``n`` of the reference camera in its own frame, ``[3]``.

    Returns:
        The mean of ``‖I - H(x)‖²_F`` over the depth range: ``[...]``.
    """
    eye = torch.eye(3, dtype=rot.dtype, device=rot.device)
    a = eye - rot  # [..., 3, 3]
    rot_term = a.square().sum(dim=(-1, -2))  # [...]
    a_n = a @ axis  # [..., 3]
    cross = (trans * a_n).sum(dim=-1)  # tᵀ A n, [...]
    trans_term = trans.square().sum(dim=-1)  # ‖t‖², [...]
    return rot_term - 2.0 * beta * cross + gamma * trans_term


def homography_error(
    c2w_ref: Tensor,
    c2w: Tensor,
    xmin: float | Tensor,
    xmax: float | Tensor,
    camera_convention: CameraConvention = "opengl",
) -> Tensor:
    """Mean over fronto-parallel planes at depths in ``[xmin, xmax]`` of ``‖I - H(x)‖²_F``.

    ``H(x) = R + t nᵀ / x`` is the homography that the plane at depth ``x`` in front of the reference
    camera induces between the reference camera and the other camera (see the module docstring for
    the derivation of the closed form).

    Args:
        c2w_ref: reference camera-to-world poses ``[..., 3|4, 4]``.
        c2w: camera-to-world poses ``[..., 3|4, 4]``, broadcastable against ``c2w_ref``.
        xmin, xmax: depth range of the planes, in world units along the reference camera's optical
            axis: floats, or tensors broadcastable to the batch shape (one range per pair is the
            paper's "local" variant).
        camera_convention: axes of the camera frames: ``"opengl"`` (nerfstudio, looks along -z) or
            ``"opencv"`` (COLMAP, looks along +z).

    Returns:
        The error per pose pair, ``[...]`` (dimensionless; 0 for equal poses). Differentiable with
        respect to both poses and the bounds.

    Raises:
        ValueError: bounds not finite, ``xmin <= 0`` or ``xmax <= xmin``; poses with non-finite
            entries or rotation blocks that are not rotations. The message names the first offending
            index.
    """
    check_poses(c2w_ref, "c2w_ref")
    check_poses(c2w, "c2w")
    xmin_t = _as_bounds(xmin, "xmin", c2w_ref)
    xmax_t = _as_bounds(xmax, "xmax", c2w_ref)
    check_depth_bounds(xmin_t, xmax_t)
    axis = optical_axis(camera_convention, c2w_ref.dtype, c2w_ref.device)
    rot, trans = relative_pose(c2w_ref, c2w)
    beta, gamma = inverse_depth_moments(xmin_t, xmax_t)
    return homography_error_from_relative(rot, trans, beta, gamma, axis)


class HomographyLoss(torch.nn.Module):
    """:func:`homography_error` as a loss module.

    Args:
        xmin, xmax: default depth bounds (floats or tensors broadcastable to the batch shape); can be
            overridden per call.
        camera_convention: ``"opengl"`` (default) or ``"opencv"``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over the pose pairs.
    """

    def __init__(
        self,
        xmin: float | Tensor,
        xmax: float | Tensor,
        camera_convention: CameraConvention = "opengl",
        reduction: Literal["mean", "sum", "none"] = "mean",
    ) -> None:
        super().__init__()
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        self.register_buffer("xmin", torch.as_tensor(xmin, dtype=torch.get_default_dtype()))
        self.register_buffer("xmax", torch.as_tensor(xmax, dtype=torch.get_default_dtype()))
        check_depth_bounds(self.xmin, self.xmax)
        self.camera_convention: CameraConvention = camera_convention
        self.reduction = reduction

    def forward(
        self,
        c2w_ref: Tensor,
        c2w: Tensor,
        xmin: float | Tensor | None = None,
        xmax: float | Tensor | None = None,
    ) -> Tensor:
        errors = homography_error(
            c2w_ref,
            c2w,
            self.xmin if xmin is None else xmin,
            self.xmax if xmax is None else xmax,
            self.camera_convention,
        )
        if self.reduction == "mean":
            return errors.mean()
        if self.reduction == "sum":
            return errors.sum()
        return errors


def _quantile_truncated(sorted_values: Tensor, q: float) -> Tensor:
    """The reference code's percentile: the element at index ``int(q · (n - 1))`` of sorted values."""
    return sorted_values[int(q * (sorted_values.numel() - 1))]


def camera_depths(c2w: Tensor, points_world: Tensor, camera_convention: CameraConvention = "opengl") -> Tensor:
    """Depths of world points along one camera's optical axis.

    Args:
        c2w: one camera-to-world pose ``[3|4, 4]``.
        points_world: ``[P, 3]`` points in world coordinates.

    Returns:
        ``[P]`` depths ``nᵀ X_cam`` (positive in front of the camera).
    """
    axis = optical_axis(camera_convention, c2w.dtype, c2w.device)
    rot, trans = c2w[:3, :3], c2w[:3, 3]
    # nᵀ Rᵀ (X - t) = (R n)ᵀ (X - t)
    return (points_world.to(c2w.dtype) - trans) @ (rot @ axis)


def depth_bounds_from_points(
    c2w: Tensor,
    points_per_camera: Sequence[Tensor],
    lower_quantile: float = 0.025,
    upper_quantile: float = 0.975,
    camera_convention: CameraConvention = "opengl",
    min_points: int = 1,
) -> tuple[Tensor, Tensor]:
    """Per-camera depth bounds from the 3D points each camera observes (the paper's local variant).

    The bounds are robust quantiles of the depths of the points in front of the camera, computed as
    in the paper's reference code: depths sorted, the element at index ``int(q · (n - 1))``.

    Args:
        c2w: camera-to-world poses ``[N, 3|4, 4]``.
        points_per_camera: ``N`` tensors ``[P_i, 3]``, the world points that camera ``i`` observes.
        lower_quantile, upper_quantile: quantiles for ``xmin`` and ``xmax``, ``0 <= lower < upper <= 1``.
        camera_convention: axes of the camera frames.
        min_points: fewest points in front of a camera for its bounds to be computed.

    Returns:
        ``(xmin [N], xmax [N])``. Where all depths of a camera coincide, ``xmax`` is nudged to
        ``xmin · (1 + 1e-6)`` so the range stays valid.

    Raises:
        ValueError: a camera observes fewer than ``min_points`` points in front of it (named by index),
            or bad quantiles.
    """
    if not 0.0 <= lower_quantile < upper_quantile <= 1.0:
        raise ValueError(f"need 0 <= lower_quantile < upper_quantile <= 1, got {lower_quantile}, {upper_quantile}")
    if len(points_per_camera) != c2w.shape[0]:
        raise ValueError(f"{len(points_per_camera)} point sets for {c2w.shape[0]} cameras")
    xmin = torch.empty(c2w.shape[0], dtype=c2w.dtype, device=c2w.device)
    xmax = torch.empty_like(xmin)
    for i, points in enumerate(points_per_camera):
        depths = camera_depths(c2w[i], points.reshape(-1, 3), camera_convention)
        depths = depths[depths > 0]
        if depths.numel() < max(min_points, 1):
            raise ValueError(
                f"camera {i} observes {depths.numel()} points in front of it (need at least {max(min_points, 1)}): "
                "cannot compute its depth bounds"
            )
        depths, _ = torch.sort(depths)
        xmin[i] = _quantile_truncated(depths, lower_quantile)
        xmax[i] = torch.maximum(_quantile_truncated(depths, upper_quantile), xmin[i] * (1 + 1e-6))
    return xmin, xmax


def global_depth_bounds(
    c2w: Tensor,
    points_per_camera: Sequence[Tensor],
    lower_quantile: float = 0.025,
    upper_quantile: float = 0.975,
    camera_convention: CameraConvention = "opengl",
) -> tuple[float, float]:
    """One depth range for the whole scene: the quantiles of all observed depths, pooled over cameras
    (the paper's global variant). Arguments as :func:`depth_bounds_from_points`."""
    depths = [
        camera_depths(c2w[i], points.reshape(-1, 3), camera_convention) for i, points in enumerate(points_per_camera)
    ]
    pooled = torch.cat(depths) if depths else torch.empty(0)
    pooled = pooled[pooled > 0]
    if pooled.numel() == 0:
        raise ValueError("no observed point lies in front of any camera: cannot compute depth bounds")
    pooled, _ = torch.sort(pooled)
    lo = float(_quantile_truncated(pooled, lower_quantile))
    hi = max(float(_quantile_truncated(pooled, upper_quantile)), lo * (1 + 1e-6))
    return lo, hi


def correction_homography_error(
    rot_adj: Tensor,
    trans_adj: Tensor,
    view_dirs: Tensor,
    xmin: Tensor | float,
    xmax: Tensor | float,
) -> Tensor:
    """:func:`homography_error` between poses ``[R | t]`` and ``[R_adj R | t + t_adj]``, from the correction.

    This is how nerfstudio's camera optimizer applies a pose adjustment: the rotation ``R_adj`` acts
    in the world frame about the camera centre and ``t_adj`` is added to the centre. Substituting
    ``R_rel = Rᵀ R_adjᵀ R`` and ``t_rel = -Rᵀ R_adjᵀ t_adj`` into the closed form gives

    .. math::  L = ‖I - R_adj‖² + 2β\\, t_adjᵀ (R_adj - I)\\, d + γ ‖t_adj‖²,

    with ``d = R n`` the camera's viewing direction in world coordinates: the error depends on the
    camera only through ``d`` (no input checks; the caller guarantees rotations and valid bounds).

    Args:
        rot_adj: ``[..., 3, 3]`` world-frame rotation corrections.
        trans_adj: ``[..., 3]`` translation corrections (world units).
        view_dirs: ``[..., 3]`` unit viewing directions of the uncorrected cameras in the world frame
            (for OpenGL c2w: ``-c2w[..., :3, 2]``; for OpenCV: ``c2w[..., :3, 2]``).
        xmin, xmax: depth bounds broadcastable to the batch shape.

    Returns:
        ``[...]`` errors, equal to ``homography_error(c2w, corrected_c2w, xmin, xmax)``.
    """
    xmin_t = torch.as_tensor(xmin, dtype=rot_adj.dtype, device=rot_adj.device)
    xmax_t = torch.as_tensor(xmax, dtype=rot_adj.dtype, device=rot_adj.device)
    beta, gamma = inverse_depth_moments(xmin_t, xmax_t)
    eye = torch.eye(3, dtype=rot_adj.dtype, device=rot_adj.device)
    a = rot_adj - eye  # [..., 3, 3]
    rot_term = a.square().sum(dim=(-1, -2))
    cross = (trans_adj * (a @ view_dirs.unsqueeze(-1)).squeeze(-1)).sum(dim=-1)  # t_adjᵀ (R_adj - I) d
    return rot_term + 2.0 * beta * cross + gamma * trans_adj.square().sum(dim=-1)


def adjustment_homography_error(
    adjustment: Tensor,
    view_dirs: Tensor,
    xmin: Tensor | float,
    xmax: Tensor | float,
) -> Tensor:
    """:func:`correction_homography_error` straight from nerfstudio's 6-vector pose adjustment.

    ``adjustment = (t_adj, ω)`` (translation, then so(3) axis-angle) stands for the correction
    ``R_adj = exp(ω)``. With Rodrigues' formula ``exp(ω) - I = a [ω]× + b [ω]×²``,
    ``a = sin θ / θ``, ``b = (1 - cos θ)/θ² = 2 sin²(θ/2)/θ²`` and ``θ = ‖ω‖``:

    .. math::  ‖I - R_adj‖² = 4(1 - cos θ) = 4 θ² b, \\qquad
               t_adjᵀ (R_adj - I) d = a\\, t_adjᵀ(ω × d) + b\\, t_adjᵀ(ω × (ω × d)),

    so no rotation matrix is built. ``a`` and ``b`` switch to their Taylor series below
    ``θ² = 1e-8``, which keeps values and gradients finite at ``ω = 0`` in float32 and float64.

    nerfstudio's own ``exp_map_SO3xR3`` clamps ``θ`` at 0.01 rad, which changes the rendered
    rotation of a correction smaller than that by at most 1.7e-5 of its angle; this function uses the
    exact exponential.

    Args:
        adjustment: ``[..., 6]`` pose adjustments.
        view_dirs: ``[..., 3]`` unit viewing directions of the uncorrected cameras in world coordinates.
        xmin, xmax: depth bounds broadcastable to the batch shape.

    Returns:
        ``[...]`` errors.
    """
    xmin_t = torch.as_tensor(xmin, dtype=adjustment.dtype, device=adjustment.device)
    xmax_t = torch.as_tensor(xmax, dtype=adjustment.dtype, device=adjustment.device)
    beta, gamma = inverse_depth_moments(xmin_t, xmax_t)
    trans, omega = adjustment[..., :3], adjustment[..., 3:]
    theta2 = omega.square().sum(dim=-1)  # [...]
    small = theta2 < 1e-8
    theta2_safe = torch.where(small, torch.ones_like(theta2), theta2)
    theta = theta2_safe.sqrt()
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24.0, 2.0 * torch.sin(0.5 * theta).square() / theta2_safe)
    w_x_d = torch.linalg.cross(omega, view_dirs.expand_as(omega))  # [..., 3]
    w_x_w_x_d = torch.linalg.cross(omega, w_x_d)
    cross = a * (trans * w_x_d).sum(dim=-1) + b * (trans * w_x_w_x_d).sum(dim=-1)
    return 4.0 * theta2 * b + 2.0 * beta * cross + gamma * trans.square().sum(dim=-1)
