"""How well the tracks hold each camera after a bundle adjustment (pycolmap).

Per image of an adjusted ``pycolmap.Reconstruction``:

* ``observations``: its observations of 3D points (the inlier tracks the adjustment kept);
* ``group``: the index of its group of images linked by tracks (0: the largest; images without any
  observation are a group of their own);
* ``sigma_rotation_deg`` / ``sigma_centre``: the pose's standard deviation (largest axis) from the
  adjustment's covariance **conditional on the points** (pycolmap's ``estimate_ba_covariance`` of a problem
  whose only variable is that image's pose and whose points are held constant, robust loss as the
  adjustment's), scaled by the keypoint noise ``σ_kp`` (the model's median residual / 1.18). Conditioning
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

Conventions: ``cam_from_world`` is world-to-camera, OpenCV axes; the centre is in the reconstruction's
world units.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

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


def _groups(rec: "pycolmap.Reconstruction") -> dict[int, int]:
    """Image id -> group index (0: the largest set of images linked by shared points)."""
    parent = {int(i): int(i) for i in rec.reg_image_ids()}

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for point in rec.points3D.values():
        ids = sorted({int(el.image_id) for el in point.track.elements})
        for other in ids[1:]:
            a, b = find(ids[0]), find(other)
            if a != b:
                parent[b] = a
    members: dict[int, list[int]] = {}
    for i in parent:
        members.setdefault(find(i), []).append(i)
    ordered = sorted(members.values(), key=lambda m: (-len(m), min(m)))
    return {i: k for k, group in enumerate(ordered) for i in group}


def image_support(
    rec: "pycolmap.Reconstruction", loss_scale_px: Optional[float] = None, keypoint_sigma_px: Optional[float] = None,
) -> list[ImageSupport]:
    """:class:`ImageSupport` of every registered image of ``rec`` (name order), with ``weak`` set.

    Args:
        rec: an adjusted reconstruction (poses, points, tracks).
        loss_scale_px: scale of the Cauchy loss of the covariance problems (the adjustment's); None:
            twice the model's median residual.
        keypoint_sigma_px: keypoint noise σ (pixels per axis); None: the model's median residual / 1.18.
    """
    import pycolmap

    rec.update_point_3d_errors()
    errors = np.array([p.error for p in rec.points3D.values()], dtype=np.float64)
    median = float(np.median(errors)) if errors.size else 1.0
    sigma_kp = keypoint_sigma_px if keypoint_sigma_px is not None else max(median / MEDIAN_NORM_PER_SIGMA, 0.05)
    opts = pycolmap.BundleAdjustmentOptions()
    opts.refine_focal_length = opts.refine_principal_point = opts.refine_extra_params = False
    opts.print_summary = False
    opts.ceres.loss_function_type = pycolmap.LossFunctionType.CAUCHY
    opts.ceres.loss_function_scale = float(loss_scale_px if loss_scale_px is not None else max(2.0 * median, 0.1))
    groups = _groups(rec)
    out: list[ImageSupport] = []
    for image_id in sorted(rec.reg_image_ids(), key=lambda i: rec.images[i].name):
        image = rec.images[image_id]
        point_ids = [p.point3D_id for p in image.points2D if p.has_point3D()]
        sigma_rot = sigma_centre = sigma_px = float("inf")
        residuals = [np.linalg.norm(np.asarray(image.project_point(rec.points3D[p2.point3D_id].xyz)) - np.asarray(p2.xy))
                     for p2 in image.points2D if p2.has_point3D()]
        residual_px = float(np.median(residuals)) if residuals else float("nan")
        if len(point_ids) >= 3:
            config = pycolmap.BundleAdjustmentConfig()
            config.add_image(image_id)
            for pid in point_ids:
                config.add_constant_point(pid)
            adjuster = pycolmap.create_default_ceres_bundle_adjuster(opts, config, rec)
            cov = pycolmap.estimate_ba_covariance(pycolmap.BACovarianceOptions(), rec, adjuster)
            block = cov.get_cam_cov_from_world(image_id) if cov is not None else None
            if block is not None:
                block = np.asarray(block, dtype=np.float64) * sigma_kp**2  # [6, 6] rotation, translation
                world_from_cam = pycolmap.get_covariance_for_inverse(image.cam_from_world(), block)
                sigma_rot = float(np.degrees(np.sqrt(max(np.linalg.eigvalsh(block[:3, :3]).max(), 0.0))))
                sigma_centre = float(np.sqrt(max(np.linalg.eigvalsh(np.asarray(world_from_cam)[3:, 3:]).max(), 0.0)))
                focal = float(rec.cameras[image.camera_id].mean_focal_length())
                cam_from_world = np.asarray(image.cam_from_world().matrix())  # [3, 4] world-to-camera, OpenCV
                xyz = np.array([rec.points3D[p].xyz for p in point_ids])  # [P, 3] world
                depth = float(np.median(xyz @ cam_from_world[2, :3] + cam_from_world[2, 3]))  # [P] -> median z
                sigma_px = focal * (np.radians(sigma_rot) + (sigma_centre / depth if depth > 0 else np.inf))
        out.append(ImageSupport(image.name, len(point_ids), groups.get(int(image_id), 0), sigma_rot, sigma_centre, float(sigma_px),
                                residual_px))
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
        "weak_by_reason": {k: {"count": len(v), "images": v[:10]} for k, v in reasons.items()},
        "median_sigma_rotation_deg": float(np.median(finite)) if finite else float("nan"),
        "median_observations": float(np.median([s.observations for s in support])) if support else 0.0,
    }
