"""COLMAP sparse models: read with nerfstudio's ``colmap_parsing_utils``, written here.

Reading uses nerfstudio's parsers (``read_cameras_binary``, ...) and gives their records; ``images.txt`` is read
here so that image names may contain spaces, and ``images.bin`` / ``points3D.bin`` from one read of each file
with their arrays taken whole (nerfstudio's parsers read them a field at a time: ~1 s per 400k observations, 12 s
of a 5000-image refine); this module adds format detection, validation (unique image names and
ids, known cameras, finite poses) with :class:`~nerf_posefix.errors.InputError` messages naming the file,
the conversion to a :class:`~nerf_posefix.io.camera_set.CameraSet`, and pose replacement.

Writing is done here, byte for byte in COLMAP's format (``src/colmap/scene/reconstruction_io.cc``):
nerfstudio's ``write_images_binary`` packs each *character* of a name as one byte (``struct`` format
``"c"``), so any name with a non-ASCII character (``img 007 é.png``) raises ``struct.error``, and its text
writers use the locale's encoding. Here names are written as their UTF-8 bytes followed by a NUL, as
COLMAP does, and text files are UTF-8. COLMAP's own text reader (and pycolmap's) stops an image name at
its first space, so a model whose image names hold white space is written in the binary format only
(:func:`text_unsafe_names`; callers say so), which every reader here prefers and which has no such limit.

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
from typing import Any, Optional

import numpy as np
from nerfstudio.data.utils import colmap_parsing_utils as cpu

from nerf_posefix.errors import InputError
from nerf_posefix.geometry.poses import c2w_to_colmap, colmap_to_c2w
from nerf_posefix.io.camera_set import CameraSet


#: Camera models this module reads and writes: those of nerfstudio's table (COLMAP model ids 0-10),
#: i.e. SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL, OPENCV, OPENCV_FISHEYE, FULL_OPENCV, ... (what
#: ``compare`` and ``perturb`` accept; ``refine`` trains on fewer, see
#: :data:`nerf_posefix.sfm.inputs.REFINE_CAMERA_MODELS`, and its messages list those).
SUPPORTED_CAMERA_MODELS: tuple[str, ...] = tuple(
    m.model_name for m in sorted(cpu.CAMERA_MODELS, key=lambda m: m.model_id)
)

MODEL_FILES = ("cameras", "images", "points3D")
#: Files of COLMAP >= 3.12 that would override the image poses if left next to a written model.
RIG_FILES = ("rigs", "frames")
#: Directories, relative to a given path, searched for a model (COLMAP and nerfstudio layouts).
MODEL_SUBDIRS = ("", "0", "sparse/0", "sparse", "colmap/sparse/0", "colmap/sparse")

# Smallest on-disk size of one record of each binary file (used to reject absurd counts early).
_MIN_RECORD_BYTES = {"cameras": 24, "images": 64 + 1 + 8, "points3D": 43 + 8}

# Exceptions nerfstudio's parsers raise on truncated or malformed files.
_PARSE_ERRORS = (struct.error, ValueError, IndexError, KeyError, AssertionError, TypeError, MemoryError, OverflowError)


@dataclass
class Observations:
    """Every 2D observation of a model's 3D points, flattened (image-id order, then keypoint order).

    Attributes:
        point_ids: ``[P]`` the model's point3D ids, sorted (the row order of ``point_index``).
        image_index: ``[K]`` position of the observing image in :meth:`ColmapModel.image_ids`.
        point_index: ``[K]`` row of the observed point in ``point_ids``.
        xy: ``[K, 2]`` keypoint positions, pixels, COLMAP's convention (top-left pixel centre (0.5, 0.5)).
        dangling: ``[D, 2]`` ``(image position, point3D id)`` of observations whose point is not in the
            model (skipped above; COLMAP never writes them).
    """

    point_ids: np.ndarray
    image_index: np.ndarray
    point_index: np.ndarray
    xy: np.ndarray
    dangling: np.ndarray

    def __len__(self) -> int:
        return int(self.image_index.shape[0])


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

    def changed_camera_ids(self, before: "ColmapModel") -> list[int]:
        """The ids of this model's cameras whose parameters differ from the same camera's in ``before`` (sorted;
        cameras ``before`` lacks are left out): the cameras an adjustment refined."""
        return [k for k in sorted(self.cameras)
                if k in before.cameras and list(before.cameras[k].params) != list(self.cameras[k].params)]

    def observations(self) -> Observations:
        """The images' observations of the model's points (``POINT3D_ID = -1`` skipped; see
        :class:`Observations`)."""
        point_ids = np.array(sorted(self.points3D), dtype=np.int64)  # [P]
        images, points, xys, dangling = [], [], [], []
        for k, image_id in enumerate(self.image_ids()):
            im = self.images[image_id]
            ids = np.asarray(im.point3D_ids, dtype=np.int64).reshape(-1)
            xy = np.asarray(im.xys, dtype=np.float64).reshape(-1, 2)
            keep = ids >= 0
            ids, xy = ids[keep], xy[keep]
            rows = np.clip(np.searchsorted(point_ids, ids), 0, max(len(point_ids) - 1, 0))
            known = point_ids[rows] == ids if len(point_ids) else np.zeros(len(ids), dtype=bool)
            images.append(np.full(int(known.sum()), k, dtype=np.int64))
            points.append(rows[known])
            xys.append(xy[known])
            dangling.append(np.stack([np.full(int((~known).sum()), k), ids[~known]], axis=-1))
        return Observations(
            point_ids=point_ids,
            image_index=np.concatenate(images) if images else np.zeros(0, dtype=np.int64),
            point_index=np.concatenate(points) if points else np.zeros(0, dtype=np.int64),
            xy=np.concatenate(xys) if xys else np.zeros((0, 2)),
            dangling=np.concatenate(dangling).astype(np.int64) if dangling else np.zeros((0, 2), dtype=np.int64),
        )

    def to_camera_set(self, source: str | None = None, observations: bool = True) -> CameraSet:
        """The images as a :class:`CameraSet`: camera-to-world poses (OpenCV axes) in image-id order,
        the 3D points ``[P, 3]`` in point-id order, and (``observations``) per image the indices (into
        ``points``, sorted, unique) of the points it observes (``POINT3D_ID = -1`` and ids missing from
        ``points3D`` are skipped); without ``observations`` the camera set has none (cheaper)."""
        ids = self.image_ids()
        images = [self.images[i] for i in ids]
        if images:
            qvec = np.stack([np.asarray(im.qvec, dtype=np.float64) for im in images])  # [N, 4]
            tvec = np.stack([np.asarray(im.tvec, dtype=np.float64) for im in images])  # [N, 3]
            c2w = colmap_to_c2w(qvec, tvec)
        else:
            c2w = np.zeros((0, 4, 4))
        point_ids = sorted(self.points3D)
        points = (
            np.array([self.points3D[p].xyz for p in point_ids], dtype=np.float64).reshape(-1, 3)
            if point_ids
            else np.zeros((0, 3))
        )
        per_image = None
        if observations:
            obs = self.observations()
            order = np.lexsort((obs.point_index, obs.image_index))  # by image, then point
            image, point = obs.image_index[order], obs.point_index[order]
            first = np.ones(image.size, dtype=bool)
            first[1:] = (image[1:] != image[:-1]) | (point[1:] != point[:-1])  # drop repeated (image, point)
            image, point = image[first], point[first]
            bounds = np.searchsorted(image, np.arange(len(images) + 1))
            per_image = [point[bounds[k]:bounds[k + 1]] for k in range(len(images))]
        return CameraSet(
            names=[im.name for im in images],
            c2w=c2w,
            points=points,
            observations=per_image,
            source=source if source is not None else (self.path or "colmap model"),
        )

    def subset(self, names: Iterable[str]) -> "ColmapModel":
        """A copy with only the images named ``names`` (ids, poses and cameras as they are; the cameras no kept
        image uses are dropped) and the points at least two of them observe, each point's track restricted to
        them; a kept image's observations of a dropped point get ``POINT3D_ID = -1`` (COLMAP's "no point").

        Raises:
            InputError: a name is not an image of the model.
        """
        keep = set(names)
        by_name = {im.name: image_id for image_id, im in self.images.items()}
        unknown = [n for n in keep if n not in by_name]
        if unknown:
            raise InputError(f"{len(unknown)} name(s) are not images of the COLMAP model {self.path or '(in memory)'}: {_preview(sorted(unknown))}")
        ids = {by_name[n] for n in keep}
        points3D = {}
        for pid, pt in self.points3D.items():
            image_ids = np.asarray(pt.image_ids, dtype=np.int64).reshape(-1)
            inside = np.isin(image_ids, list(ids))
            if int(inside.sum()) >= 2:
                points3D[pid] = pt._replace(image_ids=image_ids[inside], point2D_idxs=np.asarray(pt.point2D_idxs, dtype=np.int64).reshape(-1)[inside])
        point_ids = np.array(sorted(points3D), dtype=np.int64)
        images = {}
        for image_id in sorted(ids):
            im = self.images[image_id]
            observed = np.asarray(im.point3D_ids, dtype=np.int64).reshape(-1)
            images[image_id] = im._replace(point3D_ids=np.where(np.isin(observed, point_ids), observed, -1))
        cameras = {k: c for k, c in self.cameras.items() if k in {im.camera_id for im in images.values()}}
        return replace(self, cameras=cameras, images=images, points3D=points3D)

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
    ``".txt"``), or None. Looks in ``path`` itself, then ``0`` (``path`` is COLMAP's ``sparse`` folder),
    ``sparse/0``, ``sparse``, ``colmap/sparse/0`` and ``colmap/sparse``. A directory counts as a model when it has ``cameras`` and ``images`` files
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


def _check_binary_count(file: Path, kind: str) -> int:
    """Reject a binary file whose leading record count cannot fit in its size (garbage or truncation);
    returns the count."""
    size = file.stat().st_size
    if size < 8:
        raise InputError(f"{file}: truncated COLMAP file ({size} bytes, expected at least an 8-byte count)")
    with open(file, "rb") as fid:
        (count,) = struct.unpack("<Q", fid.read(8))
    if count * _MIN_RECORD_BYTES[kind] > size - 8:
        raise InputError(f"{file}: truncated or not a COLMAP {kind} file (header says {count} records, file has {size} bytes)")
    return int(count)


def _read_images_text(path: str) -> dict[int, Any]:
    """``images.txt`` as nerfstudio's ``read_images_text`` reads it, except that the name is the rest of
    the line after the camera id (names may contain spaces) and the file is read as UTF-8."""
    images: dict[int, Any] = {}
    with open(path, encoding="utf-8") as fid:
        lines = iter(fid)
        for line in lines:
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            head = line.rstrip("\r\n").lstrip().split(maxsplit=9)
            if len(head) < 10:
                raise ValueError(f"image line {stripped[:60]!r} has {len(head)} fields, expected 10")
            image_id = int(head[0])
            if image_id in images:
                raise _DuplicateId(image_id)
            elems = next(lines, "").split()
            if len(elems) % 3:
                raise ValueError(f"the POINTS2D line of image {image_id} has {len(elems)} values, not a multiple of 3")
            images[image_id] = cpu.Image(
                id=image_id,
                qvec=np.array(tuple(map(float, head[1:5]))),
                tvec=np.array(tuple(map(float, head[5:8]))),
                camera_id=int(head[8]),
                name=head[9],
                xys=np.column_stack([tuple(map(float, elems[0::3])), tuple(map(float, elems[1::3]))]).reshape(-1, 2),
                point3D_ids=np.array(tuple(map(int, elems[2::3])), dtype=np.int64),
            )
    return images


#: The fixed head of one record of images.bin (id, qvec, tvec, camera id) and of points3D.bin (id, xyz, rgb,
#: error, track length); little-endian, as COLMAP writes them.
_IMAGE_HEAD = struct.Struct("<i4d3di")
_POINT_HEAD = struct.Struct("<Q3d3BdQ")
#: One 2D observation of images.bin: x, y (float64), point3D_id (int64).
_POINT2D = np.dtype([("x", "<f8"), ("y", "<f8"), ("id", "<i8")])
#: One track element of points3D.bin: image id, point2D index (int32 each).
_TRACK_ELEMENT = np.dtype([("image", "<i4"), ("idx", "<i4")])
#: :data:`_POINT_HEAD` as a packed NumPy record.
_POINT_RECORD = np.dtype([("id", "<u8"), ("xyz", "<f8", 3), ("rgb", "u1", 3), ("error", "<f8"), ("length", "<u8")])


def _array_at(data: bytes, dtype: np.dtype, count: int, offset: int) -> np.ndarray:
    """``count`` records of ``dtype`` at ``offset`` in ``data`` (a view); :class:`struct.error` when the file ends first."""
    if offset + count * dtype.itemsize > len(data):
        raise struct.error(f"{count} records of {dtype.itemsize} bytes at byte {offset} run past the end ({len(data)} bytes)")
    return np.frombuffer(data, dtype=dtype, count=count, offset=offset)


#: Records gathered or scattered per batch by :func:`_records_at` / :func:`_put_records_at`: their byte index arrays
#: (8 bytes per byte moved) stay near 64 MB whatever the model's size.
_BATCH_BYTES = 2**23


def _records_at(raw: np.ndarray, at: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """The records of ``dtype`` starting at the byte offsets ``at [K]`` of ``raw`` (bytes as ``uint8``): ``[K]``."""
    out = np.empty(len(at), dtype=dtype)
    step = max(1, _BATCH_BYTES // dtype.itemsize)
    span = np.arange(dtype.itemsize)
    for k in range(0, len(at), step):
        out[k:k + step] = raw[at[k:k + step, None] + span].view(dtype)[:, 0]
    return out


def _put_records_at(out: np.ndarray, at: np.ndarray, records: np.ndarray) -> None:
    """Write ``records [K]`` into ``out`` (bytes as ``uint8``) at the byte offsets ``at [K]``."""
    size = records.dtype.itemsize
    step = max(1, _BATCH_BYTES // size)
    span = np.arange(size)
    as_bytes = records.view(np.uint8).reshape(len(records), size)
    for k in range(0, len(at), step):
        out[at[k:k + step, None] + span] = as_bytes[k:k + step]


def _track_element_offsets(record_at: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``[T]`` byte offsets in points3D.bin of every track element, the tracks one after another: each point's come
    after its head (:data:`_POINT_HEAD`), which starts at ``record_at [N]``; ``lengths [N]``: the tracks' lengths."""
    element = np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)  # [T] within its track
    return np.repeat(record_at + _POINT_HEAD.size, lengths) + element * _TRACK_ELEMENT.itemsize


def _read_images_binary(path: str) -> dict[int, Any]:
    """``images.bin`` as nerfstudio's ``read_images_binary`` reads it (same records and types), from one read of
    the file: the parser's per-observation Python loop took ~1 s per 400k observations."""
    data = Path(path).read_bytes()
    (count,) = struct.unpack_from("<Q", data, 0)
    offset, images = 8, {}
    for _ in range(count):
        image_id, qw, qx, qy, qz, tx, ty, tz, camera_id = _IMAGE_HEAD.unpack_from(data, offset)
        offset += _IMAGE_HEAD.size
        end = data.index(b"\x00", offset)  # ValueError when the name never ends
        name = data[offset:end].decode("utf-8")
        (num_points2D,) = struct.unpack_from("<Q", data, end + 1)
        offset = end + 9
        points = _array_at(data, _POINT2D, num_points2D, offset)
        offset += num_points2D * _POINT2D.itemsize
        images[image_id] = cpu.Image(
            id=image_id, qvec=np.array((qw, qx, qy, qz)), tvec=np.array((tx, ty, tz)), camera_id=camera_id, name=name,
            xys=np.column_stack((points["x"], points["y"])), point3D_ids=points["id"].astype(np.int64),
        )
    return images


def _read_points3D_binary(path: str) -> dict[int, Any]:
    """``points3D.bin`` as nerfstudio's ``read_points3D_binary`` reads it (the same records; each point's ``error``
    a NumPy scalar), from one read of the file and its fields gathered whole: the parser reads it a field at a time
    (~1 s per 70k points, 10 s of a 5000-image refine)."""
    data = Path(path).read_bytes()
    (count,) = struct.unpack_from("<Q", data, 0)
    starts, lengths = [], []
    offset, length_at = 8, _POINT_HEAD.size - 8
    unpack_length = struct.Struct("<Q").unpack_from
    for _ in range(count):  # the records' offsets: each one's length says where the next starts
        (length,) = unpack_length(data, offset + length_at)
        starts.append(offset)
        lengths.append(length)
        offset += _POINT_HEAD.size + length * _TRACK_ELEMENT.itemsize
    if offset > len(data):
        raise struct.error(f"the last point's track runs past the end of the file ({offset} > {len(data)} bytes)")
    raw = np.frombuffer(data, dtype=np.uint8)
    first = np.asarray(starts, dtype=np.int64)  # [N] byte offsets of the records
    track_len = np.asarray(lengths, dtype=np.int64)  # [N]
    heads = _records_at(raw, first, _POINT_RECORD)  # [N]
    track = _records_at(raw, _track_element_offsets(first, track_len), _TRACK_ELEMENT)  # [T]
    image_ids, point2D_idxs = track["image"].astype(np.int64), track["idx"].astype(np.int64)  # [T] each
    xyz, rgb = heads["xyz"].astype(np.float64), heads["rgb"].astype(np.int64)  # [N, 3] each
    ends = np.cumsum(track_len).tolist()
    points, begin = {}, 0
    for i, (point_id, error, end) in enumerate(zip(heads["id"].tolist(), list(heads["error"].copy()), ends)):
        points[point_id] = cpu.Point3D(id=point_id, xyz=xyz[i], rgb=rgb[i], error=error,
                                       image_ids=image_ids[begin:end], point2D_idxs=point2D_idxs[begin:end])
        begin = end
    return points


class _DuplicateId(Exception):
    """An id that appears twice in a model file."""


def _read_one(file: Path, kind: str, ext: str, supported: Sequence[str]) -> dict[int, Any]:
    if not file.is_file():
        raise InputError(f"{file}: missing COLMAP {kind} file")
    readers = {
        (".bin", "cameras"): cpu.read_cameras_binary,
        (".bin", "images"): _read_images_binary,
        (".bin", "points3D"): _read_points3D_binary,
        (".txt", "cameras"): cpu.read_cameras_text,
        (".txt", "images"): _read_images_text,
        (".txt", "points3D"): cpu.read_points3D_text,
    }
    try:
        count = _check_binary_count(file, kind) if ext == ".bin" else None
        records = readers[(ext, kind)](str(file))
    except OSError as err:
        raise InputError(f"{file}: cannot read the COLMAP {kind} file ({err.strerror or err})") from None
    except _DuplicateId as err:
        raise InputError(f"{file}: {kind} id {err.args[0]} appears more than once") from None
    except _PARSE_ERRORS as err:
        if ext == ".bin" and isinstance(err, KeyError) and kind == "cameras":
            raise InputError(
                f"{file}: unsupported COLMAP camera model id {err.args[0]} (supported: {', '.join(supported)})"
            ) from None
        reason = "truncated" if isinstance(err, struct.error) else f"{type(err).__name__}: {err}"
        raise InputError(f"{file}: cannot parse COLMAP {kind} file ({reason})") from None
    if count is not None and count != len(records):
        raise InputError(
            f"{file}: {count} {kind} records but {len(records)} distinct ids: some {kind} id appears more than once"
        )
    return records


def _validate(model: ColmapModel, directory: Path, ext: str, supported: Sequence[str]) -> None:
    cam_file = directory / f"cameras{ext}"
    for cam in model.cameras.values():
        spec = cpu.CAMERA_MODEL_NAMES.get(cam.model)
        if spec is None:
            raise InputError(
                f"{cam_file}: camera {cam.id} has unsupported model {cam.model!r} "
                f"(supported: {', '.join(supported)})"
            )
        if len(cam.params) != spec.num_params:
            raise InputError(
                f"{cam_file}: camera {cam.id} ({cam.model}) has {len(cam.params)} parameters, expected {spec.num_params}"
            )
    img_file = directory / f"images{ext}"
    by_name: dict[str, list[int]] = {}
    for image_id in sorted(model.images):
        by_name.setdefault(model.images[image_id].name, []).append(image_id)
    dups = {name: ids for name, ids in by_name.items() if len(ids) > 1}
    if dups:
        listed = "; ".join(f"{name!r} (images {', '.join(map(str, ids))})" for name, ids in list(dups.items())[:5])
        more = f"; ... ({len(dups) - 5} more)" if len(dups) > 5 else ""
        raise InputError(
            f"{img_file}: {len(dups)} image name(s) used by several images: {listed}{more}; "
            "each image of a COLMAP model needs its own name"
        )
    for im in model.images.values():
        if im.camera_id not in model.cameras:
            raise InputError(f"{img_file}: image {im.id} ({im.name}) refers to camera {im.camera_id}, which is not in {cam_file}")
        q = np.asarray(im.qvec, dtype=np.float64)
        t = np.asarray(im.tvec, dtype=np.float64)
        if not (np.isfinite(q).all() and np.isfinite(t).all()) or np.linalg.norm(q) < 1e-12:
            raise InputError(f"{img_file}: image {im.id} ({im.name}) has an invalid pose (qvec {q.tolist()}, tvec {t.tolist()})")


def read_colmap_model(path: str | os.PathLike[str], supported: Optional[Sequence[str]] = None) -> ColmapModel:
    """Read a COLMAP model (binary preferred over text) from ``path`` or its ``sparse/0`` etc.

    Args:
        supported: the camera models listed in messages about an unknown camera model (default
            :data:`SUPPORTED_CAMERA_MODELS`; ``refine`` passes the fewer it trains on).

    Raises:
        InputError: no model there, a missing/unreadable/truncated/unparseable file, an unsupported
            camera model, an image or camera id used twice, an image name used by several images, an
            image referring to an unknown camera, or an invalid pose. The message names the file.
    """
    path = Path(path)
    supported = tuple(supported) if supported is not None else SUPPORTED_CAMERA_MODELS
    if not path.exists():
        raise InputError(f"{path}: no such COLMAP model directory")
    if path.is_dir():
        try:
            os.listdir(path)
        except OSError as err:
            raise InputError(f"{path}: cannot read the COLMAP model directory ({err.strerror or err})") from None
    found = find_colmap_model_dir(path)
    if found is None:
        present = [f"{k}{e}" for k in MODEL_FILES for e in (".bin", ".txt") if (path / f"{k}{e}").is_file()]
        detail = f" (found only {', '.join(present)})" if present else ""
        raise InputError(
            f"{path}: not a COLMAP model: expected cameras/images/points3D .bin or .txt there, in 0 or in sparse/0{detail}"
        )
    directory, ext = found
    cameras = _read_one(directory / f"cameras{ext}", "cameras", ext, supported)
    images = _read_one(directory / f"images{ext}", "images", ext, supported)
    points3D = _read_one(directory / f"points3D{ext}", "points3D", ext, supported)
    model = ColmapModel(cameras=cameras, images=images, points3D=points3D, path=str(directory))
    _validate(model, directory, ext, supported)
    return model


def text_unsafe_names(names: Iterable[str]) -> list[str]:
    """The image names COLMAP's text format cannot hold: COLMAP and pycolmap read a name in ``images.txt``
    only up to its first white space (``img 007.png`` reads back as ``img``)."""
    return [n for n in names if any(c.isspace() for c in n)]


def write_colmap_model(
    model: ColmapModel, path: str | os.PathLike[str], formats: Iterable[str] = ("bin", "txt")
) -> Path:
    """Write ``cameras``, ``images`` and ``points3D`` in each of ``formats`` (``"bin"``, ``"txt"``)
    into the directory ``path`` (created if needed), in COLMAP's format (see the module docstring: any
    UTF-8 image name). When some image name holds white space (:func:`text_unsafe_names`), the text
    files are not written (nor left from an earlier write) and the binary ones are, whatever ``formats``
    says: COLMAP would read such a text model with other names.

    No ``rigs``/``frames`` files are written, and stale ones in ``path`` are deleted: COLMAP >= 3.12
    would otherwise take the poses from them instead of from ``images``. Readers of a directory
    holding both formats (pycolmap, nerfstudio) read the binary one.

    Raises:
        InputError: an unsupported camera model, an image name with a NUL or line break, a point colour outside
            0-255 (which COLMAP's files cannot hold).

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
    for im in model.images.values():
        if any(c in im.name for c in "\x00\r\n"):
            raise InputError(f"image {im.id}: cannot write the image name {im.name!r} (NUL or line break) in a COLMAP model")
    points3D = _PointTable.of(model.points3D)
    if points3D.rgb.size and (points3D.rgb.min() < 0 or points3D.rgb.max() > 255):
        raise InputError("cannot write a point colour outside 0-255 in a COLMAP model")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    if "txt" in formats and text_unsafe_names(im.name for im in model.images.values()):
        formats = ("bin",)
        for kind in MODEL_FILES:
            (out / f"{kind}.txt").unlink(missing_ok=True)
    images = {k: _as_array_image(v) for k, v in model.images.items()}
    for fmt in formats:
        if fmt == "bin":
            _write_cameras_binary(model.cameras, out / "cameras.bin")
            _write_images_binary(images, out / "images.bin")
            _write_points3D_binary(points3D, out / "points3D.bin")
        else:
            _write_cameras_text(model.cameras, out / "cameras.txt")
            _write_images_text(images, out / "images.txt")
            _write_points3D_text(points3D, out / "points3D.txt")
    for stale in RIG_FILES:
        for ext in (".bin", ".txt"):
            (out / f"{stale}{ext}").unlink(missing_ok=True)
    return out


def _write_cameras_binary(cameras: dict[int, Any], path: Path) -> None:
    with open(path, "wb") as fid:
        fid.write(struct.pack("<Q", len(cameras)))
        for cam in cameras.values():
            spec = cpu.CAMERA_MODEL_NAMES[cam.model]
            params = np.asarray(cam.params, dtype="<f8").reshape(-1)
            fid.write(struct.pack("<iiQQ", int(cam.id), int(spec.model_id), int(cam.width), int(cam.height)))
            fid.write(params.tobytes())


def _write_images_binary(images: dict[int, Any], path: Path) -> None:
    with open(path, "wb") as fid:
        fid.write(struct.pack("<Q", len(images)))
        for im in images.values():
            fid.write(struct.pack("<i4d3di", int(im.id), *im.qvec.tolist(), *im.tvec.tolist(), int(im.camera_id)))
            fid.write(im.name.encode("utf-8") + b"\x00")
            points = np.empty(len(im.point3D_ids), dtype=_POINT2D)
            points["x"], points["y"], points["id"] = im.xys[:, 0], im.xys[:, 1], im.point3D_ids
            fid.write(struct.pack("<Q", len(points)))
            fid.write(points.tobytes())


def _write_points3D_binary(points3D: "_PointTable", path: Path) -> None:
    """The records laid out whole: each point's head (:data:`_POINT_RECORD`) then its track elements."""
    n, total = len(points3D.ids), len(points3D.image_ids)
    heads = np.empty(n, dtype=_POINT_RECORD)
    heads["id"], heads["xyz"], heads["rgb"], heads["error"], heads["length"] = (
        points3D.ids, points3D.xyz, points3D.rgb, points3D.error, points3D.lengths)
    track = np.empty(total, dtype=_TRACK_ELEMENT)
    track["image"], track["idx"] = points3D.image_ids, points3D.point2D_idxs
    before = np.cumsum(points3D.lengths) - points3D.lengths  # [N] track elements before each point
    head_at = 8 + np.arange(n, dtype=np.int64) * _POINT_HEAD.size + before * _TRACK_ELEMENT.itemsize  # [N] byte offsets
    out = np.empty(8 + n * _POINT_HEAD.size + total * _TRACK_ELEMENT.itemsize, dtype=np.uint8)
    out[:8] = np.frombuffer(struct.pack("<Q", n), dtype=np.uint8)
    _put_records_at(out, head_at, heads)
    _put_records_at(out, _track_element_offsets(head_at, points3D.lengths), track)
    path.write_bytes(out.tobytes())


def _numbers(values: Iterable[Any]) -> str:
    return " ".join(repr(v) for v in values)


def _write_cameras_text(cameras: dict[int, Any], path: Path) -> None:
    lines = [
        "# Camera list with one line of data per camera:",
        "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]",
        f"# Number of cameras: {len(cameras)}",
    ]
    for cam in cameras.values():
        params = np.asarray(cam.params, dtype=np.float64).reshape(-1).tolist()
        lines.append(f"{int(cam.id)} {cam.model} {int(cam.width)} {int(cam.height)} {_numbers(params)}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _write_images_text(images: dict[int, Any], path: Path) -> None:
    mean_obs = np.mean([len(im.point3D_ids) for im in images.values()]) if images else 0.0
    with open(path, "w", encoding="utf-8", newline="\n") as fid:
        fid.write(
            "# Image list with two lines of data per image:\n"
            "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME\n"
            "#   POINTS2D[] as (X, Y, POINT3D_ID)\n"
            f"# Number of images: {len(images)}, mean observations per image: {mean_obs}\n"
        )
        for im in images.values():
            pose = _numbers([*im.qvec.tolist(), *im.tvec.tolist()])
            fid.write(f"{int(im.id)} {pose} {int(im.camera_id)} {im.name}\n")
            fields: list[str] = [""] * (3 * len(im.point3D_ids))
            fields[0::3] = map(repr, im.xys[:, 0].tolist())
            fields[1::3] = map(repr, im.xys[:, 1].tolist())
            fields[2::3] = map(str, im.point3D_ids.tolist())
            fid.write(" ".join(fields) + "\n")


def _write_points3D_text(points3D: "_PointTable", path: Path) -> None:
    n = len(points3D.ids)
    mean_track = float(np.mean(points3D.lengths)) if n else 0.0
    pairs = np.column_stack((points3D.image_ids, points3D.point2D_idxs)).ravel().tolist()  # [2T] image, idx, ...
    ends = (2 * np.cumsum(points3D.lengths)).tolist()
    with open(path, "w", encoding="utf-8", newline="\n") as fid:
        fid.write(
            "# 3D point list with one line of data per point:\n"
            "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)\n"
            f"# Number of points: {n}, mean track length: {mean_track}\n"
        )
        begin = 0
        for point_id, (x, y, z), (r, g, b), error, end in zip(points3D.ids.tolist(), points3D.xyz.tolist(),
                                                              points3D.rgb.tolist(), points3D.error.tolist(), ends):
            track = " ".join(map(str, pairs[begin:end]))
            fid.write(f"{point_id} {x!r} {y!r} {z!r} {r} {g} {b} {error!r} {track}\n")
            begin = end


def _as_array_image(im: Any) -> Any:
    """Fields as arrays of COLMAP's types (the parsers and in-memory models give lists or arrays)."""
    return im._replace(
        qvec=np.asarray(im.qvec, dtype=np.float64),
        tvec=np.asarray(im.tvec, dtype=np.float64),
        xys=np.asarray(im.xys, dtype=np.float64).reshape(-1, 2),
        point3D_ids=np.asarray(im.point3D_ids, dtype=np.int64).reshape(-1),
    )


@dataclass
class _PointTable:
    """A model's 3D points as columns of COLMAP's types, in the model's order (``N`` points, ``T`` track elements)."""

    ids: np.ndarray  # [N] int64
    xyz: np.ndarray  # [N, 3] float64, world frame
    rgb: np.ndarray  # [N, 3] int64
    error: np.ndarray  # [N] float64, mean reprojection error (px)
    lengths: np.ndarray  # [N] int64, track lengths
    image_ids: np.ndarray  # [T] int64, the tracks one after another
    point2D_idxs: np.ndarray  # [T] int64

    @classmethod
    def of(cls, points3D: dict[int, Any]) -> "_PointTable":
        pts = list(points3D.values())
        ids = [np.asarray(pt.image_ids, dtype=np.int64).reshape(-1) for pt in pts]
        idxs = [np.asarray(pt.point2D_idxs, dtype=np.int64).reshape(-1) for pt in pts]
        return cls(
            ids=np.array([int(pt.id) for pt in pts], dtype=np.int64),
            xyz=np.array([pt.xyz for pt in pts], dtype=np.float64).reshape(-1, 3),
            rgb=np.array([pt.rgb for pt in pts], dtype=np.int64).reshape(-1, 3),
            error=np.array([float(pt.error) for pt in pts], dtype=np.float64),
            lengths=np.array([len(a) for a in ids], dtype=np.int64),
            image_ids=np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64),
            point2D_idxs=np.concatenate(idxs) if idxs else np.zeros(0, dtype=np.int64),
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


# ---------------------------------------------------------------------------------------------
# COLMAP databases (features and matches), read-only


#: Tables every COLMAP database has (what :func:`check_colmap_database` looks for).
DATABASE_TABLES = ("cameras", "images", "keypoints", "descriptors", "matches", "two_view_geometries")
#: Pixels within which a database keypoint counts as found again by SIFT in the image on disk, and the
#: fraction of a sampled image's keypoints that must be (toybox_tiny, 64x64: its own images 61-79 %, other
#: images of the same size and names 2-13 %, by chance).
KEYPOINT_TOLERANCE_PX = 1.0
MIN_KEYPOINTS_FOUND = 0.25


def _open_database(database: Path, where: str) -> Any:
    """The database opened read-only with sqlite3 (never created, never changed, no journal written)."""
    import sqlite3
    import urllib.parse

    try:
        is_file = database.is_file()
    except OSError:
        is_file = False
    if not is_file:
        raise InputError(f"{where}: no such file")
    uri = f"file:{urllib.parse.quote(str(database.resolve()))}?mode=ro"
    try:
        con = sqlite3.connect(uri, uri=True)
        tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.Error as err:
        raise InputError(f"{where}: not a COLMAP database (SQLite: {err})") from None
    missing = [t for t in DATABASE_TABLES if t not in tables]
    if missing:
        con.close()
        raise InputError(f"{where}: not a COLMAP database (no {', '.join(missing)} table: an SQLite file of another program?)")
    return con


def _database_keypoints(con: Any, image_id: int) -> np.ndarray:
    row = con.execute("SELECT rows, cols, data FROM keypoints WHERE image_id = ?", (image_id,)).fetchone()
    if row is None or not row[0] or row[2] is None:
        return np.zeros((0, 2), dtype=np.float32)
    rows, cols, data = int(row[0]), int(row[1]), row[2]
    if cols < 2 or len(data) < rows * cols * 4:
        return np.zeros((0, 2), dtype=np.float32)
    return np.frombuffer(data, dtype=np.float32, count=rows * cols).reshape(rows, cols)[:, :2]


def quiet_fd2() -> Any:
    """Hold back what C code writes to file descriptor 2 (glog's INFO lines of pycolmap) while the block
    runs; its warning and error lines are passed on afterwards."""
    import sys
    import tempfile
    from contextlib import contextmanager

    @contextmanager
    def block() -> Any:
        sys.stderr.flush()
        saved = os.dup(2)
        with tempfile.TemporaryFile(mode="w+b") as log:
            os.dup2(log.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                log.seek(0)
                kept = [line for line in log.read().decode(errors="replace").splitlines() if line[:1] in ("W", "E", "F")]
                if kept:
                    print("\n".join(kept), file=sys.stderr)

    return block()


def keypoints_found_again(image: Path, keypoints: np.ndarray) -> float:
    """The fraction of ``keypoints`` (``[K, 2]`` x, y in COLMAP's pixel convention, e.g. a database's)
    within :data:`KEYPOINT_TOLERANCE_PX` of a SIFT keypoint that pycolmap finds in the image file ``image``."""
    import pycolmap
    from PIL import Image

    with Image.open(image) as img:
        gray = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    options = pycolmap.FeatureExtractionOptions()
    options.num_threads = 1
    options.max_image_size = max(gray.shape)
    with quiet_fd2():
        extractor = pycolmap.FeatureExtractor.create(options, pycolmap.Device.cpu)
        found, _ = extractor.extract_from_float32_array(np.ascontiguousarray(gray))
    xy = np.array([[k.x, k.y] for k in found], dtype=np.float64).reshape(-1, 2)
    if len(xy) == 0 or len(keypoints) == 0:
        return 0.0
    near = 0
    for chunk in np.array_split(np.asarray(keypoints, dtype=np.float64), max(1, len(keypoints) // 512)):
        d2 = ((chunk[:, None, :] - xy[None, :, :]) ** 2).sum(-1).min(axis=1)
        near += int((d2 <= KEYPOINT_TOLERANCE_PX**2).sum())
    return near / len(keypoints)


def check_colmap_database(
    database: str | os.PathLike[str], names: Sequence[str], label: Optional[str] = None,
    images_dir: Optional[str | os.PathLike[str]] = None, sizes: Optional[dict[str, tuple[int, int]]] = None,
) -> None:
    """Check that ``database`` is a COLMAP database of these images, reading it **read-only** (sqlite3,
    ``mode=ro``: a file that is not a database is never turned into one, nothing is written; no torch):

    * it is an SQLite file with COLMAP's tables (:data:`DATABASE_TABLES`);
    * every one of ``names`` is an image of it under that name (relative to the image directory, as COLMAP
      stores them);
    * with ``sizes`` (``{name: (width, height)}`` of the files on disk): its camera of each image has that
      size and its keypoints lie inside it;
    * some of these images have keypoints (verified matches may be few or none: the tracks then say so);
    * with ``images_dir``: its keypoints are where SIFT finds features in the images on disk (up to three
      images sampled, :func:`keypoints_found_again`; pycolmap, well under a second for common sizes), so a
      database of other images with the same names is refused before anything runs.

    Raises:
        InputError: ``label`` (default: the database path) and what is wrong, in one line.
    """
    database = Path(database)
    where = label or str(database)
    con = _open_database(database, where)
    import sqlite3

    try:
        held = {str(name): (int(image_id), int(camera_id)) for image_id, name, camera_id in
                con.execute("SELECT image_id, name, camera_id FROM images")}
        missing = [n for n in names if n not in held]
        if missing:
            example = ", ".join(repr(n) for n in sorted(held)[:3]) or "no images"
            raise InputError(
                f"{where}: {len(missing)} of {len(names)} images are not in it under their names relative to "
                f"the image directory (e.g. {missing[0]!r}; the database has {example})"
            )
        cameras = {int(c): (int(w), int(h)) for c, w, h in con.execute("SELECT camera_id, width, height FROM cameras")}
        keypoints = {n: _database_keypoints(con, held[n][0]) for n in names}
        for name in names:
            if sizes is None or name not in sizes:
                continue
            width, height = (int(v) for v in sizes[name])
            db_size = cameras.get(held[name][1])
            if db_size is not None and db_size != (width, height):
                raise InputError(
                    f"{where}: its image {name!r} is {db_size[0]}x{db_size[1]} pixels but the file on disk is "
                    f"{width}x{height}: the database holds other images (or other sizes) under these names"
                )
            kp = keypoints[name]
            if len(kp) and (kp.min() < -1 or kp[:, 0].max() > width + 1 or kp[:, 1].max() > height + 1):
                raise InputError(
                    f"{where}: keypoints of its image {name!r} lie outside the {width}x{height} image on disk: the "
                    "database holds other images under these names"
                )
        with_features = [n for n in names if len(keypoints[n])]
        if not with_features:
            raise InputError(f"{where}: holds no features of these {len(names)} images (run COLMAP's feature extraction first)")
    except sqlite3.Error as err:
        raise InputError(f"{where}: cannot read the COLMAP database ({err})") from None
    finally:
        con.close()
    if images_dir is not None:
        picks = sorted({with_features[0], with_features[len(with_features) // 2], with_features[-1]})
        found = {n: keypoints_found_again(Path(images_dir) / n, keypoints[n]) for n in picks}
        if float(np.median(list(found.values()))) < MIN_KEYPOINTS_FOUND:
            listed = ", ".join(f"{n}: {100 * f:.0f} %" for n, f in found.items())
            raise InputError(
                f"{where}: its keypoints are not where SIFT finds features in the images on disk ({listed} of the "
                f"database's keypoints found again within {KEYPOINT_TOLERANCE_PX:g} px, where its own images give "
                "60 % or more): it holds other images under these names"
            )


def copy_colmap_database(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Copy the COLMAP database ``source`` to ``target`` with SQLite's online backup from a read-only
    connection (``source`` is never modified; the copy is a consistent database).

    Raises:
        InputError: ``source`` is not a COLMAP database, or the copy cannot be written (the reason named,
            e.g. no space left on the device).
    """
    import sqlite3

    source, target = Path(source), Path(target)
    con = _open_database(source, str(source))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        copy = sqlite3.connect(str(target))
        try:
            con.backup(copy)
        finally:
            copy.close()
    except sqlite3.Error as err:
        target.unlink(missing_ok=True)
        raise InputError(f"{target}: cannot copy the COLMAP database {source} ({err})") from None
    except OSError as err:
        target.unlink(missing_ok=True)
        raise InputError(f"{target}: cannot copy the COLMAP database {source} ({err.strerror or err})") from None
    finally:
        con.close()
    return target
