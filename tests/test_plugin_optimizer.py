"""The homography camera optimizer inside a real nerfstudio pipeline (``assets/toybox_tiny``, CPU).

* the regulariser measures the pose nerfstudio actually renders;
* with one camera moved away from its initial pose, the regulariser's gradient touches only that
  camera and pulls it back to the initial pose;
* with weight 0 it trains exactly like nerfstudio's ``CameraOptimizer`` with both L2 penalties at 0;
* checkpoints keep the initial poses and bounds.
"""

from __future__ import annotations

import copy
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from nerfstudio.cameras.camera_optimizers import CameraOptimizer, CameraOptimizerConfig
from nerfstudio.cameras.cameras import Cameras

from nerf_posefix.geometry.homography import homography_error
from nerf_posefix.plugin.camera_optimizer import HomographyCameraOptimizer, HomographyCameraOptimizerConfig
from nerf_posefix.plugin.method_configs import posefix_small_config
from nerf_posefix.plugin.pipeline import PosefixPipeline

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "assets" / "toybox_tiny"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def seed_all(seed: int) -> None:
    """nerfstudio draws from torch's RNG (pixel sampling, initialisation) and Python's (image order of
    the cached batch)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def small_pipeline(data: Path = TINY, seed: int = 0, rays: int = 1024, **camera_optimizer) -> PosefixPipeline:
    """A posefix-small pipeline on ``data`` (CPU, ``rays`` per batch); ``camera_optimizer`` overrides
    its config fields, or ``config=<camera optimizer config>`` replaces it."""
    config = posefix_small_config().pipeline
    config.datamanager.data = data
    config.datamanager.train_num_rays_per_batch = rays
    config.front_end = "off"  # the optimizer itself, from the dataset's poses
    config.model.camera_optimizer.prior = "homography"  # these tests are about the paper's form (the methods' default is pixels)
    if isinstance(camera_optimizer.get("config"), CameraOptimizerConfig):
        config.model.camera_optimizer = camera_optimizer["config"]
    else:
        for key, value in camera_optimizer.items():
            setattr(config.model.camera_optimizer, key, value)
    seed_all(seed)
    pipeline = config.setup(device="cpu", test_mode="val")
    assert isinstance(pipeline, PosefixPipeline)
    return pipeline


@pytest.fixture(scope="module")
def pipeline() -> PosefixPipeline:
    return small_pipeline()


def test_reference_is_the_train_poses(pipeline: PosefixPipeline) -> None:
    optimizer = pipeline.model.camera_optimizer
    assert isinstance(optimizer, HomographyCameraOptimizer)
    cameras = pipeline.datamanager.train_dataset.cameras
    assert optimizer.num_cameras == len(cameras) == 15
    assert torch.equal(optimizer.initial_c2w, cameras.camera_to_worlds)
    assert bool(optimizer.reference_set)
    # no adjustment yet: rendered poses are the initial ones and the regulariser is 0
    assert torch.equal(optimizer.corrected_c2w(), cameras.camera_to_worlds)
    assert float(optimizer.homography_errors().detach().abs().max()) < 1e-12  # float32 round-off of RᵀR


def test_regulariser_measures_the_rendered_pose(pipeline: PosefixPipeline) -> None:
    """Rays nerfstudio renders for camera j (camera optimizer applied to the ray bundle) are exactly
    the rays of a camera placed at ``corrected_c2w()[j]``; the regulariser is weight x mean over
    cameras of the homography error between the initial and that pose."""
    optimizer = pipeline.model.camera_optimizer
    j = 4
    with torch.no_grad():
        optimizer.pose_adjustment.zero_()
        optimizer.pose_adjustment[j] = torch.tensor([0.02, -0.03, 0.01, 0.03, -0.02, 0.05])
    cameras = pipeline.datamanager.train_dataset.cameras
    bundle = cameras.generate_rays(camera_indices=j)  # [H, W] rays at the dataparser pose
    flat = bundle.flatten()
    optimizer.apply_to_raybundle(flat)
    corrected = optimizer.corrected_c2w()
    moved = Cameras(
        camera_to_worlds=corrected[j : j + 1].detach(),
        fx=cameras.fx[j : j + 1], fy=cameras.fy[j : j + 1], cx=cameras.cx[j : j + 1], cy=cameras.cy[j : j + 1],
        width=cameras.width[j : j + 1], height=cameras.height[j : j + 1], camera_type=cameras.camera_type[j : j + 1],
    )
    expected = moved.generate_rays(camera_indices=0).flatten()
    assert torch.allclose(flat.origins.detach(), expected.origins, atol=1e-6)
    assert torch.allclose(flat.directions.detach(), expected.directions, atol=1e-6)

    loss_dict: dict = {}
    optimizer.get_loss_dict(loss_dict)
    h_j = homography_error(
        cameras.camera_to_worlds[j].double(), corrected[j].detach().double(),
        float(optimizer.xmin[j]), float(optimizer.xmax[j]), camera_convention="opengl",
    )
    expected_loss = optimizer.config.weight * float(h_j) / optimizer.num_cameras
    assert float(loss_dict["camera_opt_regularizer"]) == pytest.approx(expected_loss, rel=1e-4)
    assert expected_loss > 0
    with torch.no_grad():
        optimizer.pose_adjustment.zero_()


def _pose_distance(optimizer: HomographyCameraOptimizer, j: int) -> tuple[float, float]:
    """(rotation angle in degrees, centre distance) between camera j's rendered and initial pose."""
    c = optimizer.corrected_c2w()[j].detach().double()
    c0 = optimizer.initial_c2w[j].double()
    cos = ((c[:, :3].T @ c0[:, :3]).trace() - 1) / 2
    return math.degrees(math.acos(float(cos.clamp(-1, 1)))), float((c[:, 3] - c0[:, 3]).norm())


def test_gradient_pulls_a_perturbed_camera_back(pipeline: PosefixPipeline) -> None:
    optimizer = pipeline.model.camera_optimizer
    j = 7
    delta = torch.tensor([0.05, -0.04, 0.03, 0.04, 0.03, -0.05])  # ~3.9 deg, ~0.07 dataparser units
    with torch.no_grad():
        optimizer.pose_adjustment.zero_()
        optimizer.pose_adjustment[j] = delta
    angle0, dist0 = _pose_distance(optimizer, j)
    assert angle0 > 3.0 and dist0 > 0.05

    optimizer.pose_adjustment.grad = None
    loss_dict: dict = {}
    optimizer.get_loss_dict(loss_dict)
    loss_dict["camera_opt_regularizer"].backward()
    grad = optimizer.pose_adjustment.grad.clone()
    others = torch.cat([grad[:j], grad[j + 1 :]])
    # only the perturbed camera is pulled (the others feel float32 round-off of their rotations only)
    assert float(others.abs().max()) < 1e-6 * float(grad[j].norm())
    # descent direction points back to the initial pose (zero adjustment) in both parts
    assert float(torch.dot(grad[j, :3], delta[:3])) > 0
    assert float(torch.dot(grad[j, 3:], delta[3:])) > 0

    # plain gradient descent on the regulariser alone brings the camera back
    # step size ~ 1 / curvature: the rotation term is ~ weight/N · 2‖ω‖², the translation term
    # ~ weight/N · γ‖t‖² with γ = 1/(xmin·xmax)
    gamma = 1.0 / float(optimizer.xmin[j] * optimizer.xmax[j])
    lr = 0.2 * optimizer.num_cameras / (optimizer.config.weight * max(4.0, 2.0 * gamma))
    sgd = torch.optim.SGD([optimizer.pose_adjustment], lr=lr)
    previous = float(loss_dict["camera_opt_regularizer"])
    for _ in range(300):
        sgd.zero_grad()
        loss_dict = {}
        optimizer.get_loss_dict(loss_dict)
        loss_dict["camera_opt_regularizer"].backward()
        sgd.step()
    final = float(loss_dict["camera_opt_regularizer"])
    angle, dist = _pose_distance(optimizer, j)
    assert final < 1e-3 * previous
    assert angle < 0.05 * angle0 and dist < 0.05 * dist0
    with torch.no_grad():
        optimizer.pose_adjustment.zero_()
    optimizer.pose_adjustment.grad = None


def _train(pipeline: PosefixPipeline, steps: int, lr: float = 1e-3) -> list[dict[str, float]]:
    """nerfstudio-style training steps (Adam on every param group, all losses summed)."""
    params = pipeline.get_param_groups()
    opts = {k: torch.optim.Adam(v, lr=(lr if k == "camera_opt" else 1e-2), eps=1e-15) for k, v in params.items()}
    history = []
    for step in range(steps):
        pipeline.train()
        for opt in opts.values():
            opt.zero_grad()
        _, loss_dict, _ = pipeline.get_train_loss_dict(step)
        sum(loss_dict.values()).backward()
        for opt in opts.values():
            opt.step()
        history.append({k: float(v) for k, v in loss_dict.items()})
    return history


def test_weight_zero_trains_like_nerfstudio_without_penalties() -> None:
    """Bit-for-bit (one torch thread: CPU index-add backward of the pose adjustment sums in a
    thread-dependent order), with the track term off (it is the geometric anchor nerfstudio has not)."""
    ours = small_pipeline(seed=3, rays=256, weight=0.0, tracks="off")
    theirs = small_pipeline(
        seed=3, rays=256, config=CameraOptimizerConfig(mode="SO3xR3", trans_l2_penalty=0.0, rot_l2_penalty=0.0)
    )
    assert type(theirs.model.camera_optimizer) is CameraOptimizer
    seed_all(11)
    h_ours = _train(ours, 5, lr=1e-2)
    seed_all(11)
    h_theirs = _train(theirs, 5, lr=1e-2)
    assert h_ours == h_theirs
    a, b = ours.model.camera_optimizer.pose_adjustment, theirs.model.camera_optimizer.pose_adjustment
    assert float(a.abs().max()) > 1e-3  # the poses did move
    assert torch.equal(a, b)
    for (name, p), (_, q) in zip(ours.model.field.named_parameters(), theirs.model.field.named_parameters()):
        assert torch.equal(p, q), name


def test_l2_penalties_are_nerfstudios_regulariser() -> None:
    """weight 0 + nerfstudio's default penalties (``posefix refine --regularizer nerfstudio``) is the same
    loss as nerfstudio's own ``camera_opt_regularizer``, for the same pose adjustment."""
    defaults = CameraOptimizerConfig()
    ours = small_pipeline(weight=0.0, trans_l2_penalty=defaults.trans_l2_penalty, rot_l2_penalty=defaults.rot_l2_penalty)
    theirs = small_pipeline(config=CameraOptimizerConfig(mode="SO3xR3"))
    adjustment = 0.05 * torch.randn_like(ours.model.camera_optimizer.pose_adjustment)
    with torch.no_grad():
        ours.model.camera_optimizer.pose_adjustment.copy_(adjustment)
        theirs.model.camera_optimizer.pose_adjustment.copy_(adjustment)
    ours_loss: dict = {}
    theirs_loss: dict = {}
    ours.model.camera_optimizer.get_loss_dict(ours_loss)
    theirs.model.camera_optimizer.get_loss_dict(theirs_loss)
    assert float(theirs_loss["camera_opt_regularizer"]) > 1e-4
    torch.testing.assert_close(ours_loss["camera_opt_regularizer"], theirs_loss["camera_opt_regularizer"], rtol=1e-6, atol=0)


def test_metrics(pipeline: PosefixPipeline) -> None:
    optimizer = pipeline.model.camera_optimizer
    with torch.no_grad():
        optimizer.pose_adjustment.zero_()
        optimizer.pose_adjustment[2, 3:] = torch.tensor([0.0, 0.0, math.radians(2.0)])
        optimizer.pose_adjustment[5, :3] = torch.tensor([0.03, 0.0, 0.04])
    metrics: dict = {}
    optimizer.get_metrics_dict(metrics)
    assert float(metrics["camera_opt_rotation_max"]) == pytest.approx(2.0, rel=1e-5)
    assert float(metrics["camera_opt_translation_max"]) == pytest.approx(0.05, rel=1e-5)
    errors = optimizer.homography_errors()
    assert float(metrics["camera_opt_homography_mean"]) == pytest.approx(float(errors.mean()), rel=1e-6)
    assert float(metrics["camera_opt_homography_max"]) == pytest.approx(float(errors.max()), rel=1e-6)
    assert float(errors[2]) > 1e-4 and float(errors[5]) > 1e-4 and float(errors[0]) < 1e-12
    # the model adds the Sim(3)-aligned errors against transforms_gt.json
    gt = pipeline.model.pose_errors_vs_ground_truth()
    assert set(gt) == {"pose_gt_rotation_median_deg", "pose_gt_translation_median", "pose_gt_translation_median_rel"}
    assert all(math.isfinite(v) and v >= 0 for v in gt.values())
    with torch.no_grad():
        optimizer.pose_adjustment.zero_()


@pytest.mark.parametrize("optimizer_class", ["posefix", "nerfstudio"])
def test_ground_truth_metrics_see_pose_error(tmp_path: Path, optimizer_class: str) -> None:
    """With the dataset's poses equal to the ground truth, the aligned error is ~0; moving cameras by
    a known rotation shows up in the median, with the posefix optimizer and with nerfstudio's own (the
    pose its rays are corrected with: [R_adj·R | t + t_adj])."""
    import json
    import shutil

    scene = tmp_path / "scene"
    shutil.copytree(TINY, scene)
    gt = json.loads((scene / "transforms_gt.json").read_text())
    meta = json.loads((scene / "transforms.json").read_text())
    meta["frames"] = copy.deepcopy(gt["frames"])
    (scene / "transforms.json").write_text(json.dumps(meta))
    pipe = small_pipeline(scene) if optimizer_class == "posefix" else small_pipeline(scene, config=CameraOptimizerConfig(mode="SO3xR3"))
    clean = pipe.model.pose_errors_vs_ground_truth()
    assert clean["pose_gt_rotation_median_deg"] < 1e-3
    assert clean["pose_gt_translation_median_rel"] < 1e-5
    optimizer = pipe.model.camera_optimizer
    with torch.no_grad():  # rotate every camera by 3 degrees about its own (world) z axis
        optimizer.pose_adjustment[:, 5] = math.radians(3.0)
    moved = pipe.model.pose_errors_vs_ground_truth()
    assert moved["pose_gt_rotation_median_deg"] == pytest.approx(3.0, abs=0.3)
    with torch.no_grad():  # and a known translation (dataparser units) of every camera
        optimizer.pose_adjustment[:, 5] = 0.0
        optimizer.pose_adjustment[::2, 0] = 0.01
    shifted = pipe.model.pose_errors_vs_ground_truth()
    assert shifted["pose_gt_rotation_median_deg"] < 0.1 and shifted["pose_gt_translation_median"] > 1e-3


def test_set_reference_rejects_bad_bounds() -> None:
    optimizer = HomographyCameraOptimizerConfig().setup(num_cameras=3, device="cpu")
    c2w = torch.eye(4)[None, :3].repeat(3, 1, 1)
    with pytest.raises(ValueError, match="xmin"):
        optimizer.set_reference(c2w, torch.tensor([0.5, -1.0, 0.5]), 2.0)
    with pytest.raises(ValueError, match="xmax"):
        optimizer.set_reference(c2w, 2.0, 1.0)
    bad = c2w.clone()
    bad[1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="initial_c2w"):
        optimizer.set_reference(bad, 0.5, 2.0)
    assert not bool(optimizer.reference_set)
    with pytest.raises(RuntimeError, match="set_reference"):
        optimizer.get_loss_dict({})


def test_reference_and_bounds_are_saved_in_the_state_dict(pipeline: PosefixPipeline) -> None:
    optimizer = pipeline.model.camera_optimizer
    state = pipeline.state_dict()
    prefix = "_model.camera_optimizer."
    for name in ("pose_adjustment", "initial_c2w", "xmin", "xmax", "reference_set"):
        assert prefix + name in state
    fresh = HomographyCameraOptimizerConfig().setup(num_cameras=optimizer.num_cameras, device="cpu")
    fresh.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    assert torch.equal(fresh.initial_c2w, optimizer.initial_c2w)
    assert torch.equal(fresh.xmin, optimizer.xmin) and torch.equal(fresh.xmax, optimizer.xmax)
    assert bool(fresh.reference_set)
    np.testing.assert_array_equal(fresh.homography_errors().detach().numpy(), optimizer.homography_errors().detach().numpy())
