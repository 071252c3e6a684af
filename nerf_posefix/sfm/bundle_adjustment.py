r"""Robust bundle adjustment of a COLMAP model's own tracks (``pycolmap``), kept in the input frame.

This is the first stage of ``posefix refine``: before any NeRF, re-adjust the poses (and points) of a
COLMAP model on its **own** feature tracks with a robust loss. COLMAP's incremental mapper ends at a
squared-loss minimum (its robustness comes from filtering observations with a hard reprojection
threshold, 4 px by default); the few observations that survive the filter but are still off by one or
more pixels (wrong matches merged into long tracks, repeated structures) pull the poses of weakly
connected images. A redescending loss (Cauchy) with a sub-pixel scale down-weights them.

Conventions
-----------
* COLMAP stores **world-to-camera** poses (``image.cam_from_world()``, OpenCV camera axes: x right,
  y down, looking along +z). COLMAP >= 3.12 / pycolmap 4 hold the pose in the image's **frame**
  (``frame.rig_from_world``); ``cam_from_world = sensor_from_rig · rig_from_world``.
* What this module returns is **camera-to-world** ``[N, 4, 4]`` float64 with OpenCV axes, in the
  **input model's world frame and scale** (see *Gauge* below), one row per registered image, sorted
  by image name.
* Pixels: COLMAP's convention (the centre of the top-left pixel is ``(0.5, 0.5)``); reprojection
  errors are in pixels of the model's cameras.

Gauge
-----
Bundle adjustment determines the cameras and points only up to a similarity (7 dof): the solver may
let the whole set drift in rotation, translation and scale. After BA the adjusted model is mapped
back, **as a whole** (cameras and points, with ``Reconstruction.transform``, which leaves every
reprojection unchanged), by a similarity ``x -> s R x + t`` (adjusted frame -> input frame) chosen by
``fix_gauge``:

* ``"sim3_poses"`` (default): ``R`` from the camera **orientations**, the rotation nearest
  ``Σ_i R_in,i R_adj,iᵀ`` (camera-to-world rotations; it minimises ``Σ_i ‖R_in,i - R R_adj,i‖²_F``),
  then ``s`` and ``t`` from the camera **centres** by least squares given ``R``
  (:func:`pose_alignment`). Well conditioned for any camera layout (N >= 2 distinct centres; one
  image: ``s = 1``).
* ``"sim3_centres"``: the Umeyama similarity of the adjusted centres onto the input ones
  (:func:`nerf_posefix.geometry.alignment.align`). Its rotation is poorly determined when the centres
  are nearly coplanar or collinear (a walk around an object, a drone at constant height). Measured on
  castle-P30 (centres coplanar to 0.16 m rms over ~40 m) after the default robust BA: this similarity
  rotates the whole set by 0.17° away from the solver's frame (``"sim3_poses"``: 0.055°), and the
  median change of the camera orientations against the input is 0.25° (``"sim3_poses"``: 0.16°;
  solver's frame: 0.12°), i.e. a spurious common tilt as large as the corrections BA makes. Needs
  >= 3 non-collinear centres.
* ``"none"``: the model is left in whatever frame the solver ended in (in practice close to the
  input one, as pycolmap starts from it, with no guarantee).

The similarity applied is reported (:attr:`BundleAdjustmentResult.alignment`). Error metrics that
align to a reference themselves (Sim(3), pairwise) do not depend on this choice.

``pycolmap`` (4.2.1) is a runtime dependency of this module; it is imported inside the functions.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from nerf_posefix.errors import InputError
from nerf_posefix.geometry.reprojection import AUTO_SCALE_MAX_PX, AUTO_SCALE_MIN_PX, auto_robust_scale
from nerf_posefix.geometry.alignment import Alignment, align, pose_alignment
from nerf_posefix.geometry.poses import invert_poses, rotation_angle_deg

if TYPE_CHECKING:
    import pycolmap

LossName = Literal["squared", "huber", "cauchy", "soft_l1"]
GaugeMode = Literal["sim3_poses", "sim3_centres", "none"]

#: Our loss names -> ``pycolmap.LossFunctionType`` member names.
LOSS_TYPES: dict[str, str] = {"squared": "TRIVIAL", "huber": "HUBER", "cauchy": "CAUCHY", "soft_l1": "SOFT_L1"}
GAUGE_MODES: tuple[str, ...] = ("sim3_poses", "sim3_centres", "none")
#: The COLMAP model files, one of each kind needed (``.bin`` or ``.txt``).
MODEL_FILES: tuple[str, ...] = ("cameras", "images", "points3D")
#: Auto loss scale (:func:`nerf_posefix.geometry.reprojection.auto_robust_scale`): this factor times the
#: model's median reprojection error, clipped to this range (pixels).
AUTO_SCALE_RANGE_PX: tuple[float, float] = (AUTO_SCALE_MIN_PX, AUTO_SCALE_MAX_PX)


@dataclass
class BundleAdjustmentOptions:
    """How :func:`bundle_adjust_model` adjusts a model.

    Attributes:
        loss: robust loss on each observation's reprojection residual ``r`` (pixels), as Ceres
            defines it with ``a = scale_px``: ``"squared"`` (``r²``, COLMAP's default: on a model fresh
            from COLMAP's mapper, nothing changes), ``"huber"`` (quadratic up to ``a``, then linear),
            ``"cauchy"`` (``a² log(1 + r²/a²)``: redescending, an observation far beyond ``a`` has
            almost no pull) or ``"soft_l1"`` (``2a²(√(1 + r²/a²) - 1)``, a smooth Huber).
        scale_px: the loss scale ``a`` in pixels: residuals below it count (nearly) as squared ones.
            ``None`` (default): **auto**, ``a = AUTO_SCALE_FACTOR (2) x`` the median of the input
            model's per-point reprojection errors, clipped to ``AUTO_SCALE_RANGE_PX`` (0.1-2 px); see
            :func:`auto_scale_px`. Why relative: COLMAP's keypoint accuracy is ~0.3-1 px at the image
            resolution depending on the images and the detector, so no fixed number of pixels is
            right for every model; the model's own median residual measures it. Why 2x: for
            isotropic Gaussian keypoint noise of ``σ`` per axis the median residual is ``1.18 σ``,
            so ``a ≈ 2.35 σ``, the classical tuning of the Cauchy loss for 95 % efficiency on
            Gaussian data (2.385 σ): correct observations keep nearly their full weight, those
            beyond ~3x the model's typical error are strongly down-weighted. On castle-P30 (median
            0.19 px: ``a = 0.39`` px) every Cauchy scale in 0.1-0.45 px cuts the median rotation
            error ~5x, 0.5 px and more much less (``benchmarks/castle_p30.py``).
        refine_points: refine the 3D points with the poses (True) or hold them fixed (False: the
            poses are then resected against the input points).
        refine_intrinsics: refine the focal length(s) and the extra (distortion) parameters. The
            principal point is never refined (COLMAP's own default: it is poorly determined). False
            (default): all intrinsics are held fixed.
        max_iterations: most Levenberg-Marquardt iterations (Ceres' ``max_num_iterations``).
        fix_gauge: ``"sim3_poses"`` (default), ``"sim3_centres"`` or ``"none"`` (module docstring).
        num_threads: Ceres threads (-1: all cores).
        verbose: let COLMAP log at INFO level on stderr (default: its warnings and errors only).
    """

    loss: LossName = "cauchy"
    scale_px: float | None = None
    refine_points: bool = True
    refine_intrinsics: bool = False
    max_iterations: int = 100
    fix_gauge: GaugeMode = "sim3_poses"
    num_threads: int = -1
    verbose: bool = False

    def check(self) -> None:
        """Raise :class:`InputError` naming the bad option."""
        if self.loss not in LOSS_TYPES:
            raise InputError(f"bundle adjustment: loss must be one of {sorted(LOSS_TYPES)}, got {self.loss!r}")
        if self.scale_px is not None and not (np.isfinite(self.scale_px) and self.scale_px > 0):
            raise InputError(f"bundle adjustment: scale_px must be a positive number of pixels, got {self.scale_px}")
        if int(self.max_iterations) < 1:
            raise InputError(f"bundle adjustment: max_iterations must be >= 1, got {self.max_iterations}")
        if self.fix_gauge not in GAUGE_MODES:
            raise InputError(f"bundle adjustment: fix_gauge must be one of {list(GAUGE_MODES)}, got {self.fix_gauge!r}")

    def to_pycolmap(self, scale_px: float | None = None) -> "pycolmap.BundleAdjustmentOptions":
        """The equivalent ``pycolmap.BundleAdjustmentOptions`` (pycolmap 4.2.1 attribute names).

        Args:
            scale_px: the loss scale to use (the resolved auto scale); default ``self.scale_px``,
                which must then be set.
        """
        import pycolmap

        self.check()
        scale_px = self.scale_px if scale_px is None else scale_px
        if scale_px is None:
            raise ValueError("to_pycolmap: the auto scale must be resolved first (pass scale_px)")
        opts = pycolmap.BundleAdjustmentOptions()
        opts.refine_focal_length = bool(self.refine_intrinsics)
        opts.refine_principal_point = False
        opts.refine_extra_params = bool(self.refine_intrinsics)
        opts.refine_points3D = bool(self.refine_points)
        opts.refine_rig_from_world = True  # the poses
        opts.refine_sensor_from_rig = False  # a multi-camera rig's calibration is held
        opts.print_summary = False
        opts.ceres.loss_function_type = getattr(pycolmap.LossFunctionType, LOSS_TYPES[self.loss])
        opts.ceres.loss_function_scale = float(scale_px)
        opts.ceres.solver_options.max_num_iterations = int(self.max_iterations)
        opts.ceres.solver_options.num_threads = int(self.num_threads)
        return opts


@dataclass
class BundleAdjustmentResult:
    """Outcome of :func:`bundle_adjust_model`.

    Attributes:
        model_dir: the input model.
        names: ``[N]`` registered image names, sorted.
        c2w: ``[N, 4, 4]`` float64 adjusted camera-to-world poses, OpenCV axes, input world frame.
        input_c2w: ``[N, 4, 4]`` the input poses (same convention and order).
        point3D_ids: ``[P]`` int64 ids of the adjusted points (the input's ids).
        points: ``[P, 3]`` float64 adjusted points, input world frame.
        scale_px: the loss scale used (pixels): ``options.scale_px`` or the resolved auto scale;
            None for the squared loss.
        reprojection_error_before_px, reprojection_error_after_px: COLMAP's mean reprojection error
            (``Reconstruction.compute_mean_reprojection_error``: the mean over 3D points of each
            point's mean residual norm, in pixels, whatever the loss).
        alignment: the similarity applied after BA (adjusted frame -> input frame); identity with
            ``fix_gauge="none"``.
        wall_time_s: seconds for the adjustment and the re-alignment (not the reading).
        options: the options used.
        reconstruction: the adjusted ``pycolmap.Reconstruction`` (input frame), for
            :func:`write_adjusted_model`.
    """

    model_dir: Path
    names: list[str]
    c2w: np.ndarray
    input_c2w: np.ndarray
    point3D_ids: np.ndarray
    points: np.ndarray
    scale_px: float | None
    reprojection_error_before_px: float
    reprojection_error_after_px: float
    alignment: Alignment
    wall_time_s: float
    options: BundleAdjustmentOptions
    reconstruction: Any = field(repr=False)

    @property
    def pose_change(self) -> dict[str, float]:
        """How far the poses moved (input frame): rotation (deg) and centre distance (input units),
        median and max."""
        rot = rotation_angle_deg(self.input_c2w[:, :3, :3], self.c2w[:, :3, :3])  # [N]
        dist = np.linalg.norm(self.c2w[:, :3, 3] - self.input_c2w[:, :3, 3], axis=-1)  # [N]
        return {
            "rotation_deg_median": float(np.median(rot)),
            "rotation_deg_max": float(rot.max()),
            "centre_median": float(np.median(dist)),
            "centre_max": float(dist.max()),
        }

    def summary(self) -> dict[str, Any]:
        """Aggregates only (JSON-serialisable)."""
        return {
            "model_dir": str(self.model_dir),
            "num_images": len(self.names),
            "num_points3D": int(self.point3D_ids.size),
            "scale_px": self.scale_px,
            "reprojection_error_before_px": self.reprojection_error_before_px,
            "reprojection_error_after_px": self.reprojection_error_after_px,
            "alignment": {
                "fix_gauge": self.options.fix_gauge,
                "scale": float(self.alignment.scale),
                "rotation_deg": float(rotation_angle_deg(np.eye(3), self.alignment.rotation)),
                "translation": self.alignment.translation.tolist(),
            },
            "pose_change": self.pose_change,
            "wall_time_s": self.wall_time_s,
            "options": asdict(self.options),
        }


@contextlib.contextmanager
def quiet_colmap_log(verbose: bool) -> Iterator[None]:
    """Hold back COLMAP's INFO log lines (glog writes them to file descriptor 2, out of Python's
    reach; ``pycolmap.logging.minloglevel`` does not silence them in 4.2.1). The C-level stderr goes
    to a temporary file meanwhile; afterwards its warning/error lines (glog prefixes ``W``, ``E``,
    ``F``) are passed on to ``sys.stderr``. ``verbose``: nothing is held back."""
    if verbose:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            log.seek(0)
            kept = [line for line in log.read().decode(errors="replace").splitlines() if line[:1] in ("W", "E", "F")]
            if kept:
                print("\n".join(kept), file=sys.stderr)


def read_reconstruction(model_dir: str | Path) -> "pycolmap.Reconstruction":
    """Read a COLMAP model directory with pycolmap.

    Raises:
        InputError: the directory is missing, is not a directory, lacks one of the
            ``cameras``/``images``/``points3D`` files (``.bin`` or ``.txt``), cannot be parsed, or has no
            registered image.
    """
    import pycolmap

    model_dir = Path(model_dir)
    if not model_dir.exists():
        raise InputError(f"COLMAP model directory {model_dir} does not exist")
    if not model_dir.is_dir():
        raise InputError(f"COLMAP model {model_dir} is not a directory")
    missing = [k for k in MODEL_FILES if not any((model_dir / f"{k}{ext}").is_file() for ext in (".bin", ".txt"))]
    if missing:
        raise InputError(f"COLMAP model directory {model_dir} has no {', '.join(m + '.bin/.txt' for m in missing)}")
    try:
        rec = pycolmap.Reconstruction(str(model_dir))
    except Exception as err:  # noqa: BLE001 (pycolmap raises ValueError/RuntimeError for bad files)
        raise InputError(f"cannot read the COLMAP model {model_dir}: {err}") from err
    if rec.num_reg_images() == 0:
        raise InputError(f"COLMAP model {model_dir} has no registered image")
    return rec


def auto_scale_px(rec: "pycolmap.Reconstruction") -> float:
    """The auto loss scale of a model (pixels): ``AUTO_SCALE_FACTOR x`` the median of its per-point
    reprojection errors (recomputed from the current poses and points), clipped to
    ``AUTO_SCALE_RANGE_PX``. The lower bound keeps a usable scale for exact (synthetic) models."""
    rec.update_point_3d_errors()
    errors = np.array([p.error for p in rec.points3D.values()], dtype=np.float64)  # [P]
    errors = errors[np.isfinite(errors) & (errors >= 0)]
    return auto_robust_scale(errors if errors.size else np.zeros(1))


def reconstruction_c2w(rec: "pycolmap.Reconstruction") -> tuple[list[str], np.ndarray]:
    """Registered images' names (sorted) and camera-to-world poses ``[N, 4, 4]`` (OpenCV axes, the
    model's world frame), from ``image.cam_from_world()``."""
    by_name: dict[str, np.ndarray] = {}
    for image_id in rec.reg_image_ids():
        image = rec.images[image_id]
        by_name[image.name] = np.asarray(image.cam_from_world().matrix(), dtype=np.float64)  # [3, 4] w2c
    names = sorted(by_name)
    w2c = np.stack([by_name[n] for n in names]) if names else np.zeros((0, 3, 4))  # [N, 3, 4]
    return names, invert_poses(w2c)


def reconstruction_points(rec: "pycolmap.Reconstruction") -> tuple[np.ndarray, np.ndarray]:
    """``(point3D_ids [P] int64 sorted, xyz [P, 3] float64)`` of a reconstruction."""
    ids = np.array(sorted(rec.points3D), dtype=np.int64)  # [P]
    xyz = np.array([rec.points3D[int(i)].xyz for i in ids], dtype=np.float64).reshape(-1, 3)  # [P, 3]
    return ids, xyz


def bundle_adjust_model(model_dir: str | Path, options: BundleAdjustmentOptions | None = None) -> BundleAdjustmentResult:
    """Bundle-adjust a COLMAP model on its own tracks and return it in the input's world frame.

    Reads ``model_dir`` with ``pycolmap.Reconstruction``, runs ``pycolmap.bundle_adjustment`` (all
    registered images, all points; loss, scale, points and intrinsics as ``options`` says), then
    fixes the gauge (module docstring). The input files are not modified.

    Raises:
        InputError: bad model directory (see :func:`read_reconstruction`), no 3D point, bad options,
            or (``fix_gauge="sim3_centres"``) fewer than 3 registered images / collinear centres.
        RuntimeError: the set of registered images changed (not seen with pycolmap 4.2.1).
    """
    import pycolmap

    options = options or BundleAdjustmentOptions()
    options.check()
    model_dir = Path(model_dir)
    rec = read_reconstruction(model_dir)
    if rec.num_points3D() == 0:
        raise InputError(f"COLMAP model {model_dir} has no 3D point: nothing to adjust")
    names, input_c2w = reconstruction_c2w(rec)
    rec.update_point_3d_errors()  # the stored errors may be stale (e.g. a model whose poses were edited)
    error_before = float(rec.compute_mean_reprojection_error())

    t0 = time.perf_counter()
    if options.loss == "squared":
        scale_px: float | None = None  # no scale (pycolmap ignores it)
    else:
        scale_px = auto_scale_px(rec) if options.scale_px is None else float(options.scale_px)
    with quiet_colmap_log(options.verbose):
        pycolmap.bundle_adjustment(rec, options.to_pycolmap(1.0 if scale_px is None else scale_px))
    _, adjusted_c2w = reconstruction_c2w(rec)
    if options.fix_gauge == "none":
        alignment = Alignment(mode="none", inliers=np.ones(len(names), dtype=bool))
    else:
        try:
            if options.fix_gauge == "sim3_centres":
                alignment = align(adjusted_c2w, input_c2w, mode="sim3")
            else:
                alignment = pose_alignment(adjusted_c2w, input_c2w)
        except InputError as err:
            raise InputError(f"COLMAP model {model_dir}: cannot fix the gauge ({options.fix_gauge}): {err}") from err
        rec.transform(pycolmap.Sim3d(alignment.scale, pycolmap.Rotation3d(alignment.rotation), alignment.translation))
    wall = time.perf_counter() - t0

    rec.update_point_3d_errors()
    out_names, c2w = reconstruction_c2w(rec)
    if out_names != names:
        raise RuntimeError(f"bundle adjustment of {model_dir} changed the set of registered images")
    point_ids, points = reconstruction_points(rec)
    return BundleAdjustmentResult(
        model_dir=model_dir,
        names=names,
        c2w=c2w,
        input_c2w=input_c2w,
        point3D_ids=point_ids,
        points=points,
        scale_px=scale_px,
        reprojection_error_before_px=error_before,
        reprojection_error_after_px=float(rec.compute_mean_reprojection_error()),
        alignment=alignment,
        wall_time_s=wall,
        options=options,
        reconstruction=rec,
    )


def write_adjusted_model(result: BundleAdjustmentResult | "pycolmap.Reconstruction", output_dir: str | Path, check: bool = True) -> Path:
    """Write an adjusted model (binary, COLMAP 4 layout) to ``output_dir`` (created if needed).

    pycolmap 4 writes ``rigs.bin`` and ``frames.bin`` beside ``cameras``/``images``/``points3D``, and
    COLMAP >= 3.12 takes each pose from ``frames`` (``rig_from_world``), not from ``images.bin``.
    Both come from the same in-memory frames, which :func:`bundle_adjust_model` updated (BA and
    ``Reconstruction.transform`` act on the frames), so both carry the adjusted poses. With
    ``check`` the written model is read back with pycolmap and every registered image's
    ``cam_from_world()`` is compared with the one in memory (max abs difference of the 3x4 matrices
    ``<= 1e-9 · (1 + |t|)``).

    Returns:
        ``output_dir``.

    Raises:
        InputError: ``output_dir`` exists and is not a directory, or holds a model already.
        RuntimeError: the read-back check failed.
    """
    import pycolmap

    rec = result.reconstruction if isinstance(result, BundleAdjustmentResult) else result
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise InputError(f"output {output_dir} exists and is not a directory")
    if output_dir.is_dir() and any((output_dir / f"{k}{ext}").exists() for k in MODEL_FILES for ext in (".bin", ".txt")):
        raise InputError(f"output directory {output_dir} already holds a COLMAP model; choose another directory")
    output_dir.mkdir(parents=True, exist_ok=True)
    rec.write(str(output_dir))
    if check:
        back = pycolmap.Reconstruction(str(output_dir))
        names, c2w = reconstruction_c2w(rec)
        names_back, c2w_back = reconstruction_c2w(back)
        if names_back != names:
            raise RuntimeError(f"{output_dir}: the written model reads back with other registered images")
        tol = 1e-9 * (1.0 + np.abs(c2w[:, :3, 3]).max(initial=0.0))
        diff = float(np.abs(c2w_back - c2w).max(initial=0.0))
        if diff > tol:
            raise RuntimeError(f"{output_dir}: the written poses read back off by {diff:.3g} (> {tol:.3g})")
    return output_dir


__all__ = [
    "BundleAdjustmentOptions",
    "BundleAdjustmentResult",
    "auto_scale_px",
    "bundle_adjust_model",
    "read_reconstruction",
    "reconstruction_c2w",
    "reconstruction_points",
    "write_adjusted_model",
]
