"""Depth bounds of the homography regulariser (``assets/toybox_tiny``), checked against independent
computations: pycolmap for the points and their per-image observations, numpy for the depths."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

from nerf_posefix.errors import InputError
from nerf_posefix.plugin.camera_optimizer import HomographyCameraOptimizerConfig
from nerf_posefix.plugin.dataset import describe_dataset
from nerf_posefix.plugin.depth_bounds import compute_depth_bounds, find_sparse_points

pycolmap = pytest.importorskip("pycolmap")

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "assets" / "toybox_tiny"


pytestmark = pytest.mark.usefixtures("one_torch_thread")
NEAR, FAR = 0.05, 1000.0  # nerfacto's collider planes


def bounds_for(data: Path, **options):  # noqa: ANN201
    """What PosefixPipeline does, without building a model: (bounds, train dataparser outputs, log)."""
    dataparser = NerfstudioDataParserConfig(data=data)
    outputs = dataparser.setup().get_dataparser_outputs(split="train")
    c2w = outputs.cameras.camera_to_worlds
    log: list[str] = []
    points = find_sparse_points(describe_dataset(dataparser), outputs, c2w, log)
    names = [p.name for p in outputs.image_filenames]
    config = HomographyCameraOptimizerConfig(**options)
    return compute_depth_bounds(config, c2w, outputs.scene_box.aabb, NEAR, FAR, points, names), outputs, log


def reference_depths(data: Path, outputs) -> list[np.ndarray]:  # noqa: ANN001
    """Per training camera: depths (input units, along the viewing direction of its transforms.json
    pose) of the COLMAP points it observes, read with pycolmap."""
    rec = pycolmap.Reconstruction(str(data / "sparse" / "0"))
    by_name = {im.name: im for im in rec.images.values()}
    frames = {Path(f["file_path"]).name: f for f in json.loads((data / "transforms.json").read_text())["frames"]}
    depths = []
    for path in outputs.image_filenames:
        c2w = np.asarray(frames[path.name]["transform_matrix"], dtype=np.float64)  # OpenGL
        image = by_name[path.name]
        ids = sorted({p.point3D_id for p in image.points2D if p.has_point3D()})
        xyz = np.array([rec.points3D[i].xyz for i in ids])  # [P, 3]
        view = -c2w[:3, 2]  # OpenGL cameras look along -z
        d = (xyz - c2w[:3, 3]) @ view
        depths.append(d[d > 0])
    return depths


def truncated_quantile(values: np.ndarray, q: float) -> float:
    """The paper's reference-code percentile: sorted values at index int(q (n - 1))."""
    values = np.sort(values)
    return float(values[int(q * (len(values) - 1))])


def test_auto_uses_colmap_points_pooled_quantiles() -> None:
    bounds, outputs, log = bounds_for(TINY)
    assert bounds.mode == "points-global" and not log
    assert "COLMAP model" in bounds.source and "988 points" in bounds.source
    pooled = np.concatenate(reference_depths(TINY, outputs))
    scale = float(outputs.dataparser_scale)
    lo, hi = truncated_quantile(pooled, 0.025) * scale, truncated_quantile(pooled, 0.975) * scale
    np.testing.assert_allclose(bounds.xmin.numpy(), lo, rtol=1e-5)
    np.testing.assert_allclose(bounds.xmax.numpy(), hi, rtol=1e-5)
    assert 0.3 < lo < hi < 5.0  # a plausible scene depth range, far from nerfacto's [0.05, 1000]


def test_points_per_camera_matches_each_cameras_observations() -> None:
    bounds, outputs, _ = bounds_for(TINY, bounds="points-per-camera", min_points_per_camera=10)
    assert bounds.mode == "points-per-camera"
    scale = float(outputs.dataparser_scale)
    per_camera = reference_depths(TINY, outputs)
    assert min(len(d) for d in per_camera) >= 10
    expected_lo = [truncated_quantile(d, 0.025) * scale for d in per_camera]
    expected_hi = [truncated_quantile(d, 0.975) * scale for d in per_camera]
    np.testing.assert_allclose(bounds.xmin.numpy(), expected_lo, rtol=1e-5)
    np.testing.assert_allclose(bounds.xmax.numpy(), expected_hi, rtol=1e-5)
    assert len(set(np.round(expected_lo, 6))) > 1  # really per camera


def test_per_camera_falls_back_to_global_for_cameras_with_few_points() -> None:
    bounds, _, _ = bounds_for(TINY, bounds="points-per-camera", min_points_per_camera=10_000)
    glob, _, _ = bounds_for(TINY, bounds="points-global")
    assert torch.equal(bounds.xmin, glob.xmin) and torch.equal(bounds.xmax, glob.xmax)
    assert "use the global bounds" in bounds.source


def test_scene_box_near_far_and_fixed() -> None:
    box, outputs, _ = bounds_for(TINY, bounds="scene-box")
    c2w = outputs.cameras.camera_to_worlds.double().numpy()  # [N, 3, 4] dataparser frame
    corners = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64)
    far = max(float(((corners - c[:, 3]) @ -c[:, 2]).max()) for c in c2w)
    np.testing.assert_allclose(box.xmin.numpy(), NEAR)
    np.testing.assert_allclose(box.xmax.numpy(), far, rtol=1e-6)
    assert 1.0 < far < 4.0

    near_far, _, _ = bounds_for(TINY, bounds="near-far")
    assert float(near_far.xmin[0]) == pytest.approx(NEAR) and float(near_far.xmax[0]) == FAR
    assert "not a scene depth" in near_far.source

    fixed, _, _ = bounds_for(TINY, bounds="fixed", xmin=0.3, xmax=4.0)
    assert float(fixed.xmin[0]) == pytest.approx(0.3) and float(fixed.xmax[-1]) == pytest.approx(4.0)


def test_auto_without_points_uses_the_scene_box(tmp_path: Path) -> None:
    scene = tmp_path / "scene"
    shutil.copytree(TINY, scene, ignore=shutil.ignore_patterns("sparse"))
    bounds, _, _ = bounds_for(scene)
    box, _, _ = bounds_for(TINY, bounds="scene-box")
    assert bounds.mode == "scene-box"
    assert torch.equal(bounds.xmax, box.xmax)
    with pytest.raises(InputError, match="needs sparse points"):
        bounds_for(scene, bounds="points-global")


def test_colmap_model_in_another_world_frame_is_aligned(tmp_path: Path) -> None:
    """transforms.json (and its dataparser frame) moved by a similarity: the COLMAP model no longer maps
    through the dataparser transform, is aligned by Sim(3) instead, and gives the same bounds (in input
    units, which the similarity scales by 2.5; the dataparser's own scale depends on the orientation)."""
    scene = tmp_path / "scene"
    shutil.copytree(TINY, scene)
    meta = json.loads((scene / "transforms.json").read_text())
    angle = np.radians(30.0)
    sim = np.eye(4)
    sim[:3, :3] = 2.5 * np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    sim[:3, 3] = [1.0, -2.0, 0.5]
    for frame in meta["frames"]:
        pose = sim @ np.asarray(frame["transform_matrix"])
        pose[:3, :3] /= 2.5
        frame["transform_matrix"] = pose.tolist()
    (scene / "transforms.json").write_text(json.dumps(meta))
    moved, moved_outputs, _ = bounds_for(scene)
    original, outputs, _ = bounds_for(TINY)
    assert moved.mode == "points-global" and "Sim(3) alignment" in moved.source
    to_input = 1.0 / float(moved_outputs.dataparser_scale)
    expected = 2.5 / float(outputs.dataparser_scale)
    np.testing.assert_allclose(moved.xmin.numpy() * to_input, original.xmin.numpy() * expected, rtol=1e-4)
    np.testing.assert_allclose(moved.xmax.numpy() * to_input, original.xmax.numpy() * expected, rtol=1e-4)


def test_unrelated_colmap_model_is_ignored(tmp_path: Path) -> None:
    scene = tmp_path / "scene"
    shutil.copytree(TINY, scene)
    meta = json.loads((scene / "transforms.json").read_text())
    poses = [f["transform_matrix"] for f in meta["frames"]]
    rng = np.random.default_rng(0)
    for frame, k in zip(meta["frames"], rng.permutation(len(poses))):  # cameras no longer match names
        frame["transform_matrix"] = poses[k]
    (scene / "transforms.json").write_text(json.dumps(meta))
    bounds, _, log = bounds_for(scene)
    assert bounds.mode == "scene-box"
    assert any("ignoring the COLMAP model" in line for line in log)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"bounds": "fixed", "xmin": -1.0, "xmax": 2.0}, r"xmin.*must be > 0"),
        ({"bounds": "fixed", "xmin": 3.0, "xmax": 2.0}, r"xmax.*must be > xmin"),
        ({"bounds": "fixed", "xmin": 0.5}, r"needs --pipeline.model.camera-optimizer.xmin and"),
        ({"bounds": "points-global", "lower_quantile": 0.9, "upper_quantile": 0.1}, r"lower-quantile"),
    ],
)
def test_bad_bounds_are_input_errors(options: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        bounds_for(TINY, **options)
