r"""The homography pose prior expressed in pixels: the mean squared image displacement of a pose change.

Pure torch; no nerfstudio import.

Definition
----------
The homography error of Boittiaux et al. (arXiv 2205.01937) averages ``‖I - H(x)‖²_F`` over planes
fronto-parallel to a reference camera at depths ``x`` in ``[xmin, xmax]``. Here the same planes are
used to measure an image displacement instead: for a reference camera with pinhole intrinsics
``K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` and an image of ``W x H`` pixels,

.. math::  D = E_{p, x} ‖p' - p‖²,

with ``p`` uniform in the image rectangle ``[0, W] x [0, H]`` (COLMAP's pixel convention, in which
the centre of the top-left pixel is (0.5, 0.5)), ``x`` uniform in ``[xmin, xmax]``, and ``p'`` the
projection, by the moved camera (same intrinsics), of the scene point seen at ``p`` on the plane at
depth ``x``. ``D`` is in pixels²; :func:`sampled_pixel_displacement` evaluates it by Monte Carlo with
the exact rigid motion.

Conventions
-----------
* Poses are **camera-to-world** ``[..., 3|4, 4]``; ``camera_convention`` says their camera axes:
  ``"opengl"`` (nerfstudio: x right, y up, looks along -z; default) or ``"opencv"`` (COLMAP: x right,
  y down, looks along +z). All the maths below is in OpenCV axes (``R_cv = R_gl F``,
  ``F = diag(1, -1, -1)``); ``D`` is a property of the physical cameras, the same in both.
* Depths ``xmin``/``xmax`` are along the reference optical axis, in world units (as translations).
* **Camera-frame motion** ``φ = (t, ω)`` (translation first, then rotation, as nerfstudio's
  ``[tx, ty, tz, wx, wy, wz]``): a point with coordinates ``X`` in the reference camera frame has
  coordinates ``X' = exp([ω]×) X + t ≈ X + ω × X + t`` in the moved camera frame (OpenCV axes). It is
  a perturbation of the world-to-camera map, so moving the camera by ``+δ`` gives ``t = -δ``.
* **nerfstudio's adjustment** ``(t_adj, ω_adj)`` renders the camera ``c2w' = [R_adj R | C + t_adj]``
  with ``R_adj = exp([ω_adj]×)``: a world-frame rotation about the camera centre and a world-frame
  shift of the centre (this is how ``CameraOptimizer.apply_to_raybundle`` moves ray origins and
  directions).

Derivation of the closed form
-----------------------------
1. Pixel ``p`` back-projects to ``m = K⁻¹ p̃ = (a, b, 1)``, ``a = (p_x - c_x)/f_x``,
   ``b = (p_y - c_y)/f_y``; the point on the plane at depth ``x`` is ``X = x m``.
2. First order in the motion: ``δX = x ω × m + t``; with ``π(X) = (X₁/X₃, X₂/X₃)`` and ``X₃ = x``,
   ``δπ = ((δX₁ - a δX₃)/x, (δX₂ - b δX₃)/x)``, i.e. (the classic interaction matrix)

   ``Δp_x = f_x [ (t_x - a t_z)/x - a b ω_x + (1 + a²) ω_y - b ω_z ]``
   ``Δp_y = f_y [ (t_y - b t_z)/x - (1 + b²) ω_x + a b ω_y + a ω_z ]``

   so ``Δp = diag(f_x, f_y) J(a, b, 1/x) φ + O(|φ|²)`` and ``D = φᵀ M φ + O(|φ|³)`` with
   ``M = E[Jᵀ diag(f_x², f_y²) J]``: a 6x6 symmetric PSD matrix (positive definite for a
   non-degenerate rectangle and depth range).
3. ``a``, ``b`` and ``x`` are independent (``a ~ U[-c_x/f_x, (W - c_x)/f_x]``,
   ``b ~ U[-c_y/f_y, (H - c_y)/f_y]``), and each entry of ``M`` is a sum of terms
   ``c · E[aⁱ] E[bʲ] E[x⁻ᵏ]`` with ``i, j ≤ 4``, ``k ≤ 2``:
   ``E[uⁿ] = Σ_{k=0}^{n} hiᵏ loⁿ⁻ᵏ / (n + 1)``
   for ``u ~ U[lo, hi]``, ``E[1/x] = ln(xmax/xmin)/(xmax - xmin)``, ``E[1/x²] = 1/(xmin·xmax)``.
4. nerfstudio's adjustment: with ``X_world = R X + C``,
   ``X' = R'ᵀ(X_world - C') = (Rᵀ R_adjᵀ R) X - Rᵀ R_adjᵀ t_adj``
   ``= exp(-[Rᵀ ω_adj]×) X - Rᵀ R_adjᵀ t_adj``,
   hence ``ω = -Rᵀ ω_adj`` (exactly) and ``t = -Rᵀ t_adj`` (to first order), ``R`` being the OpenCV
   camera-to-world rotation. :func:`pixel_prior` uses this linear map ``φ = G·adjustment``, so the
   prior is the quadratic form ``adjustmentᵀ Gᵀ M G adjustment``: 0 at zero adjustment, smooth.

Properties (checked in ``tests/test_pixel_prior.py``): changing the world frame by a rigid ``(S, u)``
maps ``R ↦ S R`` and the adjustment to ``(S t_adj, S ω_adj)``, leaving ``Rᵀ t_adj`` and
``Rᵀ ω_adj`` unchanged; scaling the world by ``s`` scales ``t`` by ``s``, ``E[1/x]`` by ``1/s`` and
``E[1/x²]`` by ``1/s²``, leaving ``D`` unchanged. For a rotation ``θ`` about the optical axis,
``Δp = θ (-(f_x/f_y)(p_y - c_y), (f_y/f_x)(p_x - c_x))`` and
``D = θ² [(f_x/f_y)² E(p_y - c_y)² + (f_y/f_x)² E(p_x - c_x)²]`` with
``E(p_x - c_x)² = (c_x³ + (W - c_x)³)/(3W)``; ``θ²(W² + H²)/12`` for ``f_x = f_y`` and a centred
principal point.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nerf_posefix.geometry.homography import (
    CameraConvention,
    check_depth_bounds,
    check_poses,
    inverse_depth_moments,
)
from nerf_posefix.geometry.poses import apply_pose_correction
from nerf_posefix.geometry.preconditioning import skew

# Jacobian rows of the normalised displacement (δu, δv) with respect to φ = (tx, ty, tz, wx, wy, wz):
# entry [row][column] is a list of monomials (coefficient, power of a, power of b, power of 1/x).
_J_U: tuple[tuple[tuple[float, int, int, int], ...], ...] = (
    ((1.0, 0, 0, 1),),  # tx / x
    (),  # ty
    ((-1.0, 1, 0, 1),),  # -a tz / x
    ((-1.0, 1, 1, 0),),  # -a b wx
    ((1.0, 0, 0, 0), (1.0, 2, 0, 0)),  # (1 + a²) wy
    ((-1.0, 0, 1, 0),),  # -b wz
)
_J_V: tuple[tuple[tuple[float, int, int, int], ...], ...] = (
    (),  # tx
    ((1.0, 0, 0, 1),),  # ty / x
    ((-1.0, 0, 1, 1),),  # -b tz / x
    ((-1.0, 0, 0, 0), (-1.0, 0, 2, 0)),  # -(1 + b²) wx
    ((1.0, 1, 1, 0),),  # a b wy
    ((1.0, 1, 0, 0),),  # a wz
)


def _as_tensor(value: float | Tensor, like: Tensor | None) -> Tensor:
    dtype = like.dtype if like is not None else torch.float64
    device = like.device if like is not None else None
    if isinstance(value, Tensor):
        return value.to(dtype=dtype, device=device)
    return torch.as_tensor(float(value), dtype=dtype, device=device)


def _check_positive(value: Tensor, name: str) -> None:
    bad = ~torch.isfinite(value) | (value <= 0)
    if bad.any():
        raise ValueError(f"{name} must be finite and > 0, got {value[bad].flatten()[0].item():g}")


def _uniform_moments(lo: Tensor, hi: Tensor, max_order: int) -> list[Tensor]:
    """``[E[u⁰], ..., E[u^max_order]]`` for ``u`` uniform in ``[lo, hi]`` (``Σ hiᵏ loⁿ⁻ᵏ / (n + 1)``,
    no division by ``hi - lo``)."""
    moments = [torch.ones_like(lo)]
    for n in range(1, max_order + 1):
        total = torch.zeros_like(lo)
        for k in range(n + 1):
            total = total + hi**k * lo ** (n - k)
        moments.append(total / (n + 1))
    return moments


def pixel_displacement_metric(
    fx: float | Tensor,
    fy: float | Tensor,
    cx: float | Tensor,
    cy: float | Tensor,
    width: float | Tensor,
    height: float | Tensor,
    xmin: float | Tensor,
    xmax: float | Tensor,
) -> Tensor:
    """The 6x6 matrix ``M`` with ``D = φᵀ M φ`` to second order in the camera-frame motion ``φ``.

    Args:
        fx, fy, cx, cy: pinhole intrinsics of the reference camera in pixels (COLMAP convention).
        width, height: image size ``W``, ``H`` in pixels (the pixels average over ``[0, W] x [0, H]``).
        xmin, xmax: depth range along the optical axis (world units), ``0 < xmin < xmax``.
        All arguments are floats or tensors broadcastable to a common batch shape ``[...]``.

    Returns:
        ``[..., 6, 6]`` symmetric positive definite, for ``φ = (t, ω)`` in the camera frame with OpenCV
        axes (see the module docstring): pixels² per unit² (translation block), per rad² (rotation
        block), per unit·rad (cross block). float64 unless a tensor argument sets the dtype.

    Raises:
        ValueError: non-positive or non-finite focal lengths / image size, or bad depth bounds.
    """
    like = next((v for v in (fx, fy, cx, cy, width, height, xmin, xmax) if isinstance(v, Tensor)), None)
    if like is not None and not like.is_floating_point():
        like = like.to(torch.float64)
    fx_t, fy_t, cx_t, cy_t, w_t, h_t, xmin_t, xmax_t = (
        _as_tensor(v, like) for v in (fx, fy, cx, cy, width, height, xmin, xmax)
    )
    for name, value in (("fx", fx_t), ("fy", fy_t), ("width", w_t), ("height", h_t)):
        _check_positive(value, name)
    check_depth_bounds(xmin_t, xmax_t)
    fx_t, fy_t, cx_t, cy_t, w_t, h_t, xmin_t, xmax_t = torch.broadcast_tensors(
        fx_t, fy_t, cx_t, cy_t, w_t, h_t, xmin_t, xmax_t
    )
    moments_a = _uniform_moments(-cx_t / fx_t, (w_t - cx_t) / fx_t, 4)  # E[a^i], i = 0..4
    moments_b = _uniform_moments(-cy_t / fy_t, (h_t - cy_t) / fy_t, 4)  # E[b^j]
    beta, gamma = inverse_depth_moments(xmin_t, xmax_t)
    moments_x = [torch.ones_like(beta), beta, gamma]  # E[x^-k], k = 0..2

    def expectation(row_r, row_s) -> Tensor:  # E[J_r J_s] for one image axis
        total = torch.zeros_like(beta)
        for c1, i1, j1, k1 in row_r:
            for c2, i2, j2, k2 in row_s:
                total = total + (c1 * c2) * moments_a[i1 + i2] * moments_b[j1 + j2] * moments_x[k1 + k2]
        return total

    fx2, fy2 = fx_t.square(), fy_t.square()
    entries: list[list[Tensor | None]] = [[None] * 6 for _ in range(6)]
    for r in range(6):
        for s in range(r, 6):
            value = fx2 * expectation(_J_U[r], _J_U[s]) + fy2 * expectation(_J_V[r], _J_V[s])
            entries[r][s] = value
            entries[s][r] = value
    return torch.stack([torch.stack(row, dim=-1) for row in entries], dim=-2)  # type: ignore[arg-type]


def opencv_rotation(c2w: Tensor, camera_convention: CameraConvention) -> Tensor:
    """The camera-to-world rotation ``[..., 3, 3]`` of ``c2w [..., 3|4, 4]`` with OpenCV camera axes
    (``R_gl F``, i.e. the y and z columns negated, for OpenGL poses)."""
    rot = c2w[..., :3, :3]
    if camera_convention == "opencv":
        return rot
    if camera_convention == "opengl":
        flip = torch.tensor([1.0, -1.0, -1.0], dtype=rot.dtype, device=rot.device)
        return rot * flip  # scales the columns
    raise ValueError(f"camera_convention must be 'opengl' or 'opencv', got {camera_convention!r}")


def camera_motion_from_adjustment(
    c2w_ref: Tensor, adjustment: Tensor, camera_convention: CameraConvention = "opengl"
) -> Tensor:
    """Camera-frame motion ``φ = (t, ω)`` (OpenCV axes) of nerfstudio's pose adjustment.

    Args:
        c2w_ref: ``[..., 3|4, 4]`` camera-to-world poses before the adjustment.
        adjustment: ``[..., 6]`` ``(t_adj, ω_adj)`` in the world frame: the adjusted pose is
            ``[exp([ω_adj]×) R | C + t_adj]``.
        camera_convention: axes of ``c2w_ref``.

    Returns:
        ``[..., 6]`` ``φ = (-Rᵀ t_adj, -Rᵀ ω_adj)`` with ``R`` the OpenCV camera-to-world rotation: the
        rotation part is exact, the translation part first order (exact is ``-Rᵀ exp(-[ω_adj]×) t_adj``).
    """
    if adjustment.dim() == 0 or adjustment.shape[-1] != 6:
        raise ValueError(f"adjustment must have shape [..., 6], got {tuple(adjustment.shape)}")
    rot = opencv_rotation(c2w_ref, camera_convention).to(adjustment.dtype)  # [..., 3, 3]
    trans_adj, omega_adj = adjustment[..., :3], adjustment[..., 3:]
    # -Rᵀ v: (Rᵀ v)_j = Σ_i R_ij v_i
    trans_cam = -(rot * trans_adj.unsqueeze(-1)).sum(dim=-2)
    omega_cam = -(rot * omega_adj.unsqueeze(-1)).sum(dim=-2)
    return torch.cat([trans_cam, omega_cam], dim=-1)


def pixel_prior(
    c2w_ref: Tensor,
    adjustment: Tensor,
    fx: float | Tensor,
    fy: float | Tensor,
    cx: float | Tensor,
    cy: float | Tensor,
    width: float | Tensor,
    height: float | Tensor,
    xmin: float | Tensor,
    xmax: float | Tensor,
    camera_convention: CameraConvention = "opengl",
) -> Tensor:
    """Mean squared pixel displacement (pixels²) that nerfstudio's pose adjustment causes, per camera.

    Args:
        c2w_ref: ``[N, 3|4, 4]`` camera-to-world poses before the adjustment.
        adjustment: ``[N, 6]`` nerfstudio adjustments ``(t_adj, ω_adj)`` (world frame, see
            :func:`camera_motion_from_adjustment`).
        fx, fy, cx, cy, width, height: pinhole intrinsics and image size in pixels, floats or ``[N]``.
        xmin, xmax: depth range (world units), floats or ``[N]``.
        camera_convention: ``"opengl"`` (nerfstudio, default) or ``"opencv"``.

    Returns:
        ``[N]``: ``φᵀ M φ``, the second-order closed form of ``D`` (module docstring). 0 at zero
        adjustment, differentiable with respect to the adjustment (and the intrinsics and bounds),
        independent of the world frame and of the camera-axes convention.

    Raises:
        ValueError: poses not finite or not rotations, bad adjustment shape, bad intrinsics or bounds.
    """
    check_poses(c2w_ref, "c2w_ref")
    phi = camera_motion_from_adjustment(c2w_ref, adjustment, camera_convention)  # [N, 6]
    metric = pixel_displacement_metric(
        *(v.to(phi) if isinstance(v, Tensor) else v for v in (fx, fy, cx, cy, width, height, xmin, xmax))
    ).to(phi)  # [N, 6, 6] or [6, 6]
    return torch.einsum("...i,...ij,...j->...", phi, metric, phi)


def apply_adjustment(c2w: Tensor, adjustment: Tensor) -> Tensor:
    """nerfstudio's adjusted pose, exactly: ``[exp([ω_adj]×) R | C + t_adj]``.

    Args:
        c2w: ``[..., 3|4, 4]`` camera-to-world poses (either camera convention: the rotation acts on
            the world side, so the camera axes are untouched).
        adjustment: ``[..., 6]`` ``(t_adj, ω_adj)``.

    Returns:
        ``[..., 4, 4]`` adjusted camera-to-world poses (exact matrix exponential, no clamping).
    """
    rot_adj = torch.linalg.matrix_exp(skew(adjustment[..., 3:].to(c2w.dtype)))  # [..., 3, 3]
    batch = torch.broadcast_shapes(c2w.shape[:-2], adjustment.shape[:-1])
    corrected = apply_pose_correction(c2w.expand(*batch, *c2w.shape[-2:]), rot_adj, adjustment[..., :3].to(c2w.dtype))
    bottom = torch.zeros(*batch, 1, 4, dtype=c2w.dtype, device=c2w.device)
    bottom[..., 0, 3] = 1.0
    return torch.cat([corrected, bottom], dim=-2)  # [..., 4, 4]


def sampled_pixel_displacement(
    c2w_ref: Tensor,
    c2w: Tensor,
    fx: float | Tensor,
    fy: float | Tensor,
    cx: float | Tensor,
    cy: float | Tensor,
    width: float | Tensor,
    height: float | Tensor,
    xmin: float | Tensor,
    xmax: float | Tensor,
    camera_convention: CameraConvention = "opengl",
    num_samples: int = 100_000,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Monte-Carlo estimate of ``D`` (the definition, with the exact rigid motion; no linearisation).

    Samples ``p`` uniform in ``[0, W] x [0, H]`` and ``x`` uniform in ``[xmin, xmax]``, back-projects
    ``p`` to depth ``x`` in the reference camera, maps the point to the world, into the other camera
    (``x_cam = R'ᵀ(X - C')``) and projects it with the same intrinsics.

    Args:
        c2w_ref: ``[N, 3|4, 4]`` reference camera-to-world poses.
        c2w: ``[N, 3|4, 4]`` moved camera-to-world poses (e.g. :func:`apply_adjustment`).
        fx, fy, cx, cy, width, height, xmin, xmax: as :func:`pixel_prior` (floats or ``[N]``).
        camera_convention: axes of both poses.
        num_samples: samples per camera.
        generator: torch generator for reproducible samples.

    Returns:
        ``(mean [N], standard_error [N])`` of ``‖p' - p‖²`` (pixels²).

    Raises:
        ValueError: a sampled point lies behind the moved camera (motion too large for ``D``).
    """
    dtype = c2w_ref.dtype
    n = c2w_ref.shape[0]
    params = [_as_tensor(v, c2w_ref).reshape(-1, 1).expand(n, 1) for v in (fx, fy, cx, cy, width, height, xmin, xmax)]
    fx_t, fy_t, cx_t, cy_t, w_t, h_t, xmin_t, xmax_t = params  # each [N, 1]
    uniform = torch.rand(3, n, num_samples, dtype=dtype, generator=generator).to(c2w_ref.device)
    px = uniform[0] * w_t  # [N, S]
    py = uniform[1] * h_t
    depth = xmin_t + uniform[2] * (xmax_t - xmin_t)
    ray_a = (px - cx_t) / fx_t  # [N, S], the back-projected point is depth · (a, b, 1)
    ray_b = (py - cy_t) / fy_t
    # Reference camera -> world -> moved camera, composed into one exact rigid map
    # X' = R'ᵀ(R_ref X + C_ref - C') = Q X + s (OpenCV axes), evaluated on X = depth · (a, b, 1).
    rot_ref = opencv_rotation(c2w_ref, camera_convention)  # [N, 3, 3]
    rot = opencv_rotation(c2w, camera_convention).to(dtype)
    q = rot.transpose(-1, -2) @ rot_ref  # [N, 3, 3]
    s = (rot.transpose(-1, -2) @ (c2w_ref[:, :3, 3] - c2w[:, :3, 3].to(dtype)).unsqueeze(-1)).squeeze(-1)  # [N, 3]
    moved = [
        depth * (q[:, i, 0:1] * ray_a + q[:, i, 1:2] * ray_b + q[:, i, 2:3]) + s[:, i : i + 1] for i in range(3)
    ]  # 3 x [N, S]
    if (moved[2] <= 0).any():
        raise ValueError("a sampled point lies behind the moved camera: the motion is too large for D")
    px_new = fx_t * moved[0] / moved[2] + cx_t
    py_new = fy_t * moved[1] / moved[2] + cy_t
    squared = (px_new - px).square() + (py_new - py).square()  # [N, S]
    mean = squared.mean(dim=-1)
    stderr = squared.std(dim=-1) / num_samples**0.5
    return mean, stderr
