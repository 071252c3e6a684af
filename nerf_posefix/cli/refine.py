"""``posefix refine``: parse, call :func:`nerf_posefix.workflows.refine.refine`, print."""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass

from nerf_posefix.workflows.refine import RefineOptions


@dataclass
class Refine(RefineOptions):
    """Refine the camera poses of a COLMAP model with a NeRF under the homography pose prior, and write
    a refined COLMAP model (same world frame, intrinsics and points), a nerfstudio transforms.json and a
    per-image report of how far each camera moved."""

    def run(self) -> None:
        from nerf_posefix.workflows.refine import partial_dir, refine

        work_existed = partial_dir(self.output).exists()
        try:
            result = refine(self)
        except KeyboardInterrupt:
            from nerf_posefix.cli.main import ignore_further_interrupts

            ignore_further_interrupts()
            print(f"\n{interruption_message(self)}", file=sys.stderr)
            raise SystemExit(130) from None
        except BaseException:
            if not work_existed:  # a failure (not an interruption) leaves no useless work directory behind
                _discard_without_checkpoint(self)
            raise
        print(result.summary_text())


def _discard_without_checkpoint(options: RefineOptions) -> bool:
    """Remove the work directory of ``options`` when it is this command's (it holds the stamp file) and
    holds no training checkpoint (nothing to resume); returns whether it was removed."""
    from nerf_posefix.workflows.refine import STAMP_FILE, partial_dir
    from nerf_posefix.workflows.refine_inputs import interrupted_training

    work = partial_dir(options.output)
    if (work / STAMP_FILE).is_file() and interrupted_training(work) is None:
        shutil.rmtree(work, ignore_errors=True)
        return True
    return False


def interruption_message(options: RefineOptions) -> str:
    """What an interrupted ``posefix refine`` left, said truthfully: the checkpoint to resume from (and
    its iteration) if one was saved; otherwise that there is nothing to resume, after removing the work
    directory when it holds nothing of value (only the converted input), so the same command starts over."""
    from nerf_posefix.workflows.refine import partial_dir
    from nerf_posefix.workflows.refine_inputs import interrupted_training

    work = partial_dir(options.output)
    state = interrupted_training(work) if work.is_dir() else None
    if state is not None:
        return (
            f"posefix refine: interrupted; {work} keeps the checkpoint of iteration {state['completed_iterations']}: "
            "run the same command with --resume to continue"
        )
    _discard_without_checkpoint(options)  # a work directory of this command holding only the converted input
    return "posefix refine: interrupted before the first checkpoint; nothing to resume (run the same command to start again)"
