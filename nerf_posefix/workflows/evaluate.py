"""``posefix evaluate``: did refinement make the reconstruction better? Held-out rendering quality of
several pose sets of one capture, measured as the field does (BARF, CamP, NoPe-NeRF).

For every pose set (any pose source: COLMAP model, transforms.json, TUM file, nerfstudio run, ``posefix
refine`` output; :func:`nerf_posefix.workflows.pose_sources.load_pose_source`), with the **same**
held-out images (every ``holdout_every``-th image in name order, index 0 first: nerfstudio's
``eval_mode interval``), the same intrinsics, method, iterations and seed:

1. **retrain**: a nerfstudio dataset is written (``runs/<label>/data``: ``transforms.json`` with that
   set's poses, per-frame intrinsics, the split written explicitly as ``train_filenames`` /
   ``val_filenames`` / ``test_filenames``, and ``images`` a symbolic link to the image directory), and a
   fresh model is trained on the training images with the poses **frozen** (camera optimizer off);
2. the held-out views are rendered **at their given poses** and scored (PSNR, SSIM; LPIPS only when its
   weights are in the local torch cache, never downloaded: :mod:`nerf_posefix.plugin.model`);
3. **test-pose alignment** (:mod:`nerf_posefix.plugin.test_pose_alignment`): each held-out pose is
   optimised photometrically against the frozen model with a fixed budget (default CamP's 200 Adam
   steps at lr 1e-3), identical for every set, and the views are scored again.

Conventions: pose sets are camera-to-world, OpenCV axes, each in its own world frame and units
(:mod:`nerf_posefix.io.camera_set`); each set is trained in its own nerfstudio dataparser frame. The
test-pose corrections are reported as a rotation angle (degrees) and the camera-centre shift in that
set's input units (dataparser units divided by the dataparser scale) and as a percentage of that set's
scene radius (:func:`nerf_posefix.geometry.poses.scene_radius` of all its used camera centres).

Intrinsics: one source for all sets (``intrinsics``; default: the first pose set that carries
intrinsics, a transforms.json or a COLMAP model), so the sets differ only by their poses; read by
:func:`nerf_posefix.io.posed_images.load_posed_images` (every image the source names must be in ``images``)
and written per frame as nerfstudio's ``OPENCV`` keys (:func:`nerf_posefix.io.transforms_json.camera_keys`:
COLMAP's ``SIMPLE_PINHOLE``, ``PINHOLE``, ``SIMPLE_RADIAL``, ``RADIAL``, ``OPENCV``). Intrinsics recorded
for another image size are scaled to the image files' size (nerfstudio's pixel convention: ``c' = c · s``).

Output directory (``output``): ``evaluation.json``, ``evaluation.csv`` (one row per set),
``per_view.csv``, ``per_view_psnr.png``, ``evaluation_options.json`` and ``runs/<label>/`` (dataset,
training run, ``result.json``). It is created directly (so an interrupted evaluation keeps its work):
``resume`` continues an earlier evaluation with the same options (a set whose ``result.json`` exists is
skipped, an interrupted training resumes from its checkpoint); ``overwrite`` replaces an output written
by posefix. All input checks run before anything is written.
"""

from __future__ import annotations

import csv
import gc
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from nerf_posefix.errors import InputError
from nerf_posefix.geometry.poses import scene_radius
from nerf_posefix.io.atomic import MARKER_FILE, atomic_file, check_output_dir, marker_text
from nerf_posefix.io.camera_set import CameraSet, ImageCamera
from nerf_posefix.io.posed_images import image_size, load_posed_images
from nerf_posefix.io.sources import run_config_inputs, source_kind
from nerf_posefix.io.transforms_json import camera_keys, transforms_meta, write_transforms_json
from nerf_posefix.workflows.pose_sources import load_pose_source

#: Image file extensions listed in the image directory.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".JPG", ".JPEG", ".PNG")
#: Per-set result file, in ``runs/<label>/``.
RESULT_FILE = "result.json"
OPTIONS_FILE = "evaluation_options.json"
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass
class EvaluateOptions:
    """Options of :func:`evaluate` (the ``posefix evaluate`` command line)."""

    images: Path
    """Directory of the capture's images (names as in the pose sets)."""
    pose_sets: tuple[str, ...]
    """Pose sets to compare: ``NAME=PATH`` or ``PATH`` (label from the path). Any pose source: COLMAP
    model, transforms.json, TUM file, nerfstudio run, posefix refine output."""
    output: Path
    """New directory for the evaluation (or an earlier one with --resume / --overwrite)."""
    intrinsics: Path | None = None
    """Intrinsics for every set (transforms.json, COLMAP model or a dataset directory); default: the first
    pose set that has them."""
    own_intrinsics: bool = False
    """Each pose set with its own intrinsics where it carries them (a COLMAP model, a transforms.json, a posefix
    refine output), the others with --intrinsics (or the first set's): to compare a refine output whose cameras
    its adjustment refined (--intrinsics auto on a self-calibrated model) with its input, each rendered with the
    cameras it was made with. Default: one source for all, so the sets differ only by their poses."""
    holdout_every: int = 8
    """Every k-th image in name order (the first included) is held out (the same for all sets)."""
    method: Literal["posefix-small", "posefix"] = "posefix-small"
    """nerfstudio method trained for every set (poses frozen)."""
    iterations: int = 1000
    """Training iterations per set (posefix-small on 2 CPU cores: ~0.2 s each)."""
    rays_per_batch: int | None = None
    """Training rays per iteration (default: the method's)."""
    align_steps: int = 200
    """Test-pose alignment: Adam steps per held-out view (CamP: 200; 0: no alignment)."""
    align_lr: float = 1e-3
    """Test-pose alignment: Adam learning rate (CamP: 1e-3)."""
    align_rays: int = 512
    """Test-pose alignment: pixels drawn per held-out view and step."""
    seed: int = 42
    """Training and alignment seed."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Torch device (auto: cuda when available)."""
    threads: int = 1
    """Torch CPU threads (0: torch's default). 1 is fastest on shared cores."""
    resume: bool = False
    """Continue an earlier evaluation in --output (same options): finished sets are skipped."""
    overwrite: bool = False
    """Replace --output if it exists (only an earlier posefix evaluate output)."""
    progress: bool = True
    """Show progress bars."""


@dataclass
class PoseSetSpec:
    """One pose set to evaluate: its label, its source path and its cameras (OpenCV c2w, own frame)."""

    label: str
    path: Path
    cameras: CameraSet
    files: dict[str, str] = field(default_factory=dict)
    """image file (relative to the image directory, posix) -> index into ``cameras``."""


@dataclass
class EvaluationResult:
    """What :func:`evaluate` returns (also written to ``evaluation.json``).

    Attributes:
        output: the output directory.
        held_out: held-out image files (relative to the image directory); train: the training ones.
        sets: per set (in the given order), the dict of its ``result.json``: ``label``, ``source``,
            ``psnr_before``/``psnr_after``, ``ssim_before``/``ssim_after`` (means; ``lpips_*`` when
            available), ``rotation_median_deg``, ``translation_median``, ``translation_median_pct``,
            ``training_seconds``, ``alignment_seconds``, and ``views``: per held-out view its metrics
            before/after and its correction.
        files: the report files written.
    """

    output: Path
    held_out: list[str]
    train: list[str]
    sets: list[dict[str, Any]]
    files: dict[str, Path] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------
# inputs


def _preview(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return f"{shown} (+{len(names) - limit} more)" if len(names) > limit else shown


def _auto_label(path: Path) -> str:
    skip = {"0", "sparse", "colmap", "transforms.json", "config.yml", "run", ""}
    parts = [p for p in Path(os.path.abspath(path)).parts if p not in skip and p != os.sep]
    name = parts[-1] if parts else "poses"
    name = re.sub(r"\.(json|txt|tum|yml|yaml)$", "", name)
    name = re.sub(r"[^A-Za-z0-9_.+-]", "_", name).lstrip("._-")
    return name or "poses"


def parse_pose_set_args(args: tuple[str, ...] | list[str]) -> list[tuple[str, Path]]:
    """``NAME=PATH`` or ``PATH`` arguments as ``(label, path)``; labels unique (``_2``, ... appended to
    repeated automatic labels).

    Raises:
        InputError: no pose set, a bad or repeated explicit label.
    """
    if not args:
        raise InputError("--pose-sets: give at least one pose set (NAME=PATH or PATH)")
    out: list[tuple[str, Path]] = []
    explicit: set[str] = set()
    for arg in args:
        label, path = None, arg
        if "=" in arg and not os.path.exists(arg):
            label, path = arg.split("=", 1)
            if not _LABEL.match(label):
                raise InputError(
                    f"--pose-sets {arg}: the label {label!r} must be letters, digits, '_', '.', '+' or '-'"
                )
            if label in explicit:
                raise InputError(f"--pose-sets: the label {label!r} is used twice")
            explicit.add(label)
        out.append((label or "", Path(path)))
    used = {label for label, _ in out if label}
    final = []
    for label, path in out:
        if not label:
            base = _auto_label(path)
            label, k = base, 2
            while label in used:
                label, k = f"{base}_{k}", k + 1
            used.add(label)
        final.append((label, path))
    return final


def list_images(images: Path) -> dict[str, str]:
    """Image files under ``images`` (recursively): ``{relative posix path: relative posix path}`` plus, for
    names unique by basename, ``{basename: relative path}`` (so pose sets naming files by basename match)."""
    files = sorted(
        p.relative_to(images).as_posix() for p in images.rglob("*") if p.suffix in IMAGE_SUFFIXES and p.is_file()
    )
    lookup = {f: f for f in files}
    by_base: dict[str, list[str]] = {}
    for f in files:
        by_base.setdefault(f.rsplit("/", 1)[-1], []).append(f)
    for base, found in by_base.items():
        if len(found) == 1:
            lookup.setdefault(base, found[0])
    return lookup


def holdout_split(files: list[str], every: int) -> tuple[list[str], list[str]]:
    """``(held_out, train)`` of ``files`` sorted by name: index ``i`` is held out when ``i % every == 0``
    (nerfstudio's ``eval_mode interval``)."""
    ordered = sorted(files)
    held = [f for i, f in enumerate(ordered) if i % every == 0]
    train = [f for i, f in enumerate(ordered) if i % every != 0]
    return held, train


def _match_files(spec: PoseSetSpec, lookup: dict[str, str], images: Path) -> list[str]:
    """Fill ``spec.files``; return the set's names with no image file."""
    missing = []
    for i, name in enumerate(spec.cameras.names):
        norm = name.replace(os.sep, "/").lstrip("./") if name.startswith("./") else name.replace(os.sep, "/")
        parts = [p for p in norm.split("/") if p not in ("", ".")]
        # one identity with refine and compare: the image's path below --images, the folders the name has
        # above it (a transforms.json's images/cam0/000.png) dropped; a unique basename last
        found = next((lookup[k] for k in ("/".join(parts[i:]) for i in range(len(parts))) if k in lookup), None)
        if found is None:
            missing.append(name)
        elif found in spec.files:
            raise InputError(
                f"{spec.path}: the cameras {spec.cameras.names[spec.files[found]]!r} and {name!r} both name the image "
                f"{images / found}"
            )
        else:
            spec.files[found] = i
    return missing


def check_coverage(specs: list[PoseSetSpec], held_out: list[str], train: list[str]) -> None:
    """Every set must have a pose for every held-out and training image.

    Raises:
        InputError: one message naming, per set that lacks some, the held-out and training images it
            has no pose for (first few and the count).
    """
    problems = []
    for spec in specs:
        miss_held = [f for f in held_out if f not in spec.files]
        miss_train = [f for f in train if f not in spec.files]
        if miss_held or miss_train:
            parts = []
            if miss_held:
                parts.append(f"{len(miss_held)} of {len(held_out)} held-out images ({_preview(miss_held)})")
            if miss_train:
                parts.append(f"{len(miss_train)} of {len(train)} training images ({_preview(miss_train)})")
            problems.append(f"{spec.label} ({spec.path}) has no pose for " + " and ".join(parts))
    if problems:
        raise InputError(
            "the pose sets disagree on the images: every set needs a pose for every held-out and training image; "
            + "; ".join(problems)
        )


def read_intrinsics(path: Path, images: Path) -> dict[str, ImageCamera]:
    """Per image name, the camera (COLMAP model, COLMAP's order and pixel convention) that the pose source
    at ``path`` records, read by :func:`nerf_posefix.io.posed_images.load_posed_images` with ``images`` as
    the image directory: a COLMAP model (names as it records them), a transforms.json (the basenames of its
    ``file_path`` values; when they are not all in ``images``, its ``file_path`` values relative to the
    file's directory), a dataset directory holding one of them, or a nerfstudio run (its dataset).

    Raises:
        InputError: no intrinsics there (a TUM file), unreadable files, images of the source that are
            not there.
    """
    kind, found = source_kind(path)
    if kind in ("colmap", "transforms"):
        try:
            return load_posed_images(path, images=images).intrinsics
        except InputError:
            if kind != "transforms":
                raise
            try:  # images in sub-directories: the file's own file_path values
                return load_posed_images(found).intrinsics
            except InputError:
                pass
            raise
    if kind == "run":
        for candidate in run_config_inputs(found)[1:]:
            try:
                return read_intrinsics(candidate, images)
            except InputError:
                continue
    raise InputError(f"{path}: holds no camera intrinsics (give --intrinsics: a transforms.json or COLMAP model)")


def frame_intrinsics(
    table: dict[str, ImageCamera], files: list[str], images: Path, source: str
) -> dict[str, dict[str, Any]]:
    """The transforms.json intrinsics keys (:func:`nerf_posefix.io.transforms_json.camera_keys`) of each
    image file (relative path), its camera matched by path or basename and scaled to the file's actual
    size when the source recorded another one (same factor on both axes up to rounding; ``c' = c · s``).

    Raises:
        InputError: images without intrinsics, an aspect ratio that does not match, a camera model with no
            transforms.json form (naming the image).
    """
    lookup: dict[str, ImageCamera] = {}
    by_base: dict[str, list[ImageCamera]] = {}
    for name, camera in table.items():
        norm = name.replace(os.sep, "/")
        norm = norm.removeprefix("./")
        lookup[norm] = camera
        by_base.setdefault(norm.rsplit("/", 1)[-1], []).append(camera)
    out, missing = {}, []
    for f in files:
        camera = lookup.get(f) or next((lookup[k] for k in lookup if k.endswith("/" + f)), None)
        if camera is None:
            cands = by_base.get(f.rsplit("/", 1)[-1], [])
            camera = cands[0] if len(cands) == 1 else None
        if camera is None:
            missing.append(f)
            continue
        try:
            values = camera_keys(camera)
        except InputError as err:
            raise InputError(f"{source}: the camera of {f}: {err}") from None
        w, h = image_size(images / f)
        sx, sy = w / float(values["w"]), h / float(values["h"])
        if abs(sx - sy) > 0.01 * max(sx, sy):
            raise InputError(
                f"{images / f}: {w}x{h} pixels, but {source} gives intrinsics for {values['w']}x{values['h']} "
                "(another aspect ratio)"
            )
        values.update(fl_x=values["fl_x"] * sx, fl_y=values["fl_y"] * sy, cx=values["cx"] * sx,
                      cy=values["cy"] * sy, w=w, h=h)
        out[f] = values
    if missing:
        raise InputError(f"{source}: no intrinsics for {len(missing)} images ({_preview(missing)})")
    return out


@dataclass
class _Plan:
    specs: list[PoseSetSpec]
    held_out: list[str]
    train: list[str]
    intrinsics: dict[str, dict[str, Any]]
    """image file -> its transforms.json intrinsics keys (:func:`frame_intrinsics`)."""
    intrinsics_source: str
    device: str
    own_intrinsics: dict[str, tuple[dict[str, dict[str, Any]], str]] = field(default_factory=dict)
    """label -> (its own intrinsics table, their source) for the sets rendered with their own (``own_intrinsics``)."""

    def intrinsics_of(self, label: str) -> tuple[dict[str, dict[str, Any]], str]:
        """The intrinsics table a pose set is rendered with, and where it comes from."""
        return self.own_intrinsics.get(label, (self.intrinsics, self.intrinsics_source))


def _resolve_device(device: str) -> str:
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise InputError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return device


def prepare(options: EvaluateOptions) -> _Plan:
    """Every input check of :func:`evaluate`, reading the inputs but writing nothing.

    Raises:
        InputError: bad options, no images, unreadable pose sets, pose sets that do not cover the held-out
            or training images or name images that are not in the directory, missing intrinsics, an
            output that may not be written (see :func:`nerf_posefix.io.atomic.check_output_dir`).
    """
    images = Path(options.images)
    if options.holdout_every < 2:
        raise InputError(f"--holdout-every must be >= 2 (every k-th image held out), got {options.holdout_every}")
    if options.iterations < 1:
        raise InputError(f"--iterations must be >= 1, got {options.iterations}")
    if options.align_steps < 0 or not options.align_lr > 0 or options.align_rays < 1:
        raise InputError("--align-steps must be >= 0, --align-lr > 0 and --align-rays >= 1")
    if not images.is_dir():
        raise InputError(f"--images {images}: no such directory")
    parsed = parse_pose_set_args(options.pose_sets)
    inputs: list[Any] = [("--images", images)] + [("--pose-sets", p) for _, p in parsed]
    if options.intrinsics is not None:
        inputs.append(("--intrinsics", options.intrinsics))
    _check_output(options, inputs)
    lookup = list_images(images)
    if not lookup:
        raise InputError(f"--images {images}: no image files ({', '.join(IMAGE_SUFFIXES[:4])})")
    specs = []
    for label, path in parsed:
        spec = PoseSetSpec(label, path, load_pose_source(path))
        missing = _match_files(spec, lookup, images)
        if missing:
            raise InputError(
                f"--pose-sets {label}={path}: {len(missing)} of its {len(spec.cameras)} images are not in {images} "
                f"({_preview(missing)})"
            )
        specs.append(spec)
    union = sorted(set().union(*(set(s.files) for s in specs)))
    held_out, train = holdout_split(union, options.holdout_every)
    if not held_out or len(train) < 2:
        raise InputError(f"{len(union)} images: too few to hold out every {options.holdout_every}-th and train on the rest")
    check_coverage(specs, held_out, train)
    source = options.intrinsics
    if source is None:
        reasons = []
        for spec in specs:
            try:
                table = read_intrinsics(spec.path, images)
            except InputError as err:
                reasons.append(f"{spec.label}: {err}")
                continue
            source = spec.path
            break
        else:
            raise InputError("no pose set carries camera intrinsics that can be read (TUM files, runs without dataset): "
                             "give --intrinsics (" + "; ".join(reasons) + ")")
    else:
        table = read_intrinsics(source, images)
    intr = frame_intrinsics(table, union, images, str(source))
    own: dict[str, tuple[dict[str, dict[str, Any]], str]] = {}
    if options.own_intrinsics:
        for spec in specs:
            try:
                own_table = read_intrinsics(spec.path, images)
            except InputError:
                continue  # a TUM file, a run without its dataset: the shared intrinsics
            own[spec.label] = (frame_intrinsics(own_table, union, images, str(spec.path)), str(spec.path))
    return _Plan(specs, held_out, train, intr, str(source), _resolve_device(options.device), own)


def _fingerprint(options: EvaluateOptions, plan: _Plan) -> dict[str, Any]:
    """What makes two evaluations comparable (resume refuses an output made with other settings)."""
    return {
        "images": str(Path(options.images).resolve()),
        "pose_sets": {s.label: str(Path(s.path).resolve()) for s in plan.specs},
        "intrinsics": str(Path(plan.intrinsics_source).resolve()),
        "own_intrinsics": bool(options.own_intrinsics),
        "holdout_every": options.holdout_every,
        "method": options.method,
        "iterations": options.iterations,
        "rays_per_batch": options.rays_per_batch,
        "align_steps": options.align_steps,
        "align_lr": options.align_lr,
        "align_rays": options.align_rays,
        "seed": options.seed,
    }


def _check_output(options: EvaluateOptions, inputs: list[Any]) -> None:
    output = Path(options.output)
    if options.resume and output.is_dir() and (output / OPTIONS_FILE).is_file():
        check_output_dir(output, inputs, overwrite=True, command="evaluate")  # the input checks; it is ours (marker)
        if not (output / MARKER_FILE).is_file():
            raise InputError(f"--output {output}: was not written by posefix evaluate; cannot resume it")
        return
    if options.resume and os.path.lexists(output):
        raise InputError(f"--output {output}: holds no evaluation to resume ({OPTIONS_FILE} missing)")
    check_output_dir(output, inputs, overwrite=options.overwrite, command="evaluate")


# ------------------------------------------------------------------------------------------------
# one set


def write_dataset(spec: PoseSetSpec, plan: _Plan, images: Path, data_dir: Path) -> Path:
    """``data_dir/transforms.json`` of ``spec`` (camera-to-world OpenGL axes in the set's own world frame,
    identity ``applied_transform``; per-frame intrinsics; explicit split) and ``data_dir/images``, a
    symbolic link to ``images``. Frames are in name order. Returns the transforms.json path."""
    data_dir.mkdir(parents=True, exist_ok=True)
    link = data_dir / "images"
    target = Path(os.path.abspath(images))
    if os.path.lexists(link) and (not link.is_symlink() or Path(os.readlink(link)) != target):
        if link.is_dir() and not link.is_symlink():
            shutil.rmtree(link)
        else:
            link.unlink()
    if not os.path.lexists(link):
        link.symlink_to(target, target_is_directory=True)
    files = sorted(plan.held_out + plan.train)
    c2w = np.stack([spec.cameras.c2w[spec.files[f]] for f in files])  # [F, 4, 4] OpenCV c2w
    table, _ = plan.intrinsics_of(spec.label)
    extra = [{k: v for k, v in table[f].items() if k != "camera_model"} for f in files]
    meta = transforms_meta(
        [f"images/{f}" for f in files],
        c2w,
        intrinsics={"camera_model": table[files[0]]["camera_model"]},  # OPENCV (camera_keys)
        frame_extra=extra,
        train_filenames=[f"images/{f}" for f in plan.train],
        val_filenames=[f"images/{f}" for f in plan.held_out],
        test_filenames=[f"images/{f}" for f in plan.held_out],
        posefix_evaluate={"label": spec.label, "source": str(spec.path)},
    )
    return write_transforms_json(meta, data_dir / "transforms.json")


def _summary(views: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("psnr", "ssim", "lpips"):
        for when in ("before", "after"):
            vals = [v[f"{key}_{when}"] for v in views if v.get(f"{key}_{when}") is not None]
            if vals:
                out[f"{key}_{when}"] = float(np.mean(vals))
    for key in ("rotation_deg", "translation", "translation_pct"):
        vals = [v[key] for v in views]
        out[f"{key.replace('_deg', '')}_median" + ("_deg" if key == "rotation_deg" else "")] = float(np.median(vals))
    return out


def evaluate_set(
    spec: PoseSetSpec, plan: _Plan, options: EvaluateOptions, run_root: Path,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Train, score, align and score again one pose set (see the module docstring); returns its result."""
    import torch

    from nerf_posefix.plugin.test_pose_alignment import (
        TestPoseAlignmentConfig,
        align_test_poses,
        score_views,
    )
    from nerf_posefix.workflows.experiment import (
        TrainSpec,
        quiet_nerfstudio,
        build_trainer_config,
        train,
    )

    data = write_dataset(spec, plan, Path(options.images), run_root / "data").parent
    train_spec = TrainSpec(
        data=Path(os.path.abspath(data)),
        output_dir=Path(os.path.abspath(run_root)),
        experiment_name="train",
        timestamp="run",
        method=options.method,
        iterations=options.iterations,
        eval_interval=options.holdout_every,
        camera_optimizer={"class": "nerfstudio", "mode": "off"},  # poses frozen
        seed=options.seed,
        rays_per_batch=options.rays_per_batch,
        device=plan.device,
    )
    config = build_trainer_config(train_spec)
    config.pipeline.datamanager.dataparser.downscale_factor = 1  # the images as they are
    log(f"[bold]{spec.label}[/bold]: training {options.method} for {options.iterations} iterations, poses frozen")
    run = train(config, progress=options.progress, resume=True, num_threads=options.threads or None)
    timing_file = run_root / "training_time.json"
    spent = float(json.loads(timing_file.read_text())["seconds"]) if timing_file.is_file() else 0.0
    if run.trainer is not None:
        spent += run.seconds
        timing_file.write_text(json.dumps({"seconds": spent}), encoding="utf-8")
        pipeline = run.trainer.pipeline
    else:
        from nerfstudio.utils.eval_utils import eval_setup

        with quiet_nerfstudio(True):
            _, pipeline, _, _ = eval_setup(run.config_path, test_mode="test")
    previous = torch.get_num_threads()
    if options.threads:
        torch.set_num_threads(options.threads)
    try:
        dm = pipeline.datamanager
        dataset = dm.eval_dataset
        names = [Path(os.path.relpath(Path(f), Path(os.path.abspath(data)) / "images")).as_posix()
                 for f in dataset.image_filenames]
        if names != plan.held_out:
            raise InputError(
                f"{run.config_path}: nerfstudio's eval split ({_preview(names)}) is not the held-out images "
                f"({_preview(plan.held_out)})"
            )
        scale = float(dm.train_dataparser_outputs.dataparser_scale)
        cameras = dataset.cameras
        gts = [dataset.get_image_float32(i) for i in range(len(dataset))]  # [H, W, C] in [0, 1]
        model = pipeline.model
        with _progress(options.progress, f"{spec.label}: scoring at the given poses", len(gts)) as bar:
            before = score_views(model, cameras, gts, progress=bar)
        t0 = time.perf_counter()
        budget = TestPoseAlignmentConfig(options.align_steps, options.align_lr, options.align_rays, options.seed)
        with _progress(options.progress, f"{spec.label}: test-pose alignment", options.align_steps) as bar:
            aligned = align_test_poses(model, cameras, gts, budget, progress=bar)
        align_seconds = time.perf_counter() - t0
        with _progress(options.progress, f"{spec.label}: scoring at the aligned poses", len(gts)) as bar:
            after = score_views(model, aligned.cameras, gts, progress=bar)
    finally:
        torch.set_num_threads(previous)
    used = np.stack([spec.cameras.c2w[spec.files[f]][:3, 3] for f in sorted(plan.held_out + plan.train)])
    radius = scene_radius(used)
    views = []
    for k, name in enumerate(plan.held_out):
        trans = float(aligned.translation_norm[k]) / scale  # input units
        view: dict[str, Any] = {"image": name}
        for key in ("psnr", "ssim", "lpips"):
            if key in before[k]:
                view[f"{key}_before"] = before[k][key]
                view[f"{key}_after"] = after[k][key]
        view.update(
            rotation_deg=float(aligned.rotation_deg[k]),
            translation=trans,
            translation_pct=100.0 * trans / radius if radius > 0 else float("nan"),
            loss_before=float(aligned.loss_before[k]),
            loss_after=float(aligned.loss_after[k]),
        )
        views.append(view)
    result = {
        "label": spec.label,
        "source": str(spec.path),
        **_summary(views),
        "scene_radius": radius,
        "dataparser_scale": scale,
        "training_seconds": spent,
        "alignment_seconds": align_seconds,
        "run": str(run.config_path),
        "views": views,
    }
    del pipeline, model, run
    gc.collect()
    return result


class _progress:
    """A rich progress bar (transient) whose instance is a ``progress(done, total)`` callback."""

    def __init__(self, enabled: bool, label: str, total: int) -> None:
        self.enabled, self.label, self.total = enabled, label, total
        self._progress: Any = None

    def __enter__(self) -> _progress | None:
        if not self.enabled or self.total <= 0:
            return None
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeRemainingColumn(), transient=True)
        self._progress.__enter__()
        self._task = self._progress.add_task(self.label, total=self.total)
        return self

    def __call__(self, done: int, total: int) -> None:
        self._progress.update(self._task, completed=done, total=total)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)


# ------------------------------------------------------------------------------------------------
# the evaluation


def evaluate(options: EvaluateOptions, log: Callable[[str], None] = lambda _: None) -> EvaluationResult:
    """Evaluate every pose set of ``options`` (see the module docstring).

    ``log``: receives one line per stage (rich markup); nothing else is printed besides progress bars.

    Raises:
        InputError: from :func:`prepare`, before anything is written; a resumed output made with other
            options.
    """
    plan = prepare(options)
    output = Path(options.output)
    fingerprint = _fingerprint(options, plan)
    if options.resume and (output / OPTIONS_FILE).is_file():
        saved = json.loads((output / OPTIONS_FILE).read_text(encoding="utf-8"))
        changed = sorted(k for k in set(saved) | set(fingerprint) if k != "pose_sets" and saved.get(k) != fingerprint.get(k))
        if changed:
            raise InputError(f"--resume {output}: made with other settings ({', '.join(changed)}); use another --output")
    else:
        if os.path.lexists(output):  # check_output_dir allowed it: overwrite of a posefix output
            shutil.rmtree(output)
        output.mkdir(parents=True)
        (output / MARKER_FILE).write_text(marker_text("evaluate"), encoding="utf-8")
    with atomic_file(output / OPTIONS_FILE) as tmp:
        tmp.write_text(json.dumps(fingerprint, indent=2), encoding="utf-8")
    log(f"{len(plan.held_out)} held-out images ({_preview(plan.held_out, 4)}), {len(plan.train)} training images; "
        f"intrinsics from {plan.intrinsics_source}" + (f" (each set's own where it has them: {', '.join(plan.own_intrinsics)})"
                                                        if plan.own_intrinsics else "") + f"; device {plan.device}")
    results = []
    for spec in plan.specs:
        run_root = output / "runs" / spec.label
        result_path = run_root / RESULT_FILE
        settings = {k: v for k, v in fingerprint.items() if k != "pose_sets"}
        settings["pose_set"] = fingerprint["pose_sets"][spec.label]
        if result_path.is_file():
            saved = json.loads(result_path.read_text(encoding="utf-8"))
            if saved.get("settings") == settings:
                log(f"[bold]{spec.label}[/bold]: done earlier ({result_path})")
                results.append(saved)
                continue
        run_root.mkdir(parents=True, exist_ok=True)
        result = evaluate_set(spec, plan, options, run_root, log)
        result["settings"] = settings
        with atomic_file(result_path) as tmp:
            tmp.write_text(json.dumps(result, indent=2), encoding="utf-8")
        results.append(result)
        log(f"[bold]{spec.label}[/bold]: PSNR {result.get('psnr_before', float('nan')):.2f} -> "
            f"{result.get('psnr_after', float('nan')):.2f} dB after test-pose alignment")
    files = write_reports(output, plan, results, fingerprint)
    return EvaluationResult(output, plan.held_out, plan.train, results, files)


SUMMARY_COLUMNS = (
    "label", "psnr_before", "psnr_after", "ssim_before", "ssim_after", "lpips_before", "lpips_after",
    "rotation_median_deg", "translation_median", "translation_pct_median", "training_seconds", "alignment_seconds",
    "source",
)
VIEW_COLUMNS = (
    "label", "image", "psnr_before", "psnr_after", "ssim_before", "ssim_after", "lpips_before", "lpips_after",
    "rotation_deg", "translation", "translation_pct",
)


def write_reports(output: Path, plan: _Plan, results: list[dict[str, Any]], fingerprint: dict[str, Any]) -> dict[str, Path]:
    """``evaluation.json``, ``evaluation.csv``, ``per_view.csv`` and ``per_view_psnr.png`` in ``output``."""
    files = {
        "json": output / "evaluation.json",
        "csv": output / "evaluation.csv",
        "per_view": output / "per_view.csv",
        "plot": output / "per_view_psnr.png",
    }
    report = {
        "protocol": "retrain with frozen poses on the training images; score held-out views at the given poses, "
        "then after test-pose alignment (fixed budget, identical for every set)",
        "options": fingerprint,
        "held_out": plan.held_out,
        "train": plan.train,
        "intrinsics": plan.intrinsics_source,
        "own_intrinsics": {label: source for label, (_, source) in plan.own_intrinsics.items()},
        "sets": results,
    }
    with atomic_file(files["json"]) as tmp:
        tmp.write_text(json.dumps(report, indent=2), encoding="utf-8")
    with atomic_file(files["csv"]) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fid:
        writer = csv.DictWriter(fid, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for r in results:
            writer.writerow({k: r.get(k, "") for k in SUMMARY_COLUMNS})
    with atomic_file(files["per_view"]) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fid:
        writer = csv.DictWriter(fid, fieldnames=VIEW_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for r in results:
            for v in r["views"]:
                writer.writerow({"label": r["label"], **{k: v.get(k, "") for k in VIEW_COLUMNS[1:]}})
    _plot(results, plan.held_out, files["plot"])
    return files


def _plot(results: list[dict[str, Any]], held_out: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(held_out) + 3), 4))
    x = np.arange(len(held_out))
    for k, r in enumerate(results):
        colour = f"C{k % 10}"
        ax.plot(x, [v.get("psnr_before", np.nan) for v in r["views"]], "o--", color=colour, alpha=0.5,
                label=f"{r['label']} (given poses)")
        ax.plot(x, [v.get("psnr_after", np.nan) for v in r["views"]], "o-", color=colour,
                label=f"{r['label']} (aligned)")
    ax.set_xticks(x)
    ax.set_xticklabels(held_out, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("PSNR (dB)")
    ax.set_title("held-out views: PSNR at the given and at the test-pose-aligned poses")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


__all__ = ["EvaluateOptions", "EvaluationResult", "asdict", "evaluate", "prepare"]
