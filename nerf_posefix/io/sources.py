"""Pose sources on disk: which reader a path needs (COLMAP model, transforms.json, TUM file).

nerfstudio run directories are also pose sources, but reading one needs the plugin floor:
:func:`nerf_posefix.workflows.pose_sources.load_pose_source` handles them and defers to
:func:`load_camera_set` for files.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from typing import Callable, Optional

from nerf_posefix.errors import InputError
from nerf_posefix.io.camera_set import CameraSet
from nerf_posefix.io.colmap import MODEL_FILES, ColmapModel, find_colmap_model_dir, read_colmap_model
from nerf_posefix.io.transforms_json import read_transforms_json
from nerf_posefix.io.tum import read_tum


def find_run_config(directory: Path) -> Path | None:
    """``config.yml`` of a nerfstudio run in ``directory`` or up to two levels below; None if none.

    Raises:
        InputError: several runs below ``directory``.
    """
    direct = directory / "config.yml"
    if direct.is_file():
        return direct
    found = sorted(directory.glob("*/config.yml")) + sorted(directory.glob("*/*/config.yml"))
    if len(found) > 1:
        listed = ", ".join(str(p.parent) for p in found[:5])
        raise InputError(f"{directory}: holds several nerfstudio runs ({listed}); give one run directory")
    return found[0] if found else None


def load_camera_set(path: str | os.PathLike[str], load_run: Optional[Callable[[Path], CameraSet]] = None) -> CameraSet:
    """Load cameras from any supported source, detected from ``path``:

    * a COLMAP model directory (``.bin`` or ``.txt``), a directory containing ``sparse/0`` (or
      ``colmap/sparse/0``), or one of the model's files (its directory is read);
    * a nerfstudio ``transforms.json``, or a directory containing one;
    * a nerfstudio run directory or its ``config.yml``: ``load_run(config_path)`` reads it (the plugin
      floor's run reader, passed in by :mod:`nerf_posefix.workflows.pose_sources`);
    * anything else is read as a TUM trajectory file.

    Raises:
        InputError: the path does not exist, is not recognised, or cannot be parsed (named).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if path.is_dir():
        if find_colmap_model_dir(path) is not None:
            return _colmap_set(read_colmap_model(path), path)
        if (path / "transforms.json").is_file():
            return read_transforms_json(path / "transforms.json")
        config = find_run_config(path)
        if config is not None:
            return _run(config, load_run)
        raise InputError(
            f"{path}: not a COLMAP model, a directory with transforms.json, or a nerfstudio run directory"
        )
    if path.suffix.lower() == ".json":
        return read_transforms_json(path)
    if path.suffix.lower() in (".yml", ".yaml"):
        return _run(path, load_run)
    if path.suffix.lower() in (".bin", ".txt") and path.stem in MODEL_FILES:
        return _colmap_set(read_colmap_model(path.parent), path.parent)
    return read_tum(path)


def resolve_run_config(path: str | os.PathLike[str]) -> Path:
    """The ``config.yml`` of a nerfstudio run given as the file or a directory holding one run.

    Raises:
        InputError: no such path, no run there, several runs there.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such run (expected a run directory or its config.yml)")
    if path.is_dir():
        found = find_run_config(path)
        if found is None:
            raise InputError(f"{path}: no nerfstudio run here (no config.yml in it or up to two levels below)")
        return found
    return path


class _RunConfigLoader(yaml.SafeLoader):
    """Reads a run's config.yml without importing or constructing any class: ``pathlib`` paths become
    :class:`~pathlib.Path`, every other Python object a plain dict or list of its fields."""


def _python_object(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> object:
    if isinstance(node, yaml.SequenceNode):
        items = loader.construct_sequence(node, deep=True)
        if "pathlib" in suffix and all(isinstance(i, str) for i in items):
            return Path(*items) if items else Path()
        return items
    if isinstance(node, yaml.MappingNode):
        mapping = loader.construct_mapping(node, deep=True)
        state = mapping.get("state") if isinstance(mapping.get("state"), dict) else None
        return state if state is not None and "kwds" not in mapping else mapping
    return loader.construct_scalar(node)  # type: ignore[arg-type]


_RunConfigLoader.add_multi_constructor("tag:yaml.org,2002:python/", _python_object)


def run_config_inputs(config_path: Path) -> list[Path]:
    """What a run reads, found cheaply (no torch, no nerfstudio): its directory and its dataset.

    Raises:
        InputError: the config cannot be parsed.
    """
    try:
        config = yaml.load(Path(config_path).read_text(encoding="utf-8"), Loader=_RunConfigLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise InputError(f"{config_path}: cannot read the run config ({type(err).__name__}: {err})") from None
    found: list[Path] = [Path(config_path).parent]

    def walk(node: object, key: str = "") -> None:
        if isinstance(node, Path) and key == "data":
            found.append(node if node.is_absolute() else Path(config_path).parent / node)
        elif isinstance(node, dict):
            for k, v in node.items():
                walk(v, str(k))
        elif isinstance(node, list):
            for v in node:
                walk(v, key)

    walk(config)
    return found


def _run(config: Path, load_run: Optional[Callable[[Path], CameraSet]]) -> CameraSet:
    if load_run is None:
        raise InputError(f"{config}: a nerfstudio run; this reader takes only COLMAP, transforms.json and TUM files")
    return load_run(config)


def _colmap_set(model: ColmapModel, path: Path) -> CameraSet:
    camera_set = model.to_camera_set(source=str(path))
    if len(camera_set) == 0:
        raise InputError(f"{model.path}: the COLMAP model has no images")
    return camera_set


