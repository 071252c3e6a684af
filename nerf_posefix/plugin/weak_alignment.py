"""Weak-camera alignment: after training, the weakly held cameras aligned photometrically against the frozen field.

Why (issue 22): in ``posefix refine``'s NeRF stage the well-held cameras are pinned at the adjustment and the
weakly held ones (blurred, washed out: few or no tracks) move under the photometric loss while the field is still
being fitted. Once the field is trained (mostly by the sharp, pinned images), optimising only the weak cameras'
poses against the frozen field, each rendered with its own appearance embedding, pins them better than the joint
training did (toybox, 16 blurred and washed-out of 64 views, seed 0, two trained runs: median rotation error of
the degraded views 0.66 -> 0.24 and 0.78 -> 0.28 deg with the default 50 steps at lr 2e-3, sharp views untouched;
with the average appearance embedding instead of each camera's own: 0.66 -> 0.64; see
``benchmarks/weak_alignment_probe.py``).

Whether a camera keeps its move: a camera whose tracks hold it partly (castle-P30 blurred 6 px: 25-46 observations)
has an adjustment's pose already, and a field trained on a CPU budget can move it away from there as easily as
toward the truth (castle-P30, blur 6 px, seed 0: two of six weakly held cameras from 0.11 / 0.25 deg to 0.50 /
1.16 deg). After the alignment each camera's end pose is tested against the pose the NeRF stage started from (the
dataset's: the adjustment's, or the input where no track holds it) by :func:`photometric_evidence`: the same
``evidence_rays`` pixels rendered at both poses, and the mean drop of the squared error against its standard error.
A camera keeps its NeRF-stage pose (training move and alignment) only when the drop exceeds ``evidence_z`` standard
errors; otherwise it goes back to its starting pose. A camera 2 deg off that the alignment brings back shows a drop
of ~40 standard errors; one that merely wanders about its pose shows none (``tests/test_weak_alignment.py``).

Where it runs: :class:`~nerf_posefix.plugin.pipeline.PosefixPipeline` calls :func:`align_into_optimizer` after the
last training iteration of a run (``ns-train posefix`` and ``posefix refine`` alike), before the final checkpoint,
so the run's checkpoint, its renders and every export hold the aligned poses; the run directory's
:data:`WEAK_ALIGNMENT_FILE` records what it did. The weakly held cameras are the ones the front end's tracks do
not hold (the front end's result, or the ``posefix_held`` keys of the dataset's transforms.json); the pipeline aligns
those with fewer than ``support.MIN_OBSERVATIONS`` observations or outside the largest group linked by tracks, whose
observations it leaves out of the track term. Those in the largest group with more (weak for an uncertain pose) keep
their observations in the track term and stay where the joint training leaves them (left to the photometric loss,
training and alignment, castle-P30's frame 0024, 32-36 observations held at 0.11-0.15 deg, went to 0.66-0.74 deg in
every seed).

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
        seed: seed of the pixel draws (None: 0; in a posefix run, the run's ``--machine.seed``, set when its config is
            saved, as ``posefix refine --seed`` seeds it).
        appearance: ``own``: each camera rendered with its own appearance embedding; ``average``: eval mode's
            average embedding.
        min_iterations: the alignment runs only after at least this many training iterations (see
            :func:`skip_reason`).
        evidence_rays: pixels per camera of the evidence test (:func:`photometric_evidence`).
        evidence_z: a camera keeps its NeRF-stage pose (training move and alignment) only when the frozen field
            renders it better there than at the pose the stage started from (the adjustment's) by at least this
            many standard errors over the same ``evidence_rays`` pixels; otherwise it goes back to that pose. 0:
            every camera keeps its NeRF-stage pose.
    """

    steps: int = 50
    lr: float = 2e-3
    rays_per_view: int = 256
    seed: Optional[int] = None
    appearance: Literal["own", "average"] = "own"
    min_iterations: int = 500
    evidence_rays: int = 4096
    evidence_z: float = 3.0

    @property
    def draw_seed(self) -> int:
        """The seed of the pixel draws (:attr:`seed`, 0 when None)."""
        return 0 if self.seed is None else int(self.seed)

    def budget(self) -> TestPoseAlignmentConfig:
        return TestPoseAlignmentConfig(steps=self.steps, lr=self.lr, rays_per_view=self.rays_per_view, seed=self.draw_seed)

    def check(self) -> None:
        """Raise ValueError on a budget that cannot run."""
        self.budget().check()
        if self.evidence_rays < 2 or not (np.isfinite(self.evidence_z) and self.evidence_z >= 0):
            raise ValueError(f"weak alignment evidence needs >= 2 rays and a z >= 0, got {self.evidence_rays} and {self.evidence_z}")
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
        gain, gain_stderr: ``[K]`` the evidence for the NeRF-stage pose (:func:`photometric_evidence`): how much
            lower the field's mean squared RGB error is there than at the stage's starting pose, and its standard
            error (empty when not measured).
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
    gain: np.ndarray = field(default_factory=lambda: np.zeros(0))
    gain_stderr: np.ndarray = field(default_factory=lambda: np.zeros(0))
    seconds: float = 0.0
    config: WeakAlignmentConfig = field(default_factory=WeakAlignmentConfig)

    def supported(self) -> np.ndarray:
        """``[K]`` bool: whether the evidence supports each camera's NeRF-stage pose (all, without a test)."""
        z = float(self.config.evidence_z)
        if z <= 0 or len(self.gain) != len(self.indices):
            return np.ones(len(self.indices), dtype=bool)
        return self.gain > z * self.gain_stderr


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


def photometric_evidence(
    model: Any, start: Any, end: Any, images: Sequence[Tensor], rays_per_view: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """How much better the frozen ``model`` renders each view at ``end`` than at ``start``, on the same pixels.

    Args:
        model: a trained ray model (or :class:`OwnAppearance`); frozen and in eval mode during the call.
        start, end: nerfstudio ``Cameras [K]`` (camera-to-world, OpenGL axes, dataparser frame): the two poses
            of each view.
        images: ``K`` images ``[H, W, 3|4]`` in [0, 1], the cameras' sizes.
        rays_per_view: pixels drawn uniformly per view (the same pixels for both poses: a paired comparison).
        seed: seed of the pixel draws.

    Returns:
        ``gain [K]``: mean over the pixels of ``e_start - e_end`` (``e``: squared RGB error averaged over the
        channels; > 0: ``end`` fits better), and ``stderr [K]``: its standard error (the per-pixel differences'
        standard deviation over ``sqrt(rays_per_view)``).
    """
    from nerf_posefix.plugin.test_pose_alignment import _gt_rgb, _image_tensor, draw_pixels, frozen_model

    device = getattr(model, "device", None) or next(model.parameters()).device
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    gains, errors = np.zeros(len(images)), np.zeros(len(images))
    with frozen_model(model), torch.no_grad():
        for k, image in enumerate(images):
            coords, colours = draw_pixels(_image_tensor(image).to(device), rays_per_view, gen)  # [R, 2] (y, x), [R, C]
            target = _gt_rgb(model, colours)  # [R, 3]
            view = torch.full((len(coords), 1), k, dtype=torch.long, device=device)  # [R, 1]
            per_pose = []
            for cams in (start, end):
                bundle = cams.to(device).generate_rays(camera_indices=view, coords=coords)  # [R]
                per_pose.append(((model(bundle)["rgb"] - target) ** 2).mean(dim=-1))  # [R]
            diff = (per_pose[0] - per_pose[1]).double().cpu().numpy()  # [R]
            gains[k] = float(diff.mean())
            errors[k] = float(diff.std(ddof=1) / np.sqrt(len(diff)))
    return gains, errors


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
    gain, gain_stderr = np.zeros(0), np.zeros(0)
    if config.evidence_z > 0:  # the stage's end pose against its start (the dataset's pose: no correction)
        gain, gain_stderr = photometric_evidence(target, dataset.cameras[index], result.cameras, images,
                                                 config.evidence_rays, config.draw_seed + 1)
    return WeakAlignment(
        indices=idx,
        cameras=result.cameras,
        rotation=result.rotation.detach().double().cpu().numpy(),
        translation=result.translation.detach().double().cpu().numpy(),
        rotation_deg=result.rotation_deg,
        translation_norm=result.translation_norm,
        loss_before=result.loss_before,
        loss_after=result.loss_after,
        gain=gain,
        gain_stderr=gain_stderr,
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
    keep = alignment.supported()  # [K]
    if keep.any():
        optimizer.compose_corrections(torch.from_numpy(alignment.indices[keep]), torch.from_numpy(alignment.rotation[keep]),
                                      torch.from_numpy(alignment.translation[keep]))
    if (~keep).any():
        optimizer.reset_corrections(torch.from_numpy(alignment.indices[~keep]))
    return alignment_record(alignment, [str(p) for p in pipeline.datamanager.train_dataset.image_filenames])


def alignment_record(alignment: WeakAlignment, train_filenames: Sequence[str]) -> dict[str, Any]:
    """What an alignment did, JSON-ready: the budget, its time, and per aligned image (keyed by its training
    file name, without folders) how far it moved it: ``rotation_deg`` (the angle of ``R_a``, the same in every
    frame) and ``translation`` (``|t_a|``, **dataparser units**), and its photometric loss before / after."""
    moved: dict[str, dict[str, float]] = {}
    keep = alignment.supported()
    for k, cam in enumerate(alignment.indices):
        entry: dict[str, Any] = {"rotation_deg": float(alignment.rotation_deg[k]), "translation": float(alignment.translation_norm[k])}
        for key, values in (("loss_before", alignment.loss_before), ("loss_after", alignment.loss_after),
                            ("evidence_gain", alignment.gain), ("evidence_stderr", alignment.gain_stderr)):
            if len(values) == len(alignment.indices):
                entry[key] = float(values[k])
        entry["kept"] = bool(keep[k])
        moved[Path(str(train_filenames[int(cam)])).name] = entry
    cfg = alignment.config
    return {
        "ran": True,
        "cameras": len(moved),
        "steps": cfg.steps, "lr": cfg.lr, "rays_per_view": cfg.rays_per_view, "appearance": cfg.appearance,
        "seconds": alignment.seconds,
        "evidence_rays": cfg.evidence_rays, "evidence_z": cfg.evidence_z,
        "kept": int(keep.sum()), "reverted": int((~keep).sum()),
        **move_statistics(moved),
        "units": "translation: dataparser units",
        "meaning": "after training, the weakly held cameras aligned photometrically against the frozen field (each with "
        "its own appearance embedding); how far that moved them; a camera keeps its NeRF-stage pose only where the field "
        "renders it better there than at the pose the stage started from (the adjustment's; the input's where no track holds "
        "it) by evidence_z standard errors (kept), else it goes back to that pose (rotation_deg / translation: the "
        "alignment's own move; the statistics count the kept ones)",
        "images": moved,
    }


def alignment_line(record: Mapping[str, Any]) -> str:
    """One line for the console from an :func:`alignment_record` (translations in whatever units it holds)."""
    line = (f"{record['cameras']} weakly held camera(s) aligned against the trained field in {record['seconds']:.0f} s; "
            f"{record.get('kept', record['cameras'])} kept their NeRF-stage pose (moved {record['rotation_deg_median']:.3f} deg median)")
    if record.get("reverted"):
        line += (f", {record['reverted']} went back to the pose the NeRF stage started from (the field did not render them "
                 f"better by {record['evidence_z']:g} standard errors)")
    return line


def move_statistics(moved: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Median and largest rotation (degrees) and translation of the per-image moves of a record (the cameras it
    kept; see :func:`photometric_evidence`)."""
    kept = [m for m in moved.values() if m.get("kept", True)]  # a reverted camera did not move
    rots = np.array([m["rotation_deg"] for m in kept])
    dists = np.array([m["translation"] for m in kept])
    return {
        "rotation_deg_median": float(np.median(rots)) if len(rots) else 0.0,
        "rotation_deg_max": float(rots.max()) if len(rots) else 0.0,
        "translation_median": float(np.median(dists)) if len(dists) else 0.0,
        "translation_max": float(dists.max()) if len(dists) else 0.0,
    }
