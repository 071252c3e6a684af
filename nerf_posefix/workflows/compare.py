"""``posefix compare``: pose-error metrics of estimated camera sets against a reference.

Camera sets are camera-to-world, OpenCV axes, each in its source's world frame
(:mod:`nerf_posefix.io.camera_set`); each estimate is aligned onto the reference before its errors are
measured (:func:`nerf_posefix.geometry.metrics.compare_poses`). Writing the report:
:mod:`nerf_posefix.workflows.reports`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from nerf_posefix.errors import InputError
from nerf_posefix.geometry.alignment import AlignMode
from nerf_posefix.geometry.metrics import PoseComparison, compare_poses
from nerf_posefix.geometry.poses import scene_radius
from nerf_posefix.io.camera_set import CameraMatch, CameraSet, match_camera_sets
from nerf_posefix.workflows.pose_sources import load_pose_source

#: Default homography depth range when neither points nor --bounds are available, as fractions of
#: the scene radius (:func:`~nerf_posefix.geometry.poses.scene_radius` of the reference centres).
DEFAULT_BOUNDS_REL = (0.2, 2.0)


@dataclass
class EstimateResult:
    """One estimate's comparison."""

    label: str
    camera_set: CameraSet
    match: CameraMatch
    comparison: PoseComparison
    names: list[str]


@dataclass
class CompareReport:
    """All results of a ``posefix compare`` run."""

    reference: CameraSet
    settings: dict[str, Any]
    results: list[EstimateResult] = field(default_factory=list)
    xmin: np.ndarray | None = None  # [N_ref] bounds per reference camera
    xmax: np.ndarray | None = None
    bounds_source: str = ""

    def to_json(self) -> dict[str, Any]:
        estimates = []
        for res in self.results:
            comp = res.comparison
            ref_idx = res.match.ref_index
            names = res.names
            estimates.append(
                {
                    "label": res.label,
                    "source": res.camera_set.source,
                    "num_cameras": len(res.camera_set),
                    "num_matched": len(res.match),
                    "unmatched_reference": res.match.unmatched_ref,
                    "unmatched_estimate": res.match.unmatched_est,
                    "summary": comp.summary(),
                    "per_camera": {
                        "name": names,
                        "rotation_deg": comp.rotation_deg.tolist(),
                        "translation": comp.translation.tolist(),
                        "homography": comp.homography.tolist(),
                        "xmin": self.xmin[ref_idx].tolist(),
                        "xmax": self.xmax[ref_idx].tolist(),
                        "aligned_center": comp.aligned_c2w[:, :3, 3].tolist(),
                        "inlier": comp.alignment.inliers.tolist(),
                    },
                    "rpe": {
                        "pairs": [[names[i], names[i + 1]] for i in range(len(names) - 1)],
                        "translation": comp.rpe_translation.tolist(),
                        "rotation_deg": comp.rpe_rotation_deg.tolist(),
                    },
                }
            )
        return {
            "reference": {"source": self.reference.source, "num_cameras": len(self.reference)},
            "settings": self.settings,
            "homography_bounds": {
                "source": self.bounds_source,
                "xmin_median": float(np.median(self.xmin)),
                "xmax_median": float(np.median(self.xmax)),
            },
            "estimates": estimates,
        }


def _label(path: Path, index: int, taken: set[str]) -> str:
    label = str(path).rstrip("/") or str(path)
    if label in taken:
        label = f"{label} #{index + 1}"
    taken.add(label)
    return label


def homography_bounds(
    reference: CameraSet, bounds: tuple[float, float] | None
) -> tuple[np.ndarray, np.ndarray, str]:
    """Per-reference-camera depth bounds ``(xmin [N], xmax [N], description)``.

    Priority: ``bounds`` given by the user; else per camera from the 3D points it observes (2.5/97.5 %
    depth quantiles, :func:`nerf_posefix.geometry.homography.depth_bounds_from_points`), with the pooled global
    bounds for cameras that see no point in front of them; else ``DEFAULT_BOUNDS_REL`` × scene radius.
    """
    import torch

    from nerf_posefix.geometry.homography import depth_bounds_from_points, global_depth_bounds

    n = len(reference)
    if bounds is not None:
        xmin, xmax = float(bounds[0]), float(bounds[1])
        if not (math.isfinite(xmin) and math.isfinite(xmax) and 0 < xmin < xmax):
            raise InputError(f"--bounds {xmin:g} {xmax:g}: need 0 < XMIN < XMAX")
        return np.full(n, xmin), np.full(n, xmax), f"--bounds [{xmin:g}, {xmax:g}]"
    if reference.points is not None and reference.observations is not None and len(reference.points):
        c2w = torch.from_numpy(reference.c2w)  # [N, 4, 4]
        points = torch.from_numpy(reference.points)  # [P, 3]
        per_camera = [points[torch.from_numpy(obs)] for obs in reference.observations]
        axes = reference.c2w[:, :3, 2]  # optical axis (OpenCV +z) in world, [N, 3]
        has_front = np.array(
            [
                bool(((reference.points[obs] - reference.c2w[i, :3, 3]) @ axes[i] > 0).any()) if len(obs) else False
                for i, obs in enumerate(reference.observations)
            ]
        )
        if has_front.any():
            idx = np.flatnonzero(has_front)
            sub = [per_camera[i] for i in idx]
            lo, hi = depth_bounds_from_points(c2w[idx], sub, camera_convention="opencv")
            g_lo, g_hi = global_depth_bounds(c2w[idx], sub, camera_convention="opencv")
            xmin, xmax = np.full(n, g_lo), np.full(n, g_hi)
            xmin[idx], xmax[idx] = lo.numpy(), hi.numpy()
            desc = f"per camera from the reference's 3D points ({len(idx)}/{n} cameras"
            desc += f"; the others use the global [{g_lo:.4g}, {g_hi:.4g}])" if len(idx) < n else ")"
            return xmin, xmax, desc
    size = scene_radius(reference.c2w[:, :3, 3])
    if size <= 0:
        size = 1.0
    xmin, xmax = DEFAULT_BOUNDS_REL[0] * size, DEFAULT_BOUNDS_REL[1] * size
    desc = (
        f"default [{xmin:.4g}, {xmax:.4g}] = [{DEFAULT_BOUNDS_REL[0]:g}, {DEFAULT_BOUNDS_REL[1]:g}] x scene radius "
        "(the reference has no 3D points; pass --bounds XMIN XMAX)"
    )
    return np.full(n, xmin), np.full(n, xmax), desc


def compare(
    reference_path: Path,
    estimate_paths: Sequence[Path],
    align: AlignMode = "sim3",
    match_by: Literal["name", "order"] = "name",
    trim: float = 0.0,
    bounds: tuple[float, float] | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> CompareReport:
    """Load the pose sources (:func:`~nerf_posefix.workflows.pose_sources.load_pose_source`) and
    :func:`compare_camera_sets` them. Raises :class:`InputError` on bad input, naming the file."""
    if not estimate_paths:
        raise InputError("give at least one estimated camera set after --reference REF")
    _check_trim(trim)
    reference = load_pose_source(reference_path)
    taken: set[str] = set()
    estimates = {_label(p, k, taken): load_pose_source(p) for k, p in enumerate(estimate_paths)}
    return compare_camera_sets(reference, estimates, align, match_by, trim, bounds, log)


def _check_trim(trim: float) -> None:
    if not 0.0 <= trim < 1.0:
        raise InputError(f"--trim {trim}: must be in [0, 1)")


def compare_camera_sets(
    reference: CameraSet,
    estimates: dict[str, CameraSet],
    align: AlignMode = "sim3",
    match_by: Literal["name", "order"] = "name",
    trim: float = 0.0,
    bounds: tuple[float, float] | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> CompareReport:
    """Match, align and measure each estimate against the reference (see :class:`CompareReport`).

    Args:
        reference: the reference cameras; estimates: ``{label: cameras}``.
        align: Umeyama alignment of each estimate onto the reference (camera centres).
        match_by: match cameras by image name or by position.
        trim: robust alignment, fraction of cameras left out of the re-fits.
        bounds: homography depth range (reference units); None: from the reference's points.
        log: receives progress / warning lines (rich markup).

    Raises:
        InputError: bad input, naming the estimate.
    """
    _check_trim(trim)
    xmin, xmax, bounds_source = homography_bounds(reference, bounds)
    log(f"reference: {reference.source} ({len(reference)} cameras)")
    log(f"homography bounds: {bounds_source}")
    report = CompareReport(
        reference=reference,
        settings={"align": align, "match": match_by, "trim": trim},
        xmin=xmin,
        xmax=xmax,
        bounds_source=bounds_source,
    )
    for label, est in estimates.items():
        match = match_camera_sets(reference, est, by=match_by)
        try:
            comparison = compare_poses(
                reference.c2w[match.ref_index],
                est.c2w[match.est_index],
                mode=align,
                xmin=xmin[match.ref_index],
                xmax=xmax[match.ref_index],
                trim=trim,
            )
        except InputError as err:
            raise InputError(f"{label}: {err} ({len(match)} cameras matched with {reference.source})") from None
        except ValueError as err:  # invalid poses (non-rotations) reported by the homography error
            raise InputError(f"{label}: {err}") from None
        names = [reference.names[i] for i in match.ref_index]
        report.results.append(EstimateResult(label, est, match, comparison, names))
        if match.unmatched_ref or match.unmatched_est:
            log(
                f"[yellow]{label}: {len(match)} cameras matched; {len(match.unmatched_ref)} reference camera(s) "
                f"unmatched ({_preview(match.unmatched_ref)}), {len(match.unmatched_est)} estimate camera(s) "
                f"unmatched ({_preview(match.unmatched_est)})[/yellow]"
            )
    return report


def _preview(names: list[str], limit: int = 3) -> str:
    if not names:
        return "none"
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


def _fmt(value: float, digits: int = 4) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}g}"


def summary_rows(report: CompareReport) -> list[tuple[str, list[str]]]:
    """``(row title, one formatted value per estimate)`` for the table and summary.csv."""
    results = report.results
    rows: list[tuple[str, list[str]]] = []

    def add(title: str, values: list[Any]) -> None:
        rows.append((title, [v if isinstance(v, str) else _fmt(v) for v in values]))

    add("cameras matched", [f"{len(r.match)}/{len(report.reference)}" for r in results])
    add("unmatched (ref / est)", [f"{len(r.match.unmatched_ref)} / {len(r.match.unmatched_est)}" for r in results])
    add("alignment scale", [r.comparison.alignment.scale for r in results])
    add("ATE RMSE", [r.comparison.ate_rmse for r in results])
    for key, title in (("rotation_deg", "rotation (deg)"), ("translation", "translation"), ("homography", "homography")):
        for stat in ("mean", "median", "max"):
            add(f"{title} {stat}", [getattr(r.comparison.stats[key], stat) for r in results])
    add("RPE translation RMSE", [r.comparison.stats["rpe_translation"].rmse for r in results])
    add("RPE rotation RMSE (deg)", [r.comparison.stats["rpe_rotation_deg"].rmse for r in results])
    first = results[0].comparison
    for i, thr in enumerate(first.rotation_thresholds_deg):
        add(f"recall rot <= {thr:g} deg", [r.comparison.recall["rotation_deg"][i] for r in results])
    size = first.scene_radius
    for i, thr in enumerate(first.translation_thresholds):
        rel = f" ({100 * thr / size:.3g}% of radius)" if size > 0 else ""
        add(f"recall trans <= {thr:.3g}{rel}", [r.comparison.recall["translation"][i] for r in results])
    add(f"AUC rot @{max(first.rotation_thresholds_deg):g} deg", [r.comparison.auc["rotation_deg"] for r in results])
    add(
        f"AUC trans @{max(first.translation_thresholds):.3g}",
        [r.comparison.auc.get("translation", float("nan")) for r in results],
    )
    return rows
