"""Benchmark: alignment + all metrics (no plots, no I/O) for 1k, 10k and 100k cameras on this CPU.

Usage: ``python -m benchmarks.bench_compare [--repeats 3]``. Prints the best of ``repeats`` wall times.
Target (issue 6): under 5 s for 100k cameras.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.spatial.transform import Rotation

from nerf_posefix.geometry.metrics import compare_poses
from nerf_posefix.geometry.poses import make_c2w


def make_pair(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A random-walk reference ``[n, 4, 4]``, a noisy similarity-transformed estimate, and per-camera
    depth bounds ``[n]``."""
    rng = np.random.default_rng(seed)
    ref = make_c2w(Rotation.random(n, random_state=seed).as_matrix(), np.cumsum(rng.normal(size=(n, 3)), axis=0))
    noise = Rotation.from_rotvec(rng.normal(scale=0.01, size=(n, 3))).as_matrix()
    rot_s = Rotation.random(random_state=seed + 1).as_matrix()
    est = make_c2w(rot_s @ ref[:, :3, :3] @ noise, 1.7 * ref[:, :3, 3] @ rot_s.T + rng.normal(scale=0.05, size=(n, 3)))
    xmin = rng.uniform(0.5, 1.0, size=n)
    return ref, est, xmin, xmin * rng.uniform(2.0, 10.0, size=n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    for n in (1_000, 10_000, 100_000):
        ref, est, xmin, xmax = make_pair(n)
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            result = compare_poses(ref, est, mode="sim3", xmin=xmin, xmax=xmax)
            best = min(best, time.perf_counter() - start)
        print(f"{n:>7d} cameras: {best * 1e3:8.1f} ms  (sim3, ATE {result.ate_rmse:.4f}, scale {result.alignment.scale:.4f})")


if __name__ == "__main__":
    main()
