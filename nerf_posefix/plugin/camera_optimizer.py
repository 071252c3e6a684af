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
from typing import TYPE_CHECKING, Literal, Optional, Type

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
from nerf_posefix.geometry.pixel_prior import camera_motion_from_adjustment, pixel_displacement_metric
from nerf_posefix.geometry.poses import apply_pose_correction
from nerf_posefix.geometry.reprojection import CameraIntrinsics, robust_loss
from nerf_posefix.geometry.robust_scale import auto_robust_scale
from nerf_posefix.geometry.preconditioning import homography_metric, preconditioner, sampled_metric, view_directions

if TYPE_CHECKING:
    from nerf_posefix.plugin.tracks import Tracks

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

    prior: Literal["homography", "pixels"] = "homography"
    """Form of the prior toward the initial poses: ``homography``, the paper's unscaled homography error
    times ``weight``; ``pixels``, the mean squared image displacement (pixels of the original image) of a
    camera's pose change over its image and its depth range
    (:func:`nerf_posefix.geometry.pixel_prior.pixel_prior`), divided by ``prior_sigma_px²`` and
    times ``geometric_weight`` (``SO3xR3`` only)."""

    prior_sigma_px: Optional[float] = None
    """``σ`` of the ``pixels`` prior: how far (mean image displacement, original pixels) an input pose may
    be from the truth. None: per camera, the median reprojection residual of its SfM observations at
    the input pose when the dataset has tracks (COLMAP's own accuracy; at least 0.05 px), else
    ``DEFAULT_PRIOR_SIGMA_PX``."""

    tracks: Literal["auto", "off"] = "auto"
    """Track term: ``auto`` adds the robust reprojection error of the SfM observations of each training
    image (a COLMAP model found with the dataset) through the rendered pose, in pixels of the original
    image; ``off`` never does."""

    geometric_weight: float = 1e-3
    """Weight of the geometric energy against the photometric MSE. The energy is a negative
    log-likelihood in pixels: ``E = Σ_obs ρ(‖r‖²)/σ_kp² + Σ_cameras D_i/σ_i²`` (σ_kp: the keypoint noise,
    the tracks' median residual at the input poses / 1.18; ``D_i``: the ``pixels`` prior), averaged per
    observation (per camera without tracks), so one camera's prior weighs like one of its observations
    when σ_i ≈ σ_kp."""

    track_loss: Literal["squared", "huber", "cauchy", "soft_l1"] = "cauchy"
    """Robust loss of the track term (Ceres' definitions, as COLMAP's bundle adjustment)."""

    track_scale_px: Optional[float] = None
    """Scale of the robust loss (pixels). None: twice the median reprojection residual of the tracks at the
    input poses, clipped to [0.1, 2] px (the bundle-adjustment stage's automatic scale)."""

    track_batch: int = 4096
    """Observations sampled per iteration for the track term (all of them when there are fewer)."""

    track_points: Literal["fixed", "refined"] = "refined"
    """Whether the 3D points of the tracks are optimised jointly with the poses (dataparser frame)."""


#: ``σ`` of the ``pixels`` prior when the input's accuracy is unknown (no SfM tracks), original pixels.
DEFAULT_PRIOR_SIGMA_PX = 5.0
#: nerfstudio parameter group (and optimizer config key) of the refined track points.
TRACK_POINTS_GROUP = "track_points"
#: Buffers (and the points parameter) of the track term; their sizes follow the dataset.
TRACK_STATE = (
    "track_camera_index",
    "track_point_index",
    "track_observed_px",
    "track_points_initial",
    "track_point_ids",
    "track_points",
    "track_scale",
    "track_sigma",
)


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
        if config.prior == "pixels" and config.mode == "SE3":
            raise ValueError("prior='pixels' needs mode='SO3xR3' (the pixel prior linearises nerfstudio's SO3xR3 adjustment)")
        if config.geometric_weight < 0 or config.track_batch < 1:
            raise ValueError("geometric_weight must be >= 0 and track_batch >= 1")
        # pixel prior: (fx, fy, cx, cy, width, height) per camera in original pixels, and σ per camera
        self.register_buffer("pixel_intrinsics", torch.zeros(num_cameras, 6, device=device))  # [N, 6]
        self.register_buffer("prior_sigma", torch.full((num_cameras,), DEFAULT_PRIOR_SIGMA_PX, device=device))  # [N]
        # cameras held at their initial pose (the front end's tracks hold them): adjustment fixed at zero
        self.register_buffer("held", torch.zeros(num_cameras, dtype=torch.bool, device=device))  # [N]
        # track term (empty until set_tracks; resized on checkpoint load)
        long, f64 = torch.long, torch.float64
        self.register_buffer("track_camera_index", torch.zeros(0, dtype=long, device=device))  # [K]
        self.register_buffer("track_point_index", torch.zeros(0, dtype=long, device=device))  # [K]
        self.register_buffer("track_observed_px", torch.zeros(0, 2, dtype=f64, device=device))  # [K, 2]
        self.register_buffer("track_points_initial", torch.zeros(0, 3, dtype=f64, device=device))  # [P, 3]
        self.register_buffer("track_point_ids", torch.zeros(0, dtype=long, device=device))  # [P]
        self.register_buffer("track_scale", torch.tensor(1.0, dtype=f64, device=device))  # [] pixels
        self.register_buffer("track_sigma", torch.tensor(1.0, dtype=f64, device=device))  # [] pixels (keypoint noise)
        self.track_points = torch.nn.Parameter(torch.zeros(0, 3, dtype=f64, device=device), requires_grad=False)  # [P, 3]
        self.track_intrinsics: Optional[CameraIntrinsics] = None
        self.tracks_source = "none"
        self._pixel_metric: Optional[Tensor] = None  # [N, 6, 6] of the pixel prior, from the intrinsics and bounds buffers
        self._track_generator = torch.Generator(device="cpu").manual_seed(0)

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
        pixel_scale: float = 1.0,
    ) -> None:
        """Store the initial train poses and the depth bounds, and set up the preconditioner.

        Args:
            initial_c2w: ``[N, 3|4, 4]`` camera-to-world, OpenGL axes, dataparser frame.
            xmin, xmax: depth bounds in dataparser-scaled units: floats or ``[N]`` tensors.
            source: how the bounds were obtained (for messages).
            intrinsics: ``[N, 4]`` pinhole ``(fx, fy, cx, cy)`` in pixels; needed for ``precondition=sampled``.
            image_sizes: ``[N, 2]`` ``(width, height)`` in pixels; needed for ``precondition=sampled``
                and ``prior=pixels``.
            pixel_scale: original image pixels per training pixel (the dataparser's downscale factor):
                the ``pixels`` prior is measured in pixels of the original images.

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
        self._pixel_metric = None
        if intrinsics is not None and image_sizes is not None:
            pixel = torch.cat([intrinsics.reshape(-1, 4), image_sizes.reshape(-1, 2)], dim=-1).to(self.pixel_intrinsics)
            self.pixel_intrinsics.copy_(pixel * float(pixel_scale))
        elif self.config.prior == "pixels":
            raise ValueError("prior='pixels' needs the cameras' intrinsics and image sizes")
        if self.config.prior_sigma_px is not None:
            if not self.config.prior_sigma_px > 0:
                raise ValueError(f"prior_sigma_px must be > 0, got {self.config.prior_sigma_px}")
            self.prior_sigma.fill_(float(self.config.prior_sigma_px))
        if self.config.precondition != "off":
            self._setup_preconditioner(intrinsics, image_sizes)

    def hold_cameras(self, held: Tensor) -> int:
        """Hold the cameras where ``held [N]`` is True at their initial pose (the NeRF does not move them:
        the front end's tracks already determine them better than the photometric loss can); returns how
        many are held."""
        self.held.copy_(held.to(self.held))
        return int(self.held.sum())

    def set_prior_sigma(self, sigma: Tensor) -> int:
        """Per-camera ``σ`` of the ``pixels`` prior (``[N]`` pixels of the original images; NaN: keep the
        camera's own), from how well the front end's tracks hold each camera
        (:func:`nerf_posefix.sfm.support.prior_sigma_px`). Ignored when ``prior_sigma_px`` is set or the prior
        is not ``pixels``. Returns how many cameras got a new ``σ``."""
        if self.config.prior != "pixels" or self.config.prior_sigma_px is not None:
            return 0
        sigma = sigma.to(self.prior_sigma)  # [N]
        given = torch.isfinite(sigma) & (sigma > 0)
        self.prior_sigma.copy_(torch.where(given, sigma, self.prior_sigma))
        return int(given.sum())

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
        free = ~(self.held if indices is None else self.held[indices])  # [K]
        phi = phi * free.unsqueeze(-1).to(phi)  # held cameras: no adjustment, no gradient
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

    def compose_corrections(
        self, indices: Int[Tensor, "K"], rotation: Float[Tensor, "K 3 3"], translation: Float[Tensor, "K 3"]
    ) -> None:
        """Compose a further correction ``[R_a | t_a]`` (dataparser frame and units) onto the current ones of the
        cameras at ``indices``: afterwards they render at ``[R_a R_adj R | t + t_adj + t_a]`` (composed correction
        ``[R_a R_adj | t_adj + t_a]``), the same rule as :func:`~nerf_posefix.geometry.poses.apply_pose_correction`.

        Writes ``pose_adjustment`` (through the preconditioner's inverse); ``SO3xR3`` only, whose tangent is the
        translation itself and the rotation vector ``log(R_a R_adj)`` (float64 logarithm).

        Raises:
            ValueError: another mode, or a held camera among ``indices`` (its adjustment is fixed at zero).
        """
        if self.config.mode != "SO3xR3":
            raise ValueError(f"composing corrections needs mode='SO3xR3', got mode={self.config.mode!r}")
        from scipy.spatial.transform import Rotation

        device = self.pose_adjustment.device
        idx = indices.to(device=device, dtype=torch.long).reshape(-1)  # [K]
        if bool(self.held[idx].any()):
            raise ValueError("cannot move held cameras (their adjustment is fixed at zero)")
        with torch.no_grad():
            current = self(idx).double()  # [K, 3, 4] [R_adj | t_adj]
            rot = rotation.to(current) @ current[:, :, :3]  # [K, 3, 3]
            trans = current[:, :, 3] + translation.to(current)  # [K, 3]
            omega = torch.from_numpy(Rotation.from_matrix(rot.cpu().numpy()).as_rotvec()).to(current)  # [K, 3]
            tangent = torch.cat([trans, omega], dim=-1)  # [K, 6] (t, ω) as exp_map_SO3xR3 reads it
            if self.config.precondition != "off":  # pose_adjustment holds φ with tangent = P φ
                tangent = torch.linalg.solve(self.preconditioner[idx].to(tangent), tangent.unsqueeze(-1)).squeeze(-1)
            self.pose_adjustment[idx] = tangent.to(self.pose_adjustment)

    def reset_corrections(self, indices: Int[Tensor, "K"]) -> None:
        """Undo the corrections of the cameras at ``indices``: afterwards they render at their dataset pose
        (``pose_adjustment`` rows zero: the identity correction, with or without the preconditioner).

        Raises:
            ValueError: a held camera among ``indices`` (its adjustment is fixed at zero already).
        """
        idx = indices.to(device=self.pose_adjustment.device, dtype=torch.long).reshape(-1)  # [K]
        if bool(self.held[idx].any()):
            raise ValueError("cannot reset held cameras (their adjustment is fixed at zero)")
        with torch.no_grad():
            self.pose_adjustment[idx] = 0.0

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
    # SfM tracks

    def set_tracks(self, tracks: Optional["Tracks"]) -> None:
        """Store the SfM observations of the training cameras (:class:`nerf_posefix.plugin.tracks.Tracks`:
        original-resolution pixels, points in the dataparser frame), set the robust scale and, with
        ``prior=pixels`` and no ``prior_sigma_px``, each camera's ``σ`` from its residuals at the input
        pose. None (or ``tracks=off``) leaves the track term off."""
        if tracks is None or self.config.tracks == "off" or self.config.mode == "off":
            return
        self._require_reference()
        device = self.initial_c2w.device
        self.track_camera_index = tracks.camera_index.to(device)
        self.track_point_index = tracks.point_index.to(device)
        self.track_observed_px = tracks.observed_px.to(device=device, dtype=torch.float64)
        self.track_points_initial = tracks.points.to(device=device, dtype=torch.float64).clone()
        self.track_point_ids = tracks.point_ids.to(device)
        self.track_points = torch.nn.Parameter(
            self.track_points_initial.clone(), requires_grad=self.config.track_points == "refined"
        )
        self.track_intrinsics = tracks.intrinsics.to(device=device)
        self.tracks_source = tracks.source
        with torch.no_grad():
            residuals, valid = self.track_residuals(sample=False)
            norms = residuals.norm(dim=-1)[valid]  # [K'] pixels
        if norms.numel() == 0:
            raise ValueError(f"no observation of {tracks.source} lies in front of its camera")
        self.track_sigma.fill_(max(float(norms.median()) / 1.18, 0.05))  # median norm of 2D Gaussian noise = 1.18 σ
        if self.config.track_scale_px is not None:
            if not self.config.track_scale_px > 0:
                raise ValueError(f"track_scale_px must be > 0, got {self.config.track_scale_px}")
            self.track_scale.fill_(float(self.config.track_scale_px))
        else:
            self.track_scale.fill_(float(auto_robust_scale(norms)))
        if self.config.prior == "pixels" and self.config.prior_sigma_px is None:
            cams = self.track_camera_index[valid]
            sigma = torch.full((self.num_cameras,), DEFAULT_PRIOR_SIGMA_PX, dtype=torch.float64)
            for cam in range(self.num_cameras):  # robust per-camera σ: the median residual norm (≈ 1.18 σ_keypoint)
                mine = norms[cams == cam]
                if mine.numel():
                    sigma[cam] = float(mine.median())
            self.prior_sigma.copy_(sigma.clamp(min=0.05).to(self.prior_sigma))
        CONSOLE.print(
            f"posefix: track term on {tracks.source}: {self.config.track_loss} loss, scale "
            f"{float(self.track_scale):.3g} px, median residual at the input poses {float(norms.median()):.3g} px, "
            f"points {self.config.track_points}",
            soft_wrap=True,
        )

    @property
    def has_tracks(self) -> bool:
        return self.track_camera_index.numel() > 0 and self.track_intrinsics is not None

    def track_residuals(self, sample: bool = True) -> tuple[Tensor, Tensor]:
        """Reprojection residuals ``[B, 2]`` (pixels of the original image) of the tracks through the
        rendered poses, and ``valid [B]`` (point in front of the camera). ``sample``: a random batch of
        ``track_batch`` observations; else all of them. Differentiable in the adjustment and the points."""
        assert self.track_intrinsics is not None
        count = self.track_camera_index.shape[0]
        if sample and count > self.config.track_batch:
            rows = torch.randint(count, (self.config.track_batch,), generator=self._track_generator).to(self.initial_c2w.device)
        else:
            rows = torch.arange(count, device=self.initial_c2w.device)
        cams = self.track_camera_index[rows]  # [B]
        c2w_cv = self.corrected_c2w().double() * self._opengl_to_opencv  # [N, 3, 4] OpenCV axes
        return self.track_intrinsics.residuals(
            c2w_cv[cams], self.track_points[self.track_point_index[rows]], self.track_observed_px[rows], cams
        )

    @functools.cached_property
    def _opengl_to_opencv(self) -> Tensor:
        """Column signs that turn camera-to-world OpenGL axes into OpenCV axes: ``[3, 4]``."""
        return torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64, device=self.initial_c2w.device).expand(3, 4)

    def track_loss(self) -> Tensor:
        """The track energy per observation, ``mean ρ(‖r‖²) / σ_kp²``, over a sampled batch."""
        residuals, valid = self.track_residuals()
        self._last_track_norms = residuals.detach().norm(dim=-1)[valid]  # [B'] pixels, for the metrics
        rho = robust_loss((residuals**2).sum(-1), self.config.track_loss, self.track_scale)  # [B]
        mean = rho[valid].mean() if bool(valid.any()) else rho.sum() * 0.0
        return mean / self.track_sigma**2

    def pixel_prior_errors(self) -> Float[Tensor, "num_cameras"]:
        """Per camera, the mean squared image displacement (pixels² of the original image) of the
        rendered pose against the initial one over the image and the depth bounds."""
        self._require_reference()
        if self._pixel_metric is None:  # fixed per camera (intrinsics, bounds): computed once, not per step
            k = self.pixel_intrinsics
            self._pixel_metric = pixel_displacement_metric(k[:, 0], k[:, 1], k[:, 2], k[:, 3], k[:, 4], k[:, 5], self.xmin, self.xmax)
        phi = camera_motion_from_adjustment(self.initial_c2w, self.pose_tangent(), "opengl")  # [N, 6]
        return torch.einsum("ni,nij,nj->n", phi, self._pixel_metric.to(phi), phi)  # = pixel_prior(...), [N]

    def get_param_groups(self, param_groups: dict) -> None:
        """nerfstudio's ``camera_opt`` group (the pose adjustment) and, when the track points are refined,
        a ``track_points`` group: points need a far smaller learning rate than poses (Adam moves every
        coordinate by about its learning rate per step, and a point that jitters by 1e-3 of the scene moves
        its projections by pixels). Nothing with ``mode=off``."""
        if self.config.mode == "off":
            return
        param_groups["camera_opt"] = [p for p in self.parameters() if p.requires_grad and p is not self.track_points]
        if self.track_points.requires_grad and self.track_points.numel():
            param_groups[TRACK_POINTS_GROUP] = [self.track_points]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001, ANN002, ANN003
        """Resize the track state to the checkpoint's (its size follows the dataset) before loading; the
        pixel prior's metric is recomputed from the loaded intrinsics and bounds."""
        self._pixel_metric = None
        if prefix + "held" not in state_dict:  # a checkpoint from before cameras could be held
            state_dict[prefix + "held"] = torch.zeros_like(self.held)
        for name in TRACK_STATE:
            saved = state_dict.get(prefix + name)
            if saved is None:
                continue
            if name == "track_points":
                if tuple(self.track_points.shape) != tuple(saved.shape):
                    self.track_points = torch.nn.Parameter(
                        torch.zeros_like(saved, device=self.initial_c2w.device), requires_grad=self.track_points.requires_grad
                    )
            elif tuple(getattr(self, name).shape) != tuple(saved.shape):
                setattr(self, name, torch.zeros_like(saved, device=self.initial_c2w.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

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
        """Add ``camera_opt_regularizer``: the prior toward the initial poses (``weight`` · mean homography
        error, or ``geometric_weight`` · mean pixel displacement / σ²) plus the L2 penalties; and, with
        tracks, ``camera_opt_tracks`` = ``geometric_weight`` · mean robust squared reprojection error."""
        if self.config.mode == "off":
            return
        regularizer = self._l2_penalties()
        if self.config.prior == "pixels":
            if self.config.geometric_weight > 0:
                prior = (self.pixel_prior_errors() / self.prior_sigma.to(self.initial_c2w) ** 2).mean()
                if self.has_tracks:  # per observation, as the track energy: Σ_cameras / K = mean_cameras · N / K
                    prior = prior * (self.num_cameras / self.track_camera_index.shape[0])
                regularizer = regularizer + self.config.geometric_weight * prior
        elif self.config.weight > 0:
            regularizer = regularizer + self.config.weight * self.homography_errors().mean()
        loss_dict["camera_opt_regularizer"] = regularizer
        if self.has_tracks and self.config.geometric_weight > 0:
            loss_dict["camera_opt_tracks"] = (self.config.geometric_weight * self.track_loss()).float()

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
        norms = getattr(self, "_last_track_norms", None)  # the last loss batch's: no second projection
        if self.has_tracks and norms is not None and norms.numel():
            metrics_dict["camera_opt_track_median_px"] = norms.median().float()
