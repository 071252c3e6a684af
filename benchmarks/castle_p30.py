#!/usr/bin/env python
"""Real-scene benchmark on castle-P30 (Strecha et al. 2008): 30 real photos, LIDAR ground truth.

Each **row** produces camera-to-world poses (OpenCV axes, any world frame) for the scene's images,
and :func:`evaluate` measures them against ``gt_cameras.json`` (camera-to-world, OpenCV axes, metres),
matched by image name, with the package's own functions:

* ``rot_sim3``: rotation error (deg) after the Umeyama Sim(3) alignment of the camera centres
  (:func:`nerf_posefix.geometry.alignment.align`), median / max;
* ``centre``: centre error after that alignment, in metres and in % of the **spread** (largest
  distance of a GT centre from the GT centroid, 23.70 m), median / max;
* ``pairwise``: alignment-free relative-rotation error over all 435 pairs
  (:func:`nerf_posefix.geometry.metrics.pairwise_rotation_errors`), median / max;
* ``rot_only``: rotation error after the best rotation-only alignment ``Q`` of the orientations
  (``R_gt ≈ Q R_est`` on the world side, ``Q`` = the rotation nearest ``Σ R_gt,i R_est,iᵀ``: the
  chordal L2 mean), median / max; and the angle between that ``Q`` and the Sim(3) rotation;
* the row's wall time (seconds; BA uses all cores) and, for BA rows, the mean reprojection error
  before / after and how far the poses moved.

Rows are registered in :data:`ROWS` (:func:`register_row`); more rows (e.g. NeRF refiners) can be
plugged in by a module that calls :func:`register_row` at import, loaded with ``--import MODULE``.
Built-in rows: ``input`` (COLMAP ``sparse/0`` as it is), ``ba-squared`` (COLMAP's default loss:
nothing should change), ``ba-default`` (the package's default options: Cauchy, auto scale),
``ba-cauchy-0.3``, ``ba-cauchy-1``, ``ba-huber-1``, ``ba-soft_l1-0.5`` (all with intrinsics fixed,
points refined, gauge fixed by the package default: a similarity onto the input frame with its
rotation from the camera orientations, scale and translation from the centres:
:mod:`nerf_posefix.sfm.bundle_adjustment`). ``--sweep`` adds the robust-scale sweep (Cauchy
0.1–2 px, Huber 0.3/0.5 px), points held fixed vs refined, the other gauge fixes, and the
self-calibrated model ``sparse_selfcal/0`` as it is and after robust BA.

Each row's result (its poses, settings and metrics) is cached as ``<output>/rows/<row>.json``; a rerun
reuses a cached row whose settings are unchanged (the metrics are recomputed from the cached poses),
so an interrupted run resumes; ``--force`` recomputes. Outputs: the printed rich table,
``<output>/table.csv`` and ``<output>/results.json``.

Usage (from the repository root)::

    python -m benchmarks.castle_p30 --output castle_results            # the main rows, ~20 s on 2 cores
    python -m benchmarks.castle_p30 --output castle_results --sweep    # + the sweep, ~1.5 min
    python -m benchmarks.castle_p30 --output out --rows input,ba-cauchy-1
"""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import math
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nerf_posefix.errors import InputError
from nerf_posefix.geometry.alignment import align
from nerf_posefix.geometry.metrics import pairwise_rotation_errors
from nerf_posefix.geometry.poses import rotation_angle_deg
from nerf_posefix.geometry.robust_scale import AUTO_SCALE_FACTOR
from nerf_posefix.sfm.bundle_adjustment import (
    AUTO_SCALE_RANGE_PX,
    BundleAdjustmentOptions,
    bundle_adjust_model,
    read_reconstruction,
    reconstruction_c2w,
)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SCENE = ROOT.parent / "shared" / "scenes" / "castle-P30"
#: The scene README's spread (m), checked against the GT file.
README_SPREAD_M = 23.70
#: Bump when the cached row format changes (old caches are then recomputed).
CACHE_VERSION = 1


# ------------------------------------------------------------------------------------------------
# data


@dataclass
class GroundTruth:
    """Ground-truth cameras: ``names [N]`` and camera-to-world ``c2w [N, 4, 4]`` (OpenCV axes, metres)."""

    names: list[str]
    c2w: np.ndarray

    @classmethod
    def read(cls, path: Path) -> "GroundTruth":
        """Read ``gt_cameras.json`` (``{"images": {name: {"c2w": 4x4, ...}}}``)."""
        if not path.is_file():
            raise InputError(f"ground-truth file {path} does not exist")
        data = json.loads(path.read_text())
        names = sorted(data["images"])
        c2w = np.array([data["images"][n]["c2w"] for n in names], dtype=np.float64).reshape(-1, 4, 4)
        return cls(names=names, c2w=c2w)

    @property
    def spread(self) -> float:
        """Largest distance of a GT centre from the GT centroid (metres)."""
        centres = self.c2w[:, :3, 3]
        return float(np.linalg.norm(centres - centres.mean(axis=0), axis=1).max())


@dataclass
class Estimate:
    """What a row produces.

    Attributes:
        names: ``[M]`` image names (as in ``gt_cameras.json``).
        c2w: ``[M, 4, 4]`` camera-to-world, OpenCV axes, any world frame and scale.
        wall_time_s: the row's own computation time (None: :func:`run_row` times the whole call).
        info: anything JSON-serialisable the row wants to report (shown in results.json; the keys
            ``reproj_before_px``, ``reproj_after_px`` also go to the table).
    """

    names: list[str]
    c2w: np.ndarray
    wall_time_s: float | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"names": self.names, "c2w": self.c2w.tolist(), "wall_time_s": self.wall_time_s, "info": self.info}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Estimate":
        return cls(
            names=list(data["names"]),
            c2w=np.asarray(data["c2w"], dtype=np.float64).reshape(-1, 4, 4),
            wall_time_s=data.get("wall_time_s"),
            info=dict(data.get("info", {})),
        )


@dataclass
class RowContext:
    """What a row runner gets: the scene directory (``images/``, ``sparse/0``, ...) and its own
    work directory ``<output>/rows/<row>/`` (created on demand)."""

    scene: Path
    work_dir: Path

    @property
    def model_dir(self) -> Path:
        return self.scene / "sparse" / "0"

    @property
    def selfcal_model_dir(self) -> Path:
        return self.scene / "sparse_selfcal" / "0"


@dataclass
class RowSpec:
    """A benchmark row.

    Attributes:
        name: unique key (``--rows``, cache file name).
        run: ``RowContext -> Estimate``.
        description: one line for the table.
        settings: JSON-serialisable; the cache is reused only when it is unchanged.
        group: ``"main"`` (run by default) or ``"sweep"`` (with ``--sweep``), or any other name
            (only when asked for with ``--rows``).
    """

    name: str
    run: Callable[[RowContext], Estimate]
    description: str
    settings: dict[str, Any] = field(default_factory=dict)
    group: str = "main"


#: The registry: row name -> spec, in registration order.
ROWS: dict[str, RowSpec] = {}


def register_row(spec: RowSpec, replace: bool = False) -> RowSpec:
    """Add a row to :data:`ROWS` (``replace`` to overwrite a row of the same name)."""
    if spec.name in ROWS and not replace:
        raise ValueError(f"row {spec.name!r} is registered already")
    if not spec.name or any(c in spec.name for c in "/\\, "):
        raise ValueError(f"bad row name {spec.name!r} (no '/', '\\', ',' or spaces)")
    ROWS[spec.name] = spec
    return spec


# ------------------------------------------------------------------------------------------------
# metrics


def rotation_only_alignment(ref_rot: np.ndarray, est_rot: np.ndarray) -> np.ndarray:
    """The rotation ``Q [3, 3]`` minimising ``Σ ‖R_ref,i - Q R_est,i‖²_F`` (camera-to-world rotations
    ``[N, 3, 3]``; ``Q`` acts on the world side): the rotation nearest ``Σ R_ref,i R_est,iᵀ``."""
    m = np.einsum("nij,nkj->ik", ref_rot, est_rot)  # Σ R_ref R_estᵀ, [3, 3]
    u, _, vt = np.linalg.svd(m)
    d = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    return u @ d @ vt


def _stats(values: np.ndarray) -> tuple[float, float]:
    return float(np.median(values)), float(np.max(values))


def evaluate(gt: GroundTruth, estimate: Estimate) -> dict[str, Any]:
    """All metrics of one estimate against the GT, on the images both have (matched by name).

    Returns a JSON-serialisable dict: aggregates (``rot_sim3_{median,max}_deg``,
    ``centre_{median,max}_m``, ``centre_{median,max}_pct``, ``pairwise_{median,max}_deg``,
    ``rot_only_{median,max}_deg``, ``sim3_vs_rot_only_deg``, ``num_matched``, ``missing``), the Sim(3)
    (``sim3``) and per-image errors (``per_image``).

    Raises:
        InputError: fewer than 3 matched images (from the alignment).
    """
    est_index = {n: k for k, n in enumerate(estimate.names)}
    names = [n for n in gt.names if n in est_index]
    missing = [n for n in gt.names if n not in est_index]
    gt_rows = [gt.names.index(n) for n in names]
    ref = gt.c2w[gt_rows]  # [M, 4, 4]
    est = estimate.c2w[[est_index[n] for n in names]]  # [M, 4, 4]
    spread = gt.spread

    sim3 = align(est, ref, mode="sim3")
    aligned = sim3.apply(est)  # [M, 4, 4]
    rot_sim3 = rotation_angle_deg(ref[:, :3, :3], aligned[:, :3, :3])  # [M]
    centre = np.linalg.norm(aligned[:, :3, 3] - ref[:, :3, 3], axis=-1)  # [M] metres
    pairwise = pairwise_rotation_errors(ref, est)  # [M(M-1)/2]
    q = rotation_only_alignment(ref[:, :3, :3], est[:, :3, :3])
    rot_only = rotation_angle_deg(ref[:, :3, :3], q @ est[:, :3, :3])  # [M]

    out: dict[str, Any] = {"num_matched": len(names), "missing": missing, "spread_m": spread}
    out["rot_sim3_median_deg"], out["rot_sim3_max_deg"] = _stats(rot_sim3)
    out["centre_median_m"], out["centre_max_m"] = _stats(centre)
    out["centre_median_pct"], out["centre_max_pct"] = (100.0 * v / spread for v in _stats(centre))
    out["pairwise_median_deg"], out["pairwise_max_deg"] = _stats(pairwise)
    out["rot_only_median_deg"], out["rot_only_max_deg"] = _stats(rot_only)
    out["sim3_vs_rot_only_deg"] = float(rotation_angle_deg(sim3.rotation, q))
    out["sim3"] = {"scale": sim3.scale, "rotation": sim3.rotation.tolist(), "translation": sim3.translation.tolist()}
    out["per_image"] = {
        n: {"rot_sim3_deg": float(r), "centre_m": float(c), "rot_only_deg": float(o)}
        for n, r, c, o in zip(names, rot_sim3, centre, rot_only)
    }
    worst = int(np.argmax(rot_sim3))
    out["worst_image"] = names[worst]
    return out


# ------------------------------------------------------------------------------------------------
# built-in rows


def run_input(ctx: RowContext, model_dir: Path | None = None) -> Estimate:
    """A COLMAP model's poses as they are."""
    model_dir = model_dir or ctx.model_dir
    rec = read_reconstruction(model_dir)
    names, c2w = reconstruction_c2w(rec)
    return Estimate(names=names, c2w=c2w, info={"reproj_after_px": float(rec.compute_mean_reprojection_error())})


def ba_runner(options: BundleAdjustmentOptions, selfcal: bool = False) -> Callable[[RowContext], Estimate]:
    """A row runner: :func:`bundle_adjust_model` of ``sparse/0`` (or ``sparse_selfcal/0``) with ``options``."""

    def run(ctx: RowContext) -> Estimate:
        result = bundle_adjust_model(ctx.selfcal_model_dir if selfcal else ctx.model_dir, options)
        summary = result.summary()
        info = {
            "reproj_before_px": result.reprojection_error_before_px,
            "reproj_after_px": result.reprojection_error_after_px,
            "gauge_alignment": summary["alignment"],
            "pose_change": summary["pose_change"],
            "num_points3D": summary["num_points3D"],
            "scale_px": result.scale_px,
        }
        return Estimate(names=result.names, c2w=result.c2w, wall_time_s=result.wall_time_s, info=info)

    return run


def _ba_row(name: str, description: str, group: str, selfcal: bool = False, **kwargs: Any) -> None:
    options = BundleAdjustmentOptions(**kwargs)
    settings = {"model": "sparse_selfcal/0" if selfcal else "sparse/0", **asdict(options)}
    settings.pop("verbose")
    settings.pop("num_threads")
    if options.scale_px is None:
        settings["auto_scale"] = {"factor": AUTO_SCALE_FACTOR, "range_px": list(AUTO_SCALE_RANGE_PX)}
    register_row(RowSpec(name, ba_runner(options, selfcal), description, settings, group))


def _register_builtin_rows() -> None:
    register_row(RowSpec("input", run_input, "COLMAP sparse/0 (GT K fixed) as it is", {"model": "sparse/0"}))
    _ba_row("ba-squared", "BA, squared loss (COLMAP's default)", "main", loss="squared")
    _ba_row("ba-default", "BA, the package default (Cauchy, auto scale = 2x median point error)", "main")
    _ba_row("ba-cauchy-0.3", "BA, Cauchy 0.3 px", "main", loss="cauchy", scale_px=0.3)
    _ba_row("ba-cauchy-1", "BA, Cauchy 1 px", "main", loss="cauchy", scale_px=1.0)
    _ba_row("ba-huber-1", "BA, Huber 1 px", "main", loss="huber", scale_px=1.0)
    _ba_row("ba-soft_l1-0.5", "BA, soft L1 0.5 px", "main", loss="soft_l1", scale_px=0.5)
    # the sweep: robust scale, points fixed vs refined, the self-calibrated model
    for scale in (0.1, 0.2, 0.4, 0.5, 0.7, 1.5, 2.0):
        _ba_row(f"ba-cauchy-{scale:g}", f"BA, Cauchy {scale:g} px", "sweep", loss="cauchy", scale_px=scale)
    for scale in (0.3, 0.5):
        _ba_row(f"ba-huber-{scale:g}", f"BA, Huber {scale:g} px", "sweep", loss="huber", scale_px=scale)
    for scale in (0.3, 1.0):
        _ba_row(f"ba-cauchy-{scale:g}-fixpts", f"BA, Cauchy {scale:g} px, points fixed", "sweep",
                loss="cauchy", scale_px=scale, refine_points=False)
    _ba_row("ba-squared-fixpts", "BA, squared loss, points fixed", "sweep", loss="squared", refine_points=False)
    _ba_row("ba-default-fixpts", "BA, the package default, points fixed", "sweep", refine_points=False)
    _ba_row("ba-default-gauge-centres", "BA, the package default, gauge by a Sim(3) of the centres", "sweep",
            fix_gauge="sim3_centres")
    _ba_row("ba-default-gauge-none", "BA, the package default, gauge left to the solver", "sweep", fix_gauge="none")
    register_row(RowSpec("input-selfcal", lambda ctx: run_input(ctx, ctx.selfcal_model_dir),
                         "COLMAP sparse_selfcal/0 as it is", {"model": "sparse_selfcal/0"}, "sweep"))
    _ba_row("ba-default-selfcal", "sparse_selfcal/0, BA package default (intrinsics fixed)", "sweep", selfcal=True)
    _ba_row("ba-cauchy-1-selfcal", "sparse_selfcal/0, BA Cauchy 1 px (intrinsics fixed)", "sweep", selfcal=True,
            loss="cauchy", scale_px=1.0)
    _ba_row("ba-cauchy-0.3-selfcal", "sparse_selfcal/0, BA Cauchy 0.3 px (intrinsics fixed)", "sweep", selfcal=True,
            loss="cauchy", scale_px=0.3)
    # the intrinsics refined: focal lengths, then with the principal point (self-calibration held it at the centre)
    _ba_row("ba-default-selfcal-focal", "sparse_selfcal/0, BA package default, focal lengths refined", "sweep", selfcal=True,
            refine_intrinsics=True)
    _ba_row("ba-default-selfcal-focal-pp", "sparse_selfcal/0, BA package default, focal lengths and principal point refined",
            "sweep", selfcal=True, refine_intrinsics=True, refine_principal_point=True)
    _ba_row("ba-default-focal-pp", "BA package default, focal lengths and principal point refined (the true K as start)",
            "sweep", refine_intrinsics=True, refine_principal_point=True)


_register_builtin_rows()


# ------------------------------------------------------------------------------------------------
# refine rows: ``posefix refine`` on COLMAP's model, as a user runs it (its own process)

#: Budget of every refine row: the same for all of them.
REFINE_ITERATIONS = 500
REFINE_DOWNSCALE = 2
REFINE_SEEDS = (0, 1, 2)
#: variant -> (description, extra ``posefix refine`` arguments, seeds)
REFINE_VARIANTS: dict[str, tuple[str, tuple[str, ...], tuple[int, ...]]] = {
    "posefix": ("posefix refine defaults: robust BA stage, then NeRF + track term + pixel prior", (), REFINE_SEEDS),
    "posefix-no-tracks": ("BA stage, then NeRF + pixel prior, no track term", ("--tracks", "off"), REFINE_SEEDS),
    "posefix-points-fixed": ("defaults with the track points held fixed", ("--track-points", "fixed"), (0,)),
    "posefix-no-ba": ("no BA stage: NeRF + track term + pixel prior from COLMAP's poses",
                      ("--bundle-adjustment", "none"), (0,)),
    "posefix-photometric": ("no BA, no tracks: NeRF + pixel prior (photometric information only)",
                            ("--bundle-adjustment", "none", "--tracks", "off"), (0,)),
    "nerfstudio-l2": ("nerfstudio's own regulariser (L2 penalties), no BA, no tracks",
                      ("--bundle-adjustment", "none", "--tracks", "off", "--regularizer", "nerfstudio"), REFINE_SEEDS),
}


def refine_runner(args: Sequence[str], seed: int, selfcal: bool = False, iterations: int = REFINE_ITERATIONS) -> Callable[[RowContext], Estimate]:
    """A row runner: ``posefix refine`` of ``sparse/0`` (or ``sparse_selfcal/0``) with ``args`` in its own process
    (resumable: an interrupted run continues from its checkpoint)."""

    def run(ctx: RowContext) -> Estimate:
        import os
        import subprocess

        out = ctx.work_dir / "output"
        if not (out / "report.json").is_file():
            ctx.work_dir.mkdir(parents=True, exist_ok=True)
            partial = out.parent / f"{out.name}.partial"
            model = ctx.selfcal_model_dir if selfcal else ctx.model_dir
            cmd = [sys.executable, "-m", "nerf_posefix.cli.main", "refine", "--colmap-model", str(model),
                   "--images", str(ctx.scene / "images"), "--output", str(out), "--iterations", str(iterations),
                   "--downscale-factor", str(REFINE_DOWNSCALE), "--threads", "1", "--seed", str(seed), "--quiet",
                   *(["--resume"] if partial.exists() else ["--overwrite"] if out.exists() else []), *args]
            env = {**os.environ, "PYTHONWARNINGS": "ignore"}
            with open(ctx.work_dir / "log.txt", "a") as log:
                code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, check=False).returncode
            if code != 0:
                raise InputError(f"posefix refine failed ({code}); see {ctx.work_dir / 'log.txt'}")
        report = json.loads((out / "report.json").read_text())["summary"]
        names, c2w = reconstruction_c2w(read_reconstruction(out / "sparse" / "0"))
        info = {
            "reproj_before_px": report.get("reprojection_error_px", {}).get("input"),
            "reproj_after_px": report.get("reprojection_error_px", {}).get("output"),
            "moved_rotation_median_deg": report["rotation_deg"]["median"],
            "drift": report["drift"],
            "bundle_adjustment": report.get("bundle_adjustment"),
            "points3D": report.get("points3D"),
        }
        return Estimate(names=names, c2w=c2w, wall_time_s=report["total_seconds"], info=info)

    return run


def _register_refine_rows() -> None:
    for variant, (description, args, seeds) in REFINE_VARIANTS.items():
        for seed in seeds:
            settings = {"variant": variant, "args": list(args), "seed": seed, "iterations": REFINE_ITERATIONS,
                        "downscale": REFINE_DOWNSCALE, "method": "posefix-small"}
            register_row(RowSpec(f"{variant}-s{seed}", refine_runner(args, seed),
                                 f"{description} (seed {seed}, {REFINE_ITERATIONS} it)", settings, "refine"))
    # posefix refine with its defaults and no NeRF stage, as a user runs it: the adjustment, --intrinsics auto
    for selfcal in (False, True):
        model = "sparse_selfcal/0" if selfcal else "sparse/0"
        register_row(RowSpec("refine-default" + ("-selfcal" if selfcal else ""), refine_runner((), 0, selfcal, iterations=0),
                             f"posefix refine defaults on {model}, no NeRF stage (--intrinsics auto)",
                             {"model": model, "args": ["--iterations", "0"]}, "sweep"))


_register_refine_rows()


def seed_summary(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows that differ only by seed (``NAME-sK``): mean ± sd of their metrics, one entry per variant."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        variant = r["key"]["settings"].get("variant")
        if variant is not None:
            groups.setdefault(variant, []).append(r["metrics"])
    out = []
    for variant, metrics in groups.items():
        entry: dict[str, Any] = {"variant": variant, "seeds": len(metrics)}
        for key in ("rot_sim3_median_deg", "rot_sim3_max_deg", "centre_median_pct", "centre_max_pct",
                    "pairwise_median_deg", "pairwise_max_deg"):
            values = np.array([m[key] for m in metrics], dtype=np.float64)
            entry[key] = (float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else float("nan"))
        out.append(entry)
    return out


# ------------------------------------------------------------------------------------------------
# running, caching, reporting


def run_row(spec: RowSpec, scene: Path, output: Path, gt: GroundTruth, force: bool = False) -> dict[str, Any]:
    """Run (or reuse the cache of) one row and evaluate it; writes ``<output>/rows/<name>.json``."""
    cache = output / "rows" / f"{spec.name}.json"
    key = {"version": CACHE_VERSION, "scene": str(scene.resolve()), "settings": spec.settings}
    estimate: Estimate | None = None
    cached = False
    if cache.is_file() and not force:
        try:
            data = json.loads(cache.read_text())
            if data.get("key") == key:
                estimate = Estimate.from_json(data["estimate"])
                cached = True
        except (json.JSONDecodeError, KeyError, ValueError):
            estimate = None
    if estimate is None:
        ctx = RowContext(scene=scene, work_dir=output / "rows" / spec.name)
        t0 = time.perf_counter()
        estimate = spec.run(ctx)
        if estimate.wall_time_s is None:  # the runner did not time itself: the whole call
            estimate.wall_time_s = time.perf_counter() - t0
    metrics = evaluate(gt, estimate)
    record = {
        "row": spec.name,
        "description": spec.description,
        "group": spec.group,
        "key": key,
        "cached": cached,
        "estimate": estimate.to_json(),
        "metrics": metrics,
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(cache)
    return record


#: (key, header, format) of the table columns.
COLUMNS: list[tuple[str, str, str]] = [
    ("rot_sim3_median_deg", "rot Sim3 med °", "{:.3f}"),
    ("rot_sim3_max_deg", "rot Sim3 max °", "{:.3f}"),
    ("centre_median_m", "centre med m", "{:.3f}"),
    ("centre_max_m", "centre max m", "{:.3f}"),
    ("centre_median_pct", "centre med %", "{:.2f}"),
    ("centre_max_pct", "centre max %", "{:.2f}"),
    ("pairwise_median_deg", "pairwise med °", "{:.3f}"),
    ("pairwise_max_deg", "pairwise max °", "{:.3f}"),
    ("rot_only_median_deg", "rot-only med °", "{:.3f}"),
    ("rot_only_max_deg", "rot-only max °", "{:.3f}"),
    ("sim3_vs_rot_only_deg", "Sim3∠rot-only °", "{:.3f}"),
    ("reproj_before_px", "reproj before px", "{:.3f}"),
    ("reproj_after_px", "reproj after px", "{:.3f}"),
    ("scale_px", "scale px", "{:.3f}"),
    ("wall_time_s", "time s", "{:.2f}"),
    ("worst_image", "worst", "{}"),
]


def table_row(record: dict[str, Any]) -> dict[str, Any]:
    """The flat table row of a record."""
    m, est = record["metrics"], record["estimate"]
    row: dict[str, Any] = {"row": record["row"], "description": record["description"], "images": m["num_matched"]}
    for key, _, _ in COLUMNS:
        row[key] = m.get(key, est["info"].get(key, est.get(key)))
    return row


def _cell(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return fmt.format(value)


def print_table(rows: list[dict[str, Any]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("row", no_wrap=True, min_width=max(len(r["row"]) for r in rows) if rows else 3)
    table.add_column("n", justify="right")
    for key, header, _ in COLUMNS:
        table.add_column(header, justify="right")
    for r in rows:
        table.add_row(r["row"], str(r["images"]), *[_cell(r.get(k), f) for k, _, f in COLUMNS])
    Console(width=max(220, shutil.get_terminal_size((220, 40)).columns)).print(table)


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with open(path, "w", newline="") as fid:
        writer = csv.DictWriter(fid, fieldnames=["row", "description", "images", *[k for k, _, _ in COLUMNS]])
        writer.writeheader()
        writer.writerows(rows)


def print_seed_summary(summary: list[dict[str, Any]]) -> None:
    """The over-seeds table (mean ± sd of each variant's metrics)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="refine variants: mean ± sd over seeds")
    keys = [("rot_sim3_median_deg", "rot med °"), ("rot_sim3_max_deg", "rot max °"), ("centre_median_pct", "centre med %"),
            ("centre_max_pct", "centre max %"), ("pairwise_median_deg", "pairwise med °"), ("pairwise_max_deg", "pairwise max °")]
    table.add_column("variant")
    table.add_column("seeds", justify="right")
    for _, title in keys:
        table.add_column(title, justify="right")
    for e in summary:
        cells = [f"{e[k][0]:.3f}" + (f" ± {e[k][1]:.3f}" if math.isfinite(e[k][1]) else "") for k, _ in keys]
        table.add_row(e["variant"], str(e["seeds"]), *cells)
    Console(width=200).print(table)


def select_rows(names: str | None, sweep: bool) -> list[RowSpec]:
    """``--rows`` (comma-separated names, ``all``) or the main group (+ the sweep group)."""
    if names:
        wanted = list(ROWS) if names.strip() == "all" else [n.strip() for n in names.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in ROWS]
        if unknown:
            raise InputError(f"--rows: unknown row(s) {unknown}; known: {list(ROWS)}")
        return [ROWS[n] for n in wanted]
    groups = {"main", "sweep"} if sweep else {"main"}
    return [spec for spec in ROWS.values() if spec.group in groups]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, required=True, help="results directory (row caches, table.csv, results.json)")
    parser.add_argument("--scene", type=Path, default=DEFAULT_SCENE, help=f"castle-P30 directory (default {DEFAULT_SCENE})")
    parser.add_argument("--rows", default=None, help="comma-separated rows, or 'all' (default: the main rows)")
    parser.add_argument("--sweep", action="store_true", help="add the sweep rows (robust scale, points fixed, self-cal)")
    parser.add_argument("--force", action="store_true", help="recompute cached rows")
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                        help="import MODULE first (it may call benchmarks.castle_p30.register_row); repeatable")
    parser.add_argument("--list", action="store_true", help="list the registered rows and exit")
    parser.add_argument("--refine", action="store_true",
                        help=f"add the posefix refine rows ({REFINE_ITERATIONS} iterations each, minutes per row)")
    parser.add_argument("--jobs", type=int, default=1, help="rows run at the same time (refine rows use one thread each)")
    args = parser.parse_args(argv)

    try:
        for module in args.imports:
            importlib.import_module(module)
        if args.list:
            for spec in ROWS.values():
                print(f"{spec.name:24s} [{spec.group}] {spec.description}")
            return 0
        specs = select_rows(args.rows, args.sweep)
        if args.refine and args.rows is None:
            specs += [s for s in ROWS.values() if s.group == "refine"]
        scene: Path = args.scene
        gt = GroundTruth.read(scene / "gt_cameras.json")
        if abs(gt.spread - README_SPREAD_M) > 0.01:
            print(f"warning: GT spread {gt.spread:.3f} m, the scene README says {README_SPREAD_M} m", file=sys.stderr)
        output: Path = args.output
        output.mkdir(parents=True, exist_ok=True)
        def one(spec: RowSpec) -> dict[str, Any]:
            print(f"[{spec.name}] {spec.description} ...", file=sys.stderr, flush=True)
            return run_row(spec, scene, output, gt, force=args.force)

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            records = list(pool.map(one, specs))
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    rows = [table_row(r) for r in records]
    print_table(rows, f"castle-P30 ({scene}), spread {gt.spread:.2f} m; errors vs LIDAR GT")
    write_csv(rows, output / "table.csv")
    results = {
        "scene": str(scene.resolve()),
        "spread_m": gt.spread,
        "rows": {r["row"]: {k: v for k, v in r.items() if k != "estimate"} | {"info": r["estimate"]["info"],
                                                                              "wall_time_s": r["estimate"]["wall_time_s"]}
                 for r in records},
    }
    summary = seed_summary(records)
    if summary:
        print_seed_summary(summary)
        results["seed_summary"] = summary
        with open(output / "seed_summary.csv", "w", newline="") as fid:
            writer = csv.writer(fid)
            keys = [k for k in summary[0] if k not in ("variant", "seeds")]
            writer.writerow(["variant", "seeds", *[f"{k}_{s}" for k in keys for s in ("mean", "sd")]])
            for e in summary:
                writer.writerow([e["variant"], e["seeds"], *[f"{v:.6g}" for k in keys for v in e[k]]])
    (output / "results.json").write_text(json.dumps(results, indent=1))
    print(f"wrote {output / 'table.csv'} and {output / 'results.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    # Run the registry of the importable module, not of ``__main__``: rows that ``--import`` modules
    # register with ``benchmarks.castle_p30.register_row`` must land in the registry that runs.
    from benchmarks.castle_p30 import main as _main

    sys.exit(_main())
