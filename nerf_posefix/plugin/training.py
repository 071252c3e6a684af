"""In-process nerfstudio training: one reusable runner for ``posefix refine``, ``posefix demo`` and
``benchmarks/noisy_pose.py``.

Everything that trains a posefix (or any nerfstudio) method from Python should go through this module
instead of ``ns-train`` or its own copy of the trainer set-up:

* :func:`method_config` returns a fresh copy of a method's ``TrainerConfig`` (``posefix``,
  ``posefix-small`` from :mod:`nerf_posefix.plugin.method_configs`, or any method nerfstudio knows).
* :func:`in_process_config` turns it into a config that runs here: given data, output directory and
  iteration count, CPU by default (``machine.device_type``), no viewer (``vis`` = tensorboard events
  only), no console logger or profiler, no evaluation during training unless asked, and nerfstudio's
  plain single-process ``VanillaDataManager`` instead of ``ParallelDataManager`` (which spawns worker
  processes and so needs an ``if __name__ == "__main__":`` guard in every entry script). Any other field
  is set with ``overrides`` (``{"pipeline.model.camera_optimizer.weight": 0.0, ...}``).
* :func:`run_training` trains it with a progress display (rich progress bar with the iteration count,
  rate, loss and ETA on a terminal; a plain line every 10 % otherwise) and returns a
  :class:`TrainingRun` (the run's ``config.yml`` and the :class:`PosefixTrainer`, whose pipeline holds the
  trained model). :func:`train` is the same returning only the ``config.yml`` path.

Run directory and resume
------------------------
The run directory is nerfstudio's ``output_dir / experiment_name / method_name / timestamp``; the
timestamp defaults to the fixed ``"run"`` so a caller knows where the run is and can resume it. It holds
``config.yml``, ``dataparser_transforms.json``, ``nerfstudio_models/step-XXXXXXXXX.ckpt`` (only the latest;
written atomically every ``steps_per_save`` steps and at the end) and :data:`STATE_FILE`
(``{"completed_iterations": k, "total_iterations": n, "checkpoint": ...}``), written after each
checkpoint. ``max_num_iterations`` is the **total** number of iterations of the run: with
``resume=True`` and a checkpoint in the run directory, training continues from the latest checkpoint
(model, optimizers, schedulers, step) for the remaining ``total - completed`` iterations (none if the run
is complete); without ``resume``, stale checkpoints of that run directory are deleted and training starts
from scratch. Ctrl-C (``KeyboardInterrupt``) or SIGTERM during training saves a checkpoint of the last
completed iteration before the exception propagates, so an interrupted run loses at most the iteration
in flight. ``max_num_iterations = 0`` trains nothing but still writes the initial checkpoint and
``dataparser_transforms.json`` (an export then returns the input poses).

Checkpoints load under torch >= 2.6 (``weights_only=True``) through the allow-list of
:mod:`nerf_posefix.plugin.checkpoint`, registered when :mod:`nerf_posefix.plugin.method_configs` is
imported (this module imports it).

nerfstudio keeps event writers in module-level lists; :func:`run_training` resets them before and closes
them after each run, so several runs in one process (tests, benchmarks) do not write into each other's
event files.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional, Union

from nerf_posefix.errors import InputError

if TYPE_CHECKING:
    from nerfstudio.engine.trainer import Trainer, TrainerConfig

#: Written in the run directory after every checkpoint.
STATE_FILE = "posefix_training_state.json"
#: Default fixed run name (nerfstudio's ``timestamp``) so that runs can be found and resumed.
DEFAULT_TIMESTAMP = "run"

Overrides = Union[Mapping[str, Any], Callable[["TrainerConfig"], None], None]


# ---------------------------------------------------------------------------------------------
# configs


def method_config(method: str) -> "TrainerConfig":
    """A deep copy of the ``TrainerConfig`` of ``method``: ``posefix``/``posefix-small`` (this plugin) or
    any method in nerfstudio's registry (``nerfacto``, ...; note that nerfstudio's own models build
    LPIPS, which downloads weights and fails offline).

    Raises:
        InputError: unknown method.
    """
    from nerf_posefix.plugin.method_configs import posefix_method, posefix_small_method

    plugin = {"posefix": posefix_method, "posefix-small": posefix_small_method}
    if method in plugin:
        return copy.deepcopy(plugin[method].config)
    from nerfstudio.configs.method_configs import all_methods

    if method not in all_methods:
        raise InputError(f"unknown method {method!r} (posefix, posefix-small or a nerfstudio method)")
    return copy.deepcopy(all_methods[method])


def apply_overrides(config: "TrainerConfig", overrides: Overrides) -> None:
    """Set fields of ``config`` in place: ``overrides`` maps dotted attribute paths relative to the
    ``TrainerConfig`` (``"pipeline.model.camera_optimizer.weight"``; dictionary keys too, e.g.
    ``"optimizers.camera_opt.optimizer.lr"``) to values, or is a callable that edits the config.

    Raises:
        InputError: a path that does not name an existing field.
    """
    if overrides is None:
        return
    if callable(overrides):
        overrides(config)
        return
    for dotted, value in overrides.items():
        target: Any = config
        parts = dotted.split(".")
        for k, part in enumerate(parts):
            is_dict = isinstance(target, dict)
            if (is_dict and part not in target) or (not is_dict and not hasattr(target, part)):
                where = ".".join(parts[:k]) or "TrainerConfig"
                raise InputError(f"override {dotted!r}: {where} ({type(target).__name__}) has no field {part!r}")
            if k < len(parts) - 1:
                target = target[part] if is_dict else getattr(target, part)
        if isinstance(target, dict):
            target[parts[-1]] = value
        else:
            setattr(target, parts[-1], value)


def _plain_datamanager(config: "TrainerConfig") -> None:
    """Replace a ``ParallelDataManagerConfig`` (worker processes) by a
    :class:`~nerf_posefix.plugin.datamanager.PosefixDataManagerConfig` (nerfstudio's vanilla datamanager,
    which checks its image cache against the memory) with the same field values."""
    from nerfstudio.data.datamanagers.parallel_datamanager import ParallelDataManagerConfig

    from nerf_posefix.plugin.datamanager import PosefixDataManagerConfig

    dm = config.pipeline.datamanager
    if isinstance(dm, ParallelDataManagerConfig):
        names = [f.name for f in dataclasses.fields(PosefixDataManagerConfig) if f.name != "_target"]
        config.pipeline.datamanager = PosefixDataManagerConfig(**{n: getattr(dm, n) for n in names if hasattr(dm, n)})


def in_process_config(
    config: Union["TrainerConfig", str],
    data: Optional[Path] = None,
    output_dir: Optional[Path] = None,
    max_iterations: Optional[int] = None,
    *,
    experiment_name: Optional[str] = None,
    timestamp: Optional[str] = DEFAULT_TIMESTAMP,
    device: Literal["cpu", "cuda", "mps"] = "cpu",
    seed: Optional[int] = None,
    steps_per_save: Optional[int] = None,
    evaluate: bool = False,
    overrides: Overrides = None,
) -> "TrainerConfig":
    """A copy of ``config`` (or of the config of the method named ``config``) set up to train in this
    process (see the module docstring).

    Args:
        config: a ``TrainerConfig`` (copied, not modified) or a method name (:func:`method_config`).
        data: the dataset (a directory with ``transforms.json`` for the posefix methods); None keeps the
            config's.
        output_dir: nerfstudio's ``output_dir``; None keeps the config's.
        max_iterations: total training iterations (>= 0); None keeps the config's.
        experiment_name: None keeps the config's (nerfstudio then uses the data directory's name).
        timestamp: the run directory name; None: nerfstudio's date-time stamp (a new directory per call,
            which cannot be resumed by name).
        device: ``machine.device_type``.
        seed: ``machine.seed`` (None keeps the config's).
        steps_per_save: checkpoint interval (None keeps the config's).
        evaluate: keep the config's evaluation steps (they need an eval split and cost time); by default
            no evaluation runs during training.
        overrides: applied last (:func:`apply_overrides`).

    Raises:
        InputError: negative ``max_iterations`` or ``steps_per_save``, bad overrides, unknown method.
    """
    config = method_config(config) if isinstance(config, str) else copy.deepcopy(config)
    if max_iterations is not None:
        if max_iterations < 0:
            raise InputError(f"the number of training iterations must be >= 0, got {max_iterations}")
        config.max_num_iterations = int(max_iterations)
    if output_dir is not None:
        config.output_dir = Path(output_dir)
    if experiment_name is not None:
        config.experiment_name = experiment_name
    if timestamp is not None:
        config.timestamp = timestamp
    if data is not None:
        config.data = None
        config.pipeline.datamanager.data = Path(data)
        config.pipeline.datamanager.dataparser.data = Path(data)
    config.machine.device_type = device
    config.machine.num_devices = 1
    config.machine.num_machines = 1
    if seed is not None:
        config.machine.seed = int(seed)
    if device != "cuda":
        config.mixed_precision = False
    # No viewer: tensorboard events only (or wandb/comet if the config asked for them besides the viewer).
    vis = str(config.vis)
    config.vis = vis.split("+", 1)[1] if vis.startswith("viewer+") else ("tensorboard" if "viewer" in vis else vis)
    config.viewer.quit_on_train_completion = True
    config.logging.local_writer.enable = False
    config.logging.profiler = "none"
    if steps_per_save is not None:
        if steps_per_save < 0:
            raise InputError(f"the checkpoint interval must be >= 0, got {steps_per_save}")
        config.steps_per_save = int(steps_per_save)
    config.save_only_latest_checkpoint = True
    if not evaluate:
        config.steps_per_eval_batch = 0  # nerfstudio's step_check(step, 0) is never true
        config.steps_per_eval_image = 0
        config.steps_per_eval_all_images = 0
    _plain_datamanager(config)
    apply_overrides(config, overrides)
    return config


# ---------------------------------------------------------------------------------------------
# the trainer


def _make_trainer_class() -> type:
    """:class:`PosefixTrainer` (defined lazily: nerfstudio's trainer module is a heavy import)."""
    import torch
    from nerfstudio.engine.trainer import Trainer
    from nerfstudio.utils.rich_utils import CONSOLE

    from nerf_posefix.plugin.checkpoint import latest_checkpoint, load_checkpoint

    class _PosefixTrainer(Trainer):
        """nerfstudio's ``Trainer`` with atomic checkpoints, a run-state file for resuming, the last
        loss kept for the progress display, and a per-iteration hook.

        Attributes:
            completed_iterations: iterations trained so far in this run (including resumed ones).
            total_iterations: the run's total (``config.max_num_iterations`` when constructed).
            last_loss: the last training loss (float), or None.
            on_iteration: called with ``(completed_iterations, loss)`` after each iteration.
        """

        def __init__(self, config: "TrainerConfig", local_rank: int = 0, world_size: int = 1) -> None:
            super().__init__(config, local_rank, world_size)
            self.total_iterations = int(config.max_num_iterations)
            self.completed_iterations = 0
            self.last_loss: Optional[float] = None
            self.on_iteration: Optional[Callable[[int, Optional[float]], None]] = None

        def train_iteration(self, step: int):  # noqa: ANN201 (nerfstudio's TRAIN_INTERATION_OUTPUT)
            loss, loss_dict, metrics_dict = super().train_iteration(step)
            self.completed_iterations = step + 1
            self.last_loss = float(loss.detach())
            if self.on_iteration is not None:
                self.on_iteration(self.completed_iterations, self.last_loss)
            return loss, loss_dict, metrics_dict

        def save_checkpoint(self, step: int) -> None:
            """nerfstudio's checkpoint, written to a temporary file and renamed (an interruption never
            leaves a truncated ``.ckpt``), then the run-state file."""
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            ckpt_path = self.checkpoint_dir / f"step-{step:09d}.ckpt"
            tmp_path = self.checkpoint_dir / f".step-{step:09d}.ckpt.tmp"
            pipeline = self.pipeline.module if hasattr(self.pipeline, "module") else self.pipeline
            torch.save(
                {
                    "step": step,
                    "pipeline": pipeline.state_dict(),
                    "optimizers": {k: v.state_dict() for (k, v) in self.optimizers.optimizers.items()},
                    "schedulers": {k: v.state_dict() for (k, v) in self.optimizers.schedulers.items()},
                    "scalers": self.grad_scaler.state_dict(),
                },
                tmp_path,
            )
            os.replace(tmp_path, ckpt_path)
            if self.config.save_only_latest_checkpoint:
                for f in self.checkpoint_dir.glob("*.ckpt"):
                    if f != ckpt_path:
                        f.unlink()
            state = {
                "completed_iterations": self.completed_iterations,
                "total_iterations": self.total_iterations,
                "checkpoint": str(ckpt_path.relative_to(self.base_dir)),
                "method": self.config.method_name,
            }
            tmp_state = self.base_dir / f".{STATE_FILE}.tmp"
            tmp_state.write_text(json.dumps(state, indent=2), encoding="utf-8")
            os.replace(tmp_state, self.base_dir / STATE_FILE)

        def _load_checkpoint(self) -> None:
            """Load ``config.load_checkpoint`` (or the latest in ``config.load_dir``) with
            ``weights_only=True``; the next iteration is the number of completed iterations recorded
            in the run-state file (nerfstudio's ``step + 1`` without one)."""
            path = self.config.load_checkpoint
            if path is None and self.config.load_dir is not None:
                path = latest_checkpoint(self.config.load_dir)
            if path is None:
                return
            state = load_checkpoint(path)
            pipeline = self.pipeline.module if hasattr(self.pipeline, "module") else self.pipeline
            pipeline.load_pipeline(state["pipeline"], state["step"])
            self.optimizers.load_optimizers(state["optimizers"])
            if "schedulers" in state and self.config.load_scheduler:
                self.optimizers.load_schedulers(state["schedulers"])
            self.grad_scaler.load_state_dict(state["scalers"])
            self._start_step = int(state["step"]) + 1
            recorded = read_training_state(self.base_dir)
            if recorded is not None and Path(self.base_dir / recorded.get("checkpoint", "")) == Path(path):
                self._start_step = int(recorded["completed_iterations"])
            self.completed_iterations = self._start_step
            CONSOLE.print(f"Resuming from {path} ({self._start_step} iterations done)")

    return _PosefixTrainer


_TRAINER_CLASS: Optional[type] = None


def trainer_class() -> type:
    """The ``PosefixTrainer`` class (a ``nerfstudio.engine.trainer.Trainer`` subclass)."""
    global _TRAINER_CLASS
    if _TRAINER_CLASS is None:
        _TRAINER_CLASS = _make_trainer_class()
    return _TRAINER_CLASS


def read_training_state(run_dir: Path) -> Optional[dict[str, Any]]:
    """The run-state file of ``run_dir`` (:data:`STATE_FILE`), or None if absent or unreadable."""
    try:
        state = json.loads((Path(run_dir) / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and "completed_iterations" in state else None


# ---------------------------------------------------------------------------------------------
# running


@dataclass
class TrainingRun:
    """The result of :func:`run_training`.

    Attributes:
        config_path: the run's ``config.yml`` (for ``ns-eval``, exports, ...).
        run_dir: its directory.
        trainer: the trainer (its ``pipeline`` holds the trained model); None when a resumed run was
            already complete and nothing was loaded.
        start_iteration: iterations already done before this call (> 0 only when resuming).
        completed_iterations: iterations done in total.
        seconds: wall time of this call's training loop.
    """

    config_path: Path
    run_dir: Path
    trainer: Optional["Trainer"]
    start_iteration: int
    completed_iterations: int
    seconds: float


def _reset_event_writers() -> None:
    """Close and forget nerfstudio's module-level event writers and buffers."""
    from nerfstudio.utils import writer

    for w in list(writer.EVENT_WRITERS):
        tb = getattr(w, "tb_writer", None)
        if tb is not None:
            with contextlib.suppress(Exception):
                tb.close()
    writer.EVENT_WRITERS.clear()
    writer.EVENT_STORAGE.clear()
    writer.GLOBAL_BUFFER.clear()


def _seed_everything(seed: int) -> None:
    """As ``ns-train``: Python, NumPy and torch seeds."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def quiet_console(enabled: bool) -> Iterator[None]:
    """Silence nerfstudio's rich console (``nerfstudio.utils.rich_utils.CONSOLE``) while ``enabled``."""
    from nerfstudio.utils.rich_utils import CONSOLE

    previous = CONSOLE.quiet
    CONSOLE.quiet = enabled or previous
    try:
        yield
    finally:
        CONSOLE.quiet = previous


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """In the main thread, turn SIGTERM into ``KeyboardInterrupt`` (so a checkpoint is saved)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):  # noqa: ANN001, ARG001
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _ProgressDisplay:
    """A rich progress bar (terminal) or a plain line every 10 % (logs, pipes)."""

    def __init__(self, label: str, total: int, start: int, enabled: bool, quiet: bool) -> None:
        from nerfstudio.utils.rich_utils import CONSOLE
        from rich.console import Console

        self.total, self.start = total, start
        self.enabled = enabled and total > start
        self.console = Console(stderr=True) if quiet else CONSOLE
        self.label = label
        self.t0 = time.perf_counter()
        self.bar = None
        self.task = None
        self.next_line = start
        self.step_line = max(1, (total - start) // 10)
        if self.enabled and self.console.is_terminal:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("it"),
                TextColumn("{task.fields[rate]}"),
                TextColumn("{task.fields[loss]}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self.task = self.bar.add_task(label, total=total, completed=start, rate="", loss="")

    def __enter__(self) -> "_ProgressDisplay":
        if self.bar is not None:
            self.bar.start()
        elif self.enabled:
            self.console.print(f"{self.label}: iterations {self.start}/{self.total}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def update(self, done: int, loss: Optional[float]) -> None:
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.t0
        rate = (done - self.start) / max(elapsed, 1e-9)
        loss_text = f"loss {loss:.4g}" if loss is not None else ""
        if self.bar is not None:
            self.bar.update(self.task, completed=done, rate=f"{rate:.2f} it/s", loss=loss_text)
        elif done >= self.next_line + self.step_line or done == self.total:
            self.next_line = done
            eta = (self.total - done) / rate if rate > 0 else float("nan")
            self.console.print(
                f"{self.label}: {done}/{self.total} it, {rate:.2f} it/s, {loss_text}, "
                f"elapsed {elapsed:.0f} s, eta {eta:.0f} s"
            )


def _check_resumable(config: "TrainerConfig", run_dir: Path) -> None:
    """A resumed run directory must come from the same method and data."""
    import yaml

    saved_path = run_dir / "config.yml"
    if not saved_path.is_file():
        return
    try:
        saved = yaml.load(saved_path.read_text(encoding="utf-8"), Loader=yaml.Loader)
    except Exception as err:  # noqa: BLE001 (any YAML/construction error)
        raise InputError(f"{saved_path}: cannot read the run to resume ({type(err).__name__}: {err})") from None
    if saved.method_name != config.method_name:
        raise InputError(
            f"{saved_path}: the run to resume is a {saved.method_name!r} run, not {config.method_name!r}"
        )
    old = Path(saved.pipeline.datamanager.data or saved.pipeline.datamanager.dataparser.data).resolve()
    new = Path(config.pipeline.datamanager.data or config.pipeline.datamanager.dataparser.data).resolve()
    if old != new:
        raise InputError(f"{saved_path}: the run to resume was trained on {old}, not {new}")


def run_training(
    config: "TrainerConfig",
    *,
    progress: bool = True,
    resume: bool = False,
    quiet: bool = False,
    label: Optional[str] = None,
    callback: Optional[Callable[[int, Optional[float]], None]] = None,
    num_threads: Optional[int] = None,
) -> TrainingRun:
    """Train ``config`` in this process (see the module docstring for the run directory and resuming).

    ``config`` should come from :func:`in_process_config` (no viewer, single-process data manager, CPU).
    Its ``max_num_iterations`` is the run's total; it is left unchanged.

    Args:
        progress: show the progress display.
        resume: continue from the run directory's latest checkpoint if there is one; otherwise its stale
            checkpoints are deleted first.
        quiet: hide nerfstudio's own console messages (the progress display then goes to stderr).
        label: progress label (default: the method name).
        callback: called as ``callback(completed_iterations, loss)`` after every iteration (e.g. to stop
            a run by raising ``KeyboardInterrupt``).
        num_threads: torch CPU threads during this run (restored afterwards); None: unchanged. On a CPU
            shared with other jobs, 1 thread avoids OpenMP oversubscription (measured here on 2 busy cores:
            0.8 s per posefix-small iteration with 1 thread, 3 s with 2).

    Raises:
        InputError: a bad dataset (from the posefix pipeline's checks) or a run directory to resume that
            belongs to another method or dataset.
        KeyboardInterrupt: after saving a checkpoint of the last completed iteration.
    """
    from nerf_posefix.plugin import method_configs  # noqa: F401 (checkpoint allow-list, plugin classes)
    from nerf_posefix.plugin.checkpoint import latest_checkpoint

    total = int(config.max_num_iterations)
    if total < 0:
        raise InputError(f"the number of training iterations must be >= 0, got {total}")
    run_dir = config.get_base_dir()
    config_path = run_dir / "config.yml"
    ckpt_dir = config.get_checkpoint_dir()
    existing = sorted(ckpt_dir.glob("step-*.ckpt")) if ckpt_dir.is_dir() else []
    config.load_dir = None
    config.load_checkpoint = None
    if resume and existing:
        _check_resumable(config, run_dir)
        state = read_training_state(run_dir)
        latest = latest_checkpoint(ckpt_dir)
        if (
            state is not None
            and state.get("checkpoint") == str(latest.relative_to(run_dir))
            and int(state["completed_iterations"]) >= total
            and config_path.is_file()
        ):
            return TrainingRun(config_path, run_dir, None, int(state["completed_iterations"]), int(state["completed_iterations"]), 0.0)
        config.load_checkpoint = latest
    else:
        for stale in existing:
            stale.unlink()
        (run_dir / STATE_FILE).unlink(missing_ok=True)

    import torch

    _seed_everything(config.machine.seed)
    _reset_event_writers()
    trainer_cls = trainer_class()
    previous_threads = torch.get_num_threads()
    if num_threads is not None and num_threads > 0:
        torch.set_num_threads(int(num_threads))
    try:
        with quiet_console(quiet):
            config.save_config()
            trainer = trainer_cls(config, local_rank=0, world_size=1)
            trainer.setup()
        start = int(trainer._start_step)  # noqa: SLF001 (nerfstudio keeps it private)
        display = _ProgressDisplay(label or config.method_name, total, start, progress, quiet)

        def on_iteration(done: int, loss: Optional[float]) -> None:
            display.update(done, loss)
            if callback is not None:
                callback(done, loss)

        trainer.on_iteration = on_iteration
        trainer.config.max_num_iterations = max(total - start, 0)  # nerfstudio's loop runs this many more
        t0 = time.perf_counter()
        try:
            with display, quiet_console(quiet), _sigterm_as_interrupt():
                trainer.train()
        except KeyboardInterrupt:
            if trainer.completed_iterations > start:
                trainer.save_checkpoint(trainer.completed_iterations - 1)
                from nerfstudio.utils.rich_utils import CONSOLE

                CONSOLE.print(
                    f"[bold yellow]interrupted: checkpoint of iteration {trainer.completed_iterations} saved in "
                    f"{trainer.checkpoint_dir}"
                )
            raise
        finally:
            config.max_num_iterations = total
        seconds = time.perf_counter() - t0
    finally:
        _reset_event_writers()
        torch.set_num_threads(previous_threads)
    return TrainingRun(config_path, run_dir, trainer, start, trainer.completed_iterations, seconds)
