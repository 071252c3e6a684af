"""The ``posefix`` and ``posefix-small`` methods, registered with nerfstudio through the entry points
``nerfstudio.method_configs`` in ``pyproject.toml``.

* ``posefix``: nerfacto (GPU-sized defaults, as nerfstudio's ``nerfacto``) with the homography camera
  optimizer (the prior in its pixel form, as ``posefix refine``: σ per camera from how well the front end's
  tracks hold it; castle-P30, 1000 iterations: the same pose error as the unscaled form, 0.083 vs 0.084 deg,
  held-out PSNR 20.61 vs 20.36 dB; ``benchmarks.plugin_front_end``), the front end, the offline-safe model
  and the checking pipeline.
* ``posefix-small``: the same sized for a laptop CPU (8 hash levels, 2^15 hash tables for all three
  grids, 32-wide MLPs, 64/32 proposal samples and 24 NeRF samples, torch hash grids, no mixed
  precision, single-process data loading), device ``cpu`` by default, logging to tensorboard.

Importing this module also lets ``torch.load`` read nerfstudio checkpoints with ``weights_only=True``
(see :mod:`nerf_posefix.plugin.checkpoint`); nerfstudio imports it whenever it lists methods, so
``ns-eval``, ``ns-render``, ``ns-viewer`` and ``ns-train --load-dir`` can load posefix runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nerfstudio.configs.base_config import MachineConfig, ViewerConfig
from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.schedulers import ExponentialDecaySchedulerConfig
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.plugins.types import MethodSpecification

from nerf_posefix.plugin.camera_optimizer import TRACK_POINTS_GROUP, HomographyCameraOptimizerConfig
from nerf_posefix.plugin.checkpoint import register_checkpoint_safe_globals
from nerf_posefix.plugin.datamanager import PosefixDataManagerConfig, PosefixParallelDataManagerConfig
from nerf_posefix.plugin.model import PosefixModelConfig
from nerf_posefix.plugin.pipeline import PosefixPipelineConfig
from nerf_posefix.plugin.refusals import install_refusal_hook, launched_by_ns_train

#: The front end's cache directory inside a run directory.
FRONT_END_DIR = "front_end"

register_checkpoint_safe_globals()


@dataclass
class PosefixTrainerConfig(TrainerConfig):
    """nerfstudio's ``TrainerConfig``; saving the run's config also fixes where the pipeline's front end
    keeps its result (``RUN/front_end``; with ``--load-dir``, the loaded run's when it has one), so
    ``ns-train --load-dir``, ``ns-eval``, ``ns-viewer`` and ``posefix export`` reuse it; under ``ns-train``, makes its
    refusals of bad input one line (:mod:`nerf_posefix.plugin.refusals`); and, unless given, seeds the
    front end and the weak cameras' alignment with the run's ``--machine.seed`` (``posefix refine --seed`` seeds its
    front end, its NeRF and that alignment)."""

    def save_config(self) -> None:
        if launched_by_ns_train():  # its refusals of bad input as one line, not a traceback through the trainer
            install_refusal_hook()
        pipeline = self.pipeline
        if isinstance(pipeline, PosefixPipelineConfig) and pipeline.front_end_seed is None:
            pipeline.front_end_seed = int(self.machine.seed)
        if isinstance(pipeline, PosefixPipelineConfig) and pipeline.weak_alignment.seed is None:
            pipeline.weak_alignment.seed = int(self.machine.seed)
        if isinstance(pipeline, PosefixPipelineConfig) and pipeline.front_end == "on":
            cache = self.get_base_dir() / FRONT_END_DIR
            if self.load_dir is not None and (Path(self.load_dir).parent / FRONT_END_DIR).is_dir():
                cache = Path(self.load_dir).parent / FRONT_END_DIR
            pipeline.front_end_cache = cache
        super().save_config()


#: posefix-small field sizes (measured ~0.24 s per 1024-ray iteration on 2 CPU cores).
SMALL_LOG2_HASHMAP_SIZE = 15
SMALL_MAX_ITERATIONS = 3000


def posefix_config() -> TrainerConfig:
    """``posefix``: nerfstudio's nerfacto config with the homography camera optimizer."""
    return PosefixTrainerConfig(
        method_name="posefix",
        steps_per_eval_batch=500,
        steps_per_save=2000,
        max_num_iterations=30000,
        mixed_precision=True,
        pipeline=PosefixPipelineConfig(
            datamanager=PosefixParallelDataManagerConfig(
                dataparser=NerfstudioDataParserConfig(),
                train_num_rays_per_batch=4096,
                eval_num_rays_per_batch=4096,
            ),
            model=PosefixModelConfig(
                eval_num_rays_per_chunk=1 << 15,
                average_init_density=0.01,
                camera_optimizer=HomographyCameraOptimizerConfig(mode="SO3xR3", prior="pixels"),
            ),
        ),
        optimizers={
            "proposal_networks": {
                "optimizer": AdamOptimizerConfig(lr=1e-2, eps=1e-15),
                "scheduler": ExponentialDecaySchedulerConfig(lr_final=0.0001, max_steps=200000),
            },
            "fields": {
                "optimizer": AdamOptimizerConfig(lr=1e-2, eps=1e-15),
                "scheduler": ExponentialDecaySchedulerConfig(lr_final=0.0001, max_steps=200000),
            },
            "camera_opt": {
                "optimizer": AdamOptimizerConfig(lr=1e-3, eps=1e-15),
                "scheduler": ExponentialDecaySchedulerConfig(lr_final=1e-4, max_steps=5000),
            },
            # the SfM points of the track term (dataparser units, scene radius ~1): Adam moves each
            # coordinate by ~lr per step, so 1e-5 of the scene (sub-pixel at any usual distance)
            TRACK_POINTS_GROUP: {
                "optimizer": AdamOptimizerConfig(lr=1e-5, eps=1e-15),
                "scheduler": ExponentialDecaySchedulerConfig(lr_final=1e-6, max_steps=5000),
            },
        },
        viewer=ViewerConfig(num_rays_per_chunk=1 << 15),
        vis="viewer",
    )


def small_model_config(**overrides) -> PosefixModelConfig:  # noqa: ANN003
    """The CPU-sized nerfacto model of ``posefix-small`` (``overrides``: any model config field)."""
    proposal = {"hidden_dim": 16, "log2_hashmap_size": SMALL_LOG2_HASHMAP_SIZE, "num_levels": 5, "use_linear": False}
    kwargs = dict(
        eval_num_rays_per_chunk=1 << 12,
        average_init_density=0.01,
        num_levels=8,
        log2_hashmap_size=SMALL_LOG2_HASHMAP_SIZE,
        hidden_dim=32,
        hidden_dim_color=32,
        num_proposal_samples_per_ray=(64, 32),
        num_nerf_samples_per_ray=24,
        proposal_net_args_list=[{**proposal, "max_res": 128}, {**proposal, "max_res": 256}],
        implementation="torch",
        camera_optimizer=HomographyCameraOptimizerConfig(mode="SO3xR3", prior="pixels"),
    )
    kwargs.update(overrides)
    return PosefixModelConfig(**kwargs)


def posefix_small_config() -> TrainerConfig:
    """``posefix-small``: a CPU-sized nerfacto with the homography camera optimizer."""
    return PosefixTrainerConfig(
        method_name="posefix-small",
        steps_per_eval_batch=500,
        steps_per_eval_image=500,
        steps_per_save=1000,
        max_num_iterations=SMALL_MAX_ITERATIONS,
        mixed_precision=False,
        machine=MachineConfig(device_type="cpu"),
        pipeline=PosefixPipelineConfig(
            datamanager=PosefixDataManagerConfig(
                dataparser=NerfstudioDataParserConfig(),
                train_num_rays_per_batch=1024,
                eval_num_rays_per_batch=1024,
            ),
            model=small_model_config(),
        ),
        optimizers={
            "proposal_networks": {
                "optimizer": AdamOptimizerConfig(lr=1e-2, eps=1e-15),
                "scheduler": ExponentialDecaySchedulerConfig(lr_final=1e-4, max_steps=20000),
            },
            "fields": {
                "optimizer": AdamOptimizerConfig(lr=1e-2, eps=1e-15),
                "scheduler": ExponentialDecaySchedulerConfig(lr_final=1e-4, max_steps=20000),
            },
            "camera_opt": {
                "optimizer": AdamOptimizerConfig(lr=1e-3, eps=1e-15),
                "scheduler": ExponentialDecaySchedulerConfig(lr_final=1e-4, max_steps=SMALL_MAX_ITERATIONS),
            },
            TRACK_POINTS_GROUP: {
                "optimizer": AdamOptimizerConfig(lr=1e-5, eps=1e-15),
                "scheduler": ExponentialDecaySchedulerConfig(lr_final=1e-6, max_steps=SMALL_MAX_ITERATIONS),
            },
        },
        viewer=ViewerConfig(num_rays_per_chunk=1 << 12),
        vis="tensorboard",
    )


posefix_method = MethodSpecification(
    config=posefix_config(),
    description="nerfacto refining camera poses under the homography pose prior (GPU-sized).",
)

posefix_small_method = MethodSpecification(
    config=posefix_small_config(),
    description="posefix sized for a laptop CPU (small hash grids, few samples, device cpu).",
)
