"""Forward + backward time of the homography pose prior against nerfstudio's L2 camera regulariser.

Both regularisers start from the same learnable pose adjustments ``[N, 6]`` (nerfstudio's
``pose_adjustment``: translation, then so(3)) and end in a scalar whose gradient is taken:

* ``nerfstudio L2``: ``mean‖t_adj‖·1e-2 + mean‖ω_adj‖·1e-3`` (``CameraOptimizer.get_loss_dict``);
* ``posefix (adjustment)``: :func:`nerf_posefix.geometry.homography.adjustment_homography_error`, straight
  from the 6-vectors (what the plugin evaluates);
* ``posefix (correction)``: nerfstudio's ``exp_map_SO3xR3`` then
  :func:`nerf_posefix.geometry.homography.correction_homography_error`;
* ``posefix (pose API)``: the corrected poses built explicitly, then the public
  :func:`nerf_posefix.geometry.homography.homography_error` with its input checks.

Usage: ``python -m benchmarks.bench_homography [--device cpu|cuda] [--dtype float32|float64]``.
Prints the median of repeated runs, in milliseconds, and the ratio to the L2 regulariser.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from nerfstudio.cameras.lie_groups import exp_map_SO3xR3

from nerf_posefix.geometry.homography import adjustment_homography_error, correction_homography_error, homography_error


def random_poses(n: int, dtype: torch.dtype, device: str, generator: torch.Generator) -> torch.Tensor:
    """``[n, 3, 4]`` random camera-to-world poses (OpenGL axes)."""
    rotvec = torch.randn(n, 6, dtype=dtype, generator=generator)
    rotvec[:, :3] = 0
    c2w = exp_map_SO3xR3(rotvec)
    c2w[:, :, 3] = torch.randn(n, 3, dtype=dtype, generator=generator)
    return c2w.to(device)


def time_ms(fn: Callable[[], torch.Tensor], device: str, repeats: int) -> float:
    for _ in range(3):
        fn().backward()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn().backward()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 1_000, 100_000])
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    generator = torch.Generator().manual_seed(0)
    print(f"device {args.device}, {args.dtype}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    header = ["nerfstudio L2", "posefix adj.", "ratio", "posefix corr.", "ratio", "posefix API", "ratio"]
    print(f"{'pairs':>8} " + " ".join(f"{h:>13}" for h in header) + "  (ms, median; ratio to L2)")
    for n in args.sizes:
        c2w = random_poses(n, dtype, args.device, generator)
        view_dirs = -c2w[:, :, 2]
        adjustment = (0.01 * torch.randn(n, 6, dtype=dtype, generator=generator)).to(args.device).requires_grad_(True)
        xmin, xmax = 0.1, 4.0

        def l2() -> torch.Tensor:
            return adjustment[:, :3].norm(dim=-1).mean() * 1e-2 + adjustment[:, 3:].norm(dim=-1).mean() * 1e-3

        def adjusted() -> torch.Tensor:
            return adjustment_homography_error(adjustment, view_dirs, xmin, xmax).mean()

        def correction() -> torch.Tensor:
            corr = exp_map_SO3xR3(adjustment)
            return correction_homography_error(corr[:, :, :3], corr[:, :, 3], view_dirs, xmin, xmax).mean()

        def pose_api() -> torch.Tensor:
            corr = exp_map_SO3xR3(adjustment)
            corrected = torch.cat([corr[:, :, :3] @ c2w[:, :, :3], (c2w[:, :, 3] + corr[:, :, 3]).unsqueeze(-1)], dim=-1)
            return homography_error(c2w, corrected, xmin, xmax).mean()

        repeats = 200 if n <= 1000 else 30
        t_l2 = time_ms(l2, args.device, repeats)
        row = [t_l2]
        for fn in (adjusted, correction, pose_api):
            t = time_ms(fn, args.device, repeats)
            row += [t, t / t_l2]
        print(f"{n:>8} " + " ".join(f"{v:>13.1f}" if i in (2, 4, 6) else f"{v:>13.3f}" for i, v in enumerate(row)))


if __name__ == "__main__":
    main()
