"""Tracks built from the images (issue 16): features, matches and triangulation with pycolmap, the poses held
fixed; ``posefix refine`` on poses that come without tracks (transforms.json, TUM, a point-less COLMAP model),
written back in the input's own format and frame; bad inputs are one error with nothing written.

The bundled ``toybox`` (64 views, 128²) is used for the tracks: at the tiny scene's 64² SIFT finds ~95
features per image and at most ~8 of them pass the ratio test between neighbouring views, too few for a
verified pair (the tiny scene is the fallback's test).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pycolmap
import pytest
import torch

from benchmarks import make_scene
from nerf_posefix.cli.main import main
from nerf_posefix.geometry.alignment import align
from nerf_posefix.geometry.poses import rotation_angle_deg
from nerf_posefix.io.camera_set import CameraSet
from nerf_posefix.io.colmap import colmap_model_from_poses, write_colmap_model
from nerf_posefix.io.posed_images import load_posed_images
from nerf_posefix.io.sources import load_camera_set
from nerf_posefix.io.transforms_json import read_transforms_json
from nerf_posefix.io.tum import write_tum
from nerf_posefix.workflows.perturb import perturb_dataset
from nerf_posefix.sfm.track_building import (
    database_summary,
    match_features,
    open_track_cache,
    reconstruction_from_poses,
    track_stats,
    triangulate_fixed_poses,
)

ROOT = Path(__file__).resolve().parents[1]
TOYBOX = ROOT / "assets" / "toybox"
TINY = ROOT / "assets" / "toybox_tiny"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SIFT features and exhaustive matches of the bundled scene's images (pose independent), extracted with every
    core: the images keep the ids of their order whatever extraction thread finishes first."""
    import pycolmap

    posed = load_posed_images(TOYBOX / "transforms.json")
    db = tmp_path_factory.mktemp("tracks") / "database.db"
    summary = match_features(posed.images_dir, posed.cameras.names, posed.intrinsics, db)
    assert summary.num_images == 64 and summary.matching == "exhaustive"
    opened = pycolmap.Database.open(str(db))
    try:
        ids = {im.name: int(im.image_id) for im in opened.read_all_images()}
    finally:
        opened.close()
    assert [ids[n] for n in posed.cameras.names] == list(range(1, len(ids) + 1))
    return db


@pytest.fixture(scope="module")
def noisy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("anywhere") / "noisy"
    perturb_dataset(TOYBOX, data, rotation_deg=3.0, translation=0.05, seed=3)
    return data


def _errors(est: CameraSet, gt: CameraSet) -> tuple[np.ndarray, np.ndarray]:
    """Per camera (gt order): rotation error (deg) and centre error (gt units) after Sim(3) alignment."""
    order = [est.names.index(n) for n in gt.names]
    c2w = est.c2w[order]
    aligned = align(c2w, gt.c2w, mode="sim3").apply(c2w)
    rot = rotation_angle_deg(gt.c2w[:, :3, :3], aligned[:, :3, :3])
    return rot, np.linalg.norm(aligned[:, :3, 3] - gt.c2w[:, :3, 3], axis=-1)


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_tracks_from_exact_poses_lie_on_the_true_surface(database: Path) -> None:
    posed = load_posed_images(TOYBOX / "transforms.json")
    rec = triangulate_fixed_poses(reconstruction_from_poses(database, posed.cameras), database, posed.images_dir, 2.0)
    stats = track_stats(rec, min_observations_per_image=20)
    assert stats.num_points > 1000 and not stats.weak_images
    # the poses were held fixed
    names, c2w = zip(*sorted((im.name, np.linalg.inv(np.vstack([im.cam_from_world().matrix(), [0, 0, 0, 1]])))
                             for im in rec.images.values()))
    truth = dict(zip(posed.cameras.names, posed.cameras.c2w))
    assert max(np.abs(c2w_k - truth[n]).max() for n, c2w_k in zip(names, c2w)) < 1e-9
    # sub-pixel reprojection errors
    rec.update_point_3d_errors()
    per_point = np.array([p.error for p in rec.points3D.values()])
    assert np.median(per_point) < 0.3 and stats.mean_reprojection_error_px < 0.5
    # each point at the depth of the scene's surface along the ray from a camera observing it (the
    # generator's ray caster: ground, backdrop and objects)
    rel = []
    for point in rec.points3D.values():
        centre = np.asarray(rec.images[point.track.elements[0].image_id].projection_center())
        ray = np.asarray(point.xyz) - centre
        depth = np.linalg.norm(ray)
        t, _, _ = make_scene.cast(centre[None], (ray / depth)[None], make_scene.SceneConfig().backdrop_radius)
        rel.append(abs(depth - t[0]) / t[0])
    rel = np.array(rel)
    assert np.median(rel) < 0.01 and np.mean(rel < 0.05) > 0.9


def _tracks(rec: "pycolmap.Reconstruction") -> dict[tuple[tuple[int, int], ...], "pycolmap.Point3D"]:
    """The points of ``rec`` by their track (sorted (image id, keypoint index) pairs), point ids ignored."""
    return {tuple(sorted((el.image_id, el.point2D_idx) for el in p.track.elements)): p for p in rec.points3D.values()}


def test_triangulation_with_a_cache_read_once_makes_colmaps_tracks(database: Path, tmp_path: Path) -> None:
    """triangulate_fixed_poses runs COLMAP's point-triangulator steps through pycolmap.IncrementalMapper on a
    database cache read once: with the point-only refinements (refine_points) it makes pycolmap.triangulate_points'
    tracks and points; without them (the default) nearly the same tracks, every point within the threshold."""
    from nerf_posefix.sfm.track_building import _focal_px, _triangulation_options

    posed = load_posed_images(TOYBOX / "transforms.json")
    base = reconstruction_from_poses(database, posed.cameras)
    threshold = 4.0
    colmap = pycolmap.triangulate_points(pycolmap.Reconstruction(base), str(database), str(posed.images_dir), str(tmp_path),
                                         clear_points=True, options=_triangulation_options(threshold, _focal_px(base), -1, 0))
    cache = open_track_cache(database)
    refined = triangulate_fixed_poses(base, database, posed.images_dir, threshold, cache=cache, refine_points=True)
    plain = triangulate_fixed_poses(base, database, posed.images_dir, threshold, cache=cache)
    black = triangulate_fixed_poses(base, database, posed.images_dir, threshold, cache=cache, colours=False)
    again = triangulate_fixed_poses(refined, database, posed.images_dir, threshold, cache=cache)  # refined's points are cleared
    ref, a, b = _tracks(colmap), _tracks(refined), _tracks(plain)
    print(f"{len(ref)} points by triangulate_points, {len(a)} with refine_points ({len(set(ref) & set(a))} the same tracks), "
          f"{len(b)} without ({len(set(ref) & set(b))} the same)")
    # with the refinements: COLMAP's tracks, points and colours (measured over 20 builds of the database, whose
    # matches vary a little: 2163-2171 of ~2171 tracks the same; their points a median 1e-14 apart, at most 1.0e-5,
    # the cameras' radius being 3.3: a common track's point is adjusted with other points)
    common = set(ref) & set(a)
    assert len(common) >= 0.98 * max(len(ref), len(a))
    moved = np.array([np.linalg.norm(np.asarray(ref[t].xyz) - np.asarray(a[t].xyz)) for t in common])
    print(f"common points moved by median {np.median(moved):.1e}, at most {moved.max():.1e}")
    assert np.median(moved) < 1e-8 and moved.max() < 1e-3
    assert all(np.array_equal(ref[t].color, a[t].color) for t in common)
    # without: nearly the same tracks (measured: 2150-2157 of ~2178), all within the threshold, the same colours
    common = set(ref) & set(b)
    assert len(common) >= 0.95 * max(len(ref), len(b))
    assert max(p.error for p in plain.points3D.values()) <= threshold
    assert all(np.array_equal(ref[t].color, b[t].color) for t in common)
    # colours=False: the same points, black
    assert set(_tracks(black)) == set(b) and all(int(p.color.sum()) == 0 for p in black.points3D.values())
    # from a triangulated reconstruction: its points replaced (nearly the same tracks: COLMAP's new point ids follow
    # the old ones, and the order of its track merging with them; measured: 6 of 2177 tracks differ), it untouched
    assert len(set(_tracks(again)) ^ set(b)) <= 0.01 * len(b)
    assert set(_tracks(refined)) == set(a) and base.num_points3D() == 0
    # the poses held
    for image_id in base.reg_image_ids():
        for r in (refined, plain, again):
            assert np.allclose(r.images[image_id].cam_from_world().matrix(), base.images[image_id].cam_from_world().matrix(), atol=1e-12)


def test_transforms_json_in_refined_transforms_json_out(noisy: Path, database: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    out = tmp_path / "refined"
    before = _tree(noisy)
    code = main(["refine", "--poses", str(noisy / "transforms.json"), "--database", str(database), "--output", str(out), "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "features and matches from" in captured.out and "re-triangulating" in captured.out
    assert _tree(noisy) == before  # the input is untouched
    meta_in = json.loads((noisy / "transforms.json").read_text())
    meta_out = json.loads((out / "transforms.json").read_text())
    # same file, same conventions: every key kept (applied_transform included), frames in order, new poses only
    assert {k: v for k, v in meta_out.items() if k != "frames"} == {k: v for k, v in meta_in.items() if k != "frames"}
    assert [{k: v for k, v in f.items() if k != "transform_matrix"} for f in meta_out["frames"]] == [
        {k: v for k, v in f.items() if k != "transform_matrix"} for f in meta_in["frames"]
    ]
    gt = read_transforms_json(noisy / "transforms_gt.json")
    rot_in, centre_in = _errors(read_transforms_json(noisy / "transforms.json"), gt)
    rot_out, centre_out = _errors(read_transforms_json(out / "transforms.json"), gt)
    assert np.median(rot_in) > 2.5 and np.median(rot_out) < 0.25
    assert np.median(centre_out) < 0.1 * np.median(centre_in)
    # nerfstudio's own dataparser reads the output with its images, and sees the refined poses
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    outputs = NerfstudioDataParserConfig(data=out, eval_mode="all").setup().get_dataparser_outputs("train")
    assert len(outputs.image_filenames) == 64 and all(Path(f).is_file() for f in outputs.image_filenames)
    # the COLMAP model beside it holds the new tracks, in the same world frame as the written poses
    model = load_camera_set(out / "sparse" / "0")
    assert model.points is not None and len(model.points) > 1000
    refined = read_transforms_json(out / "transforms.json")
    order = [model.names.index(f"images/{n}") for n in refined.names]
    assert np.abs(model.c2w[order] - refined.c2w).max() < 1e-9
    report = json.loads((out / "report.json").read_text())["summary"]
    assert report["input_format"] == "transforms" and report["warnings"] == []
    assert report["reprojection_error_px"]["output"] < 0.5 < report["reprojection_error_px"]["input"]


def test_tum_in_tum_out_with_the_same_timestamps(noisy: Path, database: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    from evo.tools import file_interface

    noisy_set = read_transforms_json(noisy / "transforms.json")  # names 000.png ...
    stamps = 1000.0 + 0.1 * np.arange(len(noisy_set))  # [N] image times
    # the trajectory also has poses between the images (a SLAM system's rate): they are corrected by their
    # nearest image's correction
    mid = noisy_set.c2w.copy()
    mid[:, :3, 3] += 0.01
    c2w = np.concatenate([noisy_set.c2w, mid])
    times = np.concatenate([stamps, stamps + 0.05])
    order = np.argsort(times)
    traj = tmp_path / "slam.txt"
    write_tum(CameraSet(names=[f"{t:.6f}" for t in times[order]], c2w=c2w[order]), traj, timestamps=times[order])
    text = traj.read_text().splitlines()
    traj.write_text("\n".join(line for line in text if not line.startswith("#")) + "\n")  # a plain TUM file
    listing = tmp_path / "rgb.txt"
    # image names relative to --images, as the shared database has them
    listing.write_text("# timestamp filename\n" + "".join(f"{t:.6f} images/{n}\n" for t, n in zip(stamps, noisy_set.names)))
    fx = 0.5 * 128 / np.tan(np.deg2rad(55.0) / 2)
    camera = f"PINHOLE {fx!r},{fx!r},64,64"
    out = tmp_path / "refined"
    args = ["refine", "--poses", str(traj), "--images", str(noisy), "--timestamps", str(listing),
            "--camera", camera, "--database", str(database), "--output", str(out), "--quiet"]
    code = main(args)
    assert code == 0, capsys.readouterr().err
    written = file_interface.read_tum_trajectory_file(str(out / "slam.txt"))
    original = file_interface.read_tum_trajectory_file(str(traj))
    assert np.array_equal(written.timestamps, original.timestamps)
    gt = read_transforms_json(noisy / "transforms_gt.json")
    at_images = np.searchsorted(written.timestamps, stamps)
    refined = CameraSet(names=noisy_set.names, c2w=np.stack(written.poses_se3)[at_images])
    rot_out, _ = _errors(refined, gt)
    assert np.median(rot_out) < 0.25
    # the rows between images moved with their neighbour: the 1 cm offset to it is kept (in its camera frame)
    between = np.stack(written.poses_se3)[at_images + 1]
    offset = np.linalg.inv(refined.c2w) @ between
    assert np.allclose(offset[:, :3, :3], np.eye(3), atol=1e-9)
    assert np.allclose(np.linalg.norm(offset[:, :3, 3], axis=-1), np.sqrt(3) * 0.01, rtol=1e-6)


def test_colmap_model_without_points_gets_new_tracks(noisy: Path, database: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    noisy_set = read_transforms_json(noisy / "transforms.json")
    fx = 0.5 * 128 / np.tan(np.deg2rad(55.0) / 2)
    bare = tmp_path / "bare"
    names = [f"images/{n}" for n in noisy_set.names]  # relative to --images, as the shared database has them
    write_colmap_model(colmap_model_from_poses(names, noisy_set.c2w, 128, 128, fx), bare, formats=("bin",))
    out = tmp_path / "refined"
    code = main(["refine", "--poses", str(bare), "--images", str(noisy), "--database", str(database),
                 "--output", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    rec = pycolmap.Reconstruction(str(out / "sparse" / "0"))
    assert rec.num_points3D() > 1000 and rec.compute_mean_reprojection_error() < 0.5
    refined = load_camera_set(out / "sparse" / "0")
    refined.names = [n.split("/")[-1] for n in refined.names]
    rot_out, _ = _errors(refined, read_transforms_json(noisy / "transforms_gt.json"))
    assert np.median(rot_out) < 0.25


def test_too_few_tracks_fall_back_to_the_photometric_refinement(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    out = tmp_path / "refined"
    code = main(["refine", "--poses", str(TINY / "transforms.json"), "--output", str(out), "--iterations", "2",
                 "--threads", "1", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "warning: only 0 points could be triangulated" in captured.out
    summary = json.loads((out / "report.json").read_text())["summary"]
    assert summary["tracks"] == "off" and summary["iterations"] == 2 and summary["bundle_adjustment"] == "none"
    assert summary["tracks_built"]["num_points"] == 0 and "photometric refinement" in summary["warnings"][0]
    assert "WARNING: only 0 points" in captured.out
    assert len(read_transforms_json(out / "transforms.json")) == 16


def _one_error(args: list[str], tmp_path: Path, capsys, expected: str) -> None:  # noqa: ANN001
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("posefix: error:") and expected in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_bad_pose_sources_are_one_error_and_nothing_written(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    data = tmp_path / "data"
    shutil.copytree(TINY, data, ignore=shutil.ignore_patterns("sparse*"))
    (data / "images" / "005.png").unlink()
    _one_error(["refine", "--poses", str(data / "transforms.json"), "--output", str(tmp_path / "o1")], tmp_path, capsys,
               "images/005.png: image file not found (1 of 16 images")
    good = tmp_path / "good"
    shutil.copytree(TINY, good, ignore=shutil.ignore_patterns("sparse*"))
    _one_error(["refine", "--poses", str(good / "transforms.json"), "--output", str(good / "images" / ".." / "images" / "out")],
               tmp_path, capsys, "lies inside the input the images of --poses")
    assert sorted(p.name for p in (good / "images").iterdir()) == sorted(p.name for p in (TINY / "images").iterdir())
    meta = json.loads((TINY / "transforms.json").read_text())
    meta["frames"].append(dict(meta["frames"][0]))
    dup = tmp_path / "dup.json"
    dup.write_text(json.dumps(meta))
    shutil.copytree(TINY / "images", tmp_path / "images")
    _one_error(["refine", "--poses", str(dup), "--output", str(tmp_path / "o2")], tmp_path, capsys, "duplicate camera names: 000.png")
    # TUM: a timestamp list whose image has no pose in the trajectory, one naming an image twice, no intrinsics
    gt = read_transforms_json(TINY / "transforms.json")
    traj = tmp_path / "traj.txt"
    write_tum(gt, traj, timestamps=np.arange(16, dtype=float))
    listing = tmp_path / "rgb.txt"
    listing.write_text("".join(f"{k}.0 {n}\n" for k, n in enumerate(gt.names)).replace("15.0 ", "15.5 "))
    tum = ["refine", "--poses", str(traj), "--images", str(tmp_path / "images"), "--camera", "PINHOLE 61.5,61.5,32,32"]
    _one_error(tum + ["--timestamps", str(listing), "--output", str(tmp_path / "o3")], tmp_path, capsys,
               "1 of 16 images have no pose within 0.01 s (--t-max-diff): 015.png (15.500000)")
    listing.write_text("".join(f"{k}.0 {n}\n" for k, n in enumerate(gt.names)) + "3.0 003.png\n")
    _one_error(tum + ["--timestamps", str(listing), "--output", str(tmp_path / "o4")], tmp_path, capsys,
               "image 003.png is listed twice")
    listing.write_text("".join(f"{k}.0 {n}\n" for k, n in enumerate(gt.names)))
    _one_error(tum[:-2] + ["--timestamps", str(listing), "--output", str(tmp_path / "o5")], tmp_path, capsys,
               "give --camera")
    _one_error(tum[:3] + ["--camera", "PINHOLE 61.5,32,32", "--images", str(tmp_path / "images"), "--timestamps",
                          str(listing), "--output", str(tmp_path / "o6")], tmp_path, capsys, "PINHOLE takes 4 parameters")


def test_resume_reuses_the_features_and_matches(noisy: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """Sequential matching (name order), interrupted in the NeRF stage, resumed: the database, the
    triangulated tracks and the bundle adjustment kept in OUT.partial are not made again. The bundled scene's
    two rings of 32 views are not linked by 5-image sequential overlap: each ring is refined within itself
    and placed by its noisy input poses (said in a warning), so the result is worse than with exhaustive
    matching but still far better than the input."""
    from nerf_posefix.workflows.refine import RefineOptions, partial_dir, refine

    out = tmp_path / "refined"
    options = RefineOptions(output=out, poses=noisy / "transforms.json", matching="sequential", sequential_overlap=5,
                            iterations=3, checkpoint_every=1, threads=1, quiet=True)

    def interrupt(done: int, loss) -> None:  # noqa: ANN001
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        refine(options, callback=interrupt)
    first = capsys.readouterr().out
    assert "sequential matching of 64 images" in first
    work = partial_dir(out)
    assert (work / "tracks" / "database.db").is_file() and (work / "bundle_adjusted" / "result.json").is_file()
    result = refine(RefineOptions(**{**options.__dict__, "resume": True}))
    again = capsys.readouterr().out
    assert "building tracks" not in again and "re-triangulating" not in again, (first, again)
    assert result.summary["iterations"] == 3 and result.summary["resumed_from_iteration"] >= 1
    assert result.summary["tracks_built"]["matches"]["matching"] == "sequential", result.summary
    assert not work.exists()  # removed once the output is written
    assert "2 separate groups (largest 32 of 64 images)" in result.summary["warnings"][0]
    # 3 iterations train no field to align the weakly held group against: the final alignment is skipped, and says why
    assert not result.summary["weak_alignment"]["ran"] and "trained 3 iterations" in result.summary["weak_alignment"]["reason"]
    gt = read_transforms_json(noisy / "transforms_gt.json")
    rot_in, _ = _errors(read_transforms_json(noisy / "transforms.json"), gt)
    rot_out, _ = _errors(read_transforms_json(out / "transforms.json"), gt)
    assert np.median(rot_out) < 0.2 * np.median(rot_in)


def _four_blurred_views(noisy: Path, data: Path) -> tuple[Path, list[str], list[str]]:
    """A copy of ``noisy`` in ``data`` with every 16th view (4 of 64) blurred 3 px and its contrast cut to 40 %;
    returns it, the image names and the degraded ones. (The tests of the NeRF stage's decisions on them run without
    the photometric alignment, which holds 3 of the 4 itself: the test after them.)"""
    from PIL import Image, ImageFilter

    shutil.copytree(noisy, data, symlinks=False)
    names = sorted(p.name for p in (data / "images").iterdir())
    degraded = names[::16]
    for name in degraded:
        path = data / "images" / name
        with Image.open(path) as im:
            blurred = np.asarray(im.convert("RGB").filter(ImageFilter.GaussianBlur(3))).astype(np.float32)
        Image.fromarray(((blurred - blurred.mean()) * 0.4 + blurred.mean()).clip(0, 255).astype(np.uint8)).save(path)
    return data, names, degraded


def test_weakly_held_images_start_the_nerf_stage_with_a_wide_prior(noisy: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """Four of the 64 views blurred and washed out (no tracks hold them; blurred alike, their neighbours match them
    too little for the frame placement to hold them, so it does not register them): refine's default runs the NeRF stage after the adjustment, with the pixels
    prior wide for those four and at each held camera's residual for the others (recorded in the stage's dataset). The run is stopped at its first iteration: what is tested is
    the decision and the prior, not the NeRF."""
    from nerf_posefix.io.transforms_json import PRIOR_SIGMA_KEY
    from nerf_posefix.sfm.support import WEAK_PRIOR_SIGMA_PX
    from nerf_posefix.workflows.refine import WEAK_FRAMES_ITERATIONS, RefineOptions, partial_dir, refine

    data, names, degraded = _four_blurred_views(noisy, tmp_path / "weak")

    class Stop(Exception):
        pass

    def stop(done: int, loss) -> None:  # noqa: ANN001
        raise Stop

    out = tmp_path / "refined"
    with pytest.raises(Stop):
        refine(RefineOptions(output=out, poses=data / "transforms.json", threads=1, quiet=True, photometric_alignment=False), callback=stop)
    printed = capsys.readouterr().out
    assert f"placed 0 of {len(degraded)}:" in printed and printed.count("left weak (few matches even blurred alike") == len(degraded)
    assert f"{len(degraded)} of 64 images are weakly held by the tracks" in printed
    assert f"weakly held image(s): the NeRF stage runs ({WEAK_FRAMES_ITERATIONS} iterations" in printed
    meta = json.loads((partial_dir(out) / "data" / "transforms.json").read_text())
    sigma = {Path(f["file_path"]).name.split("__")[-1]: f[PRIOR_SIGMA_KEY] for f in meta["frames"]}  # flat names: images__000.png
    assert sorted(n for n, s in sigma.items() if s == WEAK_PRIOR_SIGMA_PX) == degraded
    assert all(0.05 <= s < 1.0 for n, s in sigma.items() if n not in degraded)


def test_the_photometric_alignment_holds_blurred_views_the_tracks_do_not(noisy: Path, tmp_path: Path) -> None:
    """The four blurred views (no tracks hold them, the placement does not register them), ``--iterations 0``: the
    front end aligns them by their intensities against their held neighbours; those the evidence supports are held
    at their aligned pose, much closer to the truth than their input, and the others stay weak at the adjustment's
    pose (the NeRF stage's, by default); without it every one keeps the adjustment's pose. The same comparison
    tests a move of a frame: one toward the truth stands, one away from it is found worse and undone by refine."""
    from nerf_posefix.workflows.refine import RefineOptions, refine

    data, names, degraded = _four_blurred_views(noisy, tmp_path / "weak")
    gt = read_transforms_json(TOYBOX / "transforms_gt.json")
    runs = {}
    for on in (True, False):
        result = refine(RefineOptions(output=tmp_path / f"out_{on}", poses=data / "transforms.json", iterations=0, threads=1,
                                      quiet=True, photometric_alignment=on))
        est = read_transforms_json(tmp_path / f"out_{on}" / "transforms.json")
        rot, _ = _errors(CameraSet(names=[Path(n).name for n in est.names], c2w=est.c2w, source="refined"),
                         CameraSet(names=[Path(n).name for n in gt.names], c2w=gt.c2w, source="gt"))
        poses = {Path(n).name: m for n, m in zip(est.names, est.c2w)}
        runs[on] = (result, {n: float(rot[[Path(m).name for m in gt.names].index(n)]) for n in degraded}, poses)
    result, on, poses_on = runs[True]
    _, off, poses_off = runs[False]
    record = result.summary["bundle_adjustment"]["photometric_alignment"]
    kept = [Path(f["name"]).name for f in record["frames"] if f["kept"]]
    assert len(record["frames"]) == len(degraded) and record["num_aligned"] == len(kept) >= 2
    assert all(off[n] > 2.0 for n in degraded)  # the adjustment leaves them at their input error (3 deg)
    assert all(on[n] < 0.5 * off[n] for n in kept) and np.median([on[n] for n in kept]) < 0.5
    assert all(np.allclose(poses_on[n], poses_off[n], atol=1e-9) for n in degraded if n not in kept)
    support = result.summary["bundle_adjustment"]["support"]
    assert support["num_weak"] == len(degraded) - len(kept) and runs[False][0].summary["bundle_adjustment"]["support"]["num_weak"] == 4
    # each blurred view was a group of its own; those the alignment holds are linked to the others
    groups = {on: [w for w in runs[on][0].summary.get("warnings") or [] if "separate groups" in w] for on in runs}
    assert groups[False] and f"in {len(degraded) + 1} separate groups" in groups[False][0]
    left = len(degraded) - len(kept) + 1
    assert (groups[True] and f"in {left} separate groups" in groups[True][0]) if left > 1 else not groups[True]

    # the same comparison tests a move (a NeRF stage's, after refine's default): toward the truth it stands, away from
    # it (the truth's error doubled, about the same axis) it is found worse; the start is the adjustment's model
    import pycolmap
    from scipy.spatial.transform import Rotation

    from nerf_posefix.sfm.photometric_alignment import check_weak_moves

    rec = pycolmap.Reconstruction(str(tmp_path / "out_False" / "sparse" / "0"))
    model_names = {Path(rec.images[i].name).name: rec.images[i].name for i in rec.reg_image_ids()}
    truth = {model_names[Path(n).name]: m for n, m in zip(gt.names, gt.c2w) if Path(n).name in degraded}
    away = {}
    for name, m in truth.items():
        start = poses_off[Path(name).name]
        step = Rotation.from_matrix(start[:3, :3] @ m[:3, :3].T)  # truth -> start
        away[name] = start.copy()
        away[name][:3, :3] = step.as_matrix() @ start[:3, :3]  # as far again beyond the start
    held = [n for n in model_names.values() if n not in truth]
    toward = check_weak_moves(rec, truth, held, data)
    beyond = check_weak_moves(rec, away, held, data)
    assert len(toward) == len(beyond) == len(degraded) and not any(c.reason for c in toward + beyond)
    assert not any(c.worse for c in toward) and all(c.gain > 0 for c in toward), toward
    # 6 deg off against 3: worse everywhere, by 3 standard errors (counted over blur-sized cells) in 3 of 4 at least
    assert all(c.gain < 0 for c in beyond) and sum(c.worse for c in beyond) >= 3, [(c.name, c.worse, c.gain, c.gain_stderr) for c in beyond]

    # in refine (after its NeRF stage): the moves found worse are undone, the others kept
    from nerf_posefix.sfm.inputs import validate_inputs
    from nerf_posefix.workflows.refine import _check_nerf_moves

    stage_input = validate_inputs(tmp_path / "out_False" / "sparse" / "0", data)
    start = stage_input.model.to_camera_set(observations=False)
    second = next(c.name for c in beyond if c.worse)
    first = next(n for n in sorted(truth) if n != second)
    moved = {**{n: truth[n] for n in truth if n != second}, second: away[second]}
    c2w = np.stack([moved.get(n, m) for n, m in zip(start.names, start.c2w)])
    checked, record = _check_nerf_moves(stage_input, start.with_poses(c2w), runs[False][0].summary["bundle_adjustment"])
    after = dict(zip(checked.names, checked.c2w))
    assert record["undone"] == [second] and record["checked"] == len(degraded)
    assert np.allclose(after[second], dict(zip(start.names, start.c2w))[second]) and np.allclose(after[first], truth[first])
    from dataclasses import replace as _replace

    text = _replace(runs[False][0], summary={**runs[False][0].summary, "iterations": 10, "move_check": record}).summary_text()
    assert f"its moves of {len(degraded)} weakly held image(s) checked against their held neighbours: 1 undone" in text


def test_ns_train_checks_the_weak_cameras_moves_as_refine_does(noisy: Path, tmp_path: Path, one_torch_thread) -> None:  # noqa: ANN001
    """``ns-train posefix-small`` on the four blurred views (front end on, its photometric alignment off: the four are
    weakly held): after its last iteration the pipeline checks their moves against their held neighbours in the front
    end's model, as refine does (``RUN/move_check.json``; 2 iterations move them too little to be tested). Then moved by
    hand in the camera optimizer (dataparser frame, OpenGL axes) and checked again: moves to the truth stand, moves as far
    again beyond the start as the start is from the truth are undone (the correction reset: back at the front end's
    pose), and no held camera changes."""
    from scipy.spatial.transform import Rotation

    from nerf_posefix.geometry.poses import opencv_to_opengl, opengl_to_opencv
    from nerf_posefix.plugin.move_check import MOVE_CHECK_FILE
    from nerf_posefix.plugin.training import in_process_config, run_training

    data, _, degraded = _four_blurred_views(noisy, tmp_path / "weak")
    for sub in ("sparse", "sparse_gt"):  # a pose-only transforms.json: tracks built from the (blurred) images
        shutil.rmtree(data / sub, ignore_errors=True)

    def edit(config) -> None:  # noqa: ANN001
        config.pipeline.front_end = "on"
        config.pipeline.front_end_threads = 1
        config.pipeline.front_end_photometric_alignment = False
        config.pipeline.datamanager.dataparser.eval_mode = "all"

    run = run_training(in_process_config("posefix-small", data=data, output_dir=tmp_path / "runs", max_iterations=2, overrides=edit, seed=0),
                       progress=False, quiet=True)
    record = json.loads((run.run_dir / MOVE_CHECK_FILE).read_text())
    assert "reason" not in record and record["checked"] == len(degraded), record
    assert all(not f["reason"] and f["rotation_deg"] > 0.01 for f in record["frames"])  # Adam's first steps: tested moves
    pipeline = run.trainer.pipeline
    optimizer = pipeline.model.camera_optimizer
    train = [Path(n).name for n in pipeline._train_image_names()]  # noqa: SLF001
    weak = [train.index(n) for n in degraded]
    assert sorted(pipeline.front_end_weak.tolist()) == sorted(weak)
    undone = {Path(n).name for n in record["undone"]}  # the run's own decisions, in its final checkpoint's optimizer
    reset = [bool((optimizer.pose_adjustment[k] == 0).all()) for k in weak]
    assert reset == [n in undone for n in degraded]
    # the truth in the dataparser frame: the similarity from the front end's poses (the transforms.json's frame) onto the
    # training's starting poses
    adjusted = read_transforms_json(run.run_dir / "front_end" / "dataset" / "transforms.json")
    gt = read_transforms_json(TOYBOX / "transforms_gt.json")
    start = opengl_to_opencv(optimizer.initial_c2w.detach().double().numpy())  # [N, 4, 4] OpenCV, dataparser frame
    order = [[Path(n).name for n in adjusted.names].index(n) for n in train]
    to_dp = align(adjusted.c2w[order], start, mode="sim3")
    truth = to_dp.apply(gt.c2w[[[Path(n).name for n in gt.names].index(n) for n in train]])  # [N, 4, 4]
    targets = {}
    for j, k in enumerate(weak):
        if j < 2:  # to the truth
            targets[k] = truth[k]
        else:  # as far again beyond the start
            step = Rotation.from_matrix(start[k, :3, :3] @ truth[k, :3, :3].T).as_matrix()
            targets[k] = start[k].copy()
            targets[k][:3, :3] = step @ start[k, :3, :3]
    current = optimizer.corrected_c2w().detach().double().numpy()  # [N, 3, 4] OpenGL
    idx = torch.tensor(weak)
    goal = opencv_to_opengl(np.stack([targets[k] for k in weak]))  # [4, 4, 4] OpenGL
    rot = goal[:, :3, :3] @ np.transpose(current[weak, :3, :3], (0, 2, 1))  # R_a = R_goal R_cur^T
    optimizer.compose_corrections(idx, torch.from_numpy(rot), torch.from_numpy(goal[:, :3, 3] - current[weak, :3, 3]))
    before = optimizer.corrected_c2w().detach().double().numpy()
    pipeline._check_moves(tmp_path)  # noqa: SLF001 (what the last iteration's callback calls)
    record = json.loads((tmp_path / MOVE_CHECK_FILE).read_text())
    after = optimizer.corrected_c2w().detach().double().numpy()
    frames = {Path(f["name"]).name: f for f in record["frames"]}
    undone = [Path(n).name for n in record["undone"]]
    print({n: (f["worse"], round(f["gain"] / f["gain_stderr"], 1), round(f["rotation_deg"], 2)) for n, f in frames.items()})
    names = [degraded[j] for j in range(4)]
    assert not frames[names[0]]["worse"] and not frames[names[1]]["worse"]  # the truth stands
    assert all(frames[n]["gain"] > 0 for n in names[:2]) and all(frames[n]["gain"] < 0 for n in names[2:])
    assert undone and set(undone) <= set(names[2:])
    initial = optimizer.initial_c2w.detach().double().numpy()  # [N, 3, 4] OpenGL: the front end's poses
    moves = rotation_angle_deg(before[weak, :3, :3], initial[weak, :3, :3])  # [4] deg, dataparser frame
    np.testing.assert_allclose([frames[n]["rotation_deg"] for n in names], moves, atol=1e-3)  # as measured in the model's frame
    for k, name in zip(weak, names):
        expect = initial[k] if name in undone else before[k]
        np.testing.assert_allclose(after[k], expect, atol=1e-5)
    held = np.setdiff1d(np.arange(len(train)), weak)
    np.testing.assert_allclose(after[held], before[held], atol=0)


def test_a_large_capture_trains_its_nerf_stage_on_the_weak_frames_and_their_neighbours(noisy: Path, tmp_path: Path) -> None:
    """``--nerf-max-images 24`` on the 64 views with four blurred ones (the test above): the NeRF stage's dataset
    holds the four weak frames and 20 held neighbours, each weak frame's nearest first; the output still has every
    image, the 40 others exactly at the adjustment's poses (the ``--iterations 0`` run of the same front end), with
    every point of that run that no trained image observes exactly where the adjustment put it."""
    from nerf_posefix.io.colmap import read_colmap_model
    from nerf_posefix.workflows.refine import RefineOptions, partial_dir, refine

    data, names, degraded = _four_blurred_views(noisy, tmp_path / "weak")
    adjusted = tmp_path / "adjusted"
    refine(RefineOptions(output=adjusted, poses=data / "transforms.json", iterations=0, threads=1, quiet=True, photometric_alignment=False))
    out = tmp_path / "refined"
    trained: list[str] = []

    def record(done: int, loss) -> None:  # noqa: ANN001
        if not trained:
            meta = json.loads((partial_dir(out) / "data" / "transforms.json").read_text())
            trained.extend(Path(f["file_path"]).name.split("__")[-1] for f in meta["frames"])

    result = refine(RefineOptions(output=out, poses=data / "transforms.json", iterations=2, nerf_max_images=24, threads=1, quiet=True, photometric_alignment=False),
                    callback=record)
    assert len(trained) == 24 and set(degraded) <= set(trained)
    assert result.summary["trained_images"] == {"count": 24, "of": 64, "max_images": 24}
    before, after = read_transforms_json(adjusted / "transforms.json"), read_transforms_json(out / "transforms.json")
    assert before.names == after.names and len(after) == 64
    centres = {Path(n).name: c for n, c in zip(before.names, before.c2w[:, :3, 3])}  # the adjusted poses the subset is chosen by
    for name in degraded:  # each weak frame's nearest held frame is in
        others = sorted((np.linalg.norm(centres[n] - centres[name]), n) for n in names if n not in degraded)
        assert others[0][1] in trained
    outside = [k for k, n in enumerate(after.names) if Path(n).name not in trained]
    np.testing.assert_array_equal(after.c2w[outside], before.c2w[outside])
    weak = [k for k, n in enumerate(after.names) if Path(n).name in degraded]
    assert np.abs(after.c2w[weak] - before.c2w[weak]).max() > 0  # the NeRF stage moved the weak frames
    model_before, model_after = read_colmap_model(adjusted / "sparse" / "0"), read_colmap_model(out / "sparse" / "0")
    trained_ids = {i for i, im in model_after.images.items() if Path(im.name).name in trained}
    untouched = [p for p, pt in model_before.points3D.items() if not set(np.asarray(pt.image_ids).tolist()) & trained_ids]
    assert untouched and set(model_after.points3D) == set(model_before.points3D)
    for p in untouched:
        np.testing.assert_array_equal(model_after.points3D[p].xyz, model_before.points3D[p].xyz)


def test_a_nerf_stage_that_would_not_fit_in_memory_is_skipped_or_refused(noisy: Path, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """With less memory available than the stage's estimate (64 views of 128x128: 1 GiB + 36 bytes per pixel): the
    default keeps the weak frames at the adjustment's poses with a warning in the summary; an asked-for NeRF stage
    (``--iterations 2``) is one error naming what to do, after the front end (whose result the work directory keeps)."""
    import nerf_posefix.workflows.refine as refine_module
    from nerf_posefix.errors import InputError
    from nerf_posefix.workflows.refine import NERF_STAGE_BASE_BYTES, NERF_STAGE_BYTES_PER_PIXEL, RefineOptions, refine

    data, _, degraded = _four_blurred_views(noisy, tmp_path / "weak")
    monkeypatch.setattr(refine_module, "available_memory_bytes", lambda: 512 * 2**20)
    out = tmp_path / "refined"
    result = refine(RefineOptions(output=out, poses=data / "transforms.json", threads=1, quiet=True, photometric_alignment=False))
    need = (NERF_STAGE_BASE_BYTES + NERF_STAGE_BYTES_PER_PIXEL * 64 * 128 * 128) / 2**30
    reason = result.summary["no_nerf_stage"]
    assert result.summary["iterations"] == 0 and reason in result.summary["warnings"][-1]
    assert f"{len(degraded)} weakly held image(s) keep the adjustment's poses" in reason and f"~{need:.1f} GiB" in reason, reason
    with pytest.raises(InputError, match="--nerf-max-images"):
        refine(RefineOptions(output=tmp_path / "asked", poses=data / "transforms.json", iterations=2, threads=1, quiet=True, photometric_alignment=False))


def test_spatial_matching_pairs_images_by_their_input_poses(noisy: Path, database: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """``--matching spatial``: each image matched with its nearest ``--spatial-neighbors`` by the input poses
    (pairs linear in the images), enough for the adjustment to recover the poses."""
    out = tmp_path / "refined"
    code = main(["refine", "--poses", str(noisy / "transforms.json"), "--output", str(out), "--matching", "spatial",
                 "--spatial-neighbors", "6", "--iterations", "0", "--quiet"])
    assert code == 0, capsys.readouterr().err
    built = json.loads((out / "report.json").read_text())["summary"]["tracks_built"]
    assert built["matches"]["matching"] == "spatial"
    assert 0 < built["matches"]["num_verified_pairs"] <= 64 * 6  # at most one pair per (image, neighbour)
    exhaustive = database_summary(database, "exhaustive", {})
    assert exhaustive.num_verified_pairs > 64 * 6  # the bound above is one exhaustive matching does not meet
    gt = read_transforms_json(noisy / "transforms_gt.json")
    rot, _ = _errors(read_transforms_json(out / "transforms.json"), gt)
    assert np.median(rot) < 0.25


def test_frames_with_too_few_features_are_extracted_again_at_a_lower_threshold(database: Path, tmp_path: Path) -> None:
    """A blurred, washed-out frame (σ 3 px, contrast 40 %) keeps a few features at COLMAP's DoG threshold: it is
    extracted again at a third of it (more features); the sharp frames keep exactly their default features (the
    bundled scene's own database), and the bundled scene itself has no such frame."""
    from scene_helpers import toybox_views_one_blurred

    from nerf_posefix.sfm.track_building import LOW_FEATURE_PEAK_THRESHOLD, few_feature_images

    images = tmp_path / "images"
    posed, names, weak = toybox_views_one_blurred(images, 8, 3.0)
    assert few_feature_images(database, posed.cameras.names) == {}
    lines: list[str] = []
    db = tmp_path / "database.db"
    match_features(images, names, {n: posed.intrinsics[n] for n in names}, db, log=lines.append)
    note = next(line for line in lines if "too few SIFT features" in line)
    assert f"{weak} " in note and f"{LOW_FEATURE_PEAK_THRESHOLD:g}" in note
    default_count = int(note.split(f"{weak} ")[1].split(";")[0].split(",")[0])

    def counts(path: Path) -> dict[str, int]:
        db_ = pycolmap.Database.open(str(path))
        try:
            return {im.name: int(db_.num_keypoints_for_image(im.image_id)) for im in db_.read_all_images()}
        finally:
            db_.close()

    got, bundled = counts(db), counts(database)
    print(f"{weak}: {default_count} features at COLMAP's threshold, {got[weak]} after; sharp: {[got[n] for n in names if n != weak]}")
    assert got[weak] > default_count
    assert all(got[n] == bundled[n] for n in names if n != weak)
