"""Preconditioned pose optimisation inside the homography camera optimizer (``pose_adjustment = P φ``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from nerf_posefix.plugin.camera_optimizer import HomographyCameraOptimizer, HomographyCameraOptimizerConfig
from nerf_posefix.geometry.preconditioning import homography_metric, preconditioner, view_directions


def make_optimizer(precondition: str, num_cameras: int = 5, seed: int = 0) -> HomographyCameraOptimizer:
    rng = np.random.default_rng(seed)
    config = HomographyCameraOptimizerConfig(mode="SO3xR3", precondition=precondition, precondition_samples=500)
    optimizer = config.setup(num_cameras=num_cameras, device="cpu")
    c2w = torch.zeros(num_cameras, 3, 4)
    c2w[:, :, :3] = torch.from_numpy(Rotation.random(num_cameras, random_state=seed).as_matrix()).float()
    c2w[:, :, 3] = torch.from_numpy(rng.normal(size=(num_cameras, 3))).float()
    intrinsics = torch.tensor([[60.0, 60.0, 32.0, 32.0]]).repeat(num_cameras, 1)
    sizes = torch.tensor([[64.0, 64.0]]).repeat(num_cameras, 1)
    optimizer.set_reference(c2w, 0.5, 3.0, source="test", intrinsics=intrinsics, image_sizes=sizes)
    return optimizer


@pytest.mark.parametrize("precondition", ["homography", "sampled"])
def test_zero_phi_reproduces_the_input_poses(precondition: str) -> None:
    optimizer = make_optimizer(precondition)
    torch.testing.assert_close(optimizer.corrected_c2w(), optimizer.initial_c2w, rtol=0, atol=0)
    assert (optimizer.homography_errors() < 1e-12).all()  # RᵀR = I up to rounding


def test_adjustment_is_p_phi_and_regulariser_sees_it() -> None:
    optimizer = make_optimizer("homography")
    expected_p = preconditioner(
        homography_metric(view_directions(optimizer.initial_c2w.double()), 0.5, 3.0), damping=0.1
    ).float()
    torch.testing.assert_close(optimizer.preconditioner, expected_p)
    with torch.no_grad():
        optimizer.pose_adjustment.copy_(0.01 * torch.randn(5, 6, generator=torch.Generator().manual_seed(0)))
    delta = optimizer.pose_tangent()
    torch.testing.assert_close(delta, (expected_p @ optimizer.pose_adjustment.unsqueeze(-1)).squeeze(-1))
    torch.testing.assert_close(optimizer.pose_tangent(torch.tensor([3, 1])), delta[[3, 1]])
    # the rendered pose and the metrics come from P φ, not from φ
    plain = HomographyCameraOptimizerConfig(mode="SO3xR3").setup(num_cameras=5, device="cpu")
    plain.set_reference(optimizer.initial_c2w, 0.5, 3.0)
    with torch.no_grad():
        plain.pose_adjustment.copy_(delta)
    torch.testing.assert_close(optimizer.corrected_c2w(), plain.corrected_c2w())
    torch.testing.assert_close(optimizer.homography_errors(), plain.homography_errors())
    metrics_pre, metrics_plain = {}, {}
    optimizer.get_metrics_dict(metrics_pre)
    plain.get_metrics_dict(metrics_plain)
    for key in ("camera_opt_translation_mean", "camera_opt_rotation_max", "camera_opt_homography_mean"):
        torch.testing.assert_close(torch.as_tensor(metrics_pre[key]), torch.as_tensor(metrics_plain[key]))


def test_preconditioner_is_saved_in_the_state_dict() -> None:
    optimizer = make_optimizer("sampled")
    state = optimizer.state_dict()
    assert "preconditioner" in state
    fresh = HomographyCameraOptimizerConfig(mode="SO3xR3", precondition="sampled").setup(num_cameras=5, device="cpu")
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.preconditioner, optimizer.preconditioner)
    # the sampled metric whitens the same directions as the closed form (same order of magnitude)
    closed = make_optimizer("homography").preconditioner
    ratio = torch.linalg.matrix_norm(optimizer.preconditioner) / torch.linalg.matrix_norm(closed)
    assert ((ratio > 0.2) & (ratio < 5.0)).all(), ratio


def test_preconditioning_needs_so3xr3() -> None:
    with pytest.raises(ValueError, match="needs mode='SO3xR3'"):
        HomographyCameraOptimizerConfig(mode="SE3", precondition="homography").setup(num_cameras=2, device="cpu")


def test_preconditioned_run_reloads_offline_and_exports_its_poses(tmp_path, one_torch_thread) -> None:  # noqa: ANN001
    """Train a few iterations with ``precondition homography`` in process; the checkpoint reloads with
    ``ns-eval`` (offline, plain ``torch.load``) and with nerfstudio's ``eval_setup`` to the same corrected
    poses as in memory, and ``posefix export`` returns those poses in the input frame."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from nerfstudio.utils.eval_utils import eval_setup

    from nerf_posefix.workflows.experiment import TrainSpec, build_trainer_config, train
    from nerf_posefix.plugin.run_reader import load_refined_camera_set

    tiny = Path(__file__).resolve().parents[1] / "assets" / "toybox_tiny"
    spec = TrainSpec(data=tiny, output_dir=tmp_path, iterations=12, eval_interval=8, rays_per_batch=256,
                     camera_optimizer={"precondition": "homography"}, camera_lr_scale=10.0)
    run = train(build_trainer_config(spec), progress=False)
    optimizer = run.trainer.pipeline.model.camera_optimizer
    assert not torch.allclose(optimizer.preconditioner, torch.eye(6).expand_as(optimizer.preconditioner))
    assert float(optimizer.pose_adjustment.abs().max()) > 1e-4  # φ moved
    in_memory = optimizer.corrected_c2w().detach()  # [N, 3, 4] dataparser frame, OpenGL axes

    proc = subprocess.run([str(Path(sys.executable).parent / "ns-eval"), "--load-config", str(run.config_path),
                           "--output-path", str(tmp_path / "eval.json")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "eval.json").read_text())["results"]["psnr"] > 5.0

    _, pipeline, _, _ = eval_setup(run.config_path, test_mode="test")
    reloaded = pipeline.model.camera_optimizer
    torch.testing.assert_close(reloaded.preconditioner, optimizer.preconditioner, rtol=0, atol=0)
    torch.testing.assert_close(reloaded.corrected_c2w(), in_memory, rtol=0, atol=0)

    # the export: the in-memory poses taken back through the dataparser transform (OpenCV axes)
    outputs = run.trainer.pipeline.datamanager.train_dataparser_outputs
    original = outputs.transform_poses_to_original_space(in_memory, camera_convention="opencv").double().numpy()
    exported = load_refined_camera_set(run.config_path)
    names = [Path(p).name for p in outputs.image_filenames]
    order = [exported.names.index(n) for n in names]
    np.testing.assert_allclose(exported.c2w[order][:, :3], original, atol=2e-5)  # both c2w, OpenCV axes


@pytest.mark.parametrize("precondition", ["off", "homography"])
def test_composed_corrections_render_the_composed_pose(precondition: str) -> None:
    """``compose_corrections`` (the weak alignment's write-back): the cameras named render at
    ``[R_a R_adj R | t + t_adj + t_a]``, the others are unchanged; a held camera is refused."""
    from nerf_posefix.geometry.poses import apply_pose_correction

    optimizer = make_optimizer(precondition)
    with torch.no_grad():
        optimizer.pose_adjustment.copy_(0.02 * torch.randn(5, 6, generator=torch.Generator().manual_seed(1)))
    before = optimizer.corrected_c2w().detach().double()  # [5, 3, 4]
    index = torch.tensor([3, 0])
    rot_a = torch.from_numpy(Rotation.from_rotvec([[0.01, -0.03, 0.02], [0.0, 0.05, 0.0]]).as_matrix())  # [2, 3, 3]
    trans_a = torch.tensor([[0.02, 0.0, -0.01], [-0.03, 0.01, 0.04]], dtype=torch.float64)  # [2, 3]
    optimizer.compose_corrections(index, rot_a, trans_a)
    after = optimizer.corrected_c2w().detach().double()
    expected = torch.from_numpy(apply_pose_correction(before[index].numpy(), rot_a.numpy(), trans_a.numpy()))
    torch.testing.assert_close(after[index], expected, atol=2e-6, rtol=0)  # float32 parameters
    others = [1, 2, 4]
    torch.testing.assert_close(after[others], before[others], atol=0, rtol=0)
    optimizer.hold_cameras(torch.tensor([False, True, False, False, False]))
    with pytest.raises(ValueError, match="held"):
        optimizer.compose_corrections(torch.tensor([1]), rot_a[:1], trans_a[:1])
