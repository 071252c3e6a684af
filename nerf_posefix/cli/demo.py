"""``posefix demo``: parse, call :func:`nerf_posefix.workflows.demo.run_demo`."""

from __future__ import annotations

from dataclasses import dataclass

from nerf_posefix.workflows.demo import DemoOptions


@dataclass
class Demo(DemoOptions):
    """Perturb the bundled scene (3 deg / 5 % of the scene radius), refine the poses with posefix-small
    on the CPU, and print the pose errors before and after (a few minutes on 2 cores)."""

    def run(self) -> None:
        from nerf_posefix.workflows.demo import run_demo

        run_demo(self)
