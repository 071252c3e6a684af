"""Probe (issue 22): align the degraded cameras of a trained run against its frozen field, and score them.

::

    cd /work/main && PYTHONPATH=. nice -n 5 .venv/bin/python -m benchmarks.weak_alignment_probe \\
        --run benchmark_results/weak_frames/work/toybox-blur3__3deg-5pct__s0__posefix-photometric/run/posefix-small/run/config.yml \\
        --steps 100 --lr 1e-3 --rays 256

The default refine row keeps no NeRF run; ``--make-default-run OUT`` runs ``posefix refine`` as
``benchmarks.weak_frames``' ``default`` row does (toybox seed 0) and keeps a copy of its work directory in ``OUT/work``
(the run: ``OUT/work/runs/refine/posefix-small/run/config.yml``; its dataset path is ``OUT/refined.partial``,
linked to ``OUT/work``)::

    PYTHONPATH=. OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python -m benchmarks.weak_alignment_probe --make-default-run /tmp/probe/run_b

Loads the run (``eval_setup``), takes its training cameras with the run's own corrections applied (the poses it
renders, dataparser frame, OpenGL axes), optimises one further ``SO3xR3`` correction per degraded camera against
the frozen model, composes it with the run's correction (``[R_a R_adj | t_adj + t_a]``) and scores the poses read
back in the input frame exactly as :func:`benchmarks.weak_frames.split_errors` does (Sim(3) on the sharp images).

Modes:

* ``rays``: :func:`nerf_posefix.plugin.test_pose_alignment.align_test_poses` (random pixels each step), each view
  with its own appearance embedding (``--embedding own``) or the average one (``average``, eval mode's);
* ``image``: whole images rendered at ``1/--factor`` resolution (block centres), the render optionally blurred by a
  Gaussian (``--render-blur`` low-res px; ``auto``: matched to a 3 px blur of the full-res image) and compared
  with the area-downsampled image; ``--factor`` may list a coarse-to-fine schedule (steps split evenly);
* ``patches``: :func:`align_patches`, full-resolution patches of ``--patch`` x ``--patch`` rays ``--stride`` px apart,
  each blurred by its view's Gaussian (``--blur`` px, or ``fit``: per view, the ``--blur-grid`` value that best matches
  the image at the starting pose) and compared with the image at the patch's fully blurred centre; ``--patch 1
  --blur 0`` is the rays mode with this function's own pixel draws; ``--rotation-only`` keeps the translations.

Every mode prints the degraded frames' rotation (deg) and centre (% of the radius) errors one by one too.
``--make-default-run OUT --no-weak-alignment`` keeps the run's poses as the joint training leaves them (no weak
alignment), so that every mode starts from the same poses the default alignment would.

Measured (toybox blur 3 px, seed 0, 2 shared cores; median rotation error of the 16 degraded views, deg; sharp
views unchanged by construction, Sim(3) fitted on them; 256 rays per view unless said):

====================================================  ======  =====================================================
run (``--run``)                                        before  after
====================================================  ======  =====================================================
posefix refine default, NeRF stage kept (run a)        0.657   own emb.: 50 st. lr 1e-3 0.302, 150 st. 0.264;
                                                                50 st. 128 rays 0.414; average emb. 50 st. 0.637;
                                                                lr 2e-3: 50 st. 0.244, 100 st. 0.246
posefix refine default, later front end (run b)        0.777   lr 1e-3: 50 st. 0.524, 100 st. 0.282;
                                                                lr 2e-3: 50 st. 0.281, 100 st. 0.255;
                                                                image mode lr 2e-3 50 st.: factor 8 blurred 0.665,
                                                                factor 8 unblurred 0.653, factor 4 blurred 0.552
posefix-photometric (no tracks, sharp views 0.75)      0.916   lr 1e-3: 50 st. 0.575, 150 st. 0.457
nerfstudio refiner (sharp views 0.58)                  1.571   lr 1e-3: 50 st. 0.882, 150 st. 0.651
====================================================  ======  =====================================================

Each camera's own appearance embedding is what makes it work (the average one barely moves the error), and
random full-resolution pixels beat whole low-resolution renders, blurred to match or not.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from nerf_posefix.plugin.weak_alignment import OwnAppearance

ROOT = Path(__file__).resolve().parents[1]


def load(config_path: Path) -> tuple[Any, Any, list[str]]:
    from nerfstudio.utils.eval_utils import eval_setup

    from nerf_posefix.workflows.experiment import quiet_nerfstudio

    with quiet_nerfstudio(True):
        _, pipeline, _, _ = eval_setup(config_path, test_mode="inference")
    dataset = pipeline.datamanager.train_dataset
    return pipeline, dataset, [base_name(f) for f in dataset.image_filenames]


def base_name(path: Any) -> str:
    """The image's own name: refine's training data flattens ``images/000.png`` to ``images__000.png``."""
    return Path(path).name.split("__")[-1]


def score(config_path: Path, data: Path, weak: set[str], extra: dict[int, tuple[np.ndarray, np.ndarray]]
          ) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """weak_frames' split errors of the run's refined poses, with ``extra[i] = (R_a, t_a)`` composed onto training
    camera ``i``'s correction (dataparser frame), and per degraded image its rotation (deg) and centre (% of the
    radius) errors after the same Sim(3) on the sharp images."""
    from benchmarks.weak_frames import aligned_errors, split_errors
    from nerf_posefix.geometry.poses import opengl_to_opencv
    from nerf_posefix.io.camera_set import CameraSet
    from nerf_posefix.io.transforms_json import applied_transform, frame_name, read_transforms_frames, read_transforms_json
    from nerf_posefix.plugin.run_reader import _refined_json_poses, load_refined_run
    from nerf_posefix.workflows.experiment import quiet_nerfstudio

    with quiet_nerfstudio(True):
        run = load_refined_run(config_path)
    for i, (rot, trans) in extra.items():
        corr = run.correction[i]
        run.correction[i] = np.concatenate([rot @ corr[:, :3], (corr[:, 3] + trans)[:, None]], axis=1)
    meta = read_transforms_frames(run.info.transforms_path)
    poses, refined = _refined_json_poses(run, meta)
    explicit, _ = applied_transform(meta)
    names = [base_name(frame_name(f)) for f in meta["frames"]]
    cams = CameraSet(names=names, c2w=opengl_to_opencv(np.linalg.inv(explicit) @ poses), source="probe")
    cams = cams.subset(np.nonzero(refined)[0])
    gt = read_transforms_json(data / "transforms_gt.json")
    names, sharp, rot, centre = aligned_errors(gt, cams, weak)
    per_frame = {n: (round(float(r), 3), round(float(c), 2)) for n, s, r, c in zip(names, sharp, rot, centre) if not s}
    return split_errors(gt, cams, weak), per_frame


def trained_cameras(pipeline: Any, dataset: Any) -> Any:
    """The training cameras at the poses the run renders (its correction applied)."""
    from nerf_posefix.plugin.test_pose_alignment import corrected_cameras

    cams = dataset.cameras
    with torch.no_grad():
        adj = pipeline.model.camera_optimizer(torch.arange(len(cams))).detach().cpu()
    return corrected_cameras(cams, adj[:, :3, :3], adj[:, :3, 3])


def gaussian_kernel(sigma: float, radius: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[2 radius + 1]`` normalised Gaussian of ``sigma`` samples (a unit impulse for ``sigma`` ~ 0)."""
    x = torch.arange(-radius, radius + 1, dtype=dtype)
    k = (x == 0).to(dtype) if sigma <= 1e-3 else torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def separable_valid(img: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """``img [B, C, H, W]`` convolved by ``k [m]`` along both axes, valid part only: ``[B, C, H - m + 1, W - m + 1]``."""
    c, m = img.shape[1], len(k)
    k = k.to(img)
    img = torch.nn.functional.conv2d(img, k.view(1, 1, 1, m).expand(c, 1, 1, m), groups=c)
    return torch.nn.functional.conv2d(img, k.view(1, 1, m, 1).expand(c, 1, m, 1), groups=c)


def gaussian_blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """``img [B, C, H, W]`` blurred by a separable Gaussian (reflect padding)."""
    if sigma <= 0:
        return img
    r = max(1, int(math.ceil(3 * sigma)))
    return separable_valid(torch.nn.functional.pad(img, (r, r, r, r), mode="reflect"), gaussian_kernel(sigma, r, img.dtype))


def align_images(model: Any, cams: Any, gts: list[torch.Tensor], steps: int, lr: float, factors: Sequence[int],
                 render_blur: str, gt_blur: float) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Whole-image alignment at low resolution (see the module docstring); returns ``(R_a [N,3,3], t_a [N,3], losses)``."""
    from nerfstudio.cameras.lie_groups import exp_map_SO3xR3

    from nerf_posefix.plugin.test_pose_alignment import _gt_rgb, frozen_model

    n = len(cams)
    tangent = torch.zeros(n, 6, requires_grad=True)
    opt = torch.optim.Adam([tangent], lr=lr)
    losses: list[float] = []
    per = max(1, steps // len(factors))
    with frozen_model(model), torch.enable_grad():
        for stage, f in enumerate(factors):
            h, w = int(cams.height[0]) // f, int(cams.width[0]) // f
            ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
            coords = torch.stack([ys, xs], -1).float().view(-1, 2) * f + f / 2.0  # block centres [h*w, 2]
            coords = coords.repeat(n, 1)
            view = torch.arange(n).repeat_interleave(h * w)
            target = torch.stack([torch.nn.functional.avg_pool2d(_gt_rgb(model, g).permute(2, 0, 1)[None], f)[0] for g in gts])  # [N,3,h,w]
            sigma = math.sqrt(gt_blur ** 2 + f * f / 12.0) / f if render_blur == "auto" else float(render_blur)
            n_steps = per if stage < len(factors) - 1 else steps - per * (len(factors) - 1)
            for _ in range(n_steps):
                bundle = cams.generate_rays(camera_indices=view[:, None], coords=coords)
                adj = exp_map_SO3xR3(tangent)[view]
                bundle.origins = bundle.origins + adj[:, :3, 3]
                bundle.directions = torch.bmm(adj[:, :3, :3], bundle.directions[..., None])[..., 0]
                rgb = model(bundle)["rgb"].view(n, h, w, 3).permute(0, 3, 1, 2)
                rgb = gaussian_blur(rgb, sigma)
                loss = ((rgb - target) ** 2).mean(dim=(1, 2, 3))
                opt.zero_grad(set_to_none=True)
                loss.sum().backward()
                opt.step()
                losses.append(float(loss.mean()))
    with torch.no_grad():
        adj = exp_map_SO3xR3(tangent.detach())
    return adj[:, :3, :3].double().numpy(), adj[:, :3, 3].double().numpy(), losses


def align_patches(model: Any, cams: Any, gts: list[torch.Tensor], steps: int, lr: float, size: int, stride: int, per_view: int,
                  blur: str, grid: Sequence[float], rotation_only: bool, seed: int
                  ) -> tuple[np.ndarray, np.ndarray, list[float], np.ndarray]:
    """Alignment on rendered patches blurred like the image: each step renders ``per_view`` patches of ``size x size``
    rays ``stride`` pixels apart per view, blurs each by its view's Gaussian (σ px: ``blur``, or ``'fit'``: the
    ``grid`` value that best matches the image at the starting pose, per view) and compares the fully blurred
    centre (valid convolution) with the image's pixels there. ``size`` 1: single random pixels (the rays mode
    with this function's draws). Returns ``(R_a [N,3,3], t_a [N,3], losses, σ [N])``."""
    from nerfstudio.cameras.lie_groups import exp_map_SO3xR3

    from nerf_posefix.plugin.test_pose_alignment import _gt_rgb, frozen_model

    n = len(cams)
    height, width = int(gts[0].shape[0]), int(gts[0].shape[1])
    radius = int(math.ceil(2.5 * max(grid if blur == "fit" else [float(blur)]) / stride)) if size > 1 else 0
    if size - 2 * radius < 1:
        raise SystemExit(f"patches of {size} samples cannot hold a blur kernel of radius {radius} samples")
    gen = torch.Generator().manual_seed(seed)
    tangent = torch.zeros(n, 6, requires_grad=True)
    if rotation_only:
        tangent.register_hook(lambda grad: grad * torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0]))
    opt = torch.optim.Adam([tangent], lr=lr)
    grid_y, grid_x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    inner = torch.arange(radius, size - radius)

    def draw(count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        extent = (size - 1) * stride + 1
        views = torch.arange(n).repeat_interleave(count)
        return (views, torch.randint(0, height - extent + 1, (n * count,), generator=gen),
                torch.randint(0, width - extent + 1, (n * count,), generator=gen))

    def render(views: torch.Tensor, y0: torch.Tensor, x0: torch.Tensor, tang: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The patches' renders ``[P, 3, size, size]`` and the images' blurred centres ``[P, 3, c, c]``."""
        coords = torch.stack([y0[:, None, None] + stride * grid_y + 0.5, x0[:, None, None] + stride * grid_x + 0.5], -1).view(-1, 2)
        ray_view = views.repeat_interleave(size * size)
        bundle = cams.generate_rays(camera_indices=ray_view[:, None], coords=coords.float())
        adj = exp_map_SO3xR3(tang)[ray_view]
        bundle.origins = bundle.origins + adj[:, :3, 3]
        bundle.directions = torch.bmm(adj[:, :3, :3], bundle.directions[..., None])[..., 0]
        rgb = model(bundle)["rgb"].view(len(views), size, size, 3).permute(0, 3, 1, 2)
        target = torch.stack([_gt_rgb(model, gts[int(v)][(y + stride * inner).long()][:, (x + stride * inner).long()]).permute(2, 0, 1)
                              for v, y, x in zip(views, y0, x0)])
        return rgb, target

    def blurred(rgb: torch.Tensor, sigma_px: float) -> torch.Tensor:
        return separable_valid(rgb, gaussian_kernel(sigma_px / stride, radius))

    losses: list[float] = []
    with frozen_model(model), torch.enable_grad():
        if blur == "fit" and size > 1:
            views, y0, x0 = draw(8)
            with torch.no_grad():
                rgb, target = render(views, y0, x0, tangent.detach())
                table = np.array([[float(((blurred(rgb[views == v], s) - target[views == v]) ** 2).mean()) for s in grid]
                                  for v in range(n)])  # [N, len(grid)]
            sigmas = np.array([float(grid[int(j)]) for j in table.argmin(axis=1)])
        else:
            sigmas = np.full(n, 0.0 if blur == "fit" else float(blur))
        for _ in range(steps):
            views, y0, x0 = draw(per_view)
            rgb, target = render(views, y0, x0, tangent)
            err = torch.stack([((blurred(rgb[p:p + 1], float(sigmas[int(v)])) - target[p:p + 1]) ** 2).mean()
                               for p, v in enumerate(views)])  # [P]
            per = torch.zeros(n).index_add(0, views, err) / per_view  # [N]
            opt.zero_grad(set_to_none=True)
            per.sum().backward()
            opt.step()
            losses.append(float(per.detach().mean()))
    with torch.no_grad():
        adj = exp_map_SO3xR3(tangent.detach())
    return adj[:, :3, :3].double().numpy(), adj[:, :3, 3].double().numpy(), losses, sigmas


def make_default_run(out: Path, data: Path, seed: int, weak_alignment: bool = True) -> None:
    """``posefix refine`` with the weak_frames default row's options, its NeRF stage's work directory kept
    (``weak_alignment=False``: the run's poses are the joint training's, before any alignment)."""
    import os
    import shutil

    import nerf_posefix.workflows.refine as refine_module
    from nerf_posefix.workflows.refine import RefineOptions, refine

    original = refine_module._nerf_stage

    def kept(options, inp, stage_input, work, *args, **kwargs):  # noqa: ANN001,ANN002,ANN003,ANN202
        result = original(options, inp, stage_input, work, *args, **kwargs)
        shutil.copytree(work, out / "work", dirs_exist_ok=True, symlinks=True)
        return result

    refine_module._nerf_stage = kept
    try:
        result = refine(RefineOptions(output=out / "refined", poses=data / "transforms.json", threads=1, seed=seed, quiet=True,
                                      overwrite=True, weak_alignment=weak_alignment))
    finally:
        refine_module._nerf_stage = original
    link = out / "refined.partial"  # the run's config names the (removed) work directory as its dataset's home
    if not link.exists():
        os.symlink((out / "work").resolve(), link)
    moved = result.summary.get("weak_alignment") or {}
    print(f"iterations {result.summary.get('iterations')}, training {result.summary.get('training_seconds'):.0f} s, weak alignment "
          f"ran {moved.get('ran')} ({moved.get('rotation_deg_median', 0.0):.3f} deg median move)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="RUN/config.yml")
    parser.add_argument("--make-default-run", type=Path, metavar="OUT", help="make a default refine run to probe (see above)")
    parser.add_argument("--data", type=Path, default=ROOT / "benchmark_results/weak_frames/scenes/toybox-blur3/3deg-5pct/s0/data")
    parser.add_argument("--degraded", type=Path, default=ROOT / "benchmark_results/weak_frames/sources/toybox_blur3/degraded.json")
    parser.add_argument("--mode", choices=["rays", "image", "patches"], default="rays")
    parser.add_argument("--steps", type=int, nargs="+", default=[100], help="budgets (each from the trained poses)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--rays", type=int, default=256)
    parser.add_argument("--embedding", choices=["own", "average"], default="own")
    parser.add_argument("--factor", type=int, nargs="+", default=[4])
    parser.add_argument("--render-blur", default="0")
    parser.add_argument("--gt-blur", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-weak-alignment", action="store_true", help="--make-default-run without the weak alignment")
    parser.add_argument("--patch", type=int, default=32, help="patches mode: samples per patch side (1: single pixels)")
    parser.add_argument("--stride", type=int, default=2, help="patches mode: pixels between a patch's samples")
    parser.add_argument("--patches", type=int, default=2, help="patches mode: patches per view and step")
    parser.add_argument("--blur", default="fit", help="patches mode: the render's blur σ (px), or 'fit' per view")
    parser.add_argument("--blur-grid", type=float, nargs="+", default=[0, 1, 2, 3, 4, 5, 6, 8], help="σ (px) tried by 'fit'")
    parser.add_argument("--rotation-only", action="store_true", help="patches mode: the translations stay")
    args = parser.parse_args(argv)
    if args.make_default_run is not None:
        make_default_run(args.make_default_run, args.data, args.seed, weak_alignment=not args.no_weak_alignment)
        return 0
    if args.run is None:
        parser.error("--run is required")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    from nerf_posefix.plugin.test_pose_alignment import TestPoseAlignmentConfig, align_test_poses

    weak = set(json.loads(args.degraded.read_text())["images"])
    t0 = time.perf_counter()
    pipeline, dataset, names = load(args.run)
    idx = [k for k, nm in enumerate(names) if nm in weak]
    print(f"loaded in {time.perf_counter() - t0:.0f} s; {len(idx)} degraded of {len(names)}", flush=True)
    before, before_frames = score(args.run, args.data, weak, {})
    print("before:", json.dumps({k: round(v, 4) for k, v in before.items()}), flush=True)
    print("  per degraded frame (rotation deg, centre %):", before_frames, flush=True)
    cams = trained_cameras(pipeline, dataset)[torch.tensor(idx)]
    gts = [dataset.get_image_float32(k) for k in idx]
    model = pipeline.model
    wrapped = OwnAppearance(model, torch.tensor(idx)) if args.embedding == "own" else model
    for steps in args.steps:
        t0 = time.perf_counter()
        if args.mode == "rays":
            res = align_test_poses(wrapped, cams, gts, TestPoseAlignmentConfig(steps, args.lr, args.rays, args.seed))
            rot, trans = res.rotation.double().numpy(), res.translation.double().numpy()
            extra_info = f"loss {np.mean(res.loss_before):.5f} -> {np.mean(res.loss_after):.5f}"
        elif args.mode == "patches":
            rot, trans, losses, sigmas = align_patches(wrapped, cams, gts, steps, args.lr, args.patch, args.stride, args.patches,
                                                       args.blur, args.blur_grid, args.rotation_only, args.seed)
            extra_info = f"loss {losses[0]:.5f} -> {losses[-1]:.5f}, render blur σ {sigmas.tolist()} px"
        else:
            rot, trans, losses = align_images(wrapped, cams, gts, steps, args.lr, args.factor, args.render_blur, args.gt_blur)
            extra_info = f"loss {losses[0]:.5f} -> {losses[-1]:.5f}"
        secs = time.perf_counter() - t0
        moved = np.degrees(np.arccos(np.clip((np.trace(rot, axis1=1, axis2=2) - 1) / 2, -1, 1)))
        extra = {i: (rot[k], trans[k]) for k, i in enumerate(idx)}
        after, after_frames = score(args.run, args.data, weak, extra)
        print(f"steps {steps} ({secs:.0f} s, {extra_info}, median move {np.median(moved):.3f} deg):",
              json.dumps({k: round(v, 4) for k, v in after.items()}), flush=True)
        print("  per degraded frame (rotation deg, centre %):", after_frames, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
