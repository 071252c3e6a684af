"""nerfacto with the homography camera optimizer, offline LPIPS handling and ground-truth pose metrics.

* Camera optimizer: :class:`~nerf_posefix.plugin.camera_optimizer.HomographyCameraOptimizerConfig` by
  default (any nerfstudio camera optimizer config still works).
* LPIPS offline: nerfacto builds torchmetrics' LPIPS, whose AlexNet backbone is downloaded by torchvision
  into the torch hub cache on first use, and crashes offline. :class:`PosefixModel` builds LPIPS only
  when those weights are already in the cache (``torch.hub.get_dir()/checkpoints``); otherwise it warns
  once and evaluation reports PSNR/SSIM without ``lpips``. Checkpoints load either way: the fixed LPIPS
  weights are never taken from a checkpoint (the model's own, or none, are kept).
* Ground-truth metrics: when the pipeline hands over ground-truth poses
  (:meth:`PosefixModel.set_ground_truth`), every ``logging.steps_per_log`` training steps the metrics
  dict gets the pose errors of the rendered training poses against them after a Sim(3) alignment of
  the camera centres (:func:`nerf_posefix.geometry.alignment.align`): ``pose_gt_rotation_median_deg``,
  ``pose_gt_translation_median`` (ground-truth units) and ``pose_gt_translation_median_rel``
  (fraction of the ground-truth scene radius, `nerf_posefix.geometry.poses.scene_radius`).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple, Type

import numpy as np
import torch
from torch import Tensor

from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.models.nerfacto import NerfactoModel, NerfactoModelConfig
from nerfstudio.utils.rich_utils import CONSOLE
from rich.markup import escape

from nerf_posefix.errors import InputError
from nerf_posefix.plugin.camera_optimizer import HomographyCameraOptimizerConfig, apply_adjustment

LPIPS_PREFIX = "lpips."


def lpips_weights_path() -> Path:
    """Where torchvision caches the AlexNet weights that torchmetrics' LPIPS needs."""
    import torchvision

    filename = os.path.basename(torchvision.models.AlexNet_Weights.DEFAULT.url)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


@contextlib.contextmanager
def _lpips_construction_disabled() -> Iterator[None]:
    """While active, ``torchmetrics.image.lpip.LearnedPerceptualImagePatchSimilarity(...)`` returns None
    instead of downloading weights. Scoped to nerfacto's ``populate_modules`` call and always restored."""
    import torchmetrics.image.lpip as lpip_module

    original = lpip_module.LearnedPerceptualImagePatchSimilarity
    lpip_module.LearnedPerceptualImagePatchSimilarity = lambda *args, **kwargs: None  # type: ignore[assignment]
    try:
        yield
    finally:
        lpip_module.LearnedPerceptualImagePatchSimilarity = original  # type: ignore[assignment]


@dataclass
class PosefixModelConfig(NerfactoModelConfig):
    """nerfacto with the homography camera optimizer (see the module docstring)."""

    _target: Type = field(default_factory=lambda: PosefixModel)
    camera_optimizer: HomographyCameraOptimizerConfig = field(default_factory=HomographyCameraOptimizerConfig)
    """Config of the camera optimizer."""


class PosefixModel(NerfactoModel):
    """nerfacto + homography camera optimizer, offline-safe LPIPS, ground-truth pose metrics."""

    config: PosefixModelConfig

    def populate_modules(self) -> None:
        weights = lpips_weights_path()
        if weights.is_file():
            super().populate_modules()
        else:
            with _lpips_construction_disabled():
                super().populate_modules()
            CONSOLE.print(
                f"[bold yellow]posefix: LPIPS disabled: its AlexNet weights are not in the torch cache "
                f"({escape(str(weights))}) and nothing is downloaded; evaluation reports PSNR and SSIM only.",
                soft_wrap=True,
            )
        self.register_load_state_dict_pre_hook(self._keep_own_lpips_weights)
        self._gt_c2w: Optional[np.ndarray] = None  # [M, 4, 4] OpenCV axes, ground-truth world
        self._gt_index: Optional[np.ndarray] = None  # [M] train camera indices
        self._train_c2w: Optional[Tensor] = None  # [N, 3, 4] input training poses, OpenGL, dataparser frame
        self._posefix_step = 0
        self._log_every = 10

    def _keep_own_lpips_weights(self, module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):  # noqa: ANN001,E501
        """Load-state-dict pre-hook: drop checkpoint LPIPS weights and use the model's own (if any)."""
        for key in [k for k in state_dict if k.startswith(prefix + LPIPS_PREFIX)]:
            del state_dict[key]
        if self.lpips is not None:
            for key, value in self.lpips.state_dict().items():
                state_dict[prefix + LPIPS_PREFIX + key] = value

    # ------------------------------------------------------------------------------------------
    # ground truth

    def set_ground_truth(self, gt_c2w: np.ndarray, train_indices: np.ndarray, train_c2w: Optional[Tensor] = None) -> None:
        """Ground-truth poses for some training cameras.

        Args:
            gt_c2w: ``[M, 4, 4]`` camera-to-world, OpenCV axes, any world frame (the metrics align).
            train_indices: ``[M]`` the training camera index of each row.
            train_c2w: ``[N, 3, 4]`` the training cameras' input poses (camera-to-world, OpenGL axes,
                dataparser frame): needed for the metrics when the camera optimizer is nerfstudio's own
                (which keeps only the adjustment); the posefix optimizer keeps its own copy.
        """
        gt_c2w = np.asarray(gt_c2w, dtype=np.float64)
        train_indices = np.asarray(train_indices, dtype=np.int64)
        if gt_c2w.shape != (len(train_indices), 4, 4):
            raise ValueError(f"gt_c2w must be [{len(train_indices)}, 4, 4], got {gt_c2w.shape}")
        self._gt_c2w, self._gt_index = gt_c2w, train_indices
        self._train_c2w = None if train_c2w is None else train_c2w.detach().clone()

    def _corrected_train_c2w(self) -> Optional[Tensor]:
        """``[N, 3, 4]`` the training poses as rendered now (OpenGL axes, dataparser frame), or None."""
        optimizer = self.camera_optimizer
        corrected = getattr(optimizer, "corrected_c2w", None)
        if corrected is not None:
            return corrected()
        if self._train_c2w is None or not hasattr(optimizer, "pose_adjustment"):
            return None
        c2w = self._train_c2w.to(optimizer.pose_adjustment.device)
        return apply_adjustment(c2w, optimizer(torch.arange(c2w.shape[0], device=c2w.device)))

    def pose_errors_vs_ground_truth(self) -> Dict[str, float]:
        """Sim(3)-aligned errors of the rendered training poses against the ground truth (empty dict
        without ground truth or without the training poses; see :meth:`set_ground_truth`).
        ``pose_gt_translation_median_rel`` is relative to the scene radius (largest distance of a
        ground-truth centre from their centroid, :func:`nerf_posefix.geometry.poses.scene_radius`)."""
        from nerf_posefix.geometry.alignment import align
        from nerf_posefix.geometry.poses import as_4x4, opengl_to_opencv, rotation_angle_deg, scene_radius

        if self._gt_c2w is None or self._gt_index is None:
            return {}
        with torch.no_grad():
            corrected = self._corrected_train_c2w()
        if corrected is None:
            return {}
        est = corrected.detach().double().cpu().numpy()  # [N, 3, 4] OpenGL, dataparser frame
        est = est[self._gt_index]
        est44 = as_4x4(est)
        est_cv = opengl_to_opencv(est44)  # [M, 4, 4]
        try:
            aligned = align(est_cv, self._gt_c2w, mode="sim3").apply(est_cv)
        except InputError as err:
            CONSOLE.print(f"[bold yellow]posefix: ground-truth pose metrics disabled: {escape(str(err))}", soft_wrap=True)
            self._gt_c2w = self._gt_index = None
            return {}
        rot = rotation_angle_deg(self._gt_c2w[:, :3, :3], aligned[:, :3, :3])
        trans = np.linalg.norm(aligned[:, :3, 3] - self._gt_c2w[:, :3, 3], axis=-1)
        size = scene_radius(self._gt_c2w[:, :3, 3])
        return {
            "pose_gt_rotation_median_deg": float(np.median(rot)),
            "pose_gt_translation_median": float(np.median(trans)),
            "pose_gt_translation_median_rel": float(np.median(trans)) / size if size > 0 else float("nan"),
        }

    # ------------------------------------------------------------------------------------------
    # nerfstudio hooks

    def get_training_callbacks(self, training_callback_attributes: TrainingCallbackAttributes) -> List[TrainingCallback]:
        callbacks = super().get_training_callbacks(training_callback_attributes)
        trainer = training_callback_attributes.trainer
        if trainer is not None:
            self._log_every = max(int(trainer.config.logging.steps_per_log), 1)

        def record_step(step: int) -> None:
            self._posefix_step = step

        callbacks.append(
            TrainingCallback(
                where_to_run=[TrainingCallbackLocation.BEFORE_TRAIN_ITERATION],
                update_every_num_iters=1,
                func=record_step,
            )
        )
        return callbacks

    def get_metrics_dict(self, outputs, batch) -> Dict[str, torch.Tensor]:  # noqa: ANN001
        metrics_dict = super().get_metrics_dict(outputs, batch)
        if self.training and self._gt_c2w is not None and self._posefix_step % self._log_every == 0:
            metrics_dict.update(self.pose_errors_vs_ground_truth())
        return metrics_dict

    def get_image_metrics_and_images(
        self, outputs: Dict[str, torch.Tensor], batch: Dict[str, torch.Tensor]
    ) -> Tuple[Dict[str, float], Dict[str, torch.Tensor]]:
        if self.lpips is not None:
            return super().get_image_metrics_and_images(outputs, batch)
        # nerfacto calls self.lpips unconditionally: give it a NaN scorer for this call, then drop it.
        self.lpips = _NoLPIPS()
        try:
            metrics_dict, images_dict = super().get_image_metrics_and_images(outputs, batch)
        finally:
            self.lpips = None
        metrics_dict.pop("lpips", None)
        return metrics_dict, images_dict


class _NoLPIPS(torch.nn.Module):
    """Stand-in scorer returning NaN (the value is removed from the metrics)."""

    def forward(self, *args, **kwargs) -> torch.Tensor:  # noqa: ANN002,ANN003
        return torch.tensor(float("nan"))
