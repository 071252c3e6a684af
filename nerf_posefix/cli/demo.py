"""``posefix demo``: parse, call :func:`nerf_posefix.workflows.demo.run_demo`."""

from __future__ import annotations

from dataclasses import dataclass

from nerf_posefix.workflows.demo import DemoOptions


@dataclass
class Demo(DemoOptions):
    """Perturb the bundled scene (3 deg / 5 % of the scene radius), refine the poses with posefix refine's
    default pipeline (tracks built from the images, robust bundle adjustment), print the pose errors before
    and after and write plots (under a minute on 2 CPU cores). --nerf adds NeRF refiners for contrast."""

    def run(self) -> None:
        from nerf_posefix.workflows.demo import run_demo

        run_demo(self)
