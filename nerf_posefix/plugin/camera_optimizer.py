"""Camera optimizer regularised by the homography pose error (Boittiaux et al., RA-L 2022).

:class:`HomographyCameraOptimizer` subclasses nerfstudio's
:class:`~nerfstudio.cameras.camera_optimizers.CameraOptimizer`: same ``pose_adjustment`` parameters,
same exponential maps (:mod:`nerfstudio.cameras.lie_groups`), same application to ray bundles and
cameras, so it works with every model that uses nerfstudio's camera optimizer. Only the regulariser
changes: instead of nerfstudio's ``trans_l2_penalty · mean‖t_adj‖ + rot_l2_penalty · mean‖ω_adj‖``
(both penalties default to 0 here, and are still added when set), ``camera_opt_regularizer`` is

    ``weight · mean_i homography_error(c2w_initial_i, c2w'_i, xmin_i, xmax_i)``.

Conventions
-----------
* All poses are **camera-to-world** ``[R | t]`` matrices ``[N, 3, 4]`` with **OpenGL camera axes**
  (x right, y up, looking along -z), in the **dataparser frame**: the input world frame after
  nerfstudio's orientation/centring transform and scaling (``dataparser_transforms.json``).
  Translations and the depth bounds ``xmin``/``xmax`` are in **dataparser-scaled units**.
* nerfstudio renders camera ``i`` at ``c2w'_i = [R_adj · R_i | t_i + t_adj]`` where
  ``(R_adj, t_adj) = exp(pose_adjustment_i)`` (``SO3xR3``: ``R_adj = exp(ω)``, ``t_adj`` the first three
  components; ``SE3``: nerfstudio's SE(3) exponential): the rotation acts on the world side and does
  not move the camera centre. :meth:`HomographyCameraOptimizer.corrected_c2w` builds exactly that
  pose, so the regulariser measures the pose that is actually rendered.
* ``c2w_initial`` (the train poses the dataparser produced, i.e. the noisy input poses) and the bounds
  are buffers: they are saved in checkpoints and restored with them. They are set once by
  :meth:`HomographyCameraOptimizer.set_reference` (called by
  :class:`nerf_posefix.plugin.pipeline.PosefixPipeline`).
* ``pose_adjustment`` is read in one place only, :meth:`HomographyCameraOptimizer.pose_tangent`, so a
  reparameterisation of the adjustment (e.g. a preconditioner) only needs to change that method.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from typing import Literal, Optional, Type

import numpy
import torch
from jaxtyping import Float, Int
from torch import Tensor
from typing_extensions import assert_never

from nerfstudio.cameras.camera_optimizers import CameraOptimizer, CameraOptimizerConfig
from nerfstudio.cameras.lie_groups import exp_map_SE3, exp_map_SO3xR3
from nerfstudio.utils import poses as pose_utils
from nerfstudio.utils.rich_utils import CONSOLE

from nerf_posefix.geometry.homography import (
    check_depth_bounds,
    check_poses,
    homography_error_from_relative,
    inverse_depth_moments,
    optical_axis,
    relative_pose,
)
from nerf_posefix.geometry.poses import apply_pose_correction
from nerf_posefix.geometry.preconditioning import homography_metric, preconditioner, sampled_metric, view_directions

BoundsMode = Literal["auto", "near-far", "scene-box", "points-global", "points-per-camera", "fixed"]


def apply_adjustment(c2w: Float[Tensor, "K 3 4"], adj: Float[Tensor, "K 3 4"]) -> Float[Tensor, "K 3 4"]:
    """The pose nerfstudio renders for camera-to-world ``c2w`` (OpenGL axes, dataparser frame) and a
    correction ``adj = [R_adj | t_adj]`` (``CameraOptimizer.forward``): ``[R_adj · R | t + t_adj]``, as
    ``CameraOptimizer.apply_to_raybundle`` moves the rays (origins + t_adj, directions R_adj · d)."""
    return apply_pose_correction(c2w, adj[:, :3, :3], adj[:, :3, 3])


@dataclass
class HomographyCameraOptimizerConfig(CameraOptimizerConfig):
    """Camera pose optimizer regularised by the homography pose error.

    The depth bounds ``[xmin, xmax]`` of the homography error are chosen by ``bounds``
    (see :mod:`nerf_posefix.plugin.depth_bounds`), all in dataparser-scaled units:

    * ``auto`` (default): ``points-global`` when the dataset has a sparse point cloud (a COLMAP model
      or the dataparser's ``points3D_xyz``), otherwise ``scene-box``;
    * ``near-far``: the model's ``near_plane``/``far_plane`` (nerfacto's far plane of 1000 is a
      sampling limit, not a scene depth: it makes the translation term almost vanish);
    * ``scene-box``: ``xmin`` = the model's near plane, ``xmax`` = the largest depth of a scene-box
      corner seen from any training camera (a conservative range that covers the whole box);
    * ``points-global``: the ``lower_quantile``/``upper_quantile`` quantiles of the depths of the sparse
      points each camera observes, pooled over cameras (the paper's global variant);
    * ``points-per-camera``: the same quantiles per camera (the paper's local variant); cameras that
      observe fewer than ``min_points_per_camera`` points get the global bounds;
    * ``fixed``: ``xmin``/``xmax`` as given.
    """

    _target: Type = field(default_factory=lambda: HomographyCameraOptimizer)

    mode: Literal["off", "SO3xR3", "SE3"] = "SO3xR3"
    """Pose optimization strategy (as nerfstudio's). ``off`` disables pose refinement."""

    trans_l2_penalty: float = 0.0
    """nerfstudio's L2 penalty on the translation adjustments (added to the homography term; 0 = off)."""

    rot_l2_penalty: float = 0.0
    """nerfstudio's L2 penalty on the rotation adjustments (added to the homography term; 0 = off)."""

    weight: float = 1e-2
    """Weight of the homography regulariser. 0 gives nerfstudio's optimizer with the L2 penalties above."""

    bounds: BoundsMode = "auto"
    """How the depth range [xmin, xmax] of the homography error is chosen (dataparser-scaled units)."""

    xmin: Optional[float] = None
    """Near depth for ``bounds=fixed`` (dataparser-scaled units, > 0)."""

    xmax: Optional[float] = None
    """Far depth for ``bounds=fixed`` (dataparser-scaled units, > xmin)."""

    lower_quantile: float = 0.025
    """Quantile of the sparse-point depths used as xmin (``points-*`` bounds)."""

    upper_quantile: float = 0.975
    """Quantile of the sparse-point depths used as xmax (``points-*`` bounds)."""

    min_points_per_camera: int = 10
    """Fewest observed points for a camera to get its own bounds (``points-per-camera``)."""

    precondition: Literal["off", "homography", "sampled"] = "off"
    """Reparameterise the adjustment as ``pose_adjustment = P φ`` (``SO3xR3`` only), with
    ``P = (M + λ diag M)^-1/2`` per camera: ``homography`` takes ``M = Q``, the closed-form metric of the
    homography error (:func:`nerf_posefix.geometry.preconditioning.homography_metric`); ``sampled`` takes CamP's
    ``Σ`` from projections of points sampled in each frustum between the bounds."""

    precondition_damping: float = 0.1
    """``λ`` of the preconditioner (CamP's default 0.1)."""

    precondition_samples: int = 5000
    """Points per camera for ``precondition=sampled``."""


class HomographyCameraOptimizer(CameraOptimizer):
    """nerfstudio's camera optimizer with the homography regulariser (see the module docstring).

    Buffers (saved in checkpoints):
        initial_c2w: ``[N, 3, 4]`` reference (initial) train poses, camera-to-world, OpenGL axes,
            dataparser frame.
        xmin, xmax: ``[N]`` depth bounds per camera, dataparser-scaled units (global bounds are
            broadcast to every camera).
        reference_set: 0-d bool, whether :meth:`set_reference` was called (or a checkpoint loaded).
    """

    config: HomographyCameraOptimizerConfig

    def __init__(
        self,
        config: HomographyCameraOptimizerConfig,
        num_cameras: int,
        device: torch.device | str,
        non_trainable_camera_indices: Optional[Int[Tensor, "num_non_trainable_cameras"]] = None,
        **kwargs,
    ) -> None:
        super().__init__(config, num_cameras, device, non_trainable_camera_indices, **kwargs)
        if config.weight < 0:
            raise ValueError(f"camera optimizer weight must be >= 0, got {config.weight}")
        if config.precondition != "off" and config.mode != "SO3xR3":
            raise ValueError(f"precondition={config.precondition!r} needs mode='SO3xR3', got mode={config.mode!r}")
        eye = torch.eye(4, device=device)[:3, :4]
        self.register_buffer("initial_c2w", eye[None].repeat(num_cameras, 1, 1))  # [N, 3, 4]
        self.register_buffer("xmin", torch.ones(num_cameras, device=device))  # [N]
        self.register_buffer("xmax", torch.full((num_cameras,), 2.0, device=device))  # [N]
        self.register_buffer("reference_set", torch.tensor(False, device=device))  # []
        # pose_adjustment = P φ: with preconditioning the learnable ``pose_adjustment`` holds φ
        self.register_buffer("preconditioner", torch.eye(6, device=device)[None].repeat(num_cameras, 1, 1))  # [N, 6, 6]
        self.bounds_source = "not set"

    # ------------------------------------------------------------------------------------------
    # reference poses and bounds

    def set_reference(
        self,
        initial_c2w: Float[Tensor, "num_cameras 3 4"],
        xmin: Float[Tensor, "num_cameras"] | float,
        xmax: Float[Tensor, "num_cameras"] | float,
        source: str = "",
        intrinsics: Optional[Float[Tensor, "num_cameras 4"]] = None,
        image_sizes: Optional[Float[Tensor, "num_cameras 2"]] = None,
    ) -> None:
        """Store the initial train poses and the depth bounds, and set up the preconditioner.

        Args:
            initial_c2w: ``[N, 3|4, 4]`` camera-to-world, OpenGL axes, dataparser frame.
            xmin, xmax: depth bounds in dataparser-scaled units: floats or ``[N]`` tensors.
            source: how the bounds were obtained (for messages).
            intrinsics: ``[N, 4]`` pinhole ``(fx, fy, cx, cy)`` in pixels; needed for ``precondition=sampled``.
            image_sizes: ``[N, 2]`` ``(width, height)`` in pixels; needed for ``precondition=sampled``.

        Raises:
            ValueError: wrong number of poses, poses that are not finite rigid transforms, or bounds
                that are not finite, not positive or inverted (the message names the first offending
                camera index).
        """
        if initial_c2w.shape[0] != self.num_cameras or tuple(initial_c2w.shape[1:]) not in ((3, 4), (4, 4)):
            raise ValueError(
                f"initial_c2w must have shape [{self.num_cameras}, 3|4, 4], got {tuple(initial_c2w.shape)}"
            )
        dtype, device = self.initial_c2w.dtype, self.initial_c2w.device
        xmin_t = torch.as_tensor(xmin, dtype=dtype, device=device).expand(self.num_cameras)
        xmax_t = torch.as_tensor(xmax, dtype=dtype, device=device).expand(self.num_cameras)
        check_depth_bounds(xmin_t, xmax_t)
        check_poses(initial_c2w[:, :3, :4], "initial_c2w")
        self.initial_c2w.copy_(initial_c2w[:, :3, :4].to(dtype=dtype, device=device))
        self.xmin.copy_(xmin_t)
        self.xmax.copy_(xmax_t)
        self.reference_set.fill_(True)
        self.bounds_source = source
        if self.config.precondition != "off":
            self._setup_preconditioner(intrinsics, image_sizes)

    def _setup_preconditioner(self, intrinsics: Optional[Tensor], image_sizes: Optional[Tensor]) -> None:
        """Compute ``P`` once (float64, then stored in the buffer) and log its setup cost."""
        start = time.perf_counter()
        c2w = self.initial_c2w.double()
        if self.config.precondition == "homography":
            metric = homography_metric(view_directions(c2w, "opengl"), self.xmin.double(), self.xmax.double())
        else:
            if intrinsics is None or image_sizes is None:
                raise ValueError("precondition='sampled' needs the cameras' intrinsics and image sizes")
            metric = sampled_metric(
                c2w,
                self.xmin.double(),
                self.xmax.double(),
                intrinsics.double().to(c2w.device),
                image_sizes.double().to(c2w.device),
                num_points=self.config.precondition_samples,
                camera_convention="opengl",
                generator=torch.Generator(device=c2w.device).manual_seed(0),
            )
        precond = preconditioner(metric, self.config.precondition_damping)  # [N, 6, 6]
        self.preconditioner.copy_(precond.to(self.preconditioner.dtype))
        self.precondition_setup_seconds = time.perf_counter() - start
        CONSOLE.print(
            f"posefix: {self.config.precondition} preconditioner (λ = {self.config.precondition_damping:g}) for "
            f"{self.num_cameras} cameras set up in {1e3 * self.precondition_setup_seconds:.2f} ms"
        )

    def _require_reference(self) -> None:
        if not bool(self.reference_set):
            raise RuntimeError(
                "HomographyCameraOptimizer: the initial poses and depth bounds were never set; use "
                "nerf_posefix.plugin.pipeline.PosefixPipelineConfig (or call set_reference())"
            )

    # ------------------------------------------------------------------------------------------
    # the adjustment

    def pose_tangent(self, indices: Optional[Int[Tensor, "num_indices"]] = None) -> Float[Tensor, "num_indices 6"]:
        """The tangent-space pose adjustment ``(t_adj, ω)`` of the cameras at ``indices`` (all if None).

        The only place that reads ``pose_adjustment``. With preconditioning, ``pose_adjustment`` holds
        ``φ`` and the adjustment is ``P φ`` (``P``: the ``preconditioner`` buffer, ``[N, 6, 6]``).
        """
        phi = self.pose_adjustment if indices is None else self.pose_adjustment[indices, :]  # [K, 6]
        if self.config.precondition == "off":
            return phi
        precond = self.preconditioner if indices is None else self.preconditioner[indices]  # [K, 6, 6]
        return (precond @ phi.unsqueeze(-1)).squeeze(-1)

    def forward(self, indices: Int[Tensor, "camera_indices"]) -> Float[Tensor, "camera_indices 3 4"]:
        """Correction matrices ``[R_adj | t_adj]`` ``[K, 3, 4]`` of the cameras at ``indices``
        (nerfstudio's ``CameraOptimizer.forward``, reading the adjustment through :meth:`pose_tangent`)."""
        outputs = []
        if self.config.mode == "off":
            pass
        elif self.config.mode == "SO3xR3":
            outputs.append(exp_map_SO3xR3(self.pose_tangent(indices)))
        elif self.config.mode == "SE3":
            outputs.append(exp_map_SE3(self.pose_tangent(indices)))
        else:
            assert_never(self.config.mode)
        device = self.initial_c2w.device
        if self.non_trainable_camera_indices is not None and outputs:
            if self.non_trainable_camera_indices.device != device:
                self.non_trainable_camera_indices = self.non_trainable_camera_indices.to(device)
            outputs[0][self.non_trainable_camera_indices] = torch.eye(4, device=device)[:3, :4]
        if len(outputs) == 0:
            return torch.eye(4, device=device)[None, :3, :4].tile(indices.shape[0], 1, 1)
        return functools.reduce(pose_utils.multiply, outputs)

    def corrected_c2w(self, indices: Optional[Int[Tensor, "num_indices"]] = None) -> Float[Tensor, "num_indices 3 4"]:
        """The poses nerfstudio renders, ``[R_adj · R | t + t_adj]`` ``[K, 3, 4]`` (OpenGL axes,
        dataparser frame) for the cameras at ``indices`` (all if None). Differentiable."""
        if indices is None:
            indices = torch.arange(self.num_cameras, device=self.initial_c2w.device)
        return apply_adjustment(self.initial_c2w[indices], self(indices))

    def homography_errors(self) -> Float[Tensor, "num_cameras"]:
        """Per-camera homography error between the initial and the rendered pose, ``[N]``.

        ``nerf_posefix.geometry.homography.homography_error`` without its per-call input checks: the initial
        poses and the bounds are checked once in :meth:`set_reference`, and the rendered rotations are
        rotations by construction (exponential map times a rotation).
        """
        self._require_reference()
        rot, trans = relative_pose(self.initial_c2w, self.corrected_c2w())  # [N, 3, 3], [N, 3]
        beta, gamma = inverse_depth_moments(self.xmin, self.xmax)  # [N], [N]
        axis = optical_axis("opengl", rot.dtype, rot.device)  # [3]
        return homography_error_from_relative(rot, trans, beta, gamma, axis)

    # ------------------------------------------------------------------------------------------
    # losses and metrics

    def _l2_penalties(self) -> Tensor:
        """nerfstudio's regulariser (0 with the default penalties of 0)."""
        tangent = self.pose_tangent()
        return (
            tangent[:, :3].norm(dim=-1).mean() * self.config.trans_l2_penalty
            + tangent[:, 3:].norm(dim=-1).mean() * self.config.rot_l2_penalty
        )

    def get_loss_dict(self, loss_dict: dict) -> None:
        """Add ``camera_opt_regularizer`` = weight · mean homography error (+ the L2 penalties)."""
        if self.config.mode == "off":
            return
        regularizer = self._l2_penalties()
        if self.config.weight > 0:
            regularizer = regularizer + self.config.weight * self.homography_errors().mean()
        loss_dict["camera_opt_regularizer"] = regularizer

    def get_metrics_dict(self, metrics_dict: dict) -> None:
        """nerfstudio's ``camera_opt_{translation,rotation}_{mean,max}`` (dataparser units, degrees)
        plus ``camera_opt_homography_{mean,max}``, the unweighted homography errors."""
        if self.config.mode == "off":
            return
        tangent = self.pose_tangent().detach()
        trans = tangent[:, :3].norm(dim=-1)
        rot = tangent[:, 3:].norm(dim=-1)
        metrics_dict["camera_opt_translation_max"] = trans.max()
        metrics_dict["camera_opt_translation_mean"] = trans.mean()
        metrics_dict["camera_opt_rotation_mean"] = numpy.rad2deg(rot.mean().cpu())
        metrics_dict["camera_opt_rotation_max"] = numpy.rad2deg(rot.max().cpu())
        if bool(self.reference_set):
            with torch.no_grad():
                errors = self.homography_errors()
            metrics_dict["camera_opt_homography_mean"] = errors.mean()
            metrics_dict["camera_opt_homography_max"] = errors.max()
