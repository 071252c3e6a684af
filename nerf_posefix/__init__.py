"""nerf-posefix: camera pose refinement with a NeRF under the homography-based pose prior.

Layers (each imports only the ones above it):

* maths, pure torch/numpy, no nerfstudio import: :mod:`nerf_posefix.geometry.homography`,
  :mod:`nerf_posefix.geometry.poses`, :mod:`nerf_posefix.geometry.alignment`, :mod:`nerf_posefix.geometry.metrics`;
* data: :mod:`nerf_posefix.camera_sets` (COLMAP models, transforms.json, TUM files);
* nerfstudio glue: :mod:`nerf_posefix.plugin`;
* command line: :mod:`nerf_posefix.cli`.
"""

__version__ = "0.1.0"
