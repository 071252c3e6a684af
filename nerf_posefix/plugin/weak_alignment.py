"""Weak-camera alignment: after training, the weakly held cameras aligned photometrically against the frozen field.

Why (issue 22): in ``posefix refine``'s NeRF stage the well-held cameras are pinned at the adjustment and the
weakly held ones (blurred, washed out: few or no tracks) move under the photometric loss while the field is still
being fitted. Once the field is trained (mostly by the sharp, pinned images), optimising only the weak cameras'
poses against the frozen field, each rendered with its own appearance embedding, pins them better than the joint
training did (toybox, 16 blurred and washed-out of 64 views, seed 0, two trained runs: median rotation error of
the degraded views 0.66 -> 0.24 and 0.78 -> 0.28 deg with the default 50 steps at lr 2e-3, sharp views untouched;
with the average appearance embedding instead of each camera's own: 0.66 -> 0.64; see
``benchmarks/weak_alignment_probe.py``).

Conventions
-----------
* Cameras are nerfstudio ``Cameras``: ``camera_to_worlds [N, 3, 4]`` **camera-to-world**, **OpenGL camera
  axes** (x right, y up, looking along -z), in the **dataparser frame** (oriented, centred, scaled;
  translations in dataparser units), exactly as in :mod:`nerf_posefix.plugin.test_pose_alignment`.
* The alignment starts from the poses the run renders: the dataset's pose with the run's own correction
  ``[R_adj | t_adj]`` (``model.camera_optimizer``) applied, ``[R_adj R | t + t_adj]``. It optimises one more
  ``SO3xR3`` correction per aligned camera (``tangent [K, 6]``: translation first, then the ``so(3)``
  rotation vector; :func:`nerfstudio.cameras.lie_groups.exp_map_SO3xR3`), applied as nerfstudio applies its
  corrections (:func:`nerf_posefix.geometry.poses.apply_pose_correction`): ``[R_a R_adj R | t + t_adj + t_a]``.
  The composed correction of the camera is therefore ``[R_a R_adj | t_adj + t_a]``.
* Loss, budget, freezing and seeding are :func:`~nerf_posefix.plugin.test_pose_alignment.align_test_poses`'s
  (random pixels per view and step, mean squared RGB error, model in eval mode with every parameter frozen),
  except the appearance: each aligned ray is rendered with its **own training camera's** appearance embedding
  (``appearance="own"``; eval mode alone would use the average embedding), since a degraded image's embedding
  holds its colour/contrast change.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from nerf_posefix.geometry.poses import opengl_to_opencv, rotation_angle_deg
from nerf_posefix.io.camera_set import CameraSet, match_image_names
from nerf_posefix.io.transforms_json import HELD_KEY, applied_transform, read_transforms_frames
from nerf_posefix.plugin.test_pose_alignment import TestPoseAlignmentConfig, align_test_poses, corrected_cameras


@dataclass
class WeakAlignmentConfig:
    """The budget of a weak-camera alignment.

    Attributes:
        steps: Adam steps (0: the cameras stay where the training left them).
        lr: Adam learning rate on the ``SO3xR3`` tangent (radians / dataparser units).
        rays_per_view: pixels drawn per camera and step.
        seed: seed of the pixel draws.
        appearance: ``own``: each camera rendered with its own appearance embedding; ``average``: eval mode's
            average embedding.
    """

    steps: int = 50
    lr: float = 2e-3
    rays_per_view: int = 256
    seed: int = 0
    appearance: Literal["own", "average"] = "own"

    def budget(self) -> TestPoseAlignmentConfig:
        return TestPoseAlignmentConfig(steps=self.steps, lr=self.lr, rays_per_view=self.rays_per_view, seed=self.seed)

    def check(self) -> None:
        """Raise ValueError on a budget that cannot run."""
        self.budget().check()
        if self.appearance not in ("own", "average"):
            raise ValueError(f"weak alignment appearance must be 'own' or 'average', got {self.appearance!r}")


@dataclass
class WeakAlignment:
    """The result of :func:`align_weak_cameras`.

    Attributes:
        indices: ``[K]`` the aligned training cameras (camera index order of the train dataset).
        cameras: ``[K]`` their aligned cameras (camera-to-world, OpenGL axes, dataparser frame).
        rotation: ``R_a [K, 3, 3]``, translation: ``t_a [K, 3]`` (float64, dataparser frame and units): the
            alignment's own correction, on top of the run's (see the module docstring).
        rotation_deg: ``[K]`` angle of ``R_a``; translation_norm: ``[K]`` ``|t_a|`` (dataparser units).
        loss_before, loss_after: ``[K]`` mean squared RGB error of each camera on the first / last draw.
        seconds: wall time of the alignment.
        config: the budget used.
    """

    indices: np.ndarray
    cameras: Any
    rotation: np.ndarray
    translation: np.ndarray
    rotation_deg: np.ndarray
    translation_norm: np.ndarray
    loss_before: np.ndarray = field(default_factory=lambda: np.zeros(0))
    loss_after: np.ndarray = field(default_factory=lambda: np.zeros(0))
    seconds: float = 0.0
    config: WeakAlignmentConfig = field(default_factory=WeakAlignmentConfig)

    def compose(self, correction: np.ndarray) -> np.ndarray:
        """The run's corrections ``[N, 3, 4]`` (dataparser frame, all training cameras) with the alignment
        composed onto the aligned cameras' rows: ``[R_a R_adj | t_adj + t_a]`` (a float64 copy)."""
        out = np.array(correction, dtype=np.float64, copy=True)
        rows = out[self.indices]
        out[self.indices, :, :3] = self.rotation @ rows[:, :, :3]
        out[self.indices, :, 3] = rows[:, :, 3] + self.translation
        return out


class OwnAppearance(torch.nn.Module):
    """``model`` whose rays of view ``k`` use training camera ``train_index[k]``'s appearance embedding.

    Everything renders in eval mode (no stratified sampling, the collider's eval near plane) except the
    field's appearance lookup: the field's own ``training`` flag (not its children's) is set during the
    forward pass, which selects ``embedding_appearance(camera_indices)`` in nerfacto's field.
    """

    def __init__(self, model: Any, train_index: Tensor) -> None:
        super().__init__()
        self.model = model
        self.train_index = train_index
        self.training = bool(model.training)  # frozen_model restores the wrapper's (hence the model's) mode

    @property
    def device(self) -> torch.device:
        return getattr(self.model, "device", None) or next(self.model.parameters()).device

    @property
    def renderer_rgb(self) -> Any:
        return getattr(self.model, "renderer_rgb", None)

    def forward(self, bundle: Any) -> dict[str, Tensor]:
        bundle.camera_indices = self.train_index.to(bundle.camera_indices.device)[bundle.camera_indices]
        field_module = getattr(self.model, "field", None)
        if field_module is None:
            return self.model(bundle)
        was = field_module.training
        field_module.training = True
        try:
            return self.model(bundle)
        finally:
            field_module.training = was


def weakly_held_indices(pipeline: Any) -> np.ndarray:
    """``[K]`` the training cameras whose frame in the dataset's transforms.json is marked not held by the tracks
    (:data:`~nerf_posefix.io.transforms_json.HELD_KEY` false, as ``posefix refine`` writes it); empty when no
    frame carries the key or the dataset is not a transforms.json."""
    dataparser = pipeline.datamanager.dataparser
    data = Path(getattr(dataparser.config, "data", ""))
    path = data / "transforms.json" if data.is_dir() else data
    if path.suffix != ".json" or not path.is_file():
        return np.zeros(0, dtype=np.int64)
    frames = read_transforms_frames(path)["frames"]
    weak = [str(f["file_path"]) for f in frames if HELD_KEY in f and not bool(f[HELD_KEY])]
    if not weak:
        return np.zeros(0, dtype=np.int64)
    train = [str(p) for p in pipeline.datamanager.train_dataset.image_filenames]
    found = match_image_names(train, weak)  # per training camera: the weak frame naming it, or None
    return np.array([k for k, m in enumerate(found) if m is not None], dtype=np.int64)


def align_weak_cameras(
    pipeline: Any, indices: Sequence[int], config: Optional[WeakAlignmentConfig] = None
) -> WeakAlignment:
    """Align the training cameras ``indices`` of a trained ``pipeline`` against its frozen model.

    Args:
        pipeline: a trained nerfstudio pipeline (``datamanager.train_dataset`` and ``model`` with a camera
            optimizer, e.g. posefix / posefix-small); its model is left as it was (parameters, flags, mode).
        indices: training camera indices to align.
        config: the budget (default :class:`WeakAlignmentConfig`).

    Returns:
        The aligned cameras and the alignment's corrections (:class:`WeakAlignment`).
    """
    config = config or WeakAlignmentConfig()
    config.check()
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    dataset = pipeline.datamanager.train_dataset
    model = pipeline.model
    t0 = time.perf_counter()
    index = torch.from_numpy(idx)
    cameras = dataset.cameras[index]
    optimizer = getattr(model, "camera_optimizer", None)
    with torch.no_grad():
        if optimizer is not None and len(idx):
            adj = optimizer(index.to(model.device)).detach().cpu()  # [K, 3, 4] the run's corrections
            cameras = corrected_cameras(cameras, adj[:, :3, :3], adj[:, :3, 3])
    if not len(idx):
        empty = np.zeros(0)
        return WeakAlignment(idx, cameras, np.zeros((0, 3, 3)), np.zeros((0, 3)), empty, empty, config=config)
    images = [dataset.get_image_float32(int(k)) for k in idx]
    target = OwnAppearance(model, index) if config.appearance == "own" else model
    result = align_test_poses(target, cameras, images, config.budget())
    return WeakAlignment(
        indices=idx,
        cameras=result.cameras,
        rotation=result.rotation.detach().double().cpu().numpy(),
        translation=result.translation.detach().double().cpu().numpy(),
        rotation_deg=result.rotation_deg,
        translation_norm=result.translation_norm,
        loss_before=result.loss_before,
        loss_after=result.loss_after,
        seconds=time.perf_counter() - t0,
        config=config,
    )


@contextlib.contextmanager
def _torch_threads(num_threads: Optional[int]) -> Iterator[None]:
    previous = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(int(num_threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def align_run_weak_cameras(
    config_path: str | os.PathLike[str], pipeline: Any = None, config: Optional[WeakAlignmentConfig] = None,
    num_threads: Optional[int] = None,
) -> WeakAlignment:
    """:func:`align_weak_cameras` on a finished run's weakly held cameras (:func:`weakly_held_indices`).

    Args:
        config_path: the run's ``config.yml`` (loaded with nerfstudio's ``eval_setup`` when ``pipeline`` is None,
            e.g. a resumed run that was already complete).
        pipeline: the run's trained pipeline, when still in memory.
        num_threads: torch threads during the alignment (restored after); None: unchanged.
    """
    if pipeline is None:
        from nerfstudio.utils.eval_utils import eval_setup

        from nerf_posefix.plugin.training import quiet_console

        with quiet_console(True):
            _, pipeline, _, _ = eval_setup(Path(config_path), test_mode="inference")
    with _torch_threads(num_threads):
        return align_weak_cameras(pipeline, weakly_held_indices(pipeline), config)


def realigned_input(refined: Any, alignment: WeakAlignment) -> Any:
    """A run's :class:`~nerf_posefix.plugin.run_reader.RefinedInput` with ``alignment`` composed onto the run's
    corrections (``RefinedRun.correction``, as read from the checkpoint) and every pose recomputed from the
    input exactly as the run reader computes it; the input object is not modified.

    Raises:
        ValueError: a COLMAP-dataset run (``posefix refine`` trains on transforms.json data only).
    """
    from nerf_posefix.plugin.run_reader import _refined_json_poses

    if refined.kind != "nerfstudio":
        raise ValueError(f"weak alignment of {refined.kind} runs is not supported (transforms.json datasets only)")
    run = replace(refined.run, correction=alignment.compose(refined.run.correction))
    poses, mask = _refined_json_poses(run, refined.meta)
    explicit, _ = applied_transform(refined.meta)
    cameras = CameraSet(names=list(refined.cameras.names), c2w=opengl_to_opencv(np.linalg.inv(explicit) @ poses),
                        source=refined.cameras.source)
    return replace(refined, run=run, cameras=cameras, refined=mask, json_c2w=poses)


def alignment_summary(
    before: CameraSet, after: CameraSet, alignment: WeakAlignment, train_filenames: Sequence[str],
    rename: Optional[Mapping[str, str]] = None,
) -> dict[str, Any]:
    """What the alignment did, for a report: the budget, its time, and per aligned image how far it moved
    (rotation in degrees and centre distance in input units, from the exported poses before and after), keyed by
    the exported camera names (``rename`` maps them to other names, e.g. the input's)."""
    files = [str(train_filenames[int(k)]) for k in alignment.indices]
    rows = match_image_names(files, list(before.names))
    moved: dict[str, dict[str, float]] = {}
    for k, row in enumerate(rows):
        if row is None:
            continue
        rot = float(rotation_angle_deg(before.c2w[row : row + 1, :3, :3], after.c2w[row : row + 1, :3, :3])[0])
        dist = float(np.linalg.norm(after.c2w[row, :3, 3] - before.c2w[row, :3, 3]))
        entry = {"rotation_deg": rot, "translation": dist}
        for key, losses in (("loss_before", alignment.loss_before), ("loss_after", alignment.loss_after)):
            if len(losses) == len(alignment.indices):
                entry[key] = float(losses[k])
        name = str(before.names[row])
        moved[(rename or {}).get(name, name)] = entry
    rots = np.array([m["rotation_deg"] for m in moved.values()])
    dists = np.array([m["translation"] for m in moved.values()])
    cfg = alignment.config
    return {
        "ran": True,
        "cameras": len(moved),
        "steps": cfg.steps, "lr": cfg.lr, "rays_per_view": cfg.rays_per_view, "appearance": cfg.appearance,
        "seconds": alignment.seconds,
        "rotation_deg_median": float(np.median(rots)) if len(rots) else 0.0,
        "rotation_deg_max": float(rots.max()) if len(rots) else 0.0,
        "translation_median": float(np.median(dists)) if len(dists) else 0.0,
        "translation_max": float(dists.max()) if len(dists) else 0.0,
        "meaning": "after training, the weakly held cameras aligned photometrically against the frozen field (each with "
        "its own appearance embedding); how far that moved them (degrees; input units)",
        "images": moved,
    }
