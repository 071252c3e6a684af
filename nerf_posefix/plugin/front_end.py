"""The posefix methods' front end: ``posefix refine``'s SfM stages (:mod:`nerf_posefix.sfm.front_end`, the
same code) run on the training dataset when the pipeline is set up, before the datamanager reads it.

What runs, by dataset (:class:`~nerf_posefix.plugin.dataset.DatasetInfo`):

* **COLMAP dataparser** (a COLMAP model with tracks and its images): the robust bundle adjustment of the
  model's tracks. The dataparser then reads the adjusted model (same world frame, names and intrinsics)
  from the cache instead of the dataset's.
* **transforms.json with a COLMAP model beside it** (``ns-process-data``'s ``colmap/sparse/0``): the same
  adjustment of the model's tracks; the adjusted poses are mapped into the transforms.json's world frame
  by the similarity that relates the model's input poses to the transforms.json's (checked to be exact: a
  model whose cameras are not the transforms.json's is not used, and tracks are built instead).
* **pose-only transforms.json** (Polycam, Record3D, ARKit, SLAM exports): tracks built from its images
  (SIFT, matching, triangulation with the poses held fixed), then rounds of re-triangulation and robust
  adjustment.
* too few tracks (low texture, tiny images): said with the counts; training starts from the dataset's
  poses as they are.

Every camera of the dataset takes part, the eval split included, so held-out views are scored at poses
as good as the training ones.

The adjusted dataset (``CACHE/dataset``) is an **overlay** of the dataset directory: one symbolic link per
entry of the dataset directory, except the transforms.json (rewritten with the adjusted poses: every key
kept, ``applied_transform`` included; camera-to-world, OpenGL axes, the file's own world frame) and the
COLMAP model directory (the adjusted model: world-to-camera, OpenCV axes, the model's own world frame), so
every relative path of the dataset (images, downscaled ``images_N``, masks, depths, ground truth)
resolves as before. The dataset directory is never written.

Cache
-----
``CACHE`` (``RUN/front_end``, set by :class:`~nerf_posefix.plugin.method_configs.PosefixTrainerConfig`
when the run's config is saved) holds ``stamp.json`` (the dataset's fingerprint: image names, poses,
intrinsics, image file sizes and times; and the options), the stages' work directory, the overlay and
``result.json``, written last. ``ns-train --load-dir``, ``ns-eval``, ``ns-viewer`` and ``posefix export``
reuse it; it is recomputed when the dataset or the options changed. It is assembled in
``CACHE.partial`` and renamed into place, so a front end that fails midway leaves no half-written cache
(a later run reuses the stages that ``CACHE.partial`` completed).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

import numpy as np

from nerf_posefix.errors import InputError
from nerf_posefix.geometry.alignment import Alignment, pose_alignment
from nerf_posefix.geometry.poses import rotation_angle_deg, scene_radius
from nerf_posefix.io.camera_set import CameraSet, ImageCamera, match_image_names
from nerf_posefix.io.colmap import write_colmap_model
from nerf_posefix.io.posed_images import PosedImages, load_posed_images, write_refined_poses
from nerf_posefix.io.transforms_json import with_cameras, write_transforms_json
from nerf_posefix.plugin.dataset import DatasetInfo, describe_dataset
from nerf_posefix.sfm.frame_placement import PLACEMENT_MAX_FRAMES
from nerf_posefix.sfm.front_end import ADJUSTED_MODEL, FrontEndOptions, FrontEndResult, front_end_input, run_front_end

#: Files of a complete cache directory.
STAMP_FILE = "stamp.json"
RESULT_FILE = "result.json"
#: Largest disagreement (fraction of the camera spread; degrees) between a COLMAP model's cameras mapped by
#: the best similarity and a transforms.json's, for the model to be taken as that transforms.json's.
FRAME_TOLERANCE = 1e-3
FRAME_TOLERANCE_DEG = 0.01
#: Where the adjusted model goes in the overlay of a pose-only transforms.json.
BUILT_MODEL_DIR = Path("sparse") / "0"


@dataclass
class FrontEndOutcome:
    """What the pipeline's front end did.

    Attributes:
        dataparser: the dataparser config to read the adjusted dataset with (a copy; the given one is not
            changed), or None when training starts from the dataset's poses (too few tracks).
        summary: what ran, on how many images, the time and how far the poses moved (``result.json``).
        line: the one log line saying so.
        model_dir: the adjusted model (world-to-camera, OpenCV axes, the front end's input frame: the COLMAP model's
            world, or the pose-only transforms.json's), or None when no adjustment ran.
        images_dir: the directory its image names resolve under.
    """

    dataparser: Any
    summary: dict[str, Any]
    line: str
    model_dir: Optional[Path] = None
    images_dir: Optional[Path] = None


# ---------------------------------------------------------------------------------------------
# the dataset as a pose source


@dataclass
class _Source:
    """The front end's input for one dataset: the pose source it runs on, and how its result maps back."""

    posed: PosedImages  # what the stages run on
    json_posed: Optional[PosedImages]  # the transforms.json (nerfstudio datasets), else None
    model_rel: Optional[Path]  # where the adjusted model goes, relative to the dataset directory (overlay)
    note: str  # why this source (for the log)


def _images_dir_for(model_names: list[str], candidates: list[Path]) -> Optional[Path]:
    """The first candidate directory under which every COLMAP image name is a file."""
    for candidate in candidates:
        if candidate.is_dir() and all((candidate / n).is_file() for n in model_names):
            return candidate
    return None


def frame_similarity(model_cams: CameraSet, json_cams: CameraSet) -> tuple[Optional[Alignment], str]:
    """The similarity mapping a COLMAP model's world onto a transforms.json's, from their cameras matched by
    name (camera-to-world, OpenCV axes both), or None with the reason when they are not the same cameras up
    to a similarity (largest difference above :data:`FRAME_TOLERANCE` of the spread or
    :data:`FRAME_TOLERANCE_DEG`)."""
    match = match_image_names(json_cams.names, model_cams.names)
    pairs = [(j, m) for j, m in enumerate(match) if m is not None]
    if len(pairs) < 3:
        return None, f"only {len(pairs)} of its images are frames of the transforms.json"
    j_idx, m_idx = (np.array(v) for v in zip(*pairs))
    model_c2w, json_c2w = model_cams.c2w[m_idx], json_cams.c2w[j_idx]
    try:
        sim = pose_alignment(model_c2w, json_c2w)
    except InputError as err:
        return None, str(err)
    mapped = sim.apply(model_c2w)
    spread = max(scene_radius(json_c2w[:, :3, 3]), 1e-12)
    centre = float(np.max(np.linalg.norm(mapped[:, :3, 3] - json_c2w[:, :3, 3], axis=-1))) / spread
    angle = float(np.max(rotation_angle_deg(mapped[:, :3, :3], json_c2w[:, :3, :3])))
    if centre > FRAME_TOLERANCE or angle > FRAME_TOLERANCE_DEG:
        return None, (f"its cameras are not the transforms.json's up to a similarity (largest difference {angle:.3g} deg, "
                      f"{centre:.2%} of the camera spread)")
    return sim, ""


def _dataset_source(info: DatasetInfo, log: Callable[[str], None]) -> Optional[_Source]:
    """The pose source the front end runs on for ``info`` (module docstring), or None for datasets it does
    not handle (neither nerfstudio's transforms.json nor a COLMAP dataset)."""
    if info.kind == "colmap":
        assert info.colmap_dir is not None and info.images_dir is not None
        return _Source(load_posed_images(info.colmap_dir, info.images_dir), None, None, "the COLMAP model's own tracks")
    if info.kind != "nerfstudio":
        return None
    assert info.transforms_path is not None
    json_posed = load_posed_images(info.transforms_path)
    if info.colmap_dir is not None:
        model_dir = info.colmap_dir
        try:
            from nerf_posefix.io.colmap import read_colmap_model

            names = [im.name for im in read_colmap_model(model_dir).images.values()]
        except InputError as err:
            log(f"not using the COLMAP model beside the transforms.json ({err}); building tracks from the images")
            names = []
        candidates = [info.data_dir / "images", info.data_dir, model_dir.parent.parent.parent / "images", json_posed.images_dir]
        images_dir = _images_dir_for(names, candidates) if names else None
        if images_dir is not None:
            model_posed = load_posed_images(model_dir, images_dir)
            if model_posed.has_tracks:
                sim, why = frame_similarity(model_posed.cameras, json_posed.cameras)
                if sim is not None:
                    rel = model_dir.resolve().relative_to(info.data_dir.resolve()) if _is_under(model_dir, info.data_dir) else None
                    return _Source(model_posed, json_posed, rel, f"the tracks of the COLMAP model {model_dir}")
                log(f"not using the COLMAP model {model_dir}: {why}; building tracks from the images")
        elif names:
            log(f"not using the COLMAP model {model_dir}: its images are not under {info.data_dir}; building tracks from the images")
    return _Source(json_posed, json_posed, BUILT_MODEL_DIR, "tracks built from the images")


def _is_under(path: Path, parent: Path) -> bool:
    try:
        path.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def _fingerprint(source: _Source, options: FrontEndOptions) -> dict[str, Any]:
    """What decides the front end's result: every image's name, pose, intrinsics and file (size, time), and
    the options. Cheap: no image is decoded."""
    h = hashlib.sha256()
    for posed in (source.posed, source.json_posed):
        if posed is None:
            continue
        h.update(str(posed.source.resolve()).encode())
        for name, c2w in zip(posed.cameras.names, posed.cameras.c2w):
            path = posed.images_dir / name
            st = path.stat()
            h.update(repr((name, np.round(c2w, 12).tolist(), posed.intrinsics[name], st.st_size, st.st_mtime_ns)).encode())
    if source.posed.colmap_model is not None:
        h.update(str(len(source.posed.colmap_model.points3D)).encode())
        h.update(str(len(source.posed.colmap_model.observations())).encode())
    built = options.build_tracks == "always" or not source.posed.has_tracks
    return {"dataset": h.hexdigest(), "options": options.stamp(built)}


# ---------------------------------------------------------------------------------------------
# the overlay dataset


def _overlay(data_dir: Path, overlay: Path, replaced: list[Path]) -> None:
    """Make ``overlay`` mirror ``data_dir``: a symbolic link per entry, except along the ``replaced``
    relative paths, whose parents become real directories (their other entries linked) and which are left
    for the caller to write."""
    overlay.mkdir(parents=True, exist_ok=True)
    firsts = {p.parts[0]: p for p in replaced if p.parts}
    for entry in sorted(os.listdir(data_dir)):
        if entry in firsts:
            rest = firsts[entry]
            if len(rest.parts) > 1 and (data_dir / entry).is_dir():
                _overlay(data_dir / entry, overlay / entry, [Path(*p.parts[1:]) for p in replaced if p.parts and p.parts[0] == entry])
            continue
        os.symlink((data_dir / entry).resolve(), overlay / entry, target_is_directory=(data_dir / entry).is_dir())


def _refined_frame_cameras(source: _Source, adjusted: Any, match: list[Optional[int]]) -> list[Optional[ImageCamera]]:
    """Per frame of the transforms.json (file order): its camera in the adjusted model when the adjustment changed
    that camera's parameters, else None. ``match``: per image of the transforms.json (its names' order), the
    index of its image in the adjusted model's names (sorted by image id), or None."""
    assert source.json_posed is not None
    before = source.posed.colmap_model
    changed = set(adjusted.changed_camera_ids(before)) if before is not None else set()
    if not changed:
        return [None] * len(source.json_posed.frame_images)
    ids = adjusted.image_ids()  # the order of adjusted.to_camera_set()'s names
    camera_of_json_name = {}
    for name, m in zip(source.json_posed.cameras.names, match):
        if m is not None:
            cid = adjusted.images[ids[m]].camera_id
            if cid in changed:
                cam = adjusted.cameras[cid]
                camera_of_json_name[name] = ImageCamera(str(cam.model), int(cam.width), int(cam.height), tuple(cam.params))
    return [camera_of_json_name.get(name) for name in source.json_posed.frame_images]


def _write_overlay(info: DatasetInfo, source: _Source, result: FrontEndResult, cache: Path) -> tuple[Path, Any]:
    """The adjusted dataset in ``cache/dataset`` (module docstring). Returns it and the adjusted cameras
    (c2w, OpenCV axes, in the frame of the poses the dataparser reads)."""
    adjusted = result.model.model
    dataset = cache / "dataset"
    if info.kind == "colmap":
        model_dir = dataset / BUILT_MODEL_DIR
        write_colmap_model(adjusted, model_dir, formats=("bin",))
        return model_dir, adjusted.to_camera_set()
    assert source.json_posed is not None and info.transforms_path is not None
    json_posed = source.json_posed
    cams = adjusted.to_camera_set()  # c2w OpenCV, the stage input's world (the model's, or the json's)
    if source.posed is not json_posed:  # the model's world -> the transforms.json's
        sim, _ = frame_similarity(source.posed.cameras, json_posed.cameras)
        cams = CameraSet(names=cams.names, c2w=sim.apply(cams.c2w), source=cams.source)
    match = match_image_names(json_posed.cameras.names, cams.names)
    c2w = np.array([cams.c2w[m] if m is not None else json_posed.cameras.c2w[j] for j, m in enumerate(match)])
    json_cams = CameraSet(names=list(json_posed.cameras.names), c2w=c2w, source=str(dataset))
    replaced = [Path(info.transforms_path.name)] + ([source.model_rel] if source.model_rel is not None else [])
    _overlay(info.data_dir, dataset, replaced)
    write_refined_poses(json_posed, json_cams, dataset)
    cameras = _refined_frame_cameras(source, adjusted, match)
    if any(c is not None for c in cameras):  # the adjustment refined cameras (--intrinsics): the frames carry them
        written = dataset / "transforms.json"
        write_transforms_json(with_cameras(json.loads(written.read_text(encoding="utf-8")), cameras, str(written)), written)
    if info.transforms_path.name != "transforms.json":
        os.replace(dataset / "transforms.json", dataset / info.transforms_path.name)
    if source.model_rel is not None:
        write_colmap_model(adjusted, dataset / source.model_rel, formats=("bin",))
    return dataset, json_cams


# ---------------------------------------------------------------------------------------------
# running


def _movement(before: CameraSet, after: CameraSet) -> dict[str, float]:
    """How far the poses moved (matched by name; degrees and fraction of the scene radius)."""
    index = {n: i for i, n in enumerate(after.names)}
    rows = [(i, index[n]) for i, n in enumerate(before.names) if n in index]
    if not rows:
        return {"rotation_deg_median": 0.0, "rotation_deg_max": 0.0, "centre_rel_median": 0.0, "centre_rel_max": 0.0}
    b, a = (np.array(v) for v in zip(*rows))
    c2w_b, c2w_a = before.c2w[b], after.c2w[a]
    rot = rotation_angle_deg(c2w_b[:, :3, :3], c2w_a[:, :3, :3])
    radius = max(scene_radius(c2w_b[:, :3, 3]), 1e-12)
    centre = np.linalg.norm(c2w_a[:, :3, 3] - c2w_b[:, :3, 3], axis=-1) / radius
    return {"rotation_deg_median": float(np.median(rot)), "rotation_deg_max": float(rot.max()),
            "centre_rel_median": float(np.median(centre)), "centre_rel_max": float(centre.max())}


def _describe(summary: dict[str, Any], cache: Optional[Path], reused: bool) -> str:
    moved = summary.get("moved")
    what = summary["what"]
    where = f"; cached in {cache}" if cache is not None else ""
    if moved is None:
        return f"front end: {what} on {summary['num_images']} images ({summary['seconds']:.1f} s): {summary['fallback']}; training from the dataset's poses"
    head = "front end (reused)" if reused else "front end"
    return (
        f"{head}: {what} on {summary['num_images']} images in {summary['seconds']:.1f} s moved the poses by median "
        f"{moved['rotation_deg_median']:.3f} deg / {moved['centre_rel_median']:.2%} of the scene radius (max "
        f"{moved['rotation_deg_max']:.3f} deg / {moved['centre_rel_max']:.2%}){where}"
    )


def _adjusted_dataparser(dataparser_config: Any, info: DatasetInfo, cache: Path) -> Any:
    """A copy of ``dataparser_config`` reading the adjusted dataset in ``cache``."""
    config = copy.deepcopy(dataparser_config)
    if info.kind == "colmap":
        config.colmap_path = (cache / "dataset" / BUILT_MODEL_DIR).resolve()
    else:
        assert info.transforms_path is not None
        data = Path(dataparser_config.data)
        config.data = (cache / "dataset").resolve() / (info.transforms_path.name if data.suffix == ".json" else "")
    return config


def run_pipeline_front_end(
    dataparser_config: Any, cache: Optional[Path], options: FrontEndOptions, log: Callable[[str], None],
) -> Optional[FrontEndOutcome]:
    """Run the front end for the dataset ``dataparser_config`` reads (module docstring), or reuse ``cache``.

    Args:
        dataparser_config: nerfstudio's dataparser config (not changed).
        cache: the cache directory (``RUN/front_end``); None: a temporary directory, removed on exit
            (nothing is reused).
        options: the stages' options.
        log: receives progress lines.

    Returns:
        The outcome (the dataparser config of the adjusted dataset, or None when the tracks were too few),
        or None for a dataset the front end does not handle.

    Raises:
        InputError: what ``posefix refine`` refuses (unreadable model, missing images, wrong sizes,
            duplicate names, ...), naming the file; nothing is written into the dataset.
    """
    info = describe_dataset(dataparser_config)
    source = _dataset_source(info, log)
    if source is None:
        return None
    if cache is None:
        cache = Path(tempfile.mkdtemp(prefix="posefix_front_end_")) / "front_end"
        import atexit

        atexit.register(shutil.rmtree, cache.parent, True)
    cache = Path(cache)
    stamp = _fingerprint(source, options)
    if (cache / RESULT_FILE).is_file() and _read_json(cache / STAMP_FILE) == stamp:
        summary = _read_json(cache / RESULT_FILE)
        adjusted = summary.get("moved") is not None
        dataparser = _adjusted_dataparser(dataparser_config, info, cache) if adjusted else None
        return FrontEndOutcome(dataparser, summary, _describe(summary, cache, reused=True),
                               cache / "work" / ADJUSTED_MODEL if adjusted else None, source.posed.images_dir)
    t0 = time.perf_counter()
    inp, built = front_end_input(source.posed, options.build_tracks, log=log)  # refuses what refine refuses: nothing written yet
    partial = cache.with_name(cache.name + ".partial")
    if partial.exists() and _read_json(partial / STAMP_FILE) != stamp:
        shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    (partial / STAMP_FILE).write_text(json.dumps(stamp, indent=2), encoding="utf-8")
    try:
        return _run_into(partial, cache, info, source, inp, built, options, dataparser_config, t0, log)
    except Exception:  # not an interruption: no half-written cache is left (an interrupted one is resumed)
        shutil.rmtree(partial, ignore_errors=True)
        raise


def _run_into(
    partial: Path, cache: Path, info: DatasetInfo, source: _Source, inp: Any, built: bool, options: FrontEndOptions,
    dataparser_config: Any, t0: float, log: Callable[[str], None],
) -> FrontEndOutcome:
    """The stages into ``partial``, then ``partial`` renamed to ``cache``."""
    result = run_front_end(source.posed, inp, built, partial / "work", options, log=lambda m: log(f"front end: {m}"))
    what = ("tracks built from the images and bundle adjustment" if built else f"bundle adjustment ({options.bundle_adjustment}) of "
            "the COLMAP model's tracks")
    summary: dict[str, Any] = {
        "what": what, "source": source.note, "num_images": len(inp.model.images), "seconds": time.perf_counter() - t0,
        "tracks": result.tracks, "adjustment": result.adjustment, "fallback": result.fallback, "warnings": result.warnings,
        "moved": None,
    }
    if result.adjusted:
        _, adjusted = _write_overlay(info, source, result, partial)
        before = source.json_posed.cameras if source.json_posed is not None else source.posed.cameras
        summary["moved"] = _movement(before, adjusted)
    for warning in result.warnings:
        log(f"front end: warning: {warning}")
    (partial / RESULT_FILE).write_text(json.dumps(summary, indent=2), encoding="utf-8")
    if cache.exists():
        shutil.rmtree(cache)
    os.replace(partial, cache)
    dataparser = _adjusted_dataparser(dataparser_config, info, cache) if result.adjusted else None
    return FrontEndOutcome(dataparser, summary, _describe(summary, cache, reused=False),
                           cache / "work" / ADJUSTED_MODEL if result.adjusted else None, source.posed.images_dir)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def pipeline_front_end_options(pipeline_config: Any) -> FrontEndOptions:
    """The front-end options of a posefix pipeline config: its matching, blur matching, frame placement, COLMAP's threads, and its seed
    when it has one (else the options' default, posefix refine's). A config saved before a field existed reads as
    its default."""
    seed = getattr(pipeline_config, "front_end_seed", None)
    options = FrontEndOptions(matching=pipeline_config.front_end_matching, threads=int(getattr(pipeline_config, "front_end_threads", 0)),
                              intrinsics=str(getattr(pipeline_config, "front_end_intrinsics", "auto")),  # type: ignore[arg-type]
                              blur_matching=bool(getattr(pipeline_config, "front_end_blur_matching", True)),
                              frame_placement=bool(getattr(pipeline_config, "front_end_frame_placement", True)),
                              placement_max_frames=int(getattr(pipeline_config, "front_end_placement_max_frames", PLACEMENT_MAX_FRAMES)),
                              photometric_alignment=bool(getattr(pipeline_config, "front_end_photometric_alignment", True)))
    return options if seed is None else replace(options, seed=int(seed))


def training_dataparser(pipeline_config: Any, log: Callable[[str], None] = lambda line: None) -> tuple[Any, Optional[FrontEndOutcome]]:
    """The dataparser config a posefix pipeline's datamanager reads: the adjusted dataset's when the
    pipeline's front end is on (run now, or reused from its cache), else the config's own; and the
    front end's outcome (None when it is off or does not apply). Used at set-up and by readers of a run."""
    dataparser = pipeline_config.datamanager.dataparser
    if getattr(pipeline_config.datamanager, "data", None) is not None:
        dataparser.data = pipeline_config.datamanager.data
    if getattr(pipeline_config, "front_end", "off") != "on":
        return dataparser, None
    outcome = run_pipeline_front_end(
        dataparser, pipeline_config.front_end_cache, pipeline_front_end_options(pipeline_config), log=log,
    )
    if outcome is None or outcome.dataparser is None:
        return dataparser, outcome
    return outcome.dataparser, outcome
