"""COLMAP model reading/writing, checked against pycolmap 4.2.1 (COLMAP's own reader/writer)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from nerfstudio.data.utils import colmap_parsing_utils as cpu
from scipy.spatial.transform import Rotation

from nerf_posefix.io.sources import load_camera_set
from nerf_posefix.io.colmap import (
    ColmapModel,
    colmap_model_from_poses,
    read_colmap_model,
    write_colmap_model,
)
from nerf_posefix.errors import InputError
from nerf_posefix.geometry.poses import make_c2w


def random_c2w(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return make_c2w(Rotation.random(n, random_state=seed).as_matrix(), rng.normal(scale=3.0, size=(n, 3)))


def model_with_points(n: int = 6, seed: int = 0) -> ColmapModel:
    """``n`` images of two cameras (PINHOLE and OPENCV) and 4 points, image k observing points k % 4
    and (k + 1) % 4."""
    c2w = random_c2w(n, seed)
    model = colmap_model_from_poses([f"img_{i:03d}.png" for i in range(n)], c2w, 64, 48, 55.0)
    model.cameras[2] = cpu.Camera(
        id=2, model="OPENCV", width=64, height=48, params=np.array([50.0, 51.0, 32.0, 24.0, 0.01, -0.02, 0.001, 0.002])
    )
    tracks: dict[int, list[tuple[int, int]]] = {}
    for image_id, im in list(model.images.items()):
        pids = np.array([10 + (image_id - 1) % 4, 10 + image_id % 4])
        for k, pid in enumerate(pids):
            tracks.setdefault(int(pid), []).append((image_id, k))
        model.images[image_id] = im._replace(
            camera_id=1 + image_id % 2, xys=np.array([[1.5, 2.5], [3.25, 4.75]]), point3D_ids=pids
        )
    for pid, track in tracks.items():
        model.points3D[pid] = cpu.Point3D(
            id=pid,
            xyz=np.array([0.1 * pid, -0.2, 1.0 + pid]),
            rgb=np.array([pid, 2 * pid, 3]),
            error=0.25,
            image_ids=np.array([t[0] for t in track]),
            point2D_idxs=np.array([t[1] for t in track]),
        )
    return model


def pycolmap_c2w(rec: pycolmap.Reconstruction) -> dict[str, np.ndarray]:
    """Camera-to-world 4x4 (OpenCV axes) per image name, as pycolmap reads them."""
    out = {}
    for image in rec.images.values():
        w2c = np.eye(4)
        w2c[:3] = image.cam_from_world().matrix()
        out[image.name] = np.linalg.inv(w2c)
    return out


@pytest.mark.parametrize("fmt", ["bin", "txt"])
def test_written_model_reads_back_in_pycolmap(tmp_path: Path, fmt: str) -> None:
    model = model_with_points()
    out = write_colmap_model(model, tmp_path / fmt, formats=(fmt,))
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{k}.{fmt}" for k in ("cameras", "images", "points3D"))
    rec = pycolmap.Reconstruction(str(out))
    assert rec.num_images() == 6 and rec.num_points3D() == 4 and rec.num_cameras() == 2
    expected = model.to_camera_set()
    poses = pycolmap_c2w(rec)
    for name, c2w in zip(expected.names, expected.c2w):
        np.testing.assert_allclose(poses[name], c2w, atol=1e-12)
    cam = rec.cameras[2]
    assert cam.model.name == "OPENCV"
    np.testing.assert_allclose(cam.params, model.cameras[2].params, rtol=0, atol=0)
    np.testing.assert_allclose(rec.points3D[12].xyz, [1.2, -0.2, 13.0], atol=1e-15)
    assert sorted(el.image_id for el in rec.points3D[12].track.elements) == [2, 3, 6]
    # and our reader gives the same model back, with the observations as point indices
    again = read_colmap_model(out)
    cs = again.to_camera_set()
    np.testing.assert_allclose(cs.c2w, expected.c2w, atol=1e-12)
    assert cs.names == expected.names
    np.testing.assert_allclose(cs.points, [[1.0, -0.2, 11.0], [1.1, -0.2, 12.0], [1.2, -0.2, 13.0], [1.3, -0.2, 14.0]], atol=1e-15)
    np.testing.assert_array_equal(cs.observations[0], [0, 1])  # image 1 sees points 10, 11
    np.testing.assert_array_equal(cs.observations[3], [0, 3])  # image 4 sees points 13, 10


def test_replaced_poses_survive_stale_frames_file(tmp_path: Path) -> None:
    """A model written by pycolmap has rigs/frames; writing refined poses over it must remove them,
    otherwise COLMAP would keep reading the old poses from frames.bin."""
    src = tmp_path / "src"
    src.mkdir()
    write_colmap_model(model_with_points(), src, formats=("bin",))
    rec = pycolmap.Reconstruction(str(src))
    rec.write(str(src))  # pycolmap 4.x writes rigs.bin and frames.bin too
    assert (src / "frames.bin").is_file() and (src / "rigs.bin").is_file()

    model = read_colmap_model(src)
    cs = model.to_camera_set()
    np.testing.assert_allclose(cs.c2w, [pycolmap_c2w(rec)[n] for n in cs.names], atol=1e-12)
    new_c2w = random_c2w(len(cs), seed=42)
    refined = model.with_poses(cs.with_poses(new_c2w))
    write_colmap_model(refined, src, formats=("bin", "txt"))
    assert not (src / "frames.bin").exists() and not (src / "rigs.bin").exists()
    for sub in ("bin", "txt"):  # pycolmap reads .bin when both exist: check .txt alone too
        only = tmp_path / f"only_{sub}"
        only.mkdir()
        for k in ("cameras", "images", "points3D"):
            shutil.copy(src / f"{k}.{sub}", only)
        poses = pycolmap_c2w(pycolmap.Reconstruction(str(only)))
        for name, c2w in zip(cs.names, new_c2w):
            np.testing.assert_allclose(poses[name], c2w, atol=1e-12)


def test_with_poses_checks_names() -> None:
    model = model_with_points(4)
    cs = model.to_camera_set()
    with pytest.raises(InputError, match="not images of the COLMAP model"):
        model.with_poses(cs.subset([0, 1]).__class__(names=["nope.png"], c2w=cs.c2w[:1], source="x"))
    with pytest.raises(InputError, match="have no pose"):
        model.with_poses(cs.subset([0, 1]))
    partial = model.with_poses(cs.subset([1]).with_poses(random_c2w(1, 7)), require_all=False)
    out = partial.to_camera_set()
    np.testing.assert_allclose(out.c2w[0], cs.c2w[0], atol=1e-15)  # untouched
    np.testing.assert_allclose(out.c2w[1], random_c2w(1, 7)[0], atol=1e-12)


def test_load_camera_set_finds_sparse_0_and_model_files(tmp_path: Path) -> None:
    model = model_with_points(5)
    write_colmap_model(model, tmp_path / "scene" / "sparse" / "0", formats=("txt",))
    for path in (tmp_path / "scene", tmp_path / "scene" / "sparse", tmp_path / "scene" / "sparse" / "0",
                 tmp_path / "scene" / "sparse" / "0" / "images.txt"):  # COLMAP's sparse folder too (its model 0)
        cs = load_camera_set(path)
        assert len(cs) == 5 and cs.names[0] == "img_000.png"
        np.testing.assert_allclose(cs.c2w, model.to_camera_set().c2w, atol=1e-12)


def test_missing_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such COLMAP model directory"):
        read_colmap_model(tmp_path / "absent")
    out = write_colmap_model(model_with_points(), tmp_path / "m", formats=("bin",))
    (out / "points3D.bin").unlink()
    with pytest.raises(InputError, match=r"points3D\.bin: missing COLMAP points3D file"):
        read_colmap_model(out)
    (out / "images.bin").unlink()
    with pytest.raises(InputError, match="not a COLMAP model.*found only cameras.bin"):
        read_colmap_model(out)


@pytest.mark.parametrize(
    "kind, cut, message",
    [("images", cut, r"images\.bin: (truncated|cannot parse)") for cut in (5, 40, 100, -3)]
    + [("points3D", cut, r"points3D\.bin: (truncated|cannot parse COLMAP points3D file \(truncated)") for cut in (60, -5)],
)
def test_truncated_binary_files(tmp_path: Path, kind: str, cut: int, message: str) -> None:
    out = write_colmap_model(model_with_points(), tmp_path / "m", formats=("bin",))
    data = (out / f"{kind}.bin").read_bytes()
    (out / f"{kind}.bin").write_bytes(data[:cut])
    with pytest.raises(InputError, match=message):
        read_colmap_model(out)


@pytest.mark.parametrize("batch_bytes", [2**23, 100])  # the second: many batches of a few records each
def test_binary_files_read_as_nerfstudio_reads_them_and_written_as_colmap_writes_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch_bytes: int
) -> None:
    """images.bin / points3D.bin are parsed here whole (not by nerfstudio's field-at-a-time parsers) and written
    whole: the records must be nerfstudio's, and the bytes COLMAP's."""
    from nerf_posefix.io import colmap as colmap_io

    monkeypatch.setattr(colmap_io, "_BATCH_BYTES", batch_bytes)
    model = model_with_points(n=9, seed=3)
    model.images[4] = model.images[4]._replace(xys=np.zeros((0, 2)), point3D_ids=np.zeros(0, dtype=np.int64))  # no points
    for pid in model.points3D:
        pt = model.points3D[pid]
        keep = pt.image_ids != 4
        model.points3D[pid] = pt._replace(image_ids=pt.image_ids[keep], point2D_idxs=pt.point2D_idxs[keep])
    ours = write_colmap_model(model, tmp_path / "ours", formats=("bin",))
    rec = pycolmap.Reconstruction(str(ours))
    rec.write_binary(str(tmp_path))  # COLMAP's writer, the same model
    assert (tmp_path / "points3D.bin").read_bytes() == (ours / "points3D.bin").read_bytes()
    read = read_colmap_model(ours)
    for kind, parse in (("images", cpu.read_images_binary), ("points3D", cpu.read_points3D_binary)):
        theirs, mine = parse(str(ours / f"{kind}.bin")), getattr(read, kind)
        assert list(theirs) == list(mine)
        for key, record in theirs.items():
            for field, value in record._asdict().items():
                got = getattr(mine[key], field)
                if isinstance(value, np.ndarray):
                    assert got.shape == value.shape, (kind, key, field)
                    assert got.dtype == value.dtype or not value.size, (kind, key, field)  # theirs: an empty list is float
                    np.testing.assert_array_equal(got, value)
                else:
                    assert got == value and type(got) is type(value), (kind, key, field)
    assert len(read.images[4].point3D_ids) == 0 and read.images[4].xys.shape == (0, 2)


def test_garbage_binary_count(tmp_path: Path) -> None:
    out = write_colmap_model(model_with_points(), tmp_path / "m", formats=("bin",))
    (out / "points3D.bin").write_bytes(b"\xff" * 64)
    with pytest.raises(InputError, match=r"points3D\.bin: truncated or not a COLMAP points3D file"):
        read_colmap_model(out)


def test_unparseable_text(tmp_path: Path) -> None:
    out = write_colmap_model(model_with_points(), tmp_path / "m", formats=("txt",))
    lines = (out / "images.txt").read_text().splitlines()
    lines[4] = "1 0.5 abc 0 0 1 2 3 1 img_000.png"
    (out / "images.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"images\.txt: cannot parse COLMAP images file \(ValueError"):
        read_colmap_model(out)


def test_unsupported_camera_models(tmp_path: Path) -> None:
    out = write_colmap_model(model_with_points(), tmp_path / "m", formats=("txt",))
    text = (out / "cameras.txt").read_text().replace("OPENCV", "SIMPLE_DIVISION")
    (out / "cameras.txt").write_text(text)
    with pytest.raises(InputError, match=r"cameras\.txt: camera 2 has unsupported model 'SIMPLE_DIVISION'"):
        read_colmap_model(out)
    # binary: model id 99 does not exist
    out = write_colmap_model(model_with_points(), tmp_path / "b", formats=("bin",))
    data = bytearray((out / "cameras.bin").read_bytes())
    data[8 + 4 : 8 + 8] = (99).to_bytes(4, "little")  # first camera's model id
    (out / "cameras.bin").write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"cameras\.bin: unsupported COLMAP camera model id 99"):
        read_colmap_model(out)


def test_wrong_parameter_count_and_unknown_camera(tmp_path: Path) -> None:
    out = write_colmap_model(model_with_points(), tmp_path / "m", formats=("txt",))
    lines = (out / "cameras.txt").read_text().splitlines()
    lines[3] = lines[3] + " 7.0"  # PINHOLE with 5 parameters
    (out / "cameras.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match="camera 1 \\(PINHOLE\\) has 5 parameters, expected 4"):
        read_colmap_model(out)
    model = model_with_points()
    model.images[3] = model.images[3]._replace(camera_id=9)
    out = write_colmap_model(model, tmp_path / "u", formats=("bin",))
    with pytest.raises(InputError, match="image 3 \\(img_002.png\\) refers to camera 9"):
        read_colmap_model(out)


@pytest.mark.parametrize("camera_model", ["SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV"])
def test_required_camera_models_round_trip(tmp_path: Path, camera_model: str) -> None:
    n_params = {"SIMPLE_PINHOLE": 3, "PINHOLE": 4, "SIMPLE_RADIAL": 4, "RADIAL": 5, "OPENCV": 8}[camera_model]
    model = model_with_points(3)
    params = np.linspace(0.5, 60.0, n_params)
    model.cameras = {1: cpu.Camera(id=1, model=camera_model, width=64, height=48, params=params)}
    model.images = {k: im._replace(camera_id=1) for k, im in model.images.items()}
    for fmt in ("bin", "txt"):
        out = write_colmap_model(model, tmp_path / fmt, formats=(fmt,))
        rec = pycolmap.Reconstruction(str(out))
        assert rec.cameras[1].model.name == camera_model
        np.testing.assert_allclose(rec.cameras[1].params, params, rtol=1e-15)
        assert read_colmap_model(out).cameras[1].model == camera_model
