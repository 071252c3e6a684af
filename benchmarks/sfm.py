r"""Structure from motion with COLMAP's own bindings (``pycolmap``), as a user runs it, and a
bundle-adjustment baseline started from given poses.

:func:`run_sfm` is the user's pipeline: SIFT features, exhaustive matching, incremental mapping, keep
the largest model. COLMAP's failures (images it could not register, no model at all) are *results*
(:class:`SfmResult` ``unregistered`` / ``error``), not exceptions: the benchmark reports them as such.

:func:`bundle_adjust_from_poses` is a geometric pose refiner started from known (e.g. noisy) poses:
features are extracted and matched **on the images** (never taken from a synthetic scene's exact 2D
observations), points are triangulated with the poses held fixed, then a bundle adjustment refines
poses and points; triangulation and adjustment alternate with a shrinking reprojection threshold.

Conventions
-----------
* COLMAP poses are **world-to-camera** (``cam_from_world``), OpenCV camera axes (x right, y down,
  looking +z); :class:`~nerf_posefix.camera_sets.CameraSet` poses are camera-to-world with the same
  axes. The world frame and scale of an SfM model are COLMAP's own (arbitrary similarity); compare
  with a ground truth after a Sim(3) alignment (:mod:`nerf_posefix.geometry.metrics`).
* Intrinsics are in pixels with COLMAP's pixel convention (the centre of pixel ``(row i, column j)``
  is at ``(u, v) = (j + 0.5, i + 0.5)``). Downscaling by an integer factor ``s`` averages ``s x s``
  pixel blocks (the last ``W mod s`` columns / ``H mod s`` rows are dropped), so a full-resolution
  point ``u`` maps to ``u / s`` exactly and ``fx, fy, cx, cy`` scale by ``1 / s``; distortion
  parameters are dimensionless and unchanged. The model written by :func:`run_sfm` is always at the
  **input** resolution (camera size, intrinsics and 2D points scaled back by ``s``).
* Output layout of :func:`run_sfm` (``output_dir``)::

      colmap.log           # COLMAP's own log
      database.db          # COLMAP database (features, matches, two-view geometries)
      mapper/0, mapper/1   # every model incremental mapping produced (SfM resolution)
      sparse/0             # the largest model at input resolution (cameras/images/points3D/rigs/frames .bin)
      images_s{s}/         # the downscaled images (only when downscale > 1)

``pycolmap`` is a development / benchmark dependency: it is imported inside the functions.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from nerf_posefix.errors import InputError

if TYPE_CHECKING:
    import pycolmap

    from nerf_posefix.io.camera_set import CameraSet

IntrinsicsMode = Literal["free", "fixed"]

#: Image file suffixes picked up from an images directory.
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")

#: Camera model COLMAP estimates with ``intrinsics="free"``: ``OPENCV`` (f, c, 2 radial + 2 tangential
#: coefficients) is what ``ns-process-data`` asks COLMAP for, i.e. what nerfstudio users start from.
DEFAULT_FREE_CAMERA_MODEL = "OPENCV"


@dataclass(frozen=True)
class PinholeCamera:
    """Known pinhole intrinsics, in pixels, at the images' full resolution.

    Attributes:
        width, height: image size in pixels.
        fx, fy: focal lengths in pixels.
        cx, cy: principal point in pixels (COLMAP convention: image centre of a ``W x H`` image is
            ``(W / 2, H / 2)``).
    """

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float

    def scaled(self, factor: float) -> "PinholeCamera":
        """The same camera for images resized by ``factor`` (``0.25`` for a 4x downscale); sizes are
        ``floor(size · factor)`` (the block-average resize drops the remainder)."""
        return PinholeCamera(
            width=int(np.floor(self.width * factor + 1e-9)),
            height=int(np.floor(self.height * factor + 1e-9)),
            fx=self.fx * factor,
            fy=self.fy * factor,
            cx=self.cx * factor,
            cy=self.cy * factor,
        )

    def colmap_params(self, model: str = "PINHOLE") -> str:
        """COLMAP parameters of this camera as ``model`` (``ImageReaderOptions.camera_params``), e.g.
        ``"fx,fy,cx,cy"`` for ``PINHOLE``; distortion coefficients 0, one focal length ``(fx + fy) / 2``
        for the single-focal models."""
        if model == "PINHOLE":
            values = [self.fx, self.fy, self.cx, self.cy]
        else:
            import pycolmap

            cam = pycolmap.Camera.create_from_model_name(1, model, 0.5 * (self.fx + self.fy), self.width, self.height)
            values = np.asarray(cam.params, dtype=np.float64).copy()
            focal = list(cam.focal_length_idxs())
            values[focal] = [self.fx, self.fy] if len(focal) == 2 else [0.5 * (self.fx + self.fy)]
            values[list(cam.principal_point_idxs())] = [self.cx, self.cy]
            values[list(cam.extra_params_idxs())] = 0.0
        return ",".join(repr(float(v)) for v in values)

    @classmethod
    def from_colmap_model(cls, path: str | os.PathLike[str]) -> "PinholeCamera":
        """The (single) camera of a COLMAP model (``PINHOLE`` or ``SIMPLE_PINHOLE``).

        Raises:
            InputError: the model has no camera, several different ones, or a distorted camera model.
        """
        from nerf_posefix.io.colmap import read_colmap_model

        model = read_colmap_model(path)
        found = {(c.model, c.width, c.height, tuple(np.round(c.params, 9))) for c in model.cameras.values()}
        if len(found) != 1:
            raise InputError(f"{model.path}: expected one shared camera, found {len(found)}")
        cam = next(iter(model.cameras.values()))
        if cam.model == "PINHOLE":
            fx, fy, cx, cy = (float(v) for v in cam.params)
        elif cam.model == "SIMPLE_PINHOLE":
            f, cx, cy = (float(v) for v in cam.params)
            fx = fy = f
        else:
            raise InputError(f"{model.path}: camera model {cam.model} is not a pinhole (PINHOLE, SIMPLE_PINHOLE)")
        return cls(width=int(cam.width), height=int(cam.height), fx=fx, fy=fy, cx=cx, cy=cy)


@dataclass
class SfmResult:
    """Outcome of :func:`run_sfm`.

    Attributes:
        model_path: the selected (largest) model at input resolution, ``output_dir/sparse/0``; None
            when COLMAP produced no model.
        database_path: the COLMAP database.
        num_images: images given to SfM.
        num_registered: images with a pose in the selected model.
        registered: names of those images (sorted).
        unregistered: names of the images without a pose in the selected model (sorted).
        num_models: models incremental mapping produced (several = the scene broke apart).
        num_points3D: 3D points of the selected model.
        mean_reprojection_error_px: of the selected model, in pixels **at SfM resolution** (NaN if none).
        intrinsics: ``"free"`` (COLMAP estimates them) or ``"fixed"`` (given, not refined).
        camera_model: the COLMAP camera model used.
        camera_params: the selected model's camera parameters at input resolution (first camera).
        downscale: integer factor the images were shrunk by before SfM.
        timings: wall seconds per stage: ``resize``, ``extract``, ``match``, ``map``, ``write``, ``total``.
        error: COLMAP's failure in words (``"no model"``...), None on success.
    """

    output_dir: Path
    model_path: Path | None
    database_path: Path
    num_images: int
    num_registered: int
    registered: list[str]
    unregistered: list[str]
    num_models: int
    num_points3D: int
    mean_reprojection_error_px: float
    intrinsics: str
    camera_model: str
    camera_params: list[float]
    downscale: int
    timings: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        """A model exists (possibly without every image)."""
        return self.model_path is not None

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable copy (paths as strings)."""
        out = asdict(self)
        for key in ("output_dir", "model_path", "database_path"):
            out[key] = None if out[key] is None else str(out[key])
        return out

    def camera_set(self) -> "CameraSet":
        """The selected model's poses (camera-to-world, OpenCV axes, COLMAP's world frame).

        Raises:
            InputError: no model.
        """
        if self.model_path is None:
            raise InputError(f"{self.output_dir}: COLMAP produced no model ({self.error})")
        from nerf_posefix.io.sources import load_camera_set

        return load_camera_set(self.model_path)


# ------------------------------------------------------------------------------------------------
# images


def list_images(images_dir: str | os.PathLike[str], image_names: Sequence[str] | None = None) -> list[str]:
    """Sorted image names (paths relative to ``images_dir``): every image file directly in it, or the
    given subset.

    Raises:
        InputError: ``images_dir`` is not a directory, holds no image, or a named image is missing.
    """
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise InputError(f"{images_dir}: no such images directory")
    if image_names is None:
        names = sorted(p.name for p in images_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not names:
            raise InputError(f"{images_dir}: no images ({', '.join(IMAGE_SUFFIXES)}) in this directory")
        return names
    names = sorted(set(str(n) for n in image_names))
    missing = [n for n in names if not (images_dir / n).is_file()]
    if missing:
        raise InputError(f"{images_dir / missing[0]}: image not found ({len(missing)} of {len(names)} missing)")
    if not names:
        raise InputError(f"{images_dir}: empty image subset")
    return names


def block_downscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor x factor`` pixel blocks of ``image [H, W(, C)]`` -> ``[H // f, W // f(, C)]``
    (same dtype; the last ``H mod f`` rows and ``W mod f`` columns are dropped)."""
    if factor < 1:
        raise ValueError(f"downscale factor must be >= 1, got {factor}")
    if factor == 1:
        return image
    h, w = image.shape[0] // factor, image.shape[1] // factor
    if h == 0 or w == 0:
        raise ValueError(f"image of {image.shape[1]}x{image.shape[0]} is smaller than the factor {factor}")
    crop = image[: h * factor, : w * factor].astype(np.float64)
    blocks = crop.reshape(h, factor, w, factor, *image.shape[2:]).mean(axis=(1, 3))
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        return np.clip(np.round(blocks), info.min, info.max).astype(image.dtype)
    return blocks.astype(image.dtype)


def downscale_images(
    src_dir: str | os.PathLike[str], dst_dir: str | os.PathLike[str], names: Sequence[str], factor: int
) -> tuple[int, int]:
    """Write ``names`` from ``src_dir`` into ``dst_dir`` shrunk by ``factor`` (:func:`block_downscale`),
    same file names. Returns the **input** size ``(width, height)``.

    Raises:
        InputError: an image cannot be read, or the images differ in size (the file is named).
    """
    import imageio.v3 as iio

    src_dir, dst_dir = Path(src_dir), Path(dst_dir)
    dst_dir.mkdir(parents=True, exist_ok=True)
    size: tuple[int, int] | None = None
    for name in names:
        try:
            image = iio.imread(src_dir / name)
        except Exception as err:  # noqa: BLE001 (imageio raises many types)
            raise InputError(f"{src_dir / name}: cannot read image ({err})") from None
        this = (int(image.shape[1]), int(image.shape[0]))
        if size is None:
            size = this
        elif this != size:
            raise InputError(f"{src_dir / name}: image is {this[0]}x{this[1]}, the others {size[0]}x{size[1]}")
        out = dst_dir / name
        out.parent.mkdir(parents=True, exist_ok=True)
        iio.imwrite(out, block_downscale(image, factor))
    assert size is not None
    return size


def _image_size(path: Path) -> tuple[int, int]:
    import imageio.v3 as iio

    try:
        props = iio.improps(path)
    except Exception as err:  # noqa: BLE001
        raise InputError(f"{path}: cannot read image ({err})") from None
    return int(props.shape[1]), int(props.shape[0])


# ------------------------------------------------------------------------------------------------
# SfM


@contextlib.contextmanager
def colmap_log(path: Path, verbose: bool = False) -> Iterator[None]:
    """Send what COLMAP writes to the process's stderr (glog, file descriptor 2) to ``path`` (appended)
    while the block runs; with ``verbose`` leave it on stderr. Python's own ``sys.stderr`` is flushed
    first so nothing is interleaved."""
    if verbose:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(path, "ab") as log:
            os.dup2(log.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
    finally:
        os.close(saved)



def _fresh_output_dir(output_dir: Path, overwrite: bool) -> None:
    """Create ``output_dir`` empty; an existing one is replaced only with ``overwrite``."""
    if output_dir.exists():
        if not overwrite:
            raise InputError(f"{output_dir}: output directory exists (use overwrite)")
        shutil.rmtree(output_dir)
    output_dir.mkdir(parents=True)


def run_sfm(
    images_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    intrinsics: IntrinsicsMode = "free",
    camera: PinholeCamera | None = None,
    image_names: Sequence[str] | None = None,
    downscale: int = 1,
    camera_model: str | None = None,
    num_threads: int = -1,
    max_num_features: int = 8192,
    seed: int = 0,
    overwrite: bool = False,
    verbose: bool = False,
) -> SfmResult:
    """Run COLMAP (SIFT on the CPU, exhaustive matching, incremental mapping) on ``images_dir``.

    All images share one camera (``CameraMode.SINGLE``).

    Args:
        images_dir: directory of the images (all of the same size).
        output_dir: created; see the module docstring for its layout.
        intrinsics: ``"free"``: COLMAP estimates the camera (``camera_model``, default
            :data:`DEFAULT_FREE_CAMERA_MODEL`; ``camera``, if given, is only its initial value);
            ``"fixed"``: ``camera`` (required) is used as a ``PINHOLE`` camera and never refined.
        camera: known pinhole intrinsics at the images' full resolution.
        image_names: the subset of images (names relative to ``images_dir``) to use; None = all.
        downscale: shrink the images by this integer factor before SfM (block average); the written
            model is scaled back to full resolution.
        camera_model: COLMAP camera model for ``intrinsics="free"``.
        num_threads: threads for extraction / matching / mapping (-1: all cores).
        max_num_features: SIFT features per image.
        seed: COLMAP's random seed (RANSAC, mapper) for reproducible runs.
        overwrite: replace an existing ``output_dir``.
        verbose: COLMAP's log on stderr instead of ``output_dir/colmap.log``.

    Returns:
        :class:`SfmResult`; COLMAP's failure is reported there (``error``, ``unregistered``).

    Raises:
        InputError: bad arguments or images (missing directory/image, different sizes, ``camera``
            size disagreeing with the images), or ``output_dir`` exists without ``overwrite``.
    """

    if intrinsics not in ("free", "fixed"):
        raise InputError(f"intrinsics must be 'free' or 'fixed', got {intrinsics!r}")
    if intrinsics == "fixed" and camera is None:
        raise InputError("intrinsics='fixed' needs the known camera (camera=PinholeCamera(...))")
    if int(downscale) != downscale or downscale < 1:
        raise InputError(f"downscale must be an integer >= 1, got {downscale}")
    downscale = int(downscale)
    images_dir = Path(images_dir)
    output_dir = Path(output_dir)
    names = list_images(images_dir, image_names)
    full_size = _image_size(images_dir / names[0])
    if camera is not None and (camera.width, camera.height) != full_size:
        raise InputError(
            f"{images_dir / names[0]}: image is {full_size[0]}x{full_size[1]}, the given camera "
            f"{camera.width}x{camera.height}"
        )
    _fresh_output_dir(output_dir, overwrite)
    with colmap_log(output_dir / "colmap.log", verbose):
        return _run_sfm(
            images_dir, output_dir, names, intrinsics, camera, downscale, camera_model, num_threads, max_num_features, seed
        )


def _run_sfm(
    images_dir: Path,
    output_dir: Path,
    names: list[str],
    intrinsics: IntrinsicsMode,
    camera: PinholeCamera | None,
    downscale: int,
    camera_model: str | None,
    num_threads: int,
    max_num_features: int,
    seed: int,
) -> SfmResult:
    """:func:`run_sfm` after its checks (``output_dir`` exists and is empty)."""
    import pycolmap

    timings: dict[str, float] = {}
    t_total = time.perf_counter()

    # 1. images at SfM resolution
    t0 = time.perf_counter()
    if downscale > 1:
        sfm_images = output_dir / f"images_s{downscale}"
        full_size = downscale_images(images_dir, sfm_images, names, downscale)
    else:
        sfm_images = images_dir
        full_size = _image_size(images_dir / names[0])
    timings["resize"] = time.perf_counter() - t0
    sfm_camera = camera.scaled(1.0 / downscale) if camera is not None else None

    # 2. features
    database = output_dir / "database.db"
    reader = pycolmap.ImageReaderOptions()
    if intrinsics == "fixed":
        reader.camera_model = "PINHOLE"
        model_name = "PINHOLE"
    else:
        model_name = camera_model or DEFAULT_FREE_CAMERA_MODEL
        reader.camera_model = model_name
    if sfm_camera is not None:
        reader.camera_params = sfm_camera.colmap_params(model_name)
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.num_threads = num_threads
    extraction.sift.max_num_features = max_num_features
    t0 = time.perf_counter()
    pycolmap.extract_features(
        database,
        sfm_images,
        image_names=names,
        camera_mode=pycolmap.CameraMode.SINGLE,
        reader_options=reader,
        extraction_options=extraction,
        device=pycolmap.Device.cpu,
    )
    timings["extract"] = time.perf_counter() - t0

    # 3. matching
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = num_threads
    verification = pycolmap.TwoViewGeometryOptions()
    verification.ransac.random_seed = seed
    t0 = time.perf_counter()
    pycolmap.match_exhaustive(database, matching_options=matching, verification_options=verification, device=pycolmap.Device.cpu)
    timings["match"] = time.perf_counter() - t0

    # 4. mapping
    options = pycolmap.IncrementalPipelineOptions()
    options.num_threads = num_threads
    options.random_seed = seed
    options.image_names = names
    if intrinsics == "fixed":
        options.ba_refine_focal_length = False
        options.ba_refine_principal_point = False
        options.ba_refine_extra_params = False
        options.mapper.abs_pose_refine_focal_length = False
        options.mapper.abs_pose_refine_extra_params = False
    mapper_dir = output_dir / "mapper"
    mapper_dir.mkdir()
    t0 = time.perf_counter()
    try:
        models = pycolmap.incremental_mapping(database, sfm_images, mapper_dir, options=options)
        map_error = None
    except Exception as err:  # noqa: BLE001 (COLMAP failing is a result here)
        models, map_error = {}, f"incremental mapping failed: {type(err).__name__}: {err}"
    timings["map"] = time.perf_counter() - t0

    # 5. the largest model at input resolution
    t0 = time.perf_counter()
    best = max(models.values(), key=lambda r: (r.num_reg_images(), r.num_points3D()), default=None)
    model_path: Path | None = None
    registered: list[str] = []
    params: list[float] = []
    reproj = float("nan")
    num_points = 0
    if best is not None and best.num_reg_images() > 0:
        registered = sorted(best.images[i].name for i in best.reg_image_ids())
        reproj = float(best.compute_mean_reprojection_error())
        num_points = int(best.num_points3D())
        if downscale > 1:
            _rescale_reconstruction(best, downscale, full_size)
        model_path = output_dir / "sparse" / "0"
        model_path.mkdir(parents=True)
        best.write(model_path)
        params = [float(v) for v in best.cameras[min(best.cameras)].params]
    timings["write"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_total

    error = map_error
    if model_path is None and error is None:
        error = "no model: COLMAP could not initialise a reconstruction"
    reg_set = set(registered)
    return SfmResult(
        output_dir=output_dir,
        model_path=model_path,
        database_path=database,
        num_images=len(names),
        num_registered=len(registered),
        registered=registered,
        unregistered=[n for n in names if n not in reg_set],
        num_models=len(models),
        num_points3D=num_points,
        mean_reprojection_error_px=reproj,
        intrinsics=intrinsics,
        camera_model=model_name,
        camera_params=params,
        downscale=downscale,
        timings=timings,
        error=error,
    )


def _rescale_reconstruction(rec: "pycolmap.Reconstruction", factor: int, full_size: tuple[int, int]) -> None:
    """In place: cameras and 2D points of a model made on images shrunk by ``factor`` back to the
    ``full_size (W, H)`` images (``u_full = factor · u_small``; see the module docstring)."""
    for camera_id in list(rec.cameras):
        cam = rec.cameras[camera_id]
        params = np.asarray(cam.params, dtype=np.float64).copy()
        idx = list(cam.focal_length_idxs()) + list(cam.principal_point_idxs())
        params[idx] *= factor
        cam.width, cam.height = full_size
        cam.params = params
    for image_id in list(rec.images):
        image = rec.images[image_id]
        for k in range(image.num_points2D()):
            image.points2D[k].xy = image.points2D[k].xy * factor
    rec.update_point_3d_errors()  # the stored per-point errors, now in full-resolution pixels


# ------------------------------------------------------------------------------------------------
# bundle adjustment from given poses


@dataclass
class BundleAdjustmentResult:
    """Outcome of :func:`bundle_adjust_from_poses`.

    Attributes:
        model_path: the adjusted model (``output_dir/sparse/0``), None if nothing could be triangulated.
        num_images: images with a pose (all of them are kept, adjusted or not).
        num_points3D: points after the last round.
        rounds: per round ``{"max_reproj_px", "num_points3D", "num_observations", "final_cost"...}``.
        timings: wall seconds: ``extract``, ``match`` (0 when a database was reused), ``ba`` (all
            rounds), ``total``.
        error: failure in words, None on success.
    """

    output_dir: Path
    model_path: Path | None
    num_images: int
    num_points3D: int
    rounds: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["output_dir"] = str(self.output_dir)
        out["model_path"] = None if self.model_path is None else str(self.model_path)
        return out


def bundle_adjust_from_poses(
    images_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    initial: "CameraSet",
    camera: PinholeCamera,
    database: str | os.PathLike[str] | None = None,
    reproj_schedule_px: Sequence[float] = (16.0, 8.0, 4.0, 2.0),
    refine_intrinsics: bool = False,
    num_threads: int = -1,
    seed: int = 0,
    overwrite: bool = False,
    verbose: bool = False,
) -> BundleAdjustmentResult:
    """Refine ``initial`` poses by bundle adjustment on features matched in the images (the package's track
    building, :func:`nerf_posefix.sfm.track_building.adjust_with_retriangulation`).

    Steps: SIFT + exhaustive matching into ``output_dir/database.db`` (or reuse ``database``, a
    COLMAP database of the same images, e.g. :attr:`SfmResult.database_path`); then for each
    threshold ``r`` of ``reproj_schedule_px``: triangulate all points from the current poses held
    fixed (``pycolmap.triangulate_points``, clearing the previous points, reprojection/merge
    thresholds ``r`` px) and run ``pycolmap.bundle_adjustment`` on poses and points with a Cauchy loss
    of scale ``r / 4`` px (intrinsics fixed unless ``refine_intrinsics``). The first, loose threshold
    lets points be created despite the pose noise; the later ones tighten the model as poses improve.

    Args:
        initial: camera-to-world poses (OpenCV axes) of the images, by name (names relative to
            ``images_dir``); the world frame and scale are kept (up to what BA's gauge freedom moves).
        camera: the images' pinhole intrinsics (full resolution).
        database: a COLMAP database of these images (features and verified matches) to reuse; it is
            copied, not modified. None: extract and match into ``output_dir/database.db``.
        reproj_schedule_px: the triangulate / adjust rounds' reprojection thresholds, in pixels.
        refine_intrinsics: let BA refine the focal length (the principal point stays).
        num_threads, seed: COLMAP's threads (-1: all cores) and random seed.
        overwrite: replace an existing ``output_dir``.
        verbose: COLMAP's log on stderr instead of ``output_dir/colmap.log``.

    Returns:
        :class:`BundleAdjustmentResult`; the adjusted model is ``output_dir/sparse/0``. A failure of
        COLMAP (no point triangulated) is reported in ``error``.

    Raises:
        InputError: bad images / names, ``output_dir`` exists without ``overwrite``.
    """
    images_dir, output_dir = Path(images_dir), Path(output_dir)
    names = list_images(images_dir, initial.names)
    _fresh_output_dir(output_dir, overwrite)
    with colmap_log(output_dir / "colmap.log", verbose):
        return _bundle_adjust(
            images_dir, output_dir, names, initial, camera, database, reproj_schedule_px, refine_intrinsics, num_threads, seed
        )


def _bundle_adjust(
    images_dir: Path,
    output_dir: Path,
    names: list[str],
    initial: "CameraSet",
    camera: PinholeCamera,
    database: str | os.PathLike[str] | None,
    reproj_schedule_px: Sequence[float],
    refine_intrinsics: bool,
    num_threads: int,
    seed: int,
) -> BundleAdjustmentResult:
    """:func:`bundle_adjust_from_poses` after its checks (``output_dir`` exists and is empty): the package's
    own track building (:mod:`nerf_posefix.sfm.track_building`, as ``posefix refine`` runs it on poses
    without tracks), with this camera's intrinsics."""
    from nerf_posefix.io.camera_set import CameraSet, ImageCamera
    from nerf_posefix.sfm.track_building import TrackOptions, adjust_with_retriangulation, copy_database, match_features

    t_total = time.perf_counter()
    options = TrackOptions(matching="exhaustive", reproj_schedule_px=tuple(float(r) for r in reproj_schedule_px),
                           num_threads=num_threads, seed=seed)
    intrinsics = ImageCamera("PINHOLE", camera.width, camera.height, (camera.fx, camera.fy, camera.cx, camera.cy))
    cameras = {n: intrinsics for n in names}
    db_path = output_dir / "database.db"
    timings = {"extract": 0.0, "match": 0.0}
    if database is None:
        timings.update(match_features(images_dir, names, cameras, db_path, options).seconds)
    else:
        copy_database(database, db_path)  # triangulation writes nothing, but keep the input untouched
    by_name = dict(zip(initial.names, initial.c2w))
    posed = CameraSet(names=list(names), c2w=np.stack([by_name[n] for n in names]))
    error: str | None = None
    t0 = time.perf_counter()
    try:
        adjusted = adjust_with_retriangulation(
            db_path, images_dir, posed, options, cameras=cameras, refine_intrinsics=refine_intrinsics
        )
        rec, rounds = adjusted.reconstruction, adjusted.rounds
    except InputError as err:  # no point triangulated: a result of the baseline, not a crash
        error, rec, rounds = str(err), None, []
    timings["ba"] = time.perf_counter() - t0
    model_path: Path | None = None
    if rec is not None:
        model_path = output_dir / "sparse" / "0"
        model_path.mkdir(parents=True)
        rec.write(model_path)
    timings["total"] = time.perf_counter() - t_total
    return BundleAdjustmentResult(
        output_dir=output_dir,
        model_path=model_path,
        num_images=len(names),
        num_points3D=0 if rec is None else int(rec.num_points3D()),
        rounds=rounds,
        timings=timings,
        error=error,
    )
