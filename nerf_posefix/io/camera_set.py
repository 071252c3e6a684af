"""Camera sets: named camera-to-world poses (OpenCV axes), and how two sets are matched.

Conventions
-----------
* ``CameraSet.c2w`` is ``[N, 4, 4]`` float64 **camera-to-world** with **OpenCV camera axes** (x right,
  y down, the camera looks along +z), in the world frame and units of the source. Every reader of
  :mod:`nerf_posefix.io` converts its file's convention into this one, once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Sequence

import numpy as np

from nerf_posefix.errors import InputError
from nerf_posefix.geometry.poses import as_4x4


@dataclass
class CameraSet:
    """Named cameras with poses, and optionally the 3D points they observe.

    Attributes:
        names: ``N`` unique camera (image) names.
        c2w: ``[N, 4, 4]`` camera-to-world, OpenCV camera axes, source world frame and units.
        points: ``[P, 3]`` world points (e.g. COLMAP's sparse points), or None.
        observations: per camera, an int array of indices into ``points`` of the points it observes,
            or None.
        source: where the set came from (path), for messages and reports.
    """

    names: list[str]
    c2w: np.ndarray
    points: np.ndarray | None = None
    observations: list[np.ndarray] | None = None
    source: str = ""

    def __post_init__(self) -> None:
        self.names = [str(n) for n in self.names]
        c2w = as_4x4(self.c2w, f"{self.source or 'camera set'}: c2w")
        if c2w.shape[0] != len(self.names):
            raise ValueError(f"{self.source or 'camera set'}: {len(self.names)} names for {c2w.shape[0]} poses")
        self.c2w = c2w
        if self.points is not None:
            self.points = np.asarray(self.points, dtype=np.float64).reshape(-1, 3)
        if self.observations is not None:
            if len(self.observations) != len(self.names):
                raise ValueError(
                    f"{self.source or 'camera set'}: {len(self.observations)} observation lists for {len(self.names)} cameras"
                )
            self.observations = [np.asarray(o, dtype=np.int64).reshape(-1) for o in self.observations]

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, indices: np.ndarray) -> "CameraSet":
        """The cameras at ``indices`` (in that order); points are shared, observations follow."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        return CameraSet(
            names=[self.names[i] for i in indices],
            c2w=self.c2w[indices],
            points=self.points,
            observations=None if self.observations is None else [self.observations[i] for i in indices],
            source=self.source,
        )

    def with_poses(self, c2w: np.ndarray, source: str | None = None) -> "CameraSet":
        """The same cameras (names, points, observations) with new poses ``[N, 4, 4]``."""
        return CameraSet(
            names=list(self.names),
            c2w=c2w,
            points=self.points,
            observations=self.observations,
            source=self.source if source is None else source,
        )


# ---------------------------------------------------------------------------------------------
# matching


def check_unique_names(names: Sequence[str], source: str) -> None:
    """Raise :class:`InputError` naming ``source`` and the duplicates if ``names`` repeat."""
    seen: set[str] = set()
    dups = []
    for n in names:
        if n in seen:
            dups.append(n)
        seen.add(n)
    if dups:
        raise InputError(f"{source}: duplicate camera names: {', '.join(sorted(set(dups))[:5])}")


@dataclass
class CameraMatch:
    """Correspondences between a reference and an estimated camera set.

    Attributes:
        ref_index: ``[M]`` indices into the reference, in the reference's order.
        est_index: ``[M]`` indices into the estimate; ``est[est_index[k]]`` is ``ref[ref_index[k]]``.
        unmatched_ref: reference names without a counterpart.
        unmatched_est: estimate names without a counterpart.
    """

    ref_index: np.ndarray
    est_index: np.ndarray
    unmatched_ref: list[str] = field(default_factory=list)
    unmatched_est: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.ref_index.shape[0])


def match_camera_sets(ref: CameraSet, est: CameraSet, by: Literal["name", "order"] = "name") -> CameraMatch:
    """Match cameras by name (:func:`match_names`: the same name, or the same image named from another
    folder) or by position in the sets.

    Matches are listed in the reference's order (so "consecutive cameras" follow the reference).
    With ``by="order"``, the first ``min(N_ref, N_est)`` cameras are paired and the rest are unmatched.

    Raises:
        InputError: duplicate names (``by="name"``), or no camera in common.
    """
    if by == "order":
        m = min(len(ref), len(est))
        idx = np.arange(m, dtype=np.int64)
        match = CameraMatch(idx, idx.copy(), list(ref.names[m:]), list(est.names[m:]))
    elif by == "name":
        check_unique_names(ref.names, ref.source)
        check_unique_names(est.names, est.source)
        pairs = match_names(ref.names, est.names)
        est_of = dict(pairs)
        matched_est = set(est_of.values())
        arr = np.asarray(sorted(pairs), dtype=np.int64).reshape(-1, 2)
        match = CameraMatch(
            arr[:, 0].copy(),
            arr[:, 1].copy(),
            [n for i, n in enumerate(ref.names) if i not in est_of],
            [n for j, n in enumerate(est.names) if j not in matched_est],
        )
    else:
        raise ValueError(f"by must be 'name' or 'order', got {by!r}")
    if len(match) == 0:
        raise InputError(
            f"no camera in common between {ref.source} ({len(ref)} cameras, e.g. {ref.names[:2]}) and "
            f"{est.source} ({len(est)} cameras, e.g. {est.names[:2]}) matching by {by}"
        )
    return match


def _components(name: str) -> tuple[str, ...]:
    return tuple(p for p in _norm(str(name)).split("/") if p not in ("", "."))


def _is_tail(short: tuple[str, ...], long: tuple[str, ...]) -> bool:
    return 0 < len(short) <= len(long) and long[len(long) - len(short):] == short


def match_names(a: Sequence[str], b: Sequence[str]) -> list[tuple[int, int]]:
    """Pairs ``(i, j)`` of image names ``a[i]`` and ``b[j]`` that name the same image: the same name, or
    (for the names left) one's path components end the other's (``images/cam0/000.png`` and
    ``cam0/000.png``; ``images/000.png`` and ``000.png``), when that pairing is unique both ways. One
    identity for every command: a name is the image's path relative to an image folder, with the folders
    the input has (``cam0/000.png``), and readers that name images from another root (a transforms.json
    beside its ``images/`` folder) still match."""
    exact = {n: j for j, n in enumerate(b)}
    pairs = [(i, exact[n]) for i, n in enumerate(a) if n in exact]
    used_a, used_b = {i for i, _ in pairs}, {j for _, j in pairs}
    rest_b: dict[str, list[int]] = {}
    comps_b = {}
    for j, n in enumerate(b):
        if j not in used_b:
            comps_b[j] = _components(n)
            if comps_b[j]:
                rest_b.setdefault(comps_b[j][-1], []).append(j)
    candidates: dict[int, list[int]] = {}
    back: dict[int, list[int]] = {}
    for i, n in enumerate(a):
        if i in used_a:
            continue
        ca = _components(n)
        if not ca:
            continue
        for j in rest_b.get(ca[-1], []):
            if _is_tail(ca, comps_b[j]) or _is_tail(comps_b[j], ca):
                candidates.setdefault(i, []).append(j)
                back.setdefault(j, []).append(i)
    pairs += [(i, js[0]) for i, js in candidates.items() if len(js) == 1 and len(back[js[0]]) == 1]
    return sorted(pairs)


def _norm(name: str) -> str:
    name = name.replace(os.sep, "/")
    while name.startswith("./"):
        name = name[2:]
    return name


def match_image_names(filenames: Sequence[os.PathLike[str] | str], names: Sequence[str]) -> list[Optional[int]]:
    """For each image file, the index of the name that refers to it, or None.

    A name refers to a file when the file's path ends with the name's path components (so COLMAP
    names with sub-folders and transforms.json ``file_path`` values both work); when no name does,
    a unique equal basename is accepted (e.g. nerfstudio's ``images_2/`` downscaled copies).
    """
    normed = [_norm(str(n)) for n in names]
    by_basename: dict[str, list[int]] = {}
    for k, n in enumerate(normed):
        by_basename.setdefault(n.rsplit("/", 1)[-1], []).append(k)
    out: list[Optional[int]] = []
    for f in filenames:
        path = _norm(Path(f).as_posix())
        base = path.rsplit("/", 1)[-1]
        candidates = by_basename.get(base, [])
        suffix = [k for k in candidates if path == normed[k] or path.endswith("/" + normed[k])]
        if suffix:
            out.append(max(suffix, key=lambda k: len(normed[k])))
        elif len(candidates) == 1:
            out.append(candidates[0])
        else:
            out.append(None)
    return out


# ---------------------------------------------------------------------------------------------
# intrinsics


@dataclass(frozen=True)
class ImageCamera:
    """The intrinsics of one image as a COLMAP camera model.

    Attributes:
        model: COLMAP camera model name (``PINHOLE``, ``OPENCV``, ...).
        width, height: image size in pixels.
        params: the model's parameters in COLMAP's order (e.g. ``fx, fy, cx, cy`` for ``PINHOLE``; ``fx, fy,
            cx, cy, k1, k2, p1, p2`` for ``OPENCV``), pixels for focal lengths and principal point, with
            COLMAP's pixel convention (the centre of the top-left pixel is ``(0.5, 0.5)``).
    """

    model: str
    width: int
    height: int
    params: tuple[float, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", tuple(float(p) for p in self.params))
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))


#: Parameter names of the COLMAP camera models the pose readers give (COLMAP's order; the same table as
#: :data:`nerf_posefix.geometry.reprojection.CAMERA_MODEL_PARAMS`, here without importing torch).
CAMERA_PARAM_NAMES: dict[str, tuple[str, ...]] = {
    "SIMPLE_PINHOLE": ("f", "cx", "cy"),
    "PINHOLE": ("fx", "fy", "cx", "cy"),
    "SIMPLE_RADIAL": ("f", "cx", "cy", "k"),
    "RADIAL": ("f", "cx", "cy", "k1", "k2"),
    "OPENCV": ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2"),
}


def intrinsics_problem(camera: ImageCamera) -> Optional[str]:
    """What makes ``camera`` unusable for projecting points (the stages divide by its focal lengths and
    size), in words, or None: a size that is not positive, a parameter that is not finite, a focal length
    (``f``, ``fx``, ``fy``) that is not positive."""
    if camera.width <= 0 or camera.height <= 0:
        return f"image size {camera.width}x{camera.height} is not positive"
    if not np.isfinite(np.asarray(camera.params, dtype=np.float64)).all():
        return f"parameters {list(camera.params)} are not all finite"
    names = CAMERA_PARAM_NAMES.get(str(camera.model).upper())
    if names is not None and len(names) == len(camera.params):
        bad = [f"{n} = {v:g}" for n, v in zip(names, camera.params) if n.startswith("f") and not v > 0]
        if bad:
            return f"focal length {', '.join(bad)} is not positive"
    return None
