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

Stopping and the linear solver (issue 23)
-----------------------------------------
Ceres' own stopping rules do not fit a robust adjustment: pycolmap's defaults (gradient tolerance only,
no function tolerance) run the 100-iteration cap on a 1000-image model without converging (the Cauchy
loss's re-weighting leaves a slow, linearly converging tail), and a relative function tolerance (1e-4)
stops on plateaus of the cost where the poses are still about to move (castle-P30: 18 iterations, twice
the rotation error of the converged adjustment). :func:`adjust_reconstruction` stops **when the poses
stop moving**: the solver runs in blocks of iterations on one problem (built once, the reconstruction
updated in place), and after each block every pose's update is measured in **pixels of image motion**
(rotation angle x focal length + centre shift x focal length / the image's median point distance),
after removing the common similarity of all poses (a gauge motion, undone by ``fix_gauge`` anyway).
The adjustment stops when the largest image's motion per iteration over the last block is below
``pose_tolerance`` (0.1) times the model's **noise level**, the median of its points' reprojection errors
(measured after the first block): a pose that moves by a tenth of the keypoints' typical error per
iteration is moving within the noise. Or at ``max_iterations``, or when Ceres itself converges. The first block
is 5 iterations, later ones 10, or fewer (at least 3) once the motion the rule tests (the largest image's, or
the next after the stragglers allowed) slows down geometrically: just long enough for it to fall below the
threshold at its measured pace (:func:`next_block_iterations`; each block restarts Ceres, whose preprocessing costs ~2 iterations at 1000
images). Block lengths depend on the poses' motion only, not on the machine's speed (Ceres' multi-threaded
sums make runs differ in their last digits).

Why relative to the noise, and why the largest image: on castle-P30 (median point error 0.19 px) the
robust adjustment crosses a plateau (iterations 15-30: the cost flat to 1e-4, the median image moving
by 0.005 px per iteration, a few images by 0.1 px) before the re-weighting of its outliers moves three
images by 3 px per iteration and halves the rotation error; stopping on the plateau (a function
tolerance, or a median-based rule) loses that. On the synthetic surveys (0.5 px keypoint noise) the tail
of the Cauchy re-weighting moves the poses by ~0.03 px per iteration for tens of iterations without
changing their error against the truth. The threshold (0.019 px per iteration on castle, ~0.06 px on the
surveys) stops the second and not the first.

The linear solver is chosen for the problem (``linear_solver="auto"``): dense Schur up to 50 images
(pycolmap's own rule), sparse direct Schur above when the camera graph is sparse (at most
:data:`SPARSE_SCHUR_MAX_MEAN_DEGREE` co-visible images per image on average), iterative Schur
(Schur-Jacobi preconditioner) otherwise: a camera graph where each image sees more than that many others
makes the reduced camera system dense, which a direct solver factors in O(N^3). pycolmap's own selection
switches to iterative Schur beyond 1000 images whatever the graph; on a 1000-image survey (each image
seeing ~22 others) that costs 5-7x per iteration (up to 200 conjugate-gradient steps each once the trust
region has grown), and on 3000 images sparse Schur runs at ~2.3 s per iteration here. On an object-centric
capture the other way round (300 rendered views around an object, each seeing 244 others; 10 iterations
from the converged poses, ``benchmarks/solver_probe.py split``): sparse Schur 2.0-2.3 s, iterative Schur
1.05-1.34 s; on every 3rd to 2nd of those views (100 / 150 / 200 images, 81 / ~120 / ~160 co-visible):
0.33 / 0.76 / 1.26 s against 0.43 / 0.51 / 1.02 s, the crossover near 100 co-visible images.

Memory
------
:func:`estimate_adjustment_memory` gives the peak memory of an adjustment from the model's size;
:func:`bundle_adjust_model` refuses (:class:`InputError`, with the estimate and what to do) a model whose
estimate exceeds the memory available, before reading it.

``pycolmap`` (4.2.1) is a runtime dependency of this module; it is imported inside the functions.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional

import numpy as np

from nerf_posefix.errors import InputError
from nerf_posefix.io.colmap import quiet_fd2
from nerf_posefix.geometry.robust_scale import AUTO_SCALE_MAX_PX, AUTO_SCALE_MIN_PX, auto_robust_scale
from nerf_posefix.geometry.alignment import Alignment, align, pose_alignment
from nerf_posefix.geometry.outliers import pose_change_px
from nerf_posefix.geometry.poses import invert_poses, rotation_angle_deg

if TYPE_CHECKING:
    import pycolmap

LossName = Literal["squared", "huber", "cauchy", "soft_l1"]
GaugeMode = Literal["sim3_poses", "sim3_centres", "none"]
LinearSolverName = Literal["auto", "dense_schur", "sparse_schur", "iterative_schur"]

#: Our loss names -> ``pycolmap.LossFunctionType`` member names.
LOSS_TYPES: dict[str, str] = {"squared": "TRIVIAL", "huber": "HUBER", "cauchy": "CAUCHY", "soft_l1": "SOFT_L1"}
GAUGE_MODES: tuple[str, ...] = ("sim3_poses", "sim3_centres", "none")
#: The COLMAP model files, one of each kind needed (``.bin`` or ``.txt``).
MODEL_FILES: tuple[str, ...] = ("cameras", "images", "points3D")
#: Auto loss scale (:func:`nerf_posefix.geometry.robust_scale.auto_robust_scale`): this factor times the
#: model's median reprojection error, clipped to this range (pixels).
AUTO_SCALE_RANGE_PX: tuple[float, float] = (AUTO_SCALE_MIN_PX, AUTO_SCALE_MAX_PX)
LINEAR_SOLVERS: tuple[str, ...] = ("auto", "dense_schur", "sparse_schur", "iterative_schur")
#: Default stopping rule: the poses have stopped when no image moves by more than this fraction of the model's
#: median point reprojection error per iteration.
POSE_TOLERANCE = 0.1
#: Floor of the stopping threshold (pixels per iteration), for noise-free models.
MIN_POSE_TOLERANCE_PX = 1e-4
#: Iterations of the first block, then of every later block, between two measurements of the poses (a fixed
#: schedule: where the rule stops does not depend on the machine's speed or load).
FIRST_BLOCK_ITERATIONS, BLOCK_ITERATIONS = 5, 10
#: Shortest block once the motion the rule tests slows down (:func:`next_block_iterations`): each block
#: restarts Ceres (its preprocessing: ~2 iterations' time at 1000 images).
MIN_BLOCK_ITERATIONS = 3
#: The poses have stopped when at most this fraction of the images (rounded down: none below 1000 images) still
#: move faster than the threshold: in a capture of thousands, a handful of images whose outlier re-weighting
#: keeps flipping would otherwise hold the whole adjustment (measured: 96 iterations instead of ~35 at 5000 images).
STRAGGLER_FRACTION = 1e-3
#: ``linear_solver="auto"``: dense Schur up to this many images (pycolmap's own bound).
DENSE_SCHUR_MAX_IMAGES = 50
#: ``linear_solver="auto"``: sparse direct Schur beyond ``DENSE_SCHUR_MAX_IMAGES`` only when the images see on
#: average at most this many others (sparse camera graph: surveys, walk-throughs, video); iterative Schur otherwise
#: (module docstring: the crossover measured near 100 on an object-centric capture).
SPARSE_SCHUR_MAX_MEAN_DEGREE = 100
#: Peak memory model of ``posefix refine`` on a COLMAP model (bytes), from the scaling benchmark
#: (``docs/scaling.md``: peak RSS 1.24 GiB at 400k observations, 2.2 GiB at 1.2M; the adjustment alone
#: 2.4 GiB at 2M): the process (Python, torch, pycolmap) plus a cost per observation and per image.
MEMORY_BASE_BYTES = 700 * 2**20
MEMORY_PER_OBSERVATION_BYTES = 1300
MEMORY_PER_IMAGE_BYTES = 64 * 2**10


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
        refine_intrinsics: refine the focal length(s) and the extra (distortion) parameters. False
            (default): all intrinsics are held fixed.
        refine_principal_point: also refine the principal point (False by default, as COLMAP: it is often poorly
            determined).
        refine_camera_ids: the cameras whose intrinsics ``refine_intrinsics`` refines (None: every camera; the
            others stay as they are).
        max_iterations: most Levenberg-Marquardt iterations in all (Ceres' ``max_num_iterations``).
        pose_tolerance: the stopping rule (module docstring): stop once no image moves by more than
            this fraction of the model's median point reprojection error per iteration, over a block of
            iterations (poses compared after removing their common similarity). 0: no pose rule (Ceres
            runs to ``max_iterations`` or its own gradient-tolerance convergence: pycolmap's behaviour).
        linear_solver: ``"auto"`` (module docstring), or one of Ceres' Schur solvers by name.
        fix_gauge: ``"sim3_poses"`` (default), ``"sim3_centres"`` or ``"none"`` (module docstring).
        num_threads: Ceres threads (-1: all cores).
        verbose: let COLMAP log at INFO level on stderr (default: its warnings and errors only).
    """

    loss: LossName = "cauchy"
    scale_px: float | None = None
    refine_points: bool = True
    refine_intrinsics: bool = False
    refine_principal_point: bool = False
    refine_camera_ids: Optional[tuple[int, ...]] = None
    max_iterations: int = 100
    pose_tolerance: float = POSE_TOLERANCE
    linear_solver: LinearSolverName = "auto"
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
        if not (np.isfinite(self.pose_tolerance) and self.pose_tolerance >= 0):
            raise InputError(f"bundle adjustment: pose_tolerance must be >= 0, got {self.pose_tolerance}")
        if self.linear_solver not in LINEAR_SOLVERS:
            raise InputError(f"bundle adjustment: linear_solver must be one of {list(LINEAR_SOLVERS)}, got {self.linear_solver!r}")

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
        opts.refine_principal_point = bool(self.refine_principal_point)
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
        run: how the solver ran (iterations, blocks, why it stopped, linear solver).
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
    run: Optional["AdjustmentRun"] = None

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
            "solver": self.run.to_dict() if self.run is not None else None,
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
    with quiet_fd2():
        yield


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



# ---------------------------------------------------------------------------------------------
# the solver: linear solver for the problem's size, stopping when the poses stop moving


@dataclass
class TrackGraph:
    """What the solver needs to know of a reconstruction's tracks (one pass over its points).

    Attributes:
        names: registered images, sorted by name (the order of :func:`reconstruction_c2w`).
        num_points, num_observations: 3D points and their track elements.
        covisible_pairs: image pairs that observe a common point (the off-diagonal blocks of the reduced
            camera system).
        focal_px: ``[N]`` each image's mean focal length (pixels).
        depth: ``[N]`` each image's median distance to the points it observes (model units; the median
            over all images for an image without points).
    """

    names: list[str]
    num_points: int
    num_observations: int
    covisible_pairs: int
    focal_px: np.ndarray
    depth: np.ndarray

    @property
    def mean_degree(self) -> float:
        """Co-visible images per image, on average."""
        return 2.0 * self.covisible_pairs / max(1, len(self.names))


def track_graph(rec: "pycolmap.Reconstruction") -> TrackGraph:
    """:class:`TrackGraph` of ``rec`` (seconds for millions of observations)."""
    from scipy import ndimage, sparse

    names, c2w = reconstruction_c2w(rec)
    by_name = {n: k for k, n in enumerate(names)}
    order = {image_id: by_name[rec.images[image_id].name] for image_id in rec.reg_image_ids()}  # image id -> row
    obs_image: list[int] = []
    obs_point: list[int] = []
    xyz = np.zeros((rec.num_points3D(), 3))
    for p, point in enumerate(rec.points3D.values()):
        xyz[p] = point.xyz
        for el in point.track.elements:
            k = order.get(el.image_id)
            if k is not None:
                obs_image.append(k)
                obs_point.append(p)
    n = len(names)
    img = np.asarray(obs_image, dtype=np.int64)
    pts = np.asarray(obs_point, dtype=np.int64)
    focal = np.zeros(n)
    for image_id, k in order.items():
        focal[k] = rec.images[image_id].camera.mean_focal_length()
    if img.size:
        incidence = sparse.csr_matrix((np.ones(img.size, dtype=np.float32), (img, pts)), shape=(n, xyz.shape[0]))
        covis = (incidence @ incidence.T).tocsr()
        pairs = (covis.nnz - int((covis.diagonal() > 0).sum())) // 2
        dist = np.linalg.norm(xyz[pts] - c2w[img, :3, 3], axis=1)
        labels = np.arange(n)
        per_image = np.asarray(ndimage.median(dist, labels=img, index=labels), dtype=np.float64)
        seen = np.bincount(img, minlength=n) > 0
        fallback = float(np.median(dist))
        depth = np.where(seen & np.isfinite(per_image) & (per_image > 0), per_image, fallback)
    else:
        pairs, depth = 0, np.ones(n)
    return TrackGraph(names, int(xyz.shape[0]), int(img.size), int(pairs), focal, depth)


def choose_linear_solver(num_images: int, mean_degree: float) -> str:
    """The linear solver for a problem of ``num_images`` images whose images see ``mean_degree`` others on
    average (module docstring): ``"dense_schur"``, ``"sparse_schur"`` or ``"iterative_schur"``."""
    if num_images <= DENSE_SCHUR_MAX_IMAGES:
        return "dense_schur"
    if mean_degree <= SPARSE_SCHUR_MAX_MEAN_DEGREE:
        return "sparse_schur"
    return "iterative_schur"


def _set_linear_solver(opts: "pycolmap.BundleAdjustmentOptions", solver: str) -> None:
    import pycolmap

    ceres_types = pycolmap._core.pyceres  # noqa: SLF001 (pycolmap 4.2.1 exposes Ceres' enums there only)
    opts.ceres.auto_select_solver_type = False
    opts.ceres.solver_options.linear_solver_type = getattr(ceres_types.LinearSolverType, solver.upper())
    if solver == "iterative_schur":
        opts.ceres.solver_options.preconditioner_type = ceres_types.PreconditionerType.SCHUR_JACOBI


@dataclass
class AdjustmentRun:
    """How :func:`adjust_reconstruction` ran.

    Attributes:
        iterations: Levenberg-Marquardt iterations in all.
        stop: ``"poses_stopped"`` (the pose rule), ``"converged"`` (Ceres' own tolerances),
            ``"max_iterations"`` or ``"solver_failed"``.
        linear_solver: the linear solver used.
        blocks: per block ``{iterations, seconds, max_update_px, median_update_px}`` (image motion per
            iteration over the block, pixels).
        seconds: wall time of the problem set-up and all blocks.
        graph: images, points, observations, co-visible pairs of the problem, and
            ``stop_threshold_px_per_iteration``, the pose rule's threshold (None: not used).
    """

    iterations: int
    stop: str
    linear_solver: str
    blocks: list[dict[str, float]]
    seconds: float
    graph: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"iterations": self.iterations, "stop": self.stop, "linear_solver": self.linear_solver,
                "blocks": self.blocks, "seconds": self.seconds, "graph": self.graph}


def image_motion_px(before: np.ndarray, after: np.ndarray, focal_px: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """How far each image moves between two pose sets ``[N, 4, 4]`` (camera-to-world), in pixels, once the
    common similarity is removed: rotation angle (rad) x focal length + centre shift x focal length / the
    image's point distance. ``[N]``."""
    if len(before) >= 2:
        before = pose_alignment(before, after).apply(before)
    return pose_change_px(before, after, depth, focal_px)


def next_block_iterations(motion: np.ndarray, previous: Optional[np.ndarray], threshold_px: Optional[float],
                          stragglers_allowed: int, steps: int, previous_steps: int) -> int:
    """Iterations of the next block: :data:`BLOCK_ITERATIONS`, or fewer once the motion the stopping rule tests
    slows down geometrically. ``motion``, ``previous`` (``[N]``) are each image's motion per iteration averaged
    over the last block (``steps`` iterations) and the one before (``previous_steps``), i.e. at their middles. The
    rule stops when at most ``stragglers_allowed`` images move faster than the threshold: it tests the
    ``stragglers_allowed + 1``-th largest motion. At the rate that order statistic slowed down between the two
    blocks, the next block is made just long enough for its own average (the motion at its middle) to fall below
    the threshold, at least :data:`MIN_BLOCK_ITERATIONS`. The stopping rule itself is unchanged (the next block is
    measured as every block is); a block sized to the pace of what the rule tests saves the iterations a fixed block
    runs past the point where the rule is met.

    Why the order statistic and not each image's own pace: between the first two blocks single images do not slow
    down geometrically (an image nearly right at the start moves once its neighbours have), so per-image rates
    predict tens of iterations where the motion fell 20-fold in 10 (the 1000-image survey, adjusted handover: the
    second block's 99th percentile 0.15 px per iteration, the third block's 0.004 px, the threshold 0.05 px).
    """
    if threshold_px is None or previous is None or previous.shape != motion.shape:
        return BLOCK_ITERATIONS
    k = min(int(stragglers_allowed), motion.size - 1)
    m = float(np.sort(motion)[::-1][k])  # what the rule tests, now
    if m < threshold_px:
        return BLOCK_ITERATIONS
    p = float(np.sort(previous)[::-1][k])  # the same, one block before
    if not (0.0 < m < p):
        return BLOCK_ITERATIONS
    spacing = 0.5 * (steps + previous_steps)  # iterations between the two blocks' middles
    rate = (m / p) ** (1.0 / spacing)  # per-iteration decay
    needed = float(np.log(threshold_px / m) / np.log(rate))  # iterations from the last block's middle
    # the next block's middle is steps / 2 + length / 2 iterations after the last block's
    return int(np.clip(np.ceil(2.0 * needed - steps), MIN_BLOCK_ITERATIONS, BLOCK_ITERATIONS))


def adjust_reconstruction(
    rec: "pycolmap.Reconstruction",
    opts: "pycolmap.BundleAdjustmentOptions",
    max_iterations: int = 100,
    pose_tolerance: float = POSE_TOLERANCE,
    linear_solver: str = "auto",
    verbose: bool = False,
    graph: Optional[TrackGraph] = None,
    straggler_fraction: float = STRAGGLER_FRACTION,
    adaptive_blocks: bool = True,
    constant_camera_ids: Iterable[int] = (),
) -> AdjustmentRun:
    """Bundle-adjust ``rec`` in place (all registered images, their points; what is refined, the loss and
    the threads as ``opts`` says), stopping when the poses stop moving (module docstring).

    ``opts.ceres.solver_options.max_num_iterations`` and the linear solver are set here; the gauge is fixed
    on two cameras during the solve (callers re-fix it on the input poses after). ``straggler_fraction``: the
    fraction of the images (rounded down) that may still move faster than the threshold when the rule stops.
    ``adaptive_blocks``: size the blocks after the second to the pace of the motion the rule tests
    (:func:`next_block_iterations`);
    False: every later block is :data:`BLOCK_ITERATIONS`. ``constant_camera_ids``: cameras whose intrinsics stay
    as they are whatever ``opts`` refines.
    """
    import pycolmap

    t0 = time.perf_counter()
    graph = graph or track_graph(rec)
    solver = choose_linear_solver(len(graph.names), graph.mean_degree) if linear_solver == "auto" else linear_solver
    _set_linear_solver(opts, solver)
    info = {"num_images": len(graph.names), "num_points3D": graph.num_points, "num_observations": graph.num_observations,
            "covisible_pairs": graph.covisible_pairs}
    blocks: list[dict[str, float]] = []
    if graph.num_observations == 0:
        return AdjustmentRun(0, "converged", solver, blocks, time.perf_counter() - t0, info)
    config = adjustment_config(rec, constant_camera_ids)
    block = max_iterations if pose_tolerance <= 0 else min(FIRST_BLOCK_ITERATIONS, max_iterations)
    stragglers_allowed = int(straggler_fraction * len(graph.names))
    opts.ceres.solver_options.max_num_iterations = int(block)
    ceres_types = pycolmap._core.pyceres  # noqa: SLF001
    with quiet_colmap_log(verbose):
        adjuster = pycolmap.create_default_bundle_adjuster(opts, config, rec)
    total, stop = 0, "max_iterations"
    threshold_px: Optional[float] = None
    _, before = reconstruction_c2w(rec)
    previous_motion: Optional[np.ndarray] = None
    previous_steps = 0
    while total < max_iterations:
        adjuster.options.ceres.solver_options.max_num_iterations = int(min(block, max_iterations - total))
        tb = time.perf_counter()
        with quiet_colmap_log(verbose):
            summary = adjuster.solve().ceres_summary
        steps = max(1, int(summary.num_successful_steps) + int(summary.num_unsuccessful_steps) - 1)
        total += steps
        _, after = reconstruction_c2w(rec)
        motion = image_motion_px(before, after, graph.focal_px, graph.depth) / steps
        before = after
        blocks.append({"iterations": steps, "seconds": time.perf_counter() - tb, "max_update_px": float(motion.max()),
                       "p99_update_px": float(np.percentile(motion, 99)), "median_update_px": float(np.median(motion)),
                       "cost_decrease": float(summary.initial_cost - summary.final_cost), "final_cost": float(summary.final_cost)})
        termination = summary.termination_type
        if termination == ceres_types.TerminationType.CONVERGENCE:
            stop = "converged"
            break
        if termination not in (ceres_types.TerminationType.NO_CONVERGENCE, ceres_types.TerminationType.USER_SUCCESS):
            stop = "solver_failed" if not summary.IsSolutionUsable() else "converged"
            break
        if pose_tolerance > 0 and threshold_px is None:
            threshold_px = max(MIN_POSE_TOLERANCE_PX, pose_tolerance * median_point_error(rec))
        if threshold_px is not None:
            blocks[-1]["images_above_threshold"] = int((motion >= threshold_px).sum())
            if blocks[-1]["images_above_threshold"] <= stragglers_allowed:
                stop = "poses_stopped"
                break
        block = (next_block_iterations(motion, previous_motion, threshold_px, stragglers_allowed, steps, previous_steps)
                 if adaptive_blocks else BLOCK_ITERATIONS)
        previous_motion, previous_steps = motion, steps
    rec.update_point_3d_errors()
    info["stop_threshold_px_per_iteration"] = threshold_px
    info["stragglers_allowed"] = stragglers_allowed
    return AdjustmentRun(total, stop, solver, blocks, time.perf_counter() - t0, info)


def adjustment_config(rec: "pycolmap.Reconstruction", constant_camera_ids: Iterable[int] = ()) -> "pycolmap.BundleAdjustmentConfig":
    """pycolmap's problem of every registered image of ``rec`` and their points, the intrinsics of
    ``constant_camera_ids`` held, the gauge fixed on two cameras (for a solve, or its covariance)."""
    import pycolmap

    config = pycolmap.BundleAdjustmentConfig()
    for image_id in rec.reg_image_ids():
        config.add_image(image_id)
    for camera_id in constant_camera_ids:
        config.set_constant_cam_intrinsics(int(camera_id))
    config.fix_gauge(pycolmap.BundleAdjustmentGauge.TWO_CAMS_FROM_WORLD)
    return config


def median_point_error(rec: "pycolmap.Reconstruction") -> float:
    """The median of the points' mean reprojection errors (pixels), recomputed from the current poses."""
    rec.update_point_3d_errors()
    errors = np.fromiter((p.error for p in rec.points3D.values()), dtype=np.float64, count=rec.num_points3D())
    errors = errors[np.isfinite(errors)]
    return float(np.median(errors)) if errors.size else 0.0


# ---------------------------------------------------------------------------------------------
# memory


def available_memory_bytes() -> int:
    """Memory this process may still use: ``MemAvailable`` of ``/proc/meminfo``, capped by the cgroup's
    limit when there is one (containers). Unknown: a very large number."""
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except OSError:
        pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            if limit != "max" and int(limit) < 2**60:
                free = int(limit) - int(Path(usage_file).read_text().strip())
                available = free if available is None else min(available, free)
            break
        except (OSError, ValueError):
            continue
    return int(available) if available is not None else 2**62


def estimate_adjustment_memory(num_images: int, num_observations: int) -> int:
    """Peak memory (bytes) of reading and adjusting a model of ``num_images`` images and
    ``num_observations`` track elements (model in :data:`MEMORY_BASE_BYTES` & co.)."""
    return int(MEMORY_BASE_BYTES + MEMORY_PER_OBSERVATION_BYTES * num_observations + MEMORY_PER_IMAGE_BYTES * num_images)


def model_size(model_dir: str | Path) -> tuple[int, int]:
    """``(images, observations)`` of a COLMAP model, from its files' headers and sizes (without reading
    it): binary ``points3D.bin`` holds 8 bytes per track element and 51 per point, ``images.bin`` 24 bytes
    per 2D point; text files are estimated from their line lengths."""
    model_dir = Path(model_dir)
    images_bin, points_bin = model_dir / "images.bin", model_dir / "points3D.bin"
    if images_bin.is_file() and points_bin.is_file():
        with open(images_bin, "rb") as f:
            head = f.read(8)
        num_images = int.from_bytes(head, "little") if len(head) == 8 else 0
        with open(points_bin, "rb") as f:
            head = f.read(8)
        num_points = int.from_bytes(head, "little") if len(head) == 8 else 0
        observations = max(0, (points_bin.stat().st_size - 8 - 51 * num_points) // 8)
        return num_images, int(observations)
    images_txt = model_dir / "images.txt"
    if images_txt.is_file():
        size = images_txt.stat().st_size
        with open(images_txt, encoding="utf-8", errors="replace") as f:
            lines = sum(1 for line in f if line.strip() and not line.startswith("#"))
        num_images = lines // 2
        return num_images, int(size // 30)  # "x y id " ~ 30 characters per 2D point
    return 0, 0


def check_adjustment_memory(model_dir: str | Path, available: Optional[int] = None) -> int:
    """Refuse a model whose adjustment would not fit in memory, before reading it. Returns the estimate.

    Raises:
        InputError: the estimate, the memory available and what to do.
    """
    num_images, observations = model_size(model_dir)
    estimate = estimate_adjustment_memory(num_images, observations)
    available = available_memory_bytes() if available is None else available
    if estimate > 0.9 * available:
        raise InputError(
            f"COLMAP model {model_dir}: adjusting {num_images} images with {observations} observations needs about "
            f"{estimate / 2**30:.1f} GiB of memory and {available / 2**30:.1f} GiB are available; adjust fewer images "
            f"(split the capture into overlapping parts, or drop every other image of dense sequences), or run on a "
            f"machine with more memory (--bundle-adjustment none skips the adjustment)"
        )
    return estimate


def bundle_adjust_model(model_dir: str | Path, options: BundleAdjustmentOptions | None = None) -> BundleAdjustmentResult:
    """Bundle-adjust a COLMAP model on its own tracks and return it in the input's world frame.

    Reads ``model_dir`` with ``pycolmap.Reconstruction``, adjusts it with pycolmap's bundle adjuster (all
    registered images, all points; loss, scale, points and intrinsics as ``options`` says; stopping when
    the poses stop moving, :func:`adjust_reconstruction`), then fixes the gauge (module docstring). The
    input files are not modified.

    Raises:
        InputError: bad model directory (see :func:`read_reconstruction`), no 3D point, bad options,
            a model too large for the memory available (:func:`check_adjustment_memory`), or
            (``fix_gauge="sim3_centres"``) fewer than 3 registered images / collinear centres.
        RuntimeError: the set of registered images changed (not seen with pycolmap 4.2.1).
    """
    import pycolmap

    options = options or BundleAdjustmentOptions()
    options.check()
    model_dir = Path(model_dir)
    if model_dir.is_dir():
        check_adjustment_memory(model_dir)
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
    run = adjust_reconstruction(
        rec, options.to_pycolmap(1.0 if scale_px is None else scale_px), max_iterations=int(options.max_iterations),
        pose_tolerance=float(options.pose_tolerance), linear_solver=options.linear_solver, verbose=options.verbose,
        constant_camera_ids=(sorted(set(map(int, rec.cameras)) - set(options.refine_camera_ids))
                             if options.refine_intrinsics and options.refine_camera_ids is not None else ()),
    )
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
        run=run,
    )


def written_model_sizes(rec: "pycolmap.Reconstruction") -> dict[str, int]:
    """The size in bytes of each binary file ``rec.write`` writes (COLMAP 4's binary layout, as pycolmap
    4.2 writes it, little-endian: ``src/colmap/scene/reconstruction_io_binary.cc``), computed from the
    model in memory. Each file is a uint64 count, then per record:

    * ``cameras.bin``: id (u32), model (i32), width, height (u64), one double per parameter;
    * ``images.bin``: id (u32), cam_from_world (7 doubles), camera id (u32), the name and a NUL, the number
      of points2D (u64), then x, y (doubles) and point3D id (u64) per point2D;
    * ``points3D.bin``: id (u64), xyz (3 doubles), rgb (3 bytes), error (double), track length (u64), then
      image id and point2D index (u32) per element;
    * ``rigs.bin``: id, number of sensors (u32), the reference sensor (type i32, id u32), then per other
      sensor its type and id, a byte saying whether ``sensor_from_rig`` is known and, if so, 7 doubles;
    * ``frames.bin``: id, rig id (u32), rig_from_world (7 doubles), number of data ids (u32), then sensor
      type (i32), sensor id (u32) and data id (u64) per data id.
    """
    return {
        "cameras.bin": 8 + sum(24 + 8 * len(cam.params) for cam in rec.cameras.values()),
        "images.bin": 8 + sum(4 + 56 + 4 + len(im.name.encode("utf-8")) + 1 + 8 + 24 * im.num_points2D() for im in rec.images.values()),
        "points3D.bin": 8 + sum(51 + 8 * point.track.length() for point in rec.points3D.values()),
        "rigs.bin": 8 + sum(16 + sum(9 + (56 if pose is not None else 0) for pose in rig.non_ref_sensors.values())
                            for rig in rec.rigs.values()),
        "frames.bin": 8 + sum(68 + 16 * frame.num_data_ids() for frame in rec.frames.values()),
    }


def _space_note(directory: Path) -> str:
    """How much space is left where ``directory`` is (for the messages of a short write)."""
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return ""
    return f"; {free / 2**20:.1f} MiB free there now"


def check_written_model(rec: "pycolmap.Reconstruction", output_dir: str | Path) -> None:
    """Check the model ``rec.write(output_dir)`` wrote before anyone reads it: every file complete, then read
    back with pycolmap, every registered image's ``cam_from_world()`` as in memory (max abs difference of
    the 3x4 matrices ``<= 1e-9 · (1 + |t|)``).

    pycolmap writes silently truncated files when the disk fills up, and reading such files back fails
    inside pycolmap (``IndexError: unordered_map::at``, ``std::bad_alloc``) or never ends; so each file's
    size is checked against :func:`written_model_sizes` first, and pycolmap reads only complete files.

    Raises:
        InputError: a file is missing or shorter than ``rec`` makes it (named, with the likely cause:
            no space left on the device), or pycolmap cannot read the model back or reads other images or
            poses back (the directory named).
    """
    import pycolmap

    output_dir = Path(output_dir)
    for name, expected in written_model_sizes(rec).items():
        path = output_dir / name
        try:
            size = path.stat().st_size
        except OSError as err:
            raise InputError(f"{path}: pycolmap did not write this file of the adjusted model ({err.strerror or err}; "
                             f"likely no space left on the device{_space_note(output_dir)})") from None
        if size < expected:
            raise InputError(f"{path}: pycolmap wrote {size} of the {expected} bytes of this file of the adjusted model "
                             f"(truncated: likely no space left on the device, or a file-size limit{_space_note(output_dir)}); "
                             "free some space and run again")
        # longer than computed: not a short write (a layout this computation does not know); the read-back decides
    try:
        back = pycolmap.Reconstruction(str(output_dir))
    except Exception as err:  # noqa: BLE001 (IndexError, ValueError, RuntimeError, MemoryError of a bad file)
        raise InputError(f"{output_dir}: the adjusted model pycolmap wrote does not read back ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}){_space_note(output_dir)}") from None
    names, c2w = reconstruction_c2w(rec)
    names_back, c2w_back = reconstruction_c2w(back)
    if names_back != names:
        raise InputError(f"{output_dir}: the adjusted model pycolmap wrote reads back with other registered images")
    tol = 1e-9 * (1.0 + np.abs(c2w[:, :3, 3]).max(initial=0.0))
    diff = float(np.abs(c2w_back - c2w).max(initial=0.0))
    if diff > tol:
        raise InputError(f"{output_dir}: the adjusted poses pycolmap wrote read back off by {diff:.3g} (> {tol:.3g})")


def write_adjusted_model(result: BundleAdjustmentResult | "pycolmap.Reconstruction", output_dir: str | Path, check: bool = True) -> Path:
    """Write an adjusted model (binary, COLMAP 4 layout) to ``output_dir`` (created if needed).

    pycolmap 4 writes ``rigs.bin`` and ``frames.bin`` beside ``cameras``/``images``/``points3D``, and
    COLMAP >= 3.12 takes each pose from ``frames`` (``rig_from_world``), not from ``images.bin``.
    Both come from the same in-memory frames, which :func:`bundle_adjust_model` updated (BA and
    ``Reconstruction.transform`` act on the frames), so both carry the adjusted poses. With
    ``check`` the written model is checked and read back (:func:`check_written_model`).

    Returns:
        ``output_dir``.

    Raises:
        InputError: ``output_dir`` exists and is not a directory, or holds a model already; pycolmap
            cannot write it; the check failed (a truncated file: likely a full disk, named).
    """
    rec = result.reconstruction if isinstance(result, BundleAdjustmentResult) else result
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise InputError(f"output {output_dir} exists and is not a directory")
    if output_dir.is_dir() and any((output_dir / f"{k}{ext}").exists() for k in MODEL_FILES for ext in (".bin", ".txt")):
        raise InputError(f"output directory {output_dir} already holds a COLMAP model; choose another directory")
    output_dir.mkdir(parents=True, exist_ok=True)
    try:
        rec.write(str(output_dir))
    except Exception as err:  # noqa: BLE001 (pycolmap raises ValueError/RuntimeError when a file cannot be opened)
        raise InputError(f"{output_dir}: pycolmap cannot write the adjusted model ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}){_space_note(output_dir)}") from None
    if check:
        check_written_model(rec, output_dir)
    return output_dir

__all__ = [
    "AdjustmentRun",
    "BundleAdjustmentOptions",
    "BundleAdjustmentResult",
    "TrackGraph",
    "adjust_reconstruction",
    "auto_scale_px",
    "available_memory_bytes",
    "bundle_adjust_model",
    "check_adjustment_memory",
    "check_written_model",
    "choose_linear_solver",
    "estimate_adjustment_memory",
    "image_motion_px",
    "model_size",
    "track_graph",
    "read_reconstruction",
    "reconstruction_c2w",
    "reconstruction_points",
    "write_adjusted_model",
    "written_model_sizes",
]
