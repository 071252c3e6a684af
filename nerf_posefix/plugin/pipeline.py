"""Pipeline that checks the dataset and hands the initial train poses and depth bounds to the optimizer.

:class:`PosefixPipeline` is nerfstudio's ``VanillaPipeline`` plus:

1. before the datamanager reads anything, :func:`nerf_posefix.plugin.dataset.validate_dataset` (one
   :class:`~nerf_posefix.errors.InputError` naming the file and frame for NaN poses, missing images,
   broken COLMAP files), then (``front_end on``, the default) posefix refine's front end
   (:mod:`nerf_posefix.plugin.front_end`: robust bundle adjustment of the dataset's tracks, or of tracks
   built from its images), whose adjusted dataset the datamanager then reads (the run's config keeps the
   dataset as given); before the front end, the datamanager's image cache is checked against the memory
   (:func:`nerf_posefix.plugin.datamanager.check_image_cache_config`), so a capture that cannot fit is refused
   before that work;
2. after the model is built, when its camera optimizer is a
   :class:`~nerf_posefix.plugin.camera_optimizer.HomographyCameraOptimizer`: the training cameras'
   ``camera_to_worlds`` (OpenGL axes, dataparser frame: the initial poses) and the depth bounds
   (:mod:`nerf_posefix.plugin.depth_bounds`, dataparser-scaled units) are stored in its buffers, and the
   bounds and their source are printed once;
3. when the dataset has ``transforms_gt.json``, its poses are matched to the training images by name
   and handed to the model for the ground-truth pose metrics;
4. with ``eval_pose_alignment_steps > 0``, :meth:`PosefixPipeline.get_average_eval_image_metrics` (what
   ``ns-eval`` calls) first aligns every eval camera to the frozen model (test-pose alignment, the
   protocol of BARF / CamP: :mod:`nerf_posefix.plugin.test_pose_alignment`) and scores the views at the
   aligned poses, so a run with refined training poses is scored comparably; the mean corrections are
   reported as ``pose_alignment_rotation_deg`` and ``pose_alignment_translation`` (dataparser units);
5. after the run's last training iteration, before its final checkpoint: the weakly held training cameras
   (the front end's tracks do not hold them) are aligned against the frozen field and the alignment is
   composed into the camera optimizer (:mod:`nerf_posefix.plugin.weak_alignment`; ``RUN/weak_alignment.json``);
   then (front end on) each one's move is checked against its held neighbours in the front end's model, as
   ``posefix refine`` does, and a move after which it fits them worse is undone
   (:mod:`nerf_posefix.plugin.move_check`; ``RUN/move_check.json``).

Loading a checkpoint afterwards (``ns-train --load-dir``, ``ns-eval``, ...) replaces the buffers with
the saved ones, so a run keeps the reference poses and bounds it was trained with.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Literal, Optional, Type

import numpy as np
import torch
from torch.cuda.amp.grad_scaler import GradScaler

from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.pipelines.base_pipeline import VanillaPipeline, VanillaPipelineConfig
from nerfstudio.utils.rich_utils import CONSOLE
from rich.markup import escape

from nerf_posefix.plugin.camera_optimizer import HomographyCameraOptimizer
from nerf_posefix.plugin.front_end import training_dataparser
from nerf_posefix.plugin.datamanager import check_image_cache_config
from nerf_posefix.plugin.dataset import DatasetInfo, describe_dataset, validate_dataset
from nerf_posefix.io.camera_set import match_image_names
from nerf_posefix.io.transforms_json import HELD_KEY, PRIOR_SIGMA_KEY, read_transforms_frames
from nerf_posefix.sfm.frame_placement import PLACEMENT_MAX_FRAMES
from nerf_posefix.sfm.support import MIN_OBSERVATIONS as WEAK_MIN_OBSERVATIONS, WEAK_PRIOR_SIGMA_PX, prior_sigma_px
from nerf_posefix.plugin.tracks import MIN_OBSERVATIONS as TRACKS_MIN_OBSERVATIONS, build_tracks
from nerf_posefix.plugin.depth_bounds import DepthBounds, compute_depth_bounds, find_sparse_points
from nerf_posefix.plugin.test_pose_alignment import TestPoseAlignmentConfig, align_test_poses, score_views
from nerf_posefix.plugin.move_check import MOVE_CHECK_FILE, check_training_moves, move_check_line
from nerf_posefix.plugin.weak_alignment import WEAK_ALIGNMENT_FILE, WeakAlignmentConfig, align_into_optimizer, alignment_line, skipped


@dataclass
class PosefixPipelineConfig(VanillaPipelineConfig):
    """nerfstudio's vanilla pipeline + dataset checks + reference poses/bounds for the camera optimizer."""

    _target: Type = field(default_factory=lambda: PosefixPipeline)
    front_end: Literal["on", "off"] = "on"
    """Before training, run posefix refine's front end on the dataset (:mod:`nerf_posefix.plugin.front_end`):
    the robust bundle adjustment of its COLMAP tracks, or tracks built from the images of a pose-only
    transforms.json, then the adjustment; every camera (eval split included) starts from the adjusted
    poses, which are also the prior's reference. Cached in the run directory. off: train from the
    dataset's poses as they are."""
    front_end_cache: Optional[Path] = None
    """Where the front end keeps its result (set to RUN/front_end when the run's config is saved; None: a
    temporary directory, not reused)."""
    front_end_matching: Literal["auto", "exhaustive", "sequential", "spatial"] = "auto"
    """Feature matching when the front end builds tracks (as posefix refine --matching)."""
    front_end_intrinsics: Literal["auto", "fixed", "focal", "focal-pp"] = "auto"
    """What the front end's adjustment of a COLMAP model's own tracks refines of its cameras, as posefix refine
    --intrinsics (auto: a principal point at COLMAP's placeholder that the tracks contradict); the dataset the
    NeRF reads then carries the refined cameras (the COLMAP model, or the transforms.json's intrinsics)."""
    front_end_blur_matching: bool = True
    """Match the blurred frames that the front end's matching links with few matches against their neighbours
    blurred alike (as posefix refine --blur-matching / --no-blur-matching)."""
    front_end_frame_placement: bool = True
    """Place the blurred frames the adjustment holds weakly or not at all against the adjusted ones held fixed (as posefix refine
    --frame-placement / --no-frame-placement)."""
    front_end_placement_max_frames: int = PLACEMENT_MAX_FRAMES
    """The most blurred frames the front end places, the least blurred first (as posefix refine --placement-max-frames)."""
    front_end_photometric_alignment: bool = True
    """Align the frames still weakly held after the placement by their intensities against their held neighbours (as
    posefix refine --photometric-alignment / --no-photometric-alignment)."""
    front_end_seed: Optional[int] = None
    """COLMAP's random seed in the front end (the RANSAC of the match verification, the triangulation). None: the
    run's --machine.seed (set when the run's config is saved), as posefix refine --seed seeds both its front end and
    its NeRF: the same seed gives the same tracks on both paths (on castle-P30 with blurred frames the RANSAC seed
    alone moves the sharp frames' error between ~0.09 and ~0.22 deg)."""
    front_end_threads: int = 0
    """COLMAP's threads in the front end (0: one per core; as posefix refine --threads). With one thread two runs give
    the same tracks to the last digit; with more, COLMAP's approximate CPU matcher can flip a borderline image pair
    from run to run (the bundled toybox: 389 instead of 390 verified pairs in 1 of 9 runs)."""
    nerf_cameras: Literal["weak", "all"] = "weak"
    """Which cameras the NeRF refines when the front end says how well the tracks hold each one: ``weak``,
    only the weakly held ones (few or no tracks, an uncertain pose, a separate group); the others keep the
    adjusted pose (measured on castle-P30: a CPU-sized NeRF moves well-held cameras away from the
    adjustment, 0.067 -> 0.083 deg median). ``all``: every camera, under the prior and the track term."""
    ground_truth_metrics: bool = True
    """Log pose errors against transforms_gt.json when the dataset has one."""
    weak_alignment: WeakAlignmentConfig = field(default_factory=WeakAlignmentConfig)
    """After the last training iteration, the weakly held cameras (those the front end's tracks do not hold) are
    aligned photometrically against the frozen field, each with its own appearance embedding, and the alignment
    is composed into the camera optimizer before the final checkpoint (:mod:`nerf_posefix.plugin.weak_alignment`;
    recorded in RUN/weak_alignment.json). steps 0: off; it runs only after min_iterations iterations."""
    check_weak_moves: bool = True
    """After the weak alignment (front end on): each weakly held camera's move over the run tested against its held
    neighbours in the front end's model, through its points, as ``posefix refine`` tests its NeRF stage's moves; a
    move after which the frame fits them worse by 3 standard errors is undone (:mod:`nerf_posefix.plugin.move_check`;
    RUN/move_check.json)."""
    eval_pose_alignment_steps: int = 0
    """Test-pose alignment before ``get_average_eval_image_metrics`` (``ns-eval``): each eval camera's pose
    is optimised this many Adam steps against the frozen model before it is scored
    (:mod:`nerf_posefix.plugin.test_pose_alignment`; CamP: 200). 0: scored at the dataset poses."""
    eval_pose_alignment_lr: float = 1e-3
    """Adam learning rate of the test-pose alignment (CamP: 1e-3)."""
    eval_pose_alignment_rays: int = 512
    """Pixels drawn per eval view and alignment step."""
    eval_pose_alignment_seed: int = 0
    """Seed of the alignment's pixel draws."""


class PosefixPipeline(VanillaPipeline):
    """See the module docstring. Arguments as nerfstudio's ``VanillaPipeline``.

    Attributes:
        dataset_info: where the dataset's files are.
        depth_bounds: the bounds computed at construction (None without a homography optimizer).
    """

    config: PosefixPipelineConfig

    def __init__(
        self,
        config: PosefixPipelineConfig,
        device: str,
        test_mode: Literal["test", "val", "inference"] = "val",
        world_size: int = 1,
        local_rank: int = 0,
        grad_scaler: Optional[GradScaler] = None,
    ):
        if config.datamanager.data is not None:  # the datamanager's data option overrides the dataparser's
            config.datamanager.dataparser.data = config.datamanager.data
        self.dataset_info: DatasetInfo = describe_dataset(config.datamanager.dataparser)
        validate_dataset(self.dataset_info)
        if config.front_end == "on":  # the datamanager checks again when set up; this refuses before the front end's work
            check_image_cache_config(config.datamanager, test_mode)
        original = config.datamanager
        dataparser, self.front_end = training_dataparser(config, log=lambda line: CONSOLE.print(f"posefix: {escape(line)}", soft_wrap=True))
        if self.front_end is not None:
            CONSOLE.print(f"[bold]posefix: {escape(self.front_end.line)}", soft_wrap=True)
        if dataparser is not original.dataparser:  # the datamanager reads the adjusted dataset
            config.datamanager = copy.copy(original)
            config.datamanager.dataparser = dataparser
            config.datamanager.data = None
            self.dataset_info = describe_dataset(dataparser)
        try:
            super().__init__(config, device, test_mode, world_size, local_rank, grad_scaler)
        finally:
            config.datamanager = original  # the run's config keeps the dataset as given
        self.depth_bounds: Optional[DepthBounds] = None
        self.weak_cameras = torch.zeros(0, dtype=torch.long)  # [K] weakly held training cameras aligned after training
        self.weak_cameras_tracked = 0  # weakly held cameras that keep their observations in the track term (not aligned)
        self.front_end_weak = torch.zeros(0, dtype=torch.long)  # [W] training cameras the front end holds weakly (moves checked)
        optimizer = self.model.camera_optimizer
        if isinstance(optimizer, HomographyCameraOptimizer):
            self.depth_bounds = self._setup_reference(optimizer)
        if config.ground_truth_metrics and self.dataset_info.gt_path is not None:
            self._setup_ground_truth()

    def get_training_callbacks(self, training_callback_attributes: TrainingCallbackAttributes) -> List[TrainingCallback]:
        """nerfstudio's callbacks, and the weak-camera alignment after the run's last iteration."""
        callbacks = super().get_training_callbacks(training_callback_attributes)
        trainer = training_callback_attributes.trainer
        if trainer is not None:
            callbacks.append(TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], self._after_iteration,
                                              kwargs={"trainer": trainer}))
        return callbacks

    def _after_iteration(self, step: int, trainer: Any) -> None:
        """After the run's last iteration (the trainer saves its final checkpoint next): align the weakly held
        cameras and record it in the run directory."""
        last = int(trainer._start_step) + int(trainer.config.max_num_iterations) - 1  # noqa: SLF001 (nerfstudio's)
        if step != last:
            return
        if not len(self.weak_cameras) and self.weak_cameras_tracked:
            record = skipped(f"the {self.weak_cameras_tracked} weakly held camera(s) are in the largest group with at least "
                             f"{WEAK_MIN_OBSERVATIONS} observations each and keep them in the track term: none is left to the photometric alignment")
        else:
            record = align_into_optimizer(self, self.weak_cameras.tolist(), step + 1, self.config.weak_alignment)
        path = Path(trainer.base_dir) / WEAK_ALIGNMENT_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2), encoding="utf-8")
        if record["ran"]:
            CONSOLE.print(f"posefix: weak alignment: {alignment_line(record)}", soft_wrap=True)
        elif len(self.weak_cameras):
            CONSOLE.print(f"[yellow]posefix: weak alignment skipped: {escape(record['reason'])}", soft_wrap=True)
        if self.front_end is not None and len(self.front_end_weak) and getattr(self.config, "check_weak_moves", True):
            self._check_moves(Path(trainer.base_dir))

    def _check_moves(self, run_dir: Path) -> None:
        """The training's moves of the weakly held cameras checked against their held neighbours in the front end's
        model (:mod:`nerf_posefix.plugin.move_check`); those found worse are undone; ``RUN/move_check.json``."""
        optimizer = self.model.camera_optimizer
        if not isinstance(optimizer, HomographyCameraOptimizer) or optimizer.config.mode == "off":
            return
        assert self.front_end is not None
        with torch.no_grad():
            start = optimizer.initial_c2w.detach().cpu().double().numpy()  # [N, 3, 4] OpenGL, dataparser frame
            moved = optimizer.corrected_c2w().detach().cpu().double().numpy()  # [N, 3, 4]
        record = check_training_moves(self.front_end, self._train_image_names(), start, moved, self.front_end_weak.tolist())
        if record["undone_cameras"]:
            optimizer.reset_corrections(torch.tensor(record["undone_cameras"], dtype=torch.long))
        (run_dir / MOVE_CHECK_FILE).write_text(json.dumps(record, indent=2), encoding="utf-8")
        line = move_check_line(record)
        CONSOLE.print(f"{'[yellow]' if record.get('reason') else ''}posefix: {escape(line)}", soft_wrap=True)

    def _train_image_names(self) -> list[str]:
        return [str(p) for p in self.datamanager.train_dataparser_outputs.image_filenames]

    def _setup_reference(self, optimizer: HomographyCameraOptimizer) -> DepthBounds:
        outputs = self.datamanager.train_dataparser_outputs
        train_c2w = self.datamanager.train_dataset.cameras.camera_to_worlds  # [N, 3, 4] OpenGL, dataparser frame
        log: list[str] = []
        needs_points = optimizer.config.bounds in ("auto", "points-global", "points-per-camera") or (
            optimizer.config.tracks == "auto" and optimizer.config.mode != "off"
        )
        points = find_sparse_points(self.dataset_info, outputs, train_c2w, log) if needs_points else None
        model_config = self.model.config
        bounds = compute_depth_bounds(
            optimizer.config,
            train_c2w,
            self.datamanager.train_dataset.scene_box.aabb,
            getattr(model_config, "near_plane", None),
            getattr(model_config, "far_plane", None),
            points,
            names=self._train_image_names(),
        )
        cameras = self.datamanager.train_dataset.cameras
        optimizer.set_reference(
            train_c2w,
            bounds.xmin,
            bounds.xmax,
            source=bounds.source,
            intrinsics=torch.cat([cameras.fx, cameras.fy, cameras.cx, cameras.cy], dim=-1),  # [N, 4] pixels
            image_sizes=torch.cat([cameras.width, cameras.height], dim=-1),  # [N, 2] pixels
            pixel_scale=self._downscale_factor(),
        )
        sigma, held = self._front_end_support()
        tracked = None  # [N] bool: weakly held cameras whose own observations stay in the track term
        if optimizer.config.tracks == "auto":
            tracks = build_tracks(points, len(train_c2w), log)
            if tracks is not None and held is not None and bool((~held).any()):
                # a weakly held camera with few observations (blurred frames' rescued keypoints: on toybox a frame with
                # 8 such observations ended at 1.0-1.4 deg in three seeds, the worst of its 16 degraded frames) or in a
                # group of its own (its tracks cannot place it: the photometric alignment does; toybox's two rings
                # unlinked by sequential matching, seed 0: 0.25 deg with it, 0.40 deg with their tracks kept instead) is
                # left to the photometric loss; one in the largest group, weak for its uncertain pose, keeps its
                # observations, a real constraint (castle-P30: a frame its 32-36 observations hold at 0.11-0.15 deg went
                # to ~0.7 deg without)
                counts = torch.bincount(tracks.camera_index.cpu(), minlength=len(held))  # [N] observations per camera
                tracked = (~held) & (counts >= WEAK_MIN_OBSERVATIONS) & tracks.largest_group(len(held))
                few = (~held) & ~tracked
                if bool(few.any()):
                    tracks = tracks.without_cameras(few)
                    log.append(f"track term: the observations of the {int(few.sum())} weakly held camera(s) with fewer than "
                               f"{WEAK_MIN_OBSERVATIONS} or outside the largest group left out")
                if len(tracks) < TRACKS_MIN_OBSERVATIONS:
                    log.append(f"no track term: {len(tracks)} observations of the held cameras")
                    tracks, tracked = None, None
            optimizer.set_tracks(tracks)
        if sigma is not None and optimizer.set_prior_sigma(sigma):
            weak = int((sigma >= WEAK_PRIOR_SIGMA_PX).sum())
            log.append(f"pixels prior: σ per camera from how well the tracks hold it ({weak} weakly held camera(s) at σ "
                       f"{WEAK_PRIOR_SIGMA_PX:g} px, the photometric loss decides for them)")
        if held is not None:
            self.front_end_weak = torch.nonzero(~held).reshape(-1)
            # the weak alignment after training is photometric only: for the weakly held cameras the track term left to
            # the photometric loss; those that keep their observations stay where training left them (photometric
            # loss, track term and prior together)
            aligned = (~held) if tracked is None else (~held) & ~tracked
            self.weak_cameras = torch.nonzero(aligned).reshape(-1)
            self.weak_cameras_tracked = 0 if tracked is None else int(tracked.sum())
            if tracked is not None and bool(tracked.any()):
                log.append(f"{int(tracked.sum())} weakly held camera(s) in the largest group with at least {WEAK_MIN_OBSERVATIONS} "
                           "observations keep them in the track term and are not realigned photometrically after training")
        if held is not None and self.config.nerf_cameras == "weak" and optimizer.config.mode != "off":
            count = optimizer.hold_cameras(held)
            by = "the front end's tracks" if self.front_end is not None else f"the dataset's {HELD_KEY} marks (posefix refine's)"
            log.append(f"{count} of {len(held)} training cameras are held by {by} and keep their adjusted "
                       f"pose; the NeRF refines the {len(held) - count} weakly held one(s) (--pipeline.nerf-cameras all: every camera)")
        for line in log:
            CONSOLE.print(f"[yellow]posefix: {escape(line)}", soft_wrap=True)
        CONSOLE.print(f"[bold]posefix: {escape(bounds.describe(float(outputs.dataparser_scale)))}", soft_wrap=True)
        return bounds

    def _front_end_support(self) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Per training camera, from how well the front end's tracks hold it: the pixels prior's ``σ`` ``[N]``
        (NaN: none given; :func:`nerf_posefix.sfm.support.prior_sigma_px`) and whether it is held ``[N]`` bool.
        From the front end's result, or without a front end from the dataset's transforms.json frames (keys
        :data:`~nerf_posefix.io.transforms_json.PRIOR_SIGMA_KEY` / ``HELD_KEY``, as ``posefix refine`` writes
        them for its NeRF stage). ``(None, None)`` when neither has any."""
        sigma_by_name: dict[str, float] = {}
        held_by_name: dict[str, bool] = {}
        images = ((self.front_end.summary.get("adjustment") or {}).get("images") or {}) if self.front_end is not None else {}
        for name, support in images.items():
            sigma_by_name[name] = prior_sigma_px(support)
            held_by_name[name] = not support.get("weak", False)
        if not images and self.dataset_info.transforms_path is not None:
            for frame in read_transforms_frames(self.dataset_info.transforms_path)["frames"]:
                if PRIOR_SIGMA_KEY in frame:
                    sigma_by_name[str(frame["file_path"])] = float(frame[PRIOR_SIGMA_KEY])
                if HELD_KEY in frame:
                    held_by_name[str(frame["file_path"])] = bool(frame[HELD_KEY])
        train = self._train_image_names()

        def per_camera(by_name: dict, missing: float) -> Optional[torch.Tensor]:
            if not by_name:
                return None
            names = list(by_name)
            match = match_image_names(train, names)
            return torch.tensor([float(by_name[names[m]]) if m is not None else missing for m in match], dtype=torch.float64)

        held = per_camera(held_by_name, 0.0)
        return per_camera(sigma_by_name, float("nan")), (held > 0.5 if held is not None else None)

    def _downscale_factor(self) -> float:
        """Original image pixels per training pixel (the dataparser's downscale factor, 1 if unknown)."""
        dataparser = self.datamanager.dataparser
        factor = getattr(dataparser, "downscale_factor", None) or getattr(dataparser, "_downscale_factor", None)
        return float(factor) if factor else 1.0

    def _setup_ground_truth(self) -> None:
        from nerf_posefix.io.transforms_json import read_transforms_json

        set_gt = getattr(self.model, "set_ground_truth", None)
        if set_gt is None:
            return
        assert self.dataset_info.gt_path is not None
        gt = read_transforms_json(self.dataset_info.gt_path)  # OpenCV axes
        match = match_image_names(self._train_image_names(), gt.names)
        train_idx = np.array([i for i, m in enumerate(match) if m is not None], dtype=np.int64)
        gt_idx = np.array([m for m in match if m is not None], dtype=np.int64)
        if len(train_idx) < 3:
            CONSOLE.print(
                f"[yellow]posefix: {escape(str(self.dataset_info.gt_path))}: only {len(train_idx)} training images have a "
                "ground-truth pose; no ground-truth metrics"
            )
            return
        set_gt(gt.c2w[gt_idx], train_idx, train_c2w=self.datamanager.train_dataset.cameras.camera_to_worlds)
        CONSOLE.print(
            f"posefix: ground-truth poses for {len(train_idx)}/{len(match)} training cameras from "
            f"{escape(str(self.dataset_info.gt_path))} (metrics pose_gt_*)",
            soft_wrap=True,
        )

    def get_average_eval_image_metrics(
        self, step: int | None = None, output_path: Path | None = None, get_std: bool = False
    ) -> dict[str, float]:
        """nerfstudio's average over the eval images; with ``eval_pose_alignment_steps > 0`` the eval cameras
        are first test-pose aligned (see the module docstring) and the views scored at the aligned poses
        (``output_path``: the renders and ground truths are saved as nerfstudio names them)."""
        if self.config.eval_pose_alignment_steps <= 0:
            return super().get_average_eval_image_metrics(step=step, output_path=output_path, get_std=get_std)
        dataset = self.datamanager.eval_dataset
        images = [dataset.get_image_float32(i) for i in range(len(dataset))]  # [H, W, C] in [0, 1]
        budget = TestPoseAlignmentConfig(
            steps=int(self.config.eval_pose_alignment_steps),
            lr=float(self.config.eval_pose_alignment_lr),
            rays_per_view=int(self.config.eval_pose_alignment_rays),
            seed=int(self.config.eval_pose_alignment_seed),
        )
        aligned = align_test_poses(self.model, dataset.cameras, images, budget)
        per_view = score_views(self.model, aligned.cameras, images)
        if output_path is not None:
            self._save_renders(aligned.cameras, output_path)
        metrics: dict[str, float] = {}
        for key in per_view[0]:
            values = torch.tensor([m[key] for m in per_view], dtype=torch.float64)
            metrics[key] = float(values.mean())
            if get_std:
                metrics[f"{key}_std"] = float(values.std()) if len(values) > 1 else 0.0
        metrics["pose_alignment_rotation_deg"] = float(np.mean(aligned.rotation_deg))
        metrics["pose_alignment_translation"] = float(np.mean(aligned.translation_norm))
        self.train()
        return metrics

    def _save_renders(self, cameras, output_path: Path) -> None:  # cameras: nerfstudio Cameras [N]
        """Save each eval view's render and ground truth as nerfstudio's ``get_average_image_metrics``."""
        import torchvision.utils as vutils

        output_path.mkdir(exist_ok=True, parents=True)
        dataset = self.datamanager.eval_dataset
        self.eval()
        with torch.no_grad():
            for idx in range(len(dataset)):
                outputs = self.model.get_outputs_for_camera(camera=cameras[idx : idx + 1].to(self.device))
                batch = {"image": dataset.get_image_float32(idx).to(self.device)}
                _, images = self.model.get_image_metrics_and_images(outputs, batch)
                for key, image in images.items():
                    vutils.save_image(image.permute(2, 0, 1).cpu(), output_path / f"eval_{key}_{idx:04d}.png")
