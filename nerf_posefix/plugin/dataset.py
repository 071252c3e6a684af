"""What the plugin needs to know about a training dataset, and its checks before training.

Supported inputs are nerfstudio's two standard dataparsers:

* ``nerfstudio-data`` (:class:`~nerfstudio.data.dataparsers.nerfstudio_dataparser.NerfstudioDataParserConfig`):
  a ``transforms.json`` (camera-to-world, OpenGL camera axes). A COLMAP model found beside it
  (``sparse/0``, ``colmap/sparse/0``, ...; see :func:`nerf_posefix.io.colmap.find_colmap_model_dir`)
  provides sparse points for the depth bounds.
* ``colmap`` (:class:`~nerfstudio.data.dataparsers.colmap_dataparser.ColmapDataParserConfig`): a COLMAP
  model (``data / colmap_path``) and its images (``data / images_path``).

Ground-truth poses, when the dataset has them, are in ``transforms_gt.json`` (the transforms.json
format and world frame) beside ``transforms.json``, or in the dataset root for COLMAP datasets.

Bad input (unreadable files, non-finite or non-rigid poses, frames whose image is missing) raises
:class:`nerf_posefix.errors.InputError` naming the file and the frame, before any training starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional


from nerf_posefix.errors import InputError
from nerf_posefix.io.colmap import find_colmap_model_dir, read_colmap_model
from nerf_posefix.io.transforms_json import GT_FILENAME, read_transforms_frames



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


def validate_dataset(info: DatasetInfo) -> None:
    """Check the dataset before training (see the module docstring).

    Raises:
        InputError: naming the file and the frame.
    """
    if info.kind == "nerfstudio":
        assert info.transforms_path is not None
        read_transforms_frames(info.transforms_path, check_images=True, downscale_factor=info.downscale_factor)
    elif info.kind == "colmap":
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


