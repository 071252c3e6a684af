#!/usr/bin/env python
r"""Scaling benchmark (issue 23): the refine pipeline from 100 to 5000 images, stage by stage.

Two tracks, every row in its own process (wall time per stage, the process's **peak resident memory** from
``os.wait4``), side by side in the same run:

1. **COLMAP models** (tracks only): synthetic drone surveys of 100 / 300 / 1000 / 3000 / 5000 images
   (:mod:`benchmarks.synthetic_model`: 640x480, ~400 observations per image, 0.5 px noise, 2 % outliers),
   in one or both of two handovers (``--handover``, default ``perturbed``):

   * ``perturbed``: poses 0.2° / ~2.5 px off, independently per image, points triangulated from them
     (scenes ``scenes/synthetic-<N>``, rows ``rows/synthetic-<N>-<row>.json``);
   * ``adjusted``: that model after pycolmap's squared-loss bundle adjustment to convergence, as a mapper
     hands its model over (scenes ``scenes/synthetic-<N>-adjusted``, rows
     ``rows/synthetic-<N>-adjusted-<row>.json``; the ``handover`` column of the table).

   Rows (each on each handover):

   * ``posefix``: ``posefix refine --colmap-model M --images I --output O`` with its defaults (no NeRF stage):
     read and check, robust bundle adjustment (stopping when the poses stop moving), write. Stages from its
     log lines' arrival times and its report.
   * ``pycolmap-default``: ``pycolmap.bundle_adjustment`` of the same model, the same Cauchy loss and auto
     scale, pycolmap's solver defaults (100 iterations; linear solver auto-selected). Up to 1000 images
     (``--default-max-images``): beyond it runs for tens of minutes.
   * ``pycolmap-ftol``: the same with 30 iterations at most and Ceres' function tolerance 1e-4 (the
     "well-configured" adjustment of the issue).
   * ``posefix-ba``: the package's adjustment alone (``bundle_adjust_model`` with its defaults), with its
     solver's record (iterations, blocks, why it stopped, linear solver).
   * ``input``: the handed-over model itself (no timing), always.

   The pycolmap rows run ``create_default_bundle_adjuster`` set up as ``pycolmap.bundle_adjustment`` sets it
   up (every registered image, gauge ``TWO_CAMS_FROM_WORLD``; the same poses to 1e-7 at 100 images), to
   record Ceres' iterations and why it stopped.

   Errors: median rotation (degrees) and centre (units of the flight height, and % of the scene radius)
   of the registered images against the truth after a Sim(3) alignment.

2. **Poses from anywhere**: the bundled scene's generator (:mod:`benchmarks.make_scene`) rendered with
   ``--views`` views (default 300, 128x128, two interleaved rings named ring by ring), every pose perturbed
   by ``posefix perturb`` (1° / 2 %). Rows:

   * ``posefix-tracks``: ``posefix refine --poses noisy/transforms.json`` with its defaults (``auto``
     matching: spatial beyond 150 images), stages from its log: features, matching, triangulation,
     adjustment rounds.
   * ``posefix-tracks-sequential``: the same with ``--matching sequential`` (the previous ``auto`` beyond 150
     images: each image with its 10 successors by name).
   * ``colmap``: COLMAP's from-scratch pipeline on the same images (:func:`benchmarks.sfm.run_sfm`: pycolmap
     SIFT, exhaustive matching, incremental mapping; the true intrinsics held fixed, as posefix is given them).

Resumable: every row writes ``rows/<row>.json`` when it completes and is skipped when that file exists
(``--force`` re-runs); generated scenes are kept under ``scenes/``. Outputs: ``scaling.csv`` (one line per
row), ``scaling.png`` (time vs images, log-log) and the printed table.

Usage::

    python -m benchmarks.scaling --output scaling_results                     # everything (see below)
    python -m benchmarks.scaling --output out --sizes 100 300 --no-rendered   # quick (~1 min)
    python -m benchmarks.scaling --output out --sizes 5000 --no-rendered --rows posefix-ba pycolmap-ftol
    python -m benchmarks.scaling --output out --sizes 1000 --no-rendered --handover perturbed adjusted \
        --rows posefix posefix-ba pycolmap-ftol pycolmap-default               # both handovers side by side

On 2 CPU cores: everything up to 3000 images plus the rendered track ~27 min (rendering 300 views: 3 min);
the 5000-image adjustment rows ~4 min; the 5000-image ``posefix`` row is dominated by refine's per-image
support stage (~N^1.9: > 20 min at 5000 images, extrapolated; ``docs/scaling.md``). The ``adjusted``
handover's squared-loss adjustment is made once per size when its scene is generated (not timed).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SIZES = (100, 300, 1000, 3000, 5000)
HANDOVERS = ("perturbed", "adjusted")  # benchmarks.synthetic_model.HANDOVERS
RENDERED_VIEWS = 300
NOISE = {"rotation_deg": 1.0, "translation": 0.02}


# ---------------------------------------------------------------------------------------------
# running a row in a child process


def run_child(cmd: Sequence[str], log_file: Path, timeout_s: Optional[float] = None) -> dict[str, Any]:
    """Run ``cmd`` with its output (stdout + stderr) to ``log_file``, every line stamped with its arrival time
    (seconds since the start). Returns ``{returncode, wall_s, peak_rss_mib, lines: [(t, line)]}``."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    lines: list[tuple[float, str]] = []
    proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True, bufsize=1)
    assert proc.stdout is not None
    Path(log_file).parent.mkdir(parents=True, exist_ok=True)  # a fresh --output has no scenes/ yet
    with open(log_file, "w", encoding="utf-8") as log:
        for line in proc.stdout:
            t = time.perf_counter() - t0
            lines.append((t, line.rstrip("\n")))
            log.write(f"[{t:8.2f}] {line}")
            if timeout_s is not None and t > timeout_s:
                proc.kill()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"returncode": proc.returncode, "wall_s": time.perf_counter() - t0, "peak_rss_mib": usage.ru_maxrss / 1024.0,
            "lines": lines}


def _first(lines: list[tuple[float, str]], needle: str) -> Optional[float]:
    return next((t for t, line in lines if needle in line), None)


# ---------------------------------------------------------------------------------------------
# errors


def pose_errors(names: Sequence[str], c2w: np.ndarray, truth_names: Sequence[str], truth_c2w: np.ndarray) -> dict[str, float]:
    """Median / max rotation (deg) and median centre error (truth units, % of the truth's scene radius) after
    a Sim(3) of the estimate onto the truth, on the images both have."""
    from nerf_posefix.geometry.alignment import align
    from nerf_posefix.geometry.poses import rotation_angle_deg, scene_radius

    index = {n: k for k, n in enumerate(names)}
    common = [n for n in truth_names if n in index]
    gt = truth_c2w[[list(truth_names).index(n) for n in common]]
    est = c2w[[index[n] for n in common]]
    aligned = align(est, gt, mode="sim3").apply(est)
    rot = rotation_angle_deg(gt[:, :3, :3], aligned[:, :3, :3])
    centre = np.linalg.norm(aligned[:, :3, 3] - gt[:, :3, 3], axis=-1)
    radius = scene_radius(truth_c2w[:, :3, 3])
    return {"registered": len(common), "rotation_median_deg": float(np.median(rot)), "rotation_max_deg": float(rot.max()),
            "centre_median": float(np.median(centre)), "centre_median_pct": float(100 * np.median(centre) / radius)}


def model_poses(model_dir: Path) -> tuple[list[str], np.ndarray]:
    import pycolmap

    from nerf_posefix.sfm.bundle_adjustment import reconstruction_c2w

    return reconstruction_c2w(pycolmap.Reconstruction(str(model_dir)))


# ---------------------------------------------------------------------------------------------
# child entry points (``python -m benchmarks.scaling --child KIND ...``)


def child_pycolmap(model_dir: Path, result: Path, variant: str, output: Path) -> None:
    """pycolmap's own adjustment of a model (Cauchy, the package's auto scale); writes the adjusted model."""
    import pycolmap

    from benchmarks.synthetic_model import pycolmap_adjust
    from nerf_posefix.sfm.bundle_adjustment import auto_scale_px

    t0 = time.perf_counter()
    rec = pycolmap.Reconstruction(str(model_dir))
    t_read = time.perf_counter() - t0
    opts = pycolmap.BundleAdjustmentOptions()
    opts.refine_focal_length = opts.refine_principal_point = opts.refine_extra_params = False
    opts.refine_sensor_from_rig = False
    opts.print_summary = False
    opts.ceres.loss_function_type = pycolmap.LossFunctionType.CAUCHY
    opts.ceres.loss_function_scale = auto_scale_px(rec)
    if variant == "ftol":
        opts.ceres.solver_options.max_num_iterations = 30
        opts.ceres.solver_options.function_tolerance = 1e-4
    summary, t_ba = pycolmap_adjust(rec, opts)  # pycolmap.bundle_adjustment's own set-up, Ceres' summary kept
    output.mkdir(parents=True, exist_ok=True)
    rec.write(str(output))
    solver = {"iterations": int(summary.num_successful_steps + summary.num_unsuccessful_steps - 1),
              "stop": str(summary.termination_type).split(".")[-1],
              "linear_solver": str(summary.linear_solver_type_used).split(".")[-1].lower()}
    result.write_text(json.dumps({"read_s": t_read, "adjust_s": t_ba, "solver": solver}), encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# rows


def _record(out: Path, row: str) -> Path:
    return out / "rows" / f"{row}.json"


def _done(out: Path, row: str, force: bool) -> Optional[dict[str, Any]]:
    path = _record(out, row)
    if path.is_file() and not force:
        return json.loads(path.read_text(encoding="utf-8"))
    return None


def _save(out: Path, row: str, record: dict[str, Any]) -> dict[str, Any]:
    path = _record(out, row)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2), encoding="utf-8")
    tmp.replace(path)
    print(f"  {row}: {json.dumps({k: v for k, v in record.items() if k not in ('log_tail',)})[:600]}", flush=True)
    return record


def synthetic_name(n: int, handover: str = "perturbed") -> str:
    """The scene's name and its rows' prefix: ``synthetic-<n>`` (perturbed), ``synthetic-<n>-adjusted``."""
    if handover not in HANDOVERS:
        raise ValueError(f"handover must be one of {HANDOVERS}, got {handover!r}")
    return f"synthetic-{n}" if handover == "perturbed" else f"synthetic-{n}-{handover}"


def synthetic_scene(out: Path, n: int, handover: str = "perturbed") -> Path:
    """The n-image survey in this handover (generated once)."""
    from benchmarks.synthetic_model import SyntheticConfig, generate_handover, handover_record, write_synthetic

    scene = out / "scenes" / synthetic_name(n, handover)
    if not (scene / "synthetic.json").is_file():
        t0 = time.perf_counter()
        model = generate_handover(SyntheticConfig(num_images=n), handover)
        write_synthetic(model, scene)
        print(f"generated {scene} ({time.perf_counter() - t0:.1f} s): {json.dumps(handover_record(model))}", flush=True)
    return scene


def _synthetic_truth(scene: Path) -> tuple[list[str], np.ndarray]:
    truth = np.load(scene / "truth.npz")
    return [str(n) for n in truth["names"]], truth["c2w"]


def row_refine_model(out: Path, n: int, force: bool, handover: str = "perturbed") -> dict[str, Any]:
    row = f"{synthetic_name(n, handover)}-posefix"
    if (done := _done(out, row, force)) is not None:
        return done
    scene = synthetic_scene(out, n, handover)
    target = out / "runs" / row
    if target.exists():
        import shutil

        shutil.rmtree(target)
        shutil.rmtree(target.parent / f"{target.name}.partial", ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "nerf_posefix.cli.main", "refine", "--colmap-model", str(scene / "sparse" / "0"),
           "--images", str(scene / "images"), "--output", str(target)]
    res = run_child(cmd, out / "runs" / f"{row}.log")
    record: dict[str, Any] = {"track": "model", "images": n, "handover": handover, "row": "posefix",
                              "returncode": res["returncode"], "wall_s": res["wall_s"], "peak_rss_mib": res["peak_rss_mib"]}
    if res["returncode"] == 0:
        report = json.loads((target / "report.json").read_text(encoding="utf-8"))["summary"]
        ba = report.get("bundle_adjustment") or {}
        t_ba_start = _first(res["lines"], "bundle adjustment of")
        record["stages_s"] = {
            "read_and_check": t_ba_start,
            "adjust": ba.get("seconds"),
            "write_and_report": (res["wall_s"] - t_ba_start - float(ba.get("seconds") or 0.0)) if t_ba_start is not None else None,
        }
        record["solver"] = ba.get("solver")
        record.update(pose_errors(*model_poses(target / "sparse" / "0"), *_synthetic_truth(scene)))
        # item 2: what refine without a NeRF stage still does
        record["nerf_traces"] = [line for _, line in res["lines"] if any(k in line.lower() for k in ("nerfstudio", "training", "rgb copies", "copied"))][:5]
        record["output_files"] = sorted(p.name for p in target.iterdir())
    record["log_tail"] = [line for _, line in res["lines"][-5:]]
    return _save(out, row, record)


def row_pycolmap(out: Path, n: int, variant: str, force: bool, handover: str = "perturbed") -> dict[str, Any]:
    row = f"{synthetic_name(n, handover)}-pycolmap-{variant}"
    if (done := _done(out, row, force)) is not None:
        return done
    scene = synthetic_scene(out, n, handover)
    result = out / "runs" / f"{row}.json"
    model_out = out / "runs" / row
    result.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "benchmarks.scaling", "--child", "pycolmap", "--variant", variant, "--model", str(scene / "sparse" / "0"),
           "--result", str(result), "--output", str(model_out)]
    res = run_child(cmd, out / "runs" / f"{row}.log")
    record: dict[str, Any] = {"track": "model", "images": n, "handover": handover, "row": f"pycolmap-{variant}",
                              "returncode": res["returncode"], "wall_s": res["wall_s"], "peak_rss_mib": res["peak_rss_mib"]}
    if res["returncode"] == 0:
        timing = json.loads(result.read_text(encoding="utf-8"))
        record["stages_s"] = {"read_and_check": timing["read_s"], "adjust": timing["adjust_s"]}
        record["solver"] = timing.get("solver")
        record.update(pose_errors(*model_poses(model_out), *_synthetic_truth(scene)))
    record["log_tail"] = [line for _, line in res["lines"][-5:]]
    return _save(out, row, record)


def child_posefix_ba(model_dir: Path, result: Path) -> None:
    """The package's adjustment alone (``bundle_adjust_model`` with its defaults): timing and the solver's run."""
    from nerf_posefix.sfm.bundle_adjustment import bundle_adjust_model

    t0 = time.perf_counter()
    res = bundle_adjust_model(model_dir)
    total = time.perf_counter() - t0
    names, c2w = res.names, res.c2w
    result.write_text(json.dumps({"total_s": total, "adjust_s": res.wall_time_s, "solver": res.run.to_dict() if res.run else None,
                                  "names": names, "c2w": c2w.tolist()}), encoding="utf-8")


def row_posefix_ba(out: Path, n: int, force: bool, handover: str = "perturbed") -> dict[str, Any]:
    row = f"{synthetic_name(n, handover)}-posefix-ba"
    if (done := _done(out, row, force)) is not None:
        return done
    scene = synthetic_scene(out, n, handover)
    result = out / "runs" / f"{row}.json"
    result.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "benchmarks.scaling", "--child", "posefix-ba", "--model", str(scene / "sparse" / "0"),
           "--result", str(result)]
    res = run_child(cmd, out / "runs" / f"{row}.log")
    record: dict[str, Any] = {"track": "model", "images": n, "handover": handover, "row": "posefix adjustment alone",
                              "returncode": res["returncode"], "wall_s": res["wall_s"], "peak_rss_mib": res["peak_rss_mib"]}
    if res["returncode"] == 0:
        info = json.loads(result.read_text(encoding="utf-8"))
        record["stages_s"] = {"read_and_check": info["total_s"] - info["adjust_s"], "adjust": info["adjust_s"]}
        record["solver"] = info["solver"]
        record.update(pose_errors(info["names"], np.asarray(info["c2w"]), *_synthetic_truth(scene)))
    record["log_tail"] = [line for _, line in res["lines"][-5:]]
    return _save(out, row, record)


def row_input(out: Path, n: int, force: bool, handover: str = "perturbed") -> dict[str, Any]:
    row = f"{synthetic_name(n, handover)}-input"
    if (done := _done(out, row, force)) is not None:
        return done
    scene = synthetic_scene(out, n, handover)
    counts = json.loads((scene / "synthetic.json").read_text(encoding="utf-8"))
    record = {"track": "model", "images": n, "handover": handover, "row": "input", "num_points3D": counts["num_points3D"],
              "num_observations": counts["num_observations"], "handover_record": counts.get("handover_record")}
    record.update(pose_errors(*model_poses(scene / "sparse" / "0"), *_synthetic_truth(scene)))
    return _save(out, row, record)


# rendered scene ----------------------------------------------------------------------------


def rendered_scene(out: Path, views: int) -> tuple[Path, Path]:
    """The rendered scene (``views`` views) and its perturbed copy: ``(scene, noisy)``."""
    scene = out / "scenes" / f"rendered-{views}"
    noisy = out / "scenes" / f"rendered-{views}-noisy"
    if not (scene / "transforms.json").is_file():
        t0 = time.perf_counter()
        res = run_child([sys.executable, "-m", "benchmarks.make_scene", "--output", str(scene), "--views", str(views), "--overwrite"],
                        out / "scenes" / f"rendered-{views}.log")
        if res["returncode"] != 0:
            raise RuntimeError(f"make_scene failed: {res['lines'][-3:]}")
        print(f"rendered {scene} ({time.perf_counter() - t0:.0f} s)", flush=True)
    if not (noisy / "transforms.json").is_file():
        from nerf_posefix.workflows.perturb import perturb_dataset

        perturb_dataset(scene, noisy, rotation_deg=NOISE["rotation_deg"], translation=NOISE["translation"], seed=0)
    return scene, noisy


def _rendered_truth(scene: Path) -> tuple[list[str], np.ndarray]:
    from nerf_posefix.io.sources import load_camera_set

    gt = load_camera_set(scene / "transforms.json")
    return list(gt.names), gt.c2w


def row_tracks(out: Path, views: int, matching: Optional[str], force: bool) -> dict[str, Any]:
    row = f"rendered-{views}-posefix-tracks" + (f"-{matching}" if matching else "")
    if (done := _done(out, row, force)) is not None:
        return done
    scene, noisy = rendered_scene(out, views)
    target = out / "runs" / row
    if target.exists():
        import shutil

        shutil.rmtree(target)
    import shutil

    shutil.rmtree(target.parent / f"{target.name}.partial", ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "nerf_posefix.cli.main", "refine", "--poses", str(noisy / "transforms.json"), "--output", str(target)]
    if matching:
        cmd += ["--matching", matching]
    res = run_child(cmd, out / "runs" / f"{row}.log")
    record: dict[str, Any] = {"track": "rendered", "images": views, "row": "posefix-tracks" + (f" ({matching})" if matching else ""),
                              "returncode": res["returncode"], "wall_s": res["wall_s"], "peak_rss_mib": res["peak_rss_mib"]}
    if res["returncode"] == 0:
        from nerf_posefix.io.sources import load_camera_set

        lines = res["lines"]
        t_feat = _first(lines, "features of")
        t_match = _first(lines, "matching of")
        t_tri = _first(lines, "verified pairs (")
        t_ba = _first(lines, "re-triangulating at")
        t_end = _first(lines, "in all")
        marks = [("read_and_check", 0.0, t_feat), ("features", t_feat, t_match), ("matching", t_match, t_tri),
                 ("triangulation", t_tri, t_ba), ("adjustment_rounds", t_ba, t_end), ("write_and_report", t_end, res["wall_s"])]
        record["stages_s"] = {name: (b - a) if a is not None and b is not None else None for name, a, b in marks}
        record["matching_log"] = [line.strip() for _, line in lines if "matching of" in line or "keypoints" in line
                                  or "points triangulated" in line]
        report = json.loads((target / "report.json").read_text(encoding="utf-8"))["summary"]
        ba = report.get("bundle_adjustment") or {}
        record["warning"] = ba.get("warning")
        record["rounds"] = ba.get("rounds")
        est = load_camera_set(target / "transforms.json")
        record.update(pose_errors(list(est.names), est.c2w, *_rendered_truth(scene)))
    record["log_tail"] = [line for _, line in res["lines"][-8:]]
    return _save(out, row, record)


def child_colmap(images: Path, output: Path, result: Path, transforms: Path) -> None:
    from benchmarks.sfm import PinholeCamera, run_sfm

    meta = json.loads(transforms.read_text(encoding="utf-8"))
    camera = PinholeCamera(width=int(meta["w"]), height=int(meta["h"]), fx=float(meta["fl_x"]), fy=float(meta["fl_y"]),
                           cx=float(meta["cx"]), cy=float(meta["cy"]))
    sfm = run_sfm(images, output, intrinsics="fixed", camera=camera, overwrite=True)
    result.write_text(json.dumps({"timings": sfm.timings, "model": str(sfm.model_path) if sfm.model_path else None,
                                  "num_registered": sfm.num_registered, "num_models": sfm.num_models, "error": sfm.error}),
                      encoding="utf-8")


def row_colmap(out: Path, views: int, force: bool) -> dict[str, Any]:
    row = f"rendered-{views}-colmap"
    if (done := _done(out, row, force)) is not None:
        return done
    scene, _ = rendered_scene(out, views)
    result = out / "runs" / f"{row}.json"
    result.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "benchmarks.scaling", "--child", "colmap", "--model", str(scene / "images"), "--output",
           str(out / "runs" / row), "--result", str(result), "--transforms", str(scene / "transforms.json")]
    res = run_child(cmd, out / "runs" / f"{row}.log")
    record: dict[str, Any] = {"track": "rendered", "images": views, "row": "colmap (from scratch)", "returncode": res["returncode"],
                              "wall_s": res["wall_s"], "peak_rss_mib": res["peak_rss_mib"]}
    if res["returncode"] == 0:
        info = json.loads(result.read_text(encoding="utf-8"))
        t = info["timings"]
        record["stages_s"] = {"features": t.get("extract"), "matching": t.get("match"), "mapping": t.get("map")}
        record["num_models"] = info["num_models"]
        if info["model"]:
            record.update(pose_errors(*model_poses(Path(info["model"])), *_rendered_truth(scene)))
        record["error"] = info["error"]
    record["log_tail"] = [line for _, line in res["lines"][-5:]]
    return _save(out, row, record)


def row_rendered_input(out: Path, views: int, force: bool) -> dict[str, Any]:
    row = f"rendered-{views}-input"
    if (done := _done(out, row, force)) is not None:
        return done
    from nerf_posefix.io.sources import load_camera_set

    scene, noisy = rendered_scene(out, views)
    est = load_camera_set(noisy / "transforms.json")
    record = {"track": "rendered", "images": views, "row": "input", **pose_errors(list(est.names), est.c2w, *_rendered_truth(scene))}
    return _save(out, row, record)


# ---------------------------------------------------------------------------------------------
# table and plot

COLUMNS = ("track", "images", "handover", "row", "wall_s", "peak_rss_mib", "stages", "registered", "rotation_median_deg", "rotation_max_deg",
           "centre_median", "centre_median_pct", "iterations", "stop", "linear_solver", "returncode")


def table_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for r in records:
        solver = r.get("solver") or {}
        stages = r.get("stages_s") or {}
        rows.append({
            **{k: r.get(k) for k in COLUMNS},
            # records made before the handover option were all on the perturbed handover
            "handover": r.get("handover") or ("perturbed" if r.get("track") == "model" else ""),
            "stages": "; ".join(f"{k} {v:.1f}" for k, v in stages.items() if v is not None),
            "iterations": solver.get("iterations"), "stop": solver.get("stop"), "linear_solver": solver.get("linear_solver"),
        })
    return rows


def write_outputs(out: Path, records: list[dict[str, Any]]) -> None:
    rows = table_rows(records)
    with open(out / "scaling.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    print(f"\n{'track':9} {'images':>6} {'handover':9} {'row':34} {'wall s':>8} {'peak MiB':>9} {'iter':>5} {'rot med°':>9} "
          f"{'centre %':>9}  stages")
    for r in rows:
        def fmt(v: Any, spec: str) -> str:
            return format(v, spec) if isinstance(v, (int, float)) else "-".rjust(int(spec.rstrip("dfs").split(".")[0]))
        print(f"{r['track']:9} {r['images']:>6} {r['handover']:9} {r['row']:34} {fmt(r['wall_s'], '8.1f')} "
              f"{fmt(r['peak_rss_mib'], '9.0f')} {fmt(r['iterations'], '5d')} {fmt(r['rotation_median_deg'], '9.4f')} "
              f"{fmt(r['centre_median_pct'], '9.4f')}  {r['stages']}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    series: dict[str, list[tuple[int, float]]] = {}
    for r in records:
        if r.get("wall_s") is None or r.get("returncode", 0) != 0:
            continue
        label = f"{r['track']}: {r['row']}" + (f" ({r['handover']} handover)" if r.get("handover") not in (None, "perturbed") else "")
        series.setdefault(label, []).append((int(r["images"]), float(r["wall_s"])))
    for label, points in sorted(series.items()):
        points.sort()
        xs, ys = zip(*points)
        ax.plot(xs, ys, "o-" if len(xs) > 1 else "s", label=label)
    xs = np.array([100, 5000])
    for power, style in ((1.0, ":"), (1.3, "--")):
        ax.plot(xs, 40.0 * (xs / 1000.0) ** power, "k" + style, lw=0.8, label=f"∝ N^{power:g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("images")
    ax.set_ylabel("wall time (s), 2 CPU cores")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "scaling.png", dpi=120)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, required=False)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--views", type=int, default=RENDERED_VIEWS, help="rendered scene's views")
    parser.add_argument("--default-max-images", type=int, default=1000, help="pycolmap's default adjustment up to this size")
    parser.add_argument("--no-models", action="store_true", help="skip the synthetic-model track")
    parser.add_argument("--no-rendered", action="store_true", help="skip the rendered-scene track")
    parser.add_argument("--rows", nargs="+", default=None, help="only these row kinds: posefix pycolmap-default pycolmap-ftol "
                        "posefix-ba tracks tracks-sequential colmap")
    parser.add_argument("--force", action="store_true", help="re-run rows whose record exists")
    parser.add_argument("--handover", nargs="+", choices=HANDOVERS, default=["perturbed"],
                        help="the synthetic models' handover(s): perturbed poses, or their squared-loss adjustment "
                             "(a mapper's output); both: side by side")
    # child mode
    parser.add_argument("--child", choices=("pycolmap", "colmap", "posefix-ba"), help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="default", help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--transforms", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child == "pycolmap":
        child_pycolmap(args.model, args.result, args.variant, args.output)
        return 0
    if args.child == "colmap":
        child_colmap(args.model, args.output, args.result, args.transforms)
        return 0
    if args.child == "posefix-ba":
        child_posefix_ba(args.model, args.result)
        return 0
    if args.output is None:
        parser.error("--output is required")
    out: Path = args.output
    out.mkdir(parents=True, exist_ok=True)
    kinds = set(args.rows or ("posefix", "pycolmap-default", "pycolmap-ftol", "posefix-ba", "tracks", "tracks-sequential", "colmap"))
    if not args.no_models:
        for n in args.sizes:
            for handover in args.handover:
                print(f"synthetic model, {n} images, {handover} handover", flush=True)
                row_input(out, n, args.force, handover)
                if "posefix" in kinds:
                    row_refine_model(out, n, args.force, handover)
                if "pycolmap-ftol" in kinds:
                    row_pycolmap(out, n, "ftol", args.force, handover)
                if "pycolmap-default" in kinds and n <= args.default_max_images:
                    row_pycolmap(out, n, "default", args.force, handover)
                if "posefix-ba" in kinds:
                    row_posefix_ba(out, n, args.force, handover)
    if not args.no_rendered:
        print(f"rendered scene, {args.views} views", flush=True)
        row_rendered_input(out, args.views, args.force)
        if "tracks" in kinds:
            row_tracks(out, args.views, None, args.force)
        if "tracks-sequential" in kinds:
            row_tracks(out, args.views, "sequential", args.force)
        if "colmap" in kinds:
            row_colmap(out, args.views, args.force)
    records = [json.loads(p.read_text(encoding="utf-8")) for p in sorted((out / "rows").glob("*.json"))]
    records.sort(key=lambda r: (r["track"], r["images"], r.get("handover") or "perturbed", r["row"]))
    write_outputs(out, records)
    return 0


if __name__ == "__main__":
    sys.exit(main())
