"""``nerf_posefix.geometry.noise`` and ``posefix perturb`` on the bundled tiny scene."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from nerf_posefix.io.sources import load_camera_set

from nerf_posefix.io.transforms_json import read_transforms_json
from nerf_posefix.cli.main import main
from nerf_posefix.errors import InputError
from nerf_posefix.geometry.noise import holdout_mask, perturb_poses
from nerf_posefix.geometry.poses import rotation_angle_deg
from nerf_posefix.geometry.poses import scene_radius as _radius


def scene_radius(c2w):  # noqa: ANN001, ANN201
    return _radius(c2w[:, :3, 3])

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "assets" / "toybox_tiny"


def _tree_digest(path: Path) -> dict[str, tuple[str, int]]:
    return {
        str(p.relative_to(path)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def _random_poses(n: int, seed: int) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(seed)
    c2w = np.tile(np.eye(4), (n, 1, 1))
    c2w[:, :3, :3] = Rotation.random(n, random_state=seed).as_matrix()
    c2w[:, :3, 3] = rng.normal(size=(n, 3)) * 2.0
    return c2w


def _perturb(*args: str) -> int:
    return main(["perturb", *args])


# ----------------------------------------------------------------------------------------------
# noise.py


def test_exact_angles_and_magnitudes() -> None:
    c2w = _random_poses(500, 1)
    noisy, noise, magnitude = perturb_poses(c2w, 3.0, 0.05, "scene-fraction", seed=7)
    radius = scene_radius(c2w)
    assert magnitude == pytest.approx(0.05 * radius, rel=1e-12)
    angles = rotation_angle_deg(c2w[:, :3, :3], noisy[:, :3, :3])
    np.testing.assert_allclose(angles, 3.0, atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(noisy[:, :3, 3] - c2w[:, :3, 3], axis=1), magnitude, rtol=1e-12)
    # Results are proper rigid poses.
    rot = noisy[:, :3, :3]
    np.testing.assert_allclose(rot @ rot.transpose(0, 2, 1), np.broadcast_to(np.eye(3), rot.shape), atol=1e-12)
    np.testing.assert_allclose(noisy[:, 3], np.broadcast_to([0, 0, 0, 1], (500, 4)))
    # Directions are isotropic: the mean of 500 unit vectors is ~0 (std of each component ~ 0.026).
    assert np.abs(noise.rotation_axes.mean(axis=0)).max() < 0.12
    directions = noise.translations / magnitude
    assert np.abs(directions.mean(axis=0)).max() < 0.12
    np.testing.assert_allclose((directions**2).mean(axis=0), 1 / 3, atol=0.06)


def test_seeded_reproducible_and_absolute_units() -> None:
    c2w = _random_poses(20, 2)
    a, _, _ = perturb_poses(c2w, 1.0, 0.3, "absolute", seed=3)
    b, _, _ = perturb_poses(c2w, 1.0, 0.3, "absolute", seed=3)
    c, _, _ = perturb_poses(c2w, 1.0, 0.3, "absolute", seed=4)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3
    np.testing.assert_allclose(np.linalg.norm(a[:, :3, 3] - c2w[:, :3, 3], axis=1), 0.3, rtol=1e-12)


def test_held_out_cameras_keep_their_pose_and_others_are_unchanged() -> None:
    c2w = _random_poses(16, 3)
    held = holdout_mask(16, 8)
    assert held.tolist() == [i % 8 == 0 for i in range(16)]
    full, _, _ = perturb_poses(c2w, 2.0, 0.02, seed=5)
    partial, noise, _ = perturb_poses(c2w, 2.0, 0.02, seed=5, held_out=held)
    np.testing.assert_allclose(partial[held], c2w[held], atol=1e-15)
    np.testing.assert_array_equal(partial[~held], full[~held])
    assert noise.rotation_deg[held].tolist() == [0.0, 0.0]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rotation_deg": -1.0, "translation": 0.1},
        {"rotation_deg": 181.0, "translation": 0.1},
        {"rotation_deg": 1.0, "translation": -0.1},
        {"rotation_deg": float("nan"), "translation": 0.1},
        {"rotation_deg": 1.0, "translation": 0.1, "translation_units": "metres"},
    ],
)
def test_bad_parameters(kwargs: dict) -> None:
    with pytest.raises(InputError):
        perturb_poses(_random_poses(4, 0), **kwargs)


def test_single_camera_needs_absolute_units() -> None:
    with pytest.raises(InputError, match="absolute"):
        perturb_poses(_random_poses(1, 0), 1.0, 0.05, "scene-fraction")
    noisy, _, _ = perturb_poses(_random_poses(1, 0), 1.0, 0.05, "absolute")
    assert noisy.shape == (1, 4, 4)


# ----------------------------------------------------------------------------------------------
# posefix perturb


def test_perturb_dataset_end_to_end(tmp_path: Path) -> None:
    before = _tree_digest(TINY)
    out = tmp_path / "noisy"
    assert _perturb("--data", str(TINY), "--output", str(out), "--rotation-deg", "3", "--translation", "0.05", "--seed", "0") == 0
    assert _tree_digest(TINY) == before  # input untouched

    # Images copied; both formats and the ground truth written.
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(p.name for p in (TINY / "images").iterdir())
    gt = read_transforms_json(out / "transforms_gt.json")
    clean = read_transforms_json(TINY / "transforms.json")
    np.testing.assert_array_equal(gt.c2w, clean.c2w)
    noisy_json = read_transforms_json(out / "transforms.json")
    noisy_colmap = load_camera_set(out / "sparse" / "0")
    assert noisy_json.names == noisy_colmap.names == gt.names
    np.testing.assert_allclose(noisy_json.c2w, noisy_colmap.c2w, atol=1e-9)
    np.testing.assert_allclose(load_camera_set(out / "sparse_gt" / "0").c2w, gt.c2w, atol=1e-9)

    # Exactly what was asked, per camera.
    record = json.loads((out / "perturbation.json").read_text())
    radius = scene_radius(gt.c2w)
    assert record["scene_radius"] == pytest.approx(radius, rel=1e-12)
    assert record["translation_world"] == pytest.approx(0.05 * radius, rel=1e-12)
    angles = rotation_angle_deg(gt.c2w[:, :3, :3], noisy_json.c2w[:, :3, :3])
    offsets = np.linalg.norm(noisy_json.c2w[:, :3, 3] - gt.c2w[:, :3, 3], axis=1)
    np.testing.assert_allclose(angles, 3.0, atol=1e-7)
    np.testing.assert_allclose(offsets, 0.05 * radius, rtol=1e-9)
    by_name = {c["name"]: c for c in record["cameras"]}
    for i, name in enumerate(gt.names):
        assert by_name[name]["rotation_deg"] == 3.0
        np.testing.assert_allclose(by_name[name]["translation"], noisy_json.c2w[i, :3, 3] - gt.c2w[i, :3, 3], atol=1e-9)

    # pycolmap reads the noisy model with the noisy poses (no stale rigs/frames).
    pycolmap = pytest.importorskip("pycolmap")
    rec = pycolmap.Reconstruction(str(out / "sparse" / "0"))
    for i, name in enumerate(noisy_json.names):
        (im,) = [im for im in rec.images.values() if im.name == name]
        c2w = np.eye(4)
        c2w[:3] = im.cam_from_world().inverse().matrix()
        np.testing.assert_allclose(c2w, noisy_json.c2w[i], atol=1e-6)


def test_reproducible_and_refuses_to_overwrite(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    args = ["--data", str(TINY), "--rotation-deg", "1", "--translation", "0.02"]
    assert _perturb(*args, "--output", str(a), "--seed", "11") == 0
    assert _perturb(*args, "--output", str(b), "--seed", "11") == 0
    assert _perturb(*args, "--output", str(c), "--seed", "12") == 0
    assert (a / "transforms.json").read_bytes() == (b / "transforms.json").read_bytes()
    assert (a / "sparse/0/images.bin").read_bytes() == (b / "sparse/0/images.bin").read_bytes()
    assert (a / "transforms.json").read_bytes() != (c / "transforms.json").read_bytes()

    # Existing output: refused (exit code 2), untouched; replaced with --overwrite.
    before = _tree_digest(a)
    assert _perturb(*args, "--output", str(a), "--seed", "12") == 2
    assert _tree_digest(a) == before
    assert _perturb(*args, "--output", str(a), "--seed", "12", "--overwrite") == 0
    assert (a / "transforms.json").read_bytes() == (c / "transforms.json").read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers

    # Output inside the input, or a missing input: refused.
    with pytest.raises(InputError, match="inside"):
        from nerf_posefix.workflows.perturb import perturb_dataset

        perturb_dataset(a, a / "sub")
    assert _perturb("--data", str(tmp_path / "missing"), "--output", str(tmp_path / "x")) == 2


def test_colmap_only_dataset_gets_the_same_noise(tmp_path: Path) -> None:
    """A COLMAP-only copy of the scene receives the same per-camera noise as the dual-format scene,
    and gets a transforms_gt.json with the clean poses."""
    src = tmp_path / "colmap_only"
    shutil.copytree(TINY / "images", src / "images")
    shutil.copytree(TINY / "sparse", src / "sparse")
    both, only = tmp_path / "both", tmp_path / "only"
    assert _perturb("--data", str(TINY), "--output", str(both), "--seed", "3", "--holdout-every", "8") == 0
    assert _perturb("--data", str(src), "--output", str(only), "--seed", "3", "--holdout-every", "8") == 0
    assert not (only / "transforms.json").exists()
    np.testing.assert_allclose(load_camera_set(only / "sparse/0").c2w, load_camera_set(both / "sparse/0").c2w, atol=1e-12)
    np.testing.assert_allclose(
        read_transforms_json(only / "transforms_gt.json").c2w, read_transforms_json(TINY / "transforms.json").c2w, atol=1e-9
    )
    record = json.loads((only / "perturbation.json").read_text())
    held = [c["name"] for c in record["cameras"] if c["held_out"]]
    assert held == ["000.png", "008.png"]
    gt = load_camera_set(src / "sparse/0")
    noisy = load_camera_set(only / "sparse/0")
    for name in held:
        i = gt.names.index(name)
        np.testing.assert_allclose(noisy.c2w[i], gt.c2w[i], atol=1e-9)


def test_transforms_with_applied_transform(tmp_path: Path) -> None:
    """Noise is applied in the original world frame and the stored applied_transform is kept: in the
    saved frame (a rotation of the original) angles and offsets are still exact."""
    src = tmp_path / "ns"
    src.mkdir()
    meta = json.loads((TINY / "transforms.json").read_text())
    swap = np.array([[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [0, 0, 0, 1.0]])
    meta["applied_transform"] = swap[:3].tolist()
    for frame in meta["frames"]:
        frame["transform_matrix"] = (swap @ np.asarray(frame["transform_matrix"])).tolist()
    (src / "transforms.json").write_text(json.dumps(meta))
    out = tmp_path / "out"
    assert _perturb("--data", str(src), "--output", str(out), "--rotation-deg", "2", "--translation", "0.1", "--translation-units", "absolute") == 0
    noisy_meta = json.loads((out / "transforms.json").read_text())
    assert noisy_meta["applied_transform"] == meta["applied_transform"]
    saved_clean = np.array([f["transform_matrix"] for f in meta["frames"]])
    saved_noisy = np.array([f["transform_matrix"] for f in noisy_meta["frames"]])
    np.testing.assert_allclose(rotation_angle_deg(saved_clean[:, :3, :3], saved_noisy[:, :3, :3]), 2.0, atol=1e-7)
    np.testing.assert_allclose(np.linalg.norm(saved_noisy[:, :3, 3] - saved_clean[:, :3, 3], axis=1), 0.1, rtol=1e-9)
    # In the original frame the noisy poses are those of the scene perturbed with the same seed.
    ref = tmp_path / "ref"
    assert _perturb("--data", str(TINY), "--output", str(ref), "--rotation-deg", "2", "--translation", "0.1", "--translation-units", "absolute") == 0
    np.testing.assert_allclose(read_transforms_json(out / "transforms.json").c2w, read_transforms_json(ref / "transforms.json").c2w, atol=1e-9)
