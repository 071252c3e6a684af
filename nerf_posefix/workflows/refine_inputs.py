"""The training dataset ``posefix refine`` makes from its checked input, and resuming a refine run.

Conventions: the training dataset is nerfstudio's ``colmap_to_json`` conversion of the stage's model
(camera-to-world, OpenGL axes, ``applied_transform`` recorded), exactly as ``ns-process-data`` makes it.
Converted images (see :mod:`nerf_posefix.sfm.inputs`) are written as PNG copies in the work directory
(the inputs are never changed).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import numpy as np

from nerf_posefix.errors import InputError
from nerf_posefix.io.colmap import read_colmap_model, write_colmap_model
from nerf_posefix.io.colmap_transforms import write_nerfstudio_transforms
from nerf_posefix.sfm.inputs import ValidatedInput, training_image

# ---------------------------------------------------------------------------------------------
# work directory


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.symlink(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def colmap_to_transforms(recon_dir: Path, output_dir: Path, has_points: bool = True) -> Path:
    """nerfstudio's ``colmap_to_json`` (as ``ns-process-data``) of the model in ``recon_dir``:
    ``output_dir/transforms.json`` and, when the model has points, ``sparse_pc.ply``
    (:func:`nerf_posefix.io.colmap_transforms.write_nerfstudio_transforms`)."""
    return write_nerfstudio_transforms(read_colmap_model(recon_dir), output_dir, with_points=has_points)


def prepare_training_data(
    inp: ValidatedInput, data_dir: Path, downscale_factor: int = 1, applied_transform: Optional[np.ndarray] = None
) -> Path:
    """Write the training dataset into ``data_dir``: links to the images (PNG copies of the converted
    ones, see the module docstring), downscaled copies, a binary copy of the model with the work-directory
    names and nerfstudio's ``colmap_to_json`` of it, in the world frame ``applied_transform · COLMAP world``
    (``[3, 4]``; None: nerfstudio's, as ``ns-process-data`` writes a COLMAP model). Assembled in ``data_dir.tmp``
    and renamed, so ``data_dir`` is complete or absent.

    Returns:
        ``data_dir / "transforms.json"``.
    """
    from PIL import Image

    tmp = data_dir.with_name(data_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "images").mkdir(parents=True)
    for name, flat in inp.flat_names.items():
        if name in inp.converted:
            training_image(inp.image_paths[name], inp.channels).save(tmp / "images" / flat, format="PNG")
        else:
            _link_or_copy(inp.image_paths[name], tmp / "images" / flat)
    if downscale_factor > 1:
        (tmp / f"images_{downscale_factor}").mkdir()
        for name, flat in inp.flat_names.items():
            img = training_image(inp.image_paths[name], inp.channels)
            size = (max(1, img.width // downscale_factor), max(1, img.height // downscale_factor))
            img.resize(size, Image.Resampling.LANCZOS).save(tmp / f"images_{downscale_factor}" / flat)
    images = {k: im._replace(name=inp.flat_names[im.name]) for k, im in inp.model.images.items()}
    renamed = replace(inp.model, images=images)
    write_colmap_model(renamed, tmp / "sparse" / "0", formats=("bin",))
    write_nerfstudio_transforms(renamed, tmp, applied_transform=applied_transform)
    os.replace(tmp, data_dir)
    return data_dir / "transforms.json"


# ---------------------------------------------------------------------------------------------
# resuming


def interrupted_training(work: Path) -> Optional[dict[str, Any]]:
    """What an interrupted refine run left in its work directory ``work`` (``OUT.partial``): its latest
    training checkpoint as ``{"completed_iterations", "checkpoint", "run_dir"}`` (the iterations from the
    run-state file when it names that checkpoint, else the checkpoint's step + 1, as a resumed run counts
    them), or None when there is no checkpoint. Cheap: no torch, no nerfstudio."""
    from nerf_posefix.plugin.training import read_training_state

    for run_dir in sorted(Path(work).glob("runs/refine/*/run")):
        checkpoints = sorted((run_dir / "nerfstudio_models").glob("step-*.ckpt"))
        steps = [int(p.stem.split("-")[-1]) for p in checkpoints if p.stem.split("-")[-1].isdigit()]
        if not steps:
            continue
        latest = checkpoints[int(np.argmax(steps))]
        state = read_training_state(run_dir)
        done = max(steps) + 1
        if state is not None and (run_dir / str(state.get("checkpoint", ""))) == latest:
            done = int(state["completed_iterations"])
        return {"completed_iterations": done, "checkpoint": str(latest), "run_dir": str(run_dir)}
    return None


def check_resume(work: Path, iterations: Optional[int]) -> None:
    """The checks of ``--resume`` that need no torch: the interrupted run's config is readable, and
    ``--iterations`` is not fewer than it has already done. Such a resume is **refused** (a trained NeRF
    cannot be un-trained, and silently returning the longer run would not be what was asked).

    Raises:
        InputError: naming the work directory (or the run config), the iterations done and the options
            that work.
    """
    from nerf_posefix.io.sources import run_config_inputs

    for config in sorted(Path(work).glob("runs/refine/*/run/config.yml")):
        run_config_inputs(config)  # one line naming the config if it cannot be parsed
    if iterations is None:
        return
    state = interrupted_training(work)
    if state is not None and int(state["completed_iterations"]) > iterations:
        done = int(state["completed_iterations"])
        raise InputError(
            f"--iterations {iterations}: the interrupted run in {work} has already done {done} iterations; "
            f"resume with --iterations {done} or more, or start over with --overwrite"
        )
