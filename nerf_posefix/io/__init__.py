"""Floor 2 of 5: every file format in and out, each convention converted here once.

* :mod:`~nerf_posefix.io.camera_set`: the in-memory camera set (camera-to-world, OpenCV axes, input
  world frame) and matching two sets / image files to names.
* :mod:`~nerf_posefix.io.colmap`: COLMAP models (world-to-camera qvec/tvec, OpenCV axes).
* :mod:`~nerf_posefix.io.transforms_json`: nerfstudio transforms.json (camera-to-world, OpenGL axes,
  ``applied_transform``), read and written by one module.
* :mod:`~nerf_posefix.io.tum`: TUM trajectories (camera-to-world rows, as evo reads them) and evo's
  association of two trajectories by timestamp.
* :mod:`~nerf_posefix.io.sources`: which reader a path needs.
* :mod:`~nerf_posefix.io.atomic`: output paths checked against the inputs before any work; a directory
  or file written in a temporary sibling, then renamed into place.

Imports only :mod:`nerf_posefix.geometry` (and nerfstudio's COLMAP parser); never the plugin.
"""
