"""Writing a ``posefix compare`` report: JSON, CSV, the rich table, error CDF and top-view plots, frusta PLY, TUM files.

Camera sets in the report are camera-to-world, OpenCV axes; the PLY and plots use the reference's world
frame (aligned estimates). TUM files are written unaligned, camera-to-world, as evo reads them.

The command's outputs (``--output`` and ``--export-tum`` directories, the ``--json`` file) are checked
against every input and against each other before anything is loaded (:func:`check_report_outputs`)
and written atomically (:func:`write_report_outputs`): a directory is replaced only with ``--overwrite``
and only when posefix wrote it; the ``--json`` file only when it is an earlier ``posefix compare``
report.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from nerf_posefix.errors import InputError
from nerf_posefix.geometry.poses import scene_radius
from nerf_posefix.io.atomic import atomic_directory, atomic_file, check_output_dir, check_output_file, overlaps
from nerf_posefix.workflows.compare import CompareReport, summary_rows

#: Frustum depth in the PLY, as a fraction of the scene extent.
FRUSTUM_DEPTH_REL = 0.1


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


def write_json(data: dict[str, Any], path: Path) -> None:
    """Write ``data`` (NaN/inf as null) to ``path``, atomically (a failure leaves ``path`` as it was)."""
    text = json.dumps(_json_safe(data), indent=1, allow_nan=False)
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def is_compare_report(path: Path) -> bool:
    """Whether ``path`` holds a ``posefix compare`` JSON report (which ``--json`` may replace)."""
    try:
        if path.stat().st_size > 1 << 28:
            return False
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"reference", "settings", "estimates"} <= set(data)


def check_report_outputs(
    inputs: list[tuple[str, Path]],
    output: Path | None = None,
    json_path: Path | None = None,
    export_tum: Path | None = None,
    overwrite: bool = False,
) -> None:
    """Check every output of ``posefix compare`` before anything is loaded or computed: none is, holds or
    lies inside an input (``inputs``: ``(label, path)``, from
    :func:`~nerf_posefix.workflows.compare.check_sources`) or another output; the directories are new
    (or posefix outputs replaced with ``overwrite``); ``json_path`` is not a directory and is new or an
    earlier report; every parent can be written.

    Raises:
        InputError: naming the option, the path and the reason.
    """
    dirs = [(opt, p) for opt, p in (("--output", output), ("--export-tum", export_tum)) if p is not None]
    for opt, path in dirs:
        check_output_dir(path, inputs, overwrite, option=opt, command="compare")
    if json_path is not None:
        check_output_file(json_path, inputs, option="--json", replaceable=is_compare_report)
    outs = dirs + ([("--json", json_path)] if json_path is not None else [])
    for i, (opt_a, a) in enumerate(outs):
        for opt_b, b in outs[i + 1 :]:
            if overlaps(a, b):
                raise InputError(f"{opt_b} {b}: is, holds or lies inside {opt_a} {a}; give separate paths")


def write_report_outputs(
    report: CompareReport, output: Path | None = None, json_path: Path | None = None, export_tum: Path | None = None
) -> list[str]:
    """Write the outputs checked by :func:`check_report_outputs` (directories assembled aside and renamed
    into place); returns one line per output written.

    Raises:
        InputError: a write failed (named; nothing of that output is left behind).
    """
    done = []
    if export_tum is not None:
        with atomic_directory(export_tum, command="compare") as tmp:
            export_tum_files(report, tmp)
        flag = {"sim3": "-as", "se3": "-a"}.get(report.settings["align"], "")
        done.append(f"wrote TUM files to {export_tum} (cross-check: evo_ape tum <k>_reference.tum <k>_estimate.tum {flag})")
    if output is not None:
        with atomic_directory(output, command="compare") as tmp:
            write_outputs(report, tmp)
        done.append(f"wrote {output}/compare.json, per_camera.csv, summary.csv, error_cdf.png, top_view.png, frusta.ply")
    if json_path is not None:
        write_json(report.to_json(), json_path)
        done.append(f"wrote {json_path}")
    return done


def _file_stem(label: str, index: int) -> str:
    return f"{index}_" + (re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_")[-60:] or "estimate")


def export_tum_files(report: CompareReport, directory: Path) -> None:
    """Per estimate ``k``: ``<k>_<label>_reference.tum`` and ``<k>_<label>_estimate.tum`` holding the
    matched cameras (unaligned, timestamps = match index 0..M-1, names in a comment line)."""
    from nerf_posefix.io.tum import write_tum

    directory.mkdir(parents=True, exist_ok=True)
    for k, res in enumerate(report.results):
        stem = _file_stem(res.label, k)
        stamps = np.arange(len(res.match), dtype=np.float64)
        write_tum(report.reference.subset(res.match.ref_index), directory / f"{stem}_reference.tum", timestamps=stamps)
        write_tum(res.camera_set.subset(res.match.est_index), directory / f"{stem}_estimate.tum", timestamps=stamps)


def write_outputs(report: CompareReport, directory: Path) -> None:
    """compare.json, per_camera.csv, summary.csv, error_cdf.png, top_view.png and frusta.ply."""
    directory.mkdir(parents=True, exist_ok=True)
    write_json(report.to_json(), directory / "compare.json")
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


    depth = FRUSTUM_DEPTH_REL * max(scene_radius(report.reference.c2w[:, :3, 3]), 1e-9)
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
