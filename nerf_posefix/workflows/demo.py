"""``posefix demo``: perturb the bundled scene, refine its poses with the default pipeline, and report
the pose errors before and after (under a minute on 2 CPU cores).

Steps (everything under ``--output``, default ``outputs/posefix-demo``):

1. ``data/``: the bundled scene (``assets/toybox``, 64 views of 128x128) with every pose perturbed by
   exactly ``--rotation-deg`` degrees about a random axis and a centre offset of ``--translation`` × the
   scene radius (:func:`nerf_posefix.workflows.perturb.perturb_dataset`); the ground truth is kept beside
   it (``transforms_gt.json``, ``sparse_gt/0``).
2. ``refined/``: ``posefix refine --poses data/transforms.json`` with its defaults
   (:func:`nerf_posefix.workflows.refine.refine`): tracks built from the images with the noisy poses held
   fixed, then rounds of re-triangulation and robust bundle adjustment. Nothing but the noisy poses and
   the images goes in.
3. With ``--nerf``, for contrast, two NeRFs trained from the noisy poses on the CPU
   (:mod:`nerf_posefix.workflows.experiment`; ``--iterations`` each, minutes): ``posefix-small`` with the
   homography prior (``nerf/posefix/``) and the same NeRF with nerfstudio's own camera optimizer and its
   L2 regulariser (``nerf/nerfstudio/``). Every ``--eval-interval``-th view then keeps its exact pose as a
   test view (nerfstudio's ``--eval-mode interval``, for the test-view PSNR); errors are measured on the
   other views.
4. ``compare/``: pose errors of every pose set against the ground truth after a Sim(3) alignment of the
   camera centres (:mod:`nerf_posefix.geometry.metrics`), as JSON/CSV and plots (error CDFs, top view,
   frusta PLY); ``summary.json``: the table printed at the end.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nerf_posefix.errors import InputError
from nerf_posefix.io.atomic import MARKER_FILE, check_output_dir, marker_text

if TYPE_CHECKING:
    from nerf_posefix.io.camera_set import CameraSet

#: The bundled scene (``assets/toybox`` of the source checkout; what
#: :func:`nerf_posefix.workflows.experiment.bundled_scene` gives, known here without importing torch).
DEFAULT_SCENE = Path(__file__).resolve().parents[2] / "assets" / "toybox"
METHODS = ("posefix", "posefix-small")
#: Labels of the pose sets, in the order of the table (``nerf-*`` only with ``--nerf``).
NOISY, REFINED, NERF_POSEFIX, NERF_NERFSTUDIO = "noisy", "posefix-refine", "nerf-posefix", "nerf-nerfstudio"


@dataclass
class DemoOptions:
    """Perturb the bundled scene (3 deg / 5 % of the scene radius), refine the poses with posefix refine's
    default pipeline (tracks built from the images, robust bundle adjustment), print the pose errors before
    and after and write plots (under a minute on 2 CPU cores). --nerf adds NeRF refiners for contrast."""

    output: Path = Path("outputs/posefix-demo")
    """Directory for the noisy dataset, the refined poses, the plots and summary.json."""
    nerf: bool = False
    """Also train NeRFs from the noisy poses, for contrast: posefix-small with the homography prior and the
    same NeRF with nerfstudio's own camera optimizer (--iterations each; about 6 minutes each on 2 cores)."""
    iterations: int = 1200
    """With --nerf: training iterations of each NeRF (about 0.3 s each on 2 idle CPU cores)."""
    scene: Path | None = None
    """Dataset to perturb (default: the bundled assets/toybox)."""
    rotation_deg: float = 3.0
    """Rotation noise per camera (degrees, random axis)."""
    translation: float = 0.05
    """Centre noise per camera, as a fraction of the scene radius."""
    seed: int = 0
    """Seed of the pose noise and of the refinement (NeRF training uses a fixed seed)."""
    eval_interval: int = 8
    """With --nerf: every N-th view is a test view at its exact pose, for the test-view PSNR (0: none)."""
    method: str = "posefix-small"
    """With --nerf: the posefix method to train (posefix or posefix-small)."""
    threads: int = 1
    """CPU threads of COLMAP and torch. 1 (default) gives the same figures on every run; with more, COLMAP's
    approximate CPU matcher can flip a borderline image pair from run to run (the bundled toybox: 1 run in 9), and
    with --nerf torch's training is not guaranteed the same either."""
    overwrite: bool = False
    """Replace --output if it exists (only an earlier posefix demo output)."""
    verbose: bool = False
    """Show nerfstudio's console and third-party warnings (same as posefix -v)."""


def check_options(cmd: DemoOptions) -> Path:
    """Every check of the demo's options and paths, before anything is created or imported.

    Returns:
        The scene directory.

    Raises:
        InputError: naming the option.
    """
    if cmd.iterations < 1:
        raise InputError(f"--iterations must be >= 1, got {cmd.iterations}")
    if not (math.isfinite(cmd.rotation_deg) and 0.0 <= cmd.rotation_deg <= 180.0):
        raise InputError(f"--rotation-deg must be in [0, 180], got {cmd.rotation_deg}")
    if not (math.isfinite(cmd.translation) and cmd.translation >= 0):
        raise InputError(f"--translation must be a finite number >= 0, got {cmd.translation}")
    if cmd.eval_interval < 0:
        raise InputError(f"--eval-interval must be >= 0, got {cmd.eval_interval}")
    if cmd.threads < 1:
        raise InputError(f"--threads must be >= 1, got {cmd.threads}")
    if cmd.method not in METHODS:
        raise InputError(f"--method must be one of {', '.join(METHODS)}, got {cmd.method!r}")
    scene = Path(cmd.scene) if cmd.scene is not None else DEFAULT_SCENE
    if not (scene / "transforms.json").is_file():
        raise InputError(
            f"{scene}: no transforms.json (the bundled scene lives in the source checkout's assets/; pass --scene DIR)"
        )
    check_output_dir(cmd.output, [("--scene", scene)], cmd.overwrite, command="demo")
    return scene


def _why_not_created(path: Path, err: OSError) -> str:
    """Why ``path`` could not be created, in words: the nearest existing folder above it and the reason."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    reason = (err.strerror or str(err)).lower()
    if not os.access(parent, os.W_OK):
        return f"{parent} is not writable ({reason})"
    return f"{parent} does not accept new folders ({reason})"


def run_demo(cmd: DemoOptions) -> dict[str, Any]:
    """Run the demo (see the module docstring); returns the summary written to ``summary.json``.

    All options are checked before ``--output`` is created (:func:`check_options`); if the demo fails or
    is interrupted after that, the output directory it created is removed again, so the same command
    can simply be run again.
    """
    scene = check_options(cmd)
    out = Path(cmd.output)
    if out.exists():
        shutil.rmtree(out)
    try:
        out.mkdir(parents=True)
    except OSError as err:
        raise InputError(f"--output {out}: cannot create it: {_why_not_created(out, err)}; choose another folder") from None
    (out / MARKER_FILE).write_text(marker_text("demo"), encoding="utf-8")
    try:
        return _run_demo(cmd, scene, out)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise


def _run_demo(cmd: DemoOptions, scene: Path, out: Path) -> dict[str, Any]:
    from nerf_posefix.io.transforms_json import read_transforms_json
    from nerf_posefix.workflows.experiment import load_reference, pose_errors, train_camera_names
    from nerf_posefix.workflows.perturb import perturb_dataset

    t0 = time.perf_counter()
    steps = 4 if cmd.nerf else 3
    print(f"posefix demo: {scene} -> {out}", flush=True)

    data = out / "data"
    record = perturb_dataset(
        scene,
        data,
        rotation_deg=cmd.rotation_deg,
        translation=cmd.translation,
        translation_units="scene-fraction",
        seed=cmd.seed,
        holdout_every=cmd.eval_interval if cmd.nerf else 0,
    )
    names = train_camera_names(data)
    held = len(record["cameras"]) - len(names)
    print(
        f"1/{steps} perturbed {len(names)} poses by {cmd.rotation_deg:g} deg and {cmd.translation:g} x the scene radius "
        f"({record['translation_world']:.4f} units)" + (f"; {held} test views kept exact" if held else ""),
        flush=True,
    )

    print(f"2/{steps} posefix refine --poses {data / 'transforms.json'} (default pipeline: tracks from the images, "
          "robust bundle adjustment)", flush=True)
    refined, refine_summary = _refine(cmd, data, out / "refined")
    estimates: dict[str, CameraSet] = {NOISY: read_transforms_json(data / "transforms.json"), REFINED: refined}
    seconds = {REFINED: refine_summary["total_seconds"]}
    nerf_info: dict[str, Any] = {}
    if cmd.nerf:
        print(f"3/{steps} NeRFs from the noisy poses, for contrast ({cmd.method}, {cmd.iterations} iterations each)", flush=True)
        for label, optimizer in ((NERF_POSEFIX, {}), (NERF_NERFSTUDIO, {"class": "nerfstudio"})):
            estimates[label], nerf_info[label] = _train_nerf(cmd, data, out / "nerf", label, optimizer)
            seconds[label] = nerf_info[label]["train_seconds"]

    reference = load_reference(data)
    errors = {label: pose_errors(reference, est, names).summary for label, est in estimates.items()}
    _write_plots(data, estimates, names, out / "compare")

    before, after = errors[NOISY], errors[REFINED]
    ratio_r = before["rotation_median_deg"] / max(after["rotation_median_deg"], 1e-12)
    ratio_t = before["translation_median"] / max(after["translation_median"], 1e-12)
    total = time.perf_counter() - t0
    summary = {
        "scene": str(scene),
        "noise": {"rotation_deg": cmd.rotation_deg, "translation_fraction": cmd.translation, "seed": cmd.seed},
        "num_cameras": len(names),
        "before": before,
        "after": after,
        "errors": errors,
        "seconds": seconds,
        "improvement": {"rotation_median": ratio_r, "translation_median": ratio_t},
        "flagged": refine_summary.get("num_flagged"),
        "refined": str(out / "refined"),
        "total_seconds": total,
    }
    if cmd.nerf:
        summary["nerf"] = {"method": cmd.method, "iterations": cmd.iterations, **nerf_info}
    (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")

    print(f"{steps}/{steps} pose errors of the {len(names)} cameras against the ground truth (Sim(3)-aligned):", flush=True)
    print(results_table(summary, cmd))
    flagged = summary["flagged"] or 0
    print(f"  posefix refine: median rotation error {ratio_r:.0f}x smaller, median centre error {ratio_t:.0f}x smaller; "
          f"{flagged or 'no'} camera{'' if flagged == 1 else 's'} flagged (refined/report.csv); {total:.0f} s in all")
    print("wrote")
    for path, what in written(out, cmd.nerf):
        print(f"  {path}  {what}")
    return summary


def _refine(cmd: DemoOptions, data: Path, output: Path) -> tuple["CameraSet", dict[str, Any]]:
    """``posefix refine`` with its defaults on the noisy transforms.json; the refined poses (read back from
    the transforms.json it wrote) and its summary."""
    from nerf_posefix.io.transforms_json import read_transforms_json
    from nerf_posefix.workflows.refine import RefineOptions, refine

    result = refine(RefineOptions(output=output, poses=data / "transforms.json", threads=cmd.threads, seed=cmd.seed, quiet=not cmd.verbose))
    return read_transforms_json(output / "transforms.json"), result.summary


def _train_nerf(cmd: DemoOptions, data: Path, root: Path, label: str, camera_optimizer: dict[str, Any]) -> tuple["CameraSet", dict[str, Any]]:
    """One NeRF refiner of ``--nerf`` (the noisy-pose benchmark's set-up): trained from the noisy poses,
    its refined training poses exported to ``root/label/refined``; returns them and the run's facts."""
    from nerf_posefix.workflows.experiment import TrainSpec, build_trainer_config, evaluate_test_views, export_refined, train

    name = label.split("-", 1)[1]
    spec = TrainSpec(
        data=data,
        output_dir=root,
        experiment_name=name,
        timestamp="run",
        method=cmd.method,
        iterations=cmd.iterations,
        eval_interval=cmd.eval_interval,
        camera_optimizer=camera_optimizer,
    )
    run = train(build_trainer_config(spec), progress=True, quiet=not cmd.verbose, num_threads=cmd.threads)
    psnr = evaluate_test_views(run).get("psnr")
    refined = export_refined(run.config_path, root / name / "refined")
    return refined, {"run_dir": str(run.run_dir), "refined": str(root / name / "refined"), "train_seconds": run.seconds,
                     "test_psnr": psnr}


#: Row titles of the results table.
ROW_TITLES = {
    NOISY: "noisy input",
    REFINED: "posefix refine (default)",
    NERF_POSEFIX: "NeRF, homography prior",
    NERF_NERFSTUDIO: "NeRF, nerfstudio's L2",
}


def results_table(summary: dict[str, Any], cmd: DemoOptions | None = None) -> str:
    """The before/after table of a demo ``summary``: per pose set the median and mean rotation error, the
    median centre error (fraction of the scene radius) and the time it took."""
    iterations = (summary.get("nerf") or {}).get("iterations")
    lines = [f"  {'poses':<34}{'rotation median':>16}{'mean':>11}{'centre median':>16}{'time':>8}"]
    for label, err in summary["errors"].items():
        title = ROW_TITLES.get(label, label)
        if label.startswith("nerf-") and iterations:
            title += f", {iterations} it"
        secs = summary["seconds"].get(label)
        lines.append(
            f"  {title:<34}{err['rotation_median_deg']:>12.3f} deg{err['rotation_mean_deg']:>7.3f} deg"
            f"{100 * err['translation_median_rel']:>14.3f} %{(f'{secs:.0f} s' if secs is not None else ''):>8}"
        )
    return "\n".join(lines)


def written(out: Path, nerf: bool) -> list[tuple[str, str]]:
    """``(path, what it holds)`` of every path the demo wrote, each once."""
    entries = [
        (out / "data", "the noisy dataset (transforms.json, sparse/0, images) and its ground truth (transforms_gt.json, sparse_gt/0)"),
        (out / "refined", "posefix refine's output: refined transforms.json, sparse/0 with the tracks, report.csv / report.json"),
    ]
    if nerf:
        entries.append((out / "nerf", "the NeRF runs (posefix/, nerfstudio/: checkpoints, and refined/ the poses they refined)"))
    entries += [
        (out / "compare", "errors per camera and set (compare.json, per_camera.csv, summary.csv), error_cdf.png, top_view.png, frusta.ply"),
        (out / "summary.json", "the table above"),
    ]
    width = max(len(str(p)) for p, _ in entries)
    return [(f"{str(p):<{width}}", what) for p, what in entries]


def _write_plots(data: Path, estimates: dict[str, "CameraSet"], names: list[str], directory: Path) -> list[Path]:
    """``posefix compare``'s outputs (compare.json, CSVs, error_cdf.png, top_view.png, frusta.ply) for the
    estimates restricted to the cameras ``names``, against the ground truth of the dataset ``data``."""
    import numpy as np

    from nerf_posefix.workflows.compare import compare_camera_sets
    from nerf_posefix.workflows.experiment import load_reference
    from nerf_posefix.workflows.reports import write_outputs

    wanted = set(names)
    subsets = {label: est.subset(np.array([i for i, n in enumerate(est.names) if n in wanted])) for label, est in estimates.items()}
    report = compare_camera_sets(load_reference(data), subsets)
    write_outputs(report, directory)
    return [directory / "error_cdf.png", directory / "top_view.png"]
