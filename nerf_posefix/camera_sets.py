"""Camera sets: named camera-to-world poses (OpenCV axes) loaded from COLMAP, nerfstudio or TUM files.

Conventions
-----------
* ``CameraSet.c2w`` is ``[N, 4, 4]`` float64 **camera-to-world** with **OpenCV camera axes** (x right,
  y down, the camera looks along +z), in the world frame and units of the source.
* nerfstudio ``transforms.json``: poses are camera-to-world with OpenGL axes; they are converted
  (``c2w @ diag(1, -1, -1, 1)``). When the file records an ``applied_transform`` (the world change
  ``ns-process-data`` applied to COLMAP's world), it is undone, so the poses are in the original
  (COLMAP) world frame, the frame nerfstudio's ``transform_poses_to_original_space`` also returns.
  Camera names are the basenames of the frames' ``file_path``.
* TUM files: ``timestamp tx ty tz qx qy qz qw`` camera-to-world rows (see :mod:`nerf_posefix.poses`);
  names are the timestamps formatted with 6 decimals, unless the file carries the comment line
  ``# posefix-names: [...]`` (JSON list) that :func:`write_tum` writes, in which case those names are
  used. evo skips that comment line.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from nerf_posefix.errors import InputError
from nerf_posefix.poses import c2w_to_tum, opengl_to_opencv, tum_to_c2w

TUM_NAMES_PREFIX = "# posefix-names:"


@dataclass
class CameraSet:
    """Named cameras with poses, and optionally the 3D points they observe.

    Attributes:
        names: ``N`` unique camera (image) names.
        c2w: ``[N, 4, 4]`` camera-to-world, OpenCV camera axes, source world frame and units.
        points: ``[P, 3]`` world points (e.g. COLMAP's sparse points), or None.
        observations: per camera, an int array of indices into ``points`` of the points it observes,
            or None.
        source: where the set came from (path), for messages and reports.
    """

    names: list[str]
    c2w: np.ndarray
    points: np.ndarray | None = None
    observations: list[np.ndarray] | None = None
    source: str = ""

    def __post_init__(self) -> None:
        self.names = [str(n) for n in self.names]
        c2w = np.asarray(self.c2w, dtype=np.float64)
        if c2w.ndim == 3 and c2w.shape[1:] == (3, 4):
            c2w = np.concatenate([c2w, np.broadcast_to([0.0, 0.0, 0.0, 1.0], (c2w.shape[0], 1, 4))], axis=1)
        if c2w.ndim != 3 or c2w.shape[1:] != (4, 4):
            raise ValueError(f"{self.source or 'camera set'}: c2w must be [N, 4, 4], got {c2w.shape}")
        if c2w.shape[0] != len(self.names):
            raise ValueError(f"{self.source or 'camera set'}: {len(self.names)} names for {c2w.shape[0]} poses")
        self.c2w = c2w
        if self.points is not None:
            self.points = np.asarray(self.points, dtype=np.float64).reshape(-1, 3)
        if self.observations is not None:
            if len(self.observations) != len(self.names):
                raise ValueError(
                    f"{self.source or 'camera set'}: {len(self.observations)} observation lists for {len(self.names)} cameras"
                )
            self.observations = [np.asarray(o, dtype=np.int64).reshape(-1) for o in self.observations]

    def __len__(self) -> int:
        return len(self.names)

    @property
    def centers(self) -> np.ndarray:
        """Camera centres ``[N, 3]`` in world coordinates."""
        return self.c2w[:, :3, 3]

    def subset(self, indices: np.ndarray) -> "CameraSet":
        """The cameras at ``indices`` (in that order); points are shared, observations follow."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        return CameraSet(
            names=[self.names[i] for i in indices],
            c2w=self.c2w[indices],
            points=self.points,
            observations=None if self.observations is None else [self.observations[i] for i in indices],
            source=self.source,
        )

    def with_poses(self, c2w: np.ndarray, source: str | None = None) -> "CameraSet":
        """The same cameras (names, points, observations) with new poses ``[N, 4, 4]``."""
        return CameraSet(
            names=list(self.names),
            c2w=c2w,
            points=self.points,
            observations=self.observations,
            source=self.source if source is None else source,
        )


# ---------------------------------------------------------------------------------------------
# readers


def _check_unique(names: list[str], source: str) -> None:
    seen: set[str] = set()
    dups = []
    for n in names:
        if n in seen:
            dups.append(n)
        seen.add(n)
    if dups:
        raise InputError(f"{source}: duplicate camera names: {', '.join(sorted(set(dups))[:5])}")


def read_transforms_json(path: str | os.PathLike[str]) -> CameraSet:
    """Read a nerfstudio ``transforms.json`` (see the module docstring for conventions)."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as fid:
            meta = json.load(fid)
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: cannot read transforms.json ({err})") from None
    frames = meta.get("frames") if isinstance(meta, dict) else None
    if not isinstance(frames, list) or not frames:
        raise InputError(f"{path}: no 'frames' list in transforms.json")
    names, poses = [], []
    for i, frame in enumerate(frames):
        try:
            file_path = frame["file_path"]
            pose = np.asarray(frame["transform_matrix"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(f"{path}: frame {i} lacks a valid file_path/transform_matrix ({err})") from None
        if pose.shape not in ((4, 4), (3, 4)) or not np.isfinite(pose).all():
            raise InputError(f"{path}: frame {i} ({file_path}) has a transform_matrix of shape {pose.shape} or non-finite values")
        rot = pose[:3, :3]
        if np.abs(rot.T @ rot - np.eye(3)).max() > 1e-3 or abs(np.linalg.det(rot) - 1.0) > 1e-3:
            raise InputError(f"{path}: frame {i} ({file_path}): the rotation block of transform_matrix is not a rotation")
        names.append(os.path.basename(str(file_path)))
        poses.append(pose[:3])
    _check_unique(names, str(path))
    c2w_gl = np.concatenate([np.stack(poses), np.tile([[[0.0, 0.0, 0.0, 1.0]]], (len(poses), 1, 1))], axis=1)  # [N,4,4]
    if "applied_transform" in meta:
        applied = np.eye(4)
        try:
            applied[:3] = np.asarray(meta["applied_transform"], dtype=np.float64).reshape(3, 4)
        except ValueError:
            raise InputError(f"{path}: applied_transform must be a 3x4 matrix") from None
        c2w_gl = np.linalg.inv(applied) @ c2w_gl  # back to the original world frame
    return CameraSet(names=names, c2w=opengl_to_opencv(c2w_gl), source=str(path))


def read_tum(path: str | os.PathLike[str]) -> CameraSet:
    """Read a TUM trajectory file (see the module docstring for conventions)."""
    path = Path(path)
    names: list[str] | None = None
    rows = []
    try:
        with open(path, encoding="utf-8") as fid:
            for lineno, line in enumerate(fid, start=1):
                stripped = line.strip()
                if stripped.startswith(TUM_NAMES_PREFIX):
                    names = json.loads(stripped[len(TUM_NAMES_PREFIX):])
                    continue
                if not stripped or stripped.startswith("#"):
                    continue
                fields = stripped.split()
                if len(fields) != 8:
                    raise InputError(
                        f"{path}:{lineno}: a TUM row needs 8 values (timestamp tx ty tz qx qy qz qw), got {len(fields)}"
                    )
                try:
                    rows.append([float(v) for v in fields])
                except ValueError:
                    raise InputError(f"{path}:{lineno}: not a number in TUM row {stripped[:60]!r}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: cannot read TUM file ({err})") from None
    if not rows:
        raise InputError(f"{path}: no poses in TUM file")
    table = np.asarray(rows)  # [N, 8]
    if not np.isfinite(table).all() or (np.linalg.norm(table[:, 4:], axis=1) < 1e-12).any():
        raise InputError(f"{path}: non-finite value or zero quaternion in TUM file")
    stamps, c2w = tum_to_c2w(table)
    if names is None or len(names) != len(stamps):
        names = [f"{t:.6f}" for t in stamps]
    _check_unique([str(n) for n in names], str(path))
    return CameraSet(names=[str(n) for n in names], c2w=c2w, source=str(path))


def write_tum(
    camera_set: CameraSet, path: str | os.PathLike[str], timestamps: np.ndarray | None = None
) -> Path:
    """Write ``camera_set`` as a TUM file that evo reads (``read_tum_trajectory_file``).

    Timestamps are ``timestamps [N]`` if given, else the names when all of them parse as numbers,
    else the camera indices ``0, 1, ...``. The names are kept in a ``# posefix-names:`` comment line
    (JSON list), which :func:`read_tum` uses and evo ignores.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if timestamps is not None:
        stamps = np.asarray(timestamps, dtype=np.float64).reshape(-1)
    else:
        try:
            stamps = np.array([float(n) for n in camera_set.names], dtype=np.float64)
        except ValueError:
            stamps = np.arange(len(camera_set), dtype=np.float64)
    rows = c2w_to_tum(camera_set.c2w, stamps)  # [N, 8]
    with open(path, "w", encoding="utf-8") as fid:
        fid.write(f"{TUM_NAMES_PREFIX} {json.dumps(camera_set.names)}\n")
        np.savetxt(fid, rows, fmt="%.17g", delimiter=" ")
    return path


def _find_run_config(directory: Path) -> Path | None:
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


def _load_run(config_path: Path) -> CameraSet:
    from nerf_posefix.plugin.export import load_refined_camera_set  # lazy: imports nerfstudio models

    return load_refined_camera_set(config_path)


def load_camera_set(path: str | os.PathLike[str]) -> CameraSet:
    """Load cameras from any supported source, detected from ``path``:

    * a COLMAP model directory (``.bin`` or ``.txt``), a directory containing ``sparse/0`` (or
      ``colmap/sparse/0``), or one of the model's files (its directory is read);
    * a nerfstudio ``transforms.json``, or a directory containing one;
    * a nerfstudio run directory or its ``config.yml`` (refined poses via
      :func:`nerf_posefix.plugin.export.load_refined_camera_set`);
    * anything else is read as a TUM trajectory file.

    Raises:
        InputError: the path does not exist, is not recognised, or cannot be parsed (named).
    """
    from nerf_posefix.colmap_model import MODEL_FILES, find_colmap_model_dir, read_colmap_model

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if path.is_dir():
        if find_colmap_model_dir(path) is not None:
            return _colmap_set(read_colmap_model(path), path)
        if (path / "transforms.json").is_file():
            return read_transforms_json(path / "transforms.json")
        config = _find_run_config(path)
        if config is not None:
            return _load_run(config)
        raise InputError(
            f"{path}: not a COLMAP model, a directory with transforms.json, or a nerfstudio run directory"
        )
    if path.suffix.lower() == ".json":
        return read_transforms_json(path)
    if path.suffix.lower() in (".yml", ".yaml"):
        return _load_run(path)
    if path.suffix.lower() in (".bin", ".txt") and path.stem in MODEL_FILES:
        return _colmap_set(read_colmap_model(path.parent), path.parent)
    return read_tum(path)


def _colmap_set(model, path: Path) -> CameraSet:  # noqa: ANN001 (ColmapModel; avoid import cycle)
    camera_set = model.to_camera_set(source=str(path))
    if len(camera_set) == 0:
        raise InputError(f"{model.path}: the COLMAP model has no images")
    return camera_set


# ---------------------------------------------------------------------------------------------
# matching


@dataclass
class CameraMatch:
    """Correspondences between a reference and an estimated camera set.

    Attributes:
        ref_index: ``[M]`` indices into the reference, in the reference's order.
        est_index: ``[M]`` indices into the estimate; ``est[est_index[k]]`` is ``ref[ref_index[k]]``.
        unmatched_ref: reference names without a counterpart.
        unmatched_est: estimate names without a counterpart.
    """

    ref_index: np.ndarray
    est_index: np.ndarray
    unmatched_ref: list[str] = field(default_factory=list)
    unmatched_est: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.ref_index.shape[0])


def match_camera_sets(ref: CameraSet, est: CameraSet, by: Literal["name", "order"] = "name") -> CameraMatch:
    """Match cameras by name (exact string) or by position in the sets.

    Matches are listed in the reference's order (so "consecutive cameras" follow the reference).
    With ``by="order"``, the first ``min(N_ref, N_est)`` cameras are paired and the rest are unmatched.

    Raises:
        InputError: duplicate names (``by="name"``), or no camera in common.
    """
    if by == "order":
        m = min(len(ref), len(est))
        idx = np.arange(m, dtype=np.int64)
        match = CameraMatch(idx, idx.copy(), list(ref.names[m:]), list(est.names[m:]))
    elif by == "name":
        _check_unique(ref.names, ref.source)
        _check_unique(est.names, est.source)
        est_lookup = {n: i for i, n in enumerate(est.names)}
        pairs = [(i, est_lookup[n]) for i, n in enumerate(ref.names) if n in est_lookup]
        ref_names = set(ref.names)
        arr = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        match = CameraMatch(
            arr[:, 0].copy(),
            arr[:, 1].copy(),
            [n for n in ref.names if n not in est_lookup],
            [n for n in est.names if n not in ref_names],
        )
    else:
        raise ValueError(f"by must be 'name' or 'order', got {by!r}")
    if len(match) == 0:
        raise InputError(
            f"no camera in common between {ref.source} ({len(ref)} cameras, e.g. {ref.names[:2]}) and "
            f"{est.source} ({len(est)} cameras, e.g. {est.names[:2]}) matching by {by}"
        )
    return match
