"""Weak-camera alignment: after training, the weakly held cameras aligned photometrically against the frozen field.

Why (issue 22): in ``posefix refine``'s NeRF stage the well-held cameras are pinned at the adjustment and the
weakly held ones (blurred, washed out: few or no tracks) move under the photometric loss while the field is still
being fitted. Once the field is trained (mostly by the sharp, pinned images), optimising only the weak cameras'
poses against the frozen field, each rendered with its own appearance embedding, pins them better than the joint
training did (toybox, 16 blurred and washed-out of 64 views, seed 0, two trained runs: median rotation error of
the degraded views 0.66 -> 0.24 and 0.78 -> 0.28 deg with the default 50 steps at lr 2e-3, sharp views untouched;
with the average appearance embedding instead of each camera's own: 0.66 -> 0.64; see
``benchmarks/weak_alignment_probe.py``).

Where it runs: :class:`~nerf_posefix.plugin.pipeline.PosefixPipeline` calls :func:`align_into_optimizer` after the
last training iteration of a run (``ns-train posefix`` and ``posefix refine`` alike), before the final checkpoint,
so the run's checkpoint, its renders and every export hold the aligned poses; the run directory's
:data:`WEAK_ALIGNMENT_FILE` records what it did. The weakly held cameras are the ones the front end's tracks do
not hold (the front end's result, or the ``posefix_held`` keys of the dataset's transforms.json).

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

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

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
        min_iterations: the alignment runs only after at least this many training iterations (see
            :func:`skip_reason`).
    """

    steps: int = 50
    lr: float = 2e-3
    rays_per_view: int = 256
    seed: int = 0
    appearance: Literal["own", "average"] = "own"
    min_iterations: int = 500

    def budget(self) -> TestPoseAlignmentConfig:
        return TestPoseAlignmentConfig(steps=self.steps, lr=self.lr, rays_per_view=self.rays_per_view, seed=self.seed)

    def check(self) -> None:
        """Raise ValueError on a budget that cannot run."""
        self.budget().check()
        if self.min_iterations < 0:
            raise ValueError(f"weak alignment min_iterations must be >= 0, got {self.min_iterations}")
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


#: Where a run keeps what its weak alignment did (:func:`alignment_record`), in the run directory.
WEAK_ALIGNMENT_FILE = "weak_alignment.json"


def skipped(reason: str) -> dict[str, Any]:
    """The record of an alignment that did not run, and why."""
    return {"ran": False, "reason": reason}


def skip_reason(config: WeakAlignmentConfig, num_weak: int, trained_iterations: int, optimizer: Any) -> Optional[str]:
    """Why the alignment of ``num_weak`` weakly held cameras after ``trained_iterations`` iterations does not run
    (None: it runs). Against a barely trained field it would move the cameras at random (a 3-iteration refine
    stage put a separate ring of 32 images at 0.71 deg), hence ``config.min_iterations``."""
    if config.steps <= 0:
        return "weak alignment off (0 steps)"
    if num_weak == 0:
        return "no weakly held camera"
    if trained_iterations < config.min_iterations:
        return (f"the field trained {trained_iterations} iterations (the alignment needs at least {config.min_iterations}: "
                "against an untrained field it would move the cameras at random)")
    mode = getattr(getattr(optimizer, "config", None), "mode", "off")
    if not hasattr(optimizer, "compose_corrections") or mode != "SO3xR3":
        return f"the camera optimizer cannot hold the alignment (posefix's SO3xR3 optimizer needed; mode {mode!r})"
    return None


def align_into_optimizer(
    pipeline: Any, indices: Sequence[int], trained_iterations: int, config: Optional[WeakAlignmentConfig] = None
) -> dict[str, Any]:
    """Align the weakly held training cameras ``indices`` of a trained ``pipeline`` (:func:`align_weak_cameras`)
    and compose the alignment into its camera optimizer (``compose_corrections``), so that the run renders,
    saves and exports the aligned poses; returns the :func:`alignment_record` (or a :func:`skipped` one, see
    :func:`skip_reason`)."""
    config = config or WeakAlignmentConfig()
    config.check()
    optimizer = getattr(pipeline.model, "camera_optimizer", None)
    reason = skip_reason(config, len(indices), trained_iterations, optimizer)
    if reason is not None:
        return skipped(reason)
    alignment = align_weak_cameras(pipeline, indices, config)
    optimizer.compose_corrections(
        torch.from_numpy(alignment.indices), torch.from_numpy(alignment.rotation), torch.from_numpy(alignment.translation)
    )
    return alignment_record(alignment, [str(p) for p in pipeline.datamanager.train_dataset.image_filenames])


def alignment_record(alignment: WeakAlignment, train_filenames: Sequence[str]) -> dict[str, Any]:
    """What an alignment did, JSON-ready: the budget, its time, and per aligned image (keyed by its training
    file name, without folders) how far it moved it: ``rotation_deg`` (the angle of ``R_a``, the same in every
    frame) and ``translation`` (``|t_a|``, **dataparser units**), and its photometric loss before / after."""
    moved: dict[str, dict[str, float]] = {}
    for k, cam in enumerate(alignment.indices):
        entry = {"rotation_deg": float(alignment.rotation_deg[k]), "translation": float(alignment.translation_norm[k])}
        for key, losses in (("loss_before", alignment.loss_before), ("loss_after", alignment.loss_after)):
            if len(losses) == len(alignment.indices):
                entry[key] = float(losses[k])
        moved[Path(str(train_filenames[int(cam)])).name] = entry
    cfg = alignment.config
    return {
        "ran": True,
        "cameras": len(moved),
        "steps": cfg.steps, "lr": cfg.lr, "rays_per_view": cfg.rays_per_view, "appearance": cfg.appearance,
        "seconds": alignment.seconds,
        **move_statistics(moved),
        "units": "translation: dataparser units",
        "meaning": "after training, the weakly held cameras aligned photometrically against the frozen field (each with "
        "its own appearance embedding); how far that moved them",
        "images": moved,
    }


def move_statistics(moved: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Median and largest rotation (degrees) and translation of the per-image moves of a record."""
    rots = np.array([m["rotation_deg"] for m in moved.values()])
    dists = np.array([m["translation"] for m in moved.values()])
    return {
        "rotation_deg_median": float(np.median(rots)) if len(rots) else 0.0,
        "rotation_deg_max": float(rots.max()) if len(rots) else 0.0,
        "translation_median": float(np.median(dists)) if len(dists) else 0.0,
        "translation_max": float(dists.max()) if len(dists) else 0.0,
    }
