"""Loading nerfstudio checkpoints with ``torch.load(weights_only=True)`` (torch >= 2.6).

nerfstudio 1.1.5 saves ``{"step", "pipeline", "optimizers", "schedulers", "scalers"}`` with
``torch.save`` and reads it back with a bare ``torch.load(path, map_location="cpu")`` (``ns-eval``,
``ns-render``, ``ns-viewer``, ``ns-export`` through ``eval_utils.eval_load_checkpoint``; ``ns-train
--load-dir``/``--load-checkpoint`` through the trainer). Since torch 2.6 that call defaults to
``weights_only=True``, and it fails (nerfstudio issue #3683) on the only non-tensor objects a nerfstudio
checkpoint holds: the NumPy float64 learning rates that nerfstudio's schedulers store in
``_last_lr`` (their lambdas return NumPy scalars), pickled as ``numpy.core.multiarray.scalar`` with a
``numpy.dtype`` argument (measured with ``torch.serialization.get_unsafe_globals_in_checkpoint``).

Instead of switching ``weights_only`` off (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``, which would allow
arbitrary code in any file), :func:`register_checkpoint_safe_globals` adds exactly those NumPy
reconstructors to torch's allow-list with ``torch.serialization.add_safe_globals``. It runs when
:mod:`nerf_posefix.plugin.method_configs` is imported, which nerfstudio does in every ``ns-*`` command
while it discovers methods, before it loads any checkpoint. The allow-list is process-wide (that is
how torch's mechanism works) and only ever grows by these NumPy types.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch


def checkpoint_safe_globals() -> list[Any]:
    """The NumPy objects nerfstudio checkpoints pickle: the scalar reconstructor, ``numpy.dtype`` and
    the dtype classes of the scalar types NumPy scalars in optimizer/scheduler states can have."""
    try:  # NumPy >= 2
        from numpy._core.multiarray import scalar  # type: ignore[attr-defined]
    except ImportError:  # NumPy 1.x
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    dtype_classes = [
        type(np.dtype(t)) for t in (np.float64, np.float32, np.float16, np.int64, np.int32, np.uint8, np.bool_)
    ]
    return [scalar, np.dtype, *dtype_classes]


def register_checkpoint_safe_globals() -> None:
    """Allow nerfstudio checkpoints in ``torch.load(..., weights_only=True)`` (see the module docstring)."""
    torch.serialization.add_safe_globals(checkpoint_safe_globals())


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """``torch.load`` a nerfstudio checkpoint with ``weights_only=True`` and the allow-list above.

    The allow-list is (re-)registered process-wide rather than with the ``torch.serialization.safe_globals``
    context manager: that manager *removes* its globals on exit, even when they had been registered
    before, which would break every later ``torch.load`` of nerfstudio in the same process.
    """
    register_checkpoint_safe_globals()
    return torch.load(Path(path), map_location=map_location, weights_only=True)


def latest_checkpoint(checkpoint_dir: str | os.PathLike[str]) -> Path:
    """The ``step-XXXXXXXXX.ckpt`` with the largest step in ``checkpoint_dir`` (nerfstudio's naming).

    Raises:
        FileNotFoundError: no checkpoint there.
    """
    directory = Path(checkpoint_dir)
    found = sorted(directory.glob("step-*.ckpt")) if directory.is_dir() else []
    if not found:
        raise FileNotFoundError(f"{directory}: no nerfstudio checkpoint (step-*.ckpt)")
    return max(found, key=lambda p: int(p.stem.split("-")[-1]))
