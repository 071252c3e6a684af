"""``ns-train``'s refusals of bad input as one line, as ``posefix``'s own commands print them.

nerfstudio's ``ns-train`` catches nothing but ``KeyboardInterrupt`` around training: a posefix pipeline's
:class:`~nerf_posefix.errors.InputError` (a missing dataset, a broken COLMAP model, an image cache that cannot
fit, images too small for the front end) reached the user under a screen of traceback through nerfstudio's
trainer. :func:`install_refusal_hook`, which :class:`~nerf_posefix.plugin.method_configs.PosefixTrainerConfig`
calls when ``ns-train`` (or ``python -m nerfstudio.scripts.train``) saves a posefix run's config, makes an
*uncaught* ``InputError`` print ``posefix: error: MESSAGE`` on stderr instead (the process still exits with
status 1); every other exception keeps Python's traceback. In-process callers (``posefix refine``, tests,
scripts) catch ``InputError`` themselves and are not affected.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import TracebackType
from typing import Optional, Type

from nerf_posefix.errors import InputError


def launched_by_ns_train() -> bool:
    """Whether this process is nerfstudio's training command: the ``ns-train`` script, or
    ``python -m nerfstudio.scripts.train``."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return Path(sys.argv[0]).name == "ns-train" or getattr(spec, "name", None) == "nerfstudio.scripts.train"


def install_refusal_hook() -> None:
    """Print an uncaught :class:`InputError` as one line (``posefix: error: MESSAGE``); any other uncaught
    exception goes to the hook installed before. Installing twice keeps one hook."""
    previous = sys.excepthook
    if getattr(previous, "posefix_refusals", False):
        return

    def hook(kind: Type[BaseException], value: BaseException, traceback: Optional[TracebackType]) -> None:
        if isinstance(value, InputError):
            print(f"posefix: error: {value}", file=sys.stderr, flush=True)
            return
        previous(kind, value, traceback)

    hook.posefix_refusals = True  # type: ignore[attr-defined]
    sys.excepthook = hook
