#!/usr/bin/env python
"""COLMAP track: does posefix improve the poses users actually start from, COLMAP's?

On scenes with exact ground truth (the bundled ``assets/toybox`` and variants rendered by
``benchmarks/make_scene.py`` into ``<output>/cache``), for every case of a preset (``configs/colmap_track*.yaml``):

1. **SfM** (:func:`benchmarks.sfm.run_sfm`): pycolmap as a user runs it (SIFT on the CPU, exhaustive
   matching, incremental mapping, largest model), with the intrinsics estimated (``free``, COLMAP's
   ``OPENCV`` camera as ``ns-process-data`` asks for) or fixed to the truth (``fixed``). Recorded: wall
   time, registered / total images, and COLMAP's pose error against the ground truth after a Sim(3)
   alignment of the camera centres (median / mean rotation in degrees, median / mean translation in
   scene units and in % of the scene radius, median homography error, ATE RMSE), on the registered
   images. COLMAP's failures (images not registered, no model) are reported as such.
2. **Refinement** from COLMAP's model, by each refiner of the preset with the same iteration budget
   (default: ``posefix`` = the homography prior, ``nerfstudio-l2`` = nerfstudio's own L2 penalties,
   ``posefix refine --regularizer``): ``posefix refine --colmap-model M --images I --output O
   --iterations N --threads T <refiner args>`` in its own process (``python -m nerf_posefix.cli.main
   refine``), ``refine.jobs`` at a time after all SfM is done. Its output (a COLMAP model, or a
   ``transforms.json``) is read back with :func:`nerf_posefix.workflows.pose_sources.load_pose_source` and measured
   like COLMAP's, on the same images; ``gain`` columns give COLMAP's median error divided by the
   refined one (> 1: better than COLMAP). If ``nerf_posefix/cli/refine.py`` does not exist the rows say
   "refine not available"; a refiner whose arguments name an option ``posefix refine`` does not have is
   skipped with that reason instead of failing.
3. **Geometric baseline** (:func:`benchmarks.sfm.bundle_adjust_from_poses`): the noisy-pose track's
   input (``posefix perturb`` of the scene: seed, levels and held-out test views as in
   ``configs/benchmark.yaml``), refined by pycolmap triangulation + bundle adjustment from features
   matched on the images (the ``fixed`` case's database is reused when it covers the same images),
   never from the generator's exact 2D observations. Errors on the perturbed (training) cameras.

Cases of the default preset: the default scene with intrinsics free and fixed; few views (15 of the 64,
evenly spaced); the scene rendered at 512x512 and downscaled 4x before SfM (refinement then uses the
full-resolution images, COLMAP's model being scaled back); low texture (the scene re-rendered with the
colour and pattern contrast of every material scaled by ``texture_contrast``: ``make_scene.SceneConfig``
has no texture parameter, so this script builds the materials with ``make_scene.make_materials`` and
scales them; the generator's fine brightness noise is hard-coded and stays). Refinement runs on the cases
marked ``refine`` (all of the default preset's that have a model).

Outputs in ``--output``: ``colmap_track.json`` (settings, every stage's result and per-camera errors),
``colmap_track.csv`` (the table), ``colmap_track.png`` (median errors per case and stage, log scale),
the printed table (rich), and per case ``cases/<case>/`` (``sfm/`` with the COLMAP database, logs and
model, ``refine-<refiner>/``) and ``ba/<level>/``. Stages whose ``result.json`` exists with the same
settings are reused (``--force`` re-runs them), so an interrupted track resumes.

Usage::

    python -m benchmarks.colmap_track --output colmap_track_results          # default preset, ~14 min on 2 cores
    python -m benchmarks.colmap_track --output /tmp/ct --quick               # smoke test (~1 min)
    python -m benchmarks.colmap_track --output out --cases default-free --skip-refine
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import make_scene
from nerf_posefix.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "configs" / "colmap_track.yaml"
QUICK_CONFIG = ROOT / "configs" / "colmap_track_quick.yaml"
RESULT_FILE = "result.json"
#: The module ``posefix refine`` lives in (issue #5).
DEFAULT_REFINE_COMMAND: tuple[str, ...] = (sys.executable, "-m", "nerf_posefix.cli.main", "refine")

#: Columns of the table / CSV after ``case`` and ``stage``: (key, header, format).
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("registered", "registered", "{}"),
    ("rotation_median_deg", "rot med (deg)", "{:.3f}"),
    ("rotation_mean_deg", "rot mean (deg)", "{:.3f}"),
    ("translation_median", "trans med", "{:.4f}"),
    ("translation_mean", "trans mean", "{:.4f}"),
    ("translation_median_pct", "trans med (% r)", "{:.3f}"),
    ("homography_median", "homog med", "{:.2e}"),
    ("ate_rmse", "ATE", "{:.4f}"),
    ("gain_rotation", "gain rot", "x{:.2f}"),
    ("gain_translation", "gain trans", "x{:.2f}"),
    ("wall_time_s", "time (s)", "{:.1f}"),
    ("note", "note", "{}"),
)


# ------------------------------------------------------------------------------------------------
# preset


@dataclass(frozen=True)
class SceneSpec:
    """A scene with ground truth: a directory (``path``, relative to the repository) or a render.

    Render fields (``benchmarks/make_scene.py``): ``num_views``, ``size`` (width = height, pixels),
    ``supersample`` (rays per pixel = supersample²), ``seed`` (same seed = same poses at any size), and
    ``texture_contrast`` (1 = the generator's materials; < 1 scales their colour and pattern contrast).
    """

    name: str
    path: str | None = None
    num_views: int = 64
    size: int = 128
    supersample: int = 3
    seed: int = 0
    texture_contrast: float = 1.0


@dataclass(frozen=True)
class CaseSpec:
    """One SfM case.

    Attributes:
        scene: a :class:`SceneSpec` name.
        intrinsics: ``free`` or ``fixed`` (see :func:`benchmarks.sfm.run_sfm`).
        downscale: shrink the images by this factor before SfM.
        num_views: use this many images, evenly spaced in name order (None: all).
        camera_model: COLMAP camera model for ``free`` (None: :data:`benchmarks.sfm.DEFAULT_FREE_CAMERA_MODEL`).
        refine: run the refiners from this case's model.
    """

    name: str
    scene: str
    intrinsics: str = "free"
    downscale: int = 1
    num_views: int | None = None
    camera_model: str | None = None
    refine: bool = True


@dataclass(frozen=True)
class RefinerSpec:
    """A ``posefix refine`` configuration: extra command-line arguments after the four common ones."""

    name: str
    args: tuple[str, ...] = ()


@dataclass(frozen=True)
class NoiseLevel:
    """Pose noise of the geometric baseline: exact rotation (deg), centre offset (fraction of the scene radius)."""

    name: str
    rotation_deg: float
    translation: float


@dataclass
class TrackConfig:
    """A preset (``configs/colmap_track*.yaml``)."""

    name: str
    scenes: dict[str, SceneSpec]
    cases: list[CaseSpec]
    iterations: int = 500
    refiners: list[RefinerSpec] = field(default_factory=list)
    refine_command: tuple[str, ...] | None = None
    refine_timeout_s: float = 600.0
    refine_jobs: int = 2
    refine_threads: int = 1
    ba_scene: str | None = None
    ba_levels: list[NoiseLevel] = field(default_factory=list)
    ba_holdout_every: int = 8
    noise_seed: int = 0
    sfm_seed: int = 0
    num_threads: int = -1
    min_registered: int = 3

    def settings(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _build(cls: type, raw: dict[str, Any], where: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise InputError(f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(names))})")
    try:
        return cls(**raw)
    except TypeError as err:
        raise InputError(f"{where}: {err}") from None


def load_config(path: str | os.PathLike[str]) -> TrackConfig:
    """Read a preset.

    Raises:
        InputError: unreadable YAML, unknown keys, a case naming an unknown scene (the file is named).
    """
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise InputError(f"{path}: cannot read the preset ({err})") from None
    if not isinstance(raw, dict):
        raise InputError(f"{path}: the preset must be a mapping")
    raw = dict(raw)
    scenes = {
        name: _build(SceneSpec, {"name": name, **(spec or {})}, f"{path}: scene {name}")
        for name, spec in (raw.pop("scenes", None) or {}).items()
    }
    cases = [_build(CaseSpec, dict(c), f"{path}: case {c.get('name', i)}") for i, c in enumerate(raw.pop("cases", None) or [])]
    refine = dict(raw.pop("refine", None) or {})
    ba = dict(raw.pop("ba", None) or {})
    refiners = [
        RefinerSpec(name=str(r["name"]), args=tuple(str(a) for a in (r.get("args") or ()))) for r in refine.pop("refiners", None) or []
    ]
    command = refine.pop("command", None)
    config = _build(
        TrackConfig,
        {
            "name": raw.pop("name", path.stem),
            "scenes": scenes,
            "cases": cases,
            "refiners": refiners,
            "refine_command": None if command is None else tuple(shlex.split(command) if isinstance(command, str) else command),
            **{f"refine_{k}" if k in ("timeout_s", "jobs", "threads") else k: v for k, v in refine.items()},
            "ba_scene": ba.pop("scene", None),
            "ba_levels": [_build(NoiseLevel, dict(lv), f"{path}: ba level") for lv in ba.pop("levels", None) or []],
            **{f"ba_{k}": v for k, v in ba.items()},
            **raw,
        },
        str(path),
    )
    for case in config.cases:
        if case.scene not in config.scenes:
            raise InputError(f"{path}: case {case.name} uses scene {case.scene!r}, not in scenes ({', '.join(config.scenes)})")
        if case.intrinsics not in ("free", "fixed"):
            raise InputError(f"{path}: case {case.name}: intrinsics must be free or fixed, got {case.intrinsics!r}")
    if config.ba_levels and config.ba_scene not in config.scenes:
        raise InputError(f"{path}: ba.scene {config.ba_scene!r} is not in scenes ({', '.join(config.scenes)})")
    names = [c.name for c in config.cases]
    if len(set(names)) != len(names):
        raise InputError(f"{path}: duplicate case names {names}")
    return config


# ------------------------------------------------------------------------------------------------
# scenes


def generate_scene(spec: SceneSpec, log: bool = False) -> Any:
    """Render ``spec`` with ``make_scene`` (a ``make_scene.Scene``).

    With ``texture_contrast`` ``c < 1`` the steps of ``make_scene.generate`` are repeated with the same
    random draws in the same order (so the poses and points are those of the ``c = 1`` scene) but every
    material's palette amplitude and pattern strength multiplied by ``c``.
    """
    ms = make_scene
    cfg = ms.SceneConfig(
        seed=spec.seed, num_views=spec.num_views, width=spec.size, height=spec.size, supersample=spec.supersample
    )
    if spec.texture_contrast == 1.0:
        return ms.generate(cfg, log=log)
    c = float(spec.texture_contrast)
    if not 0.0 <= c <= 1.0:
        raise InputError(f"scene {spec.name}: texture_contrast must be in [0, 1], got {c}")
    rng = np.random.default_rng(cfg.seed)
    noise = ms.Noise.from_rng(rng)
    materials = [
        dataclasses.replace(
            m,
            palette=(m.palette[0], m.palette[1] * c, m.palette[2], m.palette[3]),
            pattern_strength=m.pattern_strength * c,
        )
        for m in ms.make_materials(rng, len(ms.OBJECTS))
    ]
    c2w = ms.make_poses(cfg, rng)
    fx = ms.focal_length(cfg)
    images = np.zeros((cfg.num_views, cfg.height, cfg.width, 3), dtype=np.uint8)
    for k in range(cfg.num_views):
        images[k] = np.round(ms.render_view(c2w[k], cfg, fx, materials, noise) * 255.0).astype(np.uint8)
    points, tracks = ms.sample_points(c2w, cfg, fx, rng)
    colors = ms.point_colors(points, tracks, c2w, cfg, materials, noise)
    return ms.Scene(cfg=cfg, fx=fx, c2w=c2w, images=images, points=points, colors=colors, tracks=tracks)


def prepare_scene(spec: SceneSpec, cache: Path) -> tuple[Path, float]:
    """The scene directory (``images/``, ``sparse/0`` ground truth, ``transforms_gt.json``) and the
    seconds spent rendering it (0 when bundled or cached in ``cache/<name>`` with the same spec)."""
    if spec.path is not None:
        path = Path(spec.path)
        path = path if path.is_absolute() else ROOT / path
        if not (path / "sparse" / "0").is_dir() or not (path / "images").is_dir():
            raise InputError(f"{path}: not a scene with ground truth (images/ and sparse/0 expected)")
        return path, 0.0
    out = cache / spec.name
    marker = out / "track_scene.json"
    wanted = dataclasses.asdict(spec)
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return out, 0.0
    start = time.perf_counter()
    scene = generate_scene(spec)
    make_scene.write_scene(scene, out, overwrite=True)
    marker.write_text(json.dumps(wanted, indent=2))
    return out, time.perf_counter() - start


def image_subset(names: list[str], count: int | None) -> list[str]:
    """``count`` names evenly spaced over the sorted ``names`` (all if None or >= len)."""
    names = sorted(names)
    if count is None or count >= len(names):
        return names
    idx = np.floor(np.arange(count) * len(names) / count).astype(int)
    return [names[i] for i in idx]


# ------------------------------------------------------------------------------------------------
# measuring


def measure(reference: Any, estimate: Any, names: list[str] | None, min_cameras: int = 3) -> dict[str, Any]:
    """Pose errors of ``estimate`` against ``reference`` (camera sets) on the cameras in both (and in
    ``names``), after Sim(3) alignment (:func:`nerf_posefix.workflows.experiment.pose_errors`): ``{"summary": ...,
    "per_camera": {...}}`` or ``{"error": why}`` when fewer than ``min_cameras`` cameras match."""
    from nerf_posefix.workflows.experiment import pose_errors

    common = set(reference.names) & set(estimate.names)
    if names is not None:
        common &= set(names)
    if len(common) < max(3, min_cameras):
        return {"error": f"{len(common)} camera(s) to compare (< {max(3, min_cameras)}): cannot align"}
    try:
        errors = pose_errors(reference, estimate, sorted(common))
    except InputError as err:
        return {"error": str(err)}
    return {
        "summary": errors.summary,
        "per_camera": {
            "names": errors.names,
            "rotation_deg": np.asarray(errors.rotation_deg).tolist(),
            "translation": np.asarray(errors.translation).tolist(),
        },
    }


def cached(directory: Path, settings: dict[str, Any], force: bool) -> dict[str, Any] | None:
    """The stored result of a stage run with the same ``settings`` (None to run it)."""
    path = directory / RESULT_FILE
    if force or not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text())
    except ValueError:
        return None
    return stored if stored.get("settings") == json.loads(json.dumps(settings)) else None


def store(directory: Path, result: dict[str, Any]) -> dict[str, Any]:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / RESULT_FILE).write_text(json.dumps(result, indent=2))
    return result


def run_case(case: CaseSpec, scene_dir: Path, out: Path, config: TrackConfig, force: bool) -> dict[str, Any]:
    """SfM for one case and COLMAP's pose error (cached in ``out/sfm/result.json``)."""
    from nerf_posefix.workflows.pose_sources import load_pose_source
    from benchmarks.sfm import PinholeCamera, list_images, run_sfm

    names = image_subset(list_images(scene_dir / "images"), case.num_views)
    settings = {"case": dataclasses.asdict(case), "scene": str(scene_dir), "names": names, "seed": config.sfm_seed}
    directory = out / "sfm"
    hit = cached(directory, settings, force)
    if hit is not None and (hit["sfm"]["model_path"] is None or Path(hit["sfm"]["model_path"]).is_dir()):
        hit["cached"] = True
        return hit
    camera = PinholeCamera.from_colmap_model(scene_dir / "sparse" / "0")
    result = run_sfm(
        scene_dir / "images",
        directory / "colmap",
        intrinsics=case.intrinsics,  # type: ignore[arg-type]
        camera=camera if case.intrinsics == "fixed" else None,
        image_names=names,
        downscale=case.downscale,
        camera_model=case.camera_model,
        num_threads=config.num_threads,
        seed=config.sfm_seed,
        overwrite=True,
    )
    record: dict[str, Any] = {"settings": settings, "sfm": result.to_dict()}
    if result.num_registered >= config.min_registered and result.model_path is not None:
        reference = load_pose_source(scene_dir / "sparse" / "0")
        record["errors"] = measure(reference, result.camera_set(), result.registered)
    else:
        record["errors"] = {"error": f"COLMAP registered {result.num_registered}/{result.num_images} images"}
    return store(directory, record)


def unsupported_flags(refiner: RefinerSpec, config: TrackConfig) -> list[str]:
    """The ``--flags`` of ``refiner.args`` that ``posefix refine`` does not have (checked against the
    fields of ``nerf_posefix.workflows.refine.RefineOptions``; nothing is checked for a custom refine command)."""
    if config.refine_command is not None:
        return []
    from nerf_posefix.workflows.refine import RefineOptions

    fields = {f.name for f in dataclasses.fields(RefineOptions)}
    def known(flag: str) -> bool:
        name = flag[2:].replace("-", "_")
        return name in fields or (name.startswith("no_") and name[3:] in fields)  # tyro's --no-<bool>

    flags = [a.split("=", 1)[0] for a in refiner.args if a.startswith("--")]
    return [f for f in flags if not known(f)]


def run_refine(
    refiner: RefinerSpec, case: CaseSpec, model: Path, images: Path, reference: Any, names: list[str],
    out: Path, config: TrackConfig, force: bool,
) -> dict[str, Any]:
    """``posefix refine`` from ``model`` in a subprocess and the refined poses' error (cached)."""
    from nerf_posefix.workflows.pose_sources import load_pose_source

    command = list(config.refine_command or DEFAULT_REFINE_COMMAND)
    settings = {
        "refiner": dataclasses.asdict(refiner), "case": case.name, "model": str(model), "iterations": config.iterations,
        "command": command[1:] if config.refine_command is None else command,
        # the COLMAP model itself: a re-run SfM invalidates the refinement
        "model_sha1": hashlib.sha1((model / "images.bin").read_bytes()).hexdigest(),
    }
    directory = out / f"refine-{refiner.name}"
    hit = cached(directory, settings, force)
    if hit is not None:
        hit["cached"] = True
        return hit
    target = directory / "output"
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    argv = [
        *command, "--colmap-model", str(model), "--images", str(images), "--output", str(target),
        "--iterations", str(config.iterations), "--threads", str(config.refine_threads), *refiner.args,
    ]
    record: dict[str, Any] = {"settings": settings, "argv": argv}
    start = time.perf_counter()
    log_path = directory / "refine.log"
    with open(log_path, "wb") as log:
        try:
            proc = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, timeout=config.refine_timeout_s, cwd=ROOT)
            record["returncode"] = proc.returncode
        except subprocess.TimeoutExpired:
            record["returncode"] = None
            record["error"] = f"timed out after {config.refine_timeout_s:.0f} s"
    record["wall_time_s"] = time.perf_counter() - start
    record["threads"] = config.refine_threads
    print(f"  {case.name}: refine {refiner.name} finished in {record['wall_time_s']:.0f} s", flush=True)
    if record.get("returncode") not in (0, None):
        tail = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()][-1:]
        record["error"] = f"exit {record['returncode']}: {tail[0][:200] if tail else ''}"
    if "error" not in record:
        try:
            record["errors"] = measure(reference, load_pose_source(target), names)
        except InputError as err:
            record["error"] = f"cannot read the refined poses: {err}"
    return store(directory, record)


def run_ba_level(
    level: NoiseLevel, scene_dir: Path, out: Path, database: Path | None, config: TrackConfig, force: bool
) -> dict[str, Any]:
    """Perturb the scene like the noisy-pose track and refine by bundle adjustment (cached)."""
    from nerf_posefix.workflows.pose_sources import load_pose_source
    from nerf_posefix.workflows.perturb import perturb_dataset
    from benchmarks.sfm import PinholeCamera, bundle_adjust_from_poses

    settings = {"level": dataclasses.asdict(level), "scene": str(scene_dir), "seed": config.noise_seed,
                "holdout_every": config.ba_holdout_every, "database": database is not None}
    hit = cached(out, settings, force)
    if hit is not None:
        hit["cached"] = True
        return hit
    data = out / "data"
    record_noise = perturb_dataset(
        scene_dir, data, rotation_deg=level.rotation_deg, translation=level.translation,
        seed=config.noise_seed, holdout_every=config.ba_holdout_every, overwrite=True,
    )
    train = [c["name"] for c in record_noise["cameras"] if not c["held_out"]]
    reference = load_pose_source(scene_dir / "sparse" / "0")
    noisy = load_pose_source(data / "sparse" / "0")
    camera = PinholeCamera.from_colmap_model(scene_dir / "sparse" / "0")
    result = bundle_adjust_from_poses(
        data / "images", out / "ba", noisy, camera, database=database, num_threads=config.num_threads,
        seed=config.sfm_seed, overwrite=True,
    )
    record: dict[str, Any] = {
        "settings": settings, "train_cameras": len(train), "input_errors": measure(reference, noisy, train),
        "ba": result.to_dict(),
    }
    if result.model_path is not None:
        record["errors"] = measure(reference, load_pose_source(result.model_path), train)
    else:
        record["errors"] = {"error": result.error}
    return store(out, record)


# ------------------------------------------------------------------------------------------------
# table, files, plot


def _row(case: str, stage: str, errors: dict[str, Any] | None, registered: str, wall: float | None,
         note: str = "", baseline: dict[str, Any] | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {"case": case, "stage": stage, "registered": registered}
    s = (errors or {}).get("summary")
    nan = float("nan")
    row["rotation_median_deg"] = s["rotation_median_deg"] if s else nan
    row["rotation_mean_deg"] = s["rotation_mean_deg"] if s else nan
    row["translation_median"] = s["translation_median"] if s else nan
    row["translation_mean"] = s["translation_mean"] if s else nan
    row["translation_median_pct"] = 100.0 * s["translation_median_rel"] if s else nan
    row["homography_median"] = s["homography_median"] if s else nan
    row["ate_rmse"] = s["ate_rmse"] if s else nan
    b = (baseline or {}).get("summary")
    row["gain_rotation"] = b["rotation_median_deg"] / s["rotation_median_deg"] if s and b and s["rotation_median_deg"] > 0 else nan
    row["gain_translation"] = b["translation_median"] / s["translation_median"] if s and b and s["translation_median"] > 0 else nan
    row["wall_time_s"] = nan if wall is None else float(wall)
    if errors and "error" in errors and not note:
        note = errors["error"]
    row["note"] = note
    return row


def case_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Table rows of one case: COLMAP, then one per refiner."""
    case = result["case"]
    sfm = result["sfm"]["sfm"]
    registered = f"{sfm['num_registered']}/{sfm['num_images']}"
    t = sfm["timings"]
    note = sfm["error"] or ""
    if not note and sfm["unregistered"]:
        note = f"COLMAP left {len(sfm['unregistered'])} image(s) unregistered"
    if not note and sfm["num_models"] > 1:
        note = f"{sfm['num_models']} models, largest kept"
    if result.get("render_s"):
        note = (note + "; " if note else "") + f"scene rendered in {result['render_s']:.0f} s"
    rows = [_row(case, "COLMAP", result["sfm"]["errors"], registered, t["total"], note)]
    for name, ref in result.get("refines", {}).items():
        if "skipped" in ref:
            rows.append(_row(case, name, None, registered, None, ref["skipped"]))
        else:
            rows.append(_row(case, name, ref.get("errors"), registered, ref.get("wall_time_s"), ref.get("error", ""),
                             baseline=result["sfm"]["errors"]))
    return rows


def ba_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    label = f"noisy {result['level']}"
    n = str(result["train_cameras"])
    ba = result["ba"]
    return [
        _row(label, "noisy input", result["input_errors"], n, None, "noisy-pose track input (training cameras)"),
        _row(label, "COLMAP BA", result["errors"], n, ba["timings"]["total"], ba["error"] or
             f"{ba['num_points3D']} points, {len(ba['rounds'])} rounds", baseline=result["input_errors"]),
    ]


def _cell(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return fmt.format(value)


def print_table(rows: list[dict[str, Any]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    table.add_column("case")
    table.add_column("stage")
    for key, header, _ in COLUMNS:
        table.add_column(header, justify="left" if key == "note" else "right", overflow="fold")
    previous = None
    for r in rows:
        if previous is not None and r["case"] != previous:
            table.add_section()
        previous = r["case"]
        table.add_row(r["case"], r["stage"], *[_cell(r.get(k), f) for k, _, f in COLUMNS])
    Console(width=max(200, shutil.get_terminal_size((200, 40)).columns)).print(table)


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with open(path, "w", newline="") as fid:
        writer = csv.DictWriter(fid, fieldnames=["case", "stage", *[k for k, _, _ in COLUMNS]])
        writer.writeheader()
        writer.writerows(rows)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Median rotation and translation errors per case (groups) and stage (bars), log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys(r["case"] for r in rows))
    stages = list(dict.fromkeys(r["stage"] for r in rows))
    colours = {stage: f"C{k % 10}" for k, stage in enumerate(stages)}
    fig, axes = plt.subplots(1, 2, figsize=(max(8.0, 1.6 * len(cases) + 4), 4.2))
    for ax, (key, label) in zip(axes, (("rotation_median_deg", "median rotation error (deg)"),
                                       ("translation_median_pct", "median translation error (% scene radius)"))):
        labelled: set[str] = set()
        for i, case in enumerate(cases):
            present = [r for r in rows if r["case"] == case and math.isfinite(r[key]) and r[key] > 0]
            width = 0.8 / max(len(present), 1)
            for k, r in enumerate(present):  # the bars of one case side by side, centred on it
                ax.bar(i + (k - (len(present) - 1) / 2) * width, r[key], width=width, color=colours[r["stage"]],
                       label=None if r["stage"] in labelled else r["stage"])
                labelled.add(r["stage"])
        for i, case in enumerate(cases):
            if not any(r["case"] == case and math.isfinite(r[key]) for r in rows):
                ax.text(i, 0.02, "no model", ha="center", va="bottom", rotation=90, fontsize=8,
                        transform=ax.get_xaxis_transform())
        ax.set_yscale("log")
        ax.set_xticks(range(len(cases)))
        ax.set_xticklabels(cases, rotation=25, ha="right", fontsize=8)
        ax.set_ylabel(label)
        ax.grid(True, axis="y", alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.suptitle("COLMAP track: pose error after Sim(3) alignment (missing bar: no model / not run)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, required=True, help="results directory (created; reused to resume)")
    parser.add_argument("--config", type=Path, default=None, help="preset YAML (default configs/colmap_track.yaml)")
    parser.add_argument("--quick", action="store_true", help="configs/colmap_track_quick.yaml: smoke test")
    parser.add_argument("--cases", nargs="+", default=None, help="only these cases")
    parser.add_argument("--iterations", type=int, default=None, help="refine iterations (overrides the preset)")
    parser.add_argument("--skip-refine", action="store_true", help="no refinement stage")
    parser.add_argument("--jobs", type=int, default=None,
                        help="refine runs at the same time (overrides the preset; each gets the preset's refine.threads)")
    parser.add_argument("--skip-ba", action="store_true", help="no bundle-adjustment baseline")
    parser.add_argument("--refine-command", default=None,
                        help="command that stands for `posefix refine` (default: python -m nerf_posefix.cli.main refine)")
    parser.add_argument("--cache", type=Path, default=None, help="rendered scenes (default <output>/cache)")
    parser.add_argument("--force", action="store_true", help="re-run stages whose results exist")
    args = parser.parse_args(argv)

    try:
        config = load_config(args.config or (QUICK_CONFIG if args.quick else DEFAULT_CONFIG))
    except InputError as err:
        print(f"colmap_track: error: {err}", file=sys.stderr)
        return 2
    if args.iterations is not None:
        if args.iterations < 0:
            parser.error("--iterations must be >= 0")
        config.iterations = args.iterations
    if args.jobs is not None:
        if args.jobs < 1:
            parser.error("--jobs must be >= 1")
        config.refine_jobs = args.jobs
    if args.refine_command is not None:
        config.refine_command = tuple(shlex.split(args.refine_command))
    if args.cases:
        unknown = sorted(set(args.cases) - {c.name for c in config.cases})
        if unknown:
            parser.error(f"unknown case(s) {', '.join(unknown)} (preset has {', '.join(c.name for c in config.cases)})")
        config.cases = [c for c in config.cases if c.name in args.cases]
    output: Path = args.output
    output.mkdir(parents=True, exist_ok=True)
    cache = args.cache or output / "cache"
    start = time.perf_counter()
    print(f"COLMAP track {config.name}: {len(config.cases)} cases, {len(config.refiners)} refiners x "
          f"{config.iterations} iterations, {len(config.ba_levels)} BA levels -> {output}", flush=True)

    from nerf_posefix.workflows.pose_sources import load_pose_source

    scene_dirs: dict[str, Path] = {}
    render_s: dict[str, float] = {}

    def scene(name: str) -> Path:
        if name not in scene_dirs:
            print(f"  scene {name} ...", flush=True)
            scene_dirs[name], render_s[name] = prepare_scene(config.scenes[name], cache)
        return scene_dirs[name]

    unavailable = None
    cases: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    pending: list[tuple[dict[str, Any], RefinerSpec, dict[str, Any]]] = []  # refines to run after all SfM
    for case in config.cases:
        scene_dir = scene(case.scene)
        out = output / "cases" / case.name
        print(f"  {case.name}: SfM ({case.intrinsics} intrinsics, downscale {case.downscale}) ...", flush=True)
        result: dict[str, Any] = {"case": case.name, "spec": dataclasses.asdict(case), "scene_dir": str(scene_dir),
                                  "render_s": render_s.pop(case.scene, 0.0), "sfm": run_case(case, scene_dir, out, config, args.force),
                                  "refines": {}}
        sfm = result["sfm"]["sfm"]
        has_model = sfm["model_path"] is not None and sfm["num_registered"] >= config.min_registered
        for refiner in config.refiners:
            if args.skip_refine:
                continue
            if not case.refine:
                continue
            if unavailable is not None:
                result["refines"][refiner.name] = {"skipped": unavailable}
            elif not has_model:
                result["refines"][refiner.name] = {"skipped": "nothing to refine: COLMAP failed"}
            elif unsupported_flags(refiner, config):
                result["refines"][refiner.name] = {
                    "skipped": f"posefix refine has no {', '.join(unsupported_flags(refiner, config))} option yet"
                }
            else:
                pending.append((result, refiner, dict(
                    refiner=refiner, case=case, model=Path(sfm["model_path"]), images=scene_dir / "images",
                    reference=load_pose_source(scene_dir / "sparse" / "0"), names=sfm["registered"], out=out,
                    config=config, force=args.force,
                )))
        cases.append(result)

    # Refinement: CPU-bound training runs, `refine.jobs` at a time with `refine.threads` torch threads each
    # (on 2 shared cores two single-thread runs finish sooner than one two-thread run after the other).
    if pending:
        from concurrent.futures import ThreadPoolExecutor

        print(f"  refine: {len(pending)} runs of {config.iterations} iterations, {config.refine_jobs} at a time, "
              f"{config.refine_threads} thread(s) each ...", flush=True)
        with ThreadPoolExecutor(max_workers=config.refine_jobs) as pool:
            futures = [(result, refiner, pool.submit(run_refine, **kwargs)) for result, refiner, kwargs in pending]
            for result, refiner, future in futures:
                result["refines"][refiner.name] = future.result()
    for result in cases:
        rows.extend(case_rows(result))

    ba_results: list[dict[str, Any]] = []
    if config.ba_levels and not args.skip_ba:
        scene_dir = scene(config.ba_scene)  # type: ignore[arg-type]
        database = None
        for result in cases:  # reuse the features/matches of a fixed-intrinsics SfM on all of the same images
            sfm = result["sfm"]
            if (result["scene_dir"] == str(scene_dir) and result["spec"]["intrinsics"] == "fixed"
                    and result["spec"]["downscale"] == 1 and result["spec"]["num_views"] is None
                    and Path(sfm["sfm"]["database_path"]).is_file()):
                database = Path(sfm["sfm"]["database_path"])
                break
        for level in config.ba_levels:
            print(f"  BA from noisy poses {level.name} ...", flush=True)
            res = run_ba_level(level, scene_dir, output / "ba" / level.name, database, config, args.force)
            res["level"] = level.name
            ba_results.append(res)
            rows.extend(ba_rows(res))

    total = time.perf_counter() - start
    report = {
        "track": "colmap", "preset": config.name, "config": config.settings(), "total_wall_s": total,
        "machine": {"cpu_count": os.cpu_count()}, "refine_unavailable": unavailable, "rows": rows,
        "cases": cases, "ba": ba_results,
    }
    (output / "colmap_track.json").write_text(json.dumps(report, indent=2, default=str))
    write_csv(rows, output / "colmap_track.csv")
    plot(rows, output / "colmap_track.png")
    print()
    print_table(rows, f"COLMAP track ({config.name}): errors after Sim(3) alignment to the ground truth; "
                      f"translation in scene units; gain = COLMAP (or noisy input) median / this median")
    if unavailable:
        print(f"note: {unavailable}")
    print(f"\nwrote {output / 'colmap_track.json'}, {output / 'colmap_track.csv'}, {output / 'colmap_track.png'} "
          f"({total:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
