#!/usr/bin/env python
r"""Synthetic COLMAP models of any size (tracks only, no rendering): a drone survey over relief.

What the scaling benchmark (:mod:`benchmarks.scaling`) adjusts: a COLMAP model as the mapper would hand it
over (cameras, poses, points, 2D observations), with known truth, made in seconds for 100 to 5000 images.

Layout
------
* World: right-handed, z up, units of the flight height ``H = 1``. The ground is ``z = relief · f(x, y)``
  (a few smooth sine waves, amplitude ``relief``), points sampled uniformly on it.
* Cameras: pinhole ``width x height`` (default 640x480, ``f = 500`` px, principal point at the centre), nadir
  looking, flown as a lawn-mower grid (rows along x, alternate rows flown back), each camera jittered in
  position (10 % of the spacing), height (±5 %), heading (±5°) and tilt (±3°). The spacing gives each ground
  point ``forward_overlap x side_overlap`` (3 x 2) cameras on average: mean track length ~6, ~400
  observations per image, ~65 points per image (the 1000-image model: ~65k points, ~400k observations).
  Images are named in flight order (``00000.png`` ...).
* Observations: the true projections plus Gaussian noise of ``noise_px`` per axis (0.5 px); a fraction
  ``outlier_fraction`` (2 %) of them is moved by 3-10 px in a random direction (wrong matches merged into
  tracks).
* The model handed over, ``handover`` (``--handover``):

  - ``"perturbed"`` (default, "noisy"): every pose rotated by ``rotation_deg`` (0.2°, ~1.7 px at the image
    edge) about a random axis and its centre moved by ``translation`` (0.005 H: 0.5 % of the viewing
    distance, ~2.5 px) in a random direction, independently, the same in pixels for every size; the points
    **triangulated from the perturbed poses** and the noisy observations (midpoint least squares). Not a
    minimum of any adjustment: its errors are independent per image (mean reprojection error ~2 px).
  - ``"adjusted"``: what a mapper hands over. COLMAP's mapper ends with a **squared-loss** bundle adjustment
    of its own tracks, so the perturbed model is bundle adjusted by pycolmap's own adjuster (the one
    ``pycolmap.bundle_adjustment`` runs: all poses and points free, intrinsics fixed, trivial loss, gauge
    fixed on two cameras (``TWO_CAMS_FROM_WORLD``: the first image's pose and one translation component of
    the second held at their perturbed values; checked: the first pose comes out unchanged), Ceres' default
    tolerances, up to 200 iterations: 41 at 1000 images, ended by Ceres' convergence test, ~26 s on 2 cores)
    and the result handed over as it stands (in the solver's frame). Measured at 1000 images: median rotation
    error 0.200° -> 0.102°, mean reprojection error (per observation) 2.19 -> 0.68 px (3000 images: 39
    iterations, 0.200° -> 0.096°). All observations are kept, outliers included: the squared loss lets them
    pull the poses, which is what the robust adjustment is for. (COLMAP's mapper
    also drops observations above 4 px and re-adjusts; not modelled here.)

  ``synthetic.json`` records the handover and, under ``handover_record``, the handed-over model's pose
  error against the truth (after a Sim(3), as :func:`benchmarks.scaling.pose_errors`), its reprojection
  errors (pixels, per observation, outliers included; ``reprojection_inlier_mean_px`` without them) and,
  for ``"adjusted"``, the solver's run (the perturbed model's figures beside them).

Conventions: camera-to-world poses with OpenCV axes inside; the model files are COLMAP's (world-to-camera
``qvec`` wxyz / ``tvec``, binary, classic three-file layout: pycolmap 4 reads it with trivial rigs/frames).

Output (``--output DIR``)::

    DIR/sparse/0/{cameras,images,points3D}.bin   # the handed-over model with its tracks
    DIR/truth/sparse/0/...                       # the true poses (no points): posefix compare --reference
    DIR/truth.npz                                # names, true c2w, true points
    DIR/images/00000.png ...                     # flat grey PNGs of the cameras' size (refine checks images)
    DIR/synthetic.json                           # config, counts, handover and its errors

Usage::

    python -m benchmarks.synthetic_model --images 1000 --output /tmp/synth1000
    python -m benchmarks.synthetic_model --images 1000 --output /tmp/synth1000-adj --handover adjusted
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import time
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

#: What the model handed over is (module docstring).
HANDOVERS = ("perturbed", "adjusted")
#: Iteration cap of the squared-loss adjustment of the ``"adjusted"`` handover (Ceres' own convergence test
#: stops it well before: 11 iterations at 100 images, 41 at 1000).
HANDOVER_MAX_ITERATIONS = 200


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of a synthetic survey (lengths in flight heights, angles in degrees)."""

    num_images: int = 1000
    width: int = 640
    height: int = 480
    focal_px: float = 500.0
    forward_overlap: float = 3.0
    side_overlap: float = 2.0
    observations_per_image: float = 400.0
    relief: float = 0.15
    noise_px: float = 0.5
    outlier_fraction: float = 0.02
    outlier_px: tuple[float, float] = (3.0, 10.0)
    rotation_deg: float = 0.2
    translation: float = 0.005
    seed: int = 0


@dataclass
class SyntheticModel:
    """A generated survey: truth and the model handed over.

    Attributes:
        names: ``[N]`` image names (flight order).
        c2w_true, c2w: ``[N, 4, 4]`` true / handed-over camera-to-world poses (OpenCV axes).
        points_true, points: ``[P, 3]`` true points / handed-over points (triangulated from the perturbed
            poses; after the squared-loss adjustment for ``handover="adjusted"``).
        image_index, point_index: ``[M]`` the observations (image row, point row), sorted by image then point.
        xy: ``[M, 2]`` observed pixels (COLMAP convention, noise and outliers included).
        outlier: ``[M]`` bool, the observations moved by 3-10 px.
        handover: ``"perturbed"`` or ``"adjusted"`` (module docstring).
        handover_record: how the handed-over model came about and its errors (:func:`handover_record`).
    """

    config: SyntheticConfig
    names: list[str]
    c2w_true: np.ndarray
    c2w: np.ndarray
    points_true: np.ndarray
    points: np.ndarray
    image_index: np.ndarray
    point_index: np.ndarray
    xy: np.ndarray
    outlier: np.ndarray
    handover: str = "perturbed"
    handover_record: dict[str, Any] = field(default_factory=dict)

    def counts(self) -> dict[str, float]:
        return {
            "num_images": len(self.names),
            "num_points3D": int(self.points.shape[0]),
            "num_observations": int(self.xy.shape[0]),
            "mean_track_length": float(self.xy.shape[0] / max(1, self.points.shape[0])),
            "observations_per_image": float(self.xy.shape[0] / max(1, len(self.names))),
            "scene_radius": float(np.linalg.norm(self.c2w_true[:, :3, 3] - self.c2w_true[:, :3, 3].mean(0), axis=1).max()),
        }


def terrain(xy: np.ndarray, relief: float) -> np.ndarray:
    """Ground height at ``xy [M, 2]``: a few smooth waves, amplitude ``relief``."""
    x, y = xy[:, 0], xy[:, 1]
    z = 0.5 * np.sin(0.9 * x + 0.3) * np.cos(0.7 * y) + 0.3 * np.sin(2.3 * x - 1.7 * y + 1.0) + 0.2 * np.cos(4.1 * y + 0.5 * x)
    return relief * z


def _grid_poses(cfg: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    """Lawn-mower grid of nadir cameras, ``[N, 4, 4]`` camera-to-world, OpenCV axes."""
    fw, fh = cfg.width / cfg.focal_px, cfg.height / cfg.focal_px  # footprint at height 1
    sx, sy = fw / cfg.forward_overlap, fh / cfg.side_overlap
    rows = max(1, int(round(np.sqrt(cfg.num_images * sx / sy))))
    cols = int(np.ceil(cfg.num_images / rows))
    poses = []
    for k in range(cfg.num_images):
        r, c = divmod(k, cols)
        back = r % 2 == 1
        col = cols - 1 - c if back else c
        centre = np.array([col * sx, r * sy, 1.0])
        centre[:2] += rng.uniform(-0.1, 0.1, 2) * np.array([sx, sy])
        centre[2] *= 1.0 + rng.uniform(-0.05, 0.05)
        heading = (180.0 if back else 0.0) + rng.uniform(-5.0, 5.0)
        # nadir: camera z = -world z, camera x = flight direction, y = z x x
        base = np.array([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]]).T  # columns: x, y, z axes
        yaw = Rotation.from_euler("z", heading, degrees=True).as_matrix()
        axis = rng.uniform(0.0, 2.0 * np.pi)
        tilt = Rotation.from_rotvec(np.deg2rad(rng.uniform(-3.0, 3.0)) * np.array([np.cos(axis), np.sin(axis), 0.0])).as_matrix()
        c2w = np.eye(4)
        c2w[:3, :3] = tilt @ yaw @ base
        c2w[:3, 3] = centre
        poses.append(c2w)
    return np.stack(poses)


def _project(c2w: np.ndarray, cfg: SyntheticConfig, pts: np.ndarray, cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixels ``[M, 2]`` and depths ``[M]`` of ``pts [M, 3]`` in cameras ``cam [M]`` (indices into c2w)."""
    rot = c2w[cam, :3, :3]  # [M, 3, 3] c2w rotation
    local = np.einsum("mji,mj->mi", rot, pts - c2w[cam, :3, 3])  # R^T (X - C)
    z = local[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = cfg.focal_px * local[:, 0] / z + cfg.width / 2.0
        v = cfg.focal_px * local[:, 1] / z + cfg.height / 2.0
    return np.stack([u, v], axis=1), z


def _random_rotations(n: int, angle_deg: float, rng: np.random.Generator) -> np.ndarray:
    axes = rng.normal(size=(n, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    return Rotation.from_rotvec(axes * np.deg2rad(angle_deg)).as_matrix()


def triangulate_midpoint(c2w: np.ndarray, cfg: SyntheticConfig, image_index: np.ndarray, point_index: np.ndarray,
                         xy: np.ndarray, num_points: int) -> np.ndarray:
    """Least-squares point closest to all of its observation rays: ``Σ (I - d dᵀ)(X - C) = 0``; ``[P, 3]``."""
    d_cam = np.stack([(xy[:, 0] - cfg.width / 2.0) / cfg.focal_px, (xy[:, 1] - cfg.height / 2.0) / cfg.focal_px,
                      np.ones(len(xy))], axis=1)
    d = np.einsum("mij,mj->mi", c2w[image_index, :3, :3], d_cam)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    proj = np.eye(3)[None] - d[:, :, None] * d[:, None, :]  # [M, 3, 3]
    a = np.zeros((num_points, 3, 3))
    b = np.zeros((num_points, 3))
    np.add.at(a, point_index, proj)
    np.add.at(b, point_index, np.einsum("mij,mj->mi", proj, c2w[image_index, :3, 3]))
    return np.linalg.solve(a, b[:, :, None])[:, :, 0]


def generate(cfg: SyntheticConfig) -> SyntheticModel:
    """A survey (deterministic from ``cfg.seed``)."""
    rng = np.random.default_rng(cfg.seed)
    c2w_true = _grid_poses(cfg, rng)
    n = cfg.num_images
    fw, fh = cfg.width / cfg.focal_px, cfg.height / cfg.focal_px
    centres = c2w_true[:, :3, 3]
    lo, hi = centres[:, :2].min(0) - 0.6 * fw, centres[:, :2].max(0) + 0.6 * fw
    density = cfg.observations_per_image / (fw * fh)
    num_candidates = int(density * np.prod(hi - lo))
    xy = rng.uniform(lo, hi, size=(num_candidates, 2))
    pts = np.concatenate([xy, terrain(xy, cfg.relief)[:, None]], axis=1)
    # visibility: points within the footprint's circumcircle of each camera, then projected
    tree = cKDTree(xy)
    radius = 0.5 * np.hypot(fw, fh) * 1.35
    lists = tree.query_ball_point(centres[:, :2], radius)
    cam = np.concatenate([np.full(len(lst), i, dtype=np.int64) for i, lst in enumerate(lists)])
    pid = np.concatenate([np.asarray(lst, dtype=np.int64) for lst in lists])
    uv, z = _project(c2w_true, cfg, pts[pid], cam)
    inside = (z > 0.05) & (uv[:, 0] >= 0.5) & (uv[:, 0] <= cfg.width - 0.5) & (uv[:, 1] >= 0.5) & (uv[:, 1] <= cfg.height - 0.5)
    cam, pid, uv = cam[inside], pid[inside], uv[inside]
    track_len = np.bincount(pid, minlength=num_candidates)
    keep_point = track_len >= 2
    new_id = np.cumsum(keep_point) - 1
    sel = keep_point[pid]
    cam, pid, uv = cam[sel], new_id[pid[sel]], uv[sel]
    points_true = pts[keep_point]
    order = np.lexsort((pid, cam))
    cam, pid, uv = cam[order], pid[order], uv[order]
    # observation noise and outliers
    obs = uv + rng.normal(scale=cfg.noise_px, size=uv.shape)
    outlier = rng.random(len(obs)) < cfg.outlier_fraction
    angle = rng.uniform(0, 2 * np.pi, outlier.sum())
    mag = rng.uniform(*cfg.outlier_px, outlier.sum())
    obs[outlier] += mag[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    obs = np.clip(obs, 0.0, [cfg.width, cfg.height])
    # the poses handed over, and points triangulated from them
    c2w = c2w_true.copy()
    c2w[:, :3, :3] = _random_rotations(n, cfg.rotation_deg, rng) @ c2w_true[:, :3, :3]
    shift = rng.normal(size=(n, 3))
    c2w[:, :3, 3] += cfg.translation * shift / np.linalg.norm(shift, axis=1, keepdims=True)
    points = triangulate_midpoint(c2w, cfg, cam, pid, obs, points_true.shape[0])
    names = [f"{k:05d}.png" for k in range(n)]
    return SyntheticModel(cfg, names, c2w_true, c2w, points_true, points, cam, pid, obs, outlier)


# ---------------------------------------------------------------------------------------------
# the handed-over model's errors, and the "adjusted" handover


def pose_error(c2w: np.ndarray, c2w_true: np.ndarray) -> dict[str, float]:
    """Errors of camera-to-world poses ``c2w [N, 4, 4]`` against ``c2w_true`` (same rows), after the Sim(3) of the
    estimated centres onto the true ones, as :func:`benchmarks.scaling.pose_errors` measures them: median / max
    rotation (degrees), median centre error (flight heights, and % of the true scene radius)."""
    from nerf_posefix.geometry.alignment import align
    from nerf_posefix.geometry.poses import rotation_angle_deg, scene_radius

    aligned = align(c2w, c2w_true, mode="sim3").apply(c2w)
    rot = rotation_angle_deg(c2w_true[:, :3, :3], aligned[:, :3, :3])
    centre = np.linalg.norm(aligned[:, :3, 3] - c2w_true[:, :3, 3], axis=-1)
    return {"rotation_median_deg": float(np.median(rot)), "rotation_max_deg": float(rot.max()),
            "centre_median": float(np.median(centre)),
            "centre_median_pct": float(100.0 * np.median(centre) / scene_radius(c2w_true[:, :3, 3]))}


def reprojection_errors(model: SyntheticModel, c2w: np.ndarray | None = None, points: np.ndarray | None = None) -> np.ndarray:
    """``[M]`` pixel distances between the observations and the projections of ``points`` in ``c2w``
    (default: the model's handed-over ones), outliers included."""
    c2w = model.c2w if c2w is None else c2w
    points = model.points if points is None else points
    uv, _ = _project(c2w, model.config, points[model.point_index], model.image_index)
    return np.linalg.norm(uv - model.xy, axis=1)


def _error_record(model: SyntheticModel, c2w: np.ndarray, points: np.ndarray) -> dict[str, Any]:
    err = reprojection_errors(model, c2w, points)
    return {**pose_error(c2w, model.c2w_true), "reprojection_mean_px": float(err.mean()),
            "reprojection_median_px": float(np.median(err)), "reprojection_inlier_mean_px": float(err[~model.outlier].mean())}


def adjust_handover(model: SyntheticModel, max_iterations: int = HANDOVER_MAX_ITERATIONS) -> SyntheticModel:
    """The ``"adjusted"`` handover of a ``"perturbed"`` model: its squared-loss bundle adjustment by pycolmap.

    pycolmap's own adjuster (``create_default_bundle_adjuster``, as ``pycolmap.bundle_adjustment`` sets it up:
    every registered image, gauge ``TWO_CAMS_FROM_WORLD``; the two give the same poses to 1e-7 at 100 images)
    with the trivial (squared) loss, poses and points free, intrinsics fixed, Ceres' default tolerances and
    up to ``max_iterations`` iterations; the linear solver is pycolmap's automatic choice except that sparse
    Schur is kept beyond 1000 images (iterative Schur there is several times slower per iteration; the
    handover's solve is not timed by the benchmark, only its result matters). The result stays in the
    solver's frame (the first image's perturbed pose held fixed). Returns a copy with ``c2w``, ``points``,
    ``handover="adjusted"`` and ``handover_record`` set.
    """
    import pycolmap

    from nerf_posefix.sfm.bundle_adjustment import reconstruction_c2w

    if model.handover != "perturbed":
        raise ValueError(f"adjust_handover: the model is already {model.handover!r}")
    with tempfile.TemporaryDirectory(prefix="synthetic-handover-") as tmp:
        write_colmap_binary(Path(tmp), model.config, model.names, model.c2w, model.points, model.image_index,
                            model.point_index, model.xy)
        rec = pycolmap.Reconstruction(tmp)
    opts = pycolmap.BundleAdjustmentOptions()
    opts.refine_focal_length = opts.refine_principal_point = opts.refine_extra_params = False
    opts.refine_sensor_from_rig = False
    opts.print_summary = False
    opts.ceres.loss_function_type = pycolmap.LossFunctionType.TRIVIAL
    opts.ceres.solver_options.max_num_iterations = int(max_iterations)
    opts.ceres.max_num_images_direct_sparse_cpu_solver = max(opts.ceres.max_num_images_direct_sparse_cpu_solver,
                                                             len(model.names))
    summary, seconds = pycolmap_adjust(rec, opts)
    names, c2w = reconstruction_c2w(rec)  # sorted by name: the zero-padded names are in flight order
    if names != model.names or rec.num_points3D() != model.points.shape[0]:
        raise RuntimeError("adjust_handover: the adjusted model lost images or points")
    points = np.empty_like(model.points)
    for point_id, point in rec.points3D.items():
        points[point_id - 1] = point.xyz  # written with id = row + 1
    solver = {"loss": "trivial", "gauge": "TWO_CAMS_FROM_WORLD",
              "iterations": int(summary.num_successful_steps + summary.num_unsuccessful_steps - 1),
              "termination": str(summary.termination_type).split(".")[-1],
              "linear_solver": str(summary.linear_solver_type_used).split(".")[-1],
              "initial_cost": float(summary.initial_cost), "final_cost": float(summary.final_cost), "seconds": seconds}
    record = {"handover": "adjusted", "solver": solver, "handed_over": _error_record(model, c2w, points),
              "perturbed": _error_record(model, model.c2w, model.points)}
    return replace(model, c2w=c2w, points=points, handover="adjusted", handover_record=record)


def pycolmap_adjust(rec: Any, opts: Any) -> tuple[Any, float]:
    """What ``pycolmap.bundle_adjustment(rec, opts)`` runs (every registered image, two cameras fixing the gauge),
    spelled out to get Ceres' summary back (the same poses to 1e-7 on the 100-image survey); ``rec`` adjusted in
    place. Returns Ceres' summary and the solve's wall time (s)."""
    import pycolmap

    from nerf_posefix.sfm.bundle_adjustment import quiet_colmap_log

    config = pycolmap.BundleAdjustmentConfig()
    for image_id in rec.reg_image_ids():
        config.add_image(image_id)
    config.fix_gauge(pycolmap.BundleAdjustmentGauge.TWO_CAMS_FROM_WORLD)
    t0 = time.perf_counter()
    with quiet_colmap_log(False):
        summary = pycolmap.create_default_bundle_adjuster(opts, config, rec).solve().ceres_summary
    return summary, time.perf_counter() - t0


def handover_record(model: SyntheticModel) -> dict[str, Any]:
    """The model's handover and its errors (``handed_over``; for ``"adjusted"`` also ``perturbed`` and ``solver``)."""
    if model.handover_record:
        return model.handover_record
    return {"handover": model.handover, "handed_over": _error_record(model, model.c2w, model.points)}


def generate_handover(cfg: SyntheticConfig, handover: str = "perturbed") -> SyntheticModel:
    """:func:`generate`, then (``handover="adjusted"``) :func:`adjust_handover`."""
    if handover not in HANDOVERS:
        raise ValueError(f"handover must be one of {HANDOVERS}, got {handover!r}")
    model = generate(cfg)
    return adjust_handover(model) if handover == "adjusted" else model


# ---------------------------------------------------------------------------------------------
# writing (COLMAP binary, numpy: seconds for millions of observations)


def _w2c_colmap(c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``qvec [N, 4]`` (wxyz) and ``tvec [N, 3]`` of world-to-camera poses."""
    rot_w2c = np.transpose(c2w[:, :3, :3], (0, 2, 1))
    tvec = -np.einsum("nij,nj->ni", rot_w2c, c2w[:, :3, 3])
    xyzw = Rotation.from_matrix(rot_w2c).as_quat()
    return np.concatenate([xyzw[:, 3:], xyzw[:, :3]], axis=1), tvec


def write_colmap_binary(directory: Path, cfg: SyntheticConfig, names: list[str], c2w: np.ndarray,
                        points: np.ndarray | None = None, image_index: np.ndarray | None = None,
                        point_index: np.ndarray | None = None, xy: np.ndarray | None = None) -> Path:
    """Write a PINHOLE model (one camera) with these poses and, when given, points and observations
    (sorted by image). Point and image ids are ``row + 1``."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "cameras.bin", "wb") as f:
        f.write(struct.pack("<Q", 1))
        f.write(struct.pack("<iiQQ", 1, 1, cfg.width, cfg.height))  # PINHOLE = model id 1
        f.write(np.array([cfg.focal_px, cfg.focal_px, cfg.width / 2.0, cfg.height / 2.0], "<f8").tobytes())
    qvec, tvec = _w2c_colmap(c2w)
    n = len(names)
    has_points = points is not None
    if has_points:
        assert image_index is not None and point_index is not None and xy is not None
        bounds = np.searchsorted(image_index, np.arange(n + 1))
        # index of each observation within its image
        obs_in_image = np.arange(len(image_index)) - bounds[image_index]
    rec2d = np.dtype([("x", "<f8"), ("y", "<f8"), ("id", "<i8")])
    with open(directory / "images.bin", "wb") as f:
        f.write(struct.pack("<Q", n))
        for i, name in enumerate(names):
            f.write(struct.pack("<i", i + 1))
            f.write(np.asarray(qvec[i], "<f8").tobytes() + np.asarray(tvec[i], "<f8").tobytes())
            f.write(struct.pack("<i", 1) + name.encode() + b"\0")
            if has_points:
                a, b = bounds[i], bounds[i + 1]
                arr = np.empty(b - a, rec2d)
                arr["x"], arr["y"], arr["id"] = xy[a:b, 0], xy[a:b, 1], point_index[a:b] + 1
                f.write(struct.pack("<Q", b - a) + arr.tobytes())
            else:
                f.write(struct.pack("<Q", 0))
    with open(directory / "points3D.bin", "wb") as f:
        if not has_points:
            f.write(struct.pack("<Q", 0))
            return directory
        num = points.shape[0]
        f.write(struct.pack("<Q", num))
        by_point = np.argsort(point_index, kind="stable")
        starts = np.searchsorted(point_index[by_point], np.arange(num + 1))
        track = np.empty((len(by_point), 2), "<i4")
        track[:, 0] = image_index[by_point] + 1
        track[:, 1] = obs_in_image[by_point]
        head = struct.Struct("<Q3d3BdQ")
        chunks = []
        for p in range(num):
            a, b = starts[p], starts[p + 1]
            chunks.append(head.pack(p + 1, *points[p], 128, 128, 128, 0.0, b - a))
            chunks.append(track[a:b].tobytes())
            if len(chunks) > 20000:
                f.write(b"".join(chunks))
                chunks = []
        f.write(b"".join(chunks))
    return directory


def write_grey_images(directory: Path, names: list[str], width: int, height: int) -> None:
    """One flat grey PNG of ``width x height``, written under every name."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (width, height), 128).save(buf, format="PNG")
    data = buf.getvalue()
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        (directory / name).write_bytes(data)


def write_synthetic(model: SyntheticModel, output: Path, images: bool = True) -> Path:
    """Write the model, the truth and (``images``) grey PNGs under ``output`` (module docstring)."""
    cfg = model.config
    output.mkdir(parents=True, exist_ok=True)
    write_colmap_binary(output / "sparse" / "0", cfg, model.names, model.c2w, model.points, model.image_index,
                        model.point_index, model.xy)
    write_colmap_binary(output / "truth" / "sparse" / "0", cfg, model.names, model.c2w_true)
    np.savez(output / "truth.npz", names=np.array(model.names), c2w=model.c2w_true, points=model.points_true)
    if images:
        write_grey_images(output / "images", model.names, cfg.width, cfg.height)
    meta = {"config": asdict(cfg), **model.counts(), "handover": model.handover, "handover_record": handover_record(model)}
    (output / "synthetic.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--images", type=int, default=1000, help="number of images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-image-files", action="store_true", help="do not write the grey PNGs")
    parser.add_argument("--handover", choices=HANDOVERS, default="perturbed",
                        help="the model handed over: the perturbed one, or its squared-loss adjustment (a mapper's)")
    args = parser.parse_args(argv)
    if (args.output / "synthetic.json").exists():
        print(f"synthetic_model: {args.output} holds a model already", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    model = generate_handover(SyntheticConfig(num_images=args.images, seed=args.seed), args.handover)
    write_synthetic(model, args.output, images=not args.no_image_files)
    print(f"wrote {args.output}: {json.dumps(model.counts())}, {args.handover} handover: "
          f"{json.dumps(handover_record(model))} ({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
