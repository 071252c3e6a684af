"""nerf-posefix: camera pose refinement with a NeRF under the homography-based pose prior.

Layers (each imports only the ones above it):

* maths, pure torch/numpy, no nerfstudio import: :mod:`nerf_posefix.geometry.homography`,
  :mod:`nerf_posefix.geometry.poses`, :mod:`nerf_posefix.geometry.alignment`, :mod:`nerf_posefix.geometry.metrics`;
* data: :mod:`nerf_posefix.camera_sets` (COLMAP models, transforms.json, TUM files);
* nerfstudio glue: :mod:`nerf_posefix.plugin`;
* command line: :mod:`nerf_posefix.cli`.
"""

__version__ = "0.1.0"

# The system zlib is loaded before pycolmap, whatever imports pycolmap later: pycolmap 4.2.1's extension carries a zlib of
# its own, and when it is the first to load ``libz.so.1`` a later user of the system zlib in the same process (Python's
# ``zlib``, Pillow's PNG encoder: matplotlib's figures, the demo's plots) mixes the two and aborts in ``deflateEnd``
# ("free(): invalid pointer"). Loaded first, the system zlib serves them all (tests/test_cli_output.py).
import zlib as _zlib  # noqa: E402, F401
