#!/usr/bin/env python
r"""Render the bundled synthetic scene ("toybox") with exact ground-truth poses.

A small numpy ray caster (no GPU renderer needed) renders a few solid-textured objects (two boxes, two
spheres, a capped cylinder) standing on a textured ground plane inside a textured backdrop sphere, so
every pixel sees a surface. Textures are procedural *solid* textures (functions of the 3D point):
multi-scale value noise, checkers, stripes and cosine colour palettes, so the images have gradients
everywhere. Shading is Lambertian (view independent) with one directional light, an ambient term and
hard shadows cast by the objects. Each pixel averages ``supersample²`` rays (anti-aliasing).

Everything is deterministic from ``--seed`` (textures, camera jitter, 3D point sampling).

Conventions
-----------
* World frame: right-handed, **z up**, metres; the ground is the plane ``z = 0``; the objects sit near
  the origin; the backdrop is a sphere of radius ``backdrop_radius`` centred at the origin.
* Cameras are pinhole, ``fx = fy``, principal point at the image centre ``(W/2, H/2)``. Pixel ``(row i,
  column j)`` has its centre at image coordinates ``(u, v) = (j + 0.5, i + 0.5)`` (COLMAP's and
  nerfstudio's convention), so a camera-frame point ``X`` projects to ``u = fx X/Z + cx``.
* Internally poses are **camera-to-world with OpenCV axes** (x right, y down, looking along +z).
  ``transforms.json`` stores camera-to-world with **OpenGL axes** (``c2w_gl = c2w_cv @ diag(1,-1,-1,1)``);
  the COLMAP model stores world-to-camera ``qvec`` (wxyz) / ``tvec``. Both use the same world frame
  (``transforms.json`` has ``applied_transform = I`` so nerfstudio does not re-orient it).

Output (``--output DIR``)::

    DIR/images/000.png ...          # RGB PNGs, W x H
    DIR/transforms.json             # nerfstudio dataset (PINHOLE, c2w OpenGL, ply_file_path)
    DIR/transforms_gt.json          # identical copy: the ground truth that travels with the scene
    DIR/sparse/0/{cameras,images,points3D}.bin   # COLMAP model, PINHOLE, exact poses, 2D observations
    DIR/sparse_pc.ply               # the COLMAP points (open3d), for nerfstudio's load_3D_points
    DIR/scene.json                  # generator parameters and scene statistics

Usage::

    python -m benchmarks.make_scene --output assets/toybox
    python -m benchmarks.make_scene --output assets/toybox_tiny --tiny
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

#: Ray hits closer than this (metres) are ignored (self-intersection guard).
EPS = 1e-6
#: Material ids.
GROUND, BACKDROP = 0, 1



# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneConfig:
    """Parameters of the rendered scene (all lengths in metres, angles in degrees)."""

    seed: int = 0
    num_views: int = 64
    width: int = 128
    height: int = 128
    #: Horizontal field of view.
    fov_deg: float = 55.0
    #: Rays per pixel = supersample².
    supersample: int = 3
    #: Camera orbits: (elevation deg, radius m) per ring; views are split evenly between rings.
    rings: tuple[tuple[float, float], ...] = ((18.0, 3.2), (42.0, 2.9))
    #: Point all cameras look at (before jitter).
    target: tuple[float, float, float] = (0.0, 0.0, 0.35)
    #: Uniform jitter half-widths of azimuth (deg), elevation (deg), radius (fraction), target (m).
    jitter: tuple[float, float, float, float] = (3.0, 4.0, 0.08, 0.15)
    backdrop_radius: float = 6.0
    #: Candidate 3D points per view (back-projected pixel centres), before the track filter.
    points_per_view: int = 32
    #: Keep points seen by at least this many images.
    min_track_length: int = 2
    #: Direction *towards* the light (normalised at use).
    light_dir: tuple[float, float, float] = (0.45, 0.3, 1.0)
    ambient: float = 0.38


def tiny_config(seed: int = 0) -> SceneConfig:
    """The small variant used by fast tests: 16 views of 64x64."""
    return SceneConfig(seed=seed, num_views=16, width=64, height=64, supersample=3, points_per_view=64)


# --------------------------------------------------------------------------------------------------
# Procedural solid textures
# --------------------------------------------------------------------------------------------------


@dataclass
class Noise:
    """Seeded 3D value noise (period 256 lattice units) with fractal sums.

    ``perm [512]`` is a doubled permutation of 0..255, ``values [256]`` uniform lattice values in [0, 1].
    """

    perm: np.ndarray
    values: np.ndarray

    @classmethod
    def from_rng(cls, rng: np.random.Generator) -> "Noise":
        perm = rng.permutation(256).astype(np.int64)
        return cls(perm=np.concatenate([perm, perm]), values=rng.random(256))

    def _hash(self, ix: np.ndarray, iy: np.ndarray, iz: np.ndarray) -> np.ndarray:
        p = self.perm
        return p[p[p[ix & 255] + (iy & 255)] + (iz & 255)]

    def value(self, pts: np.ndarray) -> np.ndarray:
        """Smooth value noise in [0, 1] at ``pts [M, 3]`` -> ``[M]``."""
        base = np.floor(pts)
        frac = pts - base
        w = frac * frac * (3.0 - 2.0 * frac)  # smoothstep weights, [M, 3]
        ix, iy, iz = (base[:, k].astype(np.int64) for k in range(3))
        out = np.zeros(pts.shape[0])
        for dx in (0, 1):
            wx = w[:, 0] if dx else 1.0 - w[:, 0]
            for dy in (0, 1):
                wy = w[:, 1] if dy else 1.0 - w[:, 1]
                for dz in (0, 1):
                    wz = w[:, 2] if dz else 1.0 - w[:, 2]
                    out += wx * wy * wz * self.values[self._hash(ix + dx, iy + dy, iz + dz)]
        return out

    def fbm(self, pts: np.ndarray, octaves: int = 4, gain: float = 0.55) -> np.ndarray:
        """Fractal sum of ``octaves`` octaves (frequency x2, amplitude x``gain``), in [0, 1]: ``[M]``."""
        total = np.zeros(pts.shape[0])
        amp, norm = 1.0, 0.0
        for k in range(octaves):
            # A fixed offset per octave decorrelates the lattices.
            total += amp * self.value(pts * (2.0**k) + 17.3 * k)
            norm += amp
            amp *= gain
        return total / norm


def cosine_palette(t: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Colour ``a + b cos(2π (c t + d))`` for ``t [M]`` -> ``[M, 3]``, clipped to [0, 1]."""
    return np.clip(a + b * np.cos(2.0 * np.pi * (c * t[:, None] + d)), 0.0, 1.0)


def checker(pts: np.ndarray, size: float) -> np.ndarray:
    """3D checkerboard of cell ``size``: ``[M]`` in {0, 1}."""
    cells = np.floor(pts / size).astype(np.int64).sum(axis=1)
    return (cells & 1).astype(np.float64)


@dataclass
class Material:
    """A solid texture: cosine palette driven by fractal noise, a linear gradient and a pattern."""

    palette: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
    noise_scale: float  # noise frequency, 1/m
    gradient: np.ndarray  # [3], palette shift per metre along this vector
    pattern: str  # "checker" | "stripes" | "none"
    pattern_size: float  # m
    pattern_strength: float  # multiplicative contrast of the pattern
    offset: np.ndarray  # [3] noise-domain offset (decorrelates materials)


def make_materials(rng: np.random.Generator, num_objects: int) -> list[Material]:
    """Ground, backdrop, then one material per object, all drawn from ``rng``."""

    def palette() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        a = rng.uniform(0.4, 0.6, 3)
        b = rng.uniform(0.3, 0.5, 3)
        c = rng.uniform(0.6, 1.4, 3)
        d = rng.uniform(0.0, 1.0, 3)
        return a, b, c, d

    mats = [
        Material(palette(), 2.5, np.array([0.08, -0.05, 0.0]), "checker", 0.3, 0.25, rng.uniform(0, 100, 3)),
        Material(palette(), 0.9, np.array([0.0, 0.0, 0.12]), "stripes", 0.45, 0.2, rng.uniform(0, 100, 3)),
    ]
    patterns = ["stripes", "checker", "stripes", "checker", "none", "stripes"]
    for k in range(num_objects):
        grad = rng.normal(size=3)
        mats.append(
            Material(
                palette(),
                float(rng.uniform(3.0, 6.0)),
                0.4 * grad / np.linalg.norm(grad),
                patterns[k % len(patterns)],
                float(rng.uniform(0.08, 0.16)),
                float(rng.uniform(0.2, 0.35)),
                rng.uniform(0, 100, 3),
            )
        )
    return mats


def albedo(mat: Material, noise: Noise, pts: np.ndarray) -> np.ndarray:
    """Albedo of ``mat`` at world points ``pts [M, 3]`` -> ``[M, 3]`` in [0, 1]."""
    q = pts * mat.noise_scale + mat.offset
    t = noise.fbm(q, octaves=4) * 1.4 + pts @ mat.gradient
    col = cosine_palette(t, *mat.palette)
    # Fine detail: a second, higher-frequency noise modulates brightness.
    col *= (0.78 + 0.3 * noise.fbm(q * 3.1 + 5.0, octaves=2))[:, None]
    if mat.pattern == "checker":
        col *= (1.0 - mat.pattern_strength * checker(pts, mat.pattern_size))[:, None]
    elif mat.pattern == "stripes":
        phase = (pts[:, 2] + 0.35 * pts[:, 0] - 0.2 * pts[:, 1]) / mat.pattern_size
        phase = phase + 0.6 * noise.value(q * 0.7 + 11.0)
        col *= (1.0 - mat.pattern_strength * (0.5 + 0.5 * np.sin(2.0 * np.pi * phase)))[:, None]
    return np.clip(col, 0.0, 1.0)


# --------------------------------------------------------------------------------------------------
# Geometry and ray casting
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sphere:
    center: tuple[float, float, float]
    radius: float


@dataclass(frozen=True)
class Box:
    """A box rotated by ``yaw_deg`` about the world z axis."""

    center: tuple[float, float, float]
    half_size: tuple[float, float, float]
    yaw_deg: float


@dataclass(frozen=True)
class Cylinder:
    """A vertical cylinder standing on the ground (z from 0 to ``height``), capped at the top."""

    center_xy: tuple[float, float]
    radius: float
    height: float


Primitive = Sphere | Box | Cylinder

#: The objects of the scene (material ids 2, 3, ... in this order).
OBJECTS: tuple[Primitive, ...] = (
    Box(center=(0.55, -0.35, 0.35), half_size=(0.35, 0.25, 0.35), yaw_deg=28.0),
    Sphere(center=(-0.6, 0.35, 0.45), radius=0.45),
    Cylinder(center_xy=(-0.25, -0.85), radius=0.24, height=0.85),
    Sphere(center=(0.55, 0.75, 0.22), radius=0.22),
    Box(center=(-1.05, -0.25, 0.15), half_size=(0.15, 0.3, 0.15), yaw_deg=-15.0),
    Box(center=(0.1, 0.2, 0.1), half_size=(0.12, 0.12, 0.1), yaw_deg=45.0),
)


def _intersect_sphere(obj: Sphere, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest hit of rays ``o + t d`` (``[M, 3]``, ``d`` unit) with the outside of a sphere:
    ``(t [M] (inf if none), normal [M, 3])``."""
    oc = o - np.asarray(obj.center)
    b = np.einsum("ij,ij->i", oc, d)
    c = np.einsum("ij,ij->i", oc, oc) - obj.radius**2
    disc = b * b - c
    sq = np.sqrt(np.maximum(disc, 0.0))
    t = -b - sq
    t = np.where(t > EPS, t, -b + sq)  # origin inside (not used for cameras, kept for robustness)
    t = np.where((disc >= 0) & (t > EPS), t, np.inf)
    normal = (oc + np.where(np.isfinite(t), t, 0.0)[:, None] * d) / obj.radius
    return t, normal


def _intersect_box(obj: Box, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slab test in the box frame; returns ``(t [M], world normal [M, 3])``."""
    yaw = np.radians(obj.yaw_deg)
    rot = np.array([[np.cos(yaw), -np.sin(yaw), 0.0], [np.sin(yaw), np.cos(yaw), 0.0], [0.0, 0.0, 1.0]])  # box->world
    ol = (o - np.asarray(obj.center)) @ rot  # world->box: rotᵀ x, [M, 3]
    dl = d @ rot
    half = np.asarray(obj.half_size)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / dl
        t1 = (-half - ol) * inv
        t2 = (half - ol) * inv
    tn = np.minimum(t1, t2)
    tf = np.maximum(t1, t2)
    tn = np.where(np.isnan(tn), -np.inf, tn)
    tf = np.where(np.isnan(tf), np.inf, tf)
    t_near = tn.max(axis=1)
    t_far = tf.min(axis=1)
    axis = tn.argmax(axis=1)
    hit = (t_near <= t_far) & (t_near > EPS)
    t = np.where(hit, t_near, np.inf)
    n_local = np.zeros_like(o)
    rows = np.arange(o.shape[0])
    n_local[rows, axis] = -np.sign(dl[rows, axis])
    return t, n_local @ rot.T


def _intersect_cylinder(obj: Cylinder, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Side (z in [0, height]) and top cap; returns ``(t [M], normal [M, 3])``."""
    cx, cy = obj.center_xy
    ox, oy = o[:, 0] - cx, o[:, 1] - cy
    a = d[:, 0] ** 2 + d[:, 1] ** 2
    b = ox * d[:, 0] + oy * d[:, 1]
    c = ox**2 + oy**2 - obj.radius**2
    disc = b * b - a * c
    with np.errstate(divide="ignore", invalid="ignore"):
        t_side = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
    z_side = o[:, 2] + t_side * d[:, 2]
    side_ok = (disc >= 0) & (a > 1e-12) & (t_side > EPS) & (z_side >= 0.0) & (z_side <= obj.height)
    t_side = np.where(side_ok, t_side, np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_cap = (obj.height - o[:, 2]) / d[:, 2]
    px, py = ox + t_cap * d[:, 0], oy + t_cap * d[:, 1]
    cap_ok = (t_cap > EPS) & (px**2 + py**2 <= obj.radius**2) & (d[:, 2] < 0)
    t_cap = np.where(cap_ok, t_cap, np.inf)
    use_cap = t_cap < t_side
    t = np.minimum(t_side, t_cap)
    ts = np.where(np.isfinite(t_side), t_side, 0.0)
    n_side = np.stack([ox + ts * d[:, 0], oy + ts * d[:, 1], np.zeros_like(ts)], axis=1) / obj.radius
    n_cap = np.tile([0.0, 0.0, 1.0], (o.shape[0], 1))
    return t, np.where(use_cap[:, None], n_cap, n_side)


def _intersect(obj: Primitive, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(obj, Sphere):
        return _intersect_sphere(obj, o, d)
    if isinstance(obj, Box):
        return _intersect_box(obj, o, d)
    return _intersect_cylinder(obj, o, d)


def cast(
    o: np.ndarray, d: np.ndarray, backdrop_radius: float, objects_only: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """First hit of rays ``o + t d`` (``o, d [M, 3]``, ``d`` unit) with the scene.

    Returns:
        ``t [M]`` (inf where nothing is hit, only possible with ``objects_only``), unit normals
        ``[M, 3]`` facing the ray origin side for objects / ground, inward for the backdrop, and material
        ids ``[M]`` (``GROUND``, ``BACKDROP``, ``2 + object index``; -1 for no hit).
    """
    m = o.shape[0]
    t_best = np.full(m, np.inf)
    n_best = np.zeros((m, 3))
    mat = np.full(m, -1, dtype=np.int64)

    def take(t: np.ndarray, n: np.ndarray, mid: int) -> None:
        closer = t < t_best
        t_best[closer] = t[closer]
        n_best[closer] = n[closer]
        mat[closer] = mid

    if not objects_only:
        # Backdrop: inside of the sphere |x| = R (ray origins are inside it): the far root.
        b = np.einsum("ij,ij->i", o, d)
        c = np.einsum("ij,ij->i", o, o) - backdrop_radius**2
        t_bd = -b + np.sqrt(np.maximum(b * b - c, 0.0))
        take(t_bd, -(o + t_bd[:, None] * d) / backdrop_radius, BACKDROP)
        # Ground plane z = 0, seen from above.
        with np.errstate(divide="ignore", invalid="ignore"):
            t_gr = -o[:, 2] / d[:, 2]
        t_gr = np.where((d[:, 2] < 0) & (t_gr > EPS), t_gr, np.inf)
        take(t_gr, np.tile([0.0, 0.0, 1.0], (m, 1)), GROUND)
    for k, obj in enumerate(OBJECTS):
        t, n = _intersect(obj, o, d)
        take(t, n, 2 + k)
    return t_best, n_best, mat


def shade(
    pts: np.ndarray,
    normals: np.ndarray,
    mat: np.ndarray,
    materials: list[Material],
    noise: Noise,
    cfg: SceneConfig,
) -> np.ndarray:
    """Lambertian colour of surface points ``pts [M, 3]`` -> ``[M, 3]`` in [0, 1] (view independent)."""
    col = np.zeros_like(pts)
    for mid in np.unique(mat):
        sel = mat == mid
        col[sel] = albedo(materials[mid], noise, pts[sel])
    light = np.asarray(cfg.light_dir) / np.linalg.norm(cfg.light_dir)
    lambert = np.clip(normals @ light, 0.0, None)
    # Hard shadows from the objects (the ground and backdrop cannot occlude the light).
    lit = mat != BACKDROP
    if lit.any():
        origins = pts[lit] + 1e-4 * normals[lit]
        t_sh, _, _ = cast(origins, np.tile(light, (origins.shape[0], 1)), cfg.backdrop_radius, objects_only=True)
        lambert_lit = lambert[lit]
        lambert_lit[np.isfinite(t_sh)] = 0.0
        lambert[lit] = lambert_lit
    shading = cfg.ambient + (1.0 - cfg.ambient) * lambert
    shading = np.where(mat == BACKDROP, 0.9, shading)  # the backdrop is evenly lit
    return np.clip(col * shading[:, None], 0.0, 1.0)


# --------------------------------------------------------------------------------------------------
# Cameras
# --------------------------------------------------------------------------------------------------


def focal_length(cfg: SceneConfig) -> float:
    """``fx = fy`` in pixels from the horizontal field of view."""
    return 0.5 * cfg.width / np.tan(0.5 * np.radians(cfg.fov_deg))


def look_at(center: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Camera-to-world ``[4, 4]`` with OpenCV axes (x right, y down, z forward) at ``center`` looking at
    ``target``, with no roll about the world z (up) axis."""
    z = target - center
    z /= np.linalg.norm(z)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, center
    return c2w


def make_poses(cfg: SceneConfig, rng: np.random.Generator) -> np.ndarray:
    """Outside-in orbit poses, ``[N, 4, 4]`` camera-to-world, OpenCV axes.

    Views are split evenly over ``cfg.rings``; ring ``r`` starts at azimuth ``r · step / len(rings)``
    so rings interleave; azimuth, elevation, radius and target are jittered uniformly."""
    n_rings = len(cfg.rings)
    counts = [cfg.num_views // n_rings + (1 if r < cfg.num_views % n_rings else 0) for r in range(n_rings)]
    ja, je, jr, jt = cfg.jitter
    poses = []
    for r, ((elev, radius), count) in enumerate(zip(cfg.rings, counts)):
        step = 360.0 / count
        for k in range(count):
            az = np.radians(k * step + r * step / n_rings + rng.uniform(-ja, ja))
            el = np.radians(elev + rng.uniform(-je, je))
            rad = radius * (1.0 + rng.uniform(-jr, jr))
            target = np.asarray(cfg.target) + rng.uniform(-jt, jt, 3) * np.array([1.0, 1.0, 0.5])
            center = target + rad * np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
            poses.append(look_at(center, target))
    return np.stack(poses)


def pixel_rays(c2w: np.ndarray, cfg: SceneConfig, fx: float, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rays through ``(j + ox, i + oy)`` for every pixel and every sub-pixel offset ``(ox, oy)`` in
    ``offsets [S, 2]``: origins and unit directions ``[H·W·S, 3]`` (pixel-major, then offsets)."""
    cx, cy = cfg.width / 2.0, cfg.height / 2.0
    ii, jj = np.meshgrid(np.arange(cfg.height), np.arange(cfg.width), indexing="ij")
    u = (jj.reshape(-1, 1) + offsets[None, :, 0]).reshape(-1)
    v = (ii.reshape(-1, 1) + offsets[None, :, 1]).reshape(-1)
    dirs_cam = np.stack([(u - cx) / fx, (v - cy) / fx, np.ones_like(u)], axis=1)  # OpenCV camera frame
    dirs = dirs_cam @ c2w[:3, :3].T
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    return np.broadcast_to(c2w[:3, 3], dirs.shape).copy(), dirs


def project(c2w: np.ndarray, fx: float, cfg: SceneConfig, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project world points ``[P, 3]`` into camera ``c2w`` (OpenCV axes): ``(uv [P, 2], depth [P])``."""
    cam = (pts - c2w[:3, 3]) @ c2w[:3, :3]  # world->camera: Rᵀ (X - C), [P, 3]
    z = cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = np.stack([fx * cam[:, 0] / z + cfg.width / 2.0, fx * cam[:, 1] / z + cfg.height / 2.0], axis=1)
    return uv, z


# --------------------------------------------------------------------------------------------------
# Scene generation
# --------------------------------------------------------------------------------------------------


@dataclass
class Scene:
    """A rendered scene in memory.

    Attributes:
        c2w: ``[N, 4, 4]`` camera-to-world, OpenCV axes.
        images: ``[N, H, W, 3]`` uint8.
        points: ``[P, 3]`` world points; colors ``[P, 3]`` uint8.
        tracks: per point, a list of ``(image index, u, v)``.
    """

    cfg: SceneConfig
    fx: float
    c2w: np.ndarray
    images: np.ndarray
    points: np.ndarray
    colors: np.ndarray
    tracks: list[list[tuple[int, float, float]]] = field(default_factory=list)


def render_view(c2w: np.ndarray, cfg: SceneConfig, fx: float, materials: list[Material], noise: Noise) -> np.ndarray:
    """Anti-aliased image ``[H, W, 3]`` float in [0, 1]."""
    s = cfg.supersample
    grid = (np.arange(s) + 0.5) / s
    offsets = np.stack(np.meshgrid(grid, grid, indexing="xy"), axis=-1).reshape(-1, 2)  # [S, 2]
    o, d = pixel_rays(c2w, cfg, fx, offsets)
    t, n, mat = cast(o, d, cfg.backdrop_radius)
    col = shade(o + t[:, None] * d, n, mat, materials, noise, cfg)
    return col.reshape(cfg.height, cfg.width, s * s, 3).mean(axis=2)


def sample_points(
    c2w: np.ndarray, cfg: SceneConfig, fx: float, rng: np.random.Generator
) -> tuple[np.ndarray, list[list[tuple[int, float, float]]]]:
    """3D points on visible surfaces with their tracks.

    For each view, ``points_per_view`` random pixel centres are back-projected onto the first surface
    hit. A point is observed by camera ``k`` if it projects inside the image with positive depth and
    the ray from camera ``k``'s centre towards it hits no surface before it (an exact z-buffer test:
    first-hit distance within 1e-6 relative of the point's distance). Points seen by fewer than
    ``min_track_length`` images are dropped.

    Returns:
        ``points [P, 3]`` and per point its track ``[(image index, u, v), ...]`` (``u, v`` exact
        projections, COLMAP pixel convention).
    """
    candidates = []
    for k in range(c2w.shape[0]):
        flat = rng.choice(cfg.width * cfg.height, size=cfg.points_per_view, replace=False)
        off = np.stack([(flat % cfg.width) + 0.5, (flat // cfg.width) + 0.5], axis=1)
        cx, cy = cfg.width / 2.0, cfg.height / 2.0
        dirs = np.stack([(off[:, 0] - cx) / fx, (off[:, 1] - cy) / fx, np.ones(len(flat))], axis=1) @ c2w[k, :3, :3].T
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        o = np.broadcast_to(c2w[k, :3, 3], dirs.shape)
        t, _, _ = cast(o, dirs, cfg.backdrop_radius)
        candidates.append(o + t[:, None] * dirs)
    pts = np.concatenate(candidates)  # [P0, 3]
    tracks: list[list[tuple[int, float, float]]] = [[] for _ in range(pts.shape[0])]
    for k in range(c2w.shape[0]):
        uv, z = project(c2w[k], fx, cfg, pts)
        inside = (z > EPS) & (uv[:, 0] >= 0) & (uv[:, 0] < cfg.width) & (uv[:, 1] >= 0) & (uv[:, 1] < cfg.height)
        idx = np.nonzero(inside)[0]
        if idx.size == 0:
            continue
        vec = pts[idx] - c2w[k, :3, 3]
        dist = np.linalg.norm(vec, axis=1)
        t, _, _ = cast(np.broadcast_to(c2w[k, :3, 3], vec.shape), vec / dist[:, None], cfg.backdrop_radius)
        visible = np.abs(t - dist) <= 1e-6 * dist
        for p in idx[visible]:
            tracks[p].append((k, float(uv[p, 0]), float(uv[p, 1])))
    keep = [p for p in range(pts.shape[0]) if len(tracks[p]) >= cfg.min_track_length]
    return pts[keep], [tracks[p] for p in keep]


def point_colors(
    points: np.ndarray,
    tracks: list,
    c2w: np.ndarray,
    cfg: SceneConfig,
    materials: list[Material],
    noise: Noise,
) -> np.ndarray:
    """``[P, 3]`` uint8 colours of the sparse points: the shaded surface colour at each point, with the
    normal from a ray cast by its first observer (``tracks[p][0][0]``, a camera index into ``c2w``)."""
    colors = np.zeros((points.shape[0], 3), dtype=np.uint8)
    if points.shape[0]:
        first = np.array([tr[0][0] for tr in tracks])
        origins = c2w[first, :3, 3]
        dirs = points - origins
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        t, n, mat = cast(origins, dirs, cfg.backdrop_radius)
        colors = np.round(shade(origins + t[:, None] * dirs, n, mat, materials, noise, cfg) * 255).astype(np.uint8)
    return colors


def generate(cfg: SceneConfig, log: bool = True) -> Scene:
    """Render the whole scene (deterministic from ``cfg.seed``)."""
    rng = np.random.default_rng(cfg.seed)
    noise = Noise.from_rng(rng)
    materials = make_materials(rng, len(OBJECTS))
    c2w = make_poses(cfg, rng)
    fx = focal_length(cfg)
    start = time.perf_counter()
    images = np.zeros((cfg.num_views, cfg.height, cfg.width, 3), dtype=np.uint8)
    for k in range(cfg.num_views):
        img = render_view(c2w[k], cfg, fx, materials, noise)
        images[k] = np.round(img * 255.0).astype(np.uint8)
        if log:
            print(f"\rrendered {k + 1}/{cfg.num_views} views ({time.perf_counter() - start:.1f} s)", end="", flush=True)
    if log:
        print()
    points, tracks = sample_points(c2w, cfg, fx, rng)
    colors = point_colors(points, tracks, c2w, cfg, materials, noise)
    return Scene(cfg=cfg, fx=fx, c2w=c2w, images=images, points=points, colors=colors, tracks=tracks)


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def image_name(k: int) -> str:
    return f"{k:03d}.png"


def transforms_dict(scene: Scene) -> dict:
    """nerfstudio ``transforms.json`` content: shared PINHOLE intrinsics, the exact poses written by the
    package's one transforms.json writer (camera-to-world, OpenGL axes; an identity ``applied_transform``:
    the world frame is the COLMAP model's, nerfstudio must not re-orient it)."""
    from nerf_posefix.io.transforms_json import transforms_meta

    cfg = scene.cfg
    num = scene.c2w.shape[0]
    return transforms_meta(
        [f"images/{image_name(k)}" for k in range(num)],
        scene.c2w,
        intrinsics={"camera_model": "PINHOLE", "fl_x": scene.fx, "fl_y": scene.fx, "cx": cfg.width / 2.0,
                    "cy": cfg.height / 2.0, "w": cfg.width, "h": cfg.height},
        frame_extra=[{"colmap_im_id": k + 1} for k in range(num)],
        ply_file_path="sparse_pc.ply",
    )


def write_colmap(scene: Scene, directory: Path) -> None:
    """COLMAP model (binary) with one PINHOLE camera, exact poses and the point tracks."""
    from nerfstudio.data.utils import colmap_parsing_utils as cpu

    from nerf_posefix.io.colmap import ColmapModel, write_colmap_model
    from nerf_posefix.geometry.poses import c2w_to_colmap

    cfg = scene.cfg
    cameras = {
        1: cpu.Camera(
            id=1,
            model="PINHOLE",
            width=cfg.width,
            height=cfg.height,
            params=np.array([scene.fx, scene.fx, cfg.width / 2.0, cfg.height / 2.0]),
        )
    }
    qvec, tvec = c2w_to_colmap(scene.c2w)
    xys: list[list[tuple[float, float]]] = [[] for _ in range(scene.c2w.shape[0])]
    pids: list[list[int]] = [[] for _ in range(scene.c2w.shape[0])]
    points3d = {}
    for p, track in enumerate(scene.tracks):
        image_ids, point2d_idxs = [], []
        for k, u, v in track:
            image_ids.append(k + 1)
            point2d_idxs.append(len(xys[k]))
            xys[k].append((u, v))
            pids[k].append(p + 1)
        points3d[p + 1] = cpu.Point3D(
            id=p + 1,
            xyz=scene.points[p].copy(),
            rgb=scene.colors[p].astype(np.int64),
            error=0.0,
            image_ids=np.array(image_ids, dtype=np.int64),
            point2D_idxs=np.array(point2d_idxs, dtype=np.int64),
        )
    images = {
        k + 1: cpu.Image(
            id=k + 1,
            qvec=qvec[k],
            tvec=tvec[k],
            camera_id=1,
            name=image_name(k),
            xys=np.array(xys[k], dtype=np.float64).reshape(-1, 2),
            point3D_ids=np.array(pids[k], dtype=np.int64),
        )
        for k in range(scene.c2w.shape[0])
    }
    write_colmap_model(ColmapModel(cameras=cameras, images=images, points3D=points3d), directory, formats=("bin",))


def write_ply(scene: Scene, path: Path) -> None:
    """The 3D points as a coloured point cloud (open3d)."""
    import open3d as o3d

    pcd = o3d.geometry.PointCloud()
    pcd.points = o3d.utility.Vector3dVector(scene.points.astype(np.float64))
    pcd.colors = o3d.utility.Vector3dVector(scene.colors.astype(np.float64) / 255.0)
    if not o3d.io.write_point_cloud(str(path), pcd):
        raise OSError(f"open3d could not write {path}")


def write_scene(scene: Scene, output: Path, overwrite: bool = False) -> Path:
    """Write every file of the scene into ``output`` (through a temporary sibling, then a rename)."""
    import imageio.v3 as iio

    output = Path(output)
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} exists (pass --overwrite to replace it)")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    tmp.chmod(0o755)  # mkdtemp creates 0700
    try:
        (tmp / "images").mkdir()
        for k in range(scene.images.shape[0]):
            iio.imwrite(tmp / "images" / image_name(k), scene.images[k])
        from nerf_posefix.io.transforms_json import write_transforms_json

        meta = transforms_dict(scene)
        for name in ("transforms.json", "transforms_gt.json"):
            write_transforms_json(meta, tmp / name)
        write_colmap(scene, tmp / "sparse" / "0")
        write_ply(scene, tmp / "sparse_pc.ply")
        centres = scene.c2w[:, :3, 3]
        track_lengths = [len(t) for t in scene.tracks]
        info = {
            "generator": "benchmarks/make_scene.py",
            "config": asdict(scene.cfg),
            "focal_px": scene.fx,
            "num_points": int(scene.points.shape[0]),
            "num_observations": int(sum(track_lengths)),
            "mean_track_length": float(np.mean(track_lengths)) if track_lengths else 0.0,
            "camera_centroid": centres.mean(axis=0).tolist(),
            "scene_radius": float(np.linalg.norm(centres - centres.mean(axis=0), axis=1).max()),
            "conventions": "world z up, metres; transforms.json c2w OpenGL axes; COLMAP w2c OpenCV axes",
        }
        (tmp / "scene.json").write_text(json.dumps(info, indent=2))
        if output.exists():
            shutil.rmtree(output)
        tmp.rename(output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, required=True, help="scene directory to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="16 views of 64x64 (fast tests)")
    parser.add_argument("--views", type=int, default=None, help="number of views (default 64, tiny 16)")
    parser.add_argument("--size", type=int, default=None, help="image width = height (default 128, tiny 64)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    args = parser.parse_args(argv)
    cfg = tiny_config(args.seed) if args.tiny else SceneConfig(seed=args.seed)
    updates = {}
    if args.views is not None:
        updates["num_views"] = args.views
    if args.size is not None:
        updates["width"] = updates["height"] = args.size
    if updates:
        cfg = SceneConfig(**{**asdict(cfg), **updates})
    start = time.perf_counter()
    scene = generate(cfg)
    try:
        out = write_scene(scene, args.output, overwrite=args.overwrite)
    except FileExistsError as err:
        print(f"make_scene: error: {err}", file=sys.stderr)
        return 2
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(
        f"wrote {out}: {cfg.num_views} views {cfg.width}x{cfg.height}, {scene.points.shape[0]} points, "
        f"{size / 1e6:.2f} MB, {time.perf_counter() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
