"""``posefix refine``: COLMAP model in, refined COLMAP model out, in the same world frame.

::

    posefix refine --colmap-model scene/sparse/0 --images scene/images --output scene_refined

Steps
-----
1. **Validate** (nothing is written before this passes): the COLMAP model is read (binary or text,
   :func:`nerf_posefix.io.colmap.read_colmap_model`, i.e. nerfstudio's reader) and checked against the
   images on disk: every image of the model must exist under ``--images`` and have its camera's size, and
   every camera used must be one of :data:`REFINE_CAMERA_MODELS`, and the model must have 3D points
   (the homography prior's depth bounds come from them). Missing or truncated model files, missing
   images, size mismatches, unsupported camera models and point-less models raise one
   :class:`~nerf_posefix.errors.InputError` naming the file (the CLI prints it and exits with code 2).
2. **Convert** into the work directory ``OUT.partial/data`` (the input is never written to): a binary
   copy of the model (``sparse/0``), symbolic links to the images (``images/``; names containing
   directories are flattened, e.g. ``cam1/0001.jpg`` -> ``cam1__0001.jpg``), and nerfstudio's own
   ``colmap_to_json`` conversion (as ``ns-process-data``) to ``transforms.json`` + ``sparse_pc.ply``.
3. **Train** the posefix method (:mod:`nerf_posefix.plugin.training`: in process, progress bar, CPU
   unless a GPU is asked for and present) on all images (``eval_mode=all``: every camera is refined),
   with the homography prior's depth bounds from the model's 3D points (``--bounds global``: the
   paper's global variant; ``per-camera``: its local variant). Checkpoints go to
   ``OUT.partial/runs/refine/METHOD/run`` every ``--checkpoint-every`` iterations and on Ctrl-C/SIGTERM;
   ``--resume`` continues an interrupted run from there.
4. **Export** (:func:`nerf_posefix.plugin.export.load_refined_camera_set`): the refined poses mapped back
   to the original COLMAP world frame (the dataparser transform and scale and the conversion's
   ``applied_transform`` undone; the correction is applied to the float64 input poses, so
   ``--iterations 0`` returns the input ``qvec``/``tvec``).
5. **Write** ``OUT`` atomically (assembled in a hidden temporary directory beside ``OUT``, then renamed;
   ``OUT.partial`` is removed on success):

   * ``sparse/0/{cameras,images,points3D}.{bin,txt}``: the input model with refined image poses
     (world-to-camera ``qvec``/``tvec``, OpenCV camera axes, COLMAP world frame; each ``qvec`` keeps the
     sign hemisphere of its input). Intrinsics, image/camera ids, 2D keypoints and ``points3D`` are
     **carried over unchanged** (not re-triangulated: the points keep their input positions and
     tracks; re-run COLMAP's ``point_triangulator`` on the refined poses if you need points consistent
     with them). No ``rigs``/``frames`` files are written (COLMAP >= 3.12 would take poses from them).
   * ``transforms.json`` + ``sparse_pc.ply``: nerfstudio's ``colmap_to_json`` of the refined model,
     exactly what ``ns-process-data`` makes of it (camera-to-world, OpenGL axes, world with COLMAP's y/z
     swapped as recorded in ``applied_transform``; file paths ``./images/NAME``).
   * ``images``: a symbolic link to the input image directory (``--copy-images``: a copy), so
     ``OUT`` is a complete COLMAP / nerfstudio dataset.
   * ``report.csv`` / ``report.json``: per image, how far it moved from the input (``rotation_deg``:
     geodesic angle; ``translation``: camera-centre distance in input units, and as a fraction of the
     scene radius, the largest distance of an input camera centre from their centroid;
     ``homography_error``: the homography pose error between the input and the refined pose with the
     depth bounds the training used, converted to input units) and ``flagged`` when it moved more than
     ``--move-threshold-deg`` or ``--move-threshold-rel``. ``report.json`` adds the options, timings,
     the bounds and the overall drift (the Sim(3) that best maps the refined onto the input cameras).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Optional

import numpy as np

from nerf_posefix.errors import InputError
from nerf_posefix.io.atomic import atomic_directory, check_output_dir, overlaps
from nerf_posefix.io.camera_set import CameraSet
from nerf_posefix.io.colmap import MODEL_FILES, ColmapModel, find_colmap_model_dir, read_colmap_model, write_colmap_model
from nerf_posefix.workflows.refine_report import RefineResult, build_report, write_report

#: COLMAP camera models ``posefix refine`` accepts (those nerfstudio's ``colmap_to_json`` maps to a
#: perspective ``OPENCV`` camera).
REFINE_CAMERA_MODELS: tuple[str, ...] = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV")
#: Fewest images a model must have.
MIN_IMAGES = 3
PARTIAL_SUFFIX = ".partial"
STAMP_FILE = "refine_input.json"
BOUNDS_MODES = {"global": "points-global", "per-camera": "points-per-camera"}


@dataclass
class RefineOptions:
    """Refine the camera poses of a COLMAP model with a NeRF under the homography pose prior, and write
    a refined COLMAP model (same world frame, intrinsics and points), a nerfstudio transforms.json and a
    per-image report of how far each camera moved."""

    colmap_model: Path
    """COLMAP model directory (cameras/images/points3D, .bin or .txt), e.g. scene/sparse/0. Never modified."""
    images: Path
    """Directory of the model's images (image names are relative to it). Never modified."""
    output: Path
    """Output directory to create (must not exist unless --overwrite)."""
    method: Literal["posefix", "posefix-small"] = "posefix-small"
    """posefix-small: sized for a CPU; posefix: nerfacto-sized (GPU)."""
    iterations: Optional[int] = None
    """Training iterations (default: the method's, 3000 for posefix-small, 30000 for posefix); 0 trains
    nothing and returns the input poses."""
    regularizer: Literal["homography", "nerfstudio", "none"] = "homography"
    """What holds the poses near the input while they are refined: the homography pose prior (this
    package), nerfstudio's own L2 penalties on the adjustment (its camera_opt_regularizer with its
    default trans_l2_penalty / rot_l2_penalty; for comparison), or nothing."""
    bounds: Literal["global", "per-camera"] = "global"
    """Depth range of the homography prior from the model's 3D points: one range for the scene (global)
    or one per camera from the points it observes (per-camera). Also used by the report's homography
    error, whatever the regulariser."""
    move_threshold_deg: float = 1.0
    """Flag images whose rotation moved more than this (degrees)."""
    move_threshold_rel: float = 0.02
    """Flag images whose centre moved more than this fraction of the scene radius."""
    downscale_factor: int = 1
    """Train on images downscaled by this integer factor (resized copies in the work directory)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Training device; auto: cuda when available, else cpu."""
    threads: int = 0
    """torch CPU threads (0: torch's default, one per core). On a CPU shared with other jobs, 1 can be
    several times faster (OpenMP oversubscription)."""
    checkpoint_every: int = 250
    """Save a checkpoint every this many iterations (for --resume)."""
    seed: int = 42
    """Random seed of the training."""
    copy_images: bool = False
    """Copy the images into OUT/images instead of linking to the input directory."""
    overwrite: bool = False
    """Replace OUT if it exists, and discard an interrupted run's work directory OUT.partial."""
    resume: bool = False
    """Continue an interrupted run from the last checkpoint in OUT.partial."""
    quiet: bool = False
    """Hide nerfstudio's console messages (the progress bar and the summary stay)."""


# ---------------------------------------------------------------------------------------------
# validation


@dataclass
class ValidatedInput:
    """A COLMAP model checked against its images.

    Attributes:
        model: the model (world-to-camera poses, OpenCV axes, COLMAP world frame).
        model_dir: the directory it was read from; ``ext``: ``".bin"`` or ``".txt"``.
        images_dir: the image directory (absolute).
        image_paths: ``{image name: absolute path}``.
        flat_names: ``{image name: file name in the work directory}`` (no directories).
    """

    model: ColmapModel
    model_dir: Path
    ext: str
    images_dir: Path
    image_paths: dict[str, Path]
    flat_names: dict[str, str]

    def fingerprint(self) -> str:
        """A hash of the cameras and image poses (to recognise the input of a work directory)."""
        h = hashlib.sha256()
        for cam_id in sorted(self.model.cameras):
            cam = self.model.cameras[cam_id]
            h.update(repr((cam_id, cam.model, int(cam.width), int(cam.height), np.asarray(cam.params).tolist())).encode())
        for image_id in self.model.image_ids():
            im = self.model.images[image_id]
            h.update(repr((image_id, im.name, im.camera_id, np.asarray(im.qvec).tolist(), np.asarray(im.tvec).tolist())).encode())
        h.update(str(len(self.model.points3D)).encode())
        return h.hexdigest()


def _flat_names(names: list[str]) -> dict[str, str]:
    """Work-directory file names: the image names, with directory separators replaced by ``__`` (or
    numbered when that is ambiguous)."""
    if not any("/" in n or "\\" in n for n in names):
        return {n: n for n in names}
    flat = {n: n.replace("\\", "/").strip("/").replace("/", "__") for n in names}
    if len(set(flat.values())) == len(names):
        return flat
    return {n: f"{i:06d}_{Path(n).name}" for i, n in enumerate(names)}


def validate_inputs(colmap_model: Path, images: Path) -> ValidatedInput:
    """Read the model and check it against the images on disk (see the module docstring). Writes nothing.

    Raises:
        InputError: naming the offending file.
    """
    from PIL import Image, UnidentifiedImageError

    colmap_model = Path(colmap_model)
    for ext in (".bin", ".txt"):  # a model directory missing one of its files: name that file
        present = [k for k in MODEL_FILES if (colmap_model / f"{k}{ext}").is_file()]
        if present and len(present) < len(MODEL_FILES) and find_colmap_model_dir(colmap_model) in (None, (colmap_model, ext)):
            missing = next(k for k in MODEL_FILES if k not in present)
            raise InputError(f"{colmap_model / f'{missing}{ext}'}: missing COLMAP {missing} file")
    model = read_colmap_model(colmap_model)  # InputError naming the file: missing, truncated, bad model
    found = find_colmap_model_dir(colmap_model)
    assert found is not None
    model_dir, ext = found
    cameras_file, images_file = model_dir / f"cameras{ext}", model_dir / f"images{ext}"
    if not images.is_dir():
        raise InputError(f"{images}: no such image directory")
    if len(model.images) < MIN_IMAGES:
        raise InputError(f"{images_file}: the model has {len(model.images)} images; refining needs at least {MIN_IMAGES}")
    used = sorted({im.camera_id for im in model.images.values()})
    for cam_id in used:
        cam = model.cameras[cam_id]
        if cam.model not in REFINE_CAMERA_MODELS:
            raise InputError(
                f"{cameras_file}: camera {cam_id} uses the camera model {cam.model}, which posefix refine does not "
                f"support (supported: {', '.join(REFINE_CAMERA_MODELS)})"
            )
    if not model.points3D:
        raise InputError(
            f"{model_dir / f'points3D{ext}'}: the model has no 3D points; posefix refine needs the sparse points "
            "(depth bounds of the homography prior, nerfstudio's conversion)"
        )
    images_dir = images.resolve()
    paths: dict[str, Path] = {}
    for image_id in model.image_ids():
        im = model.images[image_id]
        path = images_dir / im.name
        if not path.is_file():
            raise InputError(f"{images / im.name}: image file not found (image {image_id} {im.name!r} of {images_file})")
        try:
            with Image.open(path) as img:
                width, height = img.size
        except (OSError, UnidentifiedImageError) as err:
            raise InputError(f"{images / im.name}: cannot read the image ({err})") from None
        cam = model.cameras[im.camera_id]
        if (int(width), int(height)) != (int(cam.width), int(cam.height)):
            raise InputError(
                f"{images / im.name}: the image is {width}x{height} pixels but its camera {cam.id} in {cameras_file} "
                f"is {cam.width}x{cam.height}"
            )
        paths[im.name] = path
    names = [model.images[i].name for i in model.image_ids()]
    return ValidatedInput(model, model_dir, ext, images_dir, paths, _flat_names(names))


# ---------------------------------------------------------------------------------------------
# work directory


def partial_dir(output: Path) -> Path:
    """The work directory of a refine run writing ``output``: ``OUT.partial`` beside it."""
    output = Path(output)
    return output.parent / f"{output.name}{PARTIAL_SUFFIX}"


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.symlink(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def prepare_training_data(inp: ValidatedInput, data_dir: Path, downscale_factor: int = 1) -> Path:
    """Write the training dataset into ``data_dir`` (see the module docstring, step 2): assembled in
    ``data_dir.tmp`` and renamed, so ``data_dir`` is complete or absent.

    Returns:
        ``data_dir / "transforms.json"``.
    """
    import contextlib
    import io

    from nerfstudio.process_data.colmap_utils import colmap_to_json
    from PIL import Image

    tmp = data_dir.with_name(data_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "images").mkdir(parents=True)
    for name, flat in inp.flat_names.items():
        _link_or_copy(inp.image_paths[name], tmp / "images" / flat)
    if downscale_factor > 1:
        (tmp / f"images_{downscale_factor}").mkdir()
        for name, flat in inp.flat_names.items():
            with Image.open(inp.image_paths[name]) as img:
                size = (max(1, img.width // downscale_factor), max(1, img.height // downscale_factor))
                img.convert("RGB").resize(size, Image.Resampling.LANCZOS).save(tmp / f"images_{downscale_factor}" / flat)
    images = {k: im._replace(name=inp.flat_names[im.name]) for k, im in inp.model.images.items()}
    recon = write_colmap_model(replace(inp.model, images=images), tmp / "sparse" / "0", formats=("bin",))
    with contextlib.redirect_stdout(io.StringIO()):  # colmap_to_json prints the cameras of multi-camera models
        colmap_to_json(recon_dir=recon, output_dir=tmp)
    os.replace(tmp, data_dir)
    return data_dir / "transforms.json"


def _stamp(options: RefineOptions, inp: ValidatedInput) -> dict[str, Any]:
    return {
        "colmap_model": str(inp.model_dir.resolve()),
        "images": str(inp.images_dir),
        "fingerprint": inp.fingerprint(),
        "method": options.method,
        "bounds": options.bounds,
        "regularizer": options.regularizer,
        "downscale_factor": options.downscale_factor,
        "seed": options.seed,
    }


def _check_output_paths(options: RefineOptions) -> None:
    """OUT must not be, hold or sit inside an input (resolved paths), nor its work directory; it may exist
    only with --overwrite and only if posefix wrote it."""
    check_output_dir(options.output, [("--colmap-model", options.colmap_model), ("--images", options.images)], options.overwrite)
    for inp in (options.colmap_model, options.images):
        if os.path.lexists(inp) and overlaps(partial_dir(options.output), inp):
            raise InputError(f"{partial_dir(options.output)}: the work directory of --output would hold or lie inside the input {inp}")


# ---------------------------------------------------------------------------------------------
# output


def refined_model(inp: ValidatedInput, refined: CameraSet) -> ColmapModel:
    """The input model with the refined poses (by image name); each ``qvec`` keeps its input's sign."""
    model = inp.model.with_poses(CameraSet(names=refined.names, c2w=refined.c2w, source=refined.source))
    images = dict(model.images)
    for image_id, im in images.items():
        q_in = np.asarray(inp.model.images[image_id].qvec, dtype=np.float64)
        q = np.asarray(im.qvec, dtype=np.float64)
        if float(q @ q_in) < 0:
            images[image_id] = im._replace(qvec=-q)
    return replace(model, images=images, path="")


def _write_output(options: RefineOptions, inp: ValidatedInput, model: ColmapModel, reports, summary) -> Path:  # noqa: ANN001
    """Assemble OUT in a temporary sibling directory and rename it into place."""
    import contextlib
    import io

    from nerfstudio.process_data.colmap_utils import colmap_to_json

    out = Path(options.output)
    with atomic_directory(out) as tmp:
        sparse = write_colmap_model(model, tmp / "sparse" / "0", formats=("bin", "txt"))
        with contextlib.redirect_stdout(io.StringIO()):
            colmap_to_json(recon_dir=sparse, output_dir=tmp)
        if options.copy_images:
            (tmp / "images").mkdir()
            for name, path in inp.image_paths.items():
                (tmp / "images" / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, tmp / "images" / name)
        else:
            os.symlink(inp.images_dir, tmp / "images", target_is_directory=True)
        write_report(tmp, reports, summary)
    return out


# ---------------------------------------------------------------------------------------------
# the command


def regularizer_overrides(regularizer: str) -> dict[str, Any]:
    """Camera-optimizer settings of ``--regularizer`` (the posefix optimizer is kept in every case, so
    export, report and bounds work the same): ``homography``: the method's homography prior, no L2
    penalties; ``nerfstudio``: homography weight 0 and nerfstudio's default ``trans_l2_penalty`` /
    ``rot_l2_penalty`` (read from its ``CameraOptimizerConfig``: the same loss as its
    ``camera_opt_regularizer``); ``none``: no regulariser at all."""
    key = "pipeline.model.camera_optimizer."
    if regularizer == "homography":
        return {key + "trans_l2_penalty": 0.0, key + "rot_l2_penalty": 0.0}
    if regularizer == "nerfstudio":
        from nerfstudio.cameras.camera_optimizers import CameraOptimizerConfig

        defaults = CameraOptimizerConfig()
        return {key + "weight": 0.0, key + "trans_l2_penalty": defaults.trans_l2_penalty,
                key + "rot_l2_penalty": defaults.rot_l2_penalty}
    if regularizer == "none":
        return {key + "weight": 0.0, key + "trans_l2_penalty": 0.0, key + "rot_l2_penalty": 0.0}
    raise InputError(f"--regularizer must be homography, nerfstudio or none, got {regularizer!r}")


def refine(options: RefineOptions, callback: Optional[Callable[[int, Optional[float]], None]] = None) -> RefineResult:
    """Run ``posefix refine`` (see the module docstring).

    Args:
        options: the command's options.
        callback: called after every training iteration with ``(iterations done, loss)`` (tests use it to
            interrupt a run).

    Raises:
        InputError, FileExistsError: bad input or options (nothing written).
        KeyboardInterrupt: interrupted during training (a checkpoint is kept in ``OUT.partial``).
    """
    t_start = time.perf_counter()
    if options.iterations is not None and options.iterations < 0:
        raise InputError(f"--iterations must be >= 0, got {options.iterations}")
    if options.downscale_factor < 1:
        raise InputError(f"--downscale-factor must be >= 1, got {options.downscale_factor}")
    if options.threads < 0:
        raise InputError(f"--threads must be >= 0, got {options.threads}")
    if options.checkpoint_every < 1:
        raise InputError(f"--checkpoint-every must be >= 1, got {options.checkpoint_every}")
    if not (options.move_threshold_deg >= 0 and options.move_threshold_rel >= 0):
        raise InputError("--move-threshold-deg and --move-threshold-rel must be >= 0")
    _check_output_paths(options)
    inp = validate_inputs(Path(options.colmap_model), Path(options.images))

    import torch

    device = options.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available")

    work = partial_dir(options.output)
    stamp = _stamp(options, inp)
    if work.exists():
        if options.resume:
            try:
                old = json.loads((work / STAMP_FILE).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                old = None
            if old != stamp:
                changed = sorted(k for k in stamp if old is None or old.get(k) != stamp[k])
                raise InputError(
                    f"{work}: this work directory was made for another input or other options ({', '.join(changed)}); "
                    "use --overwrite to start over"
                )
        elif options.overwrite:
            shutil.rmtree(work)
        else:
            raise InputError(
                f"{work}: an interrupted refine run left this work directory: use --resume to continue it or "
                "--overwrite to start over"
            )

    # --- convert
    work.mkdir(parents=True, exist_ok=True)
    (work / STAMP_FILE).write_text(json.dumps(stamp, indent=2), encoding="utf-8")
    data_dir = work / "data"
    if not (data_dir / "transforms.json").is_file():
        prepare_training_data(inp, data_dir, options.downscale_factor)

    # --- train
    from nerf_posefix.plugin.training import in_process_config, run_training

    bounds_mode = BOUNDS_MODES[options.bounds]
    config = in_process_config(
        options.method,
        data=data_dir,
        output_dir=work / "runs",
        max_iterations=options.iterations,
        experiment_name="refine",
        device=device,
        seed=options.seed,
        steps_per_save=options.checkpoint_every,
        overrides={
            "pipeline.datamanager.dataparser.eval_mode": "all",
            "pipeline.datamanager.dataparser.downscale_factor": options.downscale_factor,
            "pipeline.model.camera_optimizer.bounds": bounds_mode,
            **regularizer_overrides(options.regularizer),
        },
    )
    with warnings.catch_warnings():
        if options.quiet:
            warnings.simplefilter("ignore")
        run = run_training(
            config, progress=True, resume=options.resume, quiet=options.quiet, label=f"refine {options.method}", callback=callback,
            num_threads=options.threads or None,
        )

    # --- export and report (nerfstudio's dataparser messages, e.g. its eval-mode=all warning, are hidden)
    from nerf_posefix.plugin.run_reader import refined_input_poses
    from nerf_posefix.plugin.training import quiet_console

    with quiet_console(True):
        refined_input = refined_input_poses(run.config_path)  # the run, read once
    exported = refined_input.cameras.subset(np.nonzero(refined_input.refined)[0])  # c2w OpenCV, COLMAP world, flat names
    flat_to_name = {flat: name for name, flat in inp.flat_names.items()}
    missing = [n for n in exported.names if n not in flat_to_name]
    if missing or len(exported) != len(inp.flat_names):
        raise RuntimeError(f"export of {run.config_path} returned {len(exported)} cameras for {len(inp.flat_names)} images")
    refined = CameraSet(names=[flat_to_name[n] for n in exported.names], c2w=exported.c2w, source=str(run.config_path))
    model = refined_model(inp, refined)
    reports, summary = build_report(
        inp.model, inp.flat_names, refined, refined_input.run, options.bounds, options.move_threshold_deg, options.move_threshold_rel
    )
    summary.update(
        {
            "input_model": str(inp.model_dir),
            "input_images": str(inp.images_dir),
            "method": options.method,
            "regularizer": options.regularizer,
            "iterations": int(run.completed_iterations),
            "resumed_from_iteration": run.start_iteration,
            "device": device,
            "training_seconds": run.seconds,
            "total_seconds": time.perf_counter() - t_start,
            "points3D": "carried over unchanged from the input (not re-triangulated)",
            "frame": "COLMAP world frame of the input; world-to-camera qvec/tvec, OpenCV camera axes",
        }
    )
    out = _write_output(options, inp, model, reports, summary)
    shutil.rmtree(work, ignore_errors=True)
    summary["total_seconds"] = time.perf_counter() - t_start
    return RefineResult(output=out, images=reports, summary=summary)
