"""The ``posefix`` command: tyro subcommands, one module each under :mod:`nerf_posefix.cli`.

Every subcommand is a dataclass with a ``run()`` method. Modules keep heavy imports (nerfstudio,
matplotlib, open3d) inside ``run()`` so that ``posefix --help`` starts quickly.

Bad input raises :class:`nerf_posefix.errors.InputError` (or ``FileNotFoundError``); it is printed as
one line on stderr, without a traceback, and the process exits with code 2. So is any other
``OSError`` that reaches this level (a file-system failure: the path and the reason). Ctrl-C prints one
line and exits with code 130; further Ctrl-C presses while the process exits are ignored (no traceback
from exit handlers).
"""

from __future__ import annotations

import importlib
import signal
import sys
from typing import Any

from nerf_posefix.errors import InputError

# subcommand name -> "module:DataclassName".
SUBCOMMANDS: dict[str, str] = {
    "demo": "nerf_posefix.cli.demo:Demo",
    "perturb": "nerf_posefix.cli.perturb:Perturb",
    "refine": "nerf_posefix.cli.refine:Refine",
    "export": "nerf_posefix.cli.export:Export",
    "compare": "nerf_posefix.cli.compare:Compare",
    "evaluate": "nerf_posefix.cli.evaluate:Evaluate",
}


def _load_subcommands() -> dict[str, Any]:
    commands: dict[str, Any] = {}
    for name, target in SUBCOMMANDS.items():
        module_name, class_name = target.split(":")
        commands[name] = getattr(importlib.import_module(module_name), class_name)
    return commands


#: True when this process is the ``posefix`` command (:func:`entrypoint`), not a caller of :func:`main`.
_COMMAND_PROCESS = False


def ignore_further_interrupts() -> None:
    """In the ``posefix`` process, ignore SIGINT from now on: called once an interruption is being
    handled, so a second Ctrl-C cannot interrupt the handler or the interpreter's exit handlers (atexit)
    with a traceback. A no-op when :func:`main` is called from Python (tests, scripts)."""
    if not _COMMAND_PROCESS:
        return
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread
        pass


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand; returns the process exit code."""
    try:
        import tyro

        commands = _load_subcommands()
        config = tyro.extras.subcommand_cli_from_dict(
            commands,
            args=argv,
            description="nerf-posefix: refine camera poses with a NeRF under the homography pose prior.",
        )
        config.run()
    except (InputError, FileNotFoundError, FileExistsError) as err:
        print(f"posefix: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a file-system failure no workflow named more precisely
        from nerf_posefix.io.atomic import os_reason

        print(f"posefix: error: {os_reason(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        ignore_further_interrupts()
        print("\nposefix: interrupted", file=sys.stderr)
        return 130
    return 0


def entrypoint() -> None:
    """Console-script entry point (``posefix``)."""
    global _COMMAND_PROCESS
    _COMMAND_PROCESS = True
    import nerf_posefix.cli.main as importable  # the same flag when run as ``python -m nerf_posefix.cli.main``

    importable._COMMAND_PROCESS = True
    try:
        code = main()
    except KeyboardInterrupt:  # between the handlers above and here
        ignore_further_interrupts()
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    entrypoint()
