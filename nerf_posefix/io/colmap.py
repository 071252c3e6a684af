"""COLMAP sparse models: a thin layer over nerfstudio's ``colmap_parsing_utils``.

Reading and writing are nerfstudio's (``read_cameras_binary``, ``write_images_text``, ...); this module
adds format detection, clear :class:`~nerf_posefix.errors.InputError` messages naming the file, the
conversion to a :class:`~nerf_posefix.camera_sets.CameraSet`, and pose replacement.

Conventions
-----------
* COLMAP images hold **world-to-camera** poses, OpenCV camera axes (x right, y down, looking +z):
  ``X_cam = R(qvec) X_world + tvec``, ``qvec = (qw, qx, qy, qz)``. A :class:`CameraSet` holds
  camera-to-world poses with the same axes (see :mod:`nerf_posefix.geometry.poses`).
* Only ``cameras``, ``images`` and ``points3D`` are read and written. COLMAP >= 3.12 also writes
  ``rigs`` and ``frames``, and takes each image pose from ``frames`` when that file is present; a model
  written here has none (and :func:`write_colmap_model` removes stale ones from the target directory),
  so current COLMAP/pycolmap derive trivial rigs and frames from the image poses we wrote.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from nerfstudio.data.utils import colmap_parsing_utils as cpu

from nerf_posefix.errors import InputError
from nerf_posefix.geometry.poses import c2w_to_colmap, colmap_to_c2w
from nerf_posefix.io.camera_set import CameraSet


#: Camera models we read and write: those of nerfstudio's table (COLMAP model ids 0-10), which
#: includes SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL, OPENCV, OPENCV_FISHEYE, FULL_OPENCV, ...
SUPPORTED_CAMERA_MODELS: tuple[str, ...] = tuple(
    m.model_name for m in sorted(cpu.CAMERA_MODELS, key=lambda m: m.model_id)
)

MODEL_FILES = ("cameras", "images", "points3D")
#: Files of COLMAP >= 3.12 that would override the image poses if left next to a written model.
RIG_FILES = ("rigs", "frames")
#: Directories, relative to a given path, searched for a model (COLMAP and nerfstudio layouts).
MODEL_SUBDIRS = ("", "sparse/0", "sparse", "colmap/sparse/0", "colmap/sparse")

# Smallest on-disk size of one record of each binary file (used to reject absurd counts early).
_MIN_RECORD_BYTES = {"cameras": 24, "images": 64 + 1 + 8, "points3D": 43 + 8}

# Exceptions nerfstudio's parsers raise on truncated or malformed files.
_PARSE_ERRORS = (struct.error, ValueError, IndexError, KeyError, AssertionError, TypeError, MemoryError, OverflowError)


@dataclass
class ColmapModel:
    """A COLMAP sparse model as nerfstudio's parser returns it.

    Attributes:
        cameras: ``{camera_id: colmap_parsing_utils.Camera}`` (intrinsics).
        images: ``{image_id: colmap_parsing_utils.Image}`` with world-to-camera ``qvec``/``tvec``.
        points3D: ``{point3D_id: colmap_parsing_utils.Point3D}``.
        path: the directory the model was read from ("" for a model built in memory).
    """

    cameras: dict[int, Any]
    images: dict[int, Any]
    points3D: dict[int, Any] = field(default_factory=dict)
    path: str = ""

    def image_ids(self) -> list[int]:
        """Image ids in increasing order (the order of :meth:`to_camera_set`)."""
        return sorted(self.images)

    def to_camera_set(self, source: str | None = None) -> CameraSet:
        """The images as a :class:`CameraSet`: camera-to-world poses (OpenCV axes) in image-id order,
        the 3D points ``[P, 3]`` in point-id order, and per image the indices (into ``points``) of the
        points it observes (``POINT3D_ID = -1`` and ids missing from ``points3D`` are skipped)."""
        ids = self.image_ids()
        images = [self.images[i] for i in ids]
        if images:
            qvec = np.stack([np.asarray(im.qvec, dtype=np.float64) for im in images])  # [N, 4]
            tvec = np.stack([np.asarray(im.tvec, dtype=np.float64) for im in images])  # [N, 3]
            c2w = colmap_to_c2w(qvec, tvec)
        else:
            c2w = np.zeros((0, 4, 4))
        point_ids = np.array(sorted(self.points3D), dtype=np.int64)  # [P]
        points = (
            np.stack([np.asarray(self.points3D[p].xyz, dtype=np.float64) for p in point_ids])
            if len(point_ids)
            else np.zeros((0, 3))
        )
        observations = []
        for im in images:
            pids = np.asarray(im.point3D_ids, dtype=np.int64).reshape(-1)
            pids = np.unique(pids[pids >= 0])
            if len(point_ids):
                idx = np.clip(np.searchsorted(point_ids, pids), 0, len(point_ids) - 1)
                idx = idx[point_ids[idx] == pids]
            else:
                idx = np.zeros(0, dtype=np.int64)
            observations.append(idx)
        return CameraSet(
            names=[im.name for im in images],
            c2w=c2w,
            points=points,
            observations=observations,
            source=source if source is not None else (self.path or "colmap model"),
        )

    def with_poses(self, camera_set: CameraSet, require_all: bool = True) -> "ColmapModel":
        """A copy whose image poses are replaced, by image name, with those of ``camera_set``
        (camera-to-world, OpenCV axes, in this model's world frame).

        Cameras, 2D observations and 3D points are kept as they are (the points are not re-triangulated).

        Args:
            camera_set: the new poses; its names must be image names of this model.
            require_all: raise if an image of the model has no pose in ``camera_set``; if False, such
                images keep their pose.

        Raises:
            InputError: a name of ``camera_set`` is not an image of the model, or (with
                ``require_all``) an image has no new pose.
        """
        by_name = {im.name: image_id for image_id, im in self.images.items()}
        unknown = [n for n in camera_set.names if n not in by_name]
        if unknown:
            raise InputError(
                f"{len(unknown)} camera(s) of {camera_set.source} are not images of the COLMAP model "
                f"{self.path or '(in memory)'}: {_preview(unknown)}"
            )
        if require_all:
            given = set(camera_set.names)
            missing = [n for n in by_name if n not in given]
            if missing:
                raise InputError(
                    f"{len(missing)} image(s) of the COLMAP model {self.path or '(in memory)'} have no pose in "
                    f"{camera_set.source}: {_preview(missing)}"
                )
        qvec, tvec = c2w_to_colmap(camera_set.c2w)
        images = dict(self.images)
        for name, q, t in zip(camera_set.names, qvec, tvec):
            image_id = by_name[name]
            images[image_id] = images[image_id]._replace(qvec=q.copy(), tvec=t.copy())
        return replace(self, images=images)


def _preview(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(str(n) for n in names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def find_colmap_model_dir(path: str | os.PathLike[str]) -> tuple[Path, str] | None:
    """The directory holding a COLMAP model at or under ``path`` and its extension (``".bin"`` or
    ``".txt"``), or None. Looks in ``path`` itself, then ``sparse/0``, ``sparse``, ``colmap/sparse/0``
    and ``colmap/sparse``. A directory counts as a model when it has ``cameras`` and ``images`` files
    (``points3D`` may be missing there; :func:`read_colmap_model` then names it)."""
    base = Path(path)
    if not base.is_dir():
        return None
    for sub in MODEL_SUBDIRS:
        candidate = base / sub if sub else base
        for ext in (".bin", ".txt"):
            if (candidate / f"cameras{ext}").is_file() and (candidate / f"images{ext}").is_file():
                return candidate, ext
    return None


def _check_binary_count(file: Path, kind: str) -> None:
    """Reject a binary file whose leading record count cannot fit in its size (garbage or truncation)."""
    size = file.stat().st_size
    if size < 8:
        raise InputError(f"{file}: truncated COLMAP file ({size} bytes, expected at least an 8-byte count)")
    with open(file, "rb") as fid:
        (count,) = struct.unpack("<Q", fid.read(8))
    if count * _MIN_RECORD_BYTES[kind] > size - 8:
        raise InputError(f"{file}: truncated or not a COLMAP {kind} file (header says {count} records, file has {size} bytes)")


def _read_one(file: Path, kind: str, ext: str) -> dict[int, Any]:
    if not file.is_file():
        raise InputError(f"{file}: missing COLMAP {kind} file")
    readers = {
        (".bin", "cameras"): cpu.read_cameras_binary,
        (".bin", "images"): cpu.read_images_binary,
        (".bin", "points3D"): cpu.read_points3D_binary,
        (".txt", "cameras"): cpu.read_cameras_text,
        (".txt", "images"): cpu.read_images_text,
        (".txt", "points3D"): cpu.read_points3D_text,
    }
    if ext == ".bin":
        _check_binary_count(file, kind)
    try:
        return readers[(ext, kind)](str(file))
    except _PARSE_ERRORS as err:
        if ext == ".bin" and isinstance(err, KeyError) and kind == "cameras":
            raise InputError(
                f"{file}: unsupported COLMAP camera model id {err.args[0]} (supported: {', '.join(SUPPORTED_CAMERA_MODELS)})"
            ) from None
        reason = "truncated" if isinstance(err, struct.error) else f"{type(err).__name__}: {err}"
        raise InputError(f"{file}: cannot parse COLMAP {kind} file ({reason})") from None


def _validate(model: ColmapModel, directory: Path, ext: str) -> None:
    cam_file = directory / f"cameras{ext}"
    for cam in model.cameras.values():
        spec = cpu.CAMERA_MODEL_NAMES.get(cam.model)
        if spec is None:
            raise InputError(
                f"{cam_file}: camera {cam.id} has unsupported model {cam.model!r} "
                f"(supported: {', '.join(SUPPORTED_CAMERA_MODELS)})"
            )
        if len(cam.params) != spec.num_params:
            raise InputError(
                f"{cam_file}: camera {cam.id} ({cam.model}) has {len(cam.params)} parameters, expected {spec.num_params}"
            )
    img_file = directory / f"images{ext}"
    for im in model.images.values():
        if im.camera_id not in model.cameras:
            raise InputError(f"{img_file}: image {im.id} ({im.name}) refers to camera {im.camera_id}, which is not in {cam_file}")
        q = np.asarray(im.qvec, dtype=np.float64)
        t = np.asarray(im.tvec, dtype=np.float64)
        if not (np.isfinite(q).all() and np.isfinite(t).all()) or np.linalg.norm(q) < 1e-12:
            raise InputError(f"{img_file}: image {im.id} ({im.name}) has an invalid pose (qvec {q.tolist()}, tvec {t.tolist()})")


def read_colmap_model(path: str | os.PathLike[str]) -> ColmapModel:
    """Read a COLMAP model (binary preferred over text) from ``path`` or its ``sparse/0`` etc.

    Raises:
        InputError: no model there, a missing/truncated/unparseable file, an unsupported camera model,
            an image referring to an unknown camera, or an invalid pose. The message names the file.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such COLMAP model directory")
    found = find_colmap_model_dir(path)
    if found is None:
        present = [f"{k}{e}" for k in MODEL_FILES for e in (".bin", ".txt") if (path / f"{k}{e}").is_file()]
        detail = f" (found only {', '.join(present)})" if present else ""
        raise InputError(
            f"{path}: not a COLMAP model: expected cameras/images/points3D .bin or .txt there or in sparse/0{detail}"
        )
    directory, ext = found
    cameras = _read_one(directory / f"cameras{ext}", "cameras", ext)
    images = _read_one(directory / f"images{ext}", "images", ext)
    points3D = _read_one(directory / f"points3D{ext}", "points3D", ext)
    model = ColmapModel(cameras=cameras, images=images, points3D=points3D, path=str(directory))
    _validate(model, directory, ext)
    return model


def write_colmap_model(
    model: ColmapModel, path: str | os.PathLike[str], formats: Iterable[str] = ("bin", "txt")
) -> Path:
    """Write ``cameras``, ``images`` and ``points3D`` in each of ``formats`` (``"bin"``, ``"txt"``)
    into the directory ``path`` (created if needed), with nerfstudio's writers.

    No ``rigs``/``frames`` files are written, and stale ones in ``path`` are deleted: COLMAP >= 3.12
    would otherwise take the poses from them instead of from ``images``. Readers of a directory
    holding both formats (pycolmap, nerfstudio) read the binary one.

    Returns:
        The directory written.
    """
    formats = tuple(formats)
    bad = [f for f in formats if f not in ("bin", "txt")]
    if bad or not formats:
        raise ValueError(f"formats must be a non-empty subset of ('bin', 'txt'), got {formats}")
    for cam in model.cameras.values():
        if cam.model not in cpu.CAMERA_MODEL_NAMES:
            raise InputError(f"camera {cam.id}: cannot write unsupported camera model {cam.model!r}")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    images = {k: _as_array_image(v) for k, v in model.images.items()}
    points3D = {k: _as_array_point(v) for k, v in model.points3D.items()}
    for fmt in formats:
        cpu.write_model(model.cameras, images, points3D, str(out), ext=f".{fmt}")
    for stale in RIG_FILES:
        for ext in (".bin", ".txt"):
            (out / f"{stale}{ext}").unlink(missing_ok=True)
    return out


def _as_array_image(im: Any) -> Any:
    """nerfstudio's writers call ``.tolist()`` and ``len()`` on these fields: make them arrays."""
    return im._replace(
        qvec=np.asarray(im.qvec, dtype=np.float64),
        tvec=np.asarray(im.tvec, dtype=np.float64),
        xys=np.asarray(im.xys, dtype=np.float64).reshape(-1, 2),
        point3D_ids=np.asarray(im.point3D_ids, dtype=np.int64).reshape(-1),
    )


def _as_array_point(pt: Any) -> Any:
    return pt._replace(
        xyz=np.asarray(pt.xyz, dtype=np.float64),
        rgb=np.asarray(pt.rgb, dtype=np.int64),
        error=float(pt.error),
        image_ids=np.asarray(pt.image_ids, dtype=np.int64).reshape(-1),
        point2D_idxs=np.asarray(pt.point2D_idxs, dtype=np.int64).reshape(-1),
    )


def colmap_model_from_poses(
    names: Sequence[str],
    c2w: np.ndarray,
    width: int,
    height: int,
    focal: float,
    camera_model: str = "PINHOLE",
) -> ColmapModel:
    """A minimal in-memory model: one shared camera (``PINHOLE fx=fy=focal``, principal point at the
    image centre, or ``SIMPLE_PINHOLE``), one image per pose (camera-to-world, OpenCV axes), no points.
    Useful for tests and synthetic scenes."""
    if camera_model == "PINHOLE":
        params = np.array([focal, focal, width / 2.0, height / 2.0])
    elif camera_model == "SIMPLE_PINHOLE":
        params = np.array([focal, width / 2.0, height / 2.0])
    else:
        raise ValueError(f"camera_model must be PINHOLE or SIMPLE_PINHOLE, got {camera_model!r}")
    cameras = {1: cpu.Camera(id=1, model=camera_model, width=int(width), height=int(height), params=params)}
    qvec, tvec = c2w_to_colmap(c2w)
    images = {
        i + 1: cpu.Image(
            id=i + 1,
            qvec=qvec[i],
            tvec=tvec[i],
            camera_id=1,
            name=name,
            xys=np.zeros((0, 2)),
            point3D_ids=np.zeros(0, dtype=np.int64),
        )
        for i, name in enumerate(names)
    }
    return ColmapModel(cameras=cameras, images=images, points3D={})
