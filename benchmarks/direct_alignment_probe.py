#!/usr/bin/env python
"""How far can photometry alone place castle-P30's blurred frames? Direct alignment through the SfM points (issue 22).

A question, not a pipeline stage: at blur 12 px no degraded frame of the weak-frames benchmark has a verified
pair, and ``posefix refine``'s NeRF stage leaves them at 0.65-0.87 deg. This probe aligns each degraded frame by
its intensities alone against its sharp neighbours, with no NeRF in between, at full resolution:

* **Points**: 3D points observed by at least 2 sharp frames; each projects into the frame at its current pose.
* **Reference**: each point's intensity in the sharp neighbours that observe it (the 4 nearest by centre, facing
  within 75 deg), each neighbour blurred by the frame's σ scaled by the depth ratio (a blur of σ px at depth Z in
  the frame is σ Z / Z_n px at depth Z_n in the neighbour), averaged over the neighbours.
* **Residual**: the frame's intensity at the projection minus the reference, both normalised to zero mean and
  unit variance over the points (the contrast cut and any exposure change), Huber-weighted.
* **Solver**: Gauss-Newton on the frame's 6-DoF pose (world-to-camera, updated on the left), coarse to fine:
  both sides blurred by 16, 8, 4 then 0 px more, 30 iterations each.

Two settings (``--sharp``):

* ``truth``: the sharp frames at the ground truth and the points of castle's COLMAP model ``sparse/0`` (built
  from the undegraded images, mapped onto the ground truth by a Sim(3) of the camera centres; only points that 2
  sharp frames observe); each degraded frame starts 2 deg / 3 % of the spread off the truth (random axis and
  direction, ``--seed``). The ceiling of the method: perfect neighbours, perfect points.
* ``adjusted``: what ``posefix refine`` has at that point: the adjustment row's refined model of the weak-frames
  benchmark (``--frames DIR``, the output of ``python -m benchmarks.weak_frames --rows adjustment``), its sharp
  frames, its points, the degraded frames starting where the adjustment left them (their input poses: no track
  holds them); errors as the benchmark measures them (a Sim(3) fitted on the sharp frames).

``--sigma true`` uses the blur the benchmark applied; ``--sigma estimated`` the front end's estimate
(:func:`nerf_posefix.sfm.blur_matching.estimate_blur_sigma`, against the 3 nearest sharp neighbours).

Usage::

    PYTHONPATH=. .venv/bin/python -m benchmarks.direct_alignment_probe --frames benchmark_results/weak_frames_v13 \
        --blur 12 --seeds 0 1 2 --sharp truth adjusted --sigma true estimated

Prints one line per frame and the median rotation / centre error of the degraded frames per (setting, seed).
Conventions: camera-to-world poses, OpenCV axes; array pixel centres at integer coordinates (COLMAP's principal
point minus 0.5).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

SCENE = Path(__file__).resolve().parents[2] / "shared" / "scenes" / "castle-P30"
#: Extra blur of both sides per stage (pixels): coarse to fine.
STAGES_PX = (16.0, 8.0, 4.0, 0.0)
ITERATIONS_PER_STAGE = 30
NEIGHBOURS = 4
FACING_DEG = 75.0
SPREAD_M = 23.70  # castle-P30's largest distance of a GT centre from their centroid (shared/scenes/README.md)


class Poses(NamedTuple):
    names: list[str]
    c2w: np.ndarray  # [N, 4, 4] camera-to-world, OpenCV axes


def gray(path: Path) -> np.ndarray:
    """``[H, W]`` float64 in [0, 1], the mean of R, G, B."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float64).mean(-1) / 255.0


def project(c2w: np.ndarray, K: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Camera-frame points ``[P, 3]`` and pixels ``[P, 2]`` (array convention) of world points ``X [P, 3]``."""
    w2c = np.linalg.inv(c2w)
    P = X @ w2c[:3, :3].T + w2c[:3, 3]
    uv = P[:, :2] / P[:, 2:3] * np.array([K[0, 0], K[1, 1]]) + K[:2, 2]
    return P, uv


def sample(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    from scipy.ndimage import map_coordinates

    return map_coordinates(image, [uv[:, 1], uv[:, 0]], order=1, mode="nearest")


def align_frame(frame: np.ndarray, sigma: float, K: np.ndarray, start_c2w: np.ndarray, X: np.ndarray,
                seen_by: list[set[str]], neighbours: dict[str, tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """The frame's camera-to-world pose that best matches its intensities at the points ``X [P, 3]`` with the
    neighbours' (``name -> (c2w, image)``; ``seen_by[p]``: the neighbours observing point p), module docstring."""
    from scipy.ndimage import gaussian_filter

    from nerf_posefix.sfm.photometric_alignment import huber_gauss_newton_step, huber_threshold, pose_update

    h, w = frame.shape
    pose = start_c2w.copy()
    levels = max(sigma, 0.5) * 2.0 ** (np.arange(-8, 9) / 4)  # neighbour blur levels, px
    blurred: dict[tuple[str, float], np.ndarray] = {}
    for extra in STAGES_PX:
        frame_s = gaussian_filter(frame, extra) if extra > 0 else frame
        total = float(np.hypot(sigma, extra))
        depth = project(pose, K, X)[0][:, 2]
        ref, count = np.zeros(len(X)), np.zeros(len(X))
        for name, (c2w_n, image_n) in neighbours.items():
            Pn, uvn = project(c2w_n, K, X)
            seen = np.array([name in s for s in seen_by]) & (Pn[:, 2] > 0) & (depth > 0)
            if not seen.any():
                continue
            want = total * np.where(seen, depth / np.maximum(Pn[:, 2], 1e-9), 1.0)  # px in the neighbour
            level = np.abs(np.log(want[:, None]) - np.log(levels[None, :] * total / max(sigma, 0.5))).argmin(1)
            for li in np.unique(level[seen]):
                key = (name, float(levels[li] * total / max(sigma, 0.5)))
                if key not in blurred:
                    blurred[key] = gaussian_filter(image_n, key[1])
                m = seen & (level == li)
                ref[m] += sample(blurred[key], uvn[m])
                count[m] += 1
        have = count > 0
        if have.sum() < 20:
            return pose
        r_ref = ref[have] / count[have]
        r_ref = (r_ref - r_ref.mean()) / max(r_ref.std(), 1e-9)
        Xs = X[have]
        gy, gx = np.gradient(frame_s)
        for _ in range(ITERATIONS_PER_STAGE):
            P, uv = project(pose, K, Xs)
            inside = (uv[:, 0] > 1) & (uv[:, 0] < w - 2) & (uv[:, 1] > 1) & (uv[:, 1] < h - 2) & (P[:, 2] > 1e-6)
            if inside.sum() < 20:
                break
            v = sample(frame_s, uv)
            mu, sd = v[inside].mean(), max(v[inside].std(), 1e-9)
            r = (v - mu) / sd - r_ref
            g = np.stack([sample(gx, uv), sample(gy, uv)], 1) / sd  # d residual / d pixel [P, 2]
            x, y, z = P.T
            duv_dP = np.zeros((len(P), 2, 3))
            duv_dP[:, 0, 0], duv_dP[:, 0, 2] = K[0, 0] / z, -K[0, 0] * x / z**2
            duv_dP[:, 1, 1], duv_dP[:, 1, 2] = K[1, 1] / z, -K[1, 1] * y / z**2
            dP = np.zeros((len(P), 3, 6))  # P' = exp([w]x) P + t: d P' / d (t, w) at 0
            dP[:, :, :3] = np.eye(3)
            dP[:, 0, 4], dP[:, 0, 5] = z, -y
            dP[:, 1, 3], dP[:, 1, 5] = -z, x
            dP[:, 2, 3], dP[:, 2, 4] = y, -x
            J = np.einsum("ni,nij,njk->nk", g, duv_dP, dP)[inside]  # [P, 6]
            rr = r[inside]
            delta = huber_gauss_newton_step(J, rr, huber_threshold(rr))
            pose = np.linalg.inv(pose_update(delta) @ np.linalg.inv(pose))
            if np.linalg.norm(delta) < 1e-7:
                break
    return pose


def nearest_sharp(c2w: np.ndarray, sharp: dict[str, np.ndarray], count: int) -> list[str]:
    """The ``count`` sharp frames nearest ``c2w`` by centre among those facing within :data:`FACING_DEG`."""
    facing = [n for n, m in sharp.items() if m[:3, 2] @ c2w[:3, 2] > np.cos(np.deg2rad(FACING_DEG))]
    return sorted(facing, key=lambda n: float(np.linalg.norm(sharp[n][:3, 3] - c2w[:3, 3])))[:count]


def model_poses_points(model_dir: Path) -> tuple[dict[str, np.ndarray], np.ndarray, list[set[str]], np.ndarray]:
    """``(name -> c2w, points [P, 3], observing image names per point, K in array pixels)`` of a COLMAP model."""
    import pycolmap

    rec = pycolmap.Reconstruction(str(model_dir))
    c2w = {}
    for im in rec.images.values():
        m = np.eye(4)
        m[:3, :4] = im.cam_from_world().matrix()
        c2w[Path(im.name).name] = np.linalg.inv(m)
    names = {im.image_id: Path(im.name).name for im in rec.images.values()}
    xyz, seen = [], []
    for p in rec.points3D.values():
        xyz.append(p.xyz)
        seen.append({names[e.image_id] for e in p.track.elements})
    cam = next(iter(rec.cameras.values()))
    K = np.array(cam.calibration_matrix(), dtype=np.float64)
    K[:2, 2] -= 0.5  # COLMAP puts the first pixel's centre at 0.5
    return c2w, np.array(xyz).reshape(-1, 3), seen, K


def run_setting(setting: str, seed: int, blur: float, sigma_mode: str, frames: Path, scene: Path, kind: str = "gaussian") -> dict[str, Any]:
    from scipy.spatial.transform import Rotation

    from benchmarks.weak_frames import aligned_errors, scene_tag
    from nerf_posefix.geometry.alignment import umeyama
    from nerf_posefix.sfm.blur_matching import estimate_blur_sigma

    tag = scene_tag(kind, blur)
    source = frames / "sources" / f"castle_{tag}"
    weak = set(json.loads((source / "degraded.json").read_text())["images"])
    gt_json = json.loads((scene / "gt_cameras.json").read_text())["images"]
    gt = Poses(sorted(gt_json), np.stack([np.array(gt_json[n]["c2w"]) for n in sorted(gt_json)]))
    if setting == "truth":
        model_c2w, X, seen_by, _ = model_poses_points(scene / "sparse" / "0")
        common = [n for n in gt.names if n in model_c2w]
        R, t, s = umeyama(np.stack([model_c2w[n][:3, 3] for n in common]), np.stack([gt_json[n]["c2w"] for n in common])[:, :3, 3], True)
        X = s * X @ R.T + t
        K = np.array(gt_json[gt.names[0]]["K"], dtype=np.float64)
        poses = {n: np.array(gt_json[n]["c2w"]) for n in gt.names}
        rng = np.random.default_rng(seed)
        for n in sorted(weak):
            axis, direction = rng.normal(size=3), rng.normal(size=3)
            start = poses[n].copy()
            start[:3, :3] = Rotation.from_rotvec(np.deg2rad(2.0) * axis / np.linalg.norm(axis)).as_matrix() @ start[:3, :3]
            start[:3, 3] += 0.03 * SPREAD_M * direction / np.linalg.norm(direction)
            poses[n] = start
    else:
        run = frames / "work" / f"castle__{tag}__s{seed}__adjustment" / "refined" / "sparse" / "0"
        poses, X, seen_by, K = model_poses_points(run)
    sharp = {n: poses[n] for n in poses if n not in weak}
    keep = np.array([len(s - weak) >= 2 for s in seen_by])
    X, seen_by = X[keep], [s - weak for s, k in zip(seen_by, keep) if k]
    images = {n: gray(source / "images" / n) for n in poses}
    start = Poses(list(poses), np.stack([poses[n] for n in poses]))
    out = dict(poses)
    per_frame = []
    for n in sorted(weak):
        near = nearest_sharp(poses[n], sharp, NEIGHBOURS)
        if sigma_mode == "true":
            sigma = blur if kind == "gaussian" else 0.0  # noise: no blur (a streak is not a Gaussian: use "estimated")
        else:
            sigma = estimate_blur_sigma(images[n], [images[m] for m in near[:3]])
        P, uv = project(poses[n], K, X)
        h, w = images[n].shape
        visible = (P[:, 2] > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
        visible &= np.array([bool(s & set(near)) for s in seen_by])
        out[n] = align_frame(images[n], sigma, K, poses[n], X[visible], [s for s, v in zip(seen_by, visible) if v],
                             {m: (sharp[m], images[m]) for m in near})
        per_frame.append((n, float(sigma), int(visible.sum())))
    names_b, sharp_b, rot_b, centre_b = aligned_errors(gt, start, weak)
    names_a, sharp_a, rot_a, centre_a = aligned_errors(gt, Poses(list(out), np.stack([out[n] for n in out])), weak)
    for (n, sigma, points) in per_frame:
        i = names_a.index(n)
        print(f"  {setting:8} s{seed} {n} σ {sigma:5.2f} px  points {points:5d}  rotation {rot_b[i]:.3f} -> {rot_a[i]:.3f} deg  "
              f"centre {centre_b[i]:.2f} -> {centre_a[i]:.2f} %", flush=True)
    record = {"setting": setting, "seed": seed, "kind": kind, "blur": blur, "sigma": sigma_mode,
              "rot_degraded_before_deg": float(np.median(rot_b[~sharp_b])), "rot_degraded_deg": float(np.median(rot_a[~sharp_a])),
              "centre_degraded_pct": float(np.median(centre_a[~sharp_a])), "rot_sharp_deg": float(np.median(rot_a[sharp_a])),
              "rot_degraded_max_deg": float(rot_a[~sharp_a].max())}
    print(f"{setting} s{seed} blur {blur:g} σ {sigma_mode}: degraded {record['rot_degraded_before_deg']:.3f} -> "
          f"{record['rot_degraded_deg']:.3f} deg (worst {record['rot_degraded_max_deg']:.3f}), centre {record['centre_degraded_pct']:.2f} %, "
          f"sharp {record['rot_sharp_deg']:.4f} deg", flush=True)
    return record


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=Path, required=True, help="a weak-frames benchmark output (its sources/, work/)")
    parser.add_argument("--scene", type=Path, default=SCENE)
    parser.add_argument("--blur", type=float, default=12.0, help="the degradation's strength (benchmarks.weak_frames --blur)")
    parser.add_argument("--kind", choices=("gaussian", "motion", "noise"), default="gaussian", help="benchmarks.weak_frames --kind")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--sharp", nargs="+", choices=("truth", "adjusted"), default=["truth", "adjusted"])
    parser.add_argument("--sigma", nargs="+", choices=("true", "estimated"), default=["true"])
    parser.add_argument("--output", type=Path, default=None, help="write the records here (JSON)")
    args = parser.parse_args(argv)
    records = [run_setting(setting, seed, args.blur, sigma, args.frames, args.scene, args.kind)
               for setting in args.sharp for sigma in args.sigma for seed in args.seeds]
    for setting in args.sharp:
        for sigma in args.sigma:
            vals = [r["rot_degraded_deg"] for r in records if r["setting"] == setting and r["sigma"] == sigma]
            print(f"{setting:8} σ {sigma:9}: degraded {np.mean(vals):.3f} ± {np.std(vals):.3f} deg over {len(vals)} seeds "
                  f"({' / '.join(f'{v:.3f}' for v in vals)})")
    if args.output:
        args.output.write_text(json.dumps(records, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
