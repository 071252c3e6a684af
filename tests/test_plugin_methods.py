"""The two method specifications and checkpoint loading (in process; the CLI is in test_plugin_e2e)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from nerfstudio.cameras.camera_optimizers import CameraOptimizerConfig
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManagerConfig
from nerfstudio.data.datamanagers.parallel_datamanager import ParallelDataManagerConfig
from nerfstudio.models.nerfacto import NerfactoModelConfig

from nerf_posefix.plugin.camera_optimizer import HomographyCameraOptimizerConfig
from nerf_posefix.plugin.checkpoint import checkpoint_safe_globals, latest_checkpoint, load_checkpoint
from nerf_posefix.plugin.method_configs import posefix_method, posefix_small_method
from nerf_posefix.plugin.model import PosefixModelConfig
from nerf_posefix.plugin.pipeline import PosefixPipelineConfig

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "assets" / "toybox_tiny"


def test_methods_are_discovered_by_nerfstudio() -> None:
    from nerfstudio.plugins.registry import discover_methods

    methods, descriptions = discover_methods()
    assert methods["posefix"] is not None and methods["posefix-small"] is not None
    assert methods["posefix"].method_name == "posefix" and methods["posefix-small"].method_name == "posefix-small"
    assert "homography" in descriptions["posefix"]


def test_posefix_is_nerfacto_with_the_homography_optimizer() -> None:
    config = posefix_method.config
    nerfacto = NerfactoModelConfig()
    model = config.pipeline.model
    assert isinstance(config.pipeline, PosefixPipelineConfig) and isinstance(model, PosefixModelConfig)
    assert isinstance(config.pipeline.datamanager, ParallelDataManagerConfig)
    assert isinstance(model.camera_optimizer, HomographyCameraOptimizerConfig)
    assert model.camera_optimizer.mode == "SO3xR3" and model.camera_optimizer.weight > 0
    assert (model.num_levels, model.log2_hashmap_size, model.hidden_dim) == (
        nerfacto.num_levels, nerfacto.log2_hashmap_size, nerfacto.hidden_dim
    )
    assert config.pipeline.datamanager.train_num_rays_per_batch == 4096
    assert config.optimizers["camera_opt"]["optimizer"].lr == pytest.approx(1e-3)
    assert config.mixed_precision


def test_posefix_small_is_sized_for_a_cpu() -> None:
    config = posefix_small_method.config
    model = config.pipeline.model
    assert isinstance(config.pipeline.datamanager, VanillaDataManagerConfig)  # no worker processes
    assert config.machine.device_type == "cpu" and not config.mixed_precision
    assert (model.num_levels, model.log2_hashmap_size, model.hidden_dim) == (8, 15, 32)
    assert all(args["log2_hashmap_size"] == 15 for args in model.proposal_net_args_list)
    assert tuple(model.num_proposal_samples_per_ray) == (64, 32) and model.num_nerf_samples_per_ray == 24
    assert model.implementation == "torch"
    assert config.pipeline.datamanager.train_num_rays_per_batch == 1024
    camera_opt = config.optimizers["camera_opt"]
    assert camera_opt["optimizer"].lr == pytest.approx(1e-3)
    assert camera_opt["scheduler"].lr_final == pytest.approx(1e-4)
    assert camera_opt["scheduler"].max_steps == config.max_num_iterations
    # the configs are independent objects (editing one run's config does not leak into the method)
    assert posefix_small_method.config.pipeline.model is not posefix_method.config.pipeline.model


def test_checkpoint_loads_with_weights_only_and_resumes(tmp_path: Path) -> None:
    """A posefix-small checkpoint loads with ``torch.load(weights_only=True)`` (the default of torch
    >= 2.6 that nerfstudio's loaders use) and nerfstudio's own Trainer resumes from it."""
    from nerfstudio.engine.trainer import Trainer

    from nerf_posefix.plugin.training import in_process_config, run_training

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = in_process_config("posefix-small", data=TINY, output_dir=tmp_path, max_iterations=3)
        config.pipeline.datamanager.train_num_rays_per_batch = 256
        run = run_training(config, progress=False, quiet=True)
        ckpt = latest_checkpoint(run.run_dir / "nerfstudio_models")
        with zipfile.ZipFile(ckpt) as archive:  # the pickle references NumPy's scalar reconstructor
            pickled = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
        assert b"multiarray" in pickled and b"scalar" in pickled
        state = torch.load(ckpt, map_location="cpu")  # weights_only=True by default, allow-list registered
        assert isinstance(state["schedulers"]["camera_opt"]["_last_lr"][0], np.floating)
        assert load_checkpoint(ckpt)["step"] == state["step"] == 2
        assert all(g in torch.serialization.get_safe_globals() for g in checkpoint_safe_globals())

        saved = state["pipeline"]
        resume = in_process_config("posefix-small", data=TINY, output_dir=tmp_path / "resume", max_iterations=1)
        resume.load_dir = run.run_dir / "nerfstudio_models"
        trainer = Trainer(resume, local_rank=0, world_size=1)  # nerfstudio's loader: plain torch.load
        trainer.setup()
        assert trainer._start_step == 3  # noqa: SLF001
        optimizer = trainer.pipeline.model.camera_optimizer
        prefix = "_model.camera_optimizer."
        for name in ("pose_adjustment", "initial_c2w", "xmin", "xmax"):
            assert torch.equal(getattr(optimizer, name).detach(), saved[prefix + name]), name
    finally:
        torch.set_num_threads(threads)


def test_nerfstudio_optimizer_config_is_accepted_by_the_posefix_model() -> None:
    """The model takes any nerfstudio camera optimizer; the pipeline only fills a homography one."""
    config = posefix_small_method.config.pipeline
    model = PosefixModelConfig(camera_optimizer=CameraOptimizerConfig(mode="off"))
    assert not isinstance(model.camera_optimizer, HomographyCameraOptimizerConfig)
    assert config.model.camera_optimizer.bounds == "auto"
