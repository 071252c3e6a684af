"""Reprojection residuals and depths of every observation of a model, batched (numpy + pycolmap's cameras).

One projection for every caller: the support stage (:mod:`nerf_posefix.sfm.support`, a
``pycolmap.Reconstruction``) and refine's report (a :class:`nerf_posefix.io.colmap.ColmapModel`: the input's
accuracy per image, the mean reprojection error of input and output, the homography depth bounds).

Conventions: poses world-to-camera, OpenCV axes (COLMAP's); pixels in COLMAP's convention (the top-left
pixel's centre is ``(0.5, 0.5)``); projection through ``pycolmap.Camera.img_from_cam`` (every COLMAP camera
model, distortion included); an observation whose point is not in front of its camera
(depth <= machine epsilon: pycolmap's cheirality test) gets a NaN projection and residual.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from nerf_posefix.io.colmap import ColmapModel

if TYPE_CHECKING:
    import pycolmap


def project_points(cameras: Mapping[int, "pycolmap.Camera"], cam_points: np.ndarray, camera_of: np.ndarray) -> np.ndarray:
    """Pixels ``[M, 2]`` of camera-frame points ``cam_points [M, 3]`` (OpenCV axes), each through the camera
    ``cameras[camera_of[m]]``; NaN for points not in front of their camera."""
    projected = np.full((cam_points.shape[0], 2), np.nan)
    for camera_id in np.unique(camera_of):
        sel = np.flatnonzero(camera_of == camera_id)
        projected[sel] = cameras[int(camera_id)].img_from_cam(np.ascontiguousarray(cam_points[sel]))
    with np.errstate(invalid="ignore"):
        projected[~(cam_points[:, 2] > np.finfo(np.float64).eps)] = np.nan
    return projected


@dataclass
class ModelResiduals:
    """Every observation of a :class:`ColmapModel`'s points under its own poses (``M`` observations, in the
    order of :meth:`ColmapModel.observations`: image-id order, then keypoint order).

    Attributes:
        image_index: ``[M]`` position of the observing image in :meth:`ColmapModel.image_ids` (sorted).
        residual_px: ``[M]`` reprojection residual (pixels; NaN behind the camera).
        depth: ``[M]`` depth of the point in the observing camera (its z, OpenCV axes, model units).
    """

    image_index: np.ndarray
    residual_px: np.ndarray
    depth: np.ndarray

    @property
    def valid(self) -> np.ndarray:
        """``[M]`` observations with a residual (in front of the camera, finite)."""
        return np.isfinite(self.residual_px)


def pycolmap_camera(camera: Any) -> "pycolmap.Camera":
    """A ``pycolmap.Camera`` of a nerfstudio-parsed COLMAP camera (``model``, ``width``, ``height``, ``params``)."""
    import pycolmap

    return pycolmap.Camera(model=str(camera.model), width=int(camera.width), height=int(camera.height),
                           params=[float(p) for p in camera.params])


def model_residuals(model: ColmapModel) -> ModelResiduals:
    """:class:`ModelResiduals` of ``model`` (its poses, points and cameras as they are)."""
    obs = model.observations()
    ids = model.image_ids()
    cams = model.to_camera_set(observations=False)  # c2w OpenCV, image-id order, points in point-id order
    rot_w2c = np.swapaxes(cams.c2w[:, :3, :3], -1, -2)  # [N, 3, 3]
    t_w2c = -np.einsum("nij,nj->ni", rot_w2c, cams.c2w[:, :3, 3])  # [N, 3]
    cam = np.einsum("mij,mj->mi", rot_w2c[obs.image_index], cams.points[obs.point_index]) + t_w2c[obs.image_index]  # [M, 3]
    camera_of_image = np.array([model.images[i].camera_id for i in ids], dtype=np.int64)
    cameras = {cid: pycolmap_camera(c) for cid, c in model.cameras.items()}
    projected = project_points(cameras, cam, camera_of_image[obs.image_index]) if len(obs) else np.zeros((0, 2))
    return ModelResiduals(obs.image_index, np.linalg.norm(projected - obs.xy, axis=1), cam[:, 2])
