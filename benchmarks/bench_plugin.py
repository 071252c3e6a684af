"""Throughput of ``posefix-small`` vs ``nerfacto`` with the same field size, and the regulariser's share.

Both methods train on the same dataset with the same CPU-sized field (``small_model_config``), 1024
rays per batch, on CPU:

* ``posefix-small``: :class:`~nerf_posefix.plugin.model.PosefixModel` + homography camera optimizer
  (``PosefixPipeline``);
* ``nerfacto``: nerfstudio's ``NerfactoModel`` with its own ``CameraOptimizer`` (SO3xR3, default L2
  penalties) in a ``VanillaPipeline`` (built without LPIPS, whose weights would be downloaded; LPIPS
  plays no part in training iterations).

Each is set up with nerfstudio's ``Trainer`` and timed on ``Trainer.train_iteration`` (with the
training callbacks), in interleaved blocks so that both see the same load on a shared machine.
The regulariser's cost is timed on its own: ``camera_opt_regularizer`` forward + backward, plus the
metrics it adds to every iteration (``camera_opt_homography_*``, the tracks' median residual), and the
ground-truth pose metrics (computed every ``steps_per_log`` iterations, amortised); so are the track
term (a batch of ``track_batch`` observations, forward + backward) and the pixel prior.

Usage::

    python -m benchmarks.bench_plugin --data assets/toybox --iterations 60 --threads 1 --output bench.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def make_trainer(method: str, data: Path, output_dir: Path):  # noqa: ANN201
    import torch

    from nerfstudio.cameras.camera_optimizers import CameraOptimizerConfig
    from nerfstudio.models.nerfacto import NerfactoModelConfig
    from nerfstudio.pipelines.base_pipeline import VanillaPipelineConfig

    from nerf_posefix.plugin.method_configs import posefix_small_config, small_model_config
    from nerf_posefix.plugin.model import _lpips_construction_disabled

    config = posefix_small_config()
    if method == "nerfacto":
        small = small_model_config()
        fields = {k: getattr(small, k) for k in NerfactoModelConfig.__dataclass_fields__ if k not in ("_target", "camera_optimizer")}
        config.method_name = "nerfacto"
        config.pipeline = VanillaPipelineConfig(
            datamanager=config.pipeline.datamanager,
            model=NerfactoModelConfig(**fields, camera_optimizer=CameraOptimizerConfig(mode="SO3xR3")),
        )
    config.pipeline.datamanager.data = data
    config.output_dir = output_dir
    config.vis = "tensorboard"
    config.set_timestamp()
    torch.manual_seed(0)
    trainer = config.setup(local_rank=0, world_size=1)
    # plain nerfacto downloads LPIPS weights at construction; LPIPS plays no part in training iterations
    with _lpips_construction_disabled():
        trainer.setup()
    trainer.callbacks = trainer.pipeline.get_training_callbacks(
        __import__("nerfstudio.engine.callbacks", fromlist=["TrainingCallbackAttributes"]).TrainingCallbackAttributes(
            optimizers=trainer.optimizers, grad_scaler=trainer.grad_scaler, pipeline=trainer.pipeline, trainer=trainer
        )
    )
    return trainer


def run_iterations(trainer, start: int, count: int) -> list[float]:  # noqa: ANN001
    from nerfstudio.engine.callbacks import TrainingCallbackLocation

    times = []
    for step in range(start, start + count):
        t0 = time.perf_counter()
        trainer.pipeline.train()
        for cb in trainer.callbacks:
            cb.run_callback_at_location(step, location=TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
        trainer.train_iteration(step)
        for cb in trainer.callbacks:
            cb.run_callback_at_location(step, location=TrainingCallbackLocation.AFTER_TRAIN_ITERATION)
        times.append(time.perf_counter() - t0)
    return times


def time_regulariser(trainer, repeats: int = 200) -> dict[str, float]:  # noqa: ANN001
    import torch

    optimizer = trainer.pipeline.model.camera_optimizer
    with torch.no_grad():  # a non-trivial adjustment, as during training
        optimizer.pose_adjustment.normal_(0.0, 1e-2)

    def loss_and_backward() -> None:
        loss_dict: dict = {}
        optimizer.get_loss_dict(loss_dict)
        loss_dict["camera_opt_regularizer"].backward()

    def metrics() -> None:
        optimizer.get_metrics_dict({})

    def track_and_backward() -> None:
        optimizer.track_loss().backward()

    def pixel_prior_and_backward() -> None:
        (optimizer.pixel_prior_errors() / optimizer.prior_sigma**2).mean().backward()

    timed = [("regulariser_loss_backward_s", loss_and_backward), ("regulariser_metrics_s", metrics),
             ("pixel_prior_loss_backward_s", pixel_prior_and_backward)]
    if optimizer.has_tracks:
        timed.append(("track_term_loss_backward_s", track_and_backward))
    out = {}
    for name, fn in timed:
        fn()
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        out[name] = (time.perf_counter() - t0) / repeats
    model = trainer.pipeline.model
    if getattr(model, "_gt_c2w", None) is not None:
        model.pose_errors_vs_ground_truth()
        t0 = time.perf_counter()
        for _ in range(20):
            model.pose_errors_vs_ground_truth()
        out["gt_metrics_s"] = (time.perf_counter() - t0) / 20
    optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        optimizer.pose_adjustment.zero_()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("assets/toybox"))
    parser.add_argument("--iterations", type=int, default=60, help="timed iterations per method")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--block", type=int, default=10, help="iterations per interleaved block")
    parser.add_argument("--output", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()

    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        trainers = {m: make_trainer(m, args.data, Path(tmp) / m) for m in ("posefix-small", "nerfacto")}
        steps = {m: 0 for m in trainers}
        for m, trainer in trainers.items():
            run_iterations(trainer, 0, args.warmup)
            steps[m] = args.warmup
        times: dict[str, list[float]] = {m: [] for m in trainers}
        while min(len(t) for t in times.values()) < args.iterations:
            for m, trainer in trainers.items():
                n = min(args.block, args.iterations - len(times[m]))
                if n > 0:
                    times[m] += run_iterations(trainer, steps[m], n)
                    steps[m] += n
        reg = time_regulariser(trainers["posefix-small"])
        rays = trainers["posefix-small"].pipeline.datamanager.get_train_rays_per_batch()
        num_cameras = trainers["posefix-small"].pipeline.model.camera_optimizer.num_cameras
        log_every = max(trainers["posefix-small"].config.logging.steps_per_log, 1)

    result: dict = {"data": str(args.data), "rays_per_batch": rays, "num_cameras": num_cameras, "threads": torch.get_num_threads()}
    for m, t in times.items():
        med = statistics.median(t)
        result[m] = {"iterations": len(t), "median_s_per_iteration": med, "rays_per_s": rays / med}
    result["throughput_ratio_posefix_over_nerfacto"] = (
        result["posefix-small"]["rays_per_s"] / result["nerfacto"]["rays_per_s"]
    )
    iteration = result["posefix-small"]["median_s_per_iteration"]
    per_iter = reg["regulariser_loss_backward_s"] + reg["regulariser_metrics_s"]
    result["regulariser"] = {
        **reg,
        "share_of_iteration": per_iter / iteration,
        "track_term_share_of_iteration": reg.get("track_term_loss_backward_s", float("nan")) / iteration,
        "pixel_prior_share_of_iteration": reg["pixel_prior_loss_backward_s"] / iteration,
        "gt_metrics_share_of_iteration_amortised": reg.get("gt_metrics_s", 0.0) / log_every / iteration,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.output is not None:
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
