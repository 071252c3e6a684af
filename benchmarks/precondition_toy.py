#!/usr/bin/env python
"""Why homography preconditioning does not speed up the NeRF runs (issue 8): the same preconditioners on
a toy problem with a known answer, under plain gradient descent and under Adam.

The toy problem: one camera (random orientation, intrinsics 100 px focal, 128x128 image, depth range
[1, 6] scene units) is perturbed by 3 degrees and 5 % of the mean depth; the objective is the mean squared
reprojection error (normalised image coordinates) of 400 fixed points in the true camera's frustum, so
its minimum is the true pose. The correction is nerfstudio's 6-vector (translation, rotation; c2w' =
[exp(ω)·R | t + τ], OpenGL camera axes) and the optimiser works on φ with δ = P φ:

* ``off``: P = I;
* ``homography``: P = (Q + λ diag Q)^-½ with Q the closed-form homography metric
  (:func:`nerf_posefix.geometry.preconditioning.homography_metric`) of the start pose, λ = 0.1;
* ``sampled``: CamP's P from the projection Jacobians of points sampled in the frustum
  (:func:`nerf_posefix.geometry.preconditioning.sampled_metric`).

Each (optimiser, preconditioner) gets its best fixed learning rate from the same log-spaced grid, and
the count of steps until the objective falls below ``tolerance`` x its start value (capped) is reported,
median and range over ``--cameras`` random cameras. Printed as a table; ``--json`` writes the numbers.

    python -m benchmarks.precondition_toy                    # 20 cameras (a few minutes on 2 busy cores)
    python -m benchmarks.precondition_toy --cameras 0        # only the setup cost of P (56 and 1000 cameras)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from nerf_posefix.geometry.preconditioning import homography_metric, preconditioner, sampled_metric, skew, view_directions

XMIN, XMAX = 1.0, 6.0
INTRINSICS = (100.0, 100.0, 64.0, 64.0)  # fx, fy, cx, cy (pixels)
IMAGE_SIZE = (128, 128)  # width, height
PRECONDITIONERS = ("off", "homography", "sampled")
OPTIMISERS = ("gd", "adam")


def correct(c2w: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """nerfstudio's SO3xR3 correction of a [3, 4] camera-to-world pose: [exp(ω)·R | t + τ] for a batch
    of corrections δ = (τ, ω) [L, 6] -> [L, 3, 4]."""
    rot = torch.linalg.matrix_exp(skew(delta[:, 3:]))  # [L, 3, 3]
    return torch.cat([rot @ c2w[:, :3], (c2w[:, 3] + delta[:, :3])[..., None]], dim=-1)


def random_pose(rng: np.random.Generator) -> torch.Tensor:
    """A [3, 4] camera-to-world pose, uniformly random rotation, centre in [-1, 1]^3 (float64)."""
    from scipy.spatial.transform import Rotation

    rot = Rotation.random(random_state=rng).as_matrix()
    return torch.from_numpy(np.concatenate([rot, rng.uniform(-1, 1, (3, 1))], axis=1))


@dataclass
class ToyProblem:
    """One perturbed camera and its reprojection objective (see the module docstring)."""

    start: torch.Tensor  # [3, 4] c2w, OpenGL axes: the perturbed pose
    objective: Callable[[torch.Tensor], torch.Tensor]  # δ [6] -> mean squared reprojection error


def toy_problem(seed: int, rotation_deg: float = 3.0, translation: float = 0.05, num_points: int = 400) -> ToyProblem:
    rng = np.random.default_rng(seed)
    true_c2w = random_pose(rng)
    fx, fy, cx, cy = INTRINSICS
    gen = torch.Generator().manual_seed(seed + 1)
    uniform = torch.rand((num_points, 3), dtype=torch.float64, generator=gen)
    depth = XMIN + uniform[:, 2] * (XMAX - XMIN)
    pixels = uniform[:, :2] * torch.tensor(IMAGE_SIZE, dtype=torch.float64)
    cam_cv = depth[:, None] * torch.cat(
        [(pixels[:, :1] - cx) / fx, (pixels[:, 1:] - cy) / fy, torch.ones(num_points, 1, dtype=torch.float64)], dim=1
    )
    world = (cam_cv * torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64)) @ true_c2w[:, :3].T + true_c2w[:, 3]

    def project(c2w: torch.Tensor) -> torch.Tensor:  # [L, 3, 4] -> [L, P, 2]
        local = (world - c2w[:, None, :, 3]) @ c2w[:, :, :3]  # OpenGL camera frame (looks down -z)
        return local[..., :2] / -local[..., 2:3]

    target = project(true_c2w[None])
    axis = torch.from_numpy(rng.normal(size=3))
    axis = axis / axis.norm()
    direction = torch.from_numpy(rng.normal(size=3))
    direction = direction / direction.norm()
    start_delta = torch.cat([direction * translation * 0.5 * (XMIN + XMAX), axis * math.radians(rotation_deg)])
    start = correct(true_c2w, start_delta[None])[0]

    def objective(delta: torch.Tensor) -> torch.Tensor:  # [L, 6] -> [L]
        return (project(correct(start, delta)) - target).square().sum(-1).mean(-1)

    return ToyProblem(start=start, objective=objective)


def preconditioner_for(problem: ToyProblem, kind: str, damping: float = 0.1) -> torch.Tensor:
    """P [6, 6] of ``kind`` at the start pose."""
    if kind == "off":
        return torch.eye(6, dtype=torch.float64)
    if kind == "homography":
        metric = homography_metric(view_directions(problem.start[None]), XMIN, XMAX)[0]
    elif kind == "sampled":
        intr = torch.tensor([INTRINSICS], dtype=torch.float64)
        size = torch.tensor([IMAGE_SIZE], dtype=torch.float64)
        metric = sampled_metric(problem.start[None], XMIN, XMAX, intr, size, num_points=5000,
                                generator=torch.Generator().manual_seed(0))[0]
    else:
        raise ValueError(f"unknown preconditioner {kind!r}")
    return preconditioner(metric, damping)


def steps_over_grid(problem: ToyProblem, precond: torch.Tensor, optimiser: str, grid: list[float], tolerance: float,
                    max_steps: int) -> list[int]:
    """For every learning rate of ``grid`` (run side by side): the steps of ``optimiser`` (``gd``: φ -= lr·∇;
    ``adam``: torch's Adam) on φ, δ = P φ, until the objective is below ``tolerance`` x its start value
    (``max_steps`` if never; a run that blows up counts as never)."""
    phis = [torch.zeros(6, dtype=torch.float64, requires_grad=True) for _ in grid]
    adam = torch.optim.Adam([{"params": [phi], "lr": lr} for phi, lr in zip(phis, grid)]) if optimiser == "adam" else None
    steps = [max_steps] * len(grid)
    start = None
    for k in range(max_steps):
        values = problem.objective(torch.stack(phis) @ precond.T)  # [L]
        if start is None:
            start = values.detach()
        done = (values.detach() < tolerance * start).tolist()
        for i, d in enumerate(done):
            if d and steps[i] == max_steps:
                steps[i] = k
        if all(s < max_steps or not math.isfinite(v) for s, v in zip(steps, values.tolist())):
            break
        grads = torch.autograd.grad(torch.nan_to_num(values, nan=0.0).sum(), phis)
        if adam is None:
            with torch.no_grad():
                for phi, grad, lr in zip(phis, grads, grid):
                    phi -= lr * grad
        else:
            for phi, grad in zip(phis, grads):
                phi.grad = grad
            adam.step()
    return steps


def best_steps(problem: ToyProblem, precond: torch.Tensor, optimiser: str, grid: list[float], tolerance: float,
               max_steps: int) -> tuple[int, float]:
    """The fewest steps over the learning-rate grid, and the learning rate that gave them."""
    return min(zip(steps_over_grid(problem, precond, optimiser, grid, tolerance, max_steps), grid))


def setup_cost(num_cameras: int, repeats: int = 3, num_points: int = 5000) -> dict[str, float]:
    """Median seconds to build P for ``num_cameras`` random cameras (float64, CPU), metric + eigh, for
    the closed form and for CamP's sampled metric (``num_points`` per camera, as the optimizer's default)."""
    import time

    rng = np.random.default_rng(0)
    c2w = torch.stack([random_pose(rng) for _ in range(num_cameras)])
    intr = torch.tensor([INTRINSICS], dtype=torch.float64).expand(num_cameras, 4)
    size = torch.tensor([IMAGE_SIZE], dtype=torch.float64).expand(num_cameras, 2)
    builders = {
        "homography": lambda: preconditioner(homography_metric(view_directions(c2w), XMIN, XMAX), 0.1),
        "sampled": lambda: preconditioner(sampled_metric(c2w, XMIN, XMAX, intr, size, num_points=num_points,
                                                         generator=torch.Generator().manual_seed(0)), 0.1),
    }
    out = {}
    for kind, build in builders.items():
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            build()
            times.append(time.perf_counter() - start)
        out[kind] = float(np.median(times))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cameras", type=int, default=20, help="random cameras (problems)")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="stop when the objective is below this x its start")
    parser.add_argument("--max-steps", type=int, default=2000)
    parser.add_argument("--json", type=Path, default=None, help="write the per-camera step counts here")
    parser.add_argument("--setup-cameras", type=int, nargs="*", default=[56, 1000],
                        help="also time building P for this many cameras (none: skip)")
    args = parser.parse_args(argv)
    setup = {}
    for n in args.setup_cameras:
        setup[n] = setup_cost(n)
        print(f"setup cost, {n} cameras: homography {1e3 * setup[n]['homography']:.2f} ms, sampled (5000 points "
              f"per camera) {1e3 * setup[n]['sampled']:.1f} ms ({setup[n]['sampled'] / setup[n]['homography']:.0f}x)",
              flush=True)
    grids = {"gd": (4.0 ** np.arange(-3, 5)).tolist(), "adam": (10.0 ** np.arange(-4.0, 0.5, 0.5)).tolist()}
    counts: dict[str, list[int]] = {f"{o}/{p}": [] for o in OPTIMISERS for p in PRECONDITIONERS}
    rates: dict[str, list[float]] = {key: [] for key in counts}
    for seed in range(args.cameras):
        problem = toy_problem(seed)
        for kind in PRECONDITIONERS:
            precond = preconditioner_for(problem, kind)
            for optimiser in OPTIMISERS:
                steps, lr = best_steps(problem, precond, optimiser, grids[optimiser], args.tolerance, args.max_steps)
                counts[f"{optimiser}/{kind}"].append(steps)
                rates[f"{optimiser}/{kind}"].append(lr)
    if args.cameras < 1:
        return 0
    print(f"toy problem: {args.cameras} cameras, 3 deg / 5 % perturbation, steps until the reprojection objective "
          f"< {args.tolerance:g} x start (best learning rate of the grid per camera; cap {args.max_steps})")
    print(f"{'optimiser':<9}  {'precondition':<12}  {'median steps':>12}  {'min..max':>11}  {'vs off':>7}  {'capped':>6}")
    for optimiser in OPTIMISERS:
        base = float(np.median(counts[f"{optimiser}/off"]))
        for kind in PRECONDITIONERS:
            c = np.asarray(counts[f"{optimiser}/{kind}"])
            med = float(np.median(c))
            print(f"{optimiser:<9}  {kind:<12}  {med:>12.0f}  {f'{c.min()}..{c.max()}':>11}  {base / med:>6.1f}x  "
                  f"{int((c >= args.max_steps).sum()):>6}")
    if args.json is not None:
        args.json.write_text(json.dumps({"settings": vars(args) | {"json": str(args.json)}, "steps": counts,
                                         "learning_rates": rates, "setup_seconds": setup}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
