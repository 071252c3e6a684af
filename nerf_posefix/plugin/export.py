r"""Refined training poses of a nerfstudio run, in the input world frame.

How the refined pose is obtained
--------------------------------
nerfstudio renders training camera ``i`` at ``c2w'_i = [R_adj R_i | t_i + t_adj]`` in the dataparser
frame, where ``[R_i | t_i]`` is the dataparser's pose and ``(R_adj, t_adj)`` is the camera optimizer's
correction (``optimizer(indices)``, nerfstudio's exponential map of ``pose_adjustment``). The
dataparser frame is ``x_dp = s · (R_F x_in + t_F)`` for input-world points ``x_in``, with ``(R_F, t_F, s)``
from ``dataparser_transforms.json`` (saved by the trainer; ``DataparserOutputs.dataparser_transform``
and ``dataparser_scale``). Mapping ``c2w'`` back to the input frame gives

.. math::

    R'_{in} = (R_F^T R_{adj} R_F) R_{in}, \qquad t'_{in} = t_{in} + R_F^T t_{adj} / s,

i.e. the correction conjugated into the input frame, applied to the input pose as read (float64)
from the input file. This equals ``DataparserOutputs.transform_poses_to_original_space`` of the
rendered poses (checked in ``tests/test_export.py``), but does not pass the input poses through the
dataparser's float32 arithmetic, so a run whose optimizer is off (or has not moved) reproduces its
input poses exactly; ``R_F`` is orthonormalised in float64 first.

Frames
------
* ``transforms.json`` input (nerfstudio-data): the exported transforms.json is in the frame of the
  input transforms.json (its ``applied_transform``/``applied_scale`` are kept, so the input frame is
  the json's own); for it ``R_F = R_D R_A^T`` and ``s = dataparser_scale / applied_scale``, where
  ``R_D`` is the dataparser transform (which includes ``applied_transform`` ``R_A``, explicit or
  nerfstudio's implicit one when ``colmap/sparse/0`` exists).
* COLMAP input (colmap dataparser): the COLMAP world frame, ``R_F = R_D``, ``s = dataparser_scale``. The
  export holds a COLMAP model (``sparse/0``, ``.bin`` and ``.txt``) with the refined extrinsics, the
  intrinsics and ``points3D`` unchanged, and a transforms.json (OpenGL camera axes, COLMAP world,
  intrinsics from nerfstudio's ``parse_colmap_camera_params``, no ``applied_transform``).

Only training cameras are refined (nerfstudio does not optimise evaluation cameras); the exported
transforms.json / COLMAP model keep every other frame's input pose and mark each frame with
``posefix_refined``. :func:`load_refined_camera_set` returns the refined training cameras only.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nerf_posefix.errors import InputError

IMPLICIT_APPLIED_TRANSFORM = np.array([[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0]])
"""nerfstudio's ``applied_transform`` for transforms.json files without one next to ``colmap/sparse/0``."""

#: Largest difference between the saved and the recomputed dataparser transform.
TRANSFORM_TOLERANCE = 1e-4


def _nearest_rotation(matrix: np.ndarray) -> np.ndarray:
    """The rotation closest to ``matrix [3, 3]`` (SVD), in float64."""
    u, _, vt = np.linalg.svd(np.asarray(matrix, dtype=np.float64))
    rot = u @ vt
    if np.linalg.det(rot) < 0:
        raise InputError(f"dataparser transform rotation has negative determinant: {matrix.tolist()}")
    return rot


def _as44(c2w: np.ndarray) -> np.ndarray:
    c2w = np.asarray(c2w, dtype=np.float64)
    out = np.tile(np.eye(4), (c2w.shape[0], 1, 1))
    out[:, :3, :] = c2w[:, :3, :]
    return out


def correction_in_input_frame(
    correction: np.ndarray, frame_rotation: np.ndarray, frame_scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Conjugate dataparser-frame corrections into an input frame.

    Args:
        correction: ``[N, 3, 4]`` ``[R_adj | t_adj]`` (dataparser frame, dataparser units).
        frame_rotation: ``R_F [3, 3]``, input frame -> dataparser frame rotation.
        frame_scale: ``s``, input units -> dataparser units.

    Returns:
        ``(R [N, 3, 3], t [N, 3])`` such that the refined input pose is ``[R R_in | t_in + t]``.
    """
    correction = np.asarray(correction, dtype=np.float64)
    rot_f = _nearest_rotation(frame_rotation)
    rot = rot_f.T @ correction[:, :3, :3] @ rot_f  # [N, 3, 3]
    trans = correction[:, :3, 3] @ rot_f / frame_scale  # R_Fᵀ t_adj / s, [N, 3]
    return rot, trans


def apply_correction(c2w: np.ndarray, rot: np.ndarray, trans: np.ndarray) -> np.ndarray:
    """``[R R_in | t_in + t]`` for input poses ``c2w [N, 3|4, 4]`` (any camera axes) -> ``[N, 4, 4]``."""
    out = _as44(c2w)
    out[:, :3, :3] = rot @ out[:, :3, :3]
    out[:, :3, 3] = out[:, :3, 3] + trans
    return out


@dataclass
class RefinedRun:
    """A run's training cameras and their corrections.

    Attributes:
        config_path: the run's config.yml.
        config: the run's ``TrainerConfig``.
        info: the dataset (:class:`~nerf_posefix.plugin.dataset.DatasetInfo`).
        train_filenames: image file of each training camera (camera index order).
        correction: ``[N, 3, 4]`` float64 ``[R_adj | t_adj]`` per training camera (dataparser frame).
        dataparser_transform: ``[3, 4]`` input (original) world -> dataparser frame (float64).
        dataparser_scale: input units -> dataparser units.
        checkpoint: the checkpoint read, and its step.
    """

    config_path: Path
    config: Any
    info: Any
    train_filenames: list[str]
    correction: np.ndarray
    dataparser_transform: np.ndarray
    dataparser_scale: float
    checkpoint: Path
    step: int


def _load_config(config_path: Path):  # noqa: ANN202
    import yaml

    from nerfstudio.engine.trainer import TrainerConfig

    if not config_path.is_file():
        raise InputError(f"{config_path}: no such run config (expected RUN/config.yml)")
    try:
        config = yaml.load(config_path.read_text(), Loader=yaml.Loader)
    except Exception as err:  # yaml errors, or a pickled class that cannot be imported
        raise InputError(f"{config_path}: cannot read the run config ({type(err).__name__}: {err})") from None
    if not isinstance(config, TrainerConfig):
        raise InputError(f"{config_path}: not a nerfstudio run config")
    return config


def load_refined_run(config_path: str | os.PathLike[str]) -> RefinedRun:
    """Read a run: its config, the train split of its dataset and the camera corrections of its
    latest checkpoint (``RUN/nerfstudio_models``, or the directory the config names).

    Raises:
        InputError: unreadable config, missing dataset, missing checkpoint, a dataset whose dataparser
            transform changed since training, or a dataparser other than nerfstudio-data/colmap.
    """
    from nerf_posefix.plugin.checkpoint import latest_checkpoint, load_checkpoint
    from nerf_posefix.plugin.dataset import describe_dataset

    config_path = Path(config_path)
    config = _load_config(config_path)
    datamanager = config.pipeline.datamanager
    dataparser_config = datamanager.dataparser
    if getattr(datamanager, "data", None) is not None:
        dataparser_config.data = Path(datamanager.data)
    info = describe_dataset(dataparser_config)
    if info.kind == "other":
        raise InputError(
            f"{config_path}: export supports runs on nerfstudio-data or colmap datasets, not {type(dataparser_config).__name__}"
        )
    if not Path(dataparser_config.data).exists():
        raise InputError(f"{config_path}: the run's dataset {dataparser_config.data} does not exist (moved?)")

    # the train split (camera order, filenames) as the run saw it
    outputs = dataparser_config.setup().get_dataparser_outputs(split="train")
    filenames = [str(p) for p in outputs.image_filenames]
    num_cameras = len(filenames)

    # the saved dataparser transform is authoritative; it must match the recomputed one
    transform = outputs.dataparser_transform.double().numpy()[:3, :4]
    scale = float(outputs.dataparser_scale)
    saved_path = config_path.parent / "dataparser_transforms.json"
    if saved_path.is_file():
        saved = json.loads(saved_path.read_text())
        saved_transform = np.asarray(saved["transform"], dtype=np.float64)[:3, :4]
        saved_scale = float(saved["scale"])
        if np.abs(saved_transform - transform).max() > TRANSFORM_TOLERANCE or abs(saved_scale / scale - 1) > TRANSFORM_TOLERANCE:
            raise InputError(
                f"{saved_path}: the dataset {dataparser_config.data} gives a different dataparser transform now "
                "(images or poses changed since training); cannot map the refined poses back"
            )
        transform, scale = saved_transform, saved_scale

    checkpoint_dir = config_path.parent / config.relative_model_dir
    if not checkpoint_dir.is_dir():
        checkpoint_dir = config.get_checkpoint_dir()
    try:
        checkpoint = latest_checkpoint(checkpoint_dir)
    except FileNotFoundError as err:
        raise InputError(f"{config_path}: {err}") from None
    state = load_checkpoint(checkpoint)
    prefix = "_model.camera_optimizer."
    pipeline_state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state["pipeline"].items()}
    optimizer_state = {k[len(prefix):]: v for k, v in pipeline_state.items() if k.startswith(prefix)}
    optimizer = config.pipeline.model.camera_optimizer.setup(num_cameras=num_cameras, device="cpu")
    try:
        optimizer.load_state_dict(optimizer_state)
    except RuntimeError as err:
        raise InputError(
            f"{checkpoint}: its camera optimizer does not fit the {num_cameras} training cameras of "
            f"{dataparser_config.data} ({str(err).splitlines()[0]})"
        ) from None
    with torch.no_grad():
        correction = optimizer(torch.arange(num_cameras)).double().numpy()  # [N, 3, 4]
    return RefinedRun(
        config_path=config_path,
        config=config,
        info=info,
        train_filenames=filenames,
        correction=correction,
        dataparser_transform=transform,
        dataparser_scale=scale,
        checkpoint=checkpoint,
        step=int(state.get("step", -1)),
    )


# ---------------------------------------------------------------------------------------------
# transforms.json inputs


def _json_applied(meta: dict, data_dir: Path) -> tuple[np.ndarray, float]:
    """``(applied_transform [4, 4], applied_scale)`` as nerfstudio's dataparser uses them."""
    applied = np.eye(4)
    if "applied_transform" in meta:
        applied[:3] = np.asarray(meta["applied_transform"], dtype=np.float64).reshape(3, 4)
    elif (data_dir / "colmap/sparse/0").exists():
        applied[:3] = IMPLICIT_APPLIED_TRANSFORM
    return applied, float(meta.get("applied_scale", 1.0))


def _refined_json_poses(run: RefinedRun, meta: dict) -> tuple[np.ndarray, np.ndarray]:
    """Poses of every frame of the input transforms.json, refined for training frames:
    ``(c2w [F, 4, 4] OpenGL, json frame, refined [F] bool)``."""
    frames = meta["frames"]
    poses = _as44(np.stack([np.asarray(f["transform_matrix"], dtype=np.float64)[:3] for f in frames]))
    applied, applied_scale = _json_applied(meta, run.info.data_dir)
    frame_rotation = run.dataparser_transform[:3, :3] @ _nearest_rotation(applied[:3, :3]).T
    rot, trans = correction_in_input_frame(run.correction, frame_rotation, run.dataparser_scale / applied_scale)
    refined = _correct_training_images(
        poses, [f["file_path"] for f in frames], run, rot, trans, f"{run.info.transforms_path}: no frame"
    )
    return poses, refined


def _correct_training_images(
    poses: np.ndarray, names: list[str], run: RefinedRun, rot: np.ndarray, trans: np.ndarray, missing: str
) -> np.ndarray:
    """Apply training camera ``i``'s correction ``(rot[i], trans[i])`` (input frame) in place to the pose
    in ``poses [F, 4, 4]`` whose name matches its image; returns ``refined [F]`` bool.

    Raises:
        InputError: ``"{missing} for training image NAME"`` when a training image has no pose.
    """
    from nerf_posefix.plugin.dataset import match_image_names

    refined = np.zeros(len(names), dtype=bool)
    for cam, k in enumerate(match_image_names(run.train_filenames, names)):
        if k is None:
            raise InputError(f"{missing} for training image {run.train_filenames[cam]}")
        poses[k] = apply_correction(poses[k : k + 1], rot[cam : cam + 1], trans[cam : cam + 1])[0]
        refined[k] = True
    return refined


def _relative(path: Path, start: Path) -> str:
    try:
        return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()
    except ValueError:  # different drives
        return path.resolve().as_posix()


# ---------------------------------------------------------------------------------------------
# COLMAP inputs


def _refined_colmap(run: RefinedRun):  # noqa: ANN202
    """``(model, refined CameraSet of all images, refined [N_images] bool)`` in the COLMAP world."""
    from nerf_posefix.colmap_model import read_colmap_model

    model = read_colmap_model(run.info.colmap_dir)
    cams = model.to_camera_set()  # OpenCV c2w, image-id order
    rot, trans = correction_in_input_frame(run.correction, run.dataparser_transform[:3, :3], run.dataparser_scale)
    c2w = cams.c2w.copy()
    refined = _correct_training_images(c2w, cams.names, run, rot, trans, f"{model.path}: no image")
    return model, cams.with_poses(c2w, source=str(run.config_path)), refined


# ---------------------------------------------------------------------------------------------
# public API


def load_refined_camera_set(config_path: str | os.PathLike[str]):  # noqa: ANN201 (CameraSet)
    """The refined training cameras of a run as a :class:`~nerf_posefix.camera_sets.CameraSet`.

    Same conventions as :func:`nerf_posefix.camera_sets.load_camera_set` on the run's input:
    camera-to-world, OpenCV axes, the input's world frame (for transforms.json, ``applied_transform``
    undone), names as that loader gives them (basenames for transforms.json, COLMAP image names),
    points/observations carried over from a COLMAP input. Only training cameras are included.

    Raises:
        InputError: see :func:`load_refined_run`.
    """
    from nerf_posefix.camera_sets import CameraSet
    from nerf_posefix.plugin.dataset import read_transforms_frames
    from nerf_posefix.poses import opengl_to_opencv

    run = load_refined_run(config_path)
    if run.info.kind == "colmap":
        _, cams, refined = _refined_colmap(run)
        subset = cams.subset(np.nonzero(refined)[0])
        subset.source = str(run.config_path)
        return subset
    meta = read_transforms_frames(run.info.transforms_path, check_images=False)
    poses, refined = _refined_json_poses(run, meta)
    if "applied_transform" in meta:  # as camera_sets.read_transforms_json: back to the original world
        applied = np.eye(4)
        applied[:3] = np.asarray(meta["applied_transform"], dtype=np.float64).reshape(3, 4)
        poses = np.linalg.inv(applied) @ poses
    idx = np.nonzero(refined)[0]
    names = [os.path.basename(str(meta["frames"][k]["file_path"])) for k in idx]
    return CameraSet(names=names, c2w=opengl_to_opencv(poses[idx]), source=str(run.config_path))


def export_run(config_path: str | os.PathLike[str], output_dir: str | os.PathLike[str], overwrite: bool = False) -> dict[str, Path]:
    """Write a run's refined poses into ``output_dir`` (see the module docstring).

    Returns:
        ``{"transforms": path}`` and, for COLMAP inputs, ``"colmap": sparse/0 directory``.

    Raises:
        InputError: see :func:`load_refined_run`.
        FileExistsError: ``output_dir/transforms.json`` exists and ``overwrite`` is False.
    """
    from nerfstudio.process_data.colmap_utils import parse_colmap_camera_params

    from nerf_posefix.colmap_model import write_colmap_model
    from nerf_posefix.plugin.dataset import read_transforms_frames
    from nerf_posefix.poses import opencv_to_opengl

    output_dir = Path(output_dir)
    transforms_out = output_dir / "transforms.json"
    if transforms_out.exists() and not overwrite:
        raise FileExistsError(f"{transforms_out} exists (use --overwrite)")
    run = load_refined_run(config_path)
    output_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    provenance = {"run": str(run.config_path), "checkpoint": str(run.checkpoint), "step": run.step}

    if run.info.kind == "nerfstudio":
        meta = read_transforms_frames(run.info.transforms_path, check_images=False)
        poses, refined = _refined_json_poses(run, meta)
        data_dir = run.info.data_dir
        out = dict(meta)
        frames = []
        for k, frame in enumerate(meta["frames"]):
            frame = dict(frame)
            frame["transform_matrix"] = poses[k].tolist()
            for key in ("file_path", "mask_path", "depth_file_path"):
                if key in frame:
                    frame[key] = _relative(data_dir / frame[key], output_dir)
            frame["posefix_refined"] = bool(refined[k])
            frames.append(frame)
        out["frames"] = frames
        if "ply_file_path" in out:
            out["ply_file_path"] = _relative(data_dir / out["ply_file_path"], output_dir)
        out["posefix"] = {**provenance, "frame": f"the world frame of {run.info.transforms_path}"}
    else:
        model, cams, refined = _refined_colmap(run)
        sparse = write_colmap_model(model.with_poses(cams), output_dir / "sparse" / "0", formats=("bin", "txt"))
        written["colmap"] = sparse
        gl = opencv_to_opengl(cams.c2w)  # [N, 4, 4]
        image_ids = model.image_ids()
        frames = []
        for k, image_id in enumerate(image_ids):
            image = model.images[image_id]
            frame = {
                "file_path": _relative(run.info.images_dir / image.name, output_dir),
                "transform_matrix": gl[k].tolist(),
                "colmap_im_id": int(image_id),
                **parse_colmap_camera_params(model.cameras[image.camera_id]),
                "posefix_refined": bool(refined[k]),
            }
            frames.append(frame)
        camera_models = {f["camera_model"] for f in frames}
        out = {"camera_model": frames[0]["camera_model"]} if len(camera_models) == 1 else {}
        out["frames"] = frames
        out["posefix"] = {**provenance, "frame": f"the COLMAP world frame of {model.path} (OpenGL camera axes)"}
    with open(transforms_out, "w", encoding="utf-8") as fid:
        json.dump(out, fid, indent=2)
    written["transforms"] = transforms_out
    return written
