"""TUM trajectory files (``timestamp tx ty tz qx qy qz qw``), read, written and associated as evo does.

Conventions
-----------
* Rows are **camera-to-world** poses (camera centre ``t``, orientation quaternion ``q`` in scalar-last
  order), as evo's ``file_interface.read_tum_trajectory_file`` reads them. The camera axes are the
  writer's; posefix writes OpenCV axes (x right, y down, z forward), the axes of
  :class:`~nerf_posefix.io.camera_set.CameraSet`.
* Names are the timestamps formatted with 6 decimals, unless the file carries the comment line
  ``# posefix-names: [...]`` (JSON list) that :func:`write_tum` writes, in which case those names are
  used. evo skips that comment line.
* Timestamps are seconds (float64, as in the file). Two trajectories from different clocks or rates are
  matched with :func:`associate_timestamps`, evo's ``sync.associate_trajectories`` (nearest timestamp
  within ``max_diff``, after adding ``offset`` to the estimate's timestamps).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nerf_posefix.errors import InputError
from nerf_posefix.geometry.poses import c2w_to_tum, tum_to_c2w
from nerf_posefix.io.camera_set import CameraSet, check_unique_names

TUM_NAMES_PREFIX = "# posefix-names:"
#: File suffixes of TUM trajectories (an unknown format with another suffix is named as such).
TUM_SUFFIXES = ("", ".txt", ".tum", ".csv", ".log", ".traj")
#: evo's default ``--t_max_diff`` (seconds).
DEFAULT_MAX_DIFF = 0.01


@dataclass
class TumTrajectory:
    """A TUM file as read.

    Attributes:
        cameras: the poses (camera-to-world, file order), named as the module docstring says.
        timestamps: ``[N]`` float64 seconds, file order.
        named: True when the names come from a ``# posefix-names:`` line (the file was written by
            posefix, and its cameras are matched by name); False when they are the timestamps.
    """

    cameras: CameraSet
    timestamps: np.ndarray
    named: bool


def _not_a_trajectory(path: Path, reason: str) -> InputError:
    return InputError(
        f"{path}: not a pose file posefix reads ({reason}); expected a COLMAP model directory, a transforms.json, "
        "a nerfstudio run (directory or config.yml) or a TUM trajectory text file (timestamp tx ty tz qx qy qz qw)"
    )


def read_tum_trajectory(path: str | os.PathLike[str]) -> TumTrajectory:
    """Read a TUM trajectory file (see the module docstring for conventions).

    Raises:
        InputError: unreadable file, binary content (named as not a pose file at all), a row that is not 8
            numbers, a non-finite value or a zero quaternion (named with its line), no rows, duplicate names.
    """
    path = Path(path)
    names: list[str] | None = None
    rows: list[list[float]] = []
    try:
        with open(path, "rb") as fid:
            head = fid.read(4096)
        if b"\x00" in head:
            raise _not_a_trajectory(path, "binary content")
        with open(path, encoding="utf-8-sig") as fid:
            for lineno, line in enumerate(fid, start=1):
                stripped = line.strip()
                if stripped.startswith(TUM_NAMES_PREFIX):
                    try:
                        names = json.loads(stripped[len(TUM_NAMES_PREFIX):])
                    except ValueError as err:
                        raise InputError(f"{path}:{lineno}: malformed {TUM_NAMES_PREFIX!r} line ({err})") from None
                    continue
                if not stripped or stripped.startswith("#"):
                    continue
                fields = stripped.split()
                if len(fields) != 8 and not rows and path.suffix.lower() not in TUM_SUFFIXES:
                    raise _not_a_trajectory(path, f"line {lineno} is not a TUM row of 8 numbers")
                if len(fields) != 8:
                    raise InputError(
                        f"{path}:{lineno}: a TUM row needs 8 values (timestamp tx ty tz qx qy qz qw), got {len(fields)}"
                    )
                try:
                    row = [float(v) for v in fields]
                except ValueError:
                    raise InputError(f"{path}:{lineno}: not a number in TUM row {stripped[:60]!r}") from None
                bad = [label for label, v in zip(("timestamp", "tx", "ty", "tz", "qx", "qy", "qz", "qw"), row) if not np.isfinite(v)]
                if bad:
                    raise InputError(f"{path}:{lineno}: non-finite {', '.join(bad)} in TUM row {stripped[:60]!r}")
                if np.linalg.norm(row[4:]) < 1e-12:
                    raise InputError(f"{path}:{lineno}: zero quaternion in TUM row {stripped[:60]!r}")
                rows.append(row)
    except UnicodeDecodeError:
        raise _not_a_trajectory(path, "not UTF-8 text") from None
    except OSError as err:
        raise InputError(f"{path}: cannot read the file ({err.strerror or err})") from None
    if not rows:
        raise InputError(f"{path}: no poses in TUM file")
    table = np.asarray(rows)  # [N, 8]
    stamps, c2w = tum_to_c2w(table)
    named = names is not None and len(names) == len(stamps)
    if not named:
        names = [f"{t:.6f}" for t in stamps]
    assert names is not None
    check_unique_names([str(n) for n in names], str(path))
    return TumTrajectory(CameraSet(names=[str(n) for n in names], c2w=c2w, source=str(path)), stamps, named)


def read_tum(path: str | os.PathLike[str]) -> CameraSet:
    """Read a TUM trajectory file as a :class:`CameraSet` (see :func:`read_tum_trajectory`)."""
    return read_tum_trajectory(path).cameras


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


# ---------------------------------------------------------------------------------------------
# association by timestamp


def _nearest_indices(stamps_1: np.ndarray, stamps_2: np.ndarray, max_diff: float) -> tuple[np.ndarray, np.ndarray]:
    """evo's ``sync.matching_time_indices`` (evo 1.38) on ``stamps_2`` already offset: for each stamp of
    ``stamps_1`` (in order) the index of the nearest stamp of ``stamps_2`` (ties: the earlier one), kept
    when it is within ``max_diff``. Same float operations as evo's, vectorised."""
    n2 = stamps_2.shape[0]
    if n2 == 0 or stamps_1.shape[0] == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    if not np.all(np.diff(stamps_2) >= 0):  # evo's linear search: argmin of |stamps_2 - stamp_1|
        idx_1, idx_2 = [], []
        for start in range(0, stamps_1.shape[0], 1024):
            block = stamps_1[start : start + 1024]
            diffs = np.abs(stamps_2[None, :] - block[:, None])  # [B, N2]
            best = np.argmin(diffs, axis=1)
            keep = diffs[np.arange(block.shape[0]), best] <= max_diff
            idx_1.append(np.flatnonzero(keep) + start)
            idx_2.append(best[keep])
        return np.concatenate(idx_1).astype(np.int64), np.concatenate(idx_2).astype(np.int64)
    inside = ~((stamps_1 < stamps_2[0] - max_diff) | (stamps_1 > stamps_2[-1] + max_diff))
    upper = np.minimum(np.searchsorted(stamps_2, stamps_1, side="right"), n2 - 1)  # [N1]
    diff_ub = stamps_2[upper] - stamps_1
    diff_lb = np.where(upper > 0, stamps_1 - stamps_2[np.maximum(upper - 1, 0)], np.inf)
    take_upper = (diff_ub <= max_diff) & (diff_ub < diff_lb)
    take_lower = ~take_upper & (diff_lb <= max_diff) & (diff_lb <= diff_ub)
    keep = inside & (take_upper | take_lower)
    best = np.where(take_upper, upper, upper - 1)
    return np.flatnonzero(keep).astype(np.int64), best[keep].astype(np.int64)


def associate_timestamps(
    ref_stamps: np.ndarray, est_stamps: np.ndarray, max_diff: float = DEFAULT_MAX_DIFF, offset: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of a reference and an estimated trajectory at (nearly) the same time, as evo's
    ``sync.associate_trajectories(ref, est, max_diff=max_diff, offset_2=offset)`` (evo 1.38) forms them.

    The trajectory with fewer poses is walked in its order (on a tie in length, the estimate); each of its
    stamps is paired with the nearest stamp of the other (``offset`` added to the estimate's stamps;
    the earlier on a tie) when they differ by at most ``max_diff`` seconds. A pose of the longer
    trajectory may be paired twice, as in evo.

    Args:
        ref_stamps: ``[N_ref]`` reference timestamps (s); est_stamps: ``[N_est]`` estimate timestamps (s).
        max_diff: largest time difference of a pair (s), evo's ``--t_max_diff``.
        offset: added to the estimate's timestamps (s), evo's ``--t_offset``.

    Returns:
        ``(ref_index [M], est_index [M])``, in the order evo's associated trajectories have.

    Raises:
        InputError: ``max_diff`` negative or not finite, ``offset`` not finite.
    """
    if not (np.isfinite(max_diff) and max_diff >= 0):
        raise InputError(f"--t-max-diff must be a finite number >= 0 (seconds), got {max_diff}")
    if not np.isfinite(offset):
        raise InputError(f"--t-offset must be a finite number (seconds), got {offset}")
    ref = np.asarray(ref_stamps, dtype=np.float64).reshape(-1)
    est = np.asarray(est_stamps, dtype=np.float64).reshape(-1)
    est_longer = est.shape[0] > ref.shape[0]
    if est_longer:  # walk the reference; the estimate's stamps are offset
        idx_ref, idx_est = _nearest_indices(ref, est + offset, max_diff)
    else:  # walk the estimate; the reference's stamps are offset by -offset (as evo does)
        idx_est, idx_ref = _nearest_indices(est, ref + (-offset), max_diff)
    return idx_ref, idx_est
