r"""Reading a finished nerfstudio run back: its refined training poses, in the input world frame.

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

Only training cameras are refined (nerfstudio does not optimise evaluation cameras):
:func:`refined_input_poses` returns every frame of the input with a ``refined`` mask (what
``posefix export`` writes, :mod:`nerf_posefix.workflows.export`), :func:`load_refined_camera_set` the
refined training cameras only. The run (config, dataparser, checkpoint) is read once per call.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from nerf_posefix.errors import InputError
from nerf_posefix.geometry.poses import apply_pose_correction, as_4x4, opengl_to_opencv
from nerf_posefix.io.camera_set import CameraSet, match_image_names
from nerf_posefix.io.colmap import ColmapModel, read_colmap_model
from nerf_posefix.io.transforms_json import applied_transform, frame_name, read_transforms_frames
from nerf_posefix.plugin.checkpoint import latest_checkpoint, load_checkpoint
from nerf_posefix.plugin.dataset import describe_dataset

#: Largest difference between the saved and the recomputed dataparser transform.
TRANSFORM_TOLERANCE = 1e-4


def _nearest_rotation(matrix: np.ndarray) -> np.ndarray:
    """The rotation closest to ``matrix [3, 3]`` (SVD), in float64."""
    u, _, vt = np.linalg.svd(np.asarray(matrix, dtype=np.float64))
    rot = u @ vt
    if np.linalg.det(rot) < 0:
        raise InputError(f"dataparser transform rotation has negative determinant: {matrix.tolist()}")
    return rot


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
        xmin, xmax: ``[N]`` the homography prior's depth bounds of each training camera (dataparser
            units), for posefix runs; None for nerfstudio's own optimizer.
        track_point_ids, track_points, track_points_initial: the SfM points of the track term
            (COLMAP ids ``[P]``; ``[P, 3]`` dataparser frame, trained and initial), None without tracks.
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
    xmin: Optional[np.ndarray] = None
    xmax: Optional[np.ndarray] = None
    track_point_ids: Optional[np.ndarray] = None
    track_points: Optional[np.ndarray] = None
    track_points_initial: Optional[np.ndarray] = None

    def refined_point_offsets(self) -> Optional[tuple[np.ndarray, np.ndarray]]:
        """``(point3D_ids [P], offsets [P, 3])``: how far the track term moved each SfM point, in the
        input (COLMAP) world frame and units (``R_Dᵀ Δ_dp / s``, the dataparser transform undone), or None
        when the run has no tracks. Add them to the input points to get the refined points."""
        if self.track_points is None or self.track_points_initial is None or self.track_point_ids is None:
            return None
        rot = _nearest_rotation(self.dataparser_transform[:3, :3])
        delta = (self.track_points - self.track_points_initial) @ rot / self.dataparser_scale  # Rᵀ Δ as rows
        return self.track_point_ids, delta


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
    config_path = Path(config_path)
    config = _load_config(config_path)
    datamanager = config.pipeline.datamanager
    if getattr(datamanager, "data", None) is not None:
        datamanager.dataparser.data = Path(datamanager.data)
    if not Path(datamanager.dataparser.data).exists():
        raise InputError(f"{config_path}: the run's dataset {datamanager.dataparser.data} does not exist (moved?)")
    from nerf_posefix.plugin.front_end import training_dataparser

    dataparser_config, _ = training_dataparser(config.pipeline)  # the adjusted dataset when the front end ran
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
        xmin=optimizer_state["xmin"].double().numpy() if "xmin" in optimizer_state else None,
        xmax=optimizer_state["xmax"].double().numpy() if "xmax" in optimizer_state else None,
        **_track_state(optimizer_state),
    )


def _track_state(optimizer_state: dict[str, Any]) -> dict[str, Optional[np.ndarray]]:
    ids = optimizer_state.get("track_point_ids")
    if ids is None or ids.numel() == 0:
        return {}
    return {
        "track_point_ids": ids.numpy().astype(np.int64),
        "track_points": optimizer_state["track_points"].double().numpy(),
        "track_points_initial": optimizer_state["track_points_initial"].double().numpy(),
    }


# ---------------------------------------------------------------------------------------------
# transforms.json inputs


def _refined_json_poses(run: RefinedRun, meta: dict) -> tuple[np.ndarray, np.ndarray]:
    """Poses of every frame of the input transforms.json, refined for training frames:
    ``(c2w [F, 4, 4] OpenGL, json frame, refined [F] bool)``."""
    frames = meta["frames"]
    poses = as_4x4(np.stack([np.asarray(f["transform_matrix"], dtype=np.float64)[:3] for f in frames]))
    applied, applied_scale = applied_transform(meta, run.info.data_dir)
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
    refined = np.zeros(len(names), dtype=bool)
    for cam, k in enumerate(match_image_names(run.train_filenames, names)):
        if k is None:
            raise InputError(f"{missing} for training image {run.train_filenames[cam]}")
        poses[k, :3] = apply_pose_correction(poses[k : k + 1], rot[cam : cam + 1], trans[cam : cam + 1])[0]
        refined[k] = True
    return refined


# ---------------------------------------------------------------------------------------------
# COLMAP inputs


def _refined_colmap(run: RefinedRun) -> tuple[ColmapModel, CameraSet, np.ndarray]:
    """``(model, refined CameraSet of all images, refined [N_images] bool)`` in the COLMAP world."""
    model = read_colmap_model(run.info.colmap_dir)
    cams = model.to_camera_set()  # OpenCV c2w, image-id order
    rot, trans = correction_in_input_frame(run.correction, run.dataparser_transform[:3, :3], run.dataparser_scale)
    c2w = cams.c2w.copy()
    refined = _correct_training_images(c2w, cams.names, run, rot, trans, f"{model.path}: no image")
    return model, cams.with_poses(c2w, source=str(run.config_path)), refined


# ---------------------------------------------------------------------------------------------
# public API


@dataclass
class RefinedInput:
    """Every frame of a run's input with the run's refined poses.

    Attributes:
        run: the run read.
        kind: ``"nerfstudio"`` (transforms.json input) or ``"colmap"``.
        meta: the input transforms.json (file conventions), for ``nerfstudio`` inputs.
        json_c2w: ``[F, 4, 4]`` refined poses in the json's own convention (OpenGL axes, its
            ``applied_transform`` applied), for ``nerfstudio`` inputs.
        model: the input COLMAP model, for ``colmap`` inputs.
        cameras: ``[F]`` cameras, camera-to-world OpenCV axes in the input world frame (for
            transforms.json, its explicit ``applied_transform`` undone, as
            :func:`~nerf_posefix.io.transforms_json.read_transforms_json` reads it).
        refined: ``[F]`` bool, True for the training cameras the run refined.
    """

    run: RefinedRun
    kind: str
    cameras: CameraSet
    refined: np.ndarray
    meta: Optional[dict] = None
    json_c2w: Optional[np.ndarray] = None
    model: Optional[ColmapModel] = None


def refined_input_poses(config_path: str | os.PathLike[str]) -> RefinedInput:
    """Read a run once and return every input frame with its refined pose (see :class:`RefinedInput`).

    Raises:
        InputError: see :func:`load_refined_run`.
    """
    run = load_refined_run(config_path)
    if run.info.kind == "colmap":
        model, cams, refined = _refined_colmap(run)
        return RefinedInput(run=run, kind="colmap", cameras=cams, refined=refined, model=model)
    meta = read_transforms_frames(run.info.transforms_path)
    poses, refined = _refined_json_poses(run, meta)
    explicit, _ = applied_transform(meta)  # as read_transforms_json: the explicit applied_transform only
    names = [frame_name(f) for f in meta["frames"]]
    cams = CameraSet(names=names, c2w=opengl_to_opencv(np.linalg.inv(explicit) @ poses), source=str(run.config_path))
    return RefinedInput(run=run, kind="nerfstudio", cameras=cams, refined=refined, meta=meta, json_c2w=poses)


def load_refined_camera_set(config_path: str | os.PathLike[str]) -> CameraSet:
    """The refined training cameras of a run as a :class:`~nerf_posefix.io.camera_set.CameraSet`.

    Same conventions as :func:`nerf_posefix.io.sources.load_camera_set` on the run's input:
    camera-to-world, OpenCV axes, the input's world frame (for transforms.json, ``applied_transform``
    undone), names as that loader gives them (basenames for transforms.json, COLMAP image names),
    points/observations carried over from a COLMAP input. Only training cameras are included.

    Raises:
        InputError: see :func:`load_refined_run`.
    """
    refined = refined_input_poses(config_path)
    subset = refined.cameras.subset(np.nonzero(refined.refined)[0])
    subset.source = str(refined.run.config_path)
    return subset
