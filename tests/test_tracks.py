"""The track term: SfM observations reprojected through the rendered pose, inside a real pipeline.

* the residuals equal pycolmap's own projection of the same model (dataparser frame, OpenGL axes and the
  COLMAP pixel convention converted on the way);
* with the photometric loss off, the track term alone brings perturbed poses back to the truth;
* the pixel prior weighs a camera like one of its observations;
* inputs the term cannot use fall back, with a message, to the photometric refinement.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pycolmap
import pytest
import torch

from nerf_posefix.geometry.alignment import align
from nerf_posefix.geometry.pixel_prior import pixel_prior
from nerf_posefix.geometry.poses import opengl_to_opencv, rotation_angle_deg
from nerf_posefix.io.colmap import read_colmap_model, write_colmap_model
from nerf_posefix.io.transforms_json import read_transforms_json
from nerf_posefix.plugin.camera_optimizer import HomographyCameraOptimizer
from nerf_posefix.plugin.depth_bounds import SparsePoints
from nerf_posefix.plugin.method_configs import posefix_small_config
from nerf_posefix.plugin.tracks import build_tracks
from nerf_posefix.workflows.perturb import perturb_dataset

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "assets" / "toybox_tiny"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _pipeline(data: Path, **camera_optimizer):  # noqa: ANN003, ANN202
    config = posefix_small_config().pipeline
    config.datamanager.data = data
    config.datamanager.dataparser.eval_mode = "all"
    config.front_end = "off"  # the track term itself, from the dataset's poses
    for key, value in camera_optimizer.items():
        setattr(config.model.camera_optimizer, key, value)
    torch.manual_seed(0)
    return config.setup(device="cpu", test_mode="val")


@pytest.fixture(scope="module")
def noisy_points_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """toybox_tiny whose COLMAP points are moved by ~1 % of the scene: residuals of ~1 px."""
    out = tmp_path_factory.mktemp("noisy_points") / "scene"
    shutil.copytree(TINY, out, symlinks=True)
    model = read_colmap_model(out / "sparse" / "0")
    rng = np.random.default_rng(0)
    points = {k: p._replace(xyz=np.asarray(p.xyz) + rng.normal(scale=0.02, size=3)) for k, p in model.points3D.items()}
    write_colmap_model(model.__class__(model.cameras, model.images, points), out / "sparse" / "0", formats=("bin",))
    return out


def test_residuals_equal_pycolmap_projection(noisy_points_scene: Path) -> None:
    pipeline = _pipeline(noisy_points_scene)
    optimizer = pipeline.model.camera_optimizer
    assert isinstance(optimizer, HomographyCameraOptimizer) and optimizer.has_tracks
    with torch.no_grad():
        residuals, valid = optimizer.track_residuals(sample=False)
    assert bool(valid.all())

    rec = pycolmap.Reconstruction(str(noisy_points_scene / "sparse" / "0"))
    names = [Path(p).name for p in pipeline.datamanager.train_dataparser_outputs.image_filenames]
    by_name = {im.name: im for im in rec.images.values()}
    expected = []
    for cam, name in enumerate(names):  # the order build_tracks uses: training camera, then keypoint order
        image = by_name[name]
        camera = rec.cameras[image.camera_id]
        for p2d in image.points2D:
            if p2d.has_point3D() and p2d.point3D_id in rec.points3D:
                xyz = rec.points3D[p2d.point3D_id].xyz
                projected = camera.img_from_cam(image.cam_from_world() * xyz)
                expected.append(np.asarray(projected) - np.asarray(p2d.xy))
    expected = np.asarray(expected)
    assert residuals.shape == expected.shape
    assert np.median(np.linalg.norm(expected, axis=1)) > 0.3  # the test is not trivially 0
    # the dataparser hands nerfstudio float32 poses: ~1e-7 relative, i.e. < 1e-4 px on these 64 px images
    np.testing.assert_allclose(residuals.numpy(), expected, atol=1e-4)


def test_track_term_alone_recovers_perturbed_poses(tmp_path: Path) -> None:
    """Photometric loss off: Adam on the track term alone (points fixed, no prior) from 1 deg / 2 %
    noise. The observations are exact, so the truth is the minimum; reached to 0.01 deg."""
    data = tmp_path / "noisy"
    perturb_dataset(TINY, data, rotation_deg=1.0, translation=0.02, seed=3)
    pipeline = _pipeline(data, weight=0.0, track_points="fixed", track_loss="squared", geometric_weight=1.0, track_batch=10**6)
    optimizer = pipeline.model.camera_optimizer
    assert optimizer.has_tracks
    adam = torch.optim.Adam([optimizer.pose_adjustment], lr=3e-3)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(adam, gamma=0.995)
    for _ in range(1000):
        adam.zero_grad()
        loss: dict = {}
        optimizer.get_loss_dict(loss)
        loss["camera_opt_tracks"].backward()
        adam.step()
        scheduler.step()
    with torch.no_grad():
        refined = opengl_to_opencv(optimizer.corrected_c2w().double().numpy())
        initial = opengl_to_opencv(optimizer.initial_c2w.double().numpy())
    gt = read_transforms_json(data / "transforms_gt.json")
    names = [Path(p).name for p in pipeline.datamanager.train_dataparser_outputs.image_filenames]
    gt_c2w = gt.c2w[[gt.names.index(n) for n in names]]

    def rotation_errors(c2w: np.ndarray) -> np.ndarray:
        aligned = align(c2w, gt_c2w, mode="sim3").apply(c2w)
        return rotation_angle_deg(gt_c2w[:, :3, :3], aligned[:, :3, :3])

    assert np.median(rotation_errors(initial)) > 0.8
    assert np.max(rotation_errors(refined)) < 0.01


def test_pixel_prior_weighs_like_one_observation(noisy_points_scene: Path) -> None:
    """With tracks, the prior's per-camera energy D/σ² is averaged per observation (× N / K)."""
    pipeline = _pipeline(noisy_points_scene, prior="pixels", geometric_weight=1.0)
    optimizer = pipeline.model.camera_optimizer
    with torch.no_grad():
        optimizer.pose_adjustment[2, 4] = 1e-3  # one camera rotated by 1 mrad
        loss: dict = {}
        optimizer.get_loss_dict(loss)
        d = optimizer.pixel_prior_errors()
    intr = optimizer.pixel_intrinsics
    with torch.no_grad():  # the optimizer's cached metric gives the geometry's pixel prior
        reference = pixel_prior(optimizer.initial_c2w, optimizer.pose_tangent(), *intr.unbind(-1), optimizer.xmin, optimizer.xmax)
    torch.testing.assert_close(d, reference, rtol=1e-6, atol=0.0)
    n, k = optimizer.num_cameras, optimizer.track_camera_index.shape[0]
    expected = float((d / optimizer.prior_sigma**2).mean()) * n / k
    assert float(loss["camera_opt_regularizer"]) == pytest.approx(expected, rel=1e-5)
    assert float(d[2]) > 0 and float(d[torch.arange(n) != 2].abs().max()) == 0.0
    # σ defaults to each camera's median residual at the input pose (~1 px here)
    assert 0.2 < float(optimizer.prior_sigma.median()) < 5.0


def test_points_without_observations_fall_back_with_a_message(tmp_path: Path) -> None:
    model = read_colmap_model(TINY / "sparse" / "0")
    cams = model.to_camera_set()
    no_obs = {k: im._replace(xys=np.zeros((0, 2)), point3D_ids=np.zeros(0, dtype=np.int64)) for k, im in model.images.items()}
    empty = model.__class__(model.cameras, no_obs, model.points3D, path="empty")
    points = SparsePoints(
        xyz=torch.zeros(len(model.points3D), 3), observations=None, source="test",
        xyz64=np.asarray(cams.points), colmap_model=empty, model_index=list(range(len(cams))),
    )
    log: list[str] = []
    assert build_tracks(points, len(cams), log) is None
    assert log and "no track term: only 0 observations" in log[0]

    # observations that reference points missing from points3D are skipped, the others kept
    missing = dict(model.points3D)
    dropped = sorted(missing)[:100]
    for pid in dropped:
        del missing[pid]
    partial = model.__class__(model.cameras, model.images, missing, path="partial")
    kept_ids = np.array(sorted(missing))
    points = SparsePoints(
        xyz=torch.zeros(len(missing), 3), observations=None, source="test",
        xyz64=np.stack([np.asarray(missing[p].xyz) for p in kept_ids]), colmap_model=partial,
        model_index=list(range(len(cams))),
    )
    tracks = build_tracks(points, len(cams), [])
    assert tracks is not None
    total = sum(int((np.asarray(im.point3D_ids) >= 0).sum()) for im in model.images.values())
    in_dropped = sum(int(np.isin(np.asarray(im.point3D_ids), dropped).sum()) for im in model.images.values())
    assert len(tracks) == total - in_dropped
    assert set(tracks.point_ids.tolist()) == set(kept_ids.tolist())


def test_a_camera_model_without_projection_falls_back(tmp_path: Path) -> None:
    model = read_colmap_model(TINY / "sparse" / "0")
    cams = model.to_camera_set()
    fisheye = {k: c._replace(model="OPENCV_FISHEYE", params=np.array([50.0, 50.0, 32.0, 32.0, 0.0, 0.0, 0.0, 0.0]))
               for k, c in model.cameras.items()}
    points = SparsePoints(
        xyz=torch.zeros(len(model.points3D), 3), observations=None, source="test", xyz64=np.asarray(cams.points),
        colmap_model=model.__class__(fisheye, model.images, model.points3D, path="fisheye"),
        model_index=list(range(len(cams))),
    )
    log: list[str] = []
    assert build_tracks(points, len(cams), log) is None
    assert "OPENCV_FISHEYE" in log[0]


def test_refined_points_get_their_own_small_learning_rate(noisy_points_scene: Path) -> None:
    from nerf_posefix.plugin.camera_optimizer import TRACK_POINTS_GROUP

    pipeline = _pipeline(noisy_points_scene)
    groups = pipeline.get_param_groups()
    optimizer = pipeline.model.camera_optimizer
    assert [p is optimizer.track_points for p in groups[TRACK_POINTS_GROUP]] == [True]
    assert all(p is not optimizer.track_points for p in groups["camera_opt"])
    config = posefix_small_config()
    assert config.optimizers[TRACK_POINTS_GROUP]["optimizer"].lr <= 1e-2 * config.optimizers["camera_opt"]["optimizer"].lr
    fixed = _pipeline(noisy_points_scene, track_points="fixed").get_param_groups()
    assert TRACK_POINTS_GROUP not in fixed


def test_weakly_held_cameras_with_few_observations_are_left_out_of_the_track_term(
    noisy_points_scene: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Frames marked weakly held (``posefix_held: false``, as refine writes them) with fewer observations than
    ``support.MIN_OBSERVATIONS`` keep none in the track term (their few, unreliable keypoints must not pull them: the
    photometric loss decides, and the weak alignment places them after training); weakly held frames with more (weak
    for an uncertain pose or a separate group) keep theirs and are not realigned photometrically; every observation
    of the held cameras stays."""
    import json

    import nerf_posefix.plugin.pipeline as pipeline_module
    from nerf_posefix.io.transforms_json import HELD_KEY

    full = _pipeline(noisy_points_scene).model.camera_optimizer
    marked = tmp_path / "scene"
    shutil.copytree(noisy_points_scene, marked, symlinks=True)
    meta = json.loads((marked / "transforms.json").read_text())
    weak_files = sorted(f["file_path"] for f in meta["frames"])[:2]
    for frame in meta["frames"]:
        frame[HELD_KEY] = frame["file_path"] not in weak_files
    (marked / "transforms.json").write_text(json.dumps(meta))
    counts = torch.bincount(full.track_camera_index)
    # their observations are many: they stay in the track term, and the weak alignment leaves these cameras alone
    assert int(counts.min()) >= pipeline_module.WEAK_MIN_OBSERVATIONS
    pipeline = _pipeline(marked)
    optimizer = pipeline.model.camera_optimizer
    names = [Path(p).name for p in pipeline.datamanager.train_dataparser_outputs.image_filenames]
    weak = torch.tensor([names.index(Path(f).name) for f in weak_files])
    assert optimizer.has_tracks and bool(optimizer.held.sum() == len(names) - 2)
    torch.testing.assert_close(optimizer.track_observed_px, full.track_observed_px)
    assert pipeline.weak_cameras.numel() == 0
    # counted as few (the threshold above their counts): left out, and realigned after training
    monkeypatch.setattr(pipeline_module, "WEAK_MIN_OBSERVATIONS", int(counts.max()) + 1)
    pipeline = _pipeline(marked)
    optimizer = pipeline.model.camera_optimizer
    assert not bool(torch.isin(optimizer.track_camera_index, weak).any())
    kept = ~torch.isin(full.track_camera_index, weak)
    assert int(kept.sum()) < len(full.track_camera_index)  # the weak frames had observations to leave out
    torch.testing.assert_close(optimizer.track_observed_px, full.track_observed_px[kept])
    assert sorted(pipeline.weak_cameras.tolist()) == sorted(weak.tolist())


def test_the_largest_group_is_the_largest_set_of_cameras_linked_by_shared_points() -> None:
    """Cameras 0-2 share points, camera 3 sees a point of its own, camera 4 sees none: the largest group is 0-2."""
    from nerf_posefix.plugin.tracks import Tracks

    tracks = Tracks(camera_index=torch.tensor([0, 1, 1, 2, 3, 3]), point_index=torch.tensor([0, 0, 1, 1, 2, 2]),
                    observed_px=torch.zeros(6, 2, dtype=torch.float64), points=torch.zeros(3, 3, dtype=torch.float64),
                    point_ids=torch.arange(3), intrinsics=None, source="test")  # type: ignore[arg-type]
    assert tracks.largest_group(5).tolist() == [True, True, True, False, False]
