r"""Alignment of an estimated camera set to a reference: none, SE(3) or Sim(3), optionally trimmed.

Pure numpy. Poses are camera-to-world ``[N, 4, 4]`` (any camera axes: only the camera centres enter
the fit, and the similarity acts on the world side).

The fit is Umeyama's least-squares similarity (IEEE PAMI 1991) between camera centres,
``min_{s, R, t} Σ_i ‖y_i - (s R x_i + t)‖²`` (``x``: estimated centres, ``y``: reference centres),
computed exactly as ``evo.core.geometry.umeyama_alignment`` (same covariance normalisation, same
reflection handling, same scale formula ``c = tr(D S) / σ_x²``), but with the covariance as one
matrix product instead of a Python loop. With ``mode="se3"`` the scale is fixed to 1.

Acting on poses: a similarity ``(s, R_s, t_s)`` maps a camera-to-world pose ``[R | t]`` to
``[R_s R | s R_s t + t_s]``: the camera centre moves as a point and the camera axes rotate with the
world; the camera's own scale is not changed (this is what evo does with ``correct_scale``: scale the
positions, then left-multiply by ``se3(R_s, t_s)``).

Robust variant (``trim > 0``): least trimmed squares (LTS) over the camera centres, deterministic
(no RANSAC sampling). With ``h = max(3, ceil((1 - trim) · N))``, it minimises the sum of the ``h``
smallest squared residuals ``‖y_i - (s R x_i + t)‖²`` by "concentration steps" (Rousseeuw & Van
Driessen's FAST-LTS): fit on a subset, keep the ``h`` cameras with the smallest residuals under that
fit, re-fit on them, and so on until the subset no longer changes or ``iterations`` steps were done;
each step cannot increase the trimmed objective. Two starting subsets are tried and the result with
the smaller trimmed objective is kept:

1. all cameras (the plain fit);
2. the ``h`` cameras whose *normalised distance to the centre* agrees best between the two sets:
   ``|d^est_i / median(d^est) - d^ref_i / median(d^ref)|`` with ``d_i`` the distance of centre ``i``
   to the coordinate-wise median centre of its set. This profile is invariant to the unknown
   similarity, so gross outliers stand out even when they ruin the plain fit (e.g. collapse its scale).

It tolerates up to a ``trim`` fraction of gross outliers. ``Alignment.inliers`` marks the ``h``
cameras of the final fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from nerf_posefix.errors import InputError

AlignMode = Literal["none", "se3", "sim3"]

#: Centres whose second singular value (of the centred point cloud) is below this fraction of the
#: first are considered collinear: the rotation about their line is not determined.
COLLINEAR_TOLERANCE = 1e-6
#: Centres spread less than this fraction of their distance to the origin (plus 1) are coincident.
COINCIDENT_TOLERANCE = 1e-12


@dataclass
class Alignment:
    """A similarity ``x -> scale · rotation @ x + translation`` from the estimate's world to the
    reference's world.

    Attributes:
        rotation: ``[3, 3]``.
        translation: ``[3]`` (reference units).
        scale: positive scalar (1 for ``"none"`` and ``"se3"``).
        mode: ``"none"``, ``"se3"`` or ``"sim3"``.
        inliers: ``[N]`` bool, the cameras used by the final fit (all, unless trimmed).
        iterations: concentration steps done by the kept start (0 without trimming).
    """

    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    translation: np.ndarray = field(default_factory=lambda: np.zeros(3))
    scale: float = 1.0
    mode: str = "none"
    inliers: np.ndarray | None = None
    iterations: int = 0

    @property
    def matrix(self) -> np.ndarray:
        """The similarity as a 4x4 matrix ``[[s R, t], [0, 1]]``."""
        out = np.eye(4)
        out[:3, :3] = self.scale * self.rotation
        out[:3, 3] = self.translation
        return out

    def inverse(self) -> "Alignment":
        """The similarity from the reference's world back to the estimate's: ``x -> (1/s) Rᵀ (x - t)``."""
        rot_t = self.rotation.T
        return Alignment(rotation=rot_t, translation=-(rot_t @ self.translation) / self.scale, scale=1.0 / self.scale, mode=self.mode)

    def apply_points(self, points: np.ndarray) -> np.ndarray:
        """Map points ``[..., 3]`` of the estimate's world into the reference's world."""
        return self.scale * np.asarray(points, dtype=np.float64) @ self.rotation.T + self.translation

    def apply(self, c2w: np.ndarray) -> np.ndarray:
        """Map camera-to-world poses ``[N, 3|4, 4]`` of the estimate into the reference's world:
        ``R' = R_s R``, ``t' = s R_s t + t_s``; returns ``[N, 4, 4]``."""
        c2w = np.asarray(c2w, dtype=np.float64)
        out = np.zeros((c2w.shape[0], 4, 4))
        out[:, :3, :3] = self.rotation @ c2w[:, :3, :3]  # [N, 3, 3]
        out[:, :3, 3] = self.apply_points(c2w[:, :3, 3])  # [N, 3]
        out[:, 3, 3] = 1.0
        return out


def umeyama(x: np.ndarray, y: np.ndarray, with_scale: bool) -> tuple[np.ndarray, np.ndarray, float]:
    """Least-squares ``(R [3, 3], t [3], c)`` with ``y ≈ c R x + t`` for points ``x, y [N, 3]``.

    Same maths and conventions as ``evo.core.geometry.umeyama_alignment`` (which takes ``[3, N]``).

    Raises:
        InputError: the cross-covariance has rank < 2 (alignment not determined).
    """
    n = x.shape[0]
    mean_x = x.mean(axis=0)  # [3]
    mean_y = y.mean(axis=0)
    xc = x - mean_x  # [N, 3]
    yc = y - mean_y
    sigma_x = float(np.square(xc).sum()) / n
    cov_xy = (yc.T @ xc) / n  # [3, 3], Σ_i (y_i - ȳ)(x_i - x̄)ᵀ / n
    u, d, vt = np.linalg.svd(cov_xy)
    if np.count_nonzero(d > np.finfo(d.dtype).eps) < 2 or d[1] <= COLLINEAR_TOLERANCE**2 * d[0]:
        raise InputError("degenerate cross-covariance of the camera centres: the alignment is not determined")
    s = np.eye(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0.0:
        s[2, 2] = -1.0
    rot = u @ s @ vt
    c = float(np.trace(np.diag(d) @ s)) / sigma_x if with_scale else 1.0
    t = mean_y - c * rot @ mean_x
    return rot, t, c


def check_centres(centres: np.ndarray, what: str) -> None:
    """Raise :class:`InputError` if the centres ``[N, 3]`` coincide or lie on one line."""
    mean = centres.mean(axis=0)
    sv = np.linalg.svd(centres - mean, compute_uv=False)  # [3]
    spread = sv[0] / math.sqrt(max(len(centres), 1))
    if spread <= COINCIDENT_TOLERANCE * (1.0 + float(np.linalg.norm(mean))):
        raise InputError(f"{what}: all camera centres coincide; cannot align")
    if sv[1] <= COLLINEAR_TOLERANCE * sv[0]:
        raise InputError(f"{what}: the camera centres are collinear; the rotation about their line is undetermined")


def align(
    est_c2w: np.ndarray,
    ref_c2w: np.ndarray,
    mode: AlignMode = "sim3",
    trim: float = 0.0,
    iterations: int = 10,
) -> Alignment:
    """Fit the similarity that maps the estimated camera centres onto the reference ones.

    Args:
        est_c2w, ref_c2w: matched camera-to-world poses ``[N, 3|4, 4]`` (row ``i`` is the same camera).
        mode: ``"none"`` (identity), ``"se3"`` (rotation + translation) or ``"sim3"`` (+ scale).
        trim: fraction in ``[0, 1)`` of cameras left out of the robust re-fits (see module docstring).
        iterations: most concentration steps per start (trimmed fit only).

    Returns:
        The :class:`Alignment`; ``alignment.apply(est_c2w)`` is the aligned estimate.

    Raises:
        InputError: fewer than 3 cameras for se3/sim3, coincident or collinear centres (in either set).
        ValueError: bad ``mode``/``trim`` or mismatched shapes.
    """
    est_c2w = np.asarray(est_c2w, dtype=np.float64)
    ref_c2w = np.asarray(ref_c2w, dtype=np.float64)
    if est_c2w.shape[0] != ref_c2w.shape[0]:
        raise ValueError(f"{est_c2w.shape[0]} estimated poses for {ref_c2w.shape[0]} reference poses")
    if not 0.0 <= trim < 1.0:
        raise ValueError(f"trim must be in [0, 1), got {trim}")
    n = est_c2w.shape[0]
    if mode == "none":
        return Alignment(mode="none", inliers=np.ones(n, dtype=bool))
    if mode not in ("se3", "sim3"):
        raise ValueError(f"mode must be 'none', 'se3' or 'sim3', got {mode!r}")
    if n < 3:
        raise InputError(f"{mode} alignment needs at least 3 matched cameras, got {n}")
    x = est_c2w[:, :3, 3]  # [N, 3]
    y = ref_c2w[:, :3, 3]
    check_centres(y, "reference")
    check_centres(x, "estimate")
    with_scale = mode == "sim3"
    if trim == 0.0:
        rot, t, c = umeyama(x, y, with_scale)
        return Alignment(rotation=rot, translation=t, scale=c, mode=mode, inliers=np.ones(n, dtype=bool))

    keep = max(3, math.ceil((1.0 - trim) * n))
    starts = [np.ones(n, dtype=bool), _profile_subset(x, y, keep)]
    best: tuple[float, Alignment] | None = None
    for start in starts:
        try:
            candidate = _concentrate(x, y, start, keep, with_scale, iterations, mode)
        except InputError:
            continue  # this start's subset is degenerate; the other may not be
        residual = np.linalg.norm(y - candidate.apply_points(x), axis=1)
        objective = float(np.square(np.partition(residual, keep - 1)[:keep]).sum())
        if best is None or objective < best[0]:
            best = (objective, candidate)
    if best is None:
        raise InputError(f"trimmed {mode} alignment: every subset of {keep} cameras tried is degenerate")
    return best[1]


def _profile_subset(x: np.ndarray, y: np.ndarray, keep: int) -> np.ndarray:
    """The ``keep`` cameras whose normalised distances to the median centre agree best ``[N]`` bool."""
    d_x = np.linalg.norm(x - np.median(x, axis=0), axis=1)  # [N]
    d_y = np.linalg.norm(y - np.median(y, axis=0), axis=1)
    mismatch = np.abs(d_x / max(np.median(d_x), 1e-300) - d_y / max(np.median(d_y), 1e-300))
    subset = np.zeros(x.shape[0], dtype=bool)
    subset[np.argpartition(mismatch, keep - 1)[:keep]] = True
    return subset


def _concentrate(
    x: np.ndarray, y: np.ndarray, start: np.ndarray, keep: int, with_scale: bool, iterations: int, mode: str
) -> Alignment:
    """LTS concentration steps from the subset ``start`` (see the module docstring)."""
    subset = start
    rot, t, c = umeyama(x[subset], y[subset], with_scale)
    steps = 0
    for steps in range(1, iterations + 1):
        residual = np.linalg.norm(y - (c * x @ rot.T + t), axis=1)  # [N]
        new_subset = np.zeros(x.shape[0], dtype=bool)
        new_subset[np.argpartition(residual, keep - 1)[:keep]] = True
        if np.array_equal(new_subset, subset):
            steps -= 1
            break
        subset = new_subset
        rot, t, c = umeyama(x[subset], y[subset], with_scale)
    return Alignment(rotation=rot, translation=t, scale=c, mode=mode, inliers=subset, iterations=steps)


def pose_alignment(est_c2w: np.ndarray, ref_c2w: np.ndarray) -> Alignment:
    """The similarity ``x -> s R x + t`` mapping the estimate's world onto the reference's, with ``R``
    from the orientations and ``s, t`` from the centres (``fix_gauge="sim3_poses"``).

    ``R`` is the rotation nearest ``M = Σ_i W_ref,i W_est,iᵀ`` (``W``: camera-to-world rotations),
    i.e. the minimiser of ``Σ_i ‖W_ref,i - R W_est,i‖²_F`` (SVD of ``M`` with the determinant fixed
    to +1). Given ``R``, ``s = Σ_i ⟨y_i - ȳ, R (x_i - x̄)⟩ / Σ_i ‖x_i - x̄‖²`` and ``t = ȳ - s R x̄``
    (least squares of ``y ≈ s R x + t`` over the centres ``x`` (estimate), ``y`` (reference)); with
    coincident estimated centres (e.g. one image) ``s = 1``.

    Args:
        est_c2w, ref_c2w: matched camera-to-world poses ``[N, 3|4, 4]`` (any camera axes, the same in both).

    Raises:
        InputError: no camera, or the scale comes out non-positive (the two sets disagree grossly).
    """
    est_c2w = np.asarray(est_c2w, dtype=np.float64)
    ref_c2w = np.asarray(ref_c2w, dtype=np.float64)
    n = est_c2w.shape[0]
    if n == 0 or ref_c2w.shape[0] != n:
        raise InputError(f"pose alignment needs matched, non-empty pose sets (got {n} and {ref_c2w.shape[0]})")
    m = np.einsum("nij,nkj->ik", ref_c2w[:, :3, :3], est_c2w[:, :3, :3])  # Σ W_ref W_estᵀ, [3, 3]
    u, _, vt = np.linalg.svd(m)
    rot = u @ np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))]) @ vt
    x, y = est_c2w[:, :3, 3], ref_c2w[:, :3, 3]  # [N, 3]
    xc, yc = x - x.mean(axis=0), y - y.mean(axis=0)
    denom = float(np.square(xc).sum())
    scale = 1.0
    if denom > 1e-24 * (1.0 + float(np.square(x).sum())):
        scale = float(np.sum(yc * (xc @ rot.T))) / denom
        if not scale > 0:
            raise InputError(f"pose alignment: the centres give a non-positive scale ({scale:.3g})")
    trans = y.mean(axis=0) - scale * rot @ x.mean(axis=0)
    return Alignment(rotation=rot, translation=trans, scale=scale, mode="sim3", inliers=np.ones(n, dtype=bool))
