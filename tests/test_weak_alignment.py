"""Issue 22: the weakly held cameras aligned against the frozen trained field (:mod:`nerf_posefix.plugin.weak_alignment`).

* the weakly held cameras are the training cameras whose transforms.json frame says ``posefix_held: false``;
* a weak camera left off its pose by the training comes back (well within the offset), a weak camera at its
  pose stays, and the model is untouched (parameters, ``requires_grad`` flags, train/eval mode of the field);
* the posefix pipeline composes the alignment into its camera optimizer after the last iteration: the
  exported poses differ from the same seeded run without it by the recorded moves on the weak cameras; the held
  cameras do not move; a weak camera without photometric evidence for its new pose goes back to its starting pose.

Real nerfstudio (posefix-small, CPU, one torch thread), one model trained once for the module on the bundled
toybox at 64x64 with exact, frozen poses.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scene_helpers import downscaled_toybox

SIZE = 64
ITERATIONS = 300
RAYS = 384
SMALL_SAMPLES = {"num_proposal_samples_per_ray": (32, 16), "num_nerf_samples_per_ray": 16}
#: The frames marked weakly held (indices in name order = training camera indices: no held-out views).
WEAK = (5, 37)
#: The alignment budget of the tests (fewer steps at a larger lr than the default 50 x 1e-3).
STEPS = 50
LR = 3e-3
ALIGN_RAYS = 256
#: Offset of the weak camera left off its pose (degrees; dataparser units, scene radius ~1).
OFFSET_DEG = 2.0
OFFSET_TRANSLATION = 0.03
TOLERANCE_DEG = 0.6
TOLERANCE_TRANSLATION = 0.015


@pytest.fixture(scope="module")
def weak_data(tmp_path_factory) -> Path:
    """The bundled toybox at 64², frames WEAK marked weakly held (``posefix_held: false``), the others held."""
    from nerf_posefix.io.transforms_json import HELD_KEY

    data = downscaled_toybox(tmp_path_factory.mktemp("weak_align") / "data", SIZE)
    meta = json.loads((data / "transforms.json").read_text())
    meta["frames"] = sorted(meta["frames"], key=lambda f: f["file_path"])
    for k, frame in enumerate(meta["frames"]):
        frame[HELD_KEY] = k not in WEAK
    (data / "transforms.json").write_text(json.dumps(meta))
    return data


@pytest.fixture(scope="module")
def trained(weak_data, tmp_path_factory, one_torch_thread):
    """``(run, pipeline)``: posefix-small trained with exact, frozen poses on :func:`weak_data`."""
    from nerf_posefix.workflows.experiment import TrainSpec, build_trainer_config, train

    root = tmp_path_factory.mktemp("weak_align_run")
    data = weak_data
    spec = TrainSpec(
        data=data, output_dir=root / "runs", iterations=ITERATIONS, eval_interval=0,
        camera_optimizer={"class": "nerfstudio", "mode": "off"}, rays_per_batch=RAYS, model=dict(SMALL_SAMPLES),
    )
    run = train(build_trainer_config(spec), progress=False)
    return run, run.trainer.pipeline


def _offset(cameras, index: int):
    """``cameras`` with camera ``index`` turned OFFSET_DEG about a fixed axis and moved OFFSET_TRANSLATION."""
    from nerfstudio.cameras.lie_groups import exp_map_SO3xR3

    from nerf_posefix.plugin.test_pose_alignment import corrected_cameras

    tangent = torch.zeros(len(cameras), 6)
    axis = torch.tensor([0.3, -0.8, 0.5])
    shift = torch.tensor([0.6, 0.2, -0.77])
    tangent[index, :3] = shift / shift.norm() * OFFSET_TRANSLATION
    tangent[index, 3:] = axis / axis.norm() * np.radians(OFFSET_DEG)
    adj = exp_map_SO3xR3(tangent)
    return corrected_cameras(cameras, adj[:, :3, :3], adj[:, :3, 3])


def _gap(a: torch.Tensor, b: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Rotation angle (deg; atan2, accurate near 0) and centre distance between camera-to-world poses ``[N, 3, 4]``."""
    from nerf_posefix.geometry.poses import rotation_angle_deg

    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return rotation_angle_deg(a[:, :3, :3].numpy(), b[:, :3, :3].numpy()), (a[:, :3, 3] - b[:, :3, 3]).norm(dim=-1).numpy()


def test_an_offset_weak_camera_comes_back_and_the_model_is_untouched(trained) -> None:
    from nerf_posefix.plugin.weak_alignment import WeakAlignmentConfig, align_weak_cameras

    _, pipeline = trained
    dataset = pipeline.datamanager.train_dataset
    model = pipeline.model
    exact = dataset.cameras.camera_to_worlds.clone()
    offset = _offset(dataset.cameras, WEAK[0]).camera_to_worlds
    params = {k: v.detach().clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    model.train()
    try:
        dataset.cameras.camera_to_worlds = offset  # the training left camera WEAK[0] off its pose
        result = align_weak_cameras(pipeline, WEAK, WeakAlignmentConfig(steps=STEPS, lr=LR, rays_per_view=ALIGN_RAYS))
    finally:
        dataset.cameras.camera_to_worlds = exact
    idx = list(WEAK)
    rot0, trans0 = _gap(offset[idx], exact[idx])
    rot, trans = _gap(result.cameras.camera_to_worlds.cpu(), exact[idx])
    print(f"residual after alignment: {rot} deg, {trans} units (from {rot0}, {trans0}); {result.seconds:.1f} s")
    assert rot0[0] == pytest.approx(OFFSET_DEG, abs=1e-3)
    assert rot[0] < TOLERANCE_DEG and trans[0] < TOLERANCE_TRANSLATION  # back, well within the offset
    assert rot[1] < TOLERANCE_DEG and trans[1] < TOLERANCE_TRANSLATION  # the camera at its pose stays
    assert result.rotation_deg[0] == pytest.approx(OFFSET_DEG, abs=TOLERANCE_DEG)
    assert result.indices.tolist() == idx and result.loss_after[0] < result.loss_before[0]
    # the evidence test: the field renders the camera brought back from 2 deg far better than at its start (the
    # dataset's offset pose); the camera that stayed at its pose has no such evidence and would go back
    print(f"evidence: gain {result.gain} +- {result.gain_stderr}")
    assert result.gain[0] > 10 * result.gain_stderr[0] > 0
    assert result.supported().tolist() == [True, False]
    # the model is untouched: parameters, requires_grad flags, train mode (the field's own flag included)
    assert all(torch.equal(params[k], v) for k, v in model.state_dict().items())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert model.training and model.field.training


def _posefix_run(data: Path, output: Path, steps: int, iterations: int, evidence_z: float = 0.0):  # noqa: ANN202 (a TrainingRun)
    """posefix-small (front end off: the held / weak marks come from the transforms.json) trained ``iterations``
    iterations, its weak alignment ``steps`` steps from ``iterations`` iterations on (evidence test at
    ``evidence_z``; 0: every camera keeps its move)."""
    from nerf_posefix.plugin.training import in_process_config, run_training
    from nerf_posefix.plugin.weak_alignment import WeakAlignmentConfig

    def edit(config) -> None:  # noqa: ANN001
        config.pipeline.front_end = "off"
        config.pipeline.datamanager.dataparser.eval_mode = "all"
        config.pipeline.datamanager.train_num_rays_per_batch = RAYS
        config.pipeline.weak_alignment = WeakAlignmentConfig(steps=steps, lr=LR, rays_per_view=ALIGN_RAYS, min_iterations=iterations,
                                                              evidence_z=evidence_z)
        for key, value in SMALL_SAMPLES.items():
            setattr(config.pipeline.model, key, value)

    config = in_process_config("posefix-small", data=data, output_dir=output, max_iterations=iterations, seed=0, overrides=edit)
    return run_training(config, progress=False, quiet=True)


def test_the_pipeline_aligns_the_weak_cameras_into_its_final_checkpoint(weak_data, tmp_path, one_torch_thread) -> None:
    """After its last iteration the posefix pipeline aligns the weakly held cameras and composes the alignment into
    the camera optimizer before the final checkpoint: the exported poses of the same seeded run without the
    alignment differ exactly by the recorded moves on the weak cameras and not at all on the held ones."""
    from nerf_posefix.geometry.poses import rotation_angle_deg
    from nerf_posefix.io.transforms_json import read_transforms_json
    from nerf_posefix.plugin.run_reader import refined_input_poses
    from nerf_posefix.plugin.weak_alignment import WEAK_ALIGNMENT_FILE

    iterations = 30
    plain = _posefix_run(weak_data, tmp_path / "plain", 0, iterations)
    aligned = _posefix_run(weak_data, tmp_path / "aligned", STEPS, iterations)
    assert json.loads((plain.run_dir / WEAK_ALIGNMENT_FILE).read_text())["reason"] == "weak alignment off (0 steps)"
    record = json.loads((aligned.run_dir / WEAK_ALIGNMENT_FILE).read_text())
    before, after = refined_input_poses(plain.config_path), refined_input_poses(aligned.config_path)
    names = list(before.cameras.names)
    weak = [names[k] for k in WEAK]  # the frames are in name order (the fixture sorts them)
    assert record["ran"] and record["cameras"] == 2 and sorted(record["images"]) == sorted(Path(n).name for n in weak)
    assert list(after.cameras.names) == names
    rot = rotation_angle_deg(before.cameras.c2w[:, :3, :3], after.cameras.c2w[:, :3, :3])  # [N] degrees
    shift = np.linalg.norm(after.cameras.c2w[:, :3, 3] - before.cameras.c2w[:, :3, 3], axis=-1)  # [N] input units
    held = np.setdiff1d(np.arange(len(names)), WEAK)
    assert rot[held].max() < 1e-9 and shift[held].max() < 1e-12  # the same seeded training: held cameras identical
    scale = after.run.dataparser_scale
    for k, name in zip(WEAK, weak):
        moved = record["images"][Path(name).name]
        assert moved["rotation_deg"] > 1e-4 and {"loss_before", "loss_after"} <= set(moved)
        # the move is composed into the camera optimizer's float32 parameters and read back: ~1e-4 deg of a 2 deg move
        # differs with the CPU's kernels (seen: 1.3e-4 deg on an AVX-512 machine, under 1e-4 on others)
        assert rot[k] == pytest.approx(moved["rotation_deg"], abs=1e-3)
        assert shift[k] == pytest.approx(moved["translation"] / scale, rel=1e-3, abs=1e-6)
    # without evidence enough for them, the weak cameras go back to the stage's starting pose (the dataset's:
    # here the input), undoing the training's move and the alignment's; the held cameras are the plain run's
    reverted = _posefix_run(weak_data, tmp_path / "reverted", STEPS, iterations, evidence_z=1e9)
    record = json.loads((reverted.run_dir / WEAK_ALIGNMENT_FILE).read_text())
    assert record["reverted"] == 2 and record["kept"] == 0 and not any(m["kept"] for m in record["images"].values())
    back = refined_input_poses(reverted.config_path)
    given = read_transforms_json(weak_data / "transforms.json")
    order = [list(given.names).index(n) for n in names]
    rot_in = rotation_angle_deg(given.c2w[order, :3, :3], back.cameras.c2w[:, :3, :3])
    shift_in = np.linalg.norm(given.c2w[order, :3, 3] - back.cameras.c2w[:, :3, 3], axis=-1)
    moved_in_plain = rotation_angle_deg(given.c2w[order, :3, :3], before.cameras.c2w[:, :3, :3])
    assert moved_in_plain[list(WEAK)].min() > 1e-3  # the training did move them ...
    assert rot_in[list(WEAK)].max() < 1e-5 and shift_in[list(WEAK)].max() < 1e-6  # ... and they are back
    rot_plain = rotation_angle_deg(before.cameras.c2w[:, :3, :3], back.cameras.c2w[:, :3, :3])
    assert rot_plain[held].max() < 1e-9


def run_filenames(pipeline) -> list[str]:
    return [str(p) for p in pipeline.datamanager.train_dataset.image_filenames]


def test_each_view_renders_with_its_own_appearance_embedding(trained) -> None:
    """The same rays rendered as camera WEAK[0], as camera WEAK[1] and with eval mode's average embedding differ;
    twice as the same camera they agree (eval mode: no stratified sampling)."""
    from nerf_posefix.plugin.weak_alignment import OwnAppearance

    _, pipeline = trained
    model = pipeline.model
    cameras = pipeline.datamanager.train_dataset.cameras[torch.tensor(WEAK)]
    coords = torch.tensor([[20.5, 30.5], [32.5, 32.5], [40.5, 12.5]])
    view = torch.zeros(3, 1, dtype=torch.long)

    def render(target) -> torch.Tensor:
        bundle = cameras.generate_rays(camera_indices=view, coords=coords)
        with torch.no_grad():
            return target(bundle)["rgb"]

    was = model.training
    model.eval()
    try:
        first = render(OwnAppearance(model, torch.tensor([WEAK[0]])))
        again = render(OwnAppearance(model, torch.tensor([WEAK[0]])))
        second = render(OwnAppearance(model, torch.tensor([WEAK[1]])))
        average = render(model)
        assert not model.field.training  # the field's flag is set only during each forward pass
    finally:
        model.train(was)
    assert torch.equal(first, again)
    assert (first - second).abs().max() > 1e-4 and (first - average).abs().max() > 1e-4


def test_the_alignment_is_skipped_with_a_reason() -> None:
    """Against a barely trained field the alignment does not run (it would move the cameras at random); nor without
    weak cameras, steps, or an optimizer that can hold it; each says why."""
    from nerf_posefix.plugin.weak_alignment import WeakAlignmentConfig, skip_reason

    config = WeakAlignmentConfig()
    assert "trained 3 iterations" in skip_reason(config, 2, 3, None)
    assert skip_reason(config, 0, 1000, None) == "no weakly held camera"
    assert skip_reason(WeakAlignmentConfig(steps=0), 2, 1000, None) == "weak alignment off (0 steps)"
    assert "cannot hold the alignment" in skip_reason(config, 2, config.min_iterations, None)
