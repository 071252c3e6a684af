"""Issue 23, captures of thousands of images: the synthetic survey generator of the scaling benchmark, the
adjustment's stopping rule on it, pose-guided (spatial) matching and the memory refusals.

Fast: a 48-image survey (tracks only, no images) and the bundled 64-view scene's poses; one spatial
matching of the bundled scene's images (~5 s).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pycolmap
import pytest

from benchmarks.synthetic_model import SyntheticConfig, generate, write_synthetic
from nerf_posefix.errors import InputError
from nerf_posefix.geometry.alignment import align
from nerf_posefix.geometry.poses import rotation_angle_deg
from nerf_posefix.io.camera_set import ImageCamera
from nerf_posefix.io.posed_images import load_posed_images
from nerf_posefix.sfm.bundle_adjustment import bundle_adjust_model, reconstruction_c2w
from nerf_posefix.sfm.track_building import (
    EXHAUSTIVE_MAX_IMAGES,
    TrackOptions,
    check_track_memory,
    match_features,
    reconstruction_from_poses,
    spatial_pairs,
    track_stats,
    triangulate_fixed_poses,
)

ROOT = Path(__file__).resolve().parents[1]
TOYBOX = ROOT / "assets" / "toybox"


@pytest.fixture(scope="module")
def survey(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = generate(SyntheticConfig(num_images=48, seed=1))
    return write_synthetic(model, tmp_path_factory.mktemp("survey"), images=False)


def _rotation_error(c2w: np.ndarray, truth: np.ndarray) -> np.ndarray:
    aligned = align(c2w, truth, mode="sim3").apply(c2w)
    return rotation_angle_deg(truth[:, :3, :3], aligned[:, :3, :3])


def test_synthetic_survey_is_what_it_says(survey: Path) -> None:
    rec = pycolmap.Reconstruction(str(survey / "sparse" / "0"))
    truth = np.load(survey / "truth.npz")
    assert rec.num_reg_images() == 48
    per_image = rec.compute_num_observations() / 48
    assert 300 < per_image < 450  # ~400 observations per image
    assert 3.5 < rec.compute_mean_track_length() < 7.0
    names, c2w = reconstruction_c2w(rec)
    assert names == [str(n) for n in truth["names"]]
    # the handed-over poses are 0.2 deg off; the truth model is readable too (no points)
    err = rotation_angle_deg(truth["c2w"][:, :3, :3], c2w[:, :3, :3])
    np.testing.assert_allclose(err, 0.2, atol=1e-6)
    assert pycolmap.Reconstruction(str(survey / "truth" / "sparse" / "0")).num_points3D() == 0
    # points triangulated from the noisy poses: residuals of a few pixels, not tens
    rec.update_point_3d_errors()
    assert 0.5 < rec.compute_mean_reprojection_error() < 5.0


def test_adjustment_of_the_survey_stops_when_the_poses_stop(survey: Path) -> None:
    truth = np.load(survey / "truth.npz")["c2w"]
    result = bundle_adjust_model(survey / "sparse" / "0")
    assert result.run is not None and result.run.stop == "poses_stopped" and result.run.iterations < 100
    assert result.run.linear_solver == "dense_schur"  # 48 images
    before = np.median(_rotation_error(result.input_c2w, truth))
    after = np.median(_rotation_error(result.c2w, truth))
    assert before > 0.19 and after < 0.1


def _grid(rows: int, cols: int, spacing: float = 1.0) -> tuple[list[str], np.ndarray]:
    """Nadir cameras on a serpentine grid (names in flight order: neighbouring strips are far apart by name)."""
    c2w = []
    for r in range(rows):
        for c in range(cols):
            col = cols - 1 - c if r % 2 else c
            pose = np.eye(4)
            pose[:3, :3] = np.diag([1.0, -1.0, -1.0])  # looking down
            pose[:3, 3] = [col * spacing, r * spacing, 10.0]
            c2w.append(pose)
    return [f"{k:05d}.png" for k in range(rows * cols)], np.stack(c2w)


def test_spatial_pairs_grow_linearly_and_close_the_strips() -> None:
    names, c2w = _grid(10, 20)
    pairs = spatial_pairs(names, c2w, neighbors=8)
    names2, c2w2 = _grid(20, 20)
    pairs2 = spatial_pairs(names2, c2w2, neighbors=8)
    assert len(pairs) <= 200 * 8 and 1.8 < len(pairs2) / len(pairs) < 2.2  # linear in the images
    index = {n: k for k, n in enumerate(names)}
    # every image is paired with its neighbour in the next strip (20 names away or more)
    across = {(index[a] // 20, index[b] // 20) for a, b in pairs if index[b] // 20 == index[a] // 20 + 1}
    assert len(across) == 9
    assert all(index[a] < index[b] for a, b in pairs) and len(set(pairs)) == len(pairs)


def test_spatial_pairs_skip_cameras_looking_apart() -> None:
    names, c2w = ["a", "b", "c"], np.stack([np.eye(4)] * 3)
    c2w[1, :3, :3] = np.diag([-1.0, 1.0, -1.0])  # b looks the other way
    c2w[2, :3, 3] = [0.5, 0.0, 0.0]
    assert spatial_pairs(names, c2w, neighbors=5) == [("a", "c")]


def test_auto_matching_by_size_and_poses() -> None:
    options = TrackOptions()
    assert options.matching_for(EXHAUSTIVE_MAX_IMAGES) == "exhaustive"
    assert options.matching_for(EXHAUSTIVE_MAX_IMAGES + 1) == "spatial"
    assert options.matching_for(EXHAUSTIVE_MAX_IMAGES + 1, has_poses=False) == "sequential"
    assert options.num_pairs(1000) == 1000 * options.spatial_neighbors
    assert TrackOptions(matching="exhaustive").num_pairs(1000) == 1000 * 999 // 2


def test_a_capture_too_large_for_memory_is_refused_with_what_to_do() -> None:
    names = [f"{k:05d}.jpg" for k in range(5000)]
    camera = ImageCamera("PINHOLE", 1920, 1080, (1500.0, 1500.0, 960.0, 540.0))
    cameras = {n: camera for n in names}
    with pytest.raises(InputError, match=r"exhaustive matching: 12497500 image pairs.*GiB.*--matching spatial"):
        check_track_memory(names, cameras, TrackOptions(matching="exhaustive"), has_poses=True, available=64 * 2**30)
    assert check_track_memory(names, cameras, TrackOptions(matching="spatial"), has_poses=True, available=64 * 2**30) < 8 * 2**30


def test_spatial_matching_builds_tracks(tmp_path: Path) -> None:
    posed = load_posed_images(TOYBOX / "transforms.json")
    db = tmp_path / "database.db"
    summary = match_features(posed.images_dir, posed.cameras.names, posed.intrinsics, db, TrackOptions(matching="spatial"),
                             poses=posed.cameras)
    assert summary.matching == "spatial" and summary.num_images == 64
    pairs = (tmp_path / "pairs.txt").read_text().splitlines()
    assert 64 < len(pairs) <= 64 * 20 < 64 * 63 // 2  # fewer than exhaustive's 2016
    assert summary.num_verified_pairs > 200
    rec = triangulate_fixed_poses(reconstruction_from_poses(db, posed.cameras), db, posed.images_dir, 2.0)
    stats = track_stats(rec, min_observations_per_image=20)
    assert stats.num_points > 1000 and not stats.weak_images
    with pytest.raises(InputError, match="needs the input poses"):
        match_features(posed.images_dir, posed.cameras.names, posed.intrinsics, tmp_path / "other.db", TrackOptions(matching="spatial"))
