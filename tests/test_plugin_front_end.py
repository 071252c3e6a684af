"""The posefix methods run ``posefix refine``'s front end at pipeline set-up (issue 21): the NeRF starts from
the adjusted poses of every camera, whatever the dataset's layout; the result is cached in the run directory
and reused by readers of the run; the dataset is never written; bad input is refused as refine refuses it.

Runs are trained for 0 iterations: what is tested is where training starts (and what ``posefix export``
reads back), not the NeRF.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nerf_posefix.errors import InputError
from nerf_posefix.geometry.alignment import align
from nerf_posefix.geometry.poses import rotation_angle_deg
from nerf_posefix.io.sources import load_camera_set
from nerf_posefix.plugin.run_reader import refined_input_poses
from nerf_posefix.plugin.training import in_process_config, run_training
from nerf_posefix.workflows.export import export_run
from nerf_posefix.workflows.perturb import perturb_dataset

ROOT = Path(__file__).resolve().parents[1]
TOYBOX = ROOT / "assets" / "toybox"
TINY = ROOT / "assets" / "toybox_tiny"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tree_digest(path: Path) -> str:
    """A hash of every file's relative path and bytes under ``path`` (links followed)."""
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        h.update(str(p.relative_to(path)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def rotation_errors(cams, gt) -> np.ndarray:  # noqa: ANN001 (CameraSets)
    """Per camera, degrees, after a Sim(3) alignment of ``cams`` onto ``gt`` (matched by base name)."""
    index = {Path(n).name: i for i, n in enumerate(cams.names)}
    order = [index[Path(n).name] for n in gt.names]
    c2w = cams.c2w[order]
    aligned = align(c2w, gt.c2w, mode="sim3").apply(c2w)
    return rotation_angle_deg(gt.c2w[:, :3, :3], aligned[:, :3, :3])


def train(data: Path, output: Path, colmap: bool = False, iterations: int = 0, seed: int = 42, threads: int = 0):  # noqa: ANN201
    from nerfstudio.data.dataparsers.colmap_dataparser import ColmapDataParserConfig

    def edit(config) -> None:  # noqa: ANN001
        config.pipeline.front_end = "on"
        config.pipeline.front_end_threads = threads
        config.pipeline.datamanager.dataparser.eval_mode = "all"
        if colmap:
            config.pipeline.datamanager.dataparser = ColmapDataParserConfig(data=data, colmap_path=Path("sparse/0"), eval_mode="all")

    config = in_process_config("posefix-small", data=data, output_dir=output, max_iterations=iterations, overrides=edit, seed=seed)
    return run_training(config, progress=False, quiet=True)


@pytest.fixture(scope="module")
def pose_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """toybox (64 views, 128²) with its poses 3 deg / 5 % off, as a transforms.json without any COLMAP model."""
    data = tmp_path_factory.mktemp("pose_only") / "data"
    perturb_dataset(TOYBOX, data, rotation_deg=3.0, translation=0.05, seed=0)
    for sub in ("sparse", "sparse_gt"):
        shutil.rmtree(data / sub, ignore_errors=True)
    return data


def test_pose_only_transforms_json_gets_tracks_and_the_adjustment(pose_only: Path, tmp_path: Path) -> None:
    before = tree_digest(pose_only)
    run = train(pose_only, tmp_path / "runs")
    gt = load_camera_set(pose_only / "transforms_gt.json")
    noisy = rotation_errors(load_camera_set(pose_only / "transforms.json"), gt)
    refined = refined_input_poses(run.config_path)
    assert refined.refined.all()  # every camera (eval_mode all)
    errors = rotation_errors(refined.cameras, gt)
    assert np.median(noisy) > 2.5 and np.median(errors) < 0.2  # the run starts where refine --poses ends
    cache = run.run_dir / "front_end"
    result = json.loads((cache / "result.json").read_text())
    assert result["tracks"]["num_points"] > 1000 and result["moved"]["rotation_deg_median"] > 2.0
    assert not cache.with_name("front_end.partial").exists()
    assert tree_digest(pose_only) == before  # the dataset is never written
    # readers of the run reuse the cache: the same poses, nothing recomputed
    stamp = (cache / "result.json").stat().st_mtime_ns
    again = refined_input_poses(run.config_path)
    assert (cache / "result.json").stat().st_mtime_ns == stamp
    np.testing.assert_allclose(again.cameras.c2w, refined.cameras.c2w, atol=1e-12)


def test_the_run_seed_seeds_the_front_end_as_refine_seed_does(pose_only: Path, tmp_path: Path) -> None:
    """``ns-train posefix-small --machine.seed 7`` verifies its matches with COLMAP's seed 7 (and seeds its weak
    cameras' alignment with 7), as ``posefix refine --seed 7`` does: the same verified matches and the same adjusted
    poses on both paths (each with one COLMAP thread: with more, COLMAP's approximate matcher can flip a borderline
    pair from run to run), other matches with another seed."""
    import yaml

    from nerf_posefix.workflows.refine import RefineOptions, refine

    run = train(pose_only, tmp_path / "runs", seed=7, threads=1)
    stamp = json.loads((run.run_dir / "front_end" / "stamp.json").read_text())
    assert stamp["options"]["seed"] == 7, stamp
    saved = yaml.load(run.config_path.read_text(), Loader=yaml.Loader).pipeline
    assert saved.front_end_seed == 7 and saved.weak_alignment.seed == 7  # the weak cameras' alignment too, as refine's
    plugin = json.loads(next((run.run_dir / "front_end").rglob("matches.json")).read_text())

    def refine_matches(seed: int) -> dict:
        out = tmp_path / f"refined_{seed}"
        refine(RefineOptions(output=out, poses=pose_only / "transforms.json", iterations=0, seed=seed, threads=1, quiet=True))
        return json.loads((out / "report.json").read_text())["summary"]["tracks_built"]["matches"]

    counts = ("num_keypoints", "num_verified_pairs", "num_inlier_matches")
    same, other = refine_matches(7), refine_matches(8)
    assert [plugin[k] for k in counts] == [same[k] for k in counts], (plugin, same)
    assert other["num_inlier_matches"] != same["num_inlier_matches"]
    poses = refined_input_poses(run.config_path).cameras
    refined = load_camera_set(tmp_path / "refined_7" / "transforms.json")
    index = {Path(n).name: i for i, n in enumerate(poses.names)}
    order = [index[Path(n).name] for n in refined.names]
    assert rotation_angle_deg(poses.c2w[order, :3, :3], refined.c2w[:, :3, :3]).max() < 1e-5
    np.testing.assert_allclose(poses.c2w[order, :3, 3], refined.c2w[:, :3, 3], atol=1e-6)


def test_ns_train_and_refine_train_the_same_field_on_the_same_transforms_json(pose_only: Path, tmp_path: Path) -> None:
    """``ns-train posefix-small --machine.seed 7`` and ``posefix refine --seed 7`` on the same pose-only transforms.json
    (no ``applied_transform``), every camera refined by the NeRF for 40 iterations: the same front end, the same
    training frame (the file's own; the radiance field is axis-aligned, so the frame decides the result), the same
    seeds: the same refined poses, the NeRF's moves included."""
    from nerf_posefix.workflows.refine import RefineOptions, refine

    iterations = 40

    def edit(config) -> None:  # noqa: ANN001
        config.pipeline.front_end = "on"
        config.pipeline.front_end_threads = 1  # as refine --threads 1: the same tracks to the last digit
        config.pipeline.nerf_cameras = "all"
        config.pipeline.datamanager.dataparser.eval_mode = "all"

    config = in_process_config("posefix-small", data=pose_only, output_dir=tmp_path / "runs", max_iterations=iterations, overrides=edit, seed=7)
    run = run_training(config, progress=False, quiet=True)
    front_end = load_camera_set(next((run.run_dir / "front_end").rglob("transforms.json")))  # where the NeRF started
    plugin = refined_input_poses(run.config_path).cameras
    out = tmp_path / "refined"
    refine(RefineOptions(output=out, poses=pose_only / "transforms.json", iterations=iterations, nerf_cameras="all", seed=7, threads=1,
                         quiet=True))
    refined = load_camera_set(out / "transforms.json")
    index = {Path(n).name: i for i, n in enumerate(plugin.names)}
    order = [index[Path(n).name] for n in refined.names]
    start = {Path(n).name: i for i, n in enumerate(front_end.names)}
    begin = [start[Path(n).name] for n in refined.names]
    moved = rotation_angle_deg(front_end.c2w[begin, :3, :3], refined.c2w[:, :3, :3])  # [N] deg: the NeRF's moves
    gap = rotation_angle_deg(plugin.c2w[order, :3, :3], refined.c2w[:, :3, :3])  # [N] deg
    print(f"NeRF moves: median {np.median(moved):.2e} deg; ns-train vs refine: max {gap.max():.2e} deg")
    assert np.median(moved) > 1e-3  # the NeRF did move the cameras ...
    assert gap.max() < 1e-3 * np.median(moved)  # ... and both paths moved them alike
    np.testing.assert_allclose(plugin.c2w[order, :3, 3], refined.c2w[:, :3, 3], atol=1e-6)


def test_the_cache_is_recomputed_when_the_dataset_changes(pose_only: Path, tmp_path: Path) -> None:
    from nerf_posefix.plugin.front_end import run_pipeline_front_end
    from nerf_posefix.plugin.method_configs import posefix_small_config
    from nerf_posefix.sfm.front_end import FrontEndOptions

    data = tmp_path / "data"
    shutil.copytree(pose_only, data)
    dataparser = posefix_small_config().pipeline.datamanager.dataparser
    dataparser.data = data
    cache = tmp_path / "cache"
    lines: list[str] = []
    first = run_pipeline_front_end(dataparser, cache, FrontEndOptions(), lines.append)
    reused = run_pipeline_front_end(dataparser, cache, FrontEndOptions(), lines.append)
    assert "(reused)" in reused.line and "(reused)" not in first.line
    meta = json.loads((data / "transforms.json").read_text())
    meta["frames"][0]["transform_matrix"][0][3] += 0.01  # one pose changed
    (data / "transforms.json").write_text(json.dumps(meta))
    changed = run_pipeline_front_end(dataparser, cache, FrontEndOptions(), lines.append)
    assert "(reused)" not in changed.line
    other = run_pipeline_front_end(dataparser, cache, FrontEndOptions(matching="sequential"), lines.append)
    assert "(reused)" not in other.line  # other options: recomputed too


def test_colmap_dataparser_trains_from_the_adjusted_model(tmp_path: Path) -> None:
    data = tmp_path / "data"
    perturb_dataset(TINY, data, rotation_deg=1.0, translation=0.02, seed=5)  # sparse/0: the exact tracks, noisy poses
    run = train(data, tmp_path / "runs", colmap=True)
    gt = load_camera_set(data / "sparse_gt" / "0")
    noisy = rotation_errors(load_camera_set(data / "sparse" / "0"), gt)
    refined = refined_input_poses(run.config_path)
    assert refined.kind == "colmap"
    assert np.median(noisy) > 0.8 and rotation_errors(refined.cameras, gt).max() < 1e-3


def ns_process_data_layout(noisy: Path, target: Path) -> Path:
    """``ns-process-data``'s layout of a COLMAP dataset: ``images/``, ``colmap/sparse/0`` and nerfstudio's own
    conversion to ``transforms.json`` (camera-to-world, OpenGL, world y/z swapped: ``applied_transform``)."""
    from nerf_posefix.workflows.refine_inputs import colmap_to_transforms

    target.mkdir(parents=True)
    shutil.copytree(noisy / "images", target / "images")
    shutil.copytree(noisy / "sparse" / "0", target / "colmap" / "sparse" / "0")
    colmap_to_transforms(target / "colmap" / "sparse" / "0", target)
    return target


def test_ns_process_data_layout_is_adjusted_and_exported_as_both_formats(tmp_path: Path) -> None:
    noisy = tmp_path / "noisy"
    perturb_dataset(TINY, noisy, rotation_deg=1.0, translation=0.02, seed=5)
    data = ns_process_data_layout(noisy, tmp_path / "processed")
    assert "applied_transform" in json.loads((data / "transforms.json").read_text())
    before = tree_digest(data)
    run = train(data, tmp_path / "runs")
    gt = load_camera_set(noisy / "sparse_gt" / "0")
    assert np.median(rotation_errors(load_camera_set(data / "transforms.json"), gt)) > 0.8
    out = export_run(run.config_path, tmp_path / "export")
    assert set(out) == {"transforms", "colmap"}
    assert rotation_errors(load_camera_set(out["transforms"]), gt).max() < 1e-3
    model = load_camera_set(out["colmap"])  # the model's own world frame: the input model's, refined poses
    assert rotation_errors(model, gt).max() < 1e-3
    input_model = load_camera_set(data / "colmap" / "sparse" / "0")
    sim = align(model.c2w, input_model.c2w, mode="sim3")
    assert abs(sim.scale - 1.0) < 0.02 and rotation_angle_deg(np.eye(3), sim.rotation) < 1.0  # same frame, not json's
    assert tree_digest(data) == before


def test_too_few_tracks_trains_from_the_dataset_poses(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "data"
    perturb_dataset(TINY, data, rotation_deg=1.0, translation=0.02, seed=5)
    for sub in ("sparse", "sparse_gt"):
        shutil.rmtree(data / sub)
    run = train(data, tmp_path / "runs")  # 64² images: no verified pair, no track
    result = json.loads((run.run_dir / "front_end" / "result.json").read_text())
    assert result["moved"] is None and "points could be triangulated" in result["fallback"]
    refined = refined_input_poses(run.config_path)
    given = load_camera_set(data / "transforms.json")
    index = {n: i for i, n in enumerate(given.names)}
    np.testing.assert_allclose(refined.cameras.c2w, given.c2w[[index[Path(n).name] for n in refined.cameras.names]], atol=1e-6)


def test_bad_images_are_refused_before_training_as_refine_refuses_them(pose_only: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(pose_only, data)
    first = sorted((data / "images").iterdir())[0]
    Image.new("RGB", (64, 64)).save(first)  # the transforms.json says 128x128
    before = tree_digest(data)
    with pytest.raises(InputError, match=first.name):
        train(data, tmp_path / "runs")
    assert tree_digest(data) == before
    run_dir = next((tmp_path / "runs").rglob("config.yml")).parent
    assert not (run_dir / "front_end").exists() and not (run_dir / "front_end.partial").exists()


@pytest.mark.parametrize("layout", ["colmap", "ns-process-data"])
def test_a_principal_point_the_tracks_contradict_is_refined_in_the_dataset_the_nerf_reads(layout: str, tmp_path: Path) -> None:
    """The front end's --intrinsics auto (refine's default): a COLMAP model holding COLMAP's placeholder principal point
    3 / -2 px from the truth; the dataparser of the adjusted dataset reads the refined principal point, from the
    overlay's model or its transforms.json (``--pipeline.front-end-intrinsics fixed``: the dataset's)."""
    from nerfstudio.data.dataparsers.colmap_dataparser import ColmapDataParserConfig
    from scene_helpers import tiny_model_with_placeholder_principal_point

    from nerf_posefix.plugin.front_end import run_pipeline_front_end
    from nerf_posefix.plugin.method_configs import posefix_small_config
    from nerf_posefix.sfm.front_end import FrontEndOptions

    source = tmp_path / "source"
    truth, (ix, iy) = tiny_model_with_placeholder_principal_point(source / "sparse" / "0", (3.0, -2.0))
    shutil.copytree(TINY / "images", source / "images")
    if layout == "colmap":
        data, dataparser = source, ColmapDataParserConfig(data=source, colmap_path=Path("sparse/0"), eval_mode="all")
    else:
        data = ns_process_data_layout(source, tmp_path / "processed")
        dataparser = posefix_small_config().pipeline.datamanager.dataparser
        dataparser.data, dataparser.eval_mode = data, "all"
    before = tree_digest(data)
    principal = {}
    for mode in ("auto", "fixed"):
        outcome = run_pipeline_front_end(dataparser, tmp_path / f"cache-{mode}", FrontEndOptions(intrinsics=mode), lambda line: None)
        cameras = outcome.dataparser.setup().get_dataparser_outputs("train").cameras
        principal[mode] = (cameras.cx.flatten().numpy(), cameras.cy.flatten().numpy())
    cx, cy = principal["auto"]
    assert np.allclose(cx, cx[0]) and abs(cx[0] - truth[ix]) < 0.5 and abs(cy[0] - truth[iy]) < 0.5  # near the truth
    assert np.allclose(principal["fixed"][0], 32.0) and np.allclose(principal["fixed"][1], 32.0)  # the dataset's
    assert tree_digest(data) == before
