"""``posefix demo``: perturb the bundled scene, refine its poses with ``posefix-small`` on the CPU and
print the pose errors before and after.

Steps (everything under ``--output``, default ``outputs/posefix-demo``):

1. ``data/``: the bundled scene (``assets/toybox``, 64 views of 128x128) with every training pose
   perturbed by exactly ``--rotation-deg`` degrees about a random axis and a centre offset of
   ``--translation`` × the scene radius (:func:`nerf_posefix.cli.perturb.perturb_dataset`). Every
   ``--eval-interval``-th view keeps its exact pose: those are the test views (nerfstudio's
   ``--eval-mode interval``), used for test-view PSNR only.
2. ``run/``: ``posefix-small`` trained in this process with nerfstudio's ``Trainer`` (CPU, no viewer,
   single-process data loading), with a progress bar.
3. ``refined/``: the refined training poses exported by the plugin's ``posefix export``.
4. ``compare/``: pose errors of the noisy and the refined training poses against the ground truth
   (``data/transforms_gt.json`` / ``data/sparse_gt/0``), after a Sim(3) alignment of the camera centres
   (:mod:`nerf_posefix.metrics`), as JSON/CSV and plots (error CDFs, top view).

This module also holds the in-process training helpers that ``scripts/benchmark.py`` uses:
:func:`build_trainer_config`, :func:`train`, :func:`evaluate_test_views`, :func:`pose_errors`.

Conventions: poses compared here are camera-to-world with OpenCV axes in the dataset's world frame
(see :mod:`nerf_posefix.camera_sets`); translations are in the scene's units (metres for the bundled
scene), rotations in degrees.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from nerf_posefix.errors import InputError

if TYPE_CHECKING:
    from nerfstudio.engine.trainer import Trainer, TrainerConfig

    from nerf_posefix.plugin.training import TrainingRun

    from nerf_posefix.camera_sets import CameraSet

#: Keys of a camera-optimizer override that are not config fields.
OPTIMIZER_CLASS_KEY = "class"


def bundled_scene(name: str = "toybox") -> Path:
    """``assets/<name>`` of the source checkout (the scene is not part of the installed package)."""
    return Path(__file__).resolve().parents[2] / "assets" / name


# ------------------------------------------------------------------------------------------------
# training helpers (shared with scripts/benchmark.py)


@dataclass
class TrainSpec:
    """One in-process training run.

    Attributes:
        data: dataset directory (``transforms.json``).
        output_dir: nerfstudio's ``output_dir``; the run goes to ``output_dir/experiment/method/timestamp``.
        experiment_name, timestamp: nerfstudio run naming.
        method: a registered nerfstudio method (``posefix-small``, ``posefix``).
        iterations: training iterations.
        eval_interval: every ``eval_interval``-th image (name order) is a test view (0: none, all train).
        camera_optimizer: overrides of the model's camera-optimizer config fields (e.g. ``{"weight": 0.1,
            "bounds": "points-per-camera"}``); the special key ``"class": "nerfstudio"`` replaces the
            optimizer by nerfstudio's own ``CameraOptimizerConfig`` (with its default L2 penalties unless
            overridden).
        camera_optimizer_scale: factors multiplying camera-optimizer fields after the overrides (weight
            sweeps: ``{"weight": 10}``).
        camera_lr_scale: factor multiplying the camera optimizer's learning rate (Adam ``lr`` and the
            scheduler's ``lr_final``, so the decay keeps its shape); 1 keeps the method's.
        model: overrides of other model config fields.
        seed: random seed (python, numpy, torch).
        rays_per_batch: training rays per iteration (None: the method's).
        device: torch device type, ``"cpu"`` (default) or ``"cuda"``.
    """

    data: Path
    output_dir: Path
    experiment_name: str = "posefix"
    timestamp: str = "run"
    method: str = "posefix-small"
    iterations: int = 1500
    eval_interval: int = 8
    camera_optimizer: dict[str, Any] = field(default_factory=dict)
    camera_optimizer_scale: dict[str, float] = field(default_factory=dict)
    camera_lr_scale: float = 1.0
    model: dict[str, Any] = field(default_factory=dict)
    seed: int = 42
    rays_per_batch: int | None = None
    device: str = "cpu"


def _camera_optimizer_config(base: Any, overrides: dict[str, Any], scale: dict[str, float] | None = None) -> Any:
    """Apply ``overrides``, then the factors ``scale``, to a copy of ``base`` (see :class:`TrainSpec`)."""
    overrides = dict(overrides)
    kind = overrides.pop(OPTIMIZER_CLASS_KEY, None)
    if kind == "nerfstudio":
        from nerfstudio.cameras.camera_optimizers import CameraOptimizerConfig

        config: Any = CameraOptimizerConfig(mode=getattr(base, "mode", "SO3xR3"))
    elif kind in (None, "posefix"):
        config = copy.deepcopy(base)
    else:
        raise InputError(f"camera_optimizer class must be 'posefix' or 'nerfstudio', got {kind!r}")
    for key, value in overrides.items():
        if not hasattr(config, key):
            raise InputError(f"camera optimizer {type(config).__name__} has no option {key!r}")
        setattr(config, key, value)
    for key, factor in (scale or {}).items():
        if not isinstance(getattr(config, key, None), (int, float)):
            raise InputError(f"camera optimizer {type(config).__name__} has no numeric option {key!r} to scale")
        setattr(config, key, float(getattr(config, key)) * float(factor))
    return config


def build_trainer_config(spec: TrainSpec) -> "TrainerConfig":
    """A nerfstudio ``TrainerConfig`` for ``spec``, made by the shared in-process runner
    (:func:`nerf_posefix.plugin.training.in_process_config`: ``spec.device``, no viewer, tensorboard
    events only, no evaluation during training, single-process ``VanillaDataManager``), plus the
    train/test split (nerfstudio's ``eval_mode interval``) and the model / camera-optimizer settings."""
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    from nerf_posefix.plugin.training import in_process_config

    if spec.iterations < 1:
        raise InputError(f"iterations must be >= 1, got {spec.iterations}")
    if spec.device not in ("cpu", "cuda"):
        raise InputError(f"device must be 'cpu' or 'cuda', got {spec.device!r}")

    def edit(config: "TrainerConfig") -> None:
        dm = config.pipeline.datamanager
        if not isinstance(dm.dataparser, NerfstudioDataParserConfig):
            dm.dataparser = NerfstudioDataParserConfig(data=Path(spec.data))
        if spec.rays_per_batch is not None:
            dm.train_num_rays_per_batch = int(spec.rays_per_batch)
        if spec.eval_interval > 0:
            dm.dataparser.eval_mode = "interval"
            dm.dataparser.eval_interval = int(spec.eval_interval)
        else:
            dm.dataparser.eval_mode = "all"
        model = config.pipeline.model
        for key, value in spec.model.items():
            if not hasattr(model, key):
                raise InputError(f"model config {type(model).__name__} has no option {key!r}")
            setattr(model, key, value)
        if spec.camera_optimizer or spec.camera_optimizer_scale:
            model.camera_optimizer = _camera_optimizer_config(
                model.camera_optimizer, spec.camera_optimizer, spec.camera_optimizer_scale
            )
        if spec.camera_lr_scale != 1.0:
            if not spec.camera_lr_scale > 0:
                raise InputError(f"camera_lr_scale must be > 0, got {spec.camera_lr_scale}")
            group = config.optimizers.get("camera_opt")
            if group is None:
                raise InputError(f"method {spec.method!r} has no camera_opt optimizer to scale")
            group["optimizer"] = copy.deepcopy(group["optimizer"])
            group["optimizer"].lr *= float(spec.camera_lr_scale)
            scheduler = group.get("scheduler")
            if scheduler is not None and getattr(scheduler, "lr_final", None) is not None:
                group["scheduler"] = copy.deepcopy(scheduler)
                group["scheduler"].lr_final *= float(spec.camera_lr_scale)

    return in_process_config(
        spec.method,
        data=Path(spec.data),
        output_dir=Path(spec.output_dir),
        max_iterations=int(spec.iterations),
        experiment_name=spec.experiment_name,
        timestamp=spec.timestamp,
        device=spec.device,  # type: ignore[arg-type]
        seed=int(spec.seed),
        steps_per_save=0,  # one checkpoint, at the end
        overrides=edit,
    )


@contextlib.contextmanager
def _quiet_nerfstudio(enabled: bool) -> Iterator[None]:
    """Silence nerfstudio's rich console and Python warnings while ``enabled`` (restored afterwards)."""
    import warnings

    from nerf_posefix.plugin.training import quiet_console

    with quiet_console(enabled), warnings.catch_warnings():
        if enabled:
            warnings.simplefilter("ignore")
        yield


def train(
    config: "TrainerConfig", progress: bool = True, quiet: bool = True, resume: bool = False,
    num_threads: int | None = None,
) -> "TrainingRun":
    """Train ``config`` in this process with the shared runner
    (:func:`nerf_posefix.plugin.training.run_training`: progress bar, checkpoint at the end, resumable).

    Returns:
        The :class:`~nerf_posefix.plugin.training.TrainingRun` (``trainer`` holds the trained pipeline;
        None when ``resume`` found the run already complete).
    """
    from nerf_posefix.plugin.training import run_training

    with _quiet_nerfstudio(quiet):
        return run_training(config, progress=progress, resume=resume, quiet=quiet, num_threads=num_threads)


def evaluate_test_views(run: "TrainingRun") -> dict[str, float]:
    """Render every test view once and average nerfstudio's image metrics (``psnr``, ``ssim``, ...).

    Test views are rendered at their dataset poses, which :mod:`nerf_posefix.cli.perturb`'s
    ``--holdout-every`` leaves exact. Uses the run's trained pipeline, or loads it from the checkpoint
    (nerfstudio's ``eval_setup``) when a resumed run was already complete. Empty if there are no test views."""
    import torch

    if run.trainer is not None:
        pipeline, step = run.trainer.pipeline, run.completed_iterations
    else:
        from nerfstudio.utils.eval_utils import eval_setup

        with _quiet_nerfstudio(True):
            _, pipeline, _, step = eval_setup(run.config_path, test_mode="test")
    if not len(getattr(pipeline.datamanager, "eval_dataset", []) or []):
        return {}
    pipeline.eval()
    with torch.no_grad(), _quiet_nerfstudio(True):
        metrics = pipeline.get_average_eval_image_metrics(step=step, output_path=None, get_std=False)
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) or hasattr(v, "item")}


# ------------------------------------------------------------------------------------------------
# pose errors


@dataclass
class PoseErrors:
    """Pose errors of one estimate against the ground truth (matched training cameras only).

    Attributes:
        names: ``M`` matched camera names (reference order).
        rotation_deg, translation, homography: per camera ``[M]`` after Sim(3) alignment
            (translation in ground-truth units).
        summary: aggregates: ``rotation_median_deg``, ``rotation_mean_deg``, ``translation_median``,
            ``translation_mean``, ``homography_median``, ``homography_mean``, ``ate_rmse``,
            ``translation_median_rel`` (fraction of the scene radius), ``num_cameras``, ``scale``.
    """

    names: list[str]
    rotation_deg: Any
    translation: Any
    homography: Any
    summary: dict[str, float]


def load_reference(data: Path) -> "CameraSet":
    """Ground truth of a perturbed dataset: ``sparse_gt/0`` (poses + 3D points, for per-camera homography
    bounds) when present, else ``transforms_gt.json``. Both hold the same poses (tested)."""
    from nerf_posefix.camera_sets import load_camera_set

    data = Path(data)
    for candidate in (data / "sparse_gt" / "0", data / "colmap" / "sparse_gt" / "0", data / "transforms_gt.json"):
        if candidate.exists():
            return load_camera_set(candidate)
    raise InputError(f"{data}: no ground truth (transforms_gt.json or sparse_gt/0)")


def pose_errors(reference: "CameraSet", estimate: "CameraSet", names: list[str] | None = None) -> PoseErrors:
    """Errors of ``estimate`` against ``reference`` over the cameras in both (and in ``names`` if given),
    after a Sim(3) alignment (:func:`nerf_posefix.metrics.compare_poses`), with per-camera homography
    bounds from the reference's 3D points (:func:`nerf_posefix.cli.compare.homography_bounds`)."""
    import numpy as np

    from nerf_posefix.camera_sets import match_camera_sets
    from nerf_posefix.cli.compare import homography_bounds
    from nerf_posefix.metrics import compare_poses
    from nerf_posefix.noise import scene_radius

    match = match_camera_sets(reference, estimate, by="name")
    ref_idx, est_idx = match.ref_index, match.est_index
    if names is not None:
        wanted = set(names)
        keep = np.array([reference.names[i] in wanted for i in ref_idx], dtype=bool)
        ref_idx, est_idx = ref_idx[keep], est_idx[keep]
    xmin, xmax, _ = homography_bounds(reference, None)
    comp = compare_poses(
        reference.c2w[ref_idx], estimate.c2w[est_idx], mode="sim3", xmin=xmin[ref_idx], xmax=xmax[ref_idx]
    )
    radius = scene_radius(reference.c2w)
    summary = {
        "rotation_median_deg": float(np.median(comp.rotation_deg)),
        "rotation_mean_deg": float(np.mean(comp.rotation_deg)),
        "translation_median": float(np.median(comp.translation)),
        "translation_mean": float(np.mean(comp.translation)),
        "translation_median_rel": float(np.median(comp.translation) / radius) if radius > 0 else float("nan"),
        "homography_median": float(np.median(comp.homography)),
        "homography_mean": float(np.mean(comp.homography)),
        "ate_rmse": float(comp.ate_rmse),
        "num_cameras": int(len(ref_idx)),
        "scale": float(comp.alignment.scale),
    }
    return PoseErrors(
        names=[reference.names[i] for i in ref_idx],
        rotation_deg=comp.rotation_deg,
        translation=comp.translation,
        homography=comp.homography,
        summary=summary,
    )


def train_camera_names(data: Path) -> list[str]:
    """Names of the cameras that ``perturbation.json`` did not hold out (all cameras if no record)."""
    record = Path(data) / "perturbation.json"
    if record.is_file():
        cams = json.loads(record.read_text())["cameras"]
        return [c["name"] for c in cams if not c["held_out"]]
    from nerf_posefix.camera_sets import load_camera_set

    return load_camera_set(Path(data)).names


def export_refined(config_path: Path, output: Path) -> "CameraSet":
    """Export the refined training poses of a run with the plugin's ``posefix export`` into ``output``
    and return them (camera-to-world, OpenCV axes, input world frame)."""
    from nerf_posefix.camera_sets import load_camera_set
    from nerf_posefix.cli.export import Export

    with open(os.devnull, "w") as sink, _quiet_nerfstudio(True), contextlib.redirect_stdout(sink):
        Export(load_config=Path(config_path), output=Path(output), overwrite=True).run()
    return load_camera_set(Path(output))


# ------------------------------------------------------------------------------------------------
# the command


@dataclass
class Demo:
    """Perturb the bundled scene (3 deg / 5 % of the scene radius), refine the poses with posefix-small
    on the CPU, and print the pose errors before and after (a few minutes on 2 cores)."""

    output: Path = Path("outputs/posefix-demo")
    """Directory for the noisy dataset, the run, the refined poses and the plots."""
    iterations: int = 1200
    """Training iterations (about 0.3 s each on 2 idle CPU cores)."""
    scene: Path | None = None
    """Dataset to perturb (default: the bundled assets/toybox)."""
    rotation_deg: float = 3.0
    """Rotation noise per camera (degrees, random axis)."""
    translation: float = 0.05
    """Centre noise per camera, as a fraction of the scene radius."""
    seed: int = 0
    """Seed of the pose noise (training uses a fixed seed as well)."""
    eval_interval: int = 8
    """Every N-th view is a test view at its exact pose (0: all views train)."""
    method: str = "posefix-small"
    """nerfstudio method to train."""
    threads: int | None = None
    """torch CPU threads while training (default: torch's, one per core); 1 is faster when other jobs
    keep the cores busy."""
    overwrite: bool = False
    """Replace --output if it exists."""

    def run(self) -> None:
        run_demo(self)


def _fmt_row(label: str, s: dict[str, float]) -> str:
    return (
        f"  {label:<9} rotation median {s['rotation_median_deg']:7.3f} deg  mean {s['rotation_mean_deg']:7.3f} deg   "
        f"translation median {s['translation_median']:.4f} ({100 * s['translation_median_rel']:.2f} % of radius)  "
        f"ATE {s['ate_rmse']:.4f}"
    )


def run_demo(cmd: Demo) -> dict[str, Any]:
    """Run the demo (see the module docstring); returns the summary written to ``summary.json``."""
    from nerf_posefix.cli.perturb import perturb_dataset

    scene = Path(cmd.scene) if cmd.scene is not None else bundled_scene()
    if not (scene / "transforms.json").is_file():
        raise InputError(
            f"{scene}: no transforms.json (the bundled scene lives in the source checkout's assets/; pass --scene DIR)"
        )
    out = Path(cmd.output)
    if out.exists():
        if not cmd.overwrite:
            raise InputError(f"{out}: already exists (pass --overwrite to replace it, or --output DIR)")
        is_demo = (out / "summary.json").is_file() or (out / "data" / "perturbation.json").is_file()
        if not is_demo and any(out.iterdir()):
            raise InputError(f"{out}: exists and is not a posefix demo directory; refusing to delete it")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    print(f"posefix demo: {scene} -> {out}")

    data = out / "data"
    record = perturb_dataset(
        scene,
        data,
        rotation_deg=cmd.rotation_deg,
        translation=cmd.translation,
        translation_units="scene-fraction",
        seed=cmd.seed,
        holdout_every=cmd.eval_interval,
    )
    names = train_camera_names(data)
    print(
        f"1/4 perturbed {len(names)} training poses by {cmd.rotation_deg:g} deg and {cmd.translation:g} x scene radius "
        f"({record['translation_world']:.4f} units); {len(record['cameras']) - len(names)} test views kept exact"
    )

    print(f"2/4 training {cmd.method} for {cmd.iterations} iterations on the CPU (loading nerfstudio...)")
    spec = TrainSpec(
        data=data,
        output_dir=out,
        experiment_name="run",
        timestamp="posefix",
        method=cmd.method,
        iterations=cmd.iterations,
        eval_interval=cmd.eval_interval,
    )
    config = build_trainer_config(spec)
    run = train(config, progress=True, quiet=True, num_threads=cmd.threads)
    train_seconds = run.seconds
    run_dir = run.run_dir
    psnr = evaluate_test_views(run).get("psnr")

    print("3/4 exporting the refined poses")
    refined = export_refined(run.config_path, out / "refined")

    from nerf_posefix.camera_sets import read_transforms_json

    reference = load_reference(data)
    noisy = read_transforms_json(data / "transforms.json")
    before = pose_errors(reference, noisy, names)
    after = pose_errors(reference, refined, names)
    plots = _write_plots(data, {"noisy": noisy, "refined": refined}, names, out / "compare")

    b, a = before.summary, after.summary
    ratio_r = b["rotation_median_deg"] / max(a["rotation_median_deg"], 1e-12)
    ratio_t = b["translation_median"] / max(a["translation_median"], 1e-12)
    print(f"4/4 pose errors of the {len(names)} training cameras (Sim(3)-aligned to the ground truth):")
    print(_fmt_row("before", b))
    print(_fmt_row("after", a))
    print(f"  median rotation error {ratio_r:.1f}x smaller, median translation error {ratio_t:.1f}x smaller")
    if psnr is not None:
        print(f"  test-view PSNR {psnr:.2f} dB ({len(reference) - len(names)} held-out views at exact poses)")
    summary = {
        "scene": str(scene),
        "method": cmd.method,
        "iterations": cmd.iterations,
        "noise": {"rotation_deg": cmd.rotation_deg, "translation_fraction": cmd.translation, "seed": cmd.seed},
        "before": b,
        "after": a,
        "improvement": {"rotation_median": ratio_r, "translation_median": ratio_t},
        "test_psnr": psnr,
        "train_seconds": train_seconds,
        "total_seconds": time.perf_counter() - t0,
        "run_dir": str(run_dir),
        "refined": str(out / "refined"),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"refined poses: {out / 'refined'}   run: {run_dir}")
    print(f"plots: {', '.join(str(p) for p in plots)}   summary: {out / 'summary.json'}")
    print(f"total {summary['total_seconds']:.0f} s (training {train_seconds:.0f} s)")
    return summary


def _write_plots(data: Path, estimates: dict[str, "CameraSet"], names: list[str], directory: Path) -> list[Path]:
    """``posefix compare``'s outputs (compare.json, CSVs, error_cdf.png, top_view.png, frusta.ply) for the
    estimates restricted to the cameras ``names``, against the ground truth of the dataset ``data``."""
    from rich.console import Console

    from nerf_posefix.camera_sets import CameraSet
    from nerf_posefix.cli.compare import Compare, run_compare, write_outputs

    directory.mkdir(parents=True, exist_ok=True)
    wanted = set(names)
    paths = []
    for label, est in estimates.items():
        keep = [i for i, n in enumerate(est.names) if n in wanted]
        path = directory / f"{label}.json"
        _write_transforms(CameraSet(names=[est.names[i] for i in keep], c2w=est.c2w[keep], source=label), path)
        paths.append(path)
    reference = next(
        (p for p in (data / "sparse_gt" / "0", data / "transforms_gt.json") if p.exists()), data / "transforms_gt.json"
    )
    with open(os.devnull, "w") as sink:
        report = run_compare(Compare(estimates=tuple(paths), reference=reference), Console(file=sink))
    write_outputs(report, directory)
    return [directory / "error_cdf.png", directory / "top_view.png"]


def _write_transforms(camera_set: "CameraSet", path: Path) -> None:
    """Minimal transforms.json (file_path + camera-to-world OpenGL) of a camera set."""
    from nerf_posefix.poses import opencv_to_opengl

    c2w_gl = opencv_to_opengl(camera_set.c2w)
    frames = [{"file_path": f"images/{n}", "transform_matrix": c2w_gl[i].tolist()} for i, n in enumerate(camera_set.names)]
    path.write_text(json.dumps({"frames": frames}, indent=1))


if __name__ == "__main__":  # pragma: no cover
    import tyro

    tyro.cli(Demo).run()
    sys.exit(0)
