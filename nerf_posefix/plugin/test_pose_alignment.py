"""Test-pose alignment: optimise each held-out camera's pose against a frozen trained model before scoring.

Why: nerfstudio never pose-optimises its evaluation cameras. A run whose training poses were refined
lives in a slightly different frame than its held-out cameras, so it can render better and still score
a lower PSNR at the held-out poses. The field's protocol (BARF, NoPe-NeRF; CamP: 200 Adam steps at
lr 1e-3) optimises every held-out view's pose photometrically against the frozen model, identically for
every pose set compared, and scores the views at the aligned poses.

Conventions
-----------
* Cameras are nerfstudio ``Cameras``: ``camera_to_worlds [N, 3, 4]`` **camera-to-world**, **OpenGL
  camera axes** (x right, y up, the camera looks along -z), in the **dataparser frame** (the run's
  ``dataparser_transforms.json`` applied: oriented, centred and scaled; translations in dataparser units).
* One correction per camera, ``SO3xR3`` as nerfstudio's camera optimizer (``tangent [N, 6]``:
  translation first, then the ``so(3)`` rotation vector; :func:`nerfstudio.cameras.lie_groups.exp_map_SO3xR3`),
  applied exactly as ``CameraOptimizer.apply_to_raybundle`` applies it: ray origins ``+ t_adj``, ray
  directions rotated by ``R_adj``, i.e. the corrected pose is ``c2w' = [R_adj · R | t + t_adj]``
  (:func:`nerf_posefix.geometry.poses.apply_pose_correction`): the camera turns about its own centre
  and the centre moves by ``t_adj`` (world / dataparser axes).
* Loss: the mean squared RGB error (images in [0, 1], the model's background blending applied to the
  ground truth as nerfacto's evaluation does) over ``rays_per_view`` uniformly drawn pixels of each view
  per step. Views are optimised jointly but independently: the loss is the sum of the per-view means and
  Adam is per parameter, so a view's correction depends only on its own rays.
* The model is frozen: eval mode (no stratified sampling, average appearance embedding, no training
  camera correction), every parameter's ``requires_grad`` off during the alignment and restored after,
  so gradients reach the corrections only. Seeded: the pixel draws come from a private generator.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nerf_posefix.geometry.poses import apply_pose_correction


@dataclass
class TestPoseAlignmentConfig:
    """The fixed budget of a test-pose alignment (keep it identical for every pose set compared).

    Attributes:
        steps: Adam steps (CamP: 200). 0 returns the cameras unchanged (zero corrections).
        lr: Adam learning rate on the ``SO3xR3`` tangent (radians / dataparser units; CamP: 1e-3).
        rays_per_view: pixels drawn per view and step.
        seed: seed of the pixel draws.
    """

    __test__ = False  # not a pytest test class despite its name

    steps: int = 200
    lr: float = 1e-3
    rays_per_view: int = 512
    seed: int = 0

    def check(self) -> None:
        """Raise ValueError on a budget that cannot run."""
        if self.steps < 0:
            raise ValueError(f"test-pose alignment steps must be >= 0, got {self.steps}")
        if not self.lr > 0:
            raise ValueError(f"test-pose alignment lr must be > 0, got {self.lr}")
        if self.rays_per_view < 1:
            raise ValueError(f"test-pose alignment rays per view must be >= 1, got {self.rays_per_view}")


@dataclass
class TestPoseAlignment:
    """The result of :func:`align_test_poses`.

    Attributes:
        cameras: the corrected cameras (``camera_to_worlds [N, 3, 4]``, OpenGL axes, dataparser frame).
        rotation: ``R_adj [N, 3, 3]``; translation: ``t_adj [N, 3]`` (dataparser units, world axes).
        rotation_deg: ``[N]`` angle of each ``R_adj`` (degrees).
        translation_norm: ``[N]`` ``|t_adj|`` (dataparser units): how far each camera centre moved.
        loss_before, loss_after: ``[N]`` mean squared RGB error of each view on the first / last step's
            rays (the last at the final corrections, evaluated after the last step).
    """

    __test__ = False

    cameras: Any
    rotation: Tensor
    translation: Tensor
    rotation_deg: np.ndarray
    translation_norm: np.ndarray
    loss_before: np.ndarray = field(default_factory=lambda: np.zeros(0))
    loss_after: np.ndarray = field(default_factory=lambda: np.zeros(0))


@contextlib.contextmanager
def frozen_model(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode and ``requires_grad=False`` on every parameter while active; both restored after."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def _gt_rgb(model: Any, image: Tensor) -> Tensor:
    """``image [..., 3|4]`` in [0, 1] as the model compares it (RGBA blended over its background)."""
    renderer = getattr(model, "renderer_rgb", None)
    if renderer is not None and hasattr(renderer, "blend_background"):
        return renderer.blend_background(image)
    return image[..., :3]


def _image_tensor(image: Any) -> Tensor:
    """A ground-truth image as a float tensor ``[H, W, C]`` in [0, 1] (uint8 arrays are scaled)."""
    t = torch.as_tensor(np.asarray(image) if not isinstance(image, Tensor) else image)
    if t.dtype == torch.uint8:
        t = t.float() / 255.0
    return t.float()


def draw_pixels(image: Tensor, rays: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``rays`` pixels drawn uniformly from ``image [H, W, C]`` (with replacement, from the CPU ``generator``):
    their coordinates ``[R, 2]`` (y, x; pixel centres at +0.5, nerfstudio's) and colours ``[R, C]``, on the
    image's device."""
    h, w = int(image.shape[0]), int(image.shape[1])
    flat = torch.randint(0, h * w, (int(rays),), generator=generator)  # [R]
    y, x = (flat // w).to(image.device), (flat % w).to(image.device)
    return torch.stack([y, x], dim=-1).float() + 0.5, image[y, x]


def corrected_cameras(cameras: Any, rotation: Tensor, translation: Tensor) -> Any:
    """A copy of ``cameras`` [N] whose ``camera_to_worlds`` are ``[R_adj · R | t + t_adj]``."""
    out = cameras.to(cameras.device)  # a copy (TensorDataclass.to builds a new object)
    c2w = cameras.camera_to_worlds.detach()
    out.camera_to_worlds = apply_pose_correction(c2w, rotation.to(c2w), translation.to(c2w)).contiguous()
    return out


def align_test_poses(
    model: Any,
    cameras: Any,
    images: Sequence[Any],
    config: TestPoseAlignmentConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> TestPoseAlignment:
    """Optimise one ``SO3xR3`` correction per camera of ``cameras`` against the frozen ``model``.

    Args:
        model: a trained nerfstudio ray model (``model(ray_bundle)`` returns ``{"rgb": [R, 3], ...}``,
            e.g. nerfacto / posefix); frozen during the call (see the module docstring), state restored.
        cameras: nerfstudio ``Cameras`` with one batch dimension ``[N]`` (dataparser frame, OpenGL axes).
        images: ``N`` ground-truth images ``[H_k, W_k, 3|4]`` (float in [0, 1] or uint8), the sizes of
            the cameras.
        config: the budget (default :class:`TestPoseAlignmentConfig`).
        progress: called as ``progress(step_done, steps)`` after each step.

    Returns:
        The corrected cameras and the corrections (:class:`TestPoseAlignment`).
    """
    from nerfstudio.cameras.lie_groups import exp_map_SO3xR3

    config = config or TestPoseAlignmentConfig()
    config.check()
    n = len(cameras)
    if len(images) != n:
        raise ValueError(f"{len(images)} images for {n} cameras")
    device = getattr(model, "device", None) or next(model.parameters()).device
    cams = cameras.to(device)
    heights = [int(h) for h in cams.height.view(-1).tolist()]
    widths = [int(w) for w in cams.width.view(-1).tolist()]
    gts = []
    for k, image in enumerate(images):
        img = _image_tensor(image)
        if tuple(img.shape[:2]) != (heights[k], widths[k]):
            raise ValueError(f"image {k} is {tuple(img.shape[:2])}, its camera {heights[k]}x{widths[k]}")
        gts.append(img.to(device))
    gen = torch.Generator(device="cpu").manual_seed(int(config.seed))
    tangent = torch.zeros(n, 6, device=device, requires_grad=True)  # [N, 6] translation, so(3)
    optimizer = torch.optim.Adam([tangent], lr=float(config.lr))
    rays = int(config.rays_per_view)
    view_of_ray = torch.arange(n, device=device).repeat_interleave(rays)  # [N*R]

    def draw() -> tuple[Tensor, Tensor]:
        """Pixel coordinates ``[N*R, 2]`` (y, x; pixel centres at +0.5, nerfstudio's) and their colours."""
        coords, colours = zip(*(draw_pixels(gts[k], rays, gen) for k in range(n)))
        return torch.cat(coords), torch.cat(colours)

    def per_view_loss(coords: Tensor, colours: Tensor) -> Tensor:
        """``[N]`` mean squared RGB error of each view's rays at the current corrections."""
        bundle = cams.generate_rays(camera_indices=view_of_ray[:, None], coords=coords)  # [N*R]
        adj = exp_map_SO3xR3(tangent)[view_of_ray]  # [N*R, 3, 4]
        bundle.origins = bundle.origins + adj[:, :3, 3]
        bundle.directions = torch.bmm(adj[:, :3, :3], bundle.directions[..., None])[..., 0]
        rgb = model(bundle)["rgb"]  # [N*R, 3]; forward applies the collider
        err = ((rgb - _gt_rgb(model, colours)) ** 2).mean(dim=-1)  # [N*R]
        return err.view(n, rays).mean(dim=1)

    loss_before = np.full(n, np.nan)
    loss_after = np.full(n, np.nan)
    with frozen_model(model), torch.enable_grad():
        coords, colours = draw()
        for step in range(int(config.steps)):
            losses = per_view_loss(coords, colours)  # [N]
            if step == 0:
                loss_before = losses.detach().cpu().numpy().astype(np.float64)
            optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()
            optimizer.step()
            if progress is not None:
                progress(step + 1, int(config.steps))
            coords, colours = draw()
        if config.steps > 0:
            with torch.no_grad():
                loss_after = per_view_loss(coords, colours).cpu().numpy().astype(np.float64)
    with torch.no_grad():
        adj = exp_map_SO3xR3(tangent.detach())  # [N, 3, 4]
        rotation, translation = adj[:, :3, :3].contiguous(), adj[:, :3, 3].contiguous()
        cos = ((rotation.diagonal(dim1=-2, dim2=-1).sum(-1) - 1.0) / 2.0).clamp(-1.0, 1.0)
        rotation_deg = np.degrees(torch.arccos(cos).cpu().numpy().astype(np.float64))
        translation_norm = translation.norm(dim=-1).cpu().numpy().astype(np.float64)
    return TestPoseAlignment(
        cameras=corrected_cameras(cams, rotation, translation),
        rotation=rotation,
        translation=translation,
        rotation_deg=rotation_deg,
        translation_norm=translation_norm,
        loss_before=loss_before,
        loss_after=loss_after,
    )


def score_views(
    model: Any,
    cameras: Any,
    images: Sequence[Any],
    progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, float]]:
    """Render each camera of ``cameras [N]`` in full (``model.get_outputs_for_camera``, eval mode, no
    grad) and score it against its image with the model's own ``get_image_metrics_and_images``
    (nerfacto: ``psnr``, ``ssim``, ``lpips`` when the model has LPIPS weights).

    Returns:
        Per view, the metrics as floats.
    """
    device = getattr(model, "device", None) or next(model.parameters()).device
    cams = cameras.to(device)
    out: list[dict[str, float]] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for k in range(len(cams)):
                outputs = model.get_outputs_for_camera(camera=cams[k : k + 1])
                batch = {"image": _image_tensor(images[k]).to(device)}
                metrics, _ = model.get_image_metrics_and_images(outputs, batch)
                out.append({key: float(v) for key, v in metrics.items() if _is_number(v)})
                if progress is not None:
                    progress(k + 1, len(cams))
    finally:
        model.train(was_training)
    return out


def _is_number(value: Any) -> bool:
    if isinstance(value, (int, float)):
        return True
    return isinstance(value, Tensor) and value.numel() == 1
