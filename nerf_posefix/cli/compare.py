"""``posefix compare``: pose-error metrics of estimated camera sets against a reference.

Heavy imports (torch through the metrics, matplotlib, open3d, rich) stay inside functions so that
``posefix --help`` starts quickly.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import tyro

from nerf_posefix.errors import InputError

if TYPE_CHECKING:
    from nerf_posefix.camera_sets import CameraMatch, CameraSet
    from nerf_posefix.metrics import PoseComparison

#: Default homography depth range when neither points nor --bounds are available, as fractions of
#: the scene size (diameter of the reference camera centres).
DEFAULT_BOUNDS_REL = (0.1, 1.0)
#: Frustum depth in the PLY, as a fraction of the scene size.
FRUSTUM_DEPTH_REL = 0.05


@dataclass
class Compare:
    """Compare estimated camera sets with a reference: alignment, rotation/translation/homography
    errors, RPE, ATE, recall and AUC.

    Inputs are auto-detected: a COLMAP model directory (bin or txt, or a directory with sparse/0), a
    nerfstudio transforms.json (or its directory), a nerfstudio run directory / config.yml (refined
    poses), or a TUM trajectory file. Cameras are matched by image name (default) or by order.
    """

    estimates: tyro.conf.Positional[tuple[Path, ...]]
    """Estimated camera sets (one or more)."""
    reference: Path
    """Reference camera set (ground truth)."""
    align: Literal["none", "se3", "sim3"] = "sim3"
    """Alignment of each estimate to the reference (Umeyama on camera centres)."""
    match: Literal["name", "order"] = "name"
    """Match cameras by image name or by position."""
    trim: float = 0.0
    """Robust alignment: fraction of cameras with the largest residuals left out of the re-fits."""
    output: Path | None = None
    """Directory for compare.json, per_camera.csv, summary.csv, error_cdf.png, top_view.png, frusta.ply."""
    json: Path | None = None
    """Also write the JSON report to this file."""
    export_tum: Path | None = None
    """Directory for TUM files (matched cameras, unaligned) to cross-check with evo."""
    bounds: tuple[float, float] | None = None
    """Homography depth range XMIN XMAX (reference units); default: per camera from the reference's 3D
    points, else a fraction of the scene size (printed)."""

    def run(self) -> None:
        from rich.console import Console

        console = Console(width=160)
        report = run_compare(self, console)
        if self.output is not None:
            write_outputs(report, self.output)
            console.print(f"wrote {self.output}/compare.json, per_camera.csv, summary.csv, error_cdf.png, top_view.png, frusta.ply")
        if self.json is not None:
            _write_json(report.to_json(), self.json)
            console.print(f"wrote {self.json}")


@dataclass
class EstimateResult:
    """One estimate's comparison."""

    label: str
    camera_set: "CameraSet"
    match: "CameraMatch"
    comparison: "PoseComparison"
    names: list[str]


@dataclass
class CompareReport:
    """All results of a ``posefix compare`` run."""

    reference: "CameraSet"
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
    reference: "CameraSet", bounds: tuple[float, float] | None
) -> tuple[np.ndarray, np.ndarray, str]:
    """Per-reference-camera depth bounds ``(xmin [N], xmax [N], description)``.

    Priority: ``bounds`` given by the user; else per camera from the 3D points it observes (2.5/97.5 %
    depth quantiles, :func:`nerf_posefix.homography.depth_bounds_from_points`), with the pooled global
    bounds for cameras that see no point in front of them; else ``DEFAULT_BOUNDS_REL`` × scene size.
    """
    import torch

    from nerf_posefix.homography import depth_bounds_from_points, global_depth_bounds
    from nerf_posefix.metrics import scene_size

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
    size = scene_size(reference.c2w[:, :3, 3])
    if size <= 0:
        size = 1.0
    xmin, xmax = DEFAULT_BOUNDS_REL[0] * size, DEFAULT_BOUNDS_REL[1] * size
    desc = (
        f"default [{xmin:.4g}, {xmax:.4g}] = [{DEFAULT_BOUNDS_REL[0]:g}, {DEFAULT_BOUNDS_REL[1]:g}] x scene size "
        "(the reference has no 3D points; pass --bounds XMIN XMAX)"
    )
    return np.full(n, xmin), np.full(n, xmax), desc


def run_compare(cmd: Compare, console: Any) -> CompareReport:
    """Load, match, align and measure; print the table. Raises :class:`InputError` on bad input."""
    from nerf_posefix.camera_sets import load_camera_set, match_camera_sets
    from nerf_posefix.metrics import compare_poses

    if not cmd.estimates:
        raise InputError("give at least one estimated camera set after --reference REF")
    if not 0.0 <= cmd.trim < 1.0:
        raise InputError(f"--trim {cmd.trim}: must be in [0, 1)")
    reference = load_camera_set(cmd.reference)
    estimates = [load_camera_set(p) for p in cmd.estimates]
    xmin, xmax, bounds_source = homography_bounds(reference, cmd.bounds)
    console.print(f"reference: {reference.source} ({len(reference)} cameras)")
    console.print(f"homography bounds: {bounds_source}")

    report = CompareReport(
        reference=reference,
        settings={"align": cmd.align, "match": cmd.match, "trim": cmd.trim},
        xmin=xmin,
        xmax=xmax,
        bounds_source=bounds_source,
    )
    taken: set[str] = set()
    for k, (path, est) in enumerate(zip(cmd.estimates, estimates)):
        match = match_camera_sets(reference, est, by=cmd.match)
        ref_c2w = reference.c2w[match.ref_index]
        est_c2w = est.c2w[match.est_index]
        try:
            comparison = compare_poses(
                ref_c2w,
                est_c2w,
                mode=cmd.align,
                xmin=xmin[match.ref_index],
                xmax=xmax[match.ref_index],
                trim=cmd.trim,
            )
        except InputError as err:
            raise InputError(f"{path}: {err} ({len(match)} cameras matched with {cmd.reference})") from None
        except ValueError as err:  # invalid poses (non-rotations) reported by the homography error
            raise InputError(f"{path}: {err}") from None
        names = [reference.names[i] for i in match.ref_index]
        report.results.append(EstimateResult(_label(path, k, taken), est, match, comparison, names))
        if match.unmatched_ref or match.unmatched_est:
            console.print(
                f"[yellow]{path}: {len(match)} cameras matched; {len(match.unmatched_ref)} reference camera(s) "
                f"unmatched ({_preview(match.unmatched_ref)}), {len(match.unmatched_est)} estimate camera(s) "
                f"unmatched ({_preview(match.unmatched_est)})[/yellow]"
            )
    console.print(summary_table(report))
    if cmd.export_tum is not None:
        export_tum_files(report, cmd.export_tum)
        console.print(
            f"wrote TUM files to {cmd.export_tum} (cross-check: evo_ape tum <k>_reference.tum <k>_estimate.tum "
            f"{'-as' if cmd.align == 'sim3' else '-a' if cmd.align == 'se3' else ''})"
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
    size = first.scene_size
    for i, thr in enumerate(first.translation_thresholds):
        rel = f" ({100 * thr / size:.3g}% scene)" if size > 0 else ""
        add(f"recall trans <= {thr:.3g}{rel}", [r.comparison.recall["translation"][i] for r in results])
    add(f"AUC rot @{max(first.rotation_thresholds_deg):g} deg", [r.comparison.auc["rotation_deg"] for r in results])
    add(
        f"AUC trans @{max(first.translation_thresholds):.3g}",
        [r.comparison.auc.get("translation", float("nan")) for r in results],
    )
    return rows


def summary_table(report: CompareReport) -> Any:
    from rich.table import Table

    table = Table(title=f"posefix compare (align {report.settings['align']}, reference {report.reference.source})")
    table.add_column("metric")
    for res in report.results:
        table.add_column(res.label, justify="right")
    for title, values in summary_rows(report):
        table.add_row(title, *values)
    return table


def _json_safe(value: Any) -> Any:
    """Replace NaN/inf by None (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _write_json(data: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_json_safe(data), indent=1, allow_nan=False))


def _file_stem(label: str, index: int) -> str:
    return f"{index}_" + (re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_")[-60:] or "estimate")


def export_tum_files(report: CompareReport, directory: Path) -> None:
    """Per estimate ``k``: ``<k>_<label>_reference.tum`` and ``<k>_<label>_estimate.tum`` holding the
    matched cameras (unaligned, timestamps = match index 0..M-1, names in a comment line)."""
    from nerf_posefix.camera_sets import write_tum

    directory.mkdir(parents=True, exist_ok=True)
    for k, res in enumerate(report.results):
        stem = _file_stem(res.label, k)
        stamps = np.arange(len(res.match), dtype=np.float64)
        write_tum(report.reference.subset(res.match.ref_index), directory / f"{stem}_reference.tum", timestamps=stamps)
        write_tum(res.camera_set.subset(res.match.est_index), directory / f"{stem}_estimate.tum", timestamps=stamps)


def write_outputs(report: CompareReport, directory: Path) -> None:
    """compare.json, per_camera.csv, summary.csv, error_cdf.png, top_view.png and frusta.ply."""
    directory.mkdir(parents=True, exist_ok=True)
    _write_json(report.to_json(), directory / "compare.json")
    with open(directory / "per_camera.csv", "w", newline="") as fid:
        writer = csv.writer(fid)
        writer.writerow(["estimate", "name", "rotation_deg", "translation", "homography", "xmin", "xmax", "inlier"])
        for res in report.results:
            comp = res.comparison
            for i, name in enumerate(res.names):
                j = res.match.ref_index[i]
                writer.writerow(
                    [
                        res.label,
                        name,
                        repr(float(comp.rotation_deg[i])),
                        repr(float(comp.translation[i])),
                        repr(float(comp.homography[i])),
                        repr(float(report.xmin[j])),
                        repr(float(report.xmax[j])),
                        int(comp.alignment.inliers[i]),
                    ]
                )
    with open(directory / "summary.csv", "w", newline="") as fid:
        writer = csv.writer(fid)
        writer.writerow(["metric", *[r.label for r in report.results]])
        for title, values in summary_rows(report):
            writer.writerow([title, *values])
    _plot_cdfs(report, directory / "error_cdf.png")
    _plot_top_view(report, directory / "top_view.png")
    _write_frusta(report, directory / "frusta.ply")


def _colors(count: int) -> np.ndarray:
    """RGB in [0, 1]: reference grey, then matplotlib's tab10 per estimate; ``[count + 1, 3]``."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return np.array([[0.3, 0.3, 0.3]] + [cmap(i % 10)[:3] for i in range(count)])


def _plot_cdfs(report: CompareReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = _colors(len(report.results))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, key, title in zip(
        axes,
        ("rotation_deg", "translation", "homography"),
        ("rotation error (deg)", "translation error (reference units)", "homography error"),
    ):
        for k, res in enumerate(report.results):
            errors = np.sort(getattr(res.comparison, key))
            recall = np.arange(1, errors.size + 1) / errors.size
            ax.step(np.concatenate([[0.0], errors]), np.concatenate([[0.0], recall]), where="post", color=colors[k + 1], label=res.label)
        ax.set_xlabel(title)
        ax.set_ylabel("fraction of cameras")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"error CDFs after {report.settings['align']} alignment")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_top_view(report: CompareReport, path: Path) -> None:
    """Camera centres projected on the plane of the two main directions of the reference centres."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = report.reference.c2w[:, :3, 3]  # [N, 3]
    mean = ref.mean(axis=0)
    _, _, vt = np.linalg.svd(ref - mean, full_matrices=False)
    basis = vt[:2].T  # [3, 2]
    colors = _colors(len(report.results))
    fig, ax = plt.subplots(figsize=(7, 7))
    ref_2d = (ref - mean) @ basis
    ax.scatter(ref_2d[:, 0], ref_2d[:, 1], s=14, color=colors[0], label=f"reference ({report.reference.source})")
    for k, res in enumerate(report.results):
        est_2d = (res.comparison.aligned_c2w[:, :3, 3] - mean) @ basis
        ax.scatter(est_2d[:, 0], est_2d[:, 1], s=8, marker="x", color=colors[k + 1], label=res.label)
        matched_ref = ref_2d[res.match.ref_index]
        segments = np.stack([matched_ref, est_2d], axis=1)  # [M, 2, 2]
        from matplotlib.collections import LineCollection

        ax.add_collection(LineCollection(segments, colors=[colors[k + 1]], linewidths=0.5, alpha=0.6))
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel("main direction 1 (reference units)")
    ax.set_ylabel("main direction 2 (reference units)")
    ax.set_title(f"camera centres, top view (estimates after {report.settings['align']} alignment)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def frustum_lines(c2w: np.ndarray, depth: float, aspect: float = 4.0 / 3.0, half_fov_tan: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Wireframe frusta of OpenCV-axes cameras: ``(vertices [5N, 3], lines [8N, 2])``."""
    n = c2w.shape[0]
    w, h = half_fov_tan * aspect, half_fov_tan
    local = depth * np.array([[0, 0, 0], [-w, -h, 1], [w, -h, 1], [w, h, 1], [-w, h, 1]], dtype=np.float64)  # [5, 3]
    verts = np.einsum("nij,vj->nvi", c2w[:, :3, :3], local) + c2w[:, None, :3, 3]  # [N, 5, 3]
    edges = np.array([[0, 1], [0, 2], [0, 3], [0, 4], [1, 2], [2, 3], [3, 4], [4, 1]])  # [8, 2]
    lines = (edges[None] + 5 * np.arange(n)[:, None, None]).reshape(-1, 2)
    return verts.reshape(-1, 3), lines


def _write_frusta(report: CompareReport, path: Path) -> None:
    import open3d as o3d

    from nerf_posefix.metrics import scene_size

    depth = FRUSTUM_DEPTH_REL * max(scene_size(report.reference.c2w[:, :3, 3]), 1e-9)
    colors = _colors(len(report.results))
    sets = [report.reference.c2w] + [r.comparison.aligned_c2w for r in report.results]
    all_verts, all_lines, all_colors = [], [], []
    offset = 0
    for k, c2w in enumerate(sets):
        verts, lines = frustum_lines(c2w, depth)
        all_verts.append(verts)
        all_lines.append(lines + offset)
        all_colors.append(np.tile(colors[k], (lines.shape[0], 1)))
        offset += verts.shape[0]
    line_set = o3d.geometry.LineSet(
        points=o3d.utility.Vector3dVector(np.concatenate(all_verts)),
        lines=o3d.utility.Vector2iVector(np.concatenate(all_lines).astype(np.int32)),
    )
    line_set.colors = o3d.utility.Vector3dVector(np.concatenate(all_colors))
    if not o3d.io.write_line_set(str(path), line_set):
        raise OSError(f"{path}: open3d could not write the frusta PLY")
