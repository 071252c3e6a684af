"""``posefix refine``: parse, call :func:`nerf_posefix.workflows.refine.refine`, print."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from nerf_posefix.workflows.refine import RefineOptions


@dataclass
class Refine(RefineOptions):
    """Refine the camera poses of a COLMAP model with a NeRF under the homography pose prior, and write
    a refined COLMAP model (same world frame, intrinsics and points), a nerfstudio transforms.json and a
    per-image report of how far each camera moved."""

    def run(self) -> None:
        try:
            from nerf_posefix.workflows.refine import partial_dir, refine

            result = refine(self)
        except KeyboardInterrupt:
            partial = partial_dir(self.output)
            print(
                f"\nposefix refine: interrupted; {partial} keeps the last checkpoint: run the same command "
                "with --resume to continue",
                file=sys.stderr,
            )
            raise SystemExit(130) from None
        print(result.summary_text())
