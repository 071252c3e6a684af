"""What the plugin needs to know about a training dataset, and its checks before training.

Supported inputs are nerfstudio's two standard dataparsers:

* ``nerfstudio-data`` (:class:`~nerfstudio.data.dataparsers.nerfstudio_dataparser.NerfstudioDataParserConfig`):
  a ``transforms.json`` (camera-to-world, OpenGL camera axes). A COLMAP model found beside it
  (``sparse/0``, ``colmap/sparse/0``, ...; see :func:`nerf_posefix.colmap_model.find_colmap_model_dir`)
  provides sparse points for the depth bounds.
* ``colmap`` (:class:`~nerfstudio.data.dataparsers.colmap_dataparser.ColmapDataParserConfig`): a COLMAP
  model (``data / colmap_path``) and its images (``data / images_path``).

Ground-truth poses, when the dataset has them, are in ``transforms_gt.json`` (the transforms.json
format and world frame) beside ``transforms.json``, or in the dataset root for COLMAP datasets.

Bad input (unreadable files, non-finite or non-rigid poses, frames whose image is missing) raises
:class:`nerf_posefix.errors.InputError` naming the file and the frame, before any training starts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np

from nerf_posefix.errors import InputError

GT_FILENAME = "transforms_gt.json"
#: Largest ``|det R - 1|`` / ``max |RᵀR - I|`` accepted for an input rotation block.
INPUT_ROTATION_TOLERANCE = 1e-3


@dataclass
class DatasetInfo:
    """Where a dataset's files are.

    Attributes:
        kind: ``"nerfstudio"`` (transforms.json), ``"colmap"`` (COLMAP dataparser) or ``"other"``.
        data_dir: the dataset directory (for transforms.json inputs, the directory of the json).
        transforms_path: the transforms.json (``nerfstudio`` kind), else None.
        colmap_dir: the COLMAP model directory: the dataparser's input (``colmap`` kind), or a model
            found beside transforms.json (``nerfstudio`` kind), else None.
        images_dir: the COLMAP image directory (``colmap`` kind), else None.
        gt_path: ``transforms_gt.json`` when present, else None.
        downscale_factor: the dataparser's ``downscale_factor`` option (None: automatic).
    """

    kind: Literal["nerfstudio", "colmap", "other"]
    data_dir: Path
    transforms_path: Optional[Path] = None
    colmap_dir: Optional[Path] = None
    images_dir: Optional[Path] = None
    gt_path: Optional[Path] = None
    downscale_factor: Optional[int] = None


def describe_dataset(dataparser_config) -> DatasetInfo:  # noqa: ANN001 (any DataParserConfig)
    """Locate the files of the dataset a dataparser config points at (no reading)."""
    from nerfstudio.data.dataparsers.colmap_dataparser import ColmapDataParserConfig
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    from nerf_posefix.colmap_model import find_colmap_model_dir

    data = Path(dataparser_config.data)
    if isinstance(dataparser_config, NerfstudioDataParserConfig):
        transforms = data if data.suffix == ".json" else data / "transforms.json"
        data_dir = transforms.parent
        found = find_colmap_model_dir(data_dir)
        gt = data_dir / GT_FILENAME
        return DatasetInfo(
            kind="nerfstudio",
            data_dir=data_dir,
            transforms_path=transforms,
            colmap_dir=found[0] if found else None,
            gt_path=gt if gt.is_file() and gt != transforms else None,
            downscale_factor=dataparser_config.downscale_factor,
        )
    if isinstance(dataparser_config, ColmapDataParserConfig):
        gt = data / GT_FILENAME
        return DatasetInfo(
            kind="colmap",
            data_dir=data,
            colmap_dir=data / dataparser_config.colmap_path,
            images_dir=data / dataparser_config.images_path,
            gt_path=gt if gt.is_file() else None,
            downscale_factor=dataparser_config.downscale_factor,
        )
    return DatasetInfo(kind="other", data_dir=data)


# ---------------------------------------------------------------------------------------------
# validation


def _check_pose(pose: np.ndarray, where: str) -> None:
    """Raise InputError unless ``pose`` is a finite 3x4/4x4 rigid camera-to-world matrix."""
    if pose.shape not in ((4, 4), (3, 4)):
        raise InputError(f"{where}: transform_matrix has shape {pose.shape}, expected 4x4")
    if not np.isfinite(pose).all():
        raise InputError(f"{where}: transform_matrix has non-finite values (NaN or inf)")
    rot = pose[:3, :3]
    ortho = np.abs(rot.T @ rot - np.eye(3)).max()
    det = np.linalg.det(rot)
    if ortho > INPUT_ROTATION_TOLERANCE or abs(det - 1.0) > INPUT_ROTATION_TOLERANCE:
        raise InputError(
            f"{where}: transform_matrix rotation is not a rotation (det {det:.6g}, max |RᵀR - I| {ortho:.3g})"
        )


def read_transforms_frames(path: Path, check_images: bool, downscale_factor: Optional[int] = None) -> dict:
    """Read and check a transforms.json: every frame needs a ``file_path`` and a finite rigid
    ``transform_matrix``; with ``check_images`` its image must exist (the original path, or the
    ``images_<downscale_factor>`` copy nerfstudio would read).

    Returns:
        The parsed json.

    Raises:
        InputError: naming the file and the frame (index and file_path).
    """
    try:
        with open(path, encoding="utf-8") as fid:
            meta = json.load(fid)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: cannot read ({err})") from None
    frames = meta.get("frames") if isinstance(meta, dict) else None
    if not isinstance(frames, list) or not frames:
        raise InputError(f"{path}: no 'frames' list")
    data_dir = path.parent
    for i, frame in enumerate(frames):
        file_path = frame.get("file_path") if isinstance(frame, dict) else None
        if not isinstance(file_path, str) or not file_path:
            raise InputError(f"{path}: frame {i} has no file_path")
        where = f"{path}: frame {i} ({file_path})"
        if "transform_matrix" not in frame:
            raise InputError(f"{where}: no transform_matrix")
        try:
            pose = np.asarray(frame["transform_matrix"], dtype=np.float64)
        except (TypeError, ValueError):
            raise InputError(f"{where}: transform_matrix is not a numeric matrix") from None
        _check_pose(pose, where)
        if check_images:
            image = data_dir / file_path
            candidates = [image]
            if downscale_factor is not None and downscale_factor > 1:
                candidates.append(data_dir / f"images_{downscale_factor}" / Path(file_path).name)
            if not any(c.is_file() for c in candidates):
                raise InputError(f"{where}: image file not found ({image})")
    return meta


def validate_dataset(info: DatasetInfo) -> None:
    """Check the dataset before training (see the module docstring).

    Raises:
        InputError: naming the file and the frame.
    """
    if info.kind == "nerfstudio":
        assert info.transforms_path is not None
        read_transforms_frames(info.transforms_path, check_images=True, downscale_factor=info.downscale_factor)
    elif info.kind == "colmap":
        from nerf_posefix.colmap_model import read_colmap_model

        assert info.colmap_dir is not None and info.images_dir is not None
        model = read_colmap_model(info.colmap_dir)  # InputError on bad files / poses
        for image_id in model.image_ids():
            name = model.images[image_id].name
            image = info.images_dir / name
            if not image.is_file():
                downscaled = (
                    info.images_dir.parent / f"{info.images_dir.name}_{info.downscale_factor}" / name
                    if info.downscale_factor and info.downscale_factor > 1
                    else None
                )
                if downscaled is None or not downscaled.is_file():
                    raise InputError(f"{model.path}: image {image_id} ({name}): image file not found ({image})")
    if info.gt_path is not None:
        read_transforms_frames(info.gt_path, check_images=False)


# ---------------------------------------------------------------------------------------------
# matching image files to names


def _norm(name: str) -> str:
    name = name.replace(os.sep, "/")
    while name.startswith("./"):
        name = name[2:]
    return name


def match_image_names(filenames: Sequence[os.PathLike[str] | str], names: Sequence[str]) -> list[Optional[int]]:
    """For each image file, the index of the name that refers to it, or None.

    A name refers to a file when the file's path ends with the name's path components (so COLMAP
    names with sub-folders and transforms.json ``file_path`` values both work); when no name does,
    a unique equal basename is accepted (e.g. nerfstudio's ``images_2/`` downscaled copies).
    """
    normed = [_norm(str(n)) for n in names]
    by_basename: dict[str, list[int]] = {}
    for k, n in enumerate(normed):
        by_basename.setdefault(n.rsplit("/", 1)[-1], []).append(k)
    out: list[Optional[int]] = []
    for f in filenames:
        path = _norm(Path(f).as_posix())
        base = path.rsplit("/", 1)[-1]
        candidates = by_basename.get(base, [])
        suffix = [k for k in candidates if path == normed[k] or path.endswith("/" + normed[k])]
        if suffix:
            out.append(max(suffix, key=lambda k: len(normed[k])))
        elif len(candidates) == 1:
            out.append(candidates[0])
        else:
            out.append(None)
    return out
