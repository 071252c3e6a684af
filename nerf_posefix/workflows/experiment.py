"""Training experiments in process: one config per :class:`TrainSpec`, test-view metrics, pose errors.

What ``posefix demo`` and the benchmarks (``benchmarks/noisy_pose.py``) train and measure:
:func:`build_trainer_config`, :func:`train`, :func:`evaluate_test_views`, :func:`pose_errors`.

Conventions: poses compared here are camera-to-world with OpenCV axes in the dataset's world frame
(see :mod:`nerf_posefix.io.camera_set`); translations are in the scene's units (metres for the bundled
scene) and as fractions of the scene radius (:func:`nerf_posefix.geometry.poses.scene_radius`),
rotations in degrees.
"""

from __future__ import annotations

import contextlib
import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from nerf_posefix.errors import InputError
from nerf_posefix.geometry.metrics import compare_poses
from nerf_posefix.geometry.poses import scene_radius
from nerf_posefix.io.camera_set import CameraSet, match_camera_sets
from nerf_posefix.workflows.compare import homography_bounds
from nerf_posefix.workflows.pose_sources import load_pose_source

if TYPE_CHECKING:
    from nerfstudio.engine.trainer import TrainerConfig

    from nerf_posefix.plugin.training import TrainingRun


def bundled_scene(name: str = "toybox") -> Path:
    """``assets/<name>`` of the source checkout (the scene is not part of the installed package)."""
    return Path(__file__).resolve().parents[2] / "assets" / name


#: Keys of a camera-optimizer override that are not config fields.
OPTIMIZER_CLASS_KEY = "class"




# ------------------------------------------------------------------------------------------------
# training helpers (shared with benchmarks/noisy_pose.py)


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
        tracks: the posefix optimizer's track term (``"auto"`` or ``"off"``). Off by default: the bundled
            scenes' COLMAP models carry the generator's exact observations, and a benchmark that fed them
            to the track term would hand it the answer (tracks built from the images come with issue 16).
        front_end: the posefix pipeline's front end (``"on"``: the SfM stages of posefix refine adjust the
            dataset's poses before training; :mod:`nerf_posefix.plugin.front_end`). Off by default here, so
            that a row measures the refiner it names from the poses it was given.
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
    tracks: str = "off"
    front_end: str = "off"
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
    if kind in (None, "posefix") and hasattr(base, "prior"):
        # the harness's posefix rows are the paper's homography prior unless they say otherwise (the methods'
        # default is its pixel form since issue 21), so earlier benchmark rows keep their meaning
        overrides.setdefault("prior", "homography")
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
        # always (not only with overrides): the harness's default prior, see _camera_optimizer_config
        model.camera_optimizer = _camera_optimizer_config(model.camera_optimizer, spec.camera_optimizer, spec.camera_optimizer_scale)
        if hasattr(model.camera_optimizer, "tracks"):
            model.camera_optimizer.tracks = spec.tracks
        if hasattr(config.pipeline, "front_end"):
            config.pipeline.front_end = spec.front_end
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
def quiet_nerfstudio(enabled: bool) -> Iterator[None]:
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

    with quiet_nerfstudio(quiet):
        return run_training(config, progress=progress, resume=resume, quiet=quiet, num_threads=num_threads)


def evaluate_test_views(run: "TrainingRun") -> dict[str, float]:
    """Render every test view once and average nerfstudio's image metrics (``psnr``, ``ssim``, ...).

    Test views are rendered at their dataset poses, which :mod:`nerf_posefix.workflows.perturb`'s
    ``--holdout-every`` leaves exact. Uses the run's trained pipeline, or loads it from the checkpoint
    (nerfstudio's ``eval_setup``) when a resumed run was already complete. Empty if there are no test views."""
    import torch

    if run.trainer is not None:
        pipeline, step = run.trainer.pipeline, run.completed_iterations
    else:
        from nerfstudio.utils.eval_utils import eval_setup

        with quiet_nerfstudio(True):
            _, pipeline, _, step = eval_setup(run.config_path, test_mode="test")
    if not len(getattr(pipeline.datamanager, "eval_dataset", []) or []):
        return {}
    pipeline.eval()
    with torch.no_grad(), quiet_nerfstudio(True):
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


def load_reference(data: Path) -> CameraSet:
    """Ground truth of a perturbed dataset: ``sparse_gt/0`` (poses + 3D points, for per-camera homography
    bounds) when present, else ``transforms_gt.json``. Both hold the same poses (tested)."""
    data = Path(data)
    for candidate in (data / "sparse_gt" / "0", data / "colmap" / "sparse_gt" / "0", data / "transforms_gt.json"):
        if candidate.exists():
            return load_pose_source(candidate)
    raise InputError(f"{data}: no ground truth (transforms_gt.json or sparse_gt/0)")


def pose_errors(reference: CameraSet, estimate: CameraSet, names: list[str] | None = None) -> PoseErrors:
    """Errors of ``estimate`` against ``reference`` over the cameras in both (and in ``names`` if given),
    after a Sim(3) alignment (:func:`nerf_posefix.geometry.metrics.compare_poses`), with per-camera homography
    bounds from the reference's 3D points (:func:`nerf_posefix.workflows.compare.homography_bounds`)."""
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
    radius = scene_radius(reference.c2w[:, :3, 3])
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
    return load_pose_source(Path(data)).names


def export_refined(config_path: Path, output: Path) -> CameraSet:
    """Read a run once, write its refined poses into ``output`` as ``posefix export`` does (replaced if it
    exists), and return its refined training cameras (camera-to-world, OpenCV axes, input world frame)."""
    from nerf_posefix.plugin.run_reader import refined_input_poses  # lazy: nerfstudio
    from nerf_posefix.workflows.export import write_export

    with quiet_nerfstudio(True):
        refined = refined_input_poses(config_path)
    write_export(refined, output)
    cameras = refined.cameras.subset(np.nonzero(refined.refined)[0])
    cameras.source = str(refined.run.config_path)
    return cameras

