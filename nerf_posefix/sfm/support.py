"""How well the tracks hold each camera after a bundle adjustment (pycolmap).

Per image of an adjusted ``pycolmap.Reconstruction``:

* ``observations``: its observations of 3D points (the inlier tracks the adjustment kept);
* ``group``: the index of its group of images linked by tracks (0: the largest; images without any
  observation are a group of their own);
* ``sigma_rotation_deg`` / ``sigma_centre``: the pose's standard deviation (largest axis) from the
  adjustment's covariance **conditional on the points** (pycolmap's ``estimate_ba_covariance`` of a problem
  whose variables are poses only, points and intrinsics held constant, robust loss as the adjustment's),
  scaled by the keypoint noise ``σ_kp`` (the model's median residual / 1.18); the rotation as a rotation vector
  (pycolmap's tangent is Ceres' half-angle one: :func:`full_angle_covariance`), the centre ``-Rᵀt`` propagated
  to first order (:func:`centre_covariance`). Conditioning
  on the points leaves out the 7 gauge freedoms (a free network's per-camera covariance is dominated by the
  gauge) and the points' own uncertainty: it measures what a camera's own observations say about it, which
  is what separates a blurred or barely overlapping frame from a sharp one. Degrees and input units;
  ``inf`` for an image with fewer than 3 observations.
* ``sigma_px``: the same as an image displacement, ``f · (σ_rot + σ_centre / depth)`` at the median depth of
  its points (pixels of the original image);
* ``residual_px``: the median reprojection residual of its observations (pixels).

The ``pixels`` prior of a NeRF stage takes its scale per camera from these (:func:`prior_sigma_px`): a
camera the tracks hold keeps ``max(residual_px, sigma_px)`` (what its keypoints say it may be off by; the
covariance alone is optimistic, it ignores the points' own errors); a weak one gets
:data:`WEAK_PRIOR_SIGMA_PX`, so that the photometric loss, not the prior, decides where it goes.

An image is **weak** when its tracks cannot hold it (:func:`weak_reason`): fewer than
:data:`MIN_OBSERVATIONS` observations, a group other than the largest, or ``sigma_px`` above
:data:`UNCERTAIN_FACTOR` times the median camera's.

Cost: linear in the observations. With the points and intrinsics constant, no two poses share a term, so
the information matrix is block diagonal and a problem of many images gives each image the covariance of a
problem of its own: one covariance estimation per :data:`COVARIANCE_BATCH_IMAGES` images (a batch whose
estimation fails is split until the failing image is alone), reprojection residuals and depths in numpy over
all observations gathered once, groups from the connected components of the image-point graph. (Before:
one estimation per image, each scanning the whole model, about ``N^1.9``: 340 s for 3000 images; now 8 s.)

Conventions: ``cam_from_world`` is world-to-camera, OpenCV axes; the centre is in the reconstruction's
world units.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from nerf_posefix.geometry.grouped import grouped_median, linked_groups
from nerf_posefix.sfm.residuals import project_points

if TYPE_CHECKING:
    import pycolmap

#: Fewest observations for a camera to count as held by its tracks.
MIN_OBSERVATIONS = 30
#: A camera whose pose uncertainty (in pixels) exceeds this many times the median camera's is weak.
UNCERTAIN_FACTOR = 10.0
#: ``σ`` of the pixels prior for a weakly held camera (pixels): wide enough that the photometric loss moves it
#: (a 3 deg error of a 128 px wide image is ~6 px), narrow enough to stop a runaway.
WEAK_PRIOR_SIGMA_PX = 50.0
#: Smallest ``σ`` of the pixels prior (pixels).
MIN_PRIOR_SIGMA_PX = 0.05
#: Median residual norm of 2D Gaussian keypoint noise, in units of its per-axis σ.
MEDIAN_NORM_PER_SIGMA = 1.18


@dataclass
class ImageSupport:
    """How well one image is held (see the module docstring)."""

    name: str
    observations: int
    group: int
    sigma_rotation_deg: float
    sigma_centre: float
    sigma_px: float
    residual_px: float = float("nan")
    weak: bool = False
    reason: str = ""
    placed: bool = False  # held by the frame placement (:mod:`nerf_posefix.sfm.frame_placement`), not the tracks

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def weak_reason(support: ImageSupport, median_sigma_px: float) -> str:
    """Why ``support``'s image is weak, or ``""`` when its tracks hold it."""
    if support.observations < MIN_OBSERVATIONS:
        return f"few tracks ({support.observations} observations < {MIN_OBSERVATIONS})"
    if support.group > 0:
        return f"not linked by tracks to the largest group of images (group {support.group})"
    if np.isfinite(median_sigma_px) and not support.sigma_px <= UNCERTAIN_FACTOR * median_sigma_px:
        return f"uncertain pose ({support.sigma_px:.3g} px > {UNCERTAIN_FACTOR:g} x the median camera's {median_sigma_px:.3g} px)"
    return ""


#: Images per covariance problem. With the points and intrinsics constant each pose's block of the information
#: matrix is its own (the problem is block diagonal), so one problem of many images gives every image the
#: covariance of a problem of its own; pycolmap inverts through a dense ``6B x 6B`` factor, so a bounded batch
#: keeps memory at ``(6B)² · 8`` bytes (~20 MB) and the work linear in the images.
COVARIANCE_BATCH_IMAGES = 256


@dataclass
class _Observations:
    """Every observation of the registered images, gathered once (``M`` observations, ``N`` images in name
    order, ``P`` points).

    Attributes:
        image_ids: ``[N]`` image ids, name order.
        image_row: ``[M]`` row of the observing image (into ``image_ids``), sorted.
        point_row: ``[M]`` row of the observed point (into ``xyz``).
        xy: ``[M, 2]`` observed pixels.
        xyz: ``[P, 3]`` world points; ``errors``: ``[P]`` their mean reprojection errors.
    """

    image_ids: np.ndarray
    image_row: np.ndarray
    point_row: np.ndarray
    xy: np.ndarray
    xyz: np.ndarray
    errors: np.ndarray


def _gather(rec: "pycolmap.Reconstruction") -> _Observations:
    image_ids = np.array(sorted(rec.reg_image_ids(), key=lambda i: rec.images[i].name), dtype=np.int64)
    point_ids = np.fromiter(rec.points3D.keys(), dtype=np.int64, count=rec.num_points3D())
    xyz = np.empty((point_ids.size, 3), dtype=np.float64)
    errors = np.empty(point_ids.size, dtype=np.float64)
    for k, point in enumerate(rec.points3D.values()):
        xyz[k] = point.xyz
        errors[k] = point.error
    counts, ids, xy = [], [np.zeros(0, dtype=np.int64)], [np.zeros((0, 2))]
    for image_id in image_ids:
        observed = rec.images[int(image_id)].get_observation_points2D()
        counts.append(len(observed))
        if len(observed):  # one array per image (a list of 1.2M small arrays held ~600 MB)
            ids.append(np.array([p.point3D_id for p in observed], dtype=np.int64))
            xy.append(np.array([p.xy for p in observed], dtype=np.float64))
    order = np.argsort(point_ids)
    found = np.concatenate(ids)
    point_row = order[np.searchsorted(point_ids, found, sorter=order)]
    return _Observations(image_ids, np.repeat(np.arange(image_ids.size), counts), point_row, np.concatenate(xy), xyz,
                         errors)


def _groups(obs: _Observations) -> np.ndarray:
    """``[N]`` group index of each image (0: the largest set of images linked by shared points; ties: the
    smallest image id first)."""
    return linked_groups(obs.image_row, obs.point_row, obs.image_ids.size, obs.xyz.shape[0], first_key=obs.image_ids)


def _residuals_and_depths(rec: "pycolmap.Reconstruction", obs: _Observations) -> tuple[np.ndarray, np.ndarray]:
    """``[M]`` reprojection residual (pixels; NaN behind the camera) and ``[M]`` depth of every observation."""
    n = obs.image_ids.size
    bounds = np.searchsorted(obs.image_row, np.arange(n + 1))  # observations of image k: bounds[k]:bounds[k + 1]
    cam = np.empty((obs.image_row.size, 3))  # [M, 3] points in the observing camera's frame
    camera_of = np.empty(n, dtype=np.int64)
    for k, image_id in enumerate(obs.image_ids):
        image = rec.images[int(image_id)]
        matrix = np.asarray(image.cam_from_world().matrix())  # [3, 4] world-to-camera, OpenCV
        rows = slice(bounds[k], bounds[k + 1])
        cam[rows] = obs.xyz[obs.point_row[rows]] @ matrix[:, :3].T + matrix[:, 3]
        camera_of[k] = image.camera_id
    projected = project_points(rec.cameras, cam, camera_of[obs.image_row])
    return np.linalg.norm(projected - obs.xy, axis=1), cam[:, 2]


def median_depths(rec: "pycolmap.Reconstruction") -> dict[int, float]:
    """Image id -> median depth (world units: ``z`` in its camera frame) of the points the image observes; NaN for an
    image that observes none."""
    obs = _gather(rec)
    if obs.image_row.size == 0:
        return {int(i): float("nan") for i in obs.image_ids}
    _, depth = _residuals_and_depths(rec, obs)
    median = grouped_median(depth, obs.image_row, obs.image_ids.size)
    return {int(i): float(d) for i, d in zip(obs.image_ids, median)}


def _batches(rec: "pycolmap.Reconstruction", image_ids: list[int], size: int) -> list[list[int]]:
    """``image_ids`` in batches of at most ``size`` images that each have a pose of their own (a frame of one
    image); an image sharing its frame (a rig) is a batch of its own, as a frame's pose pools its images'
    observations."""
    frame_count: dict[int, int] = {}
    for image_id in image_ids:
        frame = int(rec.images[image_id].frame_id)
        frame_count[frame] = frame_count.get(frame, 0) + 1
    single = [i for i in image_ids if frame_count[int(rec.images[i].frame_id)] == 1]
    shared = [[i] for i in image_ids if frame_count[int(rec.images[i].frame_id)] > 1]
    return [single[k:k + size] for k in range(0, len(single), size)] + shared


#: pycolmap's pose covariance is in the tangent of Ceres' quaternion manifold, whose rotation part ``δ`` is
#: half the rotation vector (``q = [cos|δ|, sin|δ| δ/|δ|]``): measured, its rotation variance is 0.25x that of
#: a finite-difference Jacobian in the rotation vector (tests/test_support.py).
HALF_ANGLE_TO_ROTATION_VECTOR = 2.0


def full_angle_covariance(block: np.ndarray) -> np.ndarray:
    """pycolmap's ``[6, 6]`` covariance of ``cam_from_world`` in (half-angle rotation, translation) ->
    (rotation vector of the left perturbation ``R' = exp(ω) R``, radians; translation ``t' = t + δt``)."""
    d = np.diag([HALF_ANGLE_TO_ROTATION_VECTOR] * 3 + [1.0] * 3)
    return d @ np.asarray(block, dtype=np.float64) @ d


def centre_covariance(cam_from_world: Any, block: np.ndarray) -> np.ndarray:
    """``[3, 3]`` covariance of the camera centre ``C = -Rᵀ t`` (world units) from the ``[6, 6]`` covariance of
    ``cam_from_world`` in (rotation vector ``ω`` of ``R' = exp(ω) R``, ``t' = t + δt``) (:func:`full_angle_covariance`):
    to first order ``δC = -Rᵀ [t]ₓ ω - Rᵀ δt``."""
    rotation = np.asarray(cam_from_world.rotation.matrix(), dtype=np.float64)
    t = np.asarray(cam_from_world.translation, dtype=np.float64)
    t_cross = np.array([[0.0, -t[2], t[1]], [t[2], 0.0, -t[0]], [-t[1], t[0], 0.0]])
    jacobian = np.hstack([-rotation.T @ t_cross, -rotation.T])  # [3, 6]
    return jacobian @ block @ jacobian.T


def _pose_covariances(rec: "pycolmap.Reconstruction", image_ids: list[int], opts: Any,
                      batch_images: int) -> dict[int, np.ndarray]:
    """Image id -> ``[6, 6]`` tangent covariance (rotation, translation) of ``cam_from_world`` with the points
    and intrinsics held constant (unit keypoint noise), from one pycolmap covariance estimation per batch of
    images; an image whose estimation fails (a rank-deficient pose) is left out. A batch that fails is split
    in halves until the failing images are alone, so each image gets what a problem of its own gives it."""
    import pycolmap

    out: dict[int, np.ndarray] = {}
    pending = _batches(rec, image_ids, max(1, batch_images))
    while pending:
        batch = pending.pop()
        config = pycolmap.BundleAdjustmentConfig()
        for image_id in batch:
            config.add_image(image_id)
        adjuster = pycolmap.create_default_ceres_bundle_adjuster(opts, config, rec)
        cov = pycolmap.estimate_ba_covariance(pycolmap.BACovarianceOptions(), rec, adjuster)
        if cov is None:
            if len(batch) > 1:
                pending += [batch[: len(batch) // 2], batch[len(batch) // 2:]]
            continue
        for image_id in batch:
            block = cov.get_cam_cov_from_world(image_id)
            if block is not None:
                out[image_id] = np.asarray(block, dtype=np.float64)
    return out


def image_support(
    rec: "pycolmap.Reconstruction", loss_scale_px: Optional[float] = None, keypoint_sigma_px: Optional[float] = None,
    batch_images: int = COVARIANCE_BATCH_IMAGES,
) -> list[ImageSupport]:
    """:class:`ImageSupport` of every registered image of ``rec`` (name order), with ``weak`` set.

    Args:
        rec: an adjusted reconstruction (poses, points, tracks).
        loss_scale_px: scale of the Cauchy loss of the covariance problems (the adjustment's); None:
            twice the model's median residual.
        keypoint_sigma_px: keypoint noise σ (pixels per axis); None: the model's median residual / 1.18.
        batch_images: images per covariance estimation (:data:`COVARIANCE_BATCH_IMAGES`; the result does not
            depend on it).
    """
    import pycolmap

    rec.update_point_3d_errors()
    obs = _gather(rec)
    median = float(np.median(obs.errors)) if obs.errors.size else 1.0
    sigma_kp = keypoint_sigma_px if keypoint_sigma_px is not None else max(median / MEDIAN_NORM_PER_SIGMA, 0.05)
    opts = pycolmap.BundleAdjustmentOptions()
    opts.refine_focal_length = opts.refine_principal_point = opts.refine_extra_params = False
    opts.refine_points3D = False  # the covariance is conditional on the points
    opts.print_summary = False
    opts.ceres.loss_function_type = pycolmap.LossFunctionType.CAUCHY
    opts.ceres.loss_function_scale = float(loss_scale_px if loss_scale_px is not None else max(2.0 * median, 0.1))
    n = obs.image_ids.size
    num_obs = np.bincount(obs.image_row, minlength=n)
    groups = _groups(obs)
    residual, depth = _residuals_and_depths(rec, obs)
    residual_px = grouped_median(residual, obs.image_row, n)
    median_depth = grouped_median(depth, obs.image_row, n)
    covariances = _pose_covariances(rec, [int(i) for i, c in zip(obs.image_ids, num_obs) if c >= 3], opts, batch_images)
    out: list[ImageSupport] = []
    for k, image_id in enumerate(obs.image_ids):
        image = rec.images[int(image_id)]
        sigma_rot = sigma_centre = sigma_px = float("inf")
        block = covariances.get(int(image_id))
        if block is not None:
            block = full_angle_covariance(block) * sigma_kp**2  # [6, 6] rotation vector (rad), translation
            sigma_rot = float(np.degrees(np.sqrt(max(np.linalg.eigvalsh(block[:3, :3]).max(), 0.0))))
            centre = centre_covariance(image.cam_from_world(), block)  # [3, 3]
            sigma_centre = float(np.sqrt(max(np.linalg.eigvalsh(centre).max(), 0.0)))
            focal = float(rec.cameras[image.camera_id].mean_focal_length())
            d = float(median_depth[k])
            sigma_px = focal * (np.radians(sigma_rot) + (sigma_centre / d if d > 0 else np.inf))
        out.append(ImageSupport(image.name, int(num_obs[k]), int(groups[k]), sigma_rot, sigma_centre, float(sigma_px),
                                float(residual_px[k])))
    finite = np.array([s.sigma_px for s in out if np.isfinite(s.sigma_px) and s.observations >= MIN_OBSERVATIONS])
    median_px = float(np.median(finite)) if finite.size else float("nan")
    for s in out:
        s.reason = weak_reason(s, median_px)
        s.weak = bool(s.reason)
    return out


def prior_sigma_px(support: dict[str, Any]) -> float:
    """The ``pixels`` prior's ``σ`` for one camera from its support (a :meth:`ImageSupport.to_dict`; see the
    module docstring)."""
    if support.get("weak"):
        return WEAK_PRIOR_SIGMA_PX
    values = [v for v in (support.get("residual_px"), support.get("sigma_px")) if v is not None and np.isfinite(v)]
    return max([MIN_PRIOR_SIGMA_PX, *values])


def summarise(support: list[ImageSupport]) -> dict[str, Any]:
    """Counts for the report: how many images are weak, and why (one example each)."""
    weak = [s for s in support if s.weak]
    reasons: dict[str, list[str]] = {}
    for s in weak:
        reasons.setdefault(s.reason.split(" (")[0], []).append(s.name)
    finite = [s.sigma_rotation_deg for s in support if np.isfinite(s.sigma_rotation_deg)]
    return {
        "num_images": len(support),
        "num_weak": len(weak),
        "num_placed": sum(1 for s in support if s.placed and not s.weak),
        "weak_by_reason": {k: {"count": len(v), "images": v[:10]} for k, v in reasons.items()},
        "median_sigma_rotation_deg": float(np.median(finite)) if finite else float("nan"),
        "median_observations": float(np.median([s.observations for s in support])) if support else 0.0,
    }
