"""TUM trajectory files (``timestamp tx ty tz qx qy qz qw``), read and written as evo does.

Conventions
-----------
* Rows are **camera-to-world** poses (camera centre ``t``, orientation quaternion ``q`` in scalar-last
  order), as evo's ``file_interface.read_tum_trajectory_file`` reads them. The camera axes are the
  writer's; posefix writes OpenCV axes (x right, y down, z forward), the axes of
  :class:`~nerf_posefix.io.camera_set.CameraSet`.
* Names are the timestamps formatted with 6 decimals, unless the file carries the comment line
  ``# posefix-names: [...]`` (JSON list) that :func:`write_tum` writes, in which case those names are
  used. evo skips that comment line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from nerf_posefix.errors import InputError
from nerf_posefix.geometry.poses import c2w_to_tum, tum_to_c2w
from nerf_posefix.io.camera_set import CameraSet, check_unique_names

TUM_NAMES_PREFIX = "# posefix-names:"


def read_tum(path: str | os.PathLike[str]) -> CameraSet:
    """Read a TUM trajectory file (see the module docstring for conventions)."""
    path = Path(path)
    names: list[str] | None = None
    rows = []
    try:
        with open(path, encoding="utf-8") as fid:
            for lineno, line in enumerate(fid, start=1):
                stripped = line.strip()
                if stripped.startswith(TUM_NAMES_PREFIX):
                    names = json.loads(stripped[len(TUM_NAMES_PREFIX):])
                    continue
                if not stripped or stripped.startswith("#"):
                    continue
                fields = stripped.split()
                if len(fields) != 8:
                    raise InputError(
                        f"{path}:{lineno}: a TUM row needs 8 values (timestamp tx ty tz qx qy qz qw), got {len(fields)}"
                    )
                try:
                    rows.append([float(v) for v in fields])
                except ValueError:
                    raise InputError(f"{path}:{lineno}: not a number in TUM row {stripped[:60]!r}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: cannot read TUM file ({err})") from None
    if not rows:
        raise InputError(f"{path}: no poses in TUM file")
    table = np.asarray(rows)  # [N, 8]
    if not np.isfinite(table).all() or (np.linalg.norm(table[:, 4:], axis=1) < 1e-12).any():
        raise InputError(f"{path}: non-finite value or zero quaternion in TUM file")
    stamps, c2w = tum_to_c2w(table)
    if names is None or len(names) != len(stamps):
        names = [f"{t:.6f}" for t in stamps]
    check_unique_names([str(n) for n in names], str(path))
    return CameraSet(names=[str(n) for n in names], c2w=c2w, source=str(path))


def write_tum(
    camera_set: CameraSet, path: str | os.PathLike[str], timestamps: np.ndarray | None = None
) -> Path:
    """Write ``camera_set`` as a TUM file that evo reads (``read_tum_trajectory_file``).

    Timestamps are ``timestamps [N]`` if given, else the names when all of them parse as numbers,
    else the camera indices ``0, 1, ...``. The names are kept in a ``# posefix-names:`` comment line
    (JSON list), which :func:`read_tum` uses and evo ignores.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if timestamps is not None:
        stamps = np.asarray(timestamps, dtype=np.float64).reshape(-1)
    else:
        try:
            stamps = np.array([float(n) for n in camera_set.names], dtype=np.float64)
        except ValueError:
            stamps = np.arange(len(camera_set), dtype=np.float64)
    rows = c2w_to_tum(camera_set.c2w, stamps)  # [N, 8]
    with open(path, "w", encoding="utf-8") as fid:
        fid.write(f"{TUM_NAMES_PREFIX} {json.dumps(camera_set.names)}\n")
        np.savetxt(fid, rows, fmt="%.17g", delimiter=" ")
    return path
