"""SfM tracks of the training cameras: the observations the track term of the camera optimizer reprojects.

A COLMAP model found with the dataset (:func:`nerf_posefix.plugin.depth_bounds.find_sparse_points`)
carries, per image, its 2D keypoints and the 3D point each one observes. :func:`build_tracks` turns
them into flat tensors for the training cameras:

Conventions
-----------
* ``camera_index [K]``: the **training camera** index (nerfstudio's train split order) of each
  observation; ``point_index [K]``: its row in ``points [P, 3]``.
* ``observed_px [K, 2]``: keypoint positions in pixels of the **original image** (the COLMAP model's
  own resolution, independent of any training downscale), COLMAP's pixel convention (the centre of the
  top-left pixel is ``(0.5, 0.5)``).
* ``points [P, 3]``: the 3D points in the **dataparser frame** (dataparser-scaled units), mapped as the
  depth bounds map them; ``point_ids [P]``: their COLMAP ``point3D_id``.
* Intrinsics: the COLMAP camera model and parameters of each training camera
  (:class:`nerf_posefix.geometry.reprojection.CameraIntrinsics`), original resolution.

The residual of an observation is computed through the pose nerfstudio renders (camera-to-world,
OpenGL axes, dataparser frame, converted to OpenCV axes by ``c2w @ diag(1, -1, -1, 1)``): projecting
dataparser-frame points with dataparser-frame poses gives the same pixels as COLMAP's projection in
its own frame, because a similarity of the world changes neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from nerf_posefix.geometry.grouped import linked_groups
from nerf_posefix.geometry.reprojection import CAMERA_MODEL_PARAMS, CameraIntrinsics
from nerf_posefix.plugin.depth_bounds import SparsePoints

#: Fewest observations for the track term to be used (below it the term is switched off, with a message).
MIN_OBSERVATIONS = 50


@dataclass
class Tracks:
    """Observations of the training cameras (see the module docstring for the conventions)."""

    camera_index: Tensor  # [K] long
    point_index: Tensor  # [K] long
    observed_px: Tensor  # [K, 2] float64, original-resolution pixels
    points: Tensor  # [P, 3] float64, dataparser frame
    point_ids: Tensor  # [P] long, COLMAP point3D ids
    intrinsics: CameraIntrinsics  # one COLMAP camera per training camera
    source: str

    def __len__(self) -> int:
        return int(self.camera_index.shape[0])

    def largest_group(self, num_cameras: int) -> Tensor:
        """``[num_cameras]`` bool: the training cameras in the largest group linked by shared points
        (:func:`~nerf_posefix.geometry.grouped.linked_groups` of the observing cameras; ties: the smallest camera
        index; a camera without observations is in none)."""
        cams = self.camera_index.cpu().numpy()
        observing = np.unique(cams)  # [C] cameras with observations, ascending
        groups = linked_groups(np.searchsorted(observing, cams), self.point_index.cpu().numpy(), observing.size,
                               int(self.points.shape[0]))
        largest = np.zeros(num_cameras, dtype=bool)
        largest[observing[groups == 0]] = True
        return torch.from_numpy(largest)

    def without_cameras(self, drop: Tensor) -> "Tracks":
        """These tracks without the observations of the training cameras where ``drop [N]`` (bool) is True (the
        points stay, unobserved ones included)."""
        keep = ~drop.to(device=self.camera_index.device, dtype=torch.bool)[self.camera_index]  # [K]
        return Tracks(self.camera_index[keep], self.point_index[keep], self.observed_px[keep], self.points,
                      self.point_ids, self.intrinsics, self.source)


def build_tracks(points: Optional[SparsePoints], num_cameras: int, log: Optional[list[str]] = None) -> Optional[Tracks]:
    """The tracks of the training cameras from the COLMAP model behind ``points``, or None (with a line
    in ``log``) when there is no model, a training camera is not in it, a camera model has no
    projection here, or fewer than :data:`MIN_OBSERVATIONS` observations remain."""
    log = log if log is not None else []
    if points is None or points.colmap_model is None or points.model_index is None or points.xyz64 is None:
        return None
    model = points.colmap_model
    image_ids = model.image_ids()
    if len(points.model_index) != num_cameras or any(m is None for m in points.model_index):
        missing = sum(m is None for m in points.model_index)
        log.append(f"no track term: {missing} training image(s) are not images of the COLMAP model {model.path}")
        return None
    obs = model.observations()  # point rows: the row order of points.xyz64
    models, params = [], []
    cams, pts, xys = [], [], []
    for cam, m in enumerate(points.model_index):
        camera = model.cameras[model.images[image_ids[m]].camera_id]
        if camera.model not in CAMERA_MODEL_PARAMS:
            log.append(
                f"no track term: camera {camera.id} of {model.path} uses the {camera.model} model "
                f"(the track term projects {', '.join(CAMERA_MODEL_PARAMS)})"
            )
            return None
        models.append(camera.model)
        params.append([float(p) for p in camera.params])
        mine = obs.image_index == m  # this training camera's observations, in keypoint order
        cams.append(np.full(int(mine.sum()), cam, dtype=np.int64))
        pts.append(obs.point_index[mine])
        xys.append(obs.xy[mine])
    camera_index = np.concatenate(cams) if cams else np.zeros(0, dtype=np.int64)
    if len(camera_index) < MIN_OBSERVATIONS:
        log.append(f"no track term: only {len(camera_index)} observations of 3D points in {model.path}")
        return None
    return Tracks(
        camera_index=torch.from_numpy(camera_index),
        point_index=torch.from_numpy(np.concatenate(pts)),
        observed_px=torch.from_numpy(np.concatenate(xys)),
        points=torch.from_numpy(np.asarray(points.xyz64, dtype=np.float64)),
        point_ids=torch.from_numpy(obs.point_ids),
        intrinsics=CameraIntrinsics(models, params),
        source=f"{len(camera_index)} observations of {len(obs.point_ids)} points in {model.path}",
    )
