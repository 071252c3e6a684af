"""nerfstudio ``transforms.json``: read and write, the one place its conventions are converted.

Conventions
-----------
* In the file: ``transform_matrix`` is **camera-to-world** with **OpenGL camera axes** (x right, y up,
  the camera looks along -z), in the file's world frame. When the file records an
  ``applied_transform`` ``A [3, 4]`` (the world change ``ns-process-data`` applied to COLMAP's world;
  nerfstudio's dataparser assumes ``IMPLICIT_APPLIED_TRANSFORM`` when the key is missing and a
  ``colmap/sparse/0`` lies beside the file), then ``transform_matrix = A · c2w_input``.
* In memory (:class:`~nerf_posefix.io.camera_set.CameraSet`): camera-to-world, **OpenCV axes**, in the
  **input world frame** (``applied_transform`` undone): ``c2w = A⁻¹ · transform_matrix · diag(1,-1,-1,1)``.
  :func:`json_poses` is the inverse. Camera names are the basenames of the frames' ``file_path``, or the
  paths themselves when basenames repeat (:func:`frame_names`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from nerf_posefix.errors import InputError
from nerf_posefix.geometry.poses import OPENGL_OPENCV_FLIP, as_4x4, is_rotation, rotation_defect
from nerf_posefix.io.camera_set import CameraSet, ImageCamera, check_unique_names

FILENAME = "transforms.json"
#: Ground-truth poses kept beside a perturbed dataset (same layout as transforms.json).
GT_FILENAME = "transforms_gt.json"
#: Per-frame key: the ``σ`` (pixels of the original image) of the ``pixels`` pose prior for that frame's camera,
#: as ``posefix refine`` writes it into its NeRF stage's dataset (how well its tracks hold each camera).
PRIOR_SIGMA_KEY = "posefix_prior_sigma_px"
#: Per-frame key: whether the tracks hold that frame's camera well (``posefix refine`` writes it beside
#: :data:`PRIOR_SIGMA_KEY`; the NeRF stage then keeps such a camera at its adjusted pose).
HELD_KEY = "posefix_held"

IMPLICIT_APPLIED_TRANSFORM = np.array([[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0]])
"""nerfstudio's ``applied_transform`` for transforms.json files without one next to ``colmap/sparse/0``."""


def _check_pose(pose: np.ndarray, where: str) -> None:
    """Raise InputError unless ``pose`` is a finite 3x4/4x4 rigid camera-to-world matrix."""
    if pose.shape not in ((4, 4), (3, 4)):
        raise InputError(f"{where}: transform_matrix has shape {pose.shape}, expected 4x4")
    if not np.isfinite(pose).all():
        raise InputError(f"{where}: transform_matrix has non-finite values (NaN or inf)")
    if not is_rotation(pose[:3, :3]):
        ortho, det = rotation_defect(pose[:3, :3])
        raise InputError(f"{where}: transform_matrix rotation is not a rotation (det {det:.6g}, max |RᵀR - I| {ortho:.3g})")


def read_transforms_frames(path: Path, check_images: bool = False, downscale_factor: Optional[int] = None) -> dict:
    """Read and check a transforms.json: every frame needs a ``file_path`` and a finite rigid
    ``transform_matrix``, file paths are unique; with ``check_images`` each image must exist (the
    original path, or the ``images_<downscale_factor>`` copy nerfstudio would read).

    Returns:
        The parsed json (file conventions, nothing converted).

    Raises:
        InputError: naming the file and the frame (index and file_path).
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as fid:
            meta = json.load(fid)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: cannot read transforms.json ({err})") from None
    frames = meta.get("frames") if isinstance(meta, dict) else None
    if isinstance(frames, list) and not frames:
        raise InputError(f"{path}: the 'frames' list is empty (no images, no poses)")
    if not isinstance(frames, list):
        raise InputError(f"{path}: no 'frames' list in transforms.json")
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
    paths = [os.path.normpath(str(f["file_path"])) for f in frames]
    if len(set(paths)) != len(paths):
        dups = sorted({p for p in paths if paths.count(p) > 1})
        raise InputError(
            f"{path}: duplicate camera names: {', '.join(os.path.basename(p) for p in dups[:5])} "
            f"(file_path {', '.join(dups[:5])} appears more than once)"
        )
    applied_transform(meta, data_dir, where=str(path))  # a malformed applied_transform: named here
    return meta


def applied_transform(meta: dict, data_dir: Optional[Path] = None, where: str = FILENAME) -> tuple[np.ndarray, float]:
    """``(A [4, 4], applied_scale)``: the world change recorded in a transforms.json, as nerfstudio's
    dataparser uses it (``IMPLICIT_APPLIED_TRANSFORM`` when the key is missing and ``data_dir`` holds
    ``colmap/sparse/0``; identity otherwise)."""
    applied = np.eye(4)
    if "applied_transform" in meta:
        try:
            applied[:3] = np.asarray(meta["applied_transform"], dtype=np.float64).reshape(3, 4)
        except (TypeError, ValueError):
            raise InputError(f"{where}: applied_transform must be a 3x4 matrix") from None
    elif data_dir is not None and (Path(data_dir) / "colmap/sparse/0").exists():
        applied[:3] = IMPLICIT_APPLIED_TRANSFORM
    return applied, float(meta.get("applied_scale", 1.0))


def input_poses(meta: dict, data_dir: Optional[Path] = None) -> np.ndarray:
    """Camera-to-world ``[F, 4, 4]``, OpenCV axes, input world frame, of every frame of ``meta``."""
    applied, _ = applied_transform(meta, data_dir)
    c2w_gl = as_4x4(np.stack([np.asarray(f["transform_matrix"], dtype=np.float64)[:3] for f in meta["frames"]]))
    return np.linalg.inv(applied) @ c2w_gl @ OPENGL_OPENCV_FLIP


def json_poses(c2w_opencv: np.ndarray, applied: Optional[np.ndarray] = None) -> np.ndarray:
    """The inverse of :func:`input_poses`: ``transform_matrix [N, 4, 4] = A · c2w · diag(1,-1,-1,1)``."""
    applied = np.eye(4) if applied is None else as_4x4(np.asarray(applied)[None])[0]
    return applied @ as_4x4(c2w_opencv) @ OPENGL_OPENCV_FLIP


def frame_name(frame: dict) -> str:
    """The basename of a frame's ``file_path``."""
    return os.path.basename(str(frame["file_path"]))


def frame_path(frame: dict) -> str:
    """A frame's ``file_path``, normalised (``./`` and ``..`` folded, ``/`` separators)."""
    return os.path.normpath(str(frame["file_path"])).replace(os.sep, "/")


def frame_names(meta: dict) -> list[str]:
    """The camera names of a transforms.json's frames (file order), one identity with the other commands
    (:func:`nerf_posefix.io.camera_set.match_camera_sets` matches names by path components): the
    basenames of the ``file_path`` values when they are unique (as COLMAP names the images of one
    folder), else the ``file_path`` values themselves (``images/cam0/000.png``, ``images/cam1/000.png``:
    images in several folders, as ``posefix refine`` names them)."""
    bases = [frame_name(f) for f in meta["frames"]]
    return bases if len(set(bases)) == len(bases) else [frame_path(f) for f in meta["frames"]]


def read_transforms_json(path: str | os.PathLike[str]) -> CameraSet:
    """Read a nerfstudio ``transforms.json`` as a :class:`CameraSet` (see the module docstring; names:
    :func:`frame_names`)."""
    path = Path(path)
    meta = read_transforms_frames(path)
    names = frame_names(meta)
    check_unique_names(names, str(path))
    # as nerfstudio's own reader of a file given directly: the explicit applied_transform only
    return CameraSet(names=names, c2w=input_poses(meta), source=str(path))


#: Intrinsics keys of a frame or of the file (a frame's own value wins, as in nerfstudio's dataparser).
_INTRINSICS_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h")
_DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")


def frame_cameras(meta: dict, where: str = FILENAME) -> list[ImageCamera]:
    """The intrinsics of every frame of ``meta`` (file order) as COLMAP camera models, read as nerfstudio's
    dataparser reads them (a frame's own ``fl_x``/``fl_y``/``cx``/``cy``/``w``/``h``/distortion keys win over
    the file's). A perspective camera without distortion becomes ``PINHOLE``; with ``k1, k2, p1, p2`` it
    becomes ``OPENCV`` (the same model: nerfstudio's ``OPENCV`` is COLMAP's). ``cx``/``cy`` are in COLMAP's
    pixel convention, as ``ns-process-data`` writes them.

    Raises:
        InputError: naming the file and frame: a missing key, a camera model other than the perspective
            ``OPENCV``/``PINHOLE`` (fisheye, equirectangular), ``k3``/``k4``/``distortion_params`` (no COLMAP
            model posefix trains on has them), non-positive focal lengths or sizes.
    """
    cameras = []
    for i, frame in enumerate(meta["frames"]):
        here = f"{where}: frame {i} ({frame.get('file_path')})"
        merged = {**meta, **frame}
        model = str(merged.get("camera_model", "OPENCV")).upper()
        if model not in ("OPENCV", "PINHOLE", "PERSPECTIVE"):
            raise InputError(f"{here}: camera_model {model} is not supported (perspective OPENCV/PINHOLE cameras only)")
        missing = [k for k in _INTRINSICS_KEYS if k not in merged]
        if missing:
            raise InputError(f"{here}: no {', '.join(missing)} (intrinsics are needed to build tracks)")
        if "distortion_params" in merged:
            raise InputError(f"{here}: distortion_params is not supported; give k1, k2, p1, p2")
        try:
            fx, fy, cx, cy = (float(merged[k]) for k in ("fl_x", "fl_y", "cx", "cy"))
            width, height = int(merged["w"]), int(merged["h"])
            k1, k2, k3, k4, p1, p2 = (float(merged.get(k, 0.0)) for k in _DISTORTION_KEYS)
        except (TypeError, ValueError):
            raise InputError(f"{here}: intrinsics must be numbers") from None
        if not (fx > 0 and fy > 0 and width > 0 and height > 0 and np.isfinite([fx, fy, cx, cy]).all()):
            raise InputError(f"{here}: focal lengths and image size must be positive (fl_x {fx}, fl_y {fy}, w {width}, h {height})")
        if k3 != 0.0 or k4 != 0.0:
            raise InputError(f"{here}: radial k3/k4 are not supported (COLMAP's OPENCV model has k1, k2, p1, p2)")
        if any(v != 0.0 for v in (k1, k2, p1, p2)):
            cameras.append(ImageCamera("OPENCV", width, height, (fx, fy, cx, cy, k1, k2, p1, p2)))
        else:
            cameras.append(ImageCamera("PINHOLE", width, height, (fx, fy, cx, cy)))
    return cameras


#: COLMAP model -> the index in its parameters of (fx, fy, cx, cy, k1, k2, p1, p2); None: zero.
_COLMAP_TO_OPENCV = {
    "SIMPLE_PINHOLE": (0, 0, 1, 2, None, None, None, None),
    "PINHOLE": (0, 1, 2, 3, None, None, None, None),
    "SIMPLE_RADIAL": (0, 0, 1, 2, 3, None, None, None),
    "RADIAL": (0, 0, 1, 2, 3, 4, None, None),
    "OPENCV": (0, 1, 2, 3, 4, 5, 6, 7),
}


def camera_keys(camera: ImageCamera) -> dict[str, Any]:
    """The transforms.json intrinsics keys of ``camera`` (the inverse of :func:`frame_cameras`), as
    nerfstudio's ``parse_colmap_camera_params`` writes them for ``ns-process-data``: ``camera_model``
    ``OPENCV`` (nerfstudio's perspective model), ``fl_x``, ``fl_y``, ``cx``, ``cy`` (COLMAP's pixel
    convention, unchanged), ``w``, ``h``, and ``k1``, ``k2``, ``p1``, ``p2`` (zero where the model has none).

    Raises:
        InputError: a model other than ``SIMPLE_PINHOLE``, ``PINHOLE``, ``SIMPLE_RADIAL``, ``RADIAL``,
            ``OPENCV``, or the wrong number of parameters.
    """
    index = _COLMAP_TO_OPENCV.get(str(camera.model).upper())
    if index is None:
        raise InputError(
            f"camera model {camera.model} has no transforms.json form here (supported: {', '.join(_COLMAP_TO_OPENCV)})"
        )
    expected = max(i for i in index if i is not None) + 1
    if len(camera.params) != expected:
        raise InputError(f"camera model {camera.model} takes {expected} parameters, got {len(camera.params)}")
    values = [0.0 if i is None else float(camera.params[i]) for i in index]
    keys = ("fl_x", "fl_y", "cx", "cy", "k1", "k2", "p1", "p2")
    return {"camera_model": "OPENCV", "w": int(camera.width), "h": int(camera.height), **dict(zip(keys, values))}


#: The keys of a transforms.json that say a frame's intrinsics (top level or per frame).
CAMERA_KEYS = ("camera_model", *_INTRINSICS_KEYS, *_DISTORTION_KEYS)


def with_cameras(meta: dict, cameras: Sequence[Optional[ImageCamera]], where: str = FILENAME) -> dict:
    """A copy of ``meta`` whose frames have the intrinsics ``cameras`` (one per frame in order; None: the frame's
    own, as :func:`frame_cameras` reads it). Written as nerfstudio's dataparser reads them: at the top level when
    every frame has the same camera (nerfstudio then ignores the frames' own keys, so those are removed), else per
    frame (the top-level ones removed). Poses and every other key are kept.

    Raises:
        InputError: a frame's camera has no transforms.json form (:func:`camera_keys`), or its current intrinsics
            cannot be read (:func:`frame_cameras`).
    """
    current = frame_cameras(meta, where)
    final = [new if new is not None else old for new, old in zip(cameras, current)]
    keys = [camera_keys(camera) for camera in final]
    out = {k: v for k, v in meta.items() if k not in CAMERA_KEYS}
    frames = [{k: v for k, v in frame.items() if k not in CAMERA_KEYS} for frame in meta["frames"]]
    if all(k == keys[0] for k in keys):
        out.update(keys[0])
    else:
        frames = [{**frame, **k} for frame, k in zip(frames, keys)]
    out["frames"] = frames
    return out


def with_poses(meta: dict, c2w_opencv: np.ndarray, extra: Optional[Sequence[dict]] = None) -> dict:
    """A copy of ``meta`` whose frames carry the poses ``c2w_opencv [F, 4, 4]`` (OpenCV axes, input world
    frame, one per frame in order), written in the file's convention (its ``applied_transform`` kept).
    ``extra``: per frame, keys to add."""
    applied, _ = applied_transform(meta)
    poses = json_poses(c2w_opencv, applied)
    out = dict(meta)
    out["frames"] = [
        {**frame, "transform_matrix": poses[k].tolist(), **(extra[k] if extra is not None else {})}
        for k, frame in enumerate(meta["frames"])
    ]
    return out


def transforms_meta(
    file_paths: Sequence[str],
    c2w_opencv: np.ndarray,
    intrinsics: Optional[dict[str, Any]] = None,
    frame_extra: Optional[Sequence[dict]] = None,
    **top: Any,
) -> dict:
    """A new transforms.json: ``file_paths [F]`` with camera-to-world ``c2w_opencv [F, 4, 4]`` (OpenCV
    axes; the input world frame, recorded as an identity ``applied_transform`` so nerfstudio does not
    re-orient it). ``intrinsics``: shared keys (``camera_model``, ``fl_x``, ...); ``frame_extra``: per
    frame keys; ``top``: more top-level keys."""
    poses = json_poses(c2w_opencv)
    frames = [
        {"file_path": str(p), "transform_matrix": poses[k].tolist(), **(frame_extra[k] if frame_extra is not None else {})}
        for k, p in enumerate(file_paths)
    ]
    return {**(intrinsics or {}), "applied_transform": np.eye(4)[:3].tolist(), **top, "frames": frames}


def write_transforms_json(meta: dict, path: str | os.PathLike[str]) -> Path:
    """Write ``meta`` (a dict in the file's convention, e.g. from :func:`with_poses`) to ``path``."""
    path = Path(path)
    path.write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return path
