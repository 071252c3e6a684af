"""``posefix refine``: parse, call :func:`nerf_posefix.workflows.refine.refine`, print."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from nerf_posefix.workflows.refine import RefineOptions


@dataclass
class Refine(RefineOptions):
    """Refine camera poses (a COLMAP model, a transforms.json or a TUM trajectory, with their images): robust
    bundle adjustment of the input's tracks, or of tracks built from the images when it has none, then
    optionally a NeRF stage; writes the refined poses in the input's own format and world frame, a COLMAP
    model with the (new) points, and a per-image report of how far each camera moved."""

    def run(self) -> None:
        from nerf_posefix.workflows.refine import refine

        try:
            result = refine(self)  # a failure removes OUT.partial unless it keeps a valid cache, and says so
        except KeyboardInterrupt as err:
            from nerf_posefix.cli.main import ignore_further_interrupts, interrupt_exit_code

            ignore_further_interrupts()
            code = interrupt_exit_code(err)
            print(f"\n{interruption_message(self, 'terminated (SIGTERM)' if code == 143 else 'interrupted')}", file=sys.stderr)
            raise SystemExit(code) from None
        print(result.summary_text())


def _discard_without_checkpoint(options: RefineOptions) -> bool:
    """Remove the work directory of ``options`` when it is this command's (it holds the stamp file) and
    holds no training checkpoint (nothing to resume); returns whether it was removed."""
    from nerf_posefix.workflows.refine import STAMP_FILE, partial_dir
    from nerf_posefix.workflows.refine_inputs import interrupted_training

    from nerf_posefix.errors import InputError
    from nerf_posefix.io.atomic import lock_directory

    work = partial_dir(options.output)
    if (work / STAMP_FILE).is_file() and interrupted_training(work) is None and not _has_matches(work):
        try:
            lock = lock_directory(work, options.output)  # never another live run's directory
        except InputError:
            return False
        lock.remove_directory()
        return True
    return False


def _has_matches(work) -> bool:  # noqa: ANN001
    """Whether the work directory holds features and matches built from the images (minutes of work)."""
    from nerf_posefix.sfm.front_end import MATCHES_RECORD

    return (work / MATCHES_RECORD).is_file()


def interruption_message(options: RefineOptions, how: str = "interrupted") -> str:
    """What an interrupted ``posefix refine`` left, said truthfully: the checkpoint to resume from (and
    its iteration) if one was saved; otherwise that there is nothing to resume, after removing the work
    directory when it holds nothing of value (only the converted input), so the same command starts over."""
    from nerf_posefix.workflows.refine import partial_dir
    from nerf_posefix.workflows.refine_inputs import interrupted_training

    work = partial_dir(options.output)
    state = interrupted_training(work) if work.is_dir() else None
    if state is not None:
        return (
            f"posefix refine: {how}; {work} keeps the checkpoint of iteration {state['completed_iterations']}: "
            "run the same command with --resume to continue"
        )
    if work.is_dir() and _has_matches(work):
        return (
            f"posefix refine: {how}; {work} keeps the features and matches built from the images: run the same "
            "command with --resume to reuse them"
        )
    _discard_without_checkpoint(options)  # a work directory of this command holding only the converted input
    return f"posefix refine: {how} before the first checkpoint; nothing to resume (run the same command to start again)"
