#!/usr/bin/env python
"""Probe (issue 22, docs/benchmarks.md twenty-first look): **dense** direct alignment of castle-P30's degraded frames.

The package's photometric alignment compares a frame with its sharp neighbours at the SfM points (and samples on their
tangent planes). This probe tests the dense alternative: each sharp neighbour warped into the frame through the
points' surface (Delaunay triangles of the points projected in the frame, inverse depth interpolated, triangles
spanning more than ``--edge-ratio`` in depth left out), averaged, blurred in the frame's pixels by the frame's blur,
and the frame's 6-DoF pose found by Gauss-Newton on every 2nd pixel (normalised intensities, Huber weights), coarse
to fine (16, 8, 4, 0 px of extra blur), the reference rendered again at each outer step.

Runs on the outputs of ``python -m benchmarks.weak_frames --output OUT --scenes castle --kind gaussian --blur 12
--seeds S --rows input front-end``: the refined model's held (sharp) frames and points, each degraded frame started
from the front end's pose (``--start refined``) or the perturbed input (``--start input``). ``--sharp-test``: four
sharp frames instead (left out of the neighbours), the check that the aligner itself is right. Prints the
degraded-frame median rotation error (after a Sim(3) on the sharp frames) before and after.

Usage::

    python -m benchmarks.dense_alignment_probe OUT SEED [--start refined|input] [--sigma S] [--sharp-test]
"""
import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pycolmap
from scipy.ndimage import gaussian_filter, map_coordinates
from scipy.spatial import Delaunay
from scipy.spatial.transform import Rotation

from benchmarks.weak_frames import split_errors
from nerf_posefix.io.transforms_json import read_transforms_json
from nerf_posefix.sfm.blur_matching import SIGMA_LEVELS, _gray, estimate_blur_sigma
from nerf_posefix.sfm.photometric_alignment import huber_gauss_newton_step, huber_threshold, nearest_held, pose_update

def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("output", type=Path)
    parser.add_argument("seed", type=int)
    parser.add_argument("--start", choices=("refined", "input"), default="refined")
    parser.add_argument("--sigma", type=float, default=None, help="the frames' blur (px); default: estimated")
    parser.add_argument("--edge-ratio", type=float, default=1.1)
    parser.add_argument("--sharp-test", action="store_true")
    args = parser.parse_args()
    out, seed, start_mode, SIGMA, EDGE_RATIO = args.output, args.seed, args.start, args.sigma, args.edge_ratio
    STEP = 2  # grid step (px)
    STAGES = (16.0, 8.0, 4.0, 0.0)
    OUTER = 4
    INNER = 6

    key = f"castle__blur12__s{seed}__front-end"
    work = out / "work" / key / "refined"
    data = out / "scenes" / "castle-blur12" / "2deg-3pct" / f"s{seed}" / "data"
    weak = set(json.loads((out / "sources" / "castle_blur12" / "degraded.json").read_text())["images"])
    rec = pycolmap.Reconstruction(str(work / "sparse" / "0"))
    cam = next(iter(rec.cameras.values()))
    fx, fy, cx, cy = cam.params  # PINHOLE, COLMAP pixels
    cx, cy = cx - 0.5, cy - 0.5  # array pixels
    H, W = cam.height, cam.width
    names = {rec.images[i].name: i for i in rec.reg_image_ids()}


    def w2c_of(name):
        m = np.eye(4)
        m[:3] = rec.images[names[name]].cam_from_world().matrix()
        return m


    w2c = {n: w2c_of(n) for n in names}
    w2c_rec = dict(w2c)
    held = [n for n in names if Path(n).name not in weak]
    frames = sorted(n for n in names if Path(n).name in weak)
    if args.sharp_test:
        frames = sorted(n for n in names if Path(n).name in ("0001.jpg", "0006.jpg", "0013.jpg", "0018.jpg"))
        held = [n for n in held if n not in frames]
        weak = weak | {Path(n).name for n in frames}
    # points seen by >= 2 held frames
    hid = {names[n] for n in held}
    X = []
    for p in rec.points3D.values():
        if sum(1 for e in p.track.elements if e.image_id in hid) >= 2:
            X.append(p.xyz)
    X = np.array(X)
    images_dir = data / "images"
    gray = {}


    def img(n):
        if n not in gray:
            gray[n] = _gray(images_dir / Path(n).name).astype(np.float64) / 255.0
        return gray[n]


    if start_mode == "input":
        inp = read_transforms_json(data / "transforms.json")
        # the input poses are in the same world frame as the refined model (refine keeps the input frame)
        for k, n in enumerate(inp.names):
            full = [m for m in names if Path(m).name == Path(n).name]
            if full and Path(n).name in weak:
                w2c[full[0]] = np.linalg.inv(inp.c2w[k])

    gu, gv = np.meshgrid(np.arange(0, W, STEP, dtype=np.float64), np.arange(0, H, STEP, dtype=np.float64))
    gu, gv = gu.ravel(), gv.ravel()  # [G] array pixels


    def project(Pc):
        return np.stack([fx * Pc[:, 0] / Pc[:, 2] + cx, fy * Pc[:, 1] / Pc[:, 2] + cy], 1)


    def render(T, neigh, sigma, extra):
        """Reference at pose T (w2c): grid values, valid mask, depth per grid pixel."""
        Pc = X @ T[:3, :3].T + T[:3, 3]
        ok = Pc[:, 2] > 1e-6
        uv = project(Pc[ok])
        inside = (uv[:, 0] > -20) & (uv[:, 0] < W + 20) & (uv[:, 1] > -20) & (uv[:, 1] < H + 20)
        uv, z = uv[inside], Pc[ok][inside, 2]
        tri = Delaunay(uv)
        iz = 1.0 / z
        v = iz[tri.simplices]  # [T, 3]
        good = v.max(1) / v.min(1) < EDGE_RATIO
        q = np.stack([gu, gv], 1)
        simplex = tri.find_simplex(q)
        inv = np.full(gu.size, np.nan)
        ins = simplex >= 0
        ins[ins] = good[simplex[ins]]
        Tm = tri.transform[simplex[ins]]  # [K, 3, 2]
        b = np.einsum("kij,kj->ki", Tm[:, :2], q[ins] - Tm[:, 2])
        bary = np.concatenate([b, 1 - b.sum(1, keepdims=True)], 1)
        inv[ins] = (bary * v[simplex[ins]]).sum(1)
        depth = 1.0 / inv
        valid = np.isfinite(depth) & (depth > 0)
        rays = np.stack([(gu - cx) / fx, (gv - cy) / fy, np.ones_like(gu)], 1)
        Pg = rays * np.where(valid, depth, 1.0)[:, None]  # camera frame
        Xw = (Pg - T[:3, 3]) @ T[:3, :3]  # world
        acc, cnt = np.zeros(gu.size), np.zeros(gu.size)
        for n in neigh:
            Tn = w2c[n]
            Pn = Xw @ Tn[:3, :3].T + Tn[:3, 3]
            uvn = project(Pn)
            okn = valid & (Pn[:, 2] > 0) & (uvn[:, 0] >= 0) & (uvn[:, 0] <= W - 1) & (uvn[:, 1] >= 0) & (uvn[:, 1] <= H - 1)
            vals = map_coordinates(img(n), [uvn[:, 1], uvn[:, 0]], order=1, mode="nearest")
            acc += np.where(okn, vals, 0.0)
            cnt += okn
        shape = (len(np.arange(0, H, STEP)), len(np.arange(0, W, STEP)))
        S = np.where(cnt > 0, acc / np.maximum(cnt, 1), 0.0).reshape(shape)
        m = (cnt > 0).reshape(shape).astype(np.float64)
        s = np.hypot(sigma, extra) / STEP
        num, den = gaussian_filter(S * m, s), gaussian_filter(m, s)
        R = np.where(den > 0.5, num / np.maximum(den, 1e-9), np.nan)
        return R.ravel(), depth


    def align(name, sigma):
        T = w2c[name].copy()
        c2w = np.linalg.inv(T)
        neigh = nearest_held(c2w, {n: np.linalg.inv(w2c[n]) for n in held})
        F0 = img(name)
        for extra in STAGES:
            F = gaussian_filter(F0, extra) if extra > 0 else F0
            gy, gx = np.gradient(F)
            for _ in range(OUTER):
                R, depth = render(T, neigh, sigma, extra)
                ok0 = np.isfinite(R) & np.isfinite(depth)
                Rn = R[ok0]
                Rn = (Rn - Rn.mean()) / (Rn.std() + 1e-12)
                u0, v0, d0 = gu[ok0], gv[ok0], depth[ok0]
                P0 = np.stack([(u0 - cx) / fx * d0, (v0 - cy) / fy * d0, d0], 1)  # camera frame at T
                delta_T = np.eye(4)
                for _ in range(INNER):
                    P = P0 @ delta_T[:3, :3].T + delta_T[:3, 3]
                    uv = project(P)
                    inside = (P[:, 2] > 0) & (uv[:, 0] >= 0) & (uv[:, 0] <= W - 1) & (uv[:, 1] >= 0) & (uv[:, 1] <= H - 1)
                    f = map_coordinates(F, [uv[:, 1], uv[:, 0]], order=1, mode="nearest")
                    fi = f[inside]
                    mu, sd = fi.mean(), fi.std() + 1e-12
                    r = (fi - mu) / sd - Rn[inside]
                    g = np.stack([map_coordinates(gx, [uv[inside, 1], uv[inside, 0]], order=1),
                                  map_coordinates(gy, [uv[inside, 1], uv[inside, 0]], order=1)], 1) / sd
                    x, y, z = P[inside].T
                    J = np.zeros((len(x), 6))
                    du = np.stack([fx / z, np.zeros_like(z), -fx * x / z**2], 1)
                    dv = np.stack([np.zeros_like(z), fy / z, -fy * y / z**2], 1)
                    dP = np.zeros((len(x), 3, 6))
                    dP[:, :, :3] = np.eye(3)
                    dP[:, 0, 4], dP[:, 0, 5] = z, -y
                    dP[:, 1, 3], dP[:, 1, 5] = -z, x
                    dP[:, 2, 3], dP[:, 2, 4] = y, -x
                    J = g[:, :1] * np.einsum("ni,nij->nj", du, dP) + g[:, 1:] * np.einsum("ni,nij->nj", dv, dP)
                    step = huber_gauss_newton_step(J, r, huber_threshold(r))
                    delta_T = pose_update(step) @ delta_T
                    if np.linalg.norm(step) < 1e-7:
                        break
                T = delta_T @ T
        return T


    results = {}
    for name in frames:
        others = [img(n) for n in nearest_held(np.linalg.inv(w2c[name]), {n: np.linalg.inv(w2c[n]) for n in held})[:3]]
        sigma = SIGMA if SIGMA else estimate_blur_sigma(img(name), others, list(SIGMA_LEVELS))
        T = align(name, sigma)
        ang = np.degrees(Rotation.from_matrix((T @ np.linalg.inv(w2c[name]))[:3, :3]).magnitude())
        print(f"{name}: sigma {sigma:.1f}, moved {ang:.3f} deg", flush=True)
        results[name] = T

    est = read_transforms_json(work / "transforms.json")
    gt = read_transforms_json(data / "transforms_gt.json")
    def full_name(n):
        return [m for m in names if Path(m).name == Path(n).name][0]
    base = np.stack([np.linalg.inv(w2c_rec[full_name(n)]) for n in est.names])
    before = split_errors(gt, replace(est, c2w=base), weak)
    c2w = base.copy()
    for k, n in enumerate(est.names):
        if full_name(n) in results:
            c2w[k] = np.linalg.inv(results[full_name(n)])
    after = split_errors(gt, replace(est, c2w=c2w), weak)
    if start_mode == "input":
        c2w_in = base.copy()
        for k, n in enumerate(est.names):
            if full_name(n) in results:
                c2w_in[k] = np.linalg.inv(w2c[full_name(n)])
        print("input ", round(split_errors(gt, replace(est, c2w=c2w_in), weak)["rot_degraded_deg"], 4))
    print("before", round(before["rot_degraded_deg"], 4), {k[:4]: round(v, 3) for k, v in before["rot_degraded_per_image_deg"].items()})
    print("after ", round(after["rot_degraded_deg"], 4), {k[:4]: round(v, 3) for k, v in after["rot_degraded_per_image_deg"].items()})


if __name__ == "__main__":
    main()
