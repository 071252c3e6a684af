r"""Reprojection error of SfM observations (pure torch, batched, differentiable, float32/float64).

Conventions
-----------
* Poses are **camera-to-world** matrices ``c2w = [R | C]`` of shape ``[..., 3, 4]`` or ``[..., 4, 4]``
  (the last row of a 4x4 is ignored) with **OpenCV camera axes** (x right, y down, the camera looks
  along +z), as COLMAP uses them. ``C`` is the camera centre; a world point ``X`` has camera
  coordinates ``x_cam = Rᵀ (X - C)`` (COLMAP's ``cam_from_world`` is ``[Rᵀ | -Rᵀ C]``). nerfstudio's
  OpenGL poses must be converted first (``c2w_opencv = c2w_opengl @ diag(1, -1, -1, 1)``).
* Pixels follow COLMAP: the centre of the top-left pixel is ``(0.5, 0.5)``, so the image covers
  ``[0, W] x [0, H]``; x grows to the right, y downwards. Residuals are ``projected - observed`` in
  pixels.
* Camera models and parameter orders are COLMAP's (``src/colmap/sensor/models.h``); see
  :data:`CAMERA_MODEL_PARAMS`. Distortion acts on the normalised coordinates ``u = x/z, v = y/z``
  exactly as COLMAP's ``Distortion`` functions do::

      r² = u² + v²
      SIMPLE_RADIAL: radial = k r²                    du = u·radial            dv = v·radial
      RADIAL:        radial = k1 r² + k2 r⁴           du = u·radial            dv = v·radial
      OPENCV:        radial = k1 r² + k2 r⁴           du = u·radial + 2 p1 u v + p2 (r² + 2u²)
                                                      dv = v·radial + 2 p2 u v + p1 (r² + 2v²)
      pixel = (fx (u + du) + cx, fy (v + dv) + cy)    (fx = fy = f for the single-focal models)

* Points whose depth ``z`` is below ``min_depth`` (default: the dtype's machine epsilon, the test
  COLMAP's ``ImgFromCam`` applies) cannot be projected. They are reported by a ``valid`` mask; their
  projections are computed with ``z`` replaced by 1 so that values and gradients stay finite (the
  numbers are meaningless and the residual functions set them to 0).

Robust losses
-------------
:func:`robust_loss` applies Ceres' loss functions (the ones COLMAP / pycolmap bundle adjustment
uses) to squared residual norms ``s = ‖r‖²`` with a scale ``a`` in pixels (``b = a²``):
``squared`` ρ(s) = s; ``huber`` ρ(s) = s for s ≤ b, else 2a√s − b; ``cauchy`` ρ(s) = b log(1 + s/b);
``soft_l1`` ρ(s) = 2b(√(1 + s/b) − 1). All have ρ(0) = 0 and ρ'(0) = 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor

#: COLMAP camera models supported here and their parameters, in COLMAP's order.
CAMERA_MODEL_PARAMS: dict[str, tuple[str, ...]] = {
    "SIMPLE_PINHOLE": ("f", "cx", "cy"),
    "PINHOLE": ("fx", "fy", "cx", "cy"),
    "SIMPLE_RADIAL": ("f", "cx", "cy", "k"),
    "RADIAL": ("f", "cx", "cy", "k1", "k2"),
    "OPENCV": ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2"),
}

RobustLossKind = Literal["squared", "huber", "cauchy", "soft_l1"]

#: The robust losses :func:`robust_loss` knows.
ROBUST_LOSSES: tuple[str, ...] = ("squared", "huber", "cauchy", "soft_l1")


def check_camera_model(model: str, params: Tensor | None = None, name: str = "params") -> int:
    """Number of parameters of ``model``; raise ``ValueError`` for an unknown model or for ``params``
    whose last dimension does not match."""
    if model not in CAMERA_MODEL_PARAMS:
        supported = ", ".join(CAMERA_MODEL_PARAMS)
        raise ValueError(f"unsupported camera model {model!r}: supported models are {supported}")
    num = len(CAMERA_MODEL_PARAMS[model])
    if params is not None and (params.dim() == 0 or params.shape[-1] != num):
        raise ValueError(
            f"{name} for camera model {model} must have shape [..., {num}] "
            f"({', '.join(CAMERA_MODEL_PARAMS[model])}), got {tuple(params.shape)}"
        )
    return num


def _min_depth(min_depth: float | None, dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).eps) if min_depth is None else float(min_depth)


def in_front_mask(points_cam: Tensor, min_depth: float | None = None) -> Tensor:
    """``[...]`` True where a camera-frame point ``[..., 3]`` (OpenCV axes) has depth ``z >= min_depth``
    (default: the dtype's machine epsilon, as in COLMAP), i.e. where it can be projected."""
    return points_cam[..., 2] >= _min_depth(min_depth, points_cam.dtype)


def _safe_depth(points_cam: Tensor, valid: Tensor) -> Tensor:
    """Depths ``[...]`` with the invalid ones replaced by 1 (finite values and gradients)."""
    z = points_cam[..., 2]
    return torch.where(valid, z, torch.ones_like(z))


def _distort(model: str, params: Tensor, u: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """COLMAP's ``Distortion``: ``(du, dv)`` for normalised coordinates ``u, v [...]``."""
    if model in ("SIMPLE_PINHOLE", "PINHOLE"):
        return torch.zeros_like(u), torch.zeros_like(v)
    r2 = u * u + v * v
    if model == "SIMPLE_RADIAL":
        radial = params[..., 3] * r2
        return u * radial, v * radial
    if model == "RADIAL":
        radial = params[..., 3] * r2 + params[..., 4] * r2 * r2
        return u * radial, v * radial
    # OPENCV
    k1, k2, p1, p2 = params[..., 4], params[..., 5], params[..., 6], params[..., 7]
    radial = k1 * r2 + k2 * r2 * r2
    uv = u * v
    du = u * radial + 2.0 * p1 * uv + p2 * (r2 + 2.0 * u * u)
    dv = v * radial + 2.0 * p2 * uv + p1 * (r2 + 2.0 * v * v)
    return du, dv


def _focal_principal(model: str, params: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(fx, fy, cx, cy)`` of a parameter tensor ``[..., P]``."""
    if model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL"):
        return params[..., 0], params[..., 0], params[..., 1], params[..., 2]
    return params[..., 0], params[..., 1], params[..., 2], params[..., 3]


def project_camera_points(
    points_cam: Tensor, model: str, params: Tensor | Sequence[float], min_depth: float | None = None
) -> Tensor:
    """Project camera-frame points to pixels with a COLMAP camera model.

    Args:
        points_cam: ``[..., 3]`` points in the camera frame (OpenCV axes: x right, y down, z forward).
        model: a COLMAP model name, one of :data:`CAMERA_MODEL_PARAMS`.
        params: ``[..., P]`` (broadcastable against the points' batch shape) or a sequence of ``P``
            floats, in COLMAP's order.
        min_depth: points with ``z < min_depth`` are invalid (see :func:`in_front_mask`); their pixels
            are finite but meaningless.

    Returns:
        ``[..., 2]`` pixel coordinates (COLMAP convention: the top-left pixel's centre is (0.5, 0.5)).

    Raises:
        ValueError: unknown model (the message lists the supported ones), wrong number of parameters,
            points not of shape ``[..., 3]``.
    """
    if points_cam.dim() == 0 or points_cam.shape[-1] != 3:
        raise ValueError(f"points_cam must have shape [..., 3], got {tuple(points_cam.shape)}")
    params_t = torch.as_tensor(params, dtype=points_cam.dtype, device=points_cam.device)
    check_camera_model(model, params_t)
    valid = in_front_mask(points_cam, min_depth)
    z = _safe_depth(points_cam, valid)  # [...]
    u = points_cam[..., 0] / z
    v = points_cam[..., 1] / z
    du, dv = _distort(model, params_t, u, v)
    fx, fy, cx, cy = _focal_principal(model, params_t)
    return torch.stack([fx * (u + du) + cx, fy * (v + dv) + cy], dim=-1)


def world_to_camera_points(c2w: Tensor, points_world: Tensor) -> Tensor:
    """Camera-frame coordinates ``x_cam = Rᵀ (X - C)`` of world points.

    Args:
        c2w: camera-to-world poses ``[..., 3|4, 4]`` (``[R | C]``); the axes of the camera frame are
            those of the pose (OpenCV for :func:`project_camera_points`).
        points_world: ``[..., 3]`` world points, broadcastable against the poses' batch shape.

    Returns:
        ``[..., 3]`` points in the camera frame.
    """
    if c2w.dim() < 2 or c2w.shape[-1] != 4 or c2w.shape[-2] not in (3, 4):
        raise ValueError(f"c2w must have shape [..., 3, 4] or [..., 4, 4], got {tuple(c2w.shape)}")
    if points_world.dim() == 0 or points_world.shape[-1] != 3:
        raise ValueError(f"points_world must have shape [..., 3], got {tuple(points_world.shape)}")
    rot = c2w[..., :3, :3]  # [..., 3, 3]
    centre = c2w[..., :3, 3]  # [..., 3]
    offset = points_world.to(c2w.dtype) - centre  # [..., 3]
    # Rᵀ d as a sum over the rows of R: (Rᵀ d)_j = Σ_i R_ij d_i
    return (rot * offset.unsqueeze(-1)).sum(dim=-2)


class Projection(NamedTuple):
    """Result of :func:`reproject`: ``pixels [B, 2]``, ``depths [B]`` (camera z) and ``valid [B]``."""

    pixels: Tensor
    depths: Tensor
    valid: Tensor


def reproject(
    c2w_opencv: Tensor,
    points_world: Tensor,
    model: str,
    params: Tensor | Sequence[float],
    min_depth: float | None = None,
) -> Projection:
    """Project world points through camera-to-world OpenCV poses and one camera model.

    Args:
        c2w_opencv: ``[B, 3|4, 4]`` (or any batch shape) camera-to-world poses, OpenCV axes.
        points_world: ``[B, 3]`` world points.
        model, params: COLMAP camera model and parameters ``[B, P]`` or ``[P]``.
        min_depth: see :func:`in_front_mask`.

    Returns:
        :class:`Projection` with pixels (meaningless where not ``valid``), camera depths and the mask.
    """
    points_cam = world_to_camera_points(c2w_opencv, points_world)  # [B, 3]
    valid = in_front_mask(points_cam, min_depth)
    pixels = project_camera_points(points_cam, model, params, min_depth)
    return Projection(pixels=pixels, depths=points_cam[..., 2], valid=valid)


def reprojection_residuals(
    c2w_opencv: Tensor,
    points_world: Tensor,
    observed_px: Tensor,
    model: str,
    params: Tensor | Sequence[float],
    min_depth: float | None = None,
) -> Tensor:
    """Reprojection residuals ``projected - observed`` in pixels.

    Args:
        c2w_opencv: ``[B, 3|4, 4]`` camera-to-world poses (OpenCV axes), one per observation.
        points_world: ``[B, 3]`` world points.
        observed_px: ``[B, 2]`` observed keypoints (COLMAP pixel convention).
        model: COLMAP model name; params: ``[B, P]`` or ``[P]``.
        min_depth: see :func:`in_front_mask`.

    Returns:
        ``[B, 2]`` residuals; 0 (with zero gradient) for points behind the camera, which
        :func:`reproject` or :func:`in_front_mask` report so that callers can drop or count them.
    """
    if observed_px.dim() == 0 or observed_px.shape[-1] != 2:
        raise ValueError(f"observed_px must have shape [..., 2], got {tuple(observed_px.shape)}")
    projection = reproject(c2w_opencv, points_world, model, params, min_depth)
    residuals = projection.pixels - observed_px.to(projection.pixels.dtype)
    return torch.where(projection.valid.unsqueeze(-1), residuals, torch.zeros_like(residuals))


class CameraIntrinsics:
    """Per-camera COLMAP models and parameters, to project observations of several models at once.

    Cameras are grouped by model; each group's parameters are one tensor ``[C_m, P_m]``. Projection
    takes, for every observation, the index of its camera (the position in ``models``/``params``).

    Args:
        models: one COLMAP model name per camera (``C`` cameras).
        params: one parameter sequence (or ``[P]`` tensor) per camera, in COLMAP's order.
        dtype, device: of the stored parameters (default: float64 on the CPU).

    Raises:
        ValueError: unknown model, wrong number of parameters, or ``len(models) != len(params)``;
            the message names the camera index.
    """

    def __init__(
        self,
        models: Sequence[str],
        params: Sequence[Sequence[float] | Tensor],
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> None:
        if len(models) != len(params):
            raise ValueError(f"{len(models)} camera models for {len(params)} parameter vectors")
        self.models: tuple[str, ...] = tuple(models)
        grouped: dict[str, list[Tensor]] = {}
        members: dict[str, list[int]] = {}
        group_row = torch.empty(len(models), dtype=torch.long)
        for i, (model, values) in enumerate(zip(models, params)):
            values_t = torch.as_tensor(values, dtype=dtype, device=device).reshape(-1)
            try:
                check_camera_model(model, values_t, name=f"params[{i}]")
            except ValueError as error:
                raise ValueError(f"camera {i}: {error}") from None
            group_row[i] = len(grouped.setdefault(model, []))
            grouped[model].append(values_t)
            members.setdefault(model, []).append(i)
        #: ``{model: [C_m, P_m]}`` parameters of each model group.
        self.params: dict[str, Tensor] = {m: torch.stack(v) for m, v in grouped.items()}
        #: ``{model: [C_m]}`` camera indices of each group.
        self.cameras: dict[str, Tensor] = {
            m: torch.as_tensor(v, dtype=torch.long, device=device) for m, v in members.items()
        }
        group_names = list(self.params)
        self._group_of_camera = torch.as_tensor(
            [group_names.index(m) for m in self.models], dtype=torch.long, device=device
        )  # [C] group of each camera (index into self.params)
        self._group_row = group_row.to(device)  # [C] row of each camera inside its group

    @property
    def num_cameras(self) -> int:
        return len(self.models)

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> CameraIntrinsics:
        """A copy with the parameters in another dtype and/or on another device."""
        out = object.__new__(CameraIntrinsics)
        out.models = self.models
        out.params = {m: p.to(dtype=dtype or p.dtype, device=device or p.device) for m, p in self.params.items()}
        out.cameras = {m: c.to(device=device or c.device) for m, c in self.cameras.items()}
        out._group_of_camera = self._group_of_camera.to(device=device or self._group_of_camera.device)
        out._group_row = self._group_row.to(device=device or self._group_row.device)
        return out

    def project(self, points_cam: Tensor, camera_indices: Tensor, min_depth: float | None = None) -> Tensor:
        """Project camera-frame points ``[B, 3]`` (OpenCV axes), each with its camera's model.

        Args:
            points_cam: ``[B, 3]``.
            camera_indices: ``[B]`` integer index of each observation's camera.

        Returns:
            ``[B, 2]`` pixels (meaningless where :func:`in_front_mask` is False).
        """
        if points_cam.dim() != 2 or points_cam.shape[-1] != 3:
            raise ValueError(f"points_cam must have shape [B, 3], got {tuple(points_cam.shape)}")
        camera_indices = torch.as_tensor(camera_indices, dtype=torch.long, device=points_cam.device).reshape(-1)
        if camera_indices.shape[0] != points_cam.shape[0]:
            raise ValueError(f"{camera_indices.shape[0]} camera_indices for {points_cam.shape[0]} points")
        if camera_indices.numel() and (camera_indices.min() < 0 or camera_indices.max() >= self.num_cameras):
            bad = int(camera_indices[(camera_indices < 0) | (camera_indices >= self.num_cameras)][0])
            raise ValueError(f"camera_indices contains {bad}, outside [0, {self.num_cameras})")
        out = points_cam.new_zeros(points_cam.shape[0], 2)
        group_row = self._group_row.to(points_cam.device)[camera_indices]  # [B] row inside its group
        group = self._group_of_camera.to(points_cam.device)[camera_indices]  # [B] group of each observation
        for group_index, (model, params) in enumerate(self.params.items()):
            rows = torch.nonzero(group == group_index).squeeze(-1)  # [B_m] observations of this model
            if rows.numel() == 0:
                continue
            group_params = params.to(dtype=points_cam.dtype, device=points_cam.device)[group_row[rows]]  # [B_m, P]
            pixels = project_camera_points(points_cam[rows], model, group_params, min_depth)
            out = out.index_copy(0, rows, pixels)
        return out

    def residuals(
        self,
        c2w_opencv: Tensor,
        points_world: Tensor,
        observed_px: Tensor,
        camera_indices: Tensor,
        min_depth: float | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Reprojection residuals of observations of several cameras.

        Args:
            c2w_opencv: ``[B, 3|4, 4]`` camera-to-world OpenCV poses, one per observation.
            points_world: ``[B, 3]``; observed_px: ``[B, 2]``; camera_indices: ``[B]``.

        Returns:
            ``(residuals [B, 2], valid [B])``: ``projected - observed`` in pixels, 0 where not valid.
        """
        points_cam = world_to_camera_points(c2w_opencv, points_world)
        valid = in_front_mask(points_cam, min_depth)
        residuals = self.project(points_cam, camera_indices, min_depth) - observed_px.to(points_cam.dtype)
        residuals = torch.where(valid.unsqueeze(-1), residuals, torch.zeros_like(residuals))
        return residuals, valid


def robust_loss(squared_norms: Tensor, kind: RobustLossKind = "squared", scale_px: float | Tensor = 1.0) -> Tensor:
    """Ceres' robust loss ρ(s) of squared residual norms ``s = ‖r‖²`` (pixels²), elementwise.

    Args:
        squared_norms: ``[...]`` non-negative squared norms.
        kind: ``"squared"``, ``"huber"``, ``"cauchy"`` or ``"soft_l1"`` (see the module docstring).
        scale_px: the scale ``a`` in pixels (> 0); residuals well below it are not down-weighted.

    Returns:
        ``[...]`` ρ(s): the value Ceres adds to its cost is ``ρ(s) / 2``. Finite values and gradients
        for every ``s >= 0``, including ``s = 0`` (where ρ' = 1).

    Raises:
        ValueError: unknown ``kind`` or ``scale_px <= 0``.
    """
    if kind not in ROBUST_LOSSES:
        raise ValueError(f"kind must be one of {', '.join(ROBUST_LOSSES)}, got {kind!r}")
    s = squared_norms
    if kind == "squared":
        return s
    scale = torch.as_tensor(scale_px, dtype=s.dtype, device=s.device)
    if not bool((scale > 0).all()):
        raise ValueError(f"scale_px must be > 0, got {scale_px}")
    b = scale * scale
    if kind == "huber":
        outlier = s > b
        # sqrt only of values > b > 0, so no infinite derivative at s = 0 leaks through torch.where
        root = torch.sqrt(torch.where(outlier, s, b.expand_as(s)))
        return torch.where(outlier, 2.0 * scale * root - b, s)
    if kind == "cauchy":
        return b * torch.log1p(s / b)
    # soft_l1: 2b(√(1 + s/b) − 1) = 2s / (√(1 + s/b) + 1), without cancellation for small s
    return 2.0 * s / (torch.sqrt(1.0 + s / b) + 1.0)
