"""``posefix refine``: poses in, refined poses out, in the input's own format and world frame.

::

    posefix refine --colmap-model scene/sparse/0 --images scene/images --output scene_refined
    posefix refine --poses capture/transforms.json --output capture_refined          # phone AR, Polycam, ...
    posefix refine --poses slam.txt --images rgb --timestamps rgb.txt --camera "PINHOLE 525,525,319.5,239.5" --output out

Poses without tracks
--------------------
A transforms.json, a TUM trajectory or a COLMAP model without points (:mod:`nerf_posefix.io.posed_images`)
first gets tracks built from its images (stage 0, :mod:`nerf_posefix.sfm.track_building`: SIFT
features, exhaustive or sequential matching, triangulation with the input poses held fixed; pycolmap),
kept in ``OUT.partial/tracks`` (the database and the triangulated model) for ``--resume``; ``--database``
reuses the features and matches of an earlier run. Its stage 1 is rounds of re-triangulation and robust
bundle adjustment (the poses may be degrees off, so tracks are first formed with a loose threshold and
re-formed as the poses improve). Too few tracks (fewer than 100 points: low texture, little overlap, tiny
images) is said, with the counts, and the refinement falls back to the photometric NeRF stage with the prior
(the method's default iterations when ``--iterations`` is 0), with a warning in the report. The output
holds the refined poses in the input's format (``transforms.json``: every key kept, ``applied_transform``
included; TUM: the same timestamps) beside the COLMAP model with the new points (same world frame).

The steps for a COLMAP model with tracks:

Steps
-----
1. **Validate** (nothing is written before this passes): the COLMAP model is read (binary or text,
   :func:`nerf_posefix.io.colmap.read_colmap_model`, i.e. nerfstudio's reader) and checked against the
   images on disk: every image of the model must exist under ``--images`` and have its camera's size, and
   every camera used must be one of :data:`REFINE_CAMERA_MODELS`, the model must have 3D points (the
   homography prior's depth bounds come from them) and their tracks (observations in the images, none of
   them dangling), and every image must decode in full (grayscale / palette / opaque RGBA images are
   converted to RGB for training, all to RGBA when one has transparency; see
   :mod:`nerf_posefix.sfm.inputs`). Missing or truncated model files, missing
   images, size mismatches, unsupported camera models and point-less models raise one
   :class:`~nerf_posefix.errors.InputError` naming the file (the CLI prints it and exits with code 2).
2. **Bundle-adjust** (``--bundle-adjustment``, default ``cauchy``; :mod:`nerf_posefix.sfm.bundle_adjustment`):
   pycolmap's bundle adjustment of the model's own tracks with a robust loss whose scale is twice the
   model's median reprojection error (clipped to 0.1-2 px), points refined, intrinsics fixed except a
   camera whose principal point is COLMAP's placeholder at the image centre and whose tracks contradict it
   (``--intrinsics auto``, :mod:`nerf_posefix.sfm.principal_point`), the result mapped back onto the input
   frame (rotation from the orientations, scale and translation from the centres). Seconds; kept in ``OUT.partial/bundle_adjusted`` for ``--resume``. A model fresh from
   COLMAP's mapper is at its squared-loss minimum already; a robust loss stops a few outlier tracks
   from holding poses back (castle-P30: README).
3. **Convert** the stage's model into the work directory ``OUT.partial/data`` (the input is never
   written to): a binary copy of the model (``sparse/0``), symbolic links to the images (``images/``;
   names containing directories are flattened, e.g. ``cam1/0001.jpg`` -> ``cam1__0001.jpg``), and
   nerfstudio's own ``colmap_to_json`` conversion (as ``ns-process-data``) to ``transforms.json`` +
   ``sparse_pc.ply``, in the world frame ``ns-train`` would train the input in: a transforms.json input's own
   (its ``applied_transform``; identity without one), nerfstudio's ``colmap_to_json`` frame for the other inputs.
   The radiance field is axis-aligned, so the frame it is trained in changes its result: trained where
   ``ns-train posefix`` trains the same transforms.json, both give the same poses.
4. **Train** the posefix method (:mod:`nerf_posefix.plugin.training`: in process, progress bar, CPU
   unless a GPU is asked for and present) on all images (``eval_mode=all``: every camera is refined); in a
   capture of more than ``--nerf-max-images`` (300), on the weakly held frames and their nearest held
   neighbours only, the other frames keeping the adjustment's poses (:mod:`nerf_posefix.sfm.nerf_subset`).
   Besides the photometric loss, the camera optimizer carries the **track term** (``--tracks on``: the
   robust reprojection error of the model's observations through the rendered pose, in pixels of the
   original images; with ``--track-points refined`` the points move too) and a prior toward the stage's
   input (``--regularizer pixels``: the homography prior as a mean squared image displacement over σ²,
   σ from ``--prior-sigma-px`` or per image its median reprojection residual), with depth bounds from the
   model's 3D points (``--bounds global`` / ``per-camera``). Checkpoints go to
   ``OUT.partial/runs/refine/METHOD/run`` every ``--checkpoint-every`` iterations and on Ctrl-C/SIGTERM;
   ``--resume`` continues an interrupted run from there.
5. **Export** (:func:`nerf_posefix.plugin.run_reader.refined_input_poses`): the refined poses mapped back
   to the original COLMAP world frame (the dataparser transform and scale and the conversion's
   ``applied_transform`` undone; the correction is applied to the float64 stage poses, so
   ``--iterations 0 --bundle-adjustment none`` returns the input exactly, points included), and the
   refined points (the stage's points plus the track term's offsets, in the input frame).
6. **Write** ``OUT`` atomically (assembled in a hidden temporary directory beside ``OUT``, then renamed;
   ``OUT.partial`` is removed on success):

   * ``sparse/0/{cameras,images,points3D}.{bin,txt}``: the input model with refined image poses
     (world-to-camera ``qvec``/``tvec``, OpenCV camera axes, COLMAP world frame; each ``qvec`` keeps the
     sign hemisphere of its input) and refined point positions (unless both stages are off); intrinsics
     (unless the adjustment refined a camera: ``--intrinsics``, said in the summary), image/camera ids, 2D
     keypoints and tracks are kept. ``report.json`` gives the mean reprojection
     error of the input model and of the output model (each under its own poses): the output is
     self-consistent. No ``rigs``/``frames`` files are written (COLMAP >= 3.12 would take poses from them).
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

import contextlib
import json
import math
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import numpy as np

from nerf_posefix.errors import InputError
from nerf_posefix.geometry.grouped import grouped_sorted_element
from nerf_posefix.io.atomic import (
    DirectoryLock, atomic_directory, check_output_dir, check_unlocked, lock_directory, overlaps, read_lock_owner,
)
from nerf_posefix.io.camera_set import CameraSet
from nerf_posefix.io.colmap import ColmapModel, check_colmap_database, text_unsafe_names, write_colmap_model
from nerf_posefix.io.colmap_transforms import write_nerfstudio_transforms
from nerf_posefix.io.posed_images import PosedImages, check_camera_spec, load_posed_images, write_refined_poses
from nerf_posefix.sfm.bundle_adjustment import available_memory_bytes
from nerf_posefix.sfm.frame_placement import PLACEMENT_MAX_FRAMES
from nerf_posefix.sfm.front_end import FrontEndOptions, check_front_end_options, front_end_input, run_front_end
from nerf_posefix.sfm.inputs import ValidatedInput, read_refine_model, validate_model
from nerf_posefix.sfm.nerf_subset import NERF_STAGE_MAX_IMAGES, nerf_stage_images
from nerf_posefix.sfm.residuals import ModelResiduals, model_residuals
from nerf_posefix.sfm.track_building import SPATIAL_NEIGHBORS
from nerf_posefix.workflows.refine_inputs import check_resume, prepare_training_data
from nerf_posefix.workflows.refine_report import NO_NERF_TOO_SMALL, RefineResult, build_report, write_report

PARTIAL_SUFFIX = ".partial"
STAMP_FILE = "refine_input.json"
BOUNDS_MODES = {"global": "points-global", "per-camera": "points-per-camera"}
#: The NeRF stage's budget when refine runs it by default for weakly held images (posefix-small on 2 CPU
#: cores: ~0.3 s per iteration), and the longer image side it trains at.
WEAK_FRAMES_ITERATIONS = 1000
WEAK_FRAMES_MAX_SIDE = 400
#: What a NeRF stage adds to the process's memory: nerfstudio's float32 cache of the training images, its copies and the
#: converted images, per training pixel (36 bytes: refine's stage on 1000 / 5000 images of 320x240 peaked 2.9 / 14 GB above
#: its front end's peak, docs/scaling.md), and the field, its optimizer and the rest (1 GiB).
NERF_STAGE_BYTES_PER_PIXEL = 36
NERF_STAGE_BASE_BYTES = 1 << 30
#: The shortest image side (training pixels, after the downscale) a NeRF stage trains on: below it a radiance
#: field has too few pixels per image to say anything about a pose.
NERF_MIN_SIDE_PX = 16


@dataclass
class RefineOptions:
    """Refine camera poses (a COLMAP model, a transforms.json or a TUM trajectory, with their images): robust
    bundle adjustment of the input's tracks, or of tracks built from the images when it has none, then
    optionally a NeRF stage; writes the refined poses in the input's own format and world frame, a COLMAP
    model with the (new) points, and a per-image report of how far each camera moved."""

    output: Path
    """Output directory to create (must not exist unless --overwrite)."""
    colmap_model: Optional[Path] = None
    """COLMAP model directory (cameras/images/points3D, .bin or .txt), e.g. scene/sparse/0. Never modified.
    (The same as --poses with a COLMAP model.)"""
    poses: Optional[Path] = None
    """Poses from anywhere: a transforms.json (or its directory), a TUM trajectory file (with --camera and
    --images), or a COLMAP model (with or without points). Without tracks, they are built from the images
    (features, matching, triangulation with the poses held fixed; pycolmap). The refined poses are written
    in the same format and world frame. Never modified."""
    images: Optional[Path] = None
    """Directory of the images (names are relative to it). Needed for COLMAP models and TUM trajectories; a
    transforms.json's images are where its file_path values say. Never modified."""
    camera: Optional[str] = None
    """Intrinsics of a TUM trajectory's images: 'MODEL p1,p2,...' in COLMAP's order and pixels, e.g.
    'PINHOLE 525,525,319.5,239.5'."""
    timestamps: Optional[Path] = None
    """TUM input: a 'timestamp image_name' list (TUM RGB-D rgb.txt). Default: image file names are timestamps."""
    t_max_diff: float = 0.01
    """TUM input: largest time difference (s) between an image and its trajectory pose."""
    build_tracks: Literal["auto", "always"] = "auto"
    """auto: build tracks from the images when the input has none (transforms.json, TUM, point-less COLMAP
    model); always: also for a COLMAP model with tracks (its own tracks are then ignored)."""
    matching: Literal["auto", "exhaustive", "sequential", "spatial"] = "auto"
    """Feature matching when tracks are built: exhaustive (every pair; small sets), sequential (each image
    with its --sequential-overlap successors in name/time order; video-like captures), spatial (each image
    with its 20 nearest images by the input poses whose viewing directions are within 75°: pairs linear in
    the images, loops and survey passes closed whatever the names' order), auto (exhaustive up to 150
    images, spatial beyond)."""
    sequential_overlap: int = 10
    """Sequential matching: how many following images each image is matched with."""
    spatial_neighbors: int = SPATIAL_NEIGHBORS
    """Spatial matching: how many images each image is matched with (its nearest by the input poses whose
    viewing directions are within 75 degrees)."""
    database: Optional[Path] = None
    """A COLMAP database of these images (features and verified matches, e.g. from an earlier run or
    COLMAP's GUI) to build the tracks from instead of extracting and matching again. Copied, never modified."""
    blur_matching: bool = True
    """When tracks are built: match the blurred frames that the ordinary matching links with few matches against
    copies of their neighbours blurred alike (the blur estimated per frame), adding tracks that hold them
    (--no-blur-matching: the ordinary matches only)."""
    frame_placement: bool = True
    """When tracks are built: place the blurred frames the adjustment holds weakly or not at all (no verified pair, few tracks:
    a long motion streak, a strong defocus) against the adjusted images held fixed: each matched against its
    neighbours blurred as it matches best (a Gaussian, or a streak whose direction and length are searched), then
    registered by COLMAP; a frame placed on at least 100 tracks (and on more than the adjustment held it by) counts
    as held at its placed pose, the others keep the adjustment's (those it did not hold are left to the NeRF
    stage) (10-15 s per frame on 2 cores; --no-frame-placement: they go to the NeRF stage as they are)."""
    placement_max_frames: int = PLACEMENT_MAX_FRAMES
    """The most blurred frames placed per capture, the least blurred first (the others are left to the NeRF stage;
    the log and report.json say which): bounds the placement's time on captures with many blurred frames."""
    photometric_alignment: bool = True
    """When tracks are built: align the frames still weakly held after the placement (few or no tracks: blurred,
    washed out, grainy) by their intensities against their nearest held neighbours, through the points those observe
    (coarse to fine, at up to 1024 px); a frame whose residuals the aligned pose lowers by 3 standard errors counts as
    held there, the others are left to the NeRF stage (castle-P30 with grainy frames: docs/benchmarks.md;
    --no-photometric-alignment: they go to the NeRF stage as they are). The same comparison then checks the NeRF
    stage's moves of weakly held frames: a move after which the frame fits its held neighbours worse, by 3 standard
    errors, is undone (the stage's field, trained with the frame at its drifting pose, can fit a frame that moved
    away; the frame's own pixels against its neighbours cannot)."""
    method: Literal["posefix", "posefix-small"] = "posefix-small"
    """posefix-small: sized for a CPU; posefix: nerfacto-sized (GPU)."""
    iterations: Optional[int] = None
    """Training iterations of the NeRF stage. Default (auto): the bundle-adjustment stage alone when the
    tracks hold every image (castle-P30 and the COLMAP track: a NeRF stage with the track term ties with it
    at 20-40x the cost), and the NeRF stage (:data:`WEAK_FRAMES_ITERATIONS`, images downscaled to at most
    :data:`WEAK_FRAMES_MAX_SIDE` px) when some images are weakly held (few or no tracks, an uncertain pose,
    a separate group): there the photometric loss is the only information, and the prior holds the
    well-held cameras at the adjustment's answer. 0: the adjustment alone, always. N: the NeRF stage with
    N iterations, always. With --bundle-adjustment none and 0 iterations the output is the input exactly."""
    bundle_adjustment: Literal["cauchy", "huber", "soft_l1", "squared", "none"] = "cauchy"
    """First stage: a bundle adjustment of the model's own tracks with this robust loss (pycolmap, seconds;
    intrinsics as --intrinsics says, points refined, the result mapped back onto the input frame), whose poses and
    points the NeRF stage starts from. none: start from the input model."""
    ba_scale_px: Optional[float] = None
    """Robust scale of the bundle adjustment (pixels). Default: twice the model's median reprojection
    error, clipped to [0.1, 2] px."""
    intrinsics: Literal["auto", "fixed", "focal", "focal-pp"] = "auto"
    """What the bundle adjustment of a COLMAP model's own tracks refines of its cameras (the output model then
    carries them): auto: focal-pp for each camera whose principal point is COLMAP's placeholder (exactly the image
    centre, shared by at least 8 images) and whose tracks contradict it (the principal point estimated with the
    intrinsics free, χ² > 13.8 against its covariance), the others fixed; fixed: nothing; focal: the focal lengths
    and distortion; focal-pp: those and the principal point. castle-P30's self-calibrated sparse_selfcal/0: 0.677 deg
    (fixed) -> 0.064 deg (auto refines it); the bundled toybox's COLMAP models, whose true principal point is the
    centre: held (refining it there costs 2-3x). Not for tracks built from the images (docs/benchmarks.md)."""
    nerf_cameras: Literal["weak", "all"] = "weak"
    """Which cameras the NeRF stage refines: ``weak``, those the tracks hold weakly (few or no tracks, an
    uncertain pose, a separate group), the others keeping the adjustment's pose; ``all``: every camera."""
    nerf_max_images: int = NERF_STAGE_MAX_IMAGES
    """With ``--nerf-cameras weak``, a capture of more images than this trains its NeRF stage on the weakly held
    frames and their nearest held neighbours (by camera centre, facing alike), this many in all (at least 4
    neighbours each: many weak frames make a larger subset); the other frames
    keep the adjustment's poses, as held frames do anyway (:mod:`nerf_posefix.sfm.nerf_subset`: nerfstudio caches
    every training image in memory, and one small field over thousands of frames renders none of them well).
    0: the whole capture."""
    weak_alignment: bool = True
    """After the NeRF stage's training, align the weakly held cameras with few tracks (fewer than
    ``support.MIN_OBSERVATIONS`` observations) or in a separate group (both left out of the track term) photometrically
    against the frozen field
    (each with its own appearance embedding; :mod:`nerf_posefix.plugin.weak_alignment`), which pins them better
    than the joint training (toybox, 16 blurred of 64 views: median rotation error 0.78 -> 0.28 deg, ~15% of the
    training's time); only after at least 500 training iterations (an untrained field would move them at random);
    --no-weak-alignment: the trained poses as they are."""
    tracks: Literal["on", "off"] = "on"
    """Track term of the NeRF stage: the robust reprojection error of the model's observations through the
    rendered poses, in pixels of the original images (off: photometric error and prior only)."""
    track_points: Literal["refined", "fixed"] = "refined"
    """Whether the track term also moves the 3D points (they are written back, in the input frame)."""
    regularizer: Literal["pixels", "homography", "nerfstudio", "none"] = "pixels"
    """What holds the poses near the stage's input while they are refined: the homography prior as a mean
    squared image displacement over σ² (pixels; σ from --prior-sigma-px, else per image from its
    reprojection residuals), the paper's unscaled homography prior, nerfstudio's own L2 penalties on the
    adjustment (its default trans_l2_penalty / rot_l2_penalty; for comparison), or nothing."""
    prior_sigma_px: Optional[float] = None
    """σ of the pixels prior: how far (mean image displacement, pixels) the input poses may be from the
    truth, e.g. ~20 for phone AR or SLAM poses. Default: per image, its median reprojection residual."""
    bounds: Literal["global", "per-camera"] = "global"
    """Depth range of the homography prior from the model's 3D points: one range for the scene (global)
    or one per camera from the points it observes (per-camera). Also used by the report's homography
    error, whatever the regulariser."""
    move_threshold_deg: float = 1.0
    """Flag images whose rotation moved more than this (degrees)."""
    move_threshold_rel: float = 0.02
    """Flag images whose centre moved more than this fraction of the scene radius."""
    downscale_factor: Optional[int] = None
    """Train the NeRF stage on images downscaled by this integer factor (resized copies in the work
    directory). Default: 1 with --iterations N; the smallest factor that brings the longer side to at most
    WEAK_FRAMES_MAX_SIDE px when the NeRF stage runs by default for weakly held images."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Training device; auto: cuda when available, else cpu."""
    threads: int = 0
    """torch CPU threads, and COLMAP's when tracks are built (0: one per core). On a CPU shared with other jobs, 1 can be
    several times faster (OpenMP oversubscription). With 1, two runs give the same poses to the last digit; with more,
    COLMAP's approximate CPU matcher can flip a borderline image pair from run to run (the bundled toybox: 389
    instead of 390 verified pairs in 1 of 9 runs)."""
    checkpoint_every: int = 250
    """Save a checkpoint every this many iterations (for --resume)."""
    seed: int = 42
    """Random seed of the training."""
    copy_images: bool = False
    """Copy the images into OUT/images instead of linking to the input directory."""
    overwrite: bool = False
    """Replace OUT if it exists (only an earlier posefix refine output), and discard an interrupted run's work directory
    OUT.partial."""
    resume: bool = False
    """Continue an interrupted run from the last checkpoint in OUT.partial."""
    quiet: bool = False
    """Hide nerfstudio's console messages (the progress bar and the summary stay). The default unless
    --verbose."""
    verbose: bool = False
    """Show nerfstudio's console while a NeRF stage trains (and, from the command line, third-party warnings)."""


# ---------------------------------------------------------------------------------------------
# work directory


def partial_dir(output: Path) -> Path:
    """The work directory of a refine run writing ``output``: ``OUT.partial`` beside it."""
    output = Path(output)
    return output.parent / f"{output.name}{PARTIAL_SUFFIX}"


def _stamp(options: RefineOptions, inp: ValidatedInput, built: bool) -> dict[str, Any]:
    """The input and the options that decide a run's result (a work directory made with other ones is not resumed):
    the front end's (:meth:`FrontEndOptions.stamp`) and the NeRF stage's."""
    return {
        "colmap_model": str(Path(options.poses or options.colmap_model).resolve()),
        "images": str(inp.images_dir),
        "fingerprint": inp.fingerprint(),
        **front_end_options(options).stamp(built),
        "method": options.method,
        "bounds": options.bounds,
        "regularizer": options.regularizer,
        "prior_sigma_px": options.prior_sigma_px,
        "tracks": options.tracks,
        "track_points": options.track_points,
        "nerf_cameras": options.nerf_cameras,
        "nerf_max_images": options.nerf_max_images,
        "downscale_factor": options.downscale_factor,
        "seed": options.seed,
    }


def _check_output_paths(options: RefineOptions) -> None:
    """OUT must not be, hold or sit inside an input (resolved paths), nor its work directory; it may exist
    only with --overwrite and only if posefix wrote it."""
    inputs = [("--colmap-model", options.colmap_model), ("--poses", options.poses), ("--images", options.images),
              ("--timestamps", options.timestamps), ("--database", options.database)]
    inputs = [(flag, path) for flag, path in inputs if path is not None]
    check_output_dir(options.output, inputs, options.overwrite, command="refine")
    for _, inp in inputs:
        if os.path.lexists(inp) and overlaps(partial_dir(options.output), inp):
            raise InputError(f"{partial_dir(options.output)}: the work directory of --output would hold or lie inside the input {inp}")


# ---------------------------------------------------------------------------------------------
# output


def refined_model(inp: ValidatedInput, refined: CameraSet, points: Optional[dict[int, np.ndarray]] = None) -> ColmapModel:
    """The input model with the refined poses (by image name; each ``qvec`` keeps its input's sign) and,
    when given, the refined positions ``{point3D_id: xyz}`` (input frame) of its points; tracks, errors,
    colours, intrinsics and ids are kept."""
    model = inp.model.with_poses(CameraSet(names=refined.names, c2w=refined.c2w, source=refined.source))
    images = dict(model.images)
    for image_id, im in images.items():
        q_in = np.asarray(inp.model.images[image_id].qvec, dtype=np.float64)
        q = np.asarray(im.qvec, dtype=np.float64)
        if float(q @ q_in) < 0:
            images[image_id] = im._replace(qvec=-q)
    points3D = dict(model.points3D)
    for point_id, xyz in (points or {}).items():
        if point_id in points3D:
            points3D[point_id] = points3D[point_id]._replace(xyz=np.asarray(xyz, dtype=np.float64))
    return replace(model, images=images, points3D=points3D, path="")


def _read_input(options: RefineOptions) -> tuple[PosedImages, ValidatedInput, bool]:
    """Read the pose source and check it against its images (nothing written). Returns the source, the
    validated model (a point-less model of the input poses when tracks are to be built) and whether tracks
    are to be built."""
    if (options.colmap_model is None) == (options.poses is None):
        raise InputError("give the input as --poses PATH (transforms.json, TUM file or COLMAP model) or --colmap-model DIR")
    check_front_end_options(front_end_options(options))
    _check_options_early(options)  # what needs no input read (and no torch): --camera, --ba-scale-px, --device
    source = Path(options.poses or options.colmap_model)
    refine_model = None
    if options.colmap_model is not None or (source.is_dir() and any(source.glob("cameras.*"))):
        refine_model = read_refine_model(source)  # a COLMAP model: its files and camera models, named as refine needs them
    posed = load_posed_images(source, options.images, options.camera, options.timestamps, options.t_max_diff,
                              colmap_model=None if refine_model is None else refine_model[0])
    if options.images is None:  # a transforms.json's images: OUT must not be or lie inside their directories
        folders = sorted({(posed.images_dir / name).parent for name in posed.cameras.names})
        check_output_dir(options.output, [("the images of --poses", folder) for folder in folders], options.overwrite, command="refine")
    if options.database is not None and posed.has_tracks and options.build_tracks != "always":
        raise InputError("--database is used to build tracks; this input has its own (use --build-tracks always)")
    if refine_model is not None and posed.kind == "colmap" and posed.has_tracks and options.build_tracks != "always":
        model, model_dir, ext = refine_model
        inp, built = validate_model(model, model_dir, ext, Path(options.images or posed.images_dir), log=_silent), False
    else:
        inp, built = front_end_input(posed, options.build_tracks, log=_silent)  # the image conversions: said by the NeRF stage
    if built and options.intrinsics not in ("auto", "fixed"):
        raise InputError(f"--intrinsics {options.intrinsics} refines the cameras of a COLMAP model's own tracks (--colmap-model "
                         "with its points); this input's tracks are built from the images, with the given intrinsics held")
    _note_text_unsafe_names(inp, built)
    if options.iterations:  # a NeRF stage asked for: images it can train on, said before anything is written
        too_small = nerf_too_small(inp, options.downscale_factor or 1)
        if too_small:
            raise InputError(too_small)
    if built:
        _check_not_degenerate(inp)
        if options.database is not None:  # read-only: a COLMAP database of these very images
            names = [inp.model.images[i].name for i in inp.model.image_ids()]
            sizes = {n: (int(c.width), int(c.height)) for n, c in posed.intrinsics.items()}
            check_colmap_database(options.database, names, f"--database {options.database}", images_dir=inp.images_dir, sizes=sizes)
    return posed, inp, built


def _check_options_early(options: RefineOptions) -> None:
    """The option checks that need neither the input nor torch, so each is one line in well under a second:
    ``--camera`` (syntax, model, positive focal lengths), ``--ba-scale-px``, ``--device cuda`` without a
    CUDA device (when a NeRF stage may run)."""
    check_camera_spec(options.camera)
    if options.ba_scale_px is not None and not (math.isfinite(options.ba_scale_px) and options.ba_scale_px > 0):
        raise InputError(f"--ba-scale-px must be a positive number of pixels, got {options.ba_scale_px:g}")
    if options.device == "cuda" and options.iterations != 0 and not _cuda_may_be_available():
        raise InputError("--device cuda: no CUDA device is available (use --device cpu or auto)")


def _cuda_may_be_available() -> bool:
    """False when CUDA surely is not available to torch, found without importing it (seconds): a torch
    built without CUDA, no NVIDIA device file, or CUDA_VISIBLE_DEVICES hiding every device. True means
    "maybe": torch decides later."""
    import importlib.util
    import re

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        return False
    try:
        version = (Path(spec.origin).parent / "version.py").read_text(encoding="utf-8")
    except OSError:
        return True
    if re.search(r"^cuda(?::[^=]*)?=\s*None\s*$", version, flags=re.MULTILINE):
        return False
    return any(Path("/dev").glob("nvidia[0-9]*")) or Path("/dev/nvidiactl").exists() or Path("/dev/dxg").exists()


def _note_text_unsafe_names(inp: ValidatedInput, built: bool) -> None:
    """Say so when image names hold white space, which COLMAP's text format cannot hold (COLMAP and pycolmap
    read a name in images.txt only up to its first space): the output model is written in the binary format
    only, and a text input model is handed to pycolmap as a binary copy (in the work directory)."""
    unsafe = text_unsafe_names(im.name for im in inp.model.images.values())
    if not unsafe:
        return
    copy = "; pycolmap reads a binary copy of the input model (OUT.partial/input)" if inp.ext == ".txt" and not built else ""
    _log(f"{len(unsafe)} image name(s) hold spaces (e.g. {unsafe[0]!r}), which COLMAP's text format cannot hold: "
         f"OUT/sparse/0 is written in COLMAP's binary format only{copy}")


#: Below this standard deviation of the grey levels (0-255) an image has no texture to find features in.
FLAT_IMAGE_STD = 2.0


def _check_not_degenerate(inp: ValidatedInput) -> None:
    """Images that tracks cannot be built from, named before any work (feature extraction and matching of
    such images run for minutes and end in "no point could be triangulated"): every image the same file, or
    fewer than two images with any texture (images spread over the set are looked at first; the check stops
    at the second one with texture, so a usual capture costs two small decodes).

    Raises:
        InputError: naming the image directory and the cause.
    """
    from PIL import Image

    names = [inp.model.images[i].name for i in inp.model.image_ids()]
    paths = [inp.image_paths[n] for n in names]
    if len(paths) >= 2 and len({p.stat().st_size for p in paths}) == 1:
        first = paths[0].read_bytes()
        if all(p.read_bytes() == first for p in paths[1:]):  # stops at the first image that differs
            raise InputError(
                f"{inp.images_dir}: all {len(paths)} images are the same picture ({names[0]}, {names[1]}, ... have identical "
                "content): there is no second view to triangulate from, so no tracks can be built; give the images of "
                "the capture"
            )

    def flat(path: Path) -> bool:
        with Image.open(path) as img:
            img.draft("L", (256, 256))  # JPEG: decoded at a reduced scale
            gray = img.convert("L")
            gray.thumbnail((256, 256))
            return float(np.asarray(gray, dtype=np.float32).std()) < FLAT_IMAGE_STD

    sample = sorted({round(k * (len(paths) - 1) / 15) for k in range(16)}) if len(paths) > 16 else list(range(len(paths)))
    order = sample + [k for k in range(len(paths)) if k not in set(sample)]
    textured: list[int] = []
    for k in order:  # stops at the second image with texture (usually the first two)
        if not flat(paths[k]):
            textured.append(k)
            if len(textured) == 2:
                return
    if len(textured) < 2:
        which = f"only {names[textured[0]]} has any" if textured else "none has any"
        raise InputError(
            f"{inp.images_dir}: the images have no texture (of {len(paths)} images {which}: the grey levels vary by less "
            f"than {FLAT_IMAGE_STD:g} of 255): no features can be found in them, so no tracks can be built"
        )


def front_end_options(options: RefineOptions) -> FrontEndOptions:
    """The front end's options of a refine run."""
    return FrontEndOptions(
        build_tracks=options.build_tracks, matching=options.matching, sequential_overlap=options.sequential_overlap,
        spatial_neighbors=options.spatial_neighbors, database=options.database, blur_matching=options.blur_matching,
        frame_placement=options.frame_placement, placement_max_frames=options.placement_max_frames,
        photometric_alignment=options.photometric_alignment, bundle_adjustment=options.bundle_adjustment,
        ba_scale_px=options.ba_scale_px, intrinsics=options.intrinsics,
        threads=options.threads, seed=options.seed,
    )


def _camera_changes(before: ColmapModel, after: ColmapModel) -> dict[str, dict[str, Any]]:
    """Per camera id the adjustment changed: its model and parameters before and after (COLMAP's order and pixels)."""
    return {str(k): {"model": str(after.cameras[k].model), "before": [float(v) for v in before.cameras[k].params],
                     "after": [float(v) for v in after.cameras[k].params]} for k in after.changed_camera_ids(before)}


def _silent(message: str) -> None:
    """A log that says nothing (what it would say is said later, where it applies)."""


def _log(message: str) -> None:
    print(f"posefix refine: {message}", flush=True)


def _weak_alignment_note(run_dir: Path, enabled: bool, dataparser_scale: float, rename: dict[str, str]) -> dict[str, Any]:
    """What the NeRF stage's weak alignment did (the run's ``weak_alignment.json``, written by the pipeline after
    its last iteration), for the summary: translations converted from dataparser units to input units
    (``/ dataparser_scale``: the stage's transforms.json has no applied scale) and images named as in the input."""
    from nerf_posefix.plugin.weak_alignment import WEAK_ALIGNMENT_FILE, move_statistics

    if not enabled:
        return {"ran": False, "reason": "--no-weak-alignment"}
    path = run_dir / WEAK_ALIGNMENT_FILE
    if not path.is_file():
        return {"ran": False, "reason": f"no record in {path} (a run trained before the alignment existed?)"}
    note = json.loads(path.read_text(encoding="utf-8"))
    if not note.get("ran"):
        return note
    moved = {rename.get(name, name): {**m, "translation": m["translation"] / dataparser_scale} for name, m in note["images"].items()}
    return {**note, **move_statistics(moved), "images": moved, "units": "translation: input units"}


def _refined_points(stage_model: ColmapModel, run: Any, adjusted: bool, trained: bool) -> tuple[Optional[dict[int, np.ndarray]], str]:
    """The output's points ``{point3D_id: xyz}`` (input frame): the stage input's points plus the NeRF
    stage's offsets when it refined them; and a note for the report."""
    offsets = run.refined_point_offsets() if run is not None else None
    base = {pid: np.asarray(p.xyz, dtype=np.float64) for pid, p in stage_model.points3D.items()}
    if offsets is not None and np.abs(offsets[1]).max(initial=0.0) > 0:
        for pid, delta in zip(*offsets):
            if int(pid) in base:
                base[int(pid)] = base[int(pid)] + delta
        moved = "refined by the bundle adjustment, then jointly with the poses by the track term" if adjusted else "refined jointly with the poses by the track term"
        return base, f"{moved} (input world frame; tracks unchanged)"
    if adjusted:
        held = "; held fixed by the NeRF stage" if trained else ""
        return base, f"refined by the bundle adjustment (input world frame; tracks unchanged){held}"
    return None, "carried over unchanged from the input (not re-triangulated)"


def model_reprojection_error(model: ColmapModel, residuals: Optional[ModelResiduals] = None) -> float:
    """Mean reprojection error (original pixels) of all observations of ``model``'s points in front of their
    cameras, under its own poses and cameras (:func:`nerf_posefix.sfm.residuals.model_residuals`, or
    ``residuals`` when the caller has them already)."""
    res = residuals if residuals is not None else model_residuals(model)
    valid = res.valid
    return float(res.residual_px[valid].mean()) if valid.any() else float("nan")


#: How the output's poses are written, per input format (report.json's ``frame``).
FRAME_NOTES = {
    "colmap": "COLMAP world frame of the input; world-to-camera qvec/tvec, OpenCV camera axes",
    "transforms": "the input transforms.json's world frame and conventions (camera-to-world, OpenGL axes, its "
    "applied_transform kept); sparse/0 in the same world frame (world-to-camera, OpenCV axes)",
    "tum": "the input TUM file's world frame, camera-to-world rows with its timestamps (rows paired with no image "
    "get the correction of the nearest paired row); sparse/0 in the same world frame (world-to-camera, OpenCV axes)",
}


def _link_images(posed: PosedImages, inp: ValidatedInput, tmp: Path, copy: bool) -> None:
    """Make the images reachable from the output as the written poses name them: ``images`` -> the image
    directory, or (a transforms.json whose file_path values are relative to its own directory) one link per
    top-level entry of those paths."""
    if posed.kind == "transforms" and posed.images_dir == posed.source.parent:
        tops = sorted({name.split("/", 1)[0] for name in inp.image_paths})
        for top in tops:
            src = posed.images_dir.resolve() / top
            if copy:
                (shutil.copytree if src.is_dir() else shutil.copy2)(src, tmp / top)
            else:
                os.symlink(src, tmp / top, target_is_directory=src.is_dir())
        return
    if copy:
        (tmp / "images").mkdir()
        for name, path in inp.image_paths.items():
            (tmp / "images" / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, tmp / "images" / name)
    else:
        os.symlink(inp.images_dir, tmp / "images", target_is_directory=True)


def _write_output(options: RefineOptions, posed: PosedImages, inp: ValidatedInput, model: ColmapModel, reports, summary) -> Path:  # noqa: ANN001
    """Assemble OUT in a temporary sibling directory and rename it into place. ``summary["model_formats"]``:
    the formats of OUT/sparse/0 as written (binary only when image names hold spaces)."""
    out = Path(options.output)
    with atomic_directory(out, command="refine") as tmp:
        sparse = write_colmap_model(model, tmp / "sparse" / "0", formats=("bin", "txt"))
        summary["model_formats"] = [fmt for fmt in ("bin", "txt") if (sparse / f"images.{fmt}").is_file()]
        if posed.kind == "colmap":
            write_nerfstudio_transforms(model, tmp)
        else:
            refined = model.to_camera_set()
            if posed.kind == "transforms" and posed.images_dir != posed.source.parent:
                assert posed.transforms_meta is not None
                frames = [{**f, "file_path": f"images/{n}"} for f, n in zip(posed.transforms_meta["frames"], posed.frame_images)]
                posed = replace(posed, transforms_meta={**posed.transforms_meta, "frames": frames})
            write_refined_poses(posed, refined, tmp)
        _link_images(posed, inp, tmp, options.copy_images)
        write_report(tmp, reports, summary)
    return out


# ---------------------------------------------------------------------------------------------
# the command


def regularizer_overrides(regularizer: str) -> dict[str, Any]:
    """Camera-optimizer settings of ``--regularizer`` (the posefix optimizer is kept in every case, so
    export, report and bounds work the same): ``pixels``: the pixel form of the homography prior;
    ``homography``: the method's homography prior, no L2 penalties; ``nerfstudio``: homography weight 0
    and nerfstudio's default ``trans_l2_penalty`` / ``rot_l2_penalty`` (read from its
    ``CameraOptimizerConfig``: the same loss as its ``camera_opt_regularizer``); ``none``: no regulariser
    at all."""
    key = "pipeline.model.camera_optimizer."
    if regularizer == "pixels":
        return {key + "prior": "pixels", key + "trans_l2_penalty": 0.0, key + "rot_l2_penalty": 0.0}
    if regularizer == "homography":
        return {key + "trans_l2_penalty": 0.0, key + "rot_l2_penalty": 0.0}
    if regularizer == "nerfstudio":
        from nerfstudio.cameras.camera_optimizers import CameraOptimizerConfig

        defaults = CameraOptimizerConfig()
        return {key + "weight": 0.0, key + "trans_l2_penalty": defaults.trans_l2_penalty,
                key + "rot_l2_penalty": defaults.rot_l2_penalty}
    if regularizer == "none":
        return {key + "weight": 0.0, key + "trans_l2_penalty": 0.0, key + "rot_l2_penalty": 0.0}
    raise InputError(f"--regularizer must be pixels, homography, nerfstudio or none, got {regularizer!r}")


def _point_depth_bounds(stage_model: ColmapModel, input_model: ColmapModel, mode: str) -> Optional[tuple[np.ndarray, np.ndarray, str]]:
    """The report's homography depth bounds without a NeRF stage: robust quantiles (2.5 %, 97.5 %; the
    element at ``int(q · (n - 1))`` of the sorted depths, as
    :func:`nerf_posefix.geometry.homography.depth_bounds_from_points`) of the depths of the stage model's
    points in front of each image (``per-camera``) or pooled (``global``), in input units, per image of
    ``input_model`` (image-id order); None when the model has no tracks or an image sees no point in front."""
    res = model_residuals(stage_model)  # image-id order of the stage model, input frame
    n = len(stage_model.images)
    depth = np.where(res.depth > 0, res.depth, np.nan)  # [M]
    if mode == "per-camera":
        xmin = grouped_sorted_element(depth, res.image_index, n, 0.025)
        xmax = np.maximum(grouped_sorted_element(depth, res.image_index, n, 0.975), xmin * (1 + 1e-6))
    else:
        pooled = np.zeros(depth.size, dtype=np.int64)
        lo, hi = (float(grouped_sorted_element(depth, pooled, 1, q)[0]) for q in (0.025, 0.975))
        xmin, xmax = np.full(n, lo), np.full(n, max(hi, lo * (1 + 1e-6)))
    if n == 0 or np.isnan(xmin).any():
        return None
    row = {stage_model.images[i].name: k for k, i in enumerate(stage_model.image_ids())}
    order = [row[input_model.images[i].name] for i in input_model.image_ids()]
    return xmin[order], xmax[order], f"depths of the adjusted model's points ({mode})"


def _nerf_stage_subset(options: RefineOptions, stage_input: ValidatedInput,
                       ba_summary: Optional[dict[str, Any]]) -> Optional[list[str]]:
    """The image names the NeRF stage trains on when the capture is larger than ``--nerf-max-images`` and only the
    weakly held cameras are refined (:func:`nerf_posefix.sfm.nerf_subset.nerf_stage_images`); None: every image."""
    per_image = (ba_summary or {}).get("images") or {}
    names = [stage_input.model.images[i].name for i in stage_input.model.image_ids()]
    if options.nerf_cameras != "weak" or options.nerf_max_images <= 0 or len(names) <= options.nerf_max_images or not per_image:
        return None
    weak = [n for n in names if per_image.get(n, {}).get("weak", False)]
    chosen = nerf_stage_images(names, stage_input.model.to_camera_set(observations=False).c2w, weak, options.nerf_max_images)
    return None if len(chosen) == len(names) else chosen


def nerf_stage_memory(inp: ValidatedInput, downscale: int) -> int:
    """Memory (bytes) a NeRF stage on the images of ``inp`` downscaled ``downscale``x adds to the process:
    :data:`NERF_STAGE_BYTES_PER_PIXEL` per training pixel and :data:`NERF_STAGE_BASE_BYTES`."""
    cameras = inp.model.cameras
    pixels = sum((int(cameras[im.camera_id].width) // max(1, downscale)) * (int(cameras[im.camera_id].height) // max(1, downscale))
                 for im in inp.model.images.values())
    return int(NERF_STAGE_BASE_BYTES + NERF_STAGE_BYTES_PER_PIXEL * pixels)


def nerf_stage_memory_problem(inp: ValidatedInput, downscale: int, available: Optional[int] = None) -> Optional[str]:
    """Why a NeRF stage on ``inp`` at ``downscale`` would not fit in the memory still available
    (:func:`nerf_posefix.sfm.bundle_adjustment.available_memory_bytes`, or ``available`` bytes), or None."""
    need, have = nerf_stage_memory(inp, downscale), available_memory_bytes() if available is None else available
    if need <= have:
        return None
    return (f"the NeRF stage on {len(inp.model.images)} images downscaled {downscale}x would need ~{need / 2**30:.1f} GiB of memory "
            f"and {have / 2**30:.1f} GiB are available")


def _auto_downscale(inp: ValidatedInput) -> int:
    """The smallest integer factor that brings every image's longer side to at most WEAK_FRAMES_MAX_SIDE px."""
    longest = max(max(int(c.width), int(c.height)) for c in inp.model.cameras.values())
    return max(1, -(-longest // WEAK_FRAMES_MAX_SIDE))


def nerf_too_small(inp: ValidatedInput, downscale: int) -> Optional[str]:
    """Why the images of ``inp`` are too small for a NeRF stage at ``downscale`` (the smallest image's shorter
    side below :data:`NERF_MIN_SIDE_PX` training pixels), or None."""
    camera = min(inp.model.cameras.values(), key=lambda c: min(int(c.width), int(c.height)))
    side = min(int(camera.width), int(camera.height)) // max(1, downscale)
    if side >= NERF_MIN_SIDE_PX:
        return None
    return (f"{inp.images_dir}: images of {int(camera.width)}x{int(camera.height)} px" + (f" downscaled {downscale}x" if downscale > 1 else "")
            + f" are too small for the NeRF stage (shorter side {side} px, at least {NERF_MIN_SIDE_PX} px); use --iterations 0 "
            "(the adjustment alone)" + (" or a smaller --downscale-factor" if downscale > 1 else ""))


def _write_prior_sigma(transforms: Path, stage_input: ValidatedInput, support: dict[str, Any]) -> None:
    """Record in the training dataset's frames how well the front end's tracks hold each camera: the pixels
    prior's σ (:data:`~nerf_posefix.io.transforms_json.PRIOR_SIGMA_KEY`,
    :func:`nerf_posefix.sfm.support.prior_sigma_px`) and whether it is held (``HELD_KEY``: the NeRF stage keeps
    it at its adjusted pose unless --nerf-cameras all); nothing without the front end's support."""
    if not support:
        return
    from nerf_posefix.io.transforms_json import HELD_KEY, PRIOR_SIGMA_KEY
    from nerf_posefix.sfm.support import prior_sigma_px

    flat_to_name = {flat: name for name, flat in stage_input.flat_names.items()}
    meta = json.loads(transforms.read_text(encoding="utf-8"))
    for frame in meta["frames"]:
        name = flat_to_name.get(Path(frame["file_path"]).name)
        if name in support:
            frame[PRIOR_SIGMA_KEY] = prior_sigma_px(support[name])
            frame[HELD_KEY] = not support[name].get("weak", False)
    transforms.write_text(json.dumps(meta, indent=4), encoding="utf-8")


def _nerf_stage(
    options: RefineOptions, inp: ValidatedInput, stage_input: ValidatedInput, work: Path, iterations: Optional[int], tracks: str,
    ba_summary: Optional[dict[str, Any]], callback: Optional[Callable[[int, Optional[float]], None]],
    training_world: Optional[np.ndarray] = None,
) -> tuple[CameraSet, Optional[dict[int, np.ndarray]], str, Optional[tuple[np.ndarray, np.ndarray, str]], dict[str, Any]]:
    """Steps 3-5: the training dataset of the stage's model (in the world frame ``training_world · input world``,
    :meth:`PosedImages.nerfstudio_world`: where ``ns-train`` would train the input; None: nerfstudio's COLMAP frame),
    the posefix method trained on it, and its refined poses (c2w OpenCV, input frame, image names), points, the
    training's depth bounds per image of ``inp`` (input units) and a summary of the run."""
    import torch

    device = options.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available")
    data_dir = work / "data"
    note = stage_input.conversion_note()
    if note is not None:
        print(f"posefix refine: {note}", file=sys.stderr, flush=True)
    if not (data_dir / "transforms.json").is_file():
        prepare_training_data(stage_input, data_dir, options.downscale_factor, applied_transform=training_world)
        _write_prior_sigma(data_dir / "transforms.json", stage_input, (ba_summary or {}).get("images") or {})

    from nerf_posefix.plugin.training import in_process_config, run_training
    from nerf_posefix.plugin.weak_alignment import WeakAlignmentConfig

    bounds_mode = BOUNDS_MODES[options.bounds] if stage_input.model.points3D else "auto"  # auto: the scene box
    config = in_process_config(
        options.method,
        data=data_dir,
        output_dir=work / "runs",
        max_iterations=iterations,
        experiment_name="refine",
        device=device,
        seed=options.seed,
        steps_per_save=options.checkpoint_every,
        overrides={
            "pipeline.datamanager.dataparser.eval_mode": "all",
            "pipeline.datamanager.dataparser.downscale_factor": options.downscale_factor,
            "pipeline.front_end": "off",  # the front end ran already (the dataset holds its result)
            "pipeline.nerf_cameras": options.nerf_cameras,
            "pipeline.model.camera_optimizer.bounds": bounds_mode,
            "pipeline.model.camera_optimizer.tracks": "auto" if tracks == "on" else "off",
            "pipeline.model.camera_optimizer.track_points": options.track_points,
            "pipeline.model.camera_optimizer.prior_sigma_px": options.prior_sigma_px,
            "pipeline.weak_alignment.steps": WeakAlignmentConfig.steps if options.weak_alignment else 0,
            "pipeline.weak_alignment.seed": options.seed,
            **regularizer_overrides(options.regularizer),
        },
    )
    with warnings.catch_warnings():
        quiet = options.quiet or not options.verbose
        if quiet:
            warnings.simplefilter("ignore")
        run = run_training(
            config, progress=True, resume=options.resume, quiet=quiet, label=f"refine {options.method}", callback=callback,
            num_threads=options.threads or None,
        )

    # export (nerfstudio's dataparser messages, e.g. its eval-mode=all warning, are hidden)
    from nerf_posefix.plugin.run_reader import refined_input_poses
    from nerf_posefix.plugin.weak_alignment import alignment_line
    from nerf_posefix.plugin.training import quiet_console

    with quiet_console(True):
        refined_input = refined_input_poses(run.config_path)  # the run, read once
    alignment_note = _weak_alignment_note(run.run_dir, options.weak_alignment, refined_input.run.dataparser_scale,
                                          {flat: name for name, flat in inp.flat_names.items()})
    if alignment_note.get("ran"):
        _log(f"weak alignment: {alignment_line(alignment_note)}")
    exported = refined_input.cameras.subset(np.nonzero(refined_input.refined)[0])  # c2w OpenCV, COLMAP world, flat names
    flat_to_name = {flat: name for name, flat in inp.flat_names.items()}
    missing = [n for n in exported.names if n not in flat_to_name]
    if missing or len(exported) != len(inp.flat_names):
        raise RuntimeError(f"export of {run.config_path} returned {len(exported)} cameras for {len(inp.flat_names)} images")
    refined = CameraSet(names=[flat_to_name[n] for n in exported.names], c2w=exported.c2w, source=str(run.config_path))
    points, points_note = _refined_points(stage_input.model, refined_input.run, ba_summary is not None, run.completed_iterations > 0)
    bounds = None
    trained = refined_input.run
    if trained.xmin is not None and trained.xmax is not None:  # dataparser units -> input units, per input image
        by_name = {flat_to_name[Path(f).name]: k for k, f in enumerate(trained.train_filenames)}
        order = [by_name[inp.model.images[i].name] for i in inp.model.image_ids()]
        scale = trained.dataparser_scale
        bounds = (trained.xmin[order] / scale, trained.xmax[order] / scale, f"training bounds / dataparser scale {scale:.6g}")
    run_summary = {"iterations": int(run.completed_iterations), "resumed_from_iteration": run.start_iteration, "device": device,
                   "training_seconds": run.seconds, "weak_alignment": alignment_note}
    return refined, points, points_note, bounds, run_summary


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
    if options.downscale_factor is not None and options.downscale_factor < 1:
        raise InputError(f"--downscale-factor must be >= 1, got {options.downscale_factor}")
    if options.threads < 0:
        raise InputError(f"--threads must be >= 0, got {options.threads}")
    if options.checkpoint_every < 1:
        raise InputError(f"--checkpoint-every must be >= 1, got {options.checkpoint_every}")
    if not (options.move_threshold_deg >= 0 and options.move_threshold_rel >= 0):
        raise InputError("--move-threshold-deg and --move-threshold-rel must be >= 0")
    _check_output_paths(options)
    work = partial_dir(options.output)
    check_unlocked(work, options.output)  # another run writing OUT: refused at once, nothing touched
    # the lock first (atomic: of two runs started together one is refused here, in well under a second); a
    # run refused before any work gives the directory back as it found it (lock.abandon)
    lock = lock_directory(work, options.output, command="refine")
    try:
        posed, inp, built = _read_input(options)
        stamp = _stamp(options, inp, built)
        if _work_entries(work):
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
                check_resume(work, options.iterations)  # fewer --iterations than done: refused (no torch yet)
            elif options.overwrite:
                if not (work / STAMP_FILE).is_file():
                    raise InputError(f"{work}: exists and was not made by posefix refine; --overwrite deletes only its own work directory")
            else:
                raise InputError(_left_behind(work))
        _check_output_paths(options)  # a run that finished meanwhile published OUT: not replaced without --overwrite
    except BaseException:
        lock.abandon()
        raise

    try:
        if options.overwrite and not options.resume:
            lock.clear()  # never a live run's: the lock is ours
        (work / ENDED_FILE).unlink(missing_ok=True)
        (work / STAMP_FILE).write_text(json.dumps(stamp, indent=2), encoding="utf-8")
        if not built and inp.ext == ".txt" and text_unsafe_names(im.name for im in inp.model.images.values()):
            binary = write_colmap_model(inp.model, work / "input" / "sparse" / "0", formats=("bin",))
            inp = replace(inp, model_dir=binary, ext=".bin")  # pycolmap's text reader would cut the names at a space
        result = _refine_in(work, options, callback, t_start, posed, inp, built)
    except BaseException as exc:
        failure = _end_of_work(lock, exc)
        if failure is not None:
            raise failure from None
        raise
    finally:
        lock.release()
    return result


#: Written into the work directory when a run ends without an output (``{"how": "interrupted" | "failed",
#: "reason": ...}``), so the next run says truthfully what left it.
ENDED_FILE = "ended.json"


def _work_entries(work: Path) -> list[str]:
    """What a work directory holds besides its lock file (nothing: a fresh start)."""
    from nerf_posefix.io.atomic import LOCK_FILE

    try:
        return sorted(p.name for p in work.iterdir() if p.name != LOCK_FILE)
    except OSError:
        return []


def _kept_cache(work: Path) -> Optional[str]:
    """The valid cache of a work directory worth keeping after a run ended without an output, in words: a
    training checkpoint, or the features and matches built from the images (minutes of work; each stage
    writes its record last, so a recorded stage is complete); None when it holds nothing of that value."""
    from nerf_posefix.sfm.front_end import MATCHES_RECORD
    from nerf_posefix.workflows.refine_inputs import interrupted_training

    state = interrupted_training(work) if work.is_dir() else None
    if state is not None:
        return f"the training checkpoint of iteration {state['completed_iterations']}"
    if (work / MATCHES_RECORD).is_file():
        return "the features and matches built from the images"
    return None


def _left_behind(work: Path) -> str:
    """The refusal when ``OUT.partial`` holds an earlier run's work and neither --resume nor --overwrite is
    given, saying truthfully what left it: an interruption (a signal), a failure, or a run that ended
    without a word (killed)."""
    try:
        ended = json.loads((work / ENDED_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        ended = None
    kept = _kept_cache(work)
    holds = f" with {kept}" if kept else ""
    if isinstance(ended, dict) and ended.get("how") == "interrupted":
        who = "an interrupted refine run"
    elif isinstance(ended, dict) and ended.get("how") == "failed":
        who = f"a refine run that failed ({ended.get('reason', 'see its message')})"
    else:
        owner = read_lock_owner(work)
        who = f"a refine run that ended without finishing ({owner.describe()}, no longer running)" if owner else "an earlier refine run"
    return f"{work}: {who} left this work directory{holds}: use --resume to continue it or --overwrite to start over"


def _disk_full(path: Path) -> bool:
    """Whether the file system holding ``path`` has (almost) no space left (pycolmap writes truncated
    files without an error when it runs out; what reads them back then fails)."""
    try:
        fs = os.statvfs(path if path.exists() else path.parent)
    except OSError:
        return False
    return fs.f_blocks > 0 and fs.f_bavail * fs.f_frsize < 2**20


def _end_of_work(lock: DirectoryLock, exc: BaseException) -> Optional[InputError]:
    """What a run that ended without an output leaves, decided while it still holds the lock: the work
    directory is removed unless it holds a valid cache worth keeping (:func:`_kept_cache`); a kept one
    records how the run ended (:data:`ENDED_FILE`: "interrupted" only after a signal). Returns the
    one-line error to raise instead of ``exc`` (a full disk, or what is kept and why), or None."""
    work = lock.directory
    interrupted = isinstance(exc, KeyboardInterrupt)
    message: Optional[str] = None
    if isinstance(exc, InputError):
        message = str(exc)
    elif isinstance(exc, OSError):
        from nerf_posefix.io.atomic import os_reason

        message = os_reason(exc)
    elif not interrupted and not isinstance(exc, (SystemExit, GeneratorExit)) and _disk_full(work):
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        message = (f"{work}: no space left on the device while writing the work directory (a file pycolmap wrote reads back "
                   f"truncated: {type(exc).__name__}: {reason}); free some space and run the same command again")
    kept = _kept_cache(work)
    if kept is None:
        lock.remove_directory()  # nothing of value: the same command starts over
        return InputError(message) if message is not None and not isinstance(exc, InputError) else None
    how = "interrupted" if interrupted else "failed"
    reason = (message or f"{type(exc).__name__}: {exc}").splitlines()[0] if not interrupted else "a signal"
    with contextlib.suppress(OSError):
        (work / ENDED_FILE).write_text(json.dumps({"how": how, "reason": reason[:300]}, indent=2), encoding="utf-8")
    if interrupted or message is None:
        return None
    return InputError(f"{message}; {work} keeps {kept} (valid: --resume reuses them once the cause is fixed, --overwrite discards them)")


def _check_nerf_moves(stage_input: ValidatedInput, refined: CameraSet, ba_summary: dict[str, Any]) -> tuple[CameraSet, Optional[dict[str, Any]]]:
    """The NeRF stage's moves of the weakly held frames (``refined``: c2w OpenCV, the input frame, image names) tested
    against each frame's held neighbours in the adjusted model ``stage_input`` (its poses: the start; its points; the
    blurs the front end's placement found), :func:`nerf_posefix.sfm.photometric_alignment.check_adjusted_moves`; a move
    after which the frame fits them worse is undone. Returns the poses and the check's record (None: nothing to
    check)."""
    from nerf_posefix.sfm.bundle_adjustment import read_reconstruction
    from nerf_posefix.sfm.photometric_alignment import check_adjusted_moves, move_check_record

    support = ba_summary.get("images") or {}
    weak = [n for n, s in support.items() if s.get("weak")]
    index = {n: k for k, n in enumerate(refined.names)}
    if not weak or not stage_input.model.points3D or not all(n in index for n in weak):
        return refined, None
    t0 = time.perf_counter()
    _log(f"checking the NeRF stage's moves of {len(weak)} weakly held image(s) against their held neighbours ...")
    try:
        checks = check_adjusted_moves(read_reconstruction(stage_input.model_dir), stage_input.images_dir, ba_summary,
                                      {n: refined.c2w[index[n]] for n in weak})
    except (OSError, ValueError, RuntimeError, InputError) as err:  # the stage's result is kept: the check is a safeguard
        _log(f"warning: the NeRF stage's moves were not checked ({err}); its poses are kept")
        return refined, {"checked": 0, "undone": [], "error": str(err), "seconds": time.perf_counter() - t0}
    record = move_check_record(checks, time.perf_counter() - t0)
    undone = record["undone"]
    if undone:
        start = stage_input.model.to_camera_set(observations=False)
        start_index = {n: k for k, n in enumerate(start.names)}
        c2w = refined.c2w.copy()
        for name in undone:
            c2w[index[name]] = start.c2w[start_index[name]]
        refined = refined.with_poses(c2w)
        _log(f"{len(undone)} of {len(checks)} weakly held image(s) fit their held neighbours worse after the NeRF stage "
             f"than before it (by 3 standard errors): their moves undone ({', '.join(undone[:5])}{', ...' if len(undone) > 5 else ''})")
    return refined, record


def _refine_in(
    work: Path, options: RefineOptions, callback: Optional[Callable[[int, Optional[float]], None]], t_start: float,
    posed: PosedImages, inp: ValidatedInput, built: bool,
) -> RefineResult:
    """The stages of :func:`refine` in its locked work directory ``work`` (front end, NeRF stage, report,
    output)."""
    # --- the front end: tracks (built from the images when the input has none), robust adjustment
    front = run_front_end(posed, inp, built, work, front_end_options(options), log=_log)
    inp, stage_input, ba_summary, track_summary, fallback = front.input, front.model, front.adjustment, front.tracks, front.fallback
    iterations, tracks, downscale = options.iterations, options.tracks, options.downscale_factor
    support = (ba_summary or {}).get("support") or {}
    if fallback is not None:
        fallback += "; photometric refinement with the prior instead" + (
            "" if track_summary["num_points"] else ", its depth bounds from the scene box (no sparse points)")
        tracks = "off"
        if not iterations:
            iterations = None  # the method's own default: a photometric refinement of 0 iterations does nothing
        too_small = nerf_too_small(inp, downscale or 1)
        if too_small:
            raise InputError(f"the tracks cannot hold any image ({fallback.split(';')[0]}), and {too_small}")
        _log(f"warning: {fallback}")
    else:
        if "warning" in (ba_summary or {}):
            _log(f"warning: {ba_summary['warning']}")
        if iterations is None:  # auto: the NeRF stage only for images the tracks cannot hold
            weak = int(support.get("num_weak", 0))
            iterations = WEAK_FRAMES_ITERATIONS if weak else 0
            if weak:
                downscale = downscale or _auto_downscale(inp)
                too_small = nerf_too_small(inp, downscale)
                if too_small:
                    iterations = 0
                    skipped = f"{weak} weakly held image(s) keep the adjustment's poses: {too_small.split(': ', 1)[1]}"
                    _log(f"warning: {skipped}")
                    ba_summary = {**(ba_summary or {}), "warning": "; ".join(w for w in ((ba_summary or {}).get("warning"), skipped) if w)}
                else:
                    _log(f"{weak} weakly held image(s): the NeRF stage runs ({iterations} iterations, images downscaled "
                         f"{downscale}x) with the prior holding the well-held cameras; --iterations 0 skips it")
    downscale = downscale or 1
    trained = _nerf_stage_subset(options, stage_input, ba_summary) if iterations != 0 else None
    trained_input = stage_input if trained is None else stage_input.subset(trained)  # what the NeRF stage trains on
    no_stage = None
    if iterations != 0:  # nerfstudio caches every training image: refused or skipped before it is killed halfway
        memory = nerf_stage_memory_problem(trained_input, downscale)
        if memory is not None and options.iterations:  # asked for (0 asks for none; the fallback decides then)
            raise InputError(f"{memory}: use --nerf-max-images N (the weak frames and their neighbours), a larger --downscale-factor, "
                             "or --iterations 0 (the adjustment alone)")
        if memory is not None:
            kept = (f"{int(support.get('num_weak', 0))} weakly held image(s) keep the adjustment's poses" if fallback is None else
                    "the photometric refinement is skipped: the poses are the input's")
            iterations, no_stage = 0, f"{kept}: {memory}"
            _log(f"warning: {no_stage}")
            ba_summary = {**(ba_summary or {}), "warning": "; ".join(w for w in ((ba_summary or {}).get("warning"), no_stage) if w)}
    if iterations == 0:  # no NeRF stage: no nerfstudio, no image copies
        refined = stage_input.model.to_camera_set()
        run_summary: dict[str, Any] = {"iterations": 0, "resumed_from_iteration": 0, "device": None, "training_seconds": 0.0,
                                       "no_nerf_stage": "--iterations 0" if options.iterations == 0 else (
                                           no_stage or (NO_NERF_TOO_SMALL if support.get("num_weak") else "every image is held"))}
        points, points_note = _refined_points(stage_input.model, None, ba_summary is not None, False)
        bounds = _point_depth_bounds(stage_input.model, inp.model, options.bounds)
    else:
        if trained is None:
            refined, points, points_note, bounds, run_summary = _nerf_stage(
                replace(options, downscale_factor=downscale), inp, stage_input, work, iterations, tracks, ba_summary, callback,
                training_world=posed.nerfstudio_world())
        else:  # a large capture: the weak frames and their neighbours; the others keep the adjustment's poses
            _log(f"the NeRF stage trains on the {int(support.get('num_weak', 0))} weakly held image(s) and their nearest held "
                 f"neighbours, {len(trained)} of {len(inp.model.images)} images (--nerf-max-images {options.nerf_max_images}); "
                 "the others keep the adjustment's poses")
            sub_refined, points, points_note, _, run_summary = _nerf_stage(
                replace(options, downscale_factor=downscale), inp.subset(trained), trained_input, work, iterations, tracks,
                ba_summary, callback, training_world=posed.nerfstudio_world())
            everywhere, _ = _refined_points(stage_input.model, None, ba_summary is not None, True)  # the others' points
            if everywhere is not None:
                points = {**everywhere, **(points or {})}
            refined = stage_input.model.with_poses(sub_refined, require_all=False).to_camera_set(sub_refined.source, observations=False)
            bounds = _point_depth_bounds(stage_input.model, inp.model, options.bounds)
            run_summary["trained_images"] = {"count": len(trained), "of": len(inp.model.images), "max_images": options.nerf_max_images}
    if iterations != 0 and options.photometric_alignment and ba_summary is not None and fallback is None:
        refined, check = _check_nerf_moves(stage_input, refined, ba_summary)
        if check is not None:
            run_summary["move_check"] = check
    model = refined_model(stage_input if built else inp, refined, points)
    if not built and (ba_summary or {}).get("intrinsics_refined"):  # the adjustment refined cameras: the output carries them
        model = replace(model, cameras=dict(stage_input.model.cameras))
        ba_summary = {**(ba_summary or {}), "cameras": _camera_changes(inp.model, stage_input.model)}
    input_residuals = model_residuals(inp.model)  # once: the input's accuracy per image and its mean error
    reports, summary = build_report(inp.model, refined, bounds, options.bounds, options.move_threshold_deg, options.move_threshold_rel,
                                    support=(ba_summary or {}).get("images"), residuals=input_residuals)
    summary.update(
        {
            "input_model": str(posed.source),
            "input_images": str(inp.images_dir),
            "method": options.method,
            "regularizer": options.regularizer,
            "prior_sigma_px": options.prior_sigma_px,
            "tracks": tracks,
            "track_points": options.track_points,
            "nerf_cameras": options.nerf_cameras,
            "bundle_adjustment": ba_summary or "none",
            **run_summary,
            "total_seconds": time.perf_counter() - t_start,
            "points3D": points_note,
            "reprojection_error_px": {
                "input": model_reprojection_error(inp.model, input_residuals),
                "output": model_reprojection_error(model),
                "meaning": "mean over observations of the 2D reprojection error of each model's points under its own "
                "poses (original pixels): the output must be self-consistent",
            },
            "frame": FRAME_NOTES[posed.kind],
            "input_format": posed.kind,
            "output_poses": "sparse/0" if posed.kind == "colmap" else ("transforms.json" if posed.kind == "transforms" else posed.source.name),
        }
    )
    if built:
        summary["tracks_built"] = {**track_summary, "fallback": fallback}
    summary["warnings"] = [w for w in (fallback, (ba_summary or {}).get("warning")) if w]
    summary["front_end_seconds"] = front.seconds
    out = _write_output(options, posed, inp, model, reports, summary)
    shutil.rmtree(work, ignore_errors=True)
    summary["total_seconds"] = time.perf_counter() - t_start
    return RefineResult(output=out, images=reports, summary=summary)
