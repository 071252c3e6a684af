r"""Pose-error metrics between matched camera sets (pure numpy, plus torch for the homography error).

All poses are camera-to-world ``[N, 4, 4]`` with **OpenCV camera axes**, row ``i`` of the estimate
matching row ``i`` of the reference. The estimate is first mapped into the reference frame by
:func:`nerf_posefix.geometry.alignment.align`, so distances are in reference units.

Per-camera errors
-----------------
* rotation (deg): geodesic angle between ``R_ref`` and the aligned ``R_est``
  (:func:`nerf_posefix.geometry.poses.rotation_angle_deg`); equals evo's APE ``rotation_angle_deg``.
* translation (reference units): distance between camera centres; equals evo's APE
  ``translation_part``. Its RMSE is the ATE.
* homography: :func:`nerf_posefix.geometry.homography.homography_error` (dimensionless, scale-aware) with the
  reference as ``c2w_ref`` and depth bounds ``[xmin, xmax]`` per camera or global, in reference units.

Relative pose error (RPE), as ``evo.core.metrics.RPE`` with ``delta = 1`` frame (consecutive pairs in
the matched order, i.e. the reference's order): for each pair ``(i, i+1)``,
``E = (Q_i⁻¹ Q_{i+1})⁻¹ (P_i⁻¹ P_{i+1})`` with ``Q`` the reference and ``P`` the aligned estimate;
the translation RPE is ``‖trans(E)‖`` and the rotation RPE the angle of ``rot(E)`` in degrees.

Pairwise rotation error (alignment-free): for pairs ``(i, j)``, the angle between the reference's and the
estimate's relative rotations ``W_iᵀ W_j`` (:func:`pairwise_rotation_errors`): all pairs up to
:data:`PAIRWISE_MAX_PAIRS`, a seeded sample beyond. No alignment enters it, so it is the rotation figure to read
when the centres fix the alignment's rotation poorly: a short or nearly straight path, where a Sim(3) fitted on
the centres may turn the whole estimate by more than its cameras' own errors (:func:`common_rotation_dominates`).

Recall and AUC
--------------
``recall(t)`` is the fraction of cameras with error ``<= t``. ``AUC@T`` integrates the empirical
(step) recall curve over ``[0, T]`` and divides by ``T`` (the "AUC@5°" convention of pose-estimation
benchmarks); for a step curve this integral is exact: ``AUC@T = mean_i max(0, 1 - e_i / T)``.
(SuperGlue's ``pose_auc`` instead interpolates the recall linearly between sorted errors, which gives
slightly larger values for few cameras.)

The translation thresholds default to fractions of the **scene radius**, the largest distance of a
reference centre from their centroid, ``max_i ‖c_i - mean(c)‖`` (:func:`~nerf_posefix.geometry.poses.scene_radius`,
the one scene extent of this package).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from nerf_posefix.geometry.alignment import Alignment, AlignMode, align
from nerf_posefix.geometry.homography import homography_error
from nerf_posefix.geometry.poses import rotation_angle_deg, scene_radius

DEFAULT_ROTATION_THRESHOLDS_DEG: tuple[float, ...] = (1.0, 2.0, 5.0)
#: Fractions of the scene radius (:func:`~nerf_posefix.geometry.poses.scene_radius`).
DEFAULT_TRANSLATION_THRESHOLDS_REL: tuple[float, ...] = (0.02, 0.04, 0.10)
#: :func:`pairwise_rotation_errors` in :func:`compare_poses`: every pair up to this many, else this many pairs drawn
#: at random (seeded: the same cameras give the same pairs). 5000 cameras have 12.5M pairs.
PAIRWISE_MAX_PAIRS = 200_000
#: :func:`common_rotation_dominates`: the median rotation error after the alignment exceeds this many times the
#: per-camera error the pairwise errors imply (their median over √2).
COMMON_ROTATION_FACTOR = 2.0


@dataclass
class ErrorStats:
    """Aggregates of a set of non-negative errors (NaN for an empty set)."""

    mean: float
    median: float
    rmse: float
    max: float
    count: int

    @classmethod
    def of(cls, errors: np.ndarray) -> "ErrorStats":
        errors = np.asarray(errors, dtype=np.float64).reshape(-1)
        if errors.size == 0:
            nan = float("nan")
            return cls(nan, nan, nan, nan, 0)
        return cls(
            mean=float(errors.mean()),
            median=float(np.median(errors)),
            rmse=float(np.sqrt(np.mean(np.square(errors)))),
            max=float(errors.max()),
            count=int(errors.size),
        )


def recall_at(errors: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """Fraction of ``errors [N]`` that are ``<= t`` for each threshold: ``[T]``."""
    errors = np.sort(np.asarray(errors, dtype=np.float64).reshape(-1))
    counts = np.searchsorted(errors, np.asarray(thresholds, dtype=np.float64), side="right")
    return counts / max(errors.size, 1)


def auc_at(errors: np.ndarray, max_threshold: float) -> float:
    """Area under the empirical recall curve on ``[0, max_threshold]``, divided by ``max_threshold``
    (in ``[0, 1]``; 1 when all errors are 0)."""
    if max_threshold <= 0:
        raise ValueError(f"max_threshold must be > 0, got {max_threshold}")
    errors = np.asarray(errors, dtype=np.float64).reshape(-1)
    if errors.size == 0:
        return float("nan")
    return float(np.mean(np.clip(1.0 - errors / max_threshold, 0.0, 1.0)))


def relative_pose_errors(ref_c2w: np.ndarray, est_c2w: np.ndarray, delta: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """evo's RPE for pairs ``(i, i + delta)`` (``delta`` frames, consecutive pairs as evo's
    ``filter_pairs_by_index``: ``i = 0, delta, 2·delta, ...``).

    Returns:
        ``(translation [K], rotation_deg [K])`` with ``K`` the number of pairs.
    """
    ids = np.arange(0, ref_c2w.shape[0], delta)
    i, j = ids[:-1], ids[1:]  # [K]

    def rel(c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rot_i_t = np.swapaxes(c2w[i, :3, :3], -1, -2)  # [K, 3, 3]
        rot = rot_i_t @ c2w[j, :3, :3]  # R_i^T R_j
        trans = np.einsum("kab,kb->ka", rot_i_t, c2w[j, :3, 3] - c2w[i, :3, 3])  # R_i^T (t_j - t_i)
        return rot, trans

    rot_q, trans_q = rel(ref_c2w)
    rot_p, trans_p = rel(est_c2w)
    # E = Q_rel^-1 P_rel: trans(E) = R_q^T (t_p - t_q), whose norm is ‖t_p - t_q‖.
    trans_err = np.linalg.norm(trans_p - trans_q, axis=-1)
    rot_err = rotation_angle_deg(rot_q, rot_p)
    return trans_err, rot_err


@dataclass
class PoseComparison:
    """Everything :func:`compare_poses` computes for one estimate.

    Per-camera arrays are ``[M]`` (matched order); RPE arrays are ``[M - 1]``; ``pairwise_rotation_deg`` is
    ``[K]``, ``K = min(M(M-1)/2, PAIRWISE_MAX_PAIRS)`` (:func:`pairwise_rotation_errors`).
    """

    alignment: Alignment
    aligned_c2w: np.ndarray
    rotation_deg: np.ndarray
    translation: np.ndarray
    homography: np.ndarray
    rpe_translation: np.ndarray
    rpe_rotation_deg: np.ndarray
    pairwise_rotation_deg: np.ndarray
    scene_radius: float
    rotation_thresholds_deg: tuple[float, ...]
    translation_thresholds: tuple[float, ...]
    stats: dict[str, ErrorStats] = field(default_factory=dict)
    recall: dict[str, list[float]] = field(default_factory=dict)
    auc: dict[str, float] = field(default_factory=dict)

    @property
    def common_rotation_dominates(self) -> bool:
        """:func:`common_rotation_dominates` of this comparison's errors."""
        return common_rotation_dominates(self.rotation_deg, self.pairwise_rotation_deg)

    @property
    def ate_rmse(self) -> float:
        """ATE: RMSE of the camera-centre distances after alignment (reference units)."""
        return self.stats["translation"].rmse

    def summary(self) -> dict[str, Any]:
        """Aggregates only (JSON-serialisable)."""
        return {
            "alignment": {
                "mode": self.alignment.mode,
                "scale": self.alignment.scale,
                "rotation": self.alignment.rotation.tolist(),
                "translation": self.alignment.translation.tolist(),
                "num_inliers": int(self.alignment.inliers.sum()) if self.alignment.inliers is not None else None,
            },
            "scene_radius": self.scene_radius,
            "ate_rmse": self.ate_rmse,
            "pairwise_pairs": int(self.pairwise_rotation_deg.shape[0]),
            "common_rotation_dominates": self.common_rotation_dominates,
            "stats": {k: asdict(v) for k, v in self.stats.items()},
            "rotation_thresholds_deg": list(self.rotation_thresholds_deg),
            "translation_thresholds": list(self.translation_thresholds),
            "recall": self.recall,
            "auc": self.auc,
        }


def compare_poses(
    ref_c2w: np.ndarray,
    est_c2w: np.ndarray,
    mode: AlignMode = "sim3",
    xmin: float | np.ndarray = 0.1,
    xmax: float | np.ndarray = 10.0,
    trim: float = 0.0,
    rotation_thresholds_deg: Sequence[float] = DEFAULT_ROTATION_THRESHOLDS_DEG,
    translation_thresholds: Sequence[float] | None = None,
) -> PoseComparison:
    """Align ``est_c2w`` to ``ref_c2w`` (``[M, 4, 4]`` each, matched rows, OpenCV axes) and compute
    all metrics.

    Args:
        mode, trim: passed to :func:`nerf_posefix.geometry.alignment.align`.
        xmin, xmax: homography depth bounds in reference units: floats or ``[M]`` arrays.
        rotation_thresholds_deg: recall thresholds (deg); the AUC runs up to the largest.
        translation_thresholds: recall thresholds in reference units; default
            ``DEFAULT_TRANSLATION_THRESHOLDS_REL × scene radius``. The AUC runs up to the largest.

    Raises:
        InputError: from the alignment (too few cameras, degenerate centres).
        ValueError: invalid homography bounds.
    """
    ref_c2w = np.asarray(ref_c2w, dtype=np.float64)
    est_c2w = np.asarray(est_c2w, dtype=np.float64)
    alignment = align(est_c2w, ref_c2w, mode=mode, trim=trim)
    aligned = alignment.apply(est_c2w)  # [M, 4, 4]

    rot_err = rotation_angle_deg(ref_c2w[:, :3, :3], aligned[:, :3, :3])  # [M]
    trans_err = np.linalg.norm(aligned[:, :3, 3] - ref_c2w[:, :3, 3], axis=-1)  # [M]
    hom = homography_error(
        torch.from_numpy(ref_c2w),
        torch.from_numpy(aligned),
        torch.as_tensor(np.asarray(xmin, dtype=np.float64)),
        torch.as_tensor(np.asarray(xmax, dtype=np.float64)),
        camera_convention="opencv",
    ).numpy()  # [M]
    rpe_t, rpe_r = relative_pose_errors(ref_c2w, aligned, delta=1)
    pairwise = pairwise_rotation_errors(ref_c2w, est_c2w, max_pairs=PAIRWISE_MAX_PAIRS)  # [K], no alignment

    size = scene_radius(ref_c2w[:, :3, 3])
    rot_thr = tuple(float(t) for t in rotation_thresholds_deg)
    if translation_thresholds is None:
        trans_thr = tuple(float(f * size) for f in DEFAULT_TRANSLATION_THRESHOLDS_REL)
    else:
        trans_thr = tuple(float(t) for t in translation_thresholds)

    result = PoseComparison(
        alignment=alignment,
        aligned_c2w=aligned,
        rotation_deg=rot_err,
        translation=trans_err,
        homography=hom,
        rpe_translation=rpe_t,
        rpe_rotation_deg=rpe_r,
        pairwise_rotation_deg=pairwise,
        scene_radius=size,
        rotation_thresholds_deg=rot_thr,
        translation_thresholds=trans_thr,
    )
    result.stats = {
        "rotation_deg": ErrorStats.of(rot_err),
        "translation": ErrorStats.of(trans_err),
        "homography": ErrorStats.of(hom),
        "rpe_translation": ErrorStats.of(rpe_t),
        "rpe_rotation_deg": ErrorStats.of(rpe_r),
        "pairwise_rotation_deg": ErrorStats.of(pairwise),
    }
    result.recall = {
        "rotation_deg": recall_at(rot_err, rot_thr).tolist(),
        "translation": recall_at(trans_err, trans_thr).tolist(),
    }
    result.auc = {"rotation_deg": auc_at(rot_err, max(rot_thr))}
    if max(trans_thr, default=0.0) > 0:
        result.auc["translation"] = auc_at(trans_err, max(trans_thr))
    return result


def pairwise_rotation_errors(ref_c2w: np.ndarray, est_c2w: np.ndarray, max_pairs: int | None = None,
                             seed: int = 0) -> np.ndarray:
    """Alignment-free relative-rotation errors (deg) over the pairs ``i < j``: ``[N·(N-1)/2]``, or ``[max_pairs]``.

    For each pair the relative rotation is ``R_i R_jᵀ`` of the **world-to-camera** rotations (COLMAP's
    convention), i.e. ``Wᵢᵀ W_j`` of the camera-to-world rotations ``W = c2w[:, :3, :3]`` given here
    (camera ``j`` to camera ``i``). It does not change when either set's world frame is rotated (or
    translated, or scaled), so no alignment is needed. The error is the angle between the reference's
    and the estimate's relative rotations (:func:`~nerf_posefix.geometry.poses.rotation_angle_deg`).
    Pairs come in ``numpy.triu_indices(N, 1)`` order (row-major over ``i``, then ``j > i``) when all are taken.

    Args:
        ref_c2w, est_c2w: matched camera-to-world poses ``[N, 3|4, 4]`` (row ``i`` is the same camera).
        max_pairs: when there are more pairs than this, ``max_pairs`` pairs ``i != j`` drawn uniformly at
            random (with replacement; ``seed``) instead: memory and time stay bounded for thousands of cameras,
            and the median and quantiles are those of all pairs to sampling precision. None: every pair.
    """
    ref_c2w = np.asarray(ref_c2w, dtype=np.float64)
    est_c2w = np.asarray(est_c2w, dtype=np.float64)
    if ref_c2w.shape[0] != est_c2w.shape[0]:
        raise ValueError(f"{est_c2w.shape[0]} estimated poses for {ref_c2w.shape[0]} reference poses")
    n = ref_c2w.shape[0]
    if max_pairs is None or n * (n - 1) // 2 <= max_pairs:
        i, j = np.triu_indices(n, k=1)  # [K] each
    else:
        rng = np.random.default_rng(seed)
        i = rng.integers(0, n, size=max_pairs)  # [K]
        j = (i + rng.integers(1, n, size=max_pairs)) % n  # [K], uniform over the other cameras

    def rel(c2w: np.ndarray) -> np.ndarray:
        rot = c2w[:, :3, :3]  # [N, 3, 3] camera-to-world
        return np.swapaxes(rot[i], -1, -2) @ rot[j]  # [K, 3, 3] = W_iᵀ W_j

    return rotation_angle_deg(rel(ref_c2w), rel(est_c2w))


def common_rotation_dominates(rotation_deg: np.ndarray, pairwise_rotation_deg: np.ndarray,
                              factor: float = COMMON_ROTATION_FACTOR) -> bool:
    """Whether the rotation errors after an alignment (``[M]``) are mostly one rotation common to every camera:
    their median exceeds ``factor`` times the per-camera error the alignment-free pairwise errors (``[K]``)
    imply, ``median(pairwise) / √2`` (two independent per-camera errors compose into a pair's).

    A common rotation is either the alignment's (the camera centres fix its rotation poorly: a short or nearly
    straight path; seen on 8-image windows of castle-P30: 1.0° after a Sim(3) on the centres, 0.1° between pairs)
    or the estimate's orientations turned as a whole against its own centres. The pairwise errors are the same
    in both cases; the figure after the alignment is then not the cameras' own error. A heuristic: False when
    either array is empty or the pairwise median is zero.
    """
    rotation_deg = np.asarray(rotation_deg, dtype=np.float64)
    pairwise_rotation_deg = np.asarray(pairwise_rotation_deg, dtype=np.float64)
    if rotation_deg.size == 0 or pairwise_rotation_deg.size == 0:
        return False
    per_camera = float(np.median(pairwise_rotation_deg)) / math.sqrt(2.0)
    return bool(per_camera > 0.0 and float(np.median(rotation_deg)) > factor * per_camera)
