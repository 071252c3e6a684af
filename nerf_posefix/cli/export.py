"""``posefix export``: a run's refined training poses in the original input world frame."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class Export:
    """Write the refined training poses of a nerfstudio run (posefix or nerfacto family) as
    transforms.json in the input world frame (dataparser transform and scale undone) and, for COLMAP
    inputs, as a COLMAP model (sparse/0, .bin and .txt; intrinsics and points3D unchanged).
    Evaluation frames keep their input poses (each frame is marked with posefix_refined)."""

    load_config: Path
    """The run: its config.yml, or a directory holding one run (as for posefix compare)."""
    output: Path
    """Output directory (a new one; never the run, its dataset, or a directory holding them)."""
    overwrite: bool = False
    """Replace --output if it exists (only an earlier posefix export output)."""

    def run(self) -> None:
        from nerf_posefix.workflows.export import export_run

        written = export_run(self.load_config, self.output, overwrite=self.overwrite)
        for kind, path in written.items():
            binary_only = kind == "colmap" and not (path / "images.txt").is_file()
            note = " (COLMAP's binary format only: image names with spaces, which its text format cannot hold)" if binary_only else ""
            print(f"posefix export: {kind}: {path}{note}")
