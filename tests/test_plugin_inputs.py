"""Bad input is one InputError naming the file and the frame, raised while the pipeline is built
(before any training), and LPIPS never downloads anything."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from nerfstudio.data.dataparsers.colmap_dataparser import ColmapDataParserConfig

from nerf_posefix.errors import InputError
from nerf_posefix.plugin.method_configs import posefix_small_config
from nerf_posefix.plugin.model import lpips_weights_path

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "assets" / "toybox_tiny"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def build(data: Path, colmap: bool = False, **camera_optimizer):  # noqa: ANN201
    config = posefix_small_config().pipeline
    config.datamanager.data = data
    if colmap:
        config.datamanager.dataparser = ColmapDataParserConfig(colmap_path=Path("sparse/0"))
    for key, value in camera_optimizer.items():
        setattr(config.model.camera_optimizer, key, value)
    return config.setup(device="cpu", test_mode="val")


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    out = tmp_path / "scene"
    shutil.copytree(TINY, out)
    return out


def _edit_frames(path: Path, edit) -> str:  # noqa: ANN001
    meta = json.loads(path.read_text())
    file_path = edit(meta["frames"])
    path.write_text(json.dumps(meta))  # NaN is written as the JSON extension NaN, as Python reads it
    return file_path


def test_nan_pose_names_file_and_frame(scene: Path) -> None:
    def edit(frames):  # noqa: ANN001, ANN202
        frames[3]["transform_matrix"][1][3] = float("nan")
        return frames[3]["file_path"]

    file_path = _edit_frames(scene / "transforms.json", edit)
    with pytest.raises(InputError) as err:
        build(scene)
    message = str(err.value)
    assert "transforms.json" in message and "frame 3" in message and file_path in message and "NaN" in message
    assert "\n" not in message


def test_non_rigid_pose_is_rejected(scene: Path) -> None:
    def edit(frames):  # noqa: ANN001, ANN202
        frames[0]["transform_matrix"] = (np.diag([2.0, 2.0, 2.0, 1.0]) @ np.asarray(frames[0]["transform_matrix"])).tolist()
        return frames[0]["file_path"]

    _edit_frames(scene / "transforms.json", edit)
    with pytest.raises(InputError, match=r"transforms.json: frame 0 .*not a rotation"):
        build(scene)


def test_missing_image_names_file_and_frame(scene: Path) -> None:
    frames = json.loads((scene / "transforms.json").read_text())["frames"]
    victim = frames[5]["file_path"]
    (scene / victim).unlink()
    with pytest.raises(InputError) as err:
        build(scene)
    message = str(err.value)
    assert "transforms.json: frame 5" in message and victim in message and "image file not found" in message


def test_nan_ground_truth_is_rejected(scene: Path) -> None:
    def edit(frames):  # noqa: ANN001, ANN202
        frames[2]["transform_matrix"][0][0] = float("nan")
        return frames[2]["file_path"]

    _edit_frames(scene / "transforms_gt.json", edit)
    with pytest.raises(InputError, match=r"transforms_gt.json: frame 2 .*non-finite"):
        build(scene)


def test_colmap_dataset_with_missing_image(scene: Path) -> None:
    (scene / "images" / "004.png").unlink()
    with pytest.raises(InputError, match=r"sparse/0: image \d+ \(004.png\): image file not found"):
        build(scene, colmap=True)


def test_inverted_fixed_bounds_fail_before_training(scene: Path) -> None:
    with pytest.raises(InputError, match=r"camera-optimizer.xmin 2 / .*xmax 1.*must be > xmin"):
        build(scene, bounds="fixed", xmin=2.0, xmax=1.0)


def test_colmap_input_builds_with_points_per_camera(scene: Path) -> None:
    pipeline = build(scene, colmap=True, bounds="points-per-camera")
    optimizer = pipeline.model.camera_optimizer
    assert pipeline.depth_bounds.mode == "points-per-camera"
    assert torch.equal(optimizer.xmin, pipeline.depth_bounds.xmin)
    assert float(optimizer.xmin.min()) > 0 and bool((optimizer.xmax > optimizer.xmin).all())
    assert len(set(optimizer.xmin.tolist())) > 1


def test_lpips_skipped_without_cached_weights(scene: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """With an empty torch hub cache, building the model neither downloads nor fails; evaluation
    reports PSNR/SSIM without LPIPS; and nerfstudio's LPIPS class is left untouched afterwards."""
    import torchmetrics.image.lpip as lpip_module

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    assert not lpips_weights_path().exists()
    original = lpip_module.LearnedPerceptualImagePatchSimilarity
    pipeline = build(scene)
    assert pipeline.model.lpips is None
    assert lpip_module.LearnedPerceptualImagePatchSimilarity is original
    assert not any(k.startswith("_model.lpips.") for k in pipeline.state_dict())
    camera, batch = pipeline.datamanager.next_eval_image(0)
    outputs = pipeline.model.get_outputs_for_camera(camera)
    metrics, images = pipeline.model.get_image_metrics_and_images(outputs, batch)
    assert set(metrics) == {"psnr", "ssim"} and np.isfinite(metrics["psnr"])
    assert "img" in images and pipeline.model.lpips is None


def _count_image_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count nerfstudio's image reads (the real method still runs)."""
    from nerfstudio.data.datasets.base_dataset import InputDataset

    reads: list[int] = []
    original = InputDataset.get_numpy_image

    def counted(self, image_idx: int):  # noqa: ANN001, ANN202
        reads.append(image_idx)
        return original(self, image_idx)

    monkeypatch.setattr(InputDataset, "get_numpy_image", counted)
    return reads


@pytest.mark.parametrize("method", ["posefix-small", "posefix"])
def test_an_image_cache_larger_than_the_memory_is_refused_before_any_image_is_read(
        scene: Path, monkeypatch: pytest.MonkeyPatch, method: str) -> None:
    import nerf_posefix.plugin.datamanager as datamanager
    from nerf_posefix.plugin.method_configs import posefix_config

    reads = _count_image_reads(monkeypatch)
    monkeypatch.setattr(datamanager, "available_memory_bytes", lambda: 1 << 29)  # 0.5 GiB
    config = (posefix_small_config() if method == "posefix-small" else posefix_config()).pipeline
    config.datamanager.data = scene
    config.front_end_cache = scene.parent / "front_end"
    assert config.front_end == "on"
    with pytest.raises(InputError, match=r"nerfstudio would cache 15 training and 1 eval images in memory as float32 "
                                         r"\(~1\.0 GiB with the training process\) and 0\.5 GiB are available") as err:
        config.setup(device="cpu", test_mode="val")
    assert not config.front_end_cache.exists()  # refused before the front end's work, not after it
    assert "downscale-factor" in str(err.value)
    subset = "--pipeline.datamanager.train-num-images-to-sample-from N --pipeline.datamanager.train-num-times-to-repeat-images"
    assert (subset in str(err.value)) == (method == "posefix-small")
    assert ("posefix-small" in str(err.value)) == (method == "posefix")  # the parallel datamanager caches every image
    assert reads == []


def test_a_rotating_subset_of_the_images_fits_where_the_whole_cache_does_not(scene: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nerf_posefix.plugin.datamanager as datamanager

    reads = _count_image_reads(monkeypatch)
    pixels = 64 * 64  # toybox_tiny's images
    whole = datamanager.image_cache_bytes(15 * pixels, pixels)
    subset = datamanager.image_cache_bytes(4 * pixels, pixels)
    monkeypatch.setattr(datamanager, "available_memory_bytes", lambda: (whole + subset) // 2)
    with pytest.raises(InputError, match="train-num-images-to-sample-from"):
        build(scene)
    assert reads == []
    config = posefix_small_config().pipeline
    config.datamanager.data = scene
    config.datamanager.train_num_images_to_sample_from = 4
    config.datamanager.train_num_times_to_repeat_images = 100
    pipeline = config.setup(device="cpu", test_mode="val")
    assert len(pipeline.datamanager.train_dataset) == 15
    pipeline.datamanager.next_train(0)  # the first subset is read at the first batch
    assert len(reads) == 5  # 4 training images and the eval image, not 16
