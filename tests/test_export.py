"""``posefix export``: refined training poses back in the input world frame.

* optimizer off: the export reproduces the input poses (transforms.json and COLMAP inputs, the COLMAP
  model read back with pycolmap, intrinsics and points3D unchanged);
* optimizer on (a checkpoint with a known non-zero ``pose_adjustment``): the export equals nerfstudio's
  own ``apply_to_camera`` + ``DataparserOutputs.transform_poses_to_original_space`` of a pipeline
  loaded with ``eval_setup`` (the path of ``ns-render``/``ns-eval``, plain ``torch.load``);
* the ``posefix export`` command line.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nerfstudio.data.dataparsers.colmap_dataparser import ColmapDataParserConfig

from nerf_posefix.io.sources import load_camera_set
from nerf_posefix.workflows.pose_sources import load_pose_source

from nerf_posefix.io.transforms_json import read_transforms_json
from nerf_posefix.cli.main import main
from nerf_posefix.workflows.export import export_run
from nerf_posefix.plugin.run_reader import load_refined_camera_set
from nerf_posefix.plugin.training import in_process_config, run_training

pycolmap = pytest.importorskip("pycolmap")

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "assets" / "toybox_tiny"


pytestmark = pytest.mark.usefixtures("one_torch_thread")
FLIP = np.diag([1.0, -1.0, -1.0, 1.0])  # OpenGL <-> OpenCV camera axes


def make_run(output: Path, mode: str, colmap: bool, iterations: int) -> Path:
    def edit(config) -> None:  # noqa: ANN001
        config.pipeline.model.camera_optimizer.mode = mode
        config.pipeline.front_end = "off"  # the export's own round trip: the run starts from the dataset's poses
        if colmap:
            config.pipeline.datamanager.dataparser = ColmapDataParserConfig(data=TINY, colmap_path=Path("sparse/0"))

    config = in_process_config("posefix-small", data=TINY, output_dir=output, max_iterations=iterations, overrides=edit)
    config.pipeline.datamanager.train_num_rays_per_batch = 256
    return run_training(config, progress=False, quiet=True).config_path


def set_pose_adjustment(config_path: Path, seed: int) -> torch.Tensor:
    """Overwrite the run's checkpoint with a known random pose adjustment (~1 deg, ~0.02 units)."""
    ckpt = sorted((config_path.parent / "nerfstudio_models").glob("step-*.ckpt"))[-1]
    state = torch.load(ckpt, map_location="cpu")
    key = "_model.camera_optimizer.pose_adjustment"
    gen = torch.Generator().manual_seed(seed)
    adjustment = torch.randn(state["pipeline"][key].shape, generator=gen) * 0.02
    state["pipeline"][key] = adjustment
    torch.save(state, ckpt)
    return adjustment


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("runs")
    out = {
        "json_off": make_run(base / "json_off", "off", colmap=False, iterations=2),
        "colmap_off": make_run(base / "colmap_off", "off", colmap=True, iterations=2),
        "json_on": make_run(base / "json_on", "SO3xR3", colmap=False, iterations=0),
        "colmap_on": make_run(base / "colmap_on", "SO3xR3", colmap=True, iterations=0),
    }
    set_pose_adjustment(out["json_on"], seed=1)
    set_pose_adjustment(out["colmap_on"], seed=2)
    return out


def _poses(meta: dict) -> dict[str, np.ndarray]:
    return {Path(f["file_path"]).name: np.asarray(f["transform_matrix"], dtype=np.float64) for f in meta["frames"]}


def test_round_trip_transforms_json(runs: dict[str, Path], tmp_path: Path) -> None:
    written = export_run(runs["json_off"], tmp_path / "export")
    assert set(written) == {"transforms", "colmap"}  # toybox_tiny has its COLMAP model beside the transforms.json
    exported = json.loads(written["transforms"].read_text())
    original = json.loads((TINY / "transforms.json").read_text())
    a, b = _poses(original), _poses(exported)
    assert a.keys() == b.keys()
    assert max(np.abs(a[k] - b[k]).max() for k in a) <= 1e-6
    assert sum(f["posefix_refined"] for f in exported["frames"]) == 15  # train split; 1 eval frame kept
    for key in ("fl_x", "fl_y", "cx", "cy", "w", "h", "camera_model", "applied_transform"):
        assert exported[key] == original[key]
    # file paths point at the original images from the export directory
    assert all((tmp_path / "export" / f["file_path"]).is_file() for f in exported["frames"])
    # the CameraSet view matches the loader of the input
    refined = load_refined_camera_set(runs["json_off"])
    reference = read_transforms_json(TINY / "transforms.json")
    index = {n: i for i, n in enumerate(reference.names)}
    assert len(refined) == 15
    for name, c2w in zip(refined.names, refined.c2w):
        np.testing.assert_allclose(c2w, reference.c2w[index[name]], atol=1e-9)
    via_loader = load_pose_source(runs["json_off"].parent)
    np.testing.assert_array_equal(via_loader.c2w, refined.c2w)


def test_round_trip_colmap(runs: dict[str, Path], tmp_path: Path) -> None:
    written = export_run(runs["colmap_off"], tmp_path / "export")
    sparse = written["colmap"]
    assert sparse == tmp_path / "export" / "sparse" / "0"
    for name in ("cameras", "images", "points3D"):
        assert (sparse / f"{name}.bin").is_file() and (sparse / f"{name}.txt").is_file()
    assert not any((sparse / f"{n}{e}").exists() for n in ("rigs", "frames") for e in (".bin", ".txt"))
    ours, theirs = pycolmap.Reconstruction(str(sparse)), pycolmap.Reconstruction(str(TINY / "sparse" / "0"))
    assert set(ours.images.keys()) == set(theirs.images.keys())
    for image_id, image in theirs.images.items():
        np.testing.assert_allclose(
            ours.images[image_id].cam_from_world().matrix(), image.cam_from_world().matrix(), atol=1e-6
        )
    for camera_id, camera in theirs.cameras.items():
        assert ours.cameras[camera_id].model == camera.model
        np.testing.assert_array_equal(ours.cameras[camera_id].params, camera.params)
    assert set(ours.points3D.keys()) == set(theirs.points3D.keys())
    for point_id, point in theirs.points3D.items():
        np.testing.assert_array_equal(ours.points3D[point_id].xyz, point.xyz)
    # transforms.json of a COLMAP input: COLMAP world, OpenGL axes
    exported = json.loads(written["transforms"].read_text())
    for frame in exported["frames"]:
        image = theirs.images[frame["colmap_im_id"]]
        c2w_cv = np.linalg.inv(np.vstack([image.cam_from_world().matrix(), [0, 0, 0, 1]]))
        np.testing.assert_allclose(np.asarray(frame["transform_matrix"]), c2w_cv @ FLIP, atol=1e-6)
        assert (tmp_path / "export" / frame["file_path"]).is_file()
    assert sum(f["posefix_refined"] for f in exported["frames"]) == 14  # eval-interval 8: 2 eval images
    # and nerfstudio trains from the exported COLMAP model
    refined = load_refined_camera_set(runs["colmap_off"])
    assert len(refined) == 14 and refined.points is not None and len(refined.points) == len(theirs.points3D)


def _nerfstudio_refined_original(config_path: Path) -> tuple[list[str], np.ndarray]:
    """Refined train poses per nerfstudio: eval_setup (plain torch.load), the camera optimizer's
    apply_to_camera on each train camera, transform_poses_to_original_space (OpenCV axes)."""
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, _ = eval_setup(config_path, test_mode="inference")
    outputs = pipeline.datamanager.train_dataparser_outputs
    cameras = pipeline.datamanager.train_dataset.cameras
    refined = []
    for i in range(len(cameras)):
        camera = cameras[i : i + 1]
        camera.metadata = {"cam_idx": i}
        refined.append(pipeline.model.camera_optimizer.apply_to_camera(camera).detach())
    poses = outputs.transform_poses_to_original_space(torch.cat(refined), camera_convention="opencv")
    return [p.name for p in outputs.image_filenames], poses.double().numpy()


@pytest.mark.parametrize("run", ["json_on", "colmap_on"])
def test_export_matches_nerfstudio_transform_back(runs: dict[str, Path], run: str) -> None:
    names, expected = _nerfstudio_refined_original(runs[run])
    refined = load_refined_camera_set(runs[run])  # OpenCV axes, original world frame
    assert refined.names == names
    np.testing.assert_allclose(refined.c2w[:, :3, :4], expected, atol=2e-5)
    # the poses really moved (by ~1 deg / ~0.02 dataparser units)
    original = load_camera_set(TINY / "sparse" / "0" if run == "colmap_on" else TINY / "transforms.json")
    index = {n: i for i, n in enumerate(original.names)}
    moved = np.array([np.abs(c - original.c2w[index[n]]).max() for n, c in zip(refined.names, refined.c2w)])
    assert moved.min() > 1e-3


def test_cli(runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    assert main(["export", "--load-config", str(runs["colmap_on"]), "--output", str(out)]) == 0
    assert (out / "transforms.json").is_file() and (out / "sparse" / "0" / "images.bin").is_file()
    assert main(["export", "--load-config", str(runs["colmap_on"]), "--output", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["export", "--load-config", str(runs["colmap_on"]), "--output", str(out), "--overwrite"]) == 0
    assert main(["export", "--load-config", str(tmp_path / "nope" / "config.yml"), "--output", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope/config.yml" in err[0]
