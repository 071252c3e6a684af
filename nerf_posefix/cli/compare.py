"""``posefix compare``: parse, call :func:`nerf_posefix.workflows.compare.compare`, print and write."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tyro

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
    points, else a fraction of the scene radius (printed)."""

    def run(self) -> None:
        from rich.console import Console

        from nerf_posefix.workflows.compare import compare
        from nerf_posefix.workflows.reports import export_tum_files, summary_table, write_json, write_outputs

        console = Console(width=160)
        report = compare(self.reference, self.estimates, self.align, self.match, self.trim, self.bounds, log=console.print)
        console.print(summary_table(report))
        if self.export_tum is not None:
            export_tum_files(report, self.export_tum)
            flag = {"sim3": "-as", "se3": "-a"}.get(self.align, "")
            console.print(f"wrote TUM files to {self.export_tum} (cross-check: evo_ape tum <k>_reference.tum <k>_estimate.tum {flag})")
        if self.output is not None:
            write_outputs(report, self.output)
            console.print(f"wrote {self.output}/compare.json, per_camera.csv, summary.csv, error_cdf.png, top_view.png, frusta.ply")
        if self.json is not None:
            write_json(report.to_json(), self.json)
            console.print(f"wrote {self.json}")
