"""``posefix compare``: pose-error metrics of estimated camera sets against a reference.

Camera sets are camera-to-world, OpenCV axes, each in its source's world frame
(:mod:`nerf_posefix.io.camera_set`); each estimate is aligned onto the reference before its errors are
measured (:func:`nerf_posefix.geometry.metrics.compare_poses`). Writing the report:
:mod:`nerf_posefix.workflows.reports`.

Matching (``match``): by image name, by position (``order``), or by **timestamp** for TUM trajectories
from different clocks and rates, as evo does (:func:`nerf_posefix.io.tum.associate_timestamps`: nearest
timestamp within ``t_max_diff`` seconds, ``t_offset`` added to the estimate's timestamps; the number of
associated pairs is reported). ``auto`` (the default) matches by timestamp when the reference and the
estimate are both TUM files named by their timestamps (not written by posefix with a names line), by name
otherwise. With timestamp matching, the ATE equals evo's APE (translation part, ``evo_ape tum REF EST -a``
for ``se3``, ``-as`` for ``sim3``) and the RPE evo's (``evo_rpe tum REF EST --delta 1 --delta_unit f``,
same alignment) on the same pairs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional

import numpy as np

from nerf_posefix.errors import InputError
from nerf_posefix.geometry.alignment import AlignMode
from nerf_posefix.geometry.poses import scene_radius
from nerf_posefix.io.camera_set import CameraMatch, CameraSet, match_camera_sets
from nerf_posefix.io.sources import source_inputs, source_kind
from nerf_posefix.io.tum import DEFAULT_MAX_DIFF, TumTrajectory, associate_timestamps, read_tum_trajectory
from nerf_posefix.workflows.pose_sources import load_pose_source

if TYPE_CHECKING:  # torch: imported when the metrics are computed
    from nerf_posefix.geometry.metrics import PoseComparison

MatchMode = Literal["auto", "name", "order", "timestamp"]

#: Default homography depth range when neither points nor --bounds are available, as fractions of
#: the scene radius (:func:`~nerf_posefix.geometry.poses.scene_radius` of the reference centres).
DEFAULT_BOUNDS_REL = (0.2, 2.0)


@dataclass
class EstimateResult:
    """One estimate's comparison."""

    label: str
    camera_set: CameraSet
    match: CameraMatch
    comparison: "PoseComparison"
    names: list[str]
    matched_by: str = "name"


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
                    "matched_by": res.matched_by,
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

    from nerf_posefix.geometry.homography import camera_depths, depth_bounds_from_points, global_depth_bounds

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
        has_front = np.array(
            [
                bool((camera_depths(c2w[i], per_camera[i], camera_convention="opencv") > 0).any()) if len(obs) else False
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


def check_sources(reference_path: Path, estimate_paths: Sequence[Path]) -> list[tuple[str, Path]]:
    """The cheap checks of every pose source, before any is loaded (no torch, no nerfstudio): each path
    exists and is recognised, each nerfstudio run has a readable config, its dataset and a checkpoint.

    Returns:
        ``(label, path)`` of every input read (sources, run directories, run datasets), for the output checks.

    Raises:
        InputError: naming the first bad source.
    """
    if not estimate_paths:
        raise InputError("give at least one estimated camera set after --reference REF")
    inputs: list[tuple[str, Path]] = []
    for label, path in [("--reference", reference_path), *(("estimate", p) for p in estimate_paths)]:
        inputs.extend((label, p) for p in source_inputs(path))
    return inputs


def _match_mode(match_by: str, ref: Optional[TumTrajectory], est: Optional[TumTrajectory], ref_path: Path, est_path: Path) -> str:
    if match_by == "auto":
        return "timestamp" if ref is not None and est is not None and not ref.named and not est.named else "name"
    if match_by == "timestamp":
        for traj, path in ((ref, ref_path), (est, est_path)):
            if traj is None:
                kind, _ = source_kind(path)
                what = {"colmap": "a COLMAP model", "transforms": "a transforms.json", "run": "a nerfstudio run"}[kind]
                raise InputError(f"--match timestamp: {path} is {what}, not a TUM trajectory (only TUM files have timestamps)")
    return match_by


def timestamp_match(
    ref: TumTrajectory, est: TumTrajectory, t_max_diff: float = DEFAULT_MAX_DIFF, t_offset: float = 0.0
) -> CameraMatch:
    """Pairs of ``ref`` and ``est`` poses by timestamp, as evo associates them (see the module docstring).

    Raises:
        InputError: no pair within ``t_max_diff`` (the message gives both time ranges).
    """
    ref_idx, est_idx = associate_timestamps(ref.timestamps, est.timestamps, t_max_diff, t_offset)
    if len(ref_idx) == 0:
        raise InputError(
            f"{est.cameras.source}: no pose within --t-max-diff {t_max_diff:g} s of a pose of {ref.cameras.source} "
            f"(estimate timestamps {est.timestamps.min():.6f}-{est.timestamps.max():.6f} s plus --t-offset {t_offset:g} s, "
            f"reference {ref.timestamps.min():.6f}-{ref.timestamps.max():.6f} s)"
        )
    used_ref, used_est = set(ref_idx.tolist()), set(est_idx.tolist())
    return CameraMatch(
        ref_idx,
        est_idx,
        [n for i, n in enumerate(ref.cameras.names) if i not in used_ref],
        [n for i, n in enumerate(est.cameras.names) if i not in used_est],
    )


def _load(path: Path) -> tuple[CameraSet, Optional[TumTrajectory]]:
    kind, found = source_kind(path)
    if kind == "tum":
        traj = read_tum_trajectory(found)
        return traj.cameras, traj
    return load_pose_source(path), None


def compare(
    reference_path: Path,
    estimate_paths: Sequence[Path],
    align: AlignMode = "sim3",
    match_by: MatchMode = "auto",
    trim: float = 0.0,
    bounds: tuple[float, float] | None = None,
    log: Callable[[str], None] = lambda message: None,
    t_max_diff: float = DEFAULT_MAX_DIFF,
    t_offset: float = 0.0,
) -> CompareReport:
    """Load the pose sources (:func:`~nerf_posefix.workflows.pose_sources.load_pose_source`), match each
    estimate with the reference (``match_by``, see the module docstring) and :func:`compare_camera_sets`
    them. Every source is checked (:func:`check_sources`) before any is loaded.

    Raises:
        InputError: on bad input, naming the file.
    """
    if match_by not in ("auto", "name", "order", "timestamp"):
        raise InputError(f"--match must be auto, name, order or timestamp, got {match_by!r}")
    _check_trim(trim)
    associate_timestamps(np.zeros(0), np.zeros(0), t_max_diff, t_offset)  # checks the two options
    check_sources(reference_path, estimate_paths)
    reference, ref_traj = _load(Path(reference_path))
    taken: set[str] = set()
    estimates: dict[str, CameraSet] = {}
    matches: dict[str, tuple[str, Optional[CameraMatch]]] = {}
    for k, path in enumerate(estimate_paths):
        label = _label(path, k, taken)
        est, est_traj = _load(Path(path))
        estimates[label] = est
        mode = _match_mode(match_by, ref_traj, est_traj, Path(reference_path), Path(path))
        if mode == "timestamp":
            assert ref_traj is not None and est_traj is not None
            match = timestamp_match(ref_traj, est_traj, t_max_diff, t_offset)
            log(
                f"{label}: {len(match)} pose pairs associated by timestamp (|dt| <= {t_max_diff:g} s, estimate "
                f"offset {t_offset:+g} s) of {len(reference)} reference and {len(est)} estimate poses"
            )
            matches[label] = ("timestamp", match)
        else:
            matches[label] = (mode, None)
    report = compare_camera_sets(reference, estimates, align, "name", trim, bounds, log, matches=matches)
    report.settings.update({"match": match_by, "t_max_diff": t_max_diff, "t_offset": t_offset})
    return report


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
    matches: Optional[dict[str, tuple[str, Optional[CameraMatch]]]] = None,
) -> CompareReport:
    """Match, align and measure each estimate against the reference (see :class:`CompareReport`).

    Args:
        reference: the reference cameras; estimates: ``{label: cameras}``.
        align: Umeyama alignment of each estimate onto the reference (camera centres).
        match_by: match cameras by image name or by position.
        matches: per estimate label, ``(how, match)``: a match made already (e.g. by timestamp) or None
            to match by ``how`` (``"name"`` / ``"order"``); default: ``match_by`` for every estimate.
        trim: robust alignment, fraction of cameras left out of the re-fits.
        bounds: homography depth range (reference units); None: from the reference's points.
        log: receives progress / warning lines (rich markup).

    Raises:
        InputError: bad input, naming the estimate.
    """
    _check_trim(trim)
    resolved: dict[str, tuple[str, CameraMatch]] = {}
    for label, est in estimates.items():  # every match first: no shared names is one line before torch loads
        how, match = (matches or {}).get(label, (match_by, None))
        if match is None:
            match = match_camera_sets(reference, est, by=how)  # type: ignore[arg-type]
        resolved[label] = (how, match)

    from nerf_posefix.geometry.metrics import compare_poses  # torch

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
        how, match = resolved[label]
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
        report.results.append(EstimateResult(label, est, match, comparison, names, how))
        if comparison.common_rotation_dominates:
            stats = comparison.stats
            log(
                f"[yellow]{label}: the rotation errors after the {align} alignment (median "
                f"{stats['rotation_deg'].median:.3g} deg) are mostly one rotation shared by every camera: the pairwise "
                f"rotation errors, which need no alignment, imply {stats['pairwise_rotation_deg'].median / math.sqrt(2):.3g} "
                "deg per camera. Either the camera centres fix the alignment's rotation poorly (a short or nearly "
                "straight path) or the estimate's orientations are turned as a whole against its centres; read the "
                "pairwise rotation rows[/yellow]"
            )
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

    add("matched by", [r.matched_by for r in results])
    add("cameras matched", [f"{len(r.match)}/{len(report.reference)}" for r in results])
    add("unmatched (ref / est)", [f"{len(r.match.unmatched_ref)} / {len(r.match.unmatched_est)}" for r in results])
    add("alignment scale", [r.comparison.alignment.scale for r in results])
    add("ATE RMSE", [r.comparison.ate_rmse for r in results])
    for key, title in (("rotation_deg", "rotation (deg)"), ("translation", "translation"), ("homography", "homography")):
        for stat in ("mean", "median", "max"):
            add(f"{title} {stat}", [getattr(r.comparison.stats[key], stat) for r in results])
    add("RPE translation RMSE", [r.comparison.stats["rpe_translation"].rmse for r in results])
    add("RPE rotation RMSE (deg)", [r.comparison.stats["rpe_rotation_deg"].rmse for r in results])
    for stat in ("median", "max"):  # no alignment: what to read when the centres fix it poorly
        add(f"pairwise rotation (deg) {stat}", [getattr(r.comparison.stats["pairwise_rotation_deg"], stat) for r in results])
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
