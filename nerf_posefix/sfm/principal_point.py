"""Does a COLMAP model's principal point hold COLMAP's placeholder, and do its tracks contradict it?
(``posefix refine --intrinsics auto``, the default for a COLMAP model's own tracks.)

COLMAP starts every camera's principal point at the image centre and, by default, never estimates it (its
mapper's ``ba_refine_principal_point`` is off: the principal point of a single image is poorly determined). A
self-calibrated model of a real camera therefore holds a principal point that is exactly ``(w/2, h/2)`` and a
few pixels wrong, and the poses absorb the error as a tilt: castle-P30's ``sparse_selfcal/0`` has its principal
point 3.7 / 4.2 px from the truth and a rotation error of 0.68 deg after the adjustment with it held, 0.064 deg
with it refined (docs/benchmarks.md). A synthetic camera's principal point is often exactly at the centre too,
and right: refining it there only adds noise (the bundled toybox: 0.049 -> 0.145 deg).

The images cannot tell the two apart by how much better a free principal point fits them (a shift of the
principal point is nearly a rotation of the cameras). What separates them is whether the tracks **contradict**
the placeholder: the principal point estimated with the focal length and distortion free, against its own
uncertainty. Per camera (:func:`examine_principal_points`):

1. a camera is a candidate when its principal point is the image centre to :data:`PLACEHOLDER_TOLERANCE_PX` and
   at least :data:`MIN_IMAGES_PER_CAMERA` registered images share it (one image's principal point trades
   against its own rotation: per-image cameras refined this way got worse on castle-P30);
2. the model (or, beyond :data:`TEST_MAX_IMAGES` images, a patch of that many images linked by tracks, grown
   from the image with the most observations) is adjusted with the candidates' intrinsics free (focal lengths,
   principal point, distortion; the robust loss and stopping rule of the adjustment);
3. the covariance of the principal point from that adjustment (pycolmap's ``estimate_ba_covariance``, the gauge
   fixed on two cameras, scaled by the keypoint noise: the median of the points' reprojection errors / 1.18) gives the Mahalanobis
   distance ``χ² = dᵀ Σ⁻¹ d`` of the estimate ``d`` from the placeholder;
4. the camera's intrinsics are refined when ``χ²`` exceeds :data:`CHI2_2DOF_P001` (2 degrees of freedom,
   p = 0.001); otherwise they are held as they are.

Measured (session of 2026-12-07; docs/benchmarks.md, "Self-calibrated COLMAP models"): castle-P30 and 8-11
photo windows of it, self-calibrated as COLMAP does (shared camera, principal point at the centre): χ² 77 to
1.2e4; the bundled toybox's COLMAP models (the truth at the centre): χ² 1.7-8.

Conventions: pixels in COLMAP's convention (the top-left pixel's centre is ``(0.5, 0.5)``, so the image centre
is ``(w/2, h/2)``); camera ids are the model's.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pycolmap

#: A principal point within this many pixels of ``(w/2, h/2)`` on both axes is COLMAP's placeholder.
PLACEHOLDER_TOLERANCE_PX = 1e-6
#: Fewest registered images sharing a camera for its principal point to be tested.
MIN_IMAGES_PER_CAMERA = 8
#: χ² of 2 degrees of freedom exceeded with probability 0.001 (``-2 ln 0.001``).
CHI2_2DOF_P001 = 13.815510557964274
#: Most images of the adjustment the test runs (a patch of the model beyond: its cost stays bounded).
TEST_MAX_IMAGES = 100


@dataclass
class PrincipalPointTest:
    """The test of one camera (module docstring).

    Attributes:
        camera_id: the model's camera id; ``model``: its COLMAP model name.
        images: registered images sharing it; ``test_images``: those in the test's adjustment.
        placeholder_px: ``(cx, cy)`` as the model holds it (the image centre).
        estimated_px: ``(cx, cy)`` of the test's adjustment; ``sigma_px``: its standard deviations.
        chi2: Mahalanobis distance² of the estimate from the placeholder (NaN: no covariance).
        refined: whether the adjustment refines this camera's intrinsics.
    """

    camera_id: int
    model: str
    images: int
    test_images: int
    placeholder_px: tuple[float, float]
    estimated_px: tuple[float, float]
    sigma_px: tuple[float, float]
    chi2: float
    refined: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """One line: what was found and decided."""
        cx, cy = self.placeholder_px
        ex, ey = self.estimated_px
        sx, sy = self.sigma_px
        verdict = ("the tracks contradict it: intrinsics refined" if self.refined
                   else "the tracks agree with it: intrinsics held")
        return (f"camera {self.camera_id} ({self.model}, {self.images} images): principal point at the image centre "
                f"({cx:g}, {cy:g}), COLMAP's placeholder; estimated ({ex:.2f} ± {sx:.2f}, {ey:.2f} ± {sy:.2f}) on "
                f"{self.test_images} images, χ² {self.chi2:.3g} (threshold {CHI2_2DOF_P001:.3g}): {verdict}")


def _images_per_camera(rec: "pycolmap.Reconstruction") -> dict[int, int]:
    """``{camera id: registered images}`` of the cameras registered images use."""
    counts: dict[int, int] = {}
    for image_id in rec.reg_image_ids():
        camera_id = int(rec.images[image_id].camera_id)
        counts[camera_id] = counts.get(camera_id, 0) + 1
    return counts


def placeholder_cameras(rec: "pycolmap.Reconstruction") -> dict[int, int]:
    """``{camera id: registered images}`` of the cameras whose principal point is the image centre (COLMAP's
    placeholder) and that at least :data:`MIN_IMAGES_PER_CAMERA` registered images share."""
    out = {}
    for camera_id, count in _images_per_camera(rec).items():
        camera = rec.cameras[camera_id]
        cx, cy = float(camera.principal_point_x), float(camera.principal_point_y)
        if (count >= MIN_IMAGES_PER_CAMERA and abs(cx - camera.width / 2) <= PLACEHOLDER_TOLERANCE_PX
                and abs(cy - camera.height / 2) <= PLACEHOLDER_TOLERANCE_PX):
            out[camera_id] = count
    return out


def track_patch(rec: "pycolmap.Reconstruction", max_images: int) -> list[int]:
    """At most ``max_images`` registered image ids linked by tracks: all of them when there are that few, else
    a breadth-first patch of the co-visibility graph grown from the image with the most observations (each
    image's neighbours taken in order of shared points)."""
    from scipy import sparse

    ids = sorted(int(i) for i in rec.reg_image_ids())
    if len(ids) <= max_images:
        return ids
    row_of = {image_id: k for k, image_id in enumerate(ids)}
    rows, cols = [], []
    for column, point in enumerate(rec.points3D.values()):
        for element in point.track.elements:
            rows.append(row_of[int(element.image_id)])
            cols.append(column)
    incidence = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(ids), rec.num_points3D()))
    incidence.data[:] = 1.0  # an image observing a point twice counts once
    shared = (incidence @ incidence.T).tocsr()  # [N, N] points shared by two images
    start = int(np.argmax(np.asarray(incidence.sum(axis=1)).ravel()))
    patch, queue, inside = [], deque([start]), {start}
    while queue and len(patch) < max_images:
        k = queue.popleft()
        patch.append(ids[k])
        lo, hi = shared.indptr[k], shared.indptr[k + 1]
        for other in shared.indices[lo:hi][np.argsort(-shared.data[lo:hi], kind="stable")]:
            if int(other) not in inside:
                inside.add(int(other))
                queue.append(int(other))
    return sorted(patch)


def _sub_reconstruction(rec: "pycolmap.Reconstruction", image_ids: list[int]) -> "pycolmap.Reconstruction":
    """A copy of ``rec`` with only the frames of ``image_ids`` registered (points seen by fewer than two of them
    are deleted by COLMAP with their last observations). The other frames keep their poses (pycolmap's covariance
    estimation reads every frame's pose) but no observation."""
    import pycolmap

    sub = pycolmap.Reconstruction(rec)
    keep = {int(rec.images[i].frame_id) for i in image_ids}
    for frame_id in list(sub.reg_frame_ids()):
        if int(frame_id) not in keep:
            sub.deregister_frame(frame_id)
            sub.frames[frame_id].rig_from_world = rec.frames[frame_id].rig_from_world
    return sub


def examine_principal_points(
    rec: "pycolmap.Reconstruction", loss: str = "cauchy", scale_px: float | None = None, max_images: int = TEST_MAX_IMAGES,
) -> list[PrincipalPointTest]:
    """Steps 1-4 of the module docstring on ``rec`` (not modified): one :class:`PrincipalPointTest` per candidate
    camera (none: no camera holds the placeholder). ``loss``/``scale_px``: the adjustment's robust loss and scale
    (None: the automatic scale)."""
    import pycolmap

    from nerf_posefix.sfm.bundle_adjustment import (
        BundleAdjustmentOptions, adjust_reconstruction, adjustment_config, auto_scale_px, median_point_error,
    )
    from nerf_posefix.sfm.support import MEDIAN_NORM_PER_SIGMA

    candidates = placeholder_cameras(rec)
    if not candidates:
        return []
    patch = track_patch(rec, max_images)
    sub = _sub_reconstruction(rec, patch)
    options = BundleAdjustmentOptions(loss=loss, scale_px=scale_px, refine_intrinsics=True, refine_principal_point=True)  # type: ignore[arg-type]
    scale = auto_scale_px(sub) if scale_px is None else float(scale_px)
    constant = [int(c) for c in sub.cameras if int(c) not in candidates]
    adjust_reconstruction(sub, options.to_pycolmap(scale), constant_camera_ids=constant)
    adjuster = pycolmap.create_default_ceres_bundle_adjuster(options.to_pycolmap(scale), adjustment_config(sub, constant), sub)
    covariance = pycolmap.estimate_ba_covariance(pycolmap.BACovarianceOptions(), sub, adjuster)
    noise = median_point_error(sub) / MEDIAN_NORM_PER_SIGMA  # pixels per axis
    in_patch = _images_per_camera(sub)
    tests = []
    for camera_id, count in sorted(candidates.items()):
        before, after = rec.cameras[camera_id], sub.cameras[camera_id]
        placeholder = np.array([before.principal_point_x, before.principal_point_y], dtype=np.float64)
        estimate = np.array([after.principal_point_x, after.principal_point_y], dtype=np.float64)
        sigma2 = np.full((2, 2), np.nan)
        if covariance is not None and in_patch.get(camera_id, 0) >= 2:
            block = covariance.get_other_params_cov(after.params)  # [P, P]: every parameter of the camera is variable
            if block is not None:
                idx = list(after.principal_point_idxs())
                sigma2 = np.asarray(block, dtype=np.float64)[np.ix_(idx, idx)] * noise**2
        d = estimate - placeholder
        try:
            chi2 = float(d @ np.linalg.solve(sigma2, d)) if np.isfinite(sigma2).all() else float("nan")
        except np.linalg.LinAlgError:
            chi2 = float("nan")
        tests.append(PrincipalPointTest(
            camera_id=int(camera_id), model=str(before.model.name), images=int(count), test_images=int(in_patch.get(camera_id, 0)),
            placeholder_px=(float(placeholder[0]), float(placeholder[1])), estimated_px=(float(estimate[0]), float(estimate[1])),
            sigma_px=(float(np.sqrt(sigma2[0, 0])), float(np.sqrt(sigma2[1, 1]))), chi2=chi2,
            refined=bool(np.isfinite(chi2) and chi2 > CHI2_2DOF_P001)))
    return tests


__all__ = ["CHI2_2DOF_P001", "MIN_IMAGES_PER_CAMERA", "PLACEHOLDER_TOLERANCE_PX", "TEST_MAX_IMAGES", "PrincipalPointTest",
           "placeholder_cameras", "examine_principal_points", "track_patch"]
