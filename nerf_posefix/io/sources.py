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


def source_kind(path: str | os.PathLike[str]) -> tuple[str, Path]:
    """What :func:`load_camera_set` reads at ``path``: ``("colmap", model directory)``,
    ``("transforms", transforms.json)``, ``("run", config.yml)`` or ``("tum", file)``. Cheap (no parsing).

    Raises:
        InputError: the path does not exist, or is a directory holding none of these (or several runs).
    """
    path = Path(path)
    try:
        if not path.exists():
            raise InputError(f"{path}: no such file or directory")
        if path.is_dir():
            if find_colmap_model_dir(path) is not None:
                return "colmap", path
            if (path / "transforms.json").is_file():
                return "transforms", path / "transforms.json"
            config = find_run_config(path)
            if config is not None:
                return "run", config
            raise InputError(
                f"{path}: not a COLMAP model, a directory with transforms.json, or a nerfstudio run directory"
            )
    except OSError as err:
        raise InputError(f"{path}: cannot read it ({err.strerror or err})") from None
    if path.suffix.lower() == ".json":
        return "transforms", path
    if path.suffix.lower() in (".yml", ".yaml"):
        return "run", path
    if path.suffix.lower() in (".bin", ".txt") and path.stem in MODEL_FILES:
        return "colmap", path.parent
    return "tum", path


def load_camera_set(path: str | os.PathLike[str], load_run: Optional[Callable[[Path], CameraSet]] = None) -> CameraSet:
    """Load cameras from any supported source, detected from ``path`` (:func:`source_kind`):

    * a COLMAP model directory (``.bin`` or ``.txt``), a directory containing ``sparse/0`` (or
      ``colmap/sparse/0``), or one of the model's files (its directory is read);
    * a nerfstudio ``transforms.json``, or a directory containing one;
    * a nerfstudio run directory or its ``config.yml``: ``load_run(config_path)`` reads it (the plugin
      floor's run reader, passed in by :mod:`nerf_posefix.workflows.pose_sources`) after the cheap
      checks of :func:`check_run_config`;
    * anything else is read as a TUM trajectory file.

    Raises:
        InputError: the path does not exist, is not recognised, or cannot be parsed (named).
    """
    kind, found = source_kind(path)
    if kind == "colmap":
        return _colmap_set(read_colmap_model(found), found)
    if kind == "transforms":
        return read_transforms_json(found)
    if kind == "run":
        return _run(found, load_run)
    return read_tum(found)


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


def _read_run_config(config_path: Path) -> dict:
    try:
        text = Path(config_path).read_text(encoding="utf-8")
        root = yaml.compose(text, Loader=_RunConfigLoader)
        config = yaml.load(text, Loader=_RunConfigLoader)
    except OSError as err:
        raise InputError(f"{config_path}: cannot read the run config ({err.strerror or err})") from None
    except (UnicodeDecodeError, yaml.YAMLError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"{config_path}: cannot read the run config ({type(err).__name__}: {reason})") from None
    if root is None or not str(root.tag).endswith("TrainerConfig") or not isinstance(config, dict):
        raise InputError(f"{config_path}: not a nerfstudio run config (expected RUN/config.yml of ns-train or posefix)")
    return config


def _section(node: object, *keys: str) -> dict:
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else {}


def run_dataset(config: dict) -> Optional[Path]:
    """The dataset of a parsed run config, taken where nerfstudio takes it when the run is loaded:
    ``pipeline.datamanager.data`` when set (``ns-train --data DATA`` puts it there; the dataparser's own
    ``data`` is then ``.`` and unused), else ``pipeline.datamanager.dataparser.data``. A relative path is
    relative to the current directory, as nerfstudio reads it. None when the config names none."""
    datamanager = _section(config, "pipeline", "datamanager")
    data = datamanager.get("data")
    if not isinstance(data, Path):
        data = _section(datamanager, "dataparser").get("data")
    return data if isinstance(data, Path) else None


def _run_paths(config_path: Path, config: dict) -> tuple[list[Path], list[Path]]:
    """``(datasets, other inputs)`` named by a parsed run config: its dataset (:func:`run_dataset`; a
    relative path is listed as nerfstudio reads it, relative to the current directory, and relative to the
    run directory) and the dataparser's absolute ``colmap_path`` / ``images_path`` / ... values."""
    datasets: list[Path] = []
    others: list[Path] = []
    data = run_dataset(config)
    if data is not None:
        datasets.extend([data] if data.is_absolute() else [data, Path(config_path).parent / data])

    def walk(node: object, key: str = "") -> None:
        if isinstance(node, Path) and key in ("colmap_path", "images_path", "masks_path", "depths_path") and node.is_absolute():
            others.append(node)
        elif isinstance(node, dict):
            for k, v in node.items():
                walk(v, str(k))
        elif isinstance(node, list):
            for v in node:
                walk(v, key)

    walk(config)
    return datasets, others


def run_config_inputs(config_path: Path) -> list[Path]:
    """What a run reads, found cheaply (no torch, no nerfstudio): its directory and its dataset.

    Raises:
        InputError: the config cannot be parsed.
    """
    datasets, others = _run_paths(config_path, _read_run_config(config_path))
    return [Path(config_path).parent, *datasets, *others]


def check_run_config(config_path: str | os.PathLike[str]) -> list[Path]:
    """The checks of :func:`nerf_posefix.plugin.run_reader.load_refined_run` that need no torch and no
    nerfstudio (so a bad run is one line in well under a second): the config parses as a nerfstudio
    ``TrainerConfig``, its dataset exists, it has a checkpoint.

    Returns:
        :func:`run_config_inputs` (the run directory and its dataset).

    Raises:
        InputError: naming the config and what is wrong.
    """
    config_path = resolve_run_config(config_path)
    config = _read_run_config(config_path)
    datasets, others = _run_paths(config_path, config)
    data = run_dataset(config)
    if data is not None and not data.exists():
        raise InputError(f"{config_path}: the run's dataset {data} does not exist (moved?)")
    model_dir = config.get("relative_model_dir")
    model_dir = model_dir if isinstance(model_dir, Path) else Path("nerfstudio_models")
    candidates = [config_path.parent / model_dir]
    parts = [config.get(k) for k in ("output_dir", "experiment_name", "method_name", "timestamp")]
    if all(isinstance(p, (str, Path)) for p in parts):
        candidates.append(Path(*[str(p) for p in parts]) / model_dir)
    if not any(c.is_dir() and any(c.glob("step-*.ckpt")) for c in candidates):
        raise InputError(f"{config_path}: {candidates[0]}: no nerfstudio checkpoint (step-*.ckpt)")
    return [config_path.parent, *datasets, *others]


def source_inputs(path: str | os.PathLike[str]) -> list[Path]:
    """Every path a pose source reads (for the output checks): the path itself and, for a nerfstudio run,
    its directory and dataset, after :func:`check_run_config`. Cheap.

    Raises:
        InputError: see :func:`source_kind` and :func:`check_run_config`.
    """
    kind, found = source_kind(path)
    if kind == "run":
        return [Path(path), *check_run_config(found)]
    return [Path(path)]


def _run(config: Path, load_run: Optional[Callable[[Path], CameraSet]]) -> CameraSet:
    if load_run is None:
        raise InputError(f"{config}: a nerfstudio run; this reader takes only COLMAP, transforms.json and TUM files")
    check_run_config(config)  # a bad run is one line before nerfstudio is imported
    return load_run(config)


def _colmap_set(model: ColmapModel, path: Path) -> CameraSet:
    camera_set = model.to_camera_set(source=str(path))
    if len(camera_set) == 0:
        raise InputError(f"{model.path}: the COLMAP model has no images")
    return camera_set


