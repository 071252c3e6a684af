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
    poses), or a TUM trajectory file. Cameras are matched by image name, by order, or (TUM files) by
    timestamp as evo does.
    """

    estimates: tyro.conf.Positional[tuple[Path, ...]]
    """Estimated camera sets (one or more)."""
    reference: Path
    """Reference camera set (ground truth)."""
    align: Literal["none", "se3", "sim3"] = "sim3"
    """Alignment of each estimate to the reference (Umeyama on camera centres)."""
    match: Literal["auto", "name", "order", "timestamp"] = "auto"
    """How cameras are paired: by image name, by position, or by timestamp (TUM trajectories from
    different clocks or rates: nearest timestamp within --t-max-diff, as evo). auto: by timestamp when the
    reference and the estimate are both TUM files named by their timestamps, else by name."""
    t_max_diff: float = 0.01
    """--match timestamp: largest time difference of a pair (seconds; evo's --t_max_diff)."""
    t_offset: float = 0.0
    """--match timestamp: added to the estimate's timestamps (seconds; evo's --t_offset)."""
    trim: float = 0.0
    """Robust alignment: fraction of cameras with the largest residuals left out of the re-fits."""
    output: Path | None = None
    """Directory for compare.json, per_camera.csv, summary.csv, error_cdf.png, top_view.png, frusta.ply
    (a new directory, or an earlier compare output with --overwrite)."""
    json: Path | None = None
    """Also write the JSON report to this file (a new file, or an earlier posefix compare report)."""
    export_tum: Path | None = None
    """Directory for TUM files (matched cameras, unaligned) to cross-check with evo."""
    bounds: tuple[float, float] | None = None
    """Homography depth range XMIN XMAX (reference units); default: per camera from the reference's 3D
    points, else a fraction of the scene radius (printed)."""
    overwrite: bool = False
    """Replace --output / --export-tum directories written by an earlier posefix compare."""

    def run(self) -> None:
        from rich.console import Console

        from nerf_posefix.workflows.compare import check_sources, compare
        from nerf_posefix.workflows.reports import check_report_outputs, summary_table, write_report_outputs

        console = Console(width=160)
        inputs = check_sources(self.reference, self.estimates)  # before anything is loaded or computed
        check_report_outputs(inputs, self.output, self.json, self.export_tum, self.overwrite)
        report = compare(
            self.reference, self.estimates, self.align, self.match, self.trim, self.bounds, log=console.print,
            t_max_diff=self.t_max_diff, t_offset=self.t_offset,
        )
        console.print(summary_table(report))
        for line in write_report_outputs(report, self.output, self.json, self.export_tum):
            console.print(line)

