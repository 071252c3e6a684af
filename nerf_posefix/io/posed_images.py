"""Images with poses from any source ``posefix refine`` reads, and the refined poses written back in it.

Sources (:func:`load_posed_images`):

* a **COLMAP model** directory (with or without points) and ``--images``;
* a nerfstudio **transforms.json** (phone AR apps, Polycam, Record3D, ``ns-process-data``...); its images are
  where its ``file_path`` values say (relative to the file's directory); intrinsics from its
  ``fl_x``/``fl_y``/``cx``/``cy``/``w``/``h``/``k1``... keys;
* a **TUM trajectory** (SLAM, robots; ``timestamp tx ty tz qx qy qz qw``) with ``--images`` and the
  intrinsics given as ``--camera "MODEL p1,p2,..."``. Images are paired with trajectory rows by timestamp:
  from a list file (``--timestamps``: ``timestamp image_name`` per line, the TUM RGB-D ``rgb.txt`` layout)
  or from the image file names (``1305031102.175304.png``), nearest within ``max_diff`` seconds.

Conventions
-----------
* :attr:`PosedImages.cameras` is camera-to-world, **OpenCV** axes, in the **source's world frame**
  (:mod:`nerf_posefix.io.camera_set`); image names are paths relative to :attr:`PosedImages.images_dir`.
* Writing back (:func:`write_refined_poses`) converts into the source's own convention once: COLMAP
  world-to-camera (written by the caller, with the new points), transforms.json camera-to-world with OpenGL
  axes and its ``applied_transform`` kept (every other key kept), TUM camera-to-world rows with the input's
  timestamps (rows that no image was paired with get the correction of the nearest paired row in time,
  applied in the camera frame: ``c2w_out = c2w_in · (c2w_in,k⁻¹ · c2w_out,k)``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import numpy as np

from nerf_posefix.errors import InputError
from nerf_posefix.geometry.poses import c2w_to_colmap
from nerf_posefix.io.camera_set import CAMERA_PARAM_NAMES, CameraSet, ImageCamera, check_unique_names, intrinsics_problem
from nerf_posefix.io.colmap import ColmapModel, cpu, find_colmap_model_dir, read_colmap_model
from nerf_posefix.io.sources import source_kind
from nerf_posefix.io.transforms_json import (
    applied_transform,
    frame_cameras,
    input_poses,
    read_transforms_frames,
    with_poses,
    write_transforms_json,
)
from nerf_posefix.io.tum import DEFAULT_MAX_DIFF, TumTrajectory, associate_timestamps, read_tum_trajectory, write_tum

SourceKind = Literal["colmap", "transforms", "tum"]
#: Image file suffixes looked for when TUM timestamps come from file names.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".ppm", ".webp")


@dataclass
class PosedImages:
    """Images with input poses and intrinsics, and what is needed to write refined poses back.

    Attributes:
        kind: the source's format.
        source: the pose file (transforms.json, TUM file) or COLMAP model directory.
        images_dir: directory the image names are relative to.
        cameras: ``N`` images, camera-to-world, OpenCV axes, source world frame (module docstring).
        intrinsics: ``{image name: ImageCamera}``.
        colmap_model: the COLMAP model as read (``kind == "colmap"``).
        transforms_meta: the transforms.json as read (``kind == "transforms"``); ``frame_images``: the image
            name of each of its frames, in file order.
        trajectory: the TUM file as read (``kind == "tum"``); ``trajectory_rows``: the trajectory row of each
            image (order of ``cameras``).
    """

    kind: SourceKind
    source: Path
    images_dir: Path
    cameras: CameraSet
    intrinsics: dict[str, ImageCamera]
    colmap_model: Optional[ColmapModel] = None
    transforms_meta: Optional[dict] = None
    frame_images: list[str] = field(default_factory=list)
    trajectory: Optional[TumTrajectory] = None
    trajectory_rows: Optional[np.ndarray] = None

    @property
    def has_tracks(self) -> bool:
        """Whether the source carries feature tracks (a COLMAP model with points and observations)."""
        if self.colmap_model is None or not self.colmap_model.points3D:
            return False
        return len(self.colmap_model.observations()) > 0

    def to_colmap_model(self) -> ColmapModel:
        """The images as a point-less COLMAP model (world-to-camera ``qvec``/``tvec``, OpenCV axes, source
        world frame), one camera per distinct intrinsics, image ids ``1..N`` in the order of ``cameras``.
        For a COLMAP source: the model as read, without its points and observations."""
        if self.colmap_model is not None:
            images = {
                k: im._replace(xys=np.zeros((0, 2)), point3D_ids=np.zeros(0, dtype=np.int64))
                for k, im in self.colmap_model.images.items()
            }
            return ColmapModel(cameras=dict(self.colmap_model.cameras), images=images, points3D={})
        camera_ids: dict[ImageCamera, int] = {}
        for name in self.cameras.names:
            camera_ids.setdefault(self.intrinsics[name], len(camera_ids) + 1)
        cameras = {
            cid: cpu.Camera(id=cid, model=cam.model, width=cam.width, height=cam.height, params=np.asarray(cam.params))
            for cam, cid in camera_ids.items()
        }
        qvec, tvec = c2w_to_colmap(self.cameras.c2w)
        images = {
            k + 1: cpu.Image(
                id=k + 1, qvec=qvec[k], tvec=tvec[k], camera_id=camera_ids[self.intrinsics[name]], name=name,
                xys=np.zeros((0, 2)), point3D_ids=np.zeros(0, dtype=np.int64),
            )
            for k, name in enumerate(self.cameras.names)
        }
        return ColmapModel(cameras=cameras, images=images, points3D={})

    def nerfstudio_world(self) -> Optional[np.ndarray]:
        """The world change ``A`` ``[4, 4]`` from this source's world frame (:attr:`cameras`) to the frame nerfstudio
        trains it in: a transforms.json's own (``transform_matrix = A · c2w``: the ``applied_transform`` its
        dataparser reads, identity without one), so a NeRF stage on it trains where ``ns-train`` would; None for
        the other sources (nerfstudio's ``colmap_to_json`` frame, as ``ns-process-data`` writes a COLMAP model)."""
        if self.kind != "transforms" or self.transforms_meta is None:
            return None
        applied, _ = applied_transform(self.transforms_meta, self.source.parent)
        return applied


# ---------------------------------------------------------------------------------------------
# reading


def parse_camera(spec: str, width: int, height: int) -> ImageCamera:
    """``"MODEL p1,p2,..."`` (e.g. ``"PINHOLE 525,525,319.5,239.5"``, COLMAP's parameter order and pixel
    convention) for images of ``width x height`` pixels.

    Raises:
        InputError: an unknown model or the wrong number of parameters.
    """
    parts = spec.replace(",", " ").split()
    if len(parts) < 2:
        raise InputError(f"--camera {spec!r}: expected 'MODEL p1,p2,...', e.g. 'PINHOLE 525,525,319.5,239.5'")
    model = parts[0].upper()
    if model not in CAMERA_PARAM_NAMES:
        raise InputError(f"--camera {spec!r}: unknown camera model {model} (supported: {', '.join(CAMERA_PARAM_NAMES)})")
    try:
        params = tuple(float(p) for p in parts[1:])
    except ValueError:
        raise InputError(f"--camera {spec!r}: parameters must be numbers") from None
    expected = CAMERA_PARAM_NAMES[model]
    if len(params) != len(expected):
        raise InputError(f"--camera {spec!r}: {model} takes {len(expected)} parameters ({', '.join(expected)}), got {len(params)}")
    if not np.isfinite(params).all():
        raise InputError(f"--camera {spec!r}: parameters must be finite")
    camera = ImageCamera(model, width, height, params)
    problem = intrinsics_problem(camera)
    if problem is not None:
        raise InputError(f"--camera {spec!r}: {problem}")
    return camera


def check_camera_spec(spec: Optional[str]) -> None:
    """The checks of :func:`parse_camera` that need no image (syntax, model, count, finite values,
    positive focal lengths), so a bad ``--camera`` is refused before anything is read.

    Raises:
        InputError: naming ``--camera`` and the problem.
    """
    if spec is not None:
        parse_camera(spec, 1, 1)


def check_intrinsics(posed: "PosedImages") -> None:
    """Every image's intrinsics must be usable (:func:`~nerf_posefix.io.camera_set.intrinsics_problem`):
    the stages divide by the focal lengths and the image size.

    Raises:
        InputError: naming the source (the COLMAP cameras file and camera id, the transforms.json frame)
            and the problem.
    """
    for name in posed.cameras.names:
        camera = posed.intrinsics[name]
        problem = intrinsics_problem(camera)
        if problem is None:
            continue
        if posed.kind == "colmap" and posed.colmap_model is not None:
            image = next(im for im in posed.colmap_model.images.values() if im.name == name)
            found = find_colmap_model_dir(posed.source)
            where = (found[0] / f"cameras{found[1]}") if found else posed.source
            raise InputError(f"{where}: camera {image.camera_id} ({camera.model}, used by {name}): {problem}")
        raise InputError(f"{posed.source}: the camera of {name} ({camera.model}): {problem}")


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` of the image at ``path``, in pixels (its header only).

    Raises:
        InputError: naming the file, when it cannot be read as an image.
    """
    from PIL import Image

    try:
        with Image.open(path) as img:
            return int(img.size[0]), int(img.size[1])
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: cannot read the image ({err})") from None


def _missing_images(images_dir: Path, names: list[str], where: str) -> None:
    missing = [n for n in names if not (images_dir / n).is_file()]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise InputError(
            f"{images_dir / missing[0]}: image file not found ({len(missing)} of {len(names)} images of {where} not found "
            f"under {images_dir}: {', '.join(missing[:5])}{more})"
        )


def _from_colmap(model_dir: Path, images: Optional[Path], model: Optional[ColmapModel] = None) -> PosedImages:
    if images is None:
        raise InputError(f"{model_dir}: a COLMAP model needs --images (the directory its image names are relative to)")
    model = read_colmap_model(model_dir) if model is None else model
    ids = model.image_ids()
    names = [model.images[i].name for i in ids]
    cameras = model.to_camera_set(str(model_dir))
    intrinsics = {}
    for i in ids:
        cam = model.cameras[model.images[i].camera_id]
        intrinsics[model.images[i].name] = ImageCamera(cam.model, cam.width, cam.height, tuple(np.asarray(cam.params)))
    cameras = CameraSet(names=names, c2w=cameras.c2w, source=str(model_dir))
    return PosedImages("colmap", model_dir, Path(images), cameras, intrinsics, colmap_model=model)


def _normalised(file_path: str) -> str:
    return os.path.normpath(file_path).replace(os.sep, "/")


def _from_transforms(path: Path, images: Optional[Path]) -> PosedImages:
    meta = read_transforms_frames(path)
    frames = meta["frames"]
    if images is None:
        images_dir = path.parent
        names = [_normalised(str(f["file_path"])) for f in frames]
        outside = [n for n in names if n.startswith("../") or os.path.isabs(n)]
        if outside:
            raise InputError(f"{path}: file_path {outside[0]} lies outside the file's directory; give --images")
    else:
        images_dir = Path(images)
        names = [os.path.basename(str(f["file_path"])) for f in frames]
    check_unique_names(names, str(path))
    intrinsics = dict(zip(names, frame_cameras(meta, str(path))))
    cameras = CameraSet(names=names, c2w=input_poses(meta), source=str(path))
    return PosedImages("transforms", path, images_dir, cameras, intrinsics, transforms_meta=meta, frame_images=names)


def read_image_timestamps(path: Path) -> dict[str, float]:
    """A ``timestamp image_name`` list (TUM RGB-D ``rgb.txt``; ``#`` comments) as ``{image name: seconds}``.

    Raises:
        InputError: naming the line: not two fields, a timestamp that is not a finite number, a name twice.
    """
    out: dict[str, float] = {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read the timestamp list ({err})") from None
    for lineno, line in enumerate(lines, start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        fields = stripped.split(maxsplit=1)
        if len(fields) != 2:
            raise InputError(f"{path}:{lineno}: expected 'timestamp image_name', got {stripped[:60]!r}")
        try:
            stamp = float(fields[0])
        except ValueError:
            raise InputError(f"{path}:{lineno}: timestamp {fields[0]!r} is not a number") from None
        if not np.isfinite(stamp):
            raise InputError(f"{path}:{lineno}: timestamp {fields[0]!r} is not finite")
        name = _normalised(fields[1].strip())
        if name in out:
            raise InputError(f"{path}:{lineno}: image {name} is listed twice")
        out[name] = stamp
    if not out:
        raise InputError(f"{path}: no 'timestamp image_name' lines")
    return out


def _timestamps_from_names(images_dir: Path) -> dict[str, float]:
    if not images_dir.is_dir():
        raise InputError(f"{images_dir}: no such image directory")
    out: dict[str, float] = {}
    unparsed = []
    for entry in sorted(images_dir.iterdir()):
        if entry.suffix.lower() not in IMAGE_SUFFIXES or not entry.is_file():
            continue
        try:
            out[entry.name] = float(entry.stem)
        except ValueError:
            unparsed.append(entry.name)
    if unparsed:
        raise InputError(
            f"{images_dir}: image names {', '.join(unparsed[:3])} are not timestamps; give --timestamps FILE "
            "('timestamp image_name' per line)"
        )
    if not out:
        raise InputError(f"{images_dir}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return out


def _from_tum(path: Path, images: Optional[Path], camera: Optional[str], timestamps: Optional[Path], max_diff: float) -> PosedImages:
    if images is None:
        raise InputError(f"{path}: a TUM trajectory needs --images (the images its timestamps refer to)")
    images_dir = Path(images)
    trajectory = read_tum_trajectory(path)
    stamps = read_image_timestamps(timestamps) if timestamps is not None else _timestamps_from_names(images_dir)
    names = sorted(stamps, key=lambda n: (stamps[n], n))
    _missing_images(images_dir, names, str(timestamps) if timestamps is not None else str(images_dir))
    image_stamps = np.array([stamps[n] for n in names])  # [M]
    idx_img, idx_row = associate_timestamps(image_stamps, trajectory.timestamps, max_diff=max_diff)
    row_of = dict(zip(idx_img.tolist(), idx_row.tolist()))
    unpaired = [names[k] for k in range(len(names)) if k not in row_of]
    if unpaired:
        more = f" and {len(unpaired) - 5} more" if len(unpaired) > 5 else ""
        raise InputError(
            f"{path}: {len(unpaired)} of {len(names)} images have no pose within {max_diff:g} s "
            f"(--t-max-diff): {', '.join(f'{n} ({stamps[n]:.6f})' for n in unpaired[:5])}{more}"
        )
    rows = np.array([row_of[k] for k in range(len(names))], dtype=np.int64)  # [M]
    shared = np.unique(rows, return_counts=True)
    if (shared[1] > 1).any():
        row = int(shared[0][shared[1] > 1][0])
        twins = [names[k] for k in range(len(names)) if rows[k] == row]
        raise InputError(f"{path}: images {', '.join(twins[:3])} are paired with the same pose (t = {trajectory.timestamps[row]:.6f})")
    if camera is None:
        raise InputError(f"{path}: a TUM trajectory has no intrinsics; give --camera 'MODEL p1,p2,...' (COLMAP order, pixels)")
    sizes = {n: image_size(images_dir / n) for n in names}
    intrinsics = {n: parse_camera(camera, *sizes[n]) for n in names}
    cameras = CameraSet(names=names, c2w=trajectory.cameras.c2w[rows], source=str(path))
    return PosedImages("tum", path, images_dir, cameras, intrinsics, trajectory=trajectory, trajectory_rows=rows)


def load_posed_images(
    poses: str | os.PathLike[str],
    images: Optional[str | os.PathLike[str]] = None,
    camera: Optional[str] = None,
    timestamps: Optional[str | os.PathLike[str]] = None,
    max_diff: float = DEFAULT_MAX_DIFF,
    colmap_model: Optional[ColmapModel] = None,
) -> PosedImages:
    """Read a pose source and pair it with its images (module docstring). Checks that every image is there
    (file exists; decoding and sizes are checked by the caller), names are unique, intrinsics are given.
    ``colmap_model``: the COLMAP model of ``poses`` when the caller has read it already (not read twice: a
    model of 1000 images takes ~1 s to parse).

    Raises:
        InputError: one message naming the file and the images at fault.
    """
    poses = Path(poses)
    kind, path = source_kind(poses)
    images_path = None if images is None else Path(images)
    if images_path is not None and not images_path.is_dir():
        raise InputError(f"{images_path}: no such image directory")
    if kind == "colmap":
        found = find_colmap_model_dir(path)
        assert found is not None
        posed = _from_colmap(found[0], images_path, colmap_model)
    elif kind == "transforms":
        posed = _from_transforms(path, images_path)
    elif kind == "tum":
        posed = _from_tum(path, images_path, camera, None if timestamps is None else Path(timestamps), max_diff)
    else:
        raise InputError(f"{poses}: a nerfstudio run is not a pose source for refine; export it first (posefix export)")
    if kind != "tum" and (camera is not None or timestamps is not None):
        raise InputError(f"{poses}: --camera and --timestamps apply to TUM trajectories only ({kind} input)")
    _missing_images(posed.images_dir, posed.cameras.names, str(posed.source))
    check_intrinsics(posed)
    return posed


# ---------------------------------------------------------------------------------------------
# writing back


def write_refined_poses(posed: PosedImages, refined: CameraSet, output_dir: Path) -> Path:
    """Write ``refined`` (camera-to-world, OpenCV, source world frame, by image name) into ``output_dir`` in
    the source's format: ``transforms.json`` or the TUM file's name (module docstring). COLMAP sources are
    written by the caller (the model carries the new points). Returns the file written.

    Raises:
        ValueError: ``refined`` misses an image of ``posed``.
    """
    by_name = dict(zip(refined.names, refined.c2w))
    missing = [n for n in posed.cameras.names if n not in by_name]
    if missing:
        raise ValueError(f"refined poses miss images {missing[:5]}")
    if posed.kind == "transforms":
        assert posed.transforms_meta is not None
        c2w = np.stack([by_name[n] for n in posed.frame_images])  # [F, 4, 4] file order
        return write_transforms_json(with_poses(posed.transforms_meta, c2w), output_dir / "transforms.json")
    if posed.kind == "tum":
        assert posed.trajectory is not None and posed.trajectory_rows is not None
        traj = posed.trajectory
        c2w_in = traj.cameras.c2w  # [T, 4, 4]
        rows = posed.trajectory_rows  # [M]
        refined_rows = np.stack([by_name[n] for n in posed.cameras.names])  # [M, 4, 4]
        body = np.linalg.inv(c2w_in[rows]) @ refined_rows  # [M, 4, 4] correction in the camera frame
        order = np.argsort(traj.timestamps[rows])
        paired_t = traj.timestamps[rows][order]
        nearest = np.clip(np.searchsorted(paired_t, traj.timestamps), 1, max(len(paired_t) - 1, 1))
        left = nearest - 1
        take_left = np.abs(traj.timestamps - paired_t[left]) <= np.abs(paired_t[np.minimum(nearest, len(paired_t) - 1)] - traj.timestamps)
        pick = order[np.where(take_left, left, np.minimum(nearest, len(paired_t) - 1))]  # [T] index into rows
        out = c2w_in @ body[pick]  # [T, 4, 4]
        out[rows] = refined_rows
        cameras = CameraSet(names=list(traj.cameras.names), c2w=out, source=str(output_dir))
        return write_tum(cameras, output_dir / posed.source.name, timestamps=traj.timestamps)
    raise ValueError(f"write_refined_poses: {posed.kind} sources are written as COLMAP models by the caller")


__all__ = ["PosedImages", "check_camera_spec", "check_intrinsics", "image_size", "load_posed_images", "parse_camera",
           "read_image_timestamps", "write_refined_poses"]
