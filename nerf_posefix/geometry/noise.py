r"""Controlled, seeded pose noise (pure numpy).

Conventions
-----------
* Poses are **camera-to-world** ``c2w [N, 4, 4]`` float64 with **OpenCV camera axes** (see
  :mod:`nerf_posefix.geometry.poses`), in the world frame and units of the dataset.
* Each camera ``i`` receives a rigid perturbation about its own centre:

  .. math::

      R'_i = R_δ(a_i, θ) · R_i, \qquad C'_i = C_i + m · d_i,

  where ``R_i`` is the camera-to-world rotation, ``C_i`` the camera centre, ``a_i`` and ``d_i`` unit
  vectors drawn **uniformly on the sphere** (world frame), ``θ`` the requested angle and ``m`` the
  requested translation magnitude. So every perturbed camera is rotated by **exactly** ``θ`` (the
  geodesic angle between ``R_i`` and ``R'_i``) and its centre moves by **exactly** ``m``; only the
  directions are random. (A Gaussian alternative would make both magnitudes random and the benchmark
  levels fuzzy; exact magnitudes make "3 deg / 5 %" mean what it says.) Because ``a_i`` is isotropic,
  rotating in the world frame or the camera frame gives the same distribution.
* Translation units: ``"absolute"`` (world units) or ``"scene-fraction"``: a fraction of the
  **scene radius**, the largest distance of the (clean) camera centres from their centroid.
* Reproducibility: one ``numpy.random.default_rng(seed)`` draws all rotation axes ``[N, 3]`` first, then
  all translation directions ``[N, 3]``, in the order the poses are given. Callers that want noise
  independent of file order sort cameras by name first (:mod:`nerf_posefix.workflows.perturb` does).
  Held-out cameras still consume their draws (then get zero noise), so holding cameras out does not
  change the noise of the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from nerf_posefix.errors import InputError
from nerf_posefix.geometry.poses import scene_radius

TranslationUnits = Literal["scene-fraction", "absolute"]
TRANSLATION_UNITS: tuple[str, ...] = ("scene-fraction", "absolute")


def random_unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` unit vectors uniform on the sphere (normalised standard normals): ``[n, 3]``."""
    v = rng.standard_normal((n, 3))
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    # A zero-norm draw has probability 0; guard anyway so the output is always unit length.
    v = np.where(norms < 1e-12, np.array([1.0, 0.0, 0.0]), v)
    return v / np.maximum(norms, 1e-12)


def axis_angle_matrices(axes: np.ndarray, angles_rad: np.ndarray) -> np.ndarray:
    """Rodrigues: rotations by ``angles_rad [N]`` about unit ``axes [N, 3]`` -> ``[N, 3, 3]``."""
    axes = np.asarray(axes, dtype=np.float64).reshape(-1, 3)
    angles = np.asarray(angles_rad, dtype=np.float64).reshape(-1)
    k = np.zeros((axes.shape[0], 3, 3))
    k[:, 0, 1], k[:, 0, 2] = -axes[:, 2], axes[:, 1]
    k[:, 1, 0], k[:, 1, 2] = axes[:, 2], -axes[:, 0]
    k[:, 2, 0], k[:, 2, 1] = -axes[:, 1], axes[:, 0]
    s = np.sin(angles)[:, None, None]
    c = np.cos(angles)[:, None, None]
    return np.eye(3) + s * k + (1.0 - c) * (k @ k)


@dataclass(frozen=True)
class PoseNoise:
    """Per-camera rigid noise (see the module docstring for how it is applied).

    Attributes:
        rotation_axes: ``[N, 3]`` unit axes, world frame.
        rotation_deg: ``[N]`` angles in degrees (0 for held-out cameras).
        translations: ``[N, 3]`` centre offsets in world units (0 for held-out cameras).
        held_out: ``[N]`` bool, cameras left at their exact pose.
    """

    rotation_axes: np.ndarray
    rotation_deg: np.ndarray
    translations: np.ndarray
    held_out: np.ndarray

    def __len__(self) -> int:
        return int(self.rotation_deg.shape[0])

    def apply(self, c2w: np.ndarray) -> np.ndarray:
        """Perturbed copies of ``c2w [N, 3|4, 4]`` (OpenCV camera-to-world) -> ``[N, 4, 4]``."""
        c2w = np.asarray(c2w, dtype=np.float64)
        if c2w.ndim != 3 or c2w.shape[0] != len(self) or c2w.shape[-1] != 4 or c2w.shape[-2] not in (3, 4):
            raise ValueError(f"expected [{len(self)}, 3|4, 4] poses, got {c2w.shape}")
        out = np.zeros((c2w.shape[0], 4, 4))
        out[:, 3, 3] = 1.0
        delta = axis_angle_matrices(self.rotation_axes, np.radians(self.rotation_deg))  # [N, 3, 3]
        out[:, :3, :3] = delta @ c2w[:, :3, :3]
        out[:, :3, 3] = c2w[:, :3, 3] + self.translations
        return out

    def records(self, names: list[str]) -> list[dict[str, Any]]:
        """JSON-serialisable per-camera description (name, axis, angle, offset, its norm, held_out)."""
        if len(names) != len(self):
            raise ValueError(f"{len(names)} names for {len(self)} cameras")
        return [
            {
                "name": name,
                "rotation_axis": self.rotation_axes[i].tolist(),
                "rotation_deg": float(self.rotation_deg[i]),
                "translation": self.translations[i].tolist(),
                "translation_norm": float(np.linalg.norm(self.translations[i])),
                "held_out": bool(self.held_out[i]),
            }
            for i, name in enumerate(names)
        ]


def translation_magnitude(c2w: np.ndarray, translation: float, units: TranslationUnits) -> float:
    """The centre offset in world units: ``translation`` itself (``"absolute"``) or
    ``translation × scene_radius(centres)`` (``"scene-fraction"``).

    Raises:
        InputError: unknown units, negative or non-finite ``translation``, or a scene radius of 0 with
            ``"scene-fraction"`` and a non-zero translation.
    """
    if units not in TRANSLATION_UNITS:
        raise InputError(f"--translation-units must be one of {', '.join(TRANSLATION_UNITS)}, got {units!r}")
    if not np.isfinite(translation) or translation < 0:
        raise InputError(f"--translation must be a finite number >= 0, got {translation}")
    if units == "absolute":
        return float(translation)
    radius = scene_radius(np.asarray(c2w)[:, :3, 3])
    if radius <= 0 and translation > 0:
        raise InputError(
            "the scene radius (largest distance of a camera centre from their centroid) is 0: "
            "use --translation-units absolute"
        )
    return float(translation) * radius


def sample_pose_noise(
    num_cameras: int,
    rotation_deg: float,
    translation_world: float,
    seed: int,
    held_out: np.ndarray | None = None,
) -> PoseNoise:
    """Draw noise for ``num_cameras`` cameras: rotations of exactly ``rotation_deg`` about uniform
    random axes and centre offsets of exactly ``translation_world`` (world units) in uniform random
    directions; cameras with ``held_out[i]`` get none (their draws are still consumed).

    Raises:
        InputError: ``rotation_deg`` outside ``[0, 180]`` or not finite, ``translation_world`` < 0.
    """
    if not np.isfinite(rotation_deg) or not 0.0 <= rotation_deg <= 180.0:
        raise InputError(f"--rotation-deg must be in [0, 180], got {rotation_deg}")
    if not np.isfinite(translation_world) or translation_world < 0:
        raise InputError(f"--translation must be >= 0, got {translation_world}")
    rng = np.random.default_rng(seed)
    axes = random_unit_vectors(rng, num_cameras)  # [N, 3]
    directions = random_unit_vectors(rng, num_cameras)  # [N, 3]
    held = np.zeros(num_cameras, dtype=bool) if held_out is None else np.asarray(held_out, dtype=bool).reshape(-1)
    if held.shape[0] != num_cameras:
        raise ValueError(f"held_out has {held.shape[0]} entries for {num_cameras} cameras")
    angles = np.where(held, 0.0, float(rotation_deg))
    offsets = np.where(held[:, None], 0.0, translation_world * directions)
    return PoseNoise(rotation_axes=axes, rotation_deg=angles, translations=offsets, held_out=held)


def perturb_poses(
    c2w: np.ndarray,
    rotation_deg: float,
    translation: float,
    translation_units: TranslationUnits = "scene-fraction",
    seed: int = 0,
    held_out: np.ndarray | None = None,
) -> tuple[np.ndarray, PoseNoise, float]:
    """Perturb camera-to-world poses ``c2w [N, 3|4, 4]`` (OpenCV axes).

    Returns:
        ``(noisy_c2w [N, 4, 4], noise, translation_world)`` where ``translation_world`` is the centre
        offset in world units actually applied to every non-held-out camera.
    """
    c2w = np.asarray(c2w, dtype=np.float64)
    magnitude = translation_magnitude(c2w, translation, translation_units)
    noise = sample_pose_noise(c2w.shape[0], rotation_deg, magnitude, seed, held_out)
    return noise.apply(c2w), noise, magnitude


def holdout_mask(num_cameras: int, every: int) -> np.ndarray:
    """``[N]`` bool: True at indices ``i`` with ``i % every == 0`` (none if ``every <= 0``) — the test
    views of nerfstudio's ``--eval-mode interval --eval-interval every`` on name-sorted images."""
    if every <= 0:
        return np.zeros(num_cameras, dtype=bool)
    return np.arange(num_cameras) % every == 0
