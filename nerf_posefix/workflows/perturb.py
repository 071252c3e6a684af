"""``posefix perturb``: write a copy of a dataset with seeded, controlled pose noise.

Input (``--data DIR``): a nerfstudio dataset (``DIR/transforms.json``), a COLMAP dataset (a model in
``DIR``, ``DIR/sparse/0``, ``DIR/sparse``, ``DIR/colmap/sparse/0`` or ``DIR/colmap/sparse``, plus images),
or both (as ``ns-process-data`` and ``benchmarks/make_scene.py`` write them). Every pose format present is
perturbed, with the same noise per camera.

Output (``--output DIR``, which must not exist unless ``--overwrite``): a full copy of the input
directory (images included) where

* ``transforms.json`` / the COLMAP model hold the noisy poses (the COLMAP model keeps its cameras, 2D
  observations and 3D points, which stay exact);
* ``transforms_gt.json`` holds the clean (input) poses: the input ``transforms.json`` itself, or, for a
  COLMAP-only input, a minimal transforms file (``file_path`` + ``transform_matrix`` per frame,
  camera-to-world OpenGL axes, in the COLMAP world frame, ``applied_transform = I``); for a COLMAP
  input, the clean model is also kept as ``sparse_gt/0`` (same formats as the input model);
* ``perturbation.json`` records the parameters, the scene radius, the world-unit translation and the
  noise applied to each camera.

The noise itself is defined in :mod:`nerf_posefix.geometry.noise` (exact angle about a uniformly random axis,
exact centre offset in a uniformly random direction). It is applied in the **original world frame**
(the COLMAP frame; a ``transforms.json`` ``applied_transform`` is undone first and re-applied after),
with cameras sorted by name, so both formats of one dataset receive identical noise and the noise does
not depend on file order. The input is never written to; the output is assembled in a temporary
sibling directory and renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Literal

import numpy as np

from nerf_posefix.errors import InputError
from nerf_posefix.geometry.noise import holdout_mask, perturb_poses
from nerf_posefix.geometry.poses import scene_radius
from nerf_posefix.io.atomic import atomic_directory, check_output_dir
from nerf_posefix.io.camera_set import CameraSet
from nerf_posefix.io.colmap import find_colmap_model_dir, read_colmap_model, write_colmap_model
from nerf_posefix.io.transforms_json import (
    GT_FILENAME as GT_TRANSFORMS_FILE,
    frame_name,
    read_transforms_frames,
    read_transforms_json,
    transforms_meta,
    with_poses,
    write_transforms_json,
)

#: Name of the metadata file written next to the noisy dataset.
PERTURBATION_FILE = "perturbation.json"


def _check_paths(data: Path, output: Path, overwrite: bool) -> None:
    if not data.is_dir():
        raise InputError(f"{data}: no such dataset directory")
    check_output_dir(output, [("--data", data)], overwrite, command="perturb")


def _model_formats(directory: Path) -> tuple[str, ...]:
    return tuple(
        fmt for fmt in ("bin", "txt") if all((directory / f"{k}.{fmt}").is_file() for k in ("cameras", "images"))
    )


def perturb_dataset(
    data: str | os.PathLike[str],
    output: str | os.PathLike[str],
    rotation_deg: float = 3.0,
    translation: float = 0.05,
    translation_units: Literal["scene-fraction", "absolute"] = "scene-fraction",
    seed: int = 0,
    holdout_every: int = 0,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write a noisy copy of the dataset ``data`` to ``output`` (see the module docstring).

    Returns:
        The content written to ``perturbation.json``.

    Raises:
        InputError: no dataset in ``data``, output exists (without ``overwrite``) or overlaps the input
            (resolved paths, with or without ``overwrite``), its parent cannot be written, a COLMAP model
            with an image name used twice, both formats present but naming different cameras, bad noise
            parameters, a failure while writing (named; nothing is left behind).
    """
    data, output = Path(data), Path(output)
    if holdout_every < 0:
        raise InputError(f"--holdout-every must be >= 0, got {holdout_every}")
    _check_paths(data, output, overwrite)

    json_path = data / "transforms.json"
    has_json = json_path.is_file()
    found = find_colmap_model_dir(data)
    if not has_json and found is None:
        raise InputError(f"{data}: no transforms.json and no COLMAP model (sparse/0, sparse, colmap/sparse/0, ...)")

    # The reference camera list: the COLMAP model's if there is one, else the transforms.json one.
    model = read_colmap_model(found[0]) if found is not None else None
    json_set = read_transforms_json(json_path) if has_json else None
    primary: CameraSet = model.to_camera_set(source=str(found[0])) if model is not None else json_set  # type: ignore[union-attr,assignment]
    if len(primary) == 0:
        raise InputError(f"{primary.source}: no cameras")
    if model is not None and json_set is not None:
        colmap_base = [os.path.basename(n) for n in primary.names]
        if sorted(colmap_base) != sorted(json_set.names):
            only_c = sorted(set(colmap_base) - set(json_set.names))[:5]
            only_j = sorted(set(json_set.names) - set(colmap_base))[:5]
            raise InputError(
                f"{json_path} and the COLMAP model {found[0]} name different images "  # type: ignore[index]
                f"(only in COLMAP: {only_c}; only in transforms.json: {only_j})"
            )

    order = sorted(range(len(primary)), key=lambda i: primary.names[i])
    names = [primary.names[i] for i in order]
    clean = primary.c2w[order]  # [N, 4, 4] OpenCV c2w, original world frame
    held = holdout_mask(len(names), holdout_every)
    noisy, noise, magnitude = perturb_poses(clean, rotation_deg, translation, translation_units, seed, held)
    noisy_by_base = {os.path.basename(n): noisy[i] for i, n in enumerate(names)}

    with atomic_directory(output, command="perturb") as tmp:
        shutil.copytree(data, tmp, dirs_exist_ok=True, symlinks=True)
        formats: list[str] = []
        gt_source: dict[str, str] = {}
        if json_set is not None:
            meta = read_transforms_frames(json_path)
            noisy_frames = np.stack([noisy_by_base[frame_name(frame)] for frame in meta["frames"]])
            write_transforms_json(with_poses(meta, noisy_frames), tmp / "transforms.json")
            shutil.copyfile(json_path, tmp / GT_TRANSFORMS_FILE)
            formats.append("transforms.json")
            gt_source["transforms.json"] = GT_TRANSFORMS_FILE
        if model is not None:
            model_dir = found[0]  # type: ignore[index]
            rel = model_dir.relative_to(data)
            fmts = _model_formats(model_dir)
            noisy_set = CameraSet(names=names, c2w=noisy, source=f"{PERTURBATION_FILE}")
            write_colmap_model(model.with_poses(noisy_set), tmp / rel, formats=fmts)
            gt_dir = _gt_model_dir(rel)
            write_colmap_model(model, tmp / gt_dir, formats=fmts)
            formats.append(f"colmap:{rel.as_posix() or '.'}")
            gt_source[f"colmap:{rel.as_posix() or '.'}"] = gt_dir.as_posix()
            if json_set is None:
                write_transforms_json(transforms_meta([f"images/{n}" for n in names], clean), tmp / GT_TRANSFORMS_FILE)
        record: dict[str, Any] = {
            "source": str(data),
            "rotation_deg": float(rotation_deg),
            "translation": float(translation),
            "translation_units": translation_units,
            "seed": int(seed),
            "holdout_every": int(holdout_every),
            "scene_radius": scene_radius(clean[:, :3, 3]),
            "translation_world": magnitude,
            "formats": formats,
            "ground_truth": gt_source,
            "convention": (
                "noise in the original (COLMAP) world frame on camera-to-world poses with OpenCV axes: "
                "R' = R_delta(axis, angle) @ R (rotation about the camera centre), C' = C + translation"
            ),
            "cameras": noise.records(names),
        }
        (tmp / PERTURBATION_FILE).write_text(json.dumps(record, indent=2), encoding="utf-8")
    return record


def _gt_model_dir(rel: Path) -> Path:
    """Where the clean COLMAP model goes: ``sparse/0`` -> ``sparse_gt/0``, ``colmap/sparse/0`` ->
    ``colmap/sparse_gt/0``, ``sparse`` -> ``sparse_gt``, ``.`` -> ``sparse_gt``."""
    parts = list(rel.parts)
    if "sparse" in parts:
        parts[parts.index("sparse")] = "sparse_gt"
        return Path(*parts)
    return rel / "sparse_gt"
