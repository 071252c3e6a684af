"""Load poses from any source a user has: COLMAP model, transforms.json, TUM file or nerfstudio run.

Camera sets are camera-to-world with OpenCV axes in the source's own world frame (see
:mod:`nerf_posefix.io.camera_set`); a run's poses are its refined training cameras mapped back to its
input's world frame (:func:`nerf_posefix.plugin.run_reader.load_refined_camera_set`).
"""

from __future__ import annotations

import os
from pathlib import Path

from nerf_posefix.io.camera_set import CameraSet
from nerf_posefix.io.sources import load_camera_set


def _load_run(config_path: Path) -> CameraSet:
    from nerf_posefix.plugin.run_reader import load_refined_camera_set  # lazy: imports nerfstudio models

    return load_refined_camera_set(config_path)


def load_pose_source(path: str | os.PathLike[str]) -> CameraSet:
    """Cameras of ``path``: see :func:`nerf_posefix.io.sources.load_camera_set`; nerfstudio runs
    (their directory or ``config.yml``) give their refined training cameras.

    Raises:
        InputError: the path does not exist, is not recognised, or cannot be parsed (named).
    """
    return load_camera_set(path, load_run=_load_run)
