r"""Pose-parameter preconditioners: the homography metric in closed form, and CamP's sampled one.

Pure torch; no nerfstudio import.

Conventions
-----------
* The pose correction is nerfstudio's 6-vector ``δ = (τ, ω)`` (translation first, then an so(3)
  axis-angle ``ω``), applied to a camera-to-world pose ``[R | t]`` as
  ``c2w' = [exp(ω) R | t + τ]``: a world-frame rotation about the camera centre, and a shift of the
  centre in world units.
* Camera axes: ``"opengl"`` (nerfstudio; looks along -z) or ``"opencv"`` (COLMAP; looks along +z).

The homography metric
---------------------
By :func:`nerf_posefix.geometry.homography.correction_homography_error`, the homography error of a correction
is ``L(δ) = ‖I - exp(ω)‖² + 2β τᵀ(exp(ω) - I) d + γ‖τ‖²`` with ``d`` the camera's viewing
direction in world coordinates and ``β = mean(1/x)``, ``γ = mean(1/x²)`` over its depth range. To
second order in ``δ``: ``‖I - exp(ω)‖² = 8 sin²(|ω|/2) ≈ 2‖ω‖²`` and ``exp(ω) - I ≈ [ω]×``, so
``τᵀ(exp(ω) - I)d ≈ τᵀ(ω × d) = -τᵀ[d]× ω`` and

.. math::

    L(δ) ≈ δᵀ Q δ, \qquad
    Q = \begin{pmatrix} γ I & -β [d]_× \\ β [d]_× & 2 I \end{pmatrix}
    \quad (Q = \tfrac12 ∇²L(0)).

``Q`` is positive definite since ``2γ > β²`` (Jensen: ``mean(1/x²) > mean(1/x)²``). Its off-diagonal
block is the coupling of a sideways translation with a rotation that moves the image the same way.

The preconditioner
------------------
As in CamP (Park et al., SIGGRAPH Asia 2023), the optimiser works on ``φ`` with ``δ = P φ`` and
``P = (M + λ diag M)^{-1/2}`` for a metric ``M`` (here ``Q``, or CamP's sampled ``Σ``), computed by
``eigh``. With ``λ = 0``, ``P M P = I``: a unit step in any direction of ``φ`` moves the image by the
same amount.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nerf_posefix.geometry.homography import CameraConvention, inverse_depth_moments


def skew(v: Tensor) -> Tensor:
    """Cross-product matrices ``[v]×`` of ``v [..., 3]``: ``[..., 3, 3]``."""
    zero = torch.zeros_like(v[..., 0])
    x, y, z = v.unbind(-1)
    return torch.stack(
        [
            torch.stack([zero, -z, y], dim=-1),
            torch.stack([z, zero, -x], dim=-1),
            torch.stack([-y, x, zero], dim=-1),
        ],
        dim=-2,
    )


def view_directions(c2w: Tensor, camera_convention: CameraConvention = "opengl") -> Tensor:
    """Unit viewing directions in world coordinates, ``[..., 3]``, of camera-to-world poses ``[..., 3|4, 4]``."""
    if camera_convention == "opengl":
        return -c2w[..., :3, 2]
    if camera_convention == "opencv":
        return c2w[..., :3, 2]
    raise ValueError(f"camera_convention must be 'opengl' or 'opencv', got {camera_convention!r}")


def homography_metric(view_dirs: Tensor, xmin: Tensor | float, xmax: Tensor | float) -> Tensor:
    """The closed-form metric ``Q`` (see the module docstring): ``L(δ) ≈ δᵀ Q δ``.

    Args:
        view_dirs: ``[N, 3]`` unit viewing directions of the cameras in world coordinates.
        xmin, xmax: depth bounds (world units), floats or ``[N]``.

    Returns:
        ``[N, 6, 6]`` symmetric positive definite matrices, rows/columns ordered ``(τ, ω)``.
    """
    dtype, device = view_dirs.dtype, view_dirs.device
    xmin_t = torch.as_tensor(xmin, dtype=dtype, device=device).expand(view_dirs.shape[:-1])
    xmax_t = torch.as_tensor(xmax, dtype=dtype, device=device).expand(view_dirs.shape[:-1])
    beta, gamma = inverse_depth_moments(xmin_t, xmax_t)  # [N]
    eye = torch.eye(3, dtype=dtype, device=device)
    d_x = skew(view_dirs)  # [N, 3, 3]
    top = torch.cat([gamma[..., None, None] * eye, -beta[..., None, None] * d_x], dim=-1)  # [N, 3, 6]
    bottom = torch.cat([beta[..., None, None] * d_x, 2.0 * eye.expand_as(d_x)], dim=-1)  # [N, 3, 6]
    return torch.cat([top, bottom], dim=-2)


def sampled_metric(
    c2w: Tensor,
    xmin: Tensor | float,
    xmax: Tensor | float,
    intrinsics: Tensor,
    image_size: tuple[int, int] | Tensor,
    num_points: int = 5000,
    camera_convention: CameraConvention = "opengl",
    generator: torch.Generator | None = None,
) -> Tensor:
    """CamP's numerical metric ``Σ = mean JᵀJ`` over points sampled in each camera's frustum.

    Points are sampled with pixel positions uniform over the image and depths uniform in
    ``[xmin, xmax]``; ``J [2, 6]`` is the Jacobian of the point's normalised image coordinates
    ``((u - cx)/fx, (v - cy)/fy)`` with respect to the correction ``δ = (τ, ω)`` at ``δ = 0``.
    Normalised coordinates make ``Σ`` comparable with :func:`homography_metric`.

    Args:
        c2w: ``[N, 3|4, 4]`` camera-to-world poses.
        xmin, xmax: depth bounds, floats or ``[N]``.
        intrinsics: ``[N, 4]`` or ``[4]`` pinhole ``(fx, fy, cx, cy)`` in pixels (OpenCV image axes).
        image_size: ``(width, height)`` in pixels, or ``[N, 2]``.
        num_points: points per camera.
        camera_convention: axes of ``c2w``.
        generator: random generator for reproducible samples.

    Returns:
        ``[N, 6, 6]`` symmetric positive semi-definite matrices.
    """
    dtype, device = c2w.dtype, c2w.device
    n = c2w.shape[0]
    rot = c2w[:, :3, :3]
    if camera_convention == "opengl":  # OpenCV axes: flip y and z of the camera frame
        rot = rot * torch.tensor([1.0, -1.0, -1.0], dtype=dtype, device=device)
    elif camera_convention != "opencv":
        raise ValueError(f"camera_convention must be 'opengl' or 'opencv', got {camera_convention!r}")
    k = torch.as_tensor(intrinsics, dtype=dtype, device=device).expand(n, 4)
    size = torch.as_tensor(image_size, dtype=dtype, device=device).expand(n, 2)
    xmin_t = torch.as_tensor(xmin, dtype=dtype, device=device).expand(n)
    xmax_t = torch.as_tensor(xmax, dtype=dtype, device=device).expand(n)

    uniform = torch.rand((n, num_points, 3), dtype=dtype, device=device, generator=generator)
    pixels = uniform[..., :2] * size[:, None, :]  # [N, K, 2]
    depth = xmin_t[:, None] + uniform[..., 2] * (xmax_t - xmin_t)[:, None]  # [N, K]
    normalised = (pixels - k[:, None, 2:]) / k[:, None, :2]  # [N, K, 2]
    points_cam = depth[..., None] * torch.cat([normalised, torch.ones_like(depth[..., None])], dim=-1)  # [N, K, 3]

    # X' = Rᵀ exp(ω)ᵀ (W - t - τ): dX'/dτ = -Rᵀ, dX'/dω = Rᵀ [W - t]× = [X]× Rᵀ.
    rot_t = rot.transpose(-1, -2)[:, None]  # [N, 1, 3, 3]
    d_point = torch.cat([-rot_t.expand(n, num_points, 3, 3), skew(points_cam) @ rot_t], dim=-1)  # [N, K, 3, 6]
    x, y, z = points_cam.unbind(-1)
    inv_z = 1.0 / z
    zeros = torch.zeros_like(z)
    d_proj = torch.stack(
        [torch.stack([inv_z, zeros, -x * inv_z**2], dim=-1), torch.stack([zeros, inv_z, -y * inv_z**2], dim=-1)],
        dim=-2,
    )  # [N, K, 2, 3]
    jac = d_proj @ d_point  # [N, K, 2, 6]
    return torch.einsum("nkai,nkaj->nij", jac, jac) / num_points


def preconditioner(metric: Tensor, damping: float = 0.1) -> Tensor:
    """``P = (M + λ diag M)^{-1/2}`` by a symmetric eigendecomposition.

    Args:
        metric: ``[..., 6, 6]`` symmetric positive (semi-)definite matrices.
        damping: ``λ >= 0``; CamP's default 0.1 keeps ``P`` bounded where ``M`` is nearly singular.

    Returns:
        ``[..., 6, 6]`` symmetric positive definite matrices.

    Raises:
        ValueError: negative damping, or a damped metric that is not positive definite.
    """
    if damping < 0:
        raise ValueError(f"damping must be >= 0, got {damping}")
    damped = metric + damping * torch.diag_embed(torch.diagonal(metric, dim1=-2, dim2=-1))
    damped = 0.5 * (damped + damped.transpose(-1, -2))
    eigvals, eigvecs = torch.linalg.eigh(damped)
    if not bool((eigvals > 0).all()):
        raise ValueError(f"metric is not positive definite (smallest eigenvalue {eigvals.min().item():.3g})")
    return (eigvecs * eigvals.rsqrt()[..., None, :]) @ eigvecs.transpose(-1, -2)
