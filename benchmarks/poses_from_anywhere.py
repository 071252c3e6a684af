"""Poses from anywhere (issue 16): poses without tracks, tracks built from the images, then refined.

The input of every row is what a phone AR session or a SLAM system gives: a ``transforms.json`` with
noisy camera-to-world poses and intrinsics, plus the images; no COLMAP model, no point cloud (the
benchmark's datasets hold nothing else, so no row can see the scenes' exact observations or points).

Scenes and noise
----------------
* ``toybox`` (``assets/toybox``: 64 synthetic views, 128x128, exact poses): levels ``1deg-2pct``,
  ``3deg-5pct``, ``10deg-10pct`` (rotation: an exact angle about a random axis; translation: a fraction of
  the scene radius in a random direction; :func:`nerf_posefix.workflows.perturb.perturb_dataset`),
  seeds 0, 1, 2.
* ``castle`` (``/work/shared/scenes/castle-P30``: 30 real photos, 768x512, LIDAR ground truth): the GT
  cameras (``gt_cameras.json``) written as a ``transforms.json`` (intrinsics from the GT K, principal point
  in COLMAP's convention ``c' + 0.5``) beside a link to the images, perturbed by ``2deg-3pct`` (3 % of the
  camera spread, 23.70 m), seeds 0, 1, 2.
* ``toybox16`` (``--quick`` only): the first 16 views of toybox (consecutive views of one ring, 128x128),
  ``3deg-5pct``, seed 0, NeRF rows at 20 iterations. (``assets/toybox_tiny`` cannot be used: its 64x64
  images give no SIFT match at all, 0 inlier matches over its 120 pairs, so no track can be built; and
  every 4th toybox view gives only 83 points, under refine's 100, so refine would fall back to a
  3000-iteration photometric run. The first 16 views give 512 points with the exact poses.)

Features and matches do not depend on the poses: ONE COLMAP database per scene
(:func:`nerf_posefix.sfm.track_building.match_features`, exhaustive SIFT matching with the GT image
names and intrinsics, as ``posefix refine`` builds it) serves every tracks row and the COLMAP row of the
scene, so both use the SAME matches. Its cost is reported once per scene, not in the rows' times.

Rows
----
``input``
    The noisy poses.
``colmap``
    COLMAP itself from the same noisy poses and the same matches: ``pycolmap.triangulate_points`` (the
    point_triangulator; default ``IncrementalPipelineOptions``, intrinsics fixed), then
    ``pycolmap.bundle_adjustment`` (default options: squared loss; intrinsics fixed), the result mapped
    back onto the input frame with :func:`nerf_posefix.geometry.alignment.pose_alignment` as
    :func:`~nerf_posefix.sfm.track_building.adjust_with_retriangulation` does. No point
    triangulated: a failure row.
``nerfstudio``
    ``posefix-small``'s NeRF trained with nerfstudio's own camera optimizer and its default L2
    regulariser (``TrainSpec(camera_optimizer={"class": "nerfstudio"})``), from the noisy poses.
``posefix-photometric``
    ``posefix-small`` with its homography prior, no tracks (``TrainSpec`` defaults, ``tracks="off"``).
``posefix-tracks``
    ``posefix refine --poses noisy/transforms.json --database SHARED_DB`` with its defaults: tracks by
    triangulation with the poses held fixed, rounds of re-triangulation and robust (Cauchy) bundle
    adjustment, no NeRF stage.
``posefix-tracks+nerf``
    The same with the NeRF stage (track term + pixel prior) for the scene's NeRF budget.

NeRF rows train ``posefix-small`` on all images (``eval_interval 0``; pose errors over all images), with
the training seed = the noise seed and the same iteration budget for every NeRF row of a scene
(:data:`SCENES`, ``--nerf-iterations``); castle's NeRF rows train on images downscaled by 4 (resized
copies, intrinsics scaled; the tracks are still built at full resolution).

Metrics (per row, against the GT after a Sim(3) alignment of the centres, as ``posefix compare``:
:func:`nerf_posefix.workflows.experiment.pose_errors`): median rotation error (deg), median centre error
(% of the GT scene radius = largest distance of a GT centre from their centroid), ATE RMSE (in % of that
radius and in scene units), the row's wall seconds, and ``converged``: median rotation error below the
input's (reported for every level; the issue asks it at 10deg-10pct). Summary: mean ± sd over seeds.

Targets (printed with PASS/FAIL): at 1deg-2pct and 3deg-5pct (and castle's 2deg-3pct, reported the same
way), ``posefix-tracks`` ahead of ``nerfstudio`` by >= 3x on median rotation and median centre error
(seed means), and within 1.2x of ``colmap`` or better; at 10deg-10pct, which methods converge.

Running
-------
Every (scene, level, seed, row) runs in its own Python process (torch and COLMAP threads 1), ``--jobs``
at a time, and writes ``OUT/rows/SCENE__LEVEL__sSEED__ROW.json``; an existing result with the same
settings is skipped (a resumed run continues), and a row that crashes is recorded there as that row's
error (``--retry-failed`` runs failed rows again). Outputs: rich tables on stdout, ``OUT/results.csv``
(one line per scene/level/seed/row), ``OUT/summary.csv`` (mean ± sd over seeds), ``OUT/summary.md``.
Every run re-tabulates all rows under ``OUT/rows`` (so toybox then castle runs into the same OUT
accumulate).

Usage (repository root)::

    PYTHONPATH=. .venv/bin/python -m benchmarks.poses_from_anywhere --output OUT --quick
    PYTHONPATH=. .venv/bin/python -m benchmarks.poses_from_anywhere --output OUT --scenes toybox --jobs 2
    PYTHONPATH=. .venv/bin/python -m benchmarks.poses_from_anywhere --output OUT --scenes castle --jobs 2
    PYTHONPATH=. .venv/bin/python -m benchmarks.poses_from_anywhere --output OUT --report-only
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.noisy_pose import text_table

ROOT = Path(__file__).resolve().parents[1]
CASTLE_DIR = ROOT.parent / "shared" / "scenes" / "castle-P30"
#: Bump when a row's computation or its record changes (results of another version are recomputed).
VERSION = 1

ROWS: tuple[str, ...] = ("input", "colmap", "nerfstudio", "posefix-photometric", "posefix-tracks", "posefix-tracks+nerf")
NERF_ROWS = ("nerfstudio", "posefix-photometric", "posefix-tracks+nerf")
TRACK_ROWS = ("colmap", "posefix-tracks", "posefix-tracks+nerf")


@dataclass(frozen=True)
class Level:
    name: str
    rotation_deg: float
    translation: float  # fraction of the scene radius


@dataclass
class Scene:
    """A benchmark scene: how its poses-only base dataset is made, its levels and NeRF settings."""

    name: str
    source: Path
    kind: str  # "transforms" (a nerfstudio dataset with exact poses) or "castle" (gt_cameras.json)
    levels: list[Level]
    nerf_iterations: int
    nerf_downscale: int = 1
    subset_first: int = 0  # kind "transforms": keep only the first k frames (name order; 0: all)


TOYBOX_LEVELS = [Level("1deg-2pct", 1.0, 0.02), Level("3deg-5pct", 3.0, 0.05), Level("10deg-10pct", 10.0, 0.10)]
#: The scenes. NeRF budget: 200 iterations for every NeRF row of toybox and castle. The issue suggests 1500 on
#: toybox, but a 300-iteration posefix-small run took 220 s on 2 shared CPU cores (torch threads 1), so the 36
#: NeRF rows at 1500 would take ~5 h; the budget was reduced equally for all NeRF rows to fit ~80 min
#: (``--nerf-iterations`` overrides it).
SCENES: dict[str, Scene] = {
    "toybox": Scene("toybox", ROOT / "assets" / "toybox", "transforms", TOYBOX_LEVELS, nerf_iterations=200),
    "castle": Scene("castle", CASTLE_DIR, "castle", [Level("2deg-3pct", 2.0, 0.03)], nerf_iterations=200, nerf_downscale=4),
    "toybox16": Scene("toybox16", ROOT / "assets" / "toybox", "transforms", [Level("3deg-5pct", 3.0, 0.05)],
                      nerf_iterations=20, subset_first=16),
}
DEFAULT_SEEDS = (0, 1, 2)


# ------------------------------------------------------------------------------------------------
# datasets (poses + images only)


def _link(target: Path, link: Path) -> None:
    if link.is_symlink() or link.exists():
        return
    os.symlink(Path(target).resolve(), link, target_is_directory=True)


def _write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    tmp.replace(path)


def scene_dir(output: Path, scene: Scene) -> Path:
    return output / "scenes" / scene.name


def build_base(scene: Scene, output: Path) -> Path:
    """``OUT/scenes/SCENE/base``: the scene's exact poses as a transforms.json (no ``ply_file_path``) and an
    ``images`` link: the clean dataset every level is perturbed from."""
    base = scene_dir(output, scene) / "base"
    if (base / "transforms.json").is_file():
        return base
    from nerf_posefix.io.transforms_json import transforms_meta, write_transforms_json

    tmp = base.with_name("base.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if scene.kind == "transforms":
        meta = json.loads((scene.source / "transforms.json").read_text())
        meta.pop("ply_file_path", None)
        meta["frames"] = sorted(meta["frames"], key=lambda f: f["file_path"])[: scene.subset_first or None]
        write_transforms_json(meta, tmp / "transforms.json")
        _link(scene.source / "images", tmp / "images")
    elif scene.kind == "castle":
        gt = json.loads((scene.source / "gt_cameras.json").read_text())["images"]
        names = sorted(gt)
        c2w = np.array([gt[n]["c2w"] for n in names], dtype=np.float64).reshape(-1, 4, 4)
        K = np.array(gt[names[0]]["K"], dtype=np.float64)
        if any(not np.allclose(np.array(gt[n]["K"]), K) for n in names):
            raise RuntimeError("castle: the GT cameras do not share one K")
        intrinsics = {
            "camera_model": "PINHOLE", "fl_x": K[0, 0], "fl_y": K[1, 1],
            # gt_cameras.json: integer pixel centres; transforms.json (as ns-process-data writes it): COLMAP's c' + 0.5
            "cx": K[0, 2] + 0.5, "cy": K[1, 2] + 0.5, "w": int(gt[names[0]]["width"]), "h": int(gt[names[0]]["height"]),
        }
        write_transforms_json(transforms_meta([f"images/{n}" for n in names], c2w, intrinsics), tmp / "transforms.json")
        _link(scene.source / "images", tmp / "images")
    else:
        raise ValueError(scene.kind)
    shutil.rmtree(base, ignore_errors=True)
    tmp.rename(base)
    return base


def build_downscaled_images(scene: Scene, output: Path) -> Path | None:
    """``OUT/scenes/SCENE/images_dsF``: the images resized by ``1/F`` (Lanczos) for the NeRF rows."""
    if scene.nerf_downscale == 1:
        return None
    from PIL import Image

    f = scene.nerf_downscale
    target = scene_dir(output, scene) / f"images_ds{f}"
    done = target / ".done"
    if done.is_file():
        return target
    target.mkdir(parents=True, exist_ok=True)
    base = build_base(scene, output)
    meta = json.loads((base / "transforms.json").read_text())
    for frame in meta["frames"]:
        src = base / frame["file_path"]
        with Image.open(src) as im:
            w, h = im.size
            im.convert("RGB").resize((w // f, h // f), Image.LANCZOS).save(target / src.name, quality=95)
    done.write_text("ok")
    return target


def noisy_dataset(scene: Scene, level: Level, seed: int, output: Path) -> Path:
    """``OUT/scenes/SCENE/LEVEL/sSEED/data``: the base perturbed (seeded): ``transforms.json`` (noisy),
    ``transforms_gt.json`` (exact), ``perturbation.json``, ``images`` link."""
    from nerf_posefix.workflows.perturb import perturb_dataset

    data = scene_dir(output, scene) / level.name / f"s{seed}" / "data"
    record = data / "perturbation.json"
    if record.is_file():
        r = json.loads(record.read_text())
        if (r.get("rotation_deg"), r.get("translation"), r.get("seed")) == (level.rotation_deg, level.translation, seed):
            return data
    data.parent.mkdir(parents=True, exist_ok=True)
    perturb_dataset(build_base(scene, output), data, rotation_deg=level.rotation_deg, translation=level.translation,
                    translation_units="scene-fraction", seed=seed, overwrite=True)
    return data


def nerf_dataset(scene: Scene, data: Path, output: Path) -> Path:
    """The dataset the NeRF rows train on: ``data`` itself, or (downscaled scenes) ``data/../nerf_dsF`` with
    the same noisy poses, the intrinsics scaled by ``1/F`` and a link to the resized images."""
    if scene.nerf_downscale == 1:
        return data
    f = scene.nerf_downscale
    images = build_downscaled_images(scene, output)
    target = data.parent / f"nerf_ds{f}"
    if (target / "transforms.json").is_file():
        return target
    target.mkdir(parents=True, exist_ok=True)
    meta = json.loads((data / "transforms.json").read_text())
    for key in ("fl_x", "fl_y", "cx", "cy"):
        meta[key] = float(meta[key]) / f  # continuous pixel coordinates (top-left corner at 0): c scales with the image
    meta["w"], meta["h"] = int(meta["w"]) // f, int(meta["h"]) // f
    _link(images, target / "images")
    (target / "transforms.json").write_text(json.dumps(meta, indent=2))
    return target


def database_path(scene: Scene, output: Path) -> Path:
    return scene_dir(output, scene) / "database.db"


# ------------------------------------------------------------------------------------------------
# plan


@dataclass
class Job:
    scene: Scene
    level: Level
    seed: int
    row: str
    output: Path
    nerf_iterations: int

    @property
    def key(self) -> str:
        return f"{self.scene.name}__{self.level.name}__s{self.seed}__{self.row}"

    @property
    def record(self) -> Path:
        return self.output / "rows" / f"{self.key}.json"

    @property
    def work(self) -> Path:
        return self.output / "work" / self.key

    def settings(self) -> dict[str, Any]:
        s: dict[str, Any] = {
            "version": VERSION, "scene": self.scene.name, "source": str(self.scene.source), "level": self.level.__dict__,
            "seed": self.seed, "row": self.row, "subset_first": self.scene.subset_first,
        }
        if self.row in NERF_ROWS:
            s.update({"iterations": self.nerf_iterations, "downscale": self.scene.nerf_downscale,
                      "method": "posefix-small", "train_seed": self.seed, "eval_interval": 0})
        return s


def plan(scenes: Sequence[Scene], seeds: Sequence[int], rows: Sequence[str], levels: Sequence[str] | None,
         output: Path, nerf_iterations: int | None) -> list[Job]:
    """All jobs: cheap rows first; then the NeRF rows seed-major (so an interrupted run has whole seeds), the
    ``posefix-tracks+nerf`` rows of seeds > 0 last (the optional row: dropped first when time runs out)."""
    jobs = []
    for scene in scenes:
        for level in scene.levels:
            if levels and level.name not in levels:
                continue
            for seed in seeds:
                for row in rows:
                    jobs.append(Job(scene, level, seed, row, output, nerf_iterations or scene.nerf_iterations))
    order = {r: k for k, r in enumerate(ROWS)}
    return sorted(jobs, key=lambda j: (j.row in NERF_ROWS, j.row == "posefix-tracks+nerf" and j.seed > 0,
                                       j.seed if j.row in NERF_ROWS else 0, j.row == "posefix-tracks+nerf",
                                       list(SCENES).index(j.scene.name), order[j.row]))


def existing(job: Job, retry_failed: bool) -> dict[str, Any] | None:
    try:
        rec = json.loads(job.record.read_text())
    except (OSError, ValueError):
        return None
    if rec.get("settings") != json.loads(json.dumps(job.settings())):
        return None
    if retry_failed and rec.get("status") != "ok":
        return None
    return rec


# ------------------------------------------------------------------------------------------------
# workers (one process per row)


def _threads_one() -> None:
    """Torch at one thread in this worker process (2 jobs on 2 shared cores); refine's track building runs
    COLMAP with refine's ``threads`` (1 here)."""
    import torch

    torch.set_num_threads(1)


def _basenames(names: Sequence[str], c2w: np.ndarray, source: str) -> Any:
    from nerf_posefix.io.camera_set import CameraSet

    return CameraSet(names=[os.path.basename(n) for n in names], c2w=np.asarray(c2w, dtype=np.float64), source=source)


def run_colmap(database: Path, data: Path, work: Path) -> tuple[Any, dict[str, Any]]:
    """The ``colmap`` row: COLMAP's point_triangulator + bundle_adjuster from the noisy poses and the shared
    matches (default options, intrinsics fixed), mapped back onto the input frame."""
    import tempfile

    import pycolmap

    from nerf_posefix.errors import InputError
    from nerf_posefix.geometry.alignment import pose_alignment
    from nerf_posefix.io.posed_images import load_posed_images
    from nerf_posefix.sfm.bundle_adjustment import reconstruction_c2w
    from nerf_posefix.sfm.track_building import (
        copy_database,
        reconstruction_from_poses,
    )

    posed = load_posed_images(data / "transforms.json", None, None, None, 0.01)
    db = copy_database(database, work / "database.db")  # COLMAP opens it read-write
    rec = reconstruction_from_poses(db, posed.cameras)
    names_in, input_c2w = reconstruction_c2w(rec)
    options = pycolmap.IncrementalPipelineOptions()  # defaults; intrinsics fixed (point_triangulator's default too)
    options.num_threads = 1
    options.ba_refine_focal_length = False
    options.ba_refine_principal_point = False
    options.ba_refine_extra_params = False
    with tempfile.TemporaryDirectory(prefix="pfa-colmap-") as tmp:
        rec = pycolmap.triangulate_points(rec, str(db), str(posed.images_dir), tmp, clear_points=True, options=options)
    info: dict[str, Any] = {"triangulated_points": int(rec.num_points3D()),
                            "triangulated_observations": int(rec.compute_num_observations())}
    if rec.num_points3D() == 0:
        raise InputError("COLMAP's point_triangulator triangulated no point from the noisy poses (default options)")
    ba = pycolmap.BundleAdjustmentOptions()  # defaults: squared loss
    ba.refine_focal_length = False
    ba.refine_principal_point = False
    ba.refine_extra_params = False
    ba.print_summary = False
    ba.ceres.solver_options.num_threads = 1
    info["reprojection_error_before_px"] = float(rec.compute_mean_reprojection_error())
    pycolmap.bundle_adjustment(rec, ba)
    info["reprojection_error_after_px"] = float(rec.compute_mean_reprojection_error())
    names, adjusted = reconstruction_c2w(rec)
    if names != names_in:
        raise RuntimeError("COLMAP's bundle adjustment changed the set of registered images")
    alignment = pose_alignment(adjusted, input_c2w)
    rec.transform(pycolmap.Sim3d(alignment.scale, pycolmap.Rotation3d(alignment.rotation), alignment.translation))
    names, c2w = reconstruction_c2w(rec)
    info["points3D"] = int(rec.num_points3D())
    return _basenames(names, c2w, "colmap"), info


def run_nerf(job: Job, data: Path) -> tuple[Any, dict[str, Any]]:
    """``nerfstudio`` / ``posefix-photometric``: posefix-small trained from the noisy poses (all images)."""
    from nerf_posefix.workflows.experiment import (
        TrainSpec,
        build_trainer_config,
        export_refined,
        train,
    )

    train_data = nerf_dataset(job.scene, data, job.output)
    camera_optimizer = {"class": "nerfstudio"} if job.row == "nerfstudio" else {}
    spec = TrainSpec(data=train_data, output_dir=job.work, experiment_name="run", timestamp="run", method="posefix-small",
                     iterations=job.nerf_iterations, eval_interval=0, camera_optimizer=camera_optimizer, tracks="off", seed=job.seed)
    config = build_trainer_config(spec)
    cam = config.pipeline.model.camera_optimizer
    info = {"camera_optimizer": type(cam).__name__, "iterations": job.nerf_iterations, "train_data": str(train_data),
            **{k: getattr(cam, k) for k in ("mode", "trans_l2_penalty", "rot_l2_penalty", "weight", "bounds", "prior") if hasattr(cam, k)}}
    run = train(config, progress=False, quiet=True, resume=True, num_threads=1)
    info["trained_iterations"] = int(run.completed_iterations)
    refined = export_refined(run.config_path, job.work / "refined")
    return _basenames(refined.names, refined.c2w, "nerf"), info


class FallbackAborted(RuntimeError):
    """``posefix-tracks``: refine fell back to its photometric refinement (see :func:`run_refine`)."""


def run_refine(job: Job, data: Path, database: Path, iterations: int) -> tuple[Any, dict[str, Any]]:
    """``posefix-tracks`` (iterations 0) / ``posefix-tracks+nerf``: ``posefix refine`` with its defaults."""
    from nerf_posefix.io.transforms_json import read_transforms_json
    from nerf_posefix.workflows.refine import RefineOptions, refine

    out = job.work / "refined"

    def no_fallback_training(iteration: int, loss: Any) -> None:
        # iterations=0 trains only when refine fell back (fewer than 100 points triangulated): its fallback is
        # the method's default photometric run (3000 iterations, ~40 min on this CPU), over this benchmark's budget
        if not iterations:
            raise FallbackAborted(
                "refine fell back to a photometric refinement (too few triangulated points; see info); its default "
                "3000-iteration run is not affordable here and was stopped: no result"
            )

    result = refine(RefineOptions(output=out, poses=data / "transforms.json", database=database, iterations=iterations,
                                  downscale_factor=job.scene.nerf_downscale if iterations else 1, threads=1, seed=job.seed,
                                  quiet=True, overwrite=True), callback=no_fallback_training)
    s = result.summary
    tracks = s.get("tracks_built") or {}
    info = {
        "iterations": s.get("iterations"), "tracks": s.get("tracks"), "fallback": tracks.get("fallback"),
        "num_points": tracks.get("num_points"), "weak_images": len(tracks.get("weak_images") or []),
        "ba_rounds": (s.get("bundle_adjustment") or {}).get("rounds") if isinstance(s.get("bundle_adjustment"), dict) else None,
        "refine_total_seconds": s.get("total_seconds"),
    }
    refined = read_transforms_json(out / "transforms.json")
    return _basenames(refined.names, refined.c2w, "refine"), info


def worker(spec_path: Path) -> int:
    """Run one row (``spec.json`` from :func:`launch`) and write its record (status ok, or failed + error)."""
    spec = json.loads(Path(spec_path).read_text())
    if spec["kind"] == "database":
        return database_worker(spec)
    _threads_one()
    import warnings

    warnings.simplefilter("ignore")
    from nerf_posefix.io.transforms_json import read_transforms_json
    from nerf_posefix.workflows.experiment import pose_errors

    scene = SCENES[spec["scene"]]
    level = next(lv for lv in scene.levels if lv.name == spec["level"])
    job = Job(scene, level, int(spec["seed"]), spec["row"], Path(spec["output"]), int(spec["nerf_iterations"]))
    record: dict[str, Any] = {"key": job.key, "scene": scene.name, "level": level.name, "seed": job.seed, "row": job.row,
                              "settings": job.settings()}
    t0 = time.perf_counter()
    try:
        data = noisy_dataset(scene, level, job.seed, job.output)
        database = database_path(scene, job.output)
        if job.row in TRACK_ROWS and not database.is_file():
            raise RuntimeError(f"no shared feature database {database} (its build failed: see {database.parent / 'database.log'})")
        job.work.mkdir(parents=True, exist_ok=True)
        if job.row == "input":
            estimate, info = read_transforms_json(data / "transforms.json"), {}
        elif job.row == "colmap":
            estimate, info = run_colmap(database, data, job.work)
        elif job.row in ("nerfstudio", "posefix-photometric"):
            estimate, info = run_nerf(job, data)
        elif job.row == "posefix-tracks":
            estimate, info = run_refine(job, data, database, 0)
        elif job.row == "posefix-tracks+nerf":
            estimate, info = run_refine(job, data, database, job.nerf_iterations)
        else:
            raise ValueError(f"unknown row {job.row!r}")
        wall = time.perf_counter() - t0
        gt = read_transforms_json(data / "transforms_gt.json")
        errors = pose_errors(gt, estimate)
        if errors.summary["num_cameras"] != len(gt):
            raise RuntimeError(f"{errors.summary['num_cameras']} of {len(gt)} cameras estimated")
        record.update({"status": "ok", "wall_s": wall, "summary": errors.summary, "info": info,
                       "per_camera": {"name": errors.names, "rotation_deg": np.asarray(errors.rotation_deg).tolist(),
                                      "translation": np.asarray(errors.translation).tolist()}})
    except Exception as err:  # noqa: BLE001 - recorded as the row's failure
        record.update({"status": "failed", "wall_s": time.perf_counter() - t0, "error": f"{type(err).__name__}: {err}",
                       "traceback": traceback.format_exc()})
    _write_json_atomic(job.record, record)
    print(json.dumps({k: record.get(k) for k in ("key", "status", "wall_s", "error")}), flush=True)
    return 0


def database_worker(spec: dict[str, Any]) -> int:
    """Build the scene's shared COLMAP database (features + exhaustive verified matches, GT names and
    intrinsics; one thread)."""
    from nerf_posefix.io.posed_images import load_posed_images
    from nerf_posefix.sfm.track_building import TrackOptions, match_features

    scene = SCENES[spec["scene"]]
    output = Path(spec["output"])
    base = build_base(scene, output)
    posed = load_posed_images(base / "transforms.json", None, None, None, 0.01)
    database = database_path(scene, output)
    tmp = database.with_name("database.tmp.db")
    tmp.unlink(missing_ok=True)
    t0 = time.perf_counter()
    summary = match_features(posed.images_dir, posed.cameras.names, posed.intrinsics, tmp, TrackOptions(num_threads=1))
    tmp.replace(database)
    info = {**summary.to_dict(), "database": str(database), "wall_s": time.perf_counter() - t0}
    _write_json_atomic(database.with_name("database.json"), info)
    print(json.dumps(info), flush=True)
    return 0


def _subprocess(spec: dict[str, Any], spec_path: Path, log_path: Path, timeout: float | None) -> tuple[Any, float]:
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(json.dumps(spec, indent=2))
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "ignore", "PYTHONPATH": pythonpath,
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        try:
            code: Any = subprocess.run([sys.executable, "-m", "benchmarks.poses_from_anywhere", "--worker", str(spec_path)],
                                       stdout=log, stderr=subprocess.STDOUT, env=env, timeout=timeout, check=False,
                                       cwd=ROOT).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    return code, time.perf_counter() - t0


def ensure_database(scene: Scene, output: Path) -> None:
    if database_path(scene, output).is_file():
        return
    d = scene_dir(output, scene)
    d.mkdir(parents=True, exist_ok=True)
    print(f"[{scene.name}] shared feature database (SIFT + exhaustive matching, 1 thread) ...", flush=True)
    code, secs = _subprocess({"kind": "database", "scene": scene.name, "output": str(output)}, d / "database_spec.json",
                             d / "database.log", None)
    ok = database_path(scene, output).is_file()
    print(f"[{scene.name}] database {'built' if ok else f'FAILED ({code})'} in {secs:.0f} s", flush=True)


def launch(job: Job, timeout: float | None) -> dict[str, Any]:
    print(f"  {job.key}: running{f' ({job.nerf_iterations} it)' if job.row in NERF_ROWS else ''} ...", flush=True)
    job.work.mkdir(parents=True, exist_ok=True)
    spec = {"kind": "row", "scene": job.scene.name, "level": job.level.name, "seed": job.seed, "row": job.row,
            "output": str(job.output), "nerf_iterations": job.nerf_iterations}
    code, secs = _subprocess(spec, job.work / "spec.json", job.work / "log.txt", timeout)
    rec = existing(job, retry_failed=False)
    if rec is not None and rec.get("status") != "ok" and time.time() - job.record.stat().st_mtime > secs + 5:
        rec = None  # an older failure record: this worker wrote nothing
    if rec is None:
        tail = " | ".join((job.work / "log.txt").read_text(errors="replace").strip().splitlines()[-3:])
        if True:
            rec = {"key": job.key, "scene": job.scene.name, "level": job.level.name, "seed": job.seed, "row": job.row,
                   "settings": job.settings(), "status": "failed", "wall_s": secs,
                   "error": f"worker exited with {code}: {tail}"}
            _write_json_atomic(job.record, rec)
    if rec["status"] == "ok":
        s = rec["summary"]
        print(f"  {job.key}: {rec['wall_s']:.0f} s, rotation median {s['rotation_median_deg']:.3f} deg, centre median "
              f"{100 * s['translation_median_rel']:.2f} % r", flush=True)
    else:
        print(f"  {job.key}: FAILED: {rec.get('error', '')[:300]}", flush=True)
    return rec


# ------------------------------------------------------------------------------------------------
# tables


#: results.csv columns: (key, header, format)
RESULT_COLUMNS = (
    ("rotation_median_deg", "rot med (deg)", "{:.3f}"),
    ("centre_median_pct", "centre med (% r)", "{:.3f}"),
    ("ate_pct", "ATE (% r)", "{:.3f}"),
    ("ate_rmse", "ATE", "{:.4g}"),
    ("wall_s", "wall (s)", "{:.0f}"),
)


def load_records(output: Path) -> list[dict[str, Any]]:
    recs = []
    for path in sorted((output / "rows").glob("*.json")):
        try:
            recs.append(json.loads(path.read_text()))
        except ValueError:
            continue
    return recs


def result_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per record, with ``converged`` (median rotation below the input's, same scene/level/seed)."""
    inputs = {(r["scene"], r["level"], r["seed"]): r["summary"] for r in records if r["row"] == "input" and r.get("status") == "ok"}
    rows = []
    for r in records:
        ok = r.get("status") == "ok"
        s = r.get("summary") or {}
        radius_frac = s.get("translation_median_rel")
        scale = (s["translation_median"] / radius_frac) if ok and radius_frac else float("nan")  # the GT scene radius
        base = inputs.get((r["scene"], r["level"], r["seed"]))
        converged = None
        if r["row"] != "input" and base is not None:
            converged = bool(ok and s["rotation_median_deg"] < base["rotation_median_deg"])
        rows.append({
            "scene": r["scene"], "level": r["level"], "seed": r["seed"], "row": r["row"], "status": r.get("status"),
            "rotation_median_deg": s.get("rotation_median_deg", float("nan")),
            "centre_median_pct": 100.0 * s["translation_median_rel"] if ok else float("nan"),
            "ate_pct": 100.0 * s["ate_rmse"] / scale if ok and scale > 0 else float("nan"),
            "ate_rmse": s.get("ate_rmse", float("nan")),
            "rotation_mean_deg": s.get("rotation_mean_deg", float("nan")),
            "wall_s": r.get("wall_s", float("nan")),
            "converged": converged,
            "iterations": r["settings"].get("iterations"),
            "error": r.get("error", ""),
        })
    order = {n: k for k, n in enumerate(ROWS)}
    scene_order = {n: k for k, n in enumerate(SCENES)}
    level_order: dict[str, int] = {}
    for sc in SCENES.values():  # first appearance in SCENES order
        for lv in sc.levels:
            level_order.setdefault(lv.name, len(level_order))
    rows.sort(key=lambda x: (scene_order.get(x["scene"], 99), level_order.get(x["level"], 99), order.get(x["row"], 99), x["seed"]))
    return rows


SUMMARY_KEYS = ("rotation_median_deg", "centre_median_pct", "ate_pct", "wall_s")


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± sd (ddof 1) over seeds per (scene, level, row), over the seeds whose row succeeded."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["scene"], r["level"], r["row"]), []).append(r)
    out = []
    for (scene, level, row), items in groups.items():
        ok = [r for r in items if r["status"] == "ok"]
        entry: dict[str, Any] = {"scene": scene, "level": level, "row": row, "seeds": len(items), "ok": len(ok),
                                 "iterations": items[0]["iterations"]}
        for key in SUMMARY_KEYS:
            v = np.array([r[key] for r in ok], dtype=np.float64)
            entry[f"{key}_mean"] = float(v.mean()) if len(v) else float("nan")
            entry[f"{key}_sd"] = float(v.std(ddof=1)) if len(v) > 1 else float("nan")
        conv = [r["converged"] for r in items if r["converged"] is not None]
        entry["converged"] = f"{sum(conv)}/{len(conv)}" if conv else ""
        entry["failures"] = "; ".join(sorted({r["error"][:160] for r in items if r["status"] != "ok"}))
        out.append(entry)
    return out


def _pm(mean: float, sd: float, fmt: str) -> str:
    if not math.isfinite(mean):
        return "-"
    return fmt.format(mean) + (f" ± {fmt.format(sd)}" if math.isfinite(sd) else "")


SUMMARY_HEADERS = ["scene", "level", "row", "seeds ok", "rot med (deg)", "centre med (% r)", "ATE (% r)", "wall (s)", "converged"]


def summary_cells(e: dict[str, Any]) -> list[str]:
    label = e["row"] + (f" ({e['iterations']} it)" if e["row"] in NERF_ROWS and e["iterations"] else "")
    return [e["scene"], e["level"], label, f"{e['ok']}/{e['seeds']}",
            _pm(e["rotation_median_deg_mean"], e["rotation_median_deg_sd"], "{:.3f}"),
            _pm(e["centre_median_pct_mean"], e["centre_median_pct_sd"], "{:.3f}"),
            _pm(e["ate_pct_mean"], e["ate_pct_sd"], "{:.3f}"),
            _pm(e["wall_s_mean"], e["wall_s_sd"], "{:.0f}"), e["converged"]]


def targets(summary: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """``(target, verdict, detail)``: PASS / FAIL / n/a (a row missing)."""
    by = {(e["scene"], e["level"], e["row"]): e for e in summary}
    out = []
    for (scene, level, row), e in by.items():  # summary order
        if row != "posefix-tracks":
            continue
        if level.startswith("10deg"):
            conv = [f"{r}: {by[(scene, level, r)]['converged']}" for r in ROWS[1:] if (scene, level, r) in by]
            out.append((f"{scene} {level}: which methods converge (median rotation below the input's; seeds)", "info", ", ".join(conv)))
            continue
        t = (e["rotation_median_deg_mean"], e["centre_median_pct_mean"])
        for other, factor, name in (("nerfstudio", 3.0, ">= 3x ahead of nerfstudio's regulariser"),
                                    ("colmap", 1.0 / 1.2, "within 1.2x of colmap or better")):
            o = by.get((scene, level, other))
            label = f"{scene} {level}: posefix-tracks {name} (rotation and centre, seed means)"
            if o is None or e["ok"] == 0:
                out.append((label, "n/a", "row missing"))
                continue
            ov = (o["rotation_median_deg_mean"], o["centre_median_pct_mean"])
            if not all(math.isfinite(v) for v in ov):  # the other method failed on every seed: posefix is ahead
                out.append((label, "PASS" if all(math.isfinite(v) for v in t) else "FAIL", f"{other} failed ({o['failures'][:80]})"))
                continue
            ratios = [ov[k] / t[k] if t[k] > 0 else float("inf") for k in range(2)]
            verdict = "PASS" if all(r >= factor for r in ratios) else "FAIL"
            detail = (f"rotation {t[0]:.3f} vs {ov[0]:.3f} deg (x{ratios[0]:.2f}), centre {t[1]:.3f} vs {ov[1]:.3f} % r "
                      f"(x{ratios[1]:.2f}); {other} on {o['ok']}/{o['seeds']} seeds")
            out.append((label, verdict, detail))
    return out


def report(output: Path) -> str:
    records = load_records(output)
    rows = result_rows(records)
    summary = summarise(rows)
    if rows:
        with open(output / "results.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    if summary:
        with open(output / "summary.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(summary[0]))
            w.writeheader()
            w.writerows(summary)
    per_seed = text_table(
        ["scene", "level", "seed", "row", *[h for _, h, _ in RESULT_COLUMNS], "converged", "status"],
        [[r["scene"], r["level"], str(r["seed"]), r["row"],
          *[("-" if not (isinstance(r[k], (int, float)) and math.isfinite(r[k])) else fmt.format(r[k])) for k, _, fmt in RESULT_COLUMNS],
          "" if r["converged"] is None else ("yes" if r["converged"] else "no"),
          r["status"] if r["status"] == "ok" else f"FAILED: {r['error'][:70]}"] for r in rows], left=4,
        title="poses from anywhere: every row")
    summ = text_table(SUMMARY_HEADERS, [summary_cells(e) for e in summary], left=3, title="mean ± sd over seeds")
    tgt = targets(summary)
    tgt_text = "\n".join(f"  [{v}] {t}: {d}" for t, v, d in tgt)
    md = ["| " + " | ".join(SUMMARY_HEADERS) + " |", "|" + "---|" * 3 + "---:|" * (len(SUMMARY_HEADERS) - 3)]
    md += ["| " + " | ".join(summary_cells(e)) + " |" for e in summary]
    md += ["", "Targets:", ""] + [f"- **{v}** {t}: {d}" for t, v, d in tgt]
    databases = []
    for p in sorted((output / "scenes").glob("*/database.json")):
        d = json.loads(p.read_text())
        databases.append(f"- {p.parent.name}: shared feature database: {d['num_images']} images, {d['num_keypoints']} keypoints, "
                         f"{d['num_verified_pairs']} verified pairs, {d['wall_s']:.0f} s (not included in the rows' wall times)")
    md += ["", *databases]
    (output / "summary.md").write_text("\n".join(md) + "\n")
    text = "\n\n".join([per_seed, summ, "targets:\n" + tgt_text, "\n".join(databases)])
    print(text, flush=True)
    return text


# ------------------------------------------------------------------------------------------------
# main


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", type=Path, help="results directory (resumable)")
    p.add_argument("--quick", action="store_true", help="toybox16, 3deg-5pct, seed 0, NeRF rows at 20 iterations")
    p.add_argument("--scenes", nargs="+", choices=sorted(SCENES), default=None, help="default: toybox castle")
    p.add_argument("--levels", nargs="+", default=None, help="only these level names")
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="default 0 1 2")
    p.add_argument("--rows", nargs="+", choices=ROWS, default=None, help="default: all rows")
    p.add_argument("--nerf-iterations", type=int, default=None, help="override every chosen scene's NeRF budget")
    p.add_argument("--jobs", type=int, default=2, help="rows run at once (each one process, 1 thread)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per row (killed: recorded as failed)")
    p.add_argument("--retry-failed", action="store_true", help="run rows recorded as failed again")
    p.add_argument("--report-only", action="store_true", help="tabulate the rows that exist")
    p.add_argument("--list", action="store_true", help="print the planned rows, run nothing")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker is not None:
        return worker(args.worker)
    if args.output is None:
        p.error("--output is required")
    output = args.output.resolve()
    output.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        report(output)
        return 0
    if args.quick:
        scenes, seeds = [SCENES["toybox16"]], [0]
    else:
        scenes = [SCENES[s] for s in (args.scenes or ["toybox", "castle"])]
        seeds = list(DEFAULT_SEEDS)
    if args.seeds is not None:
        seeds = args.seeds
    jobs = plan(scenes, seeds, args.rows or ROWS, args.levels, output, args.nerf_iterations)
    todo = [j for j in jobs if existing(j, args.retry_failed) is None]
    print(f"{len(jobs)} rows planned, {len(jobs) - len(todo)} done already, {len(todo)} to run ({args.jobs} at a time)", flush=True)
    if args.list:
        for j in jobs:
            print(f"  {j.key}{'' if j in todo else ' (done)'}")
        return 0
    t0 = time.perf_counter()
    for scene in scenes:  # datasets in this process (fast), the databases in one worker each
        build_base(scene, output)
        for level in scene.levels:
            for seed in seeds:
                noisy_dataset(scene, level, seed, output)
        build_downscaled_images(scene, output)
    needs_db = sorted({j.scene.name for j in todo if j.row in TRACK_ROWS})
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        list(pool.map(lambda name: ensure_database(SCENES[name], output), needs_db))
        list(pool.map(lambda job: launch(job, args.timeout), todo))
    print(f"ran {len(todo)} rows in {time.perf_counter() - t0:.0f} s", flush=True)
    report(output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
