"""The ``posefix`` command: tyro subcommands, one module each under :mod:`nerf_posefix.cli`.

Every subcommand is a dataclass with a ``run()`` method. Modules keep heavy imports (nerfstudio,
matplotlib, open3d) inside ``run()`` so that ``posefix --help`` starts quickly.

Bad input raises :class:`nerf_posefix.errors.InputError` (or ``FileNotFoundError``); it is printed as
one line on stderr, without a traceback, and the process exits with code 2. So is any other
``OSError`` that reaches this level (a file-system failure: the path and the reason). Ctrl-C prints one
line and exits with code 130, SIGTERM with code 143 (128 + the signal, as a shell reports a process it
ended); both run the same clean-up (a refine run keeps its checkpoint), and further signals while the
process exits are ignored (no traceback from exit handlers).

Output: the command prints the package's own lines. Third-party warnings that say nothing to the user
(:data:`QUIET_WARNINGS`: deprecation notices of torch / nerfstudio internals, the DataLoader's worker-count
advice, ...) are ignored while the command runs, and only then (:func:`quiet_warnings`; a caller's own
filters are restored afterwards, and nothing is filtered at import). ``-v`` / ``--verbose``, anywhere on
the command line, shows them, and nerfstudio's console for the commands that have a ``verbose`` option.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import signal
import sys
import warnings
from typing import Any, Iterator

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


#: Third-party warnings ignored while a command runs (unless ``-v``): ``(category, module regex, message
#: regex)``, the module being where the warning is attributed. Deprecation notices of the libraries'
#: own internals (the user can do nothing about them) and advice meant for the libraries' authors.
QUIET_WARNINGS: tuple[tuple[type[Warning], str, str], ...] = (
    (FutureWarning, r"(torch|torchvision|nerfstudio|gsplat|torchmetrics|tyro|timm)(\..*)?$", ""),
    (DeprecationWarning, r"(torch|torchvision|nerfstudio|gsplat|torchmetrics|tyro|timm|pkg_resources|jaxtyping)(\..*)?$", ""),
    (UserWarning, r"torch\.utils\.data(\..*)?$", r"This DataLoader will create \d+ worker processes"),
    (UserWarning, r"(torch|torchvision|torchmetrics)(\..*)?$", r".*(TypedStorage is deprecated|is deprecated|The parameter 'pretrained')"),
    (UserWarning, r"nerfstudio(\..*)?$", r"(Converting a tensor with requires_grad=True to a scalar|.*deprecated)"),
)

#: Command-line switches that show everything (accepted anywhere: ``posefix -v refine ...`` or ``posefix refine ... -v``).
VERBOSE_FLAGS = ("-v", "--verbose")


@contextlib.contextmanager
def quiet_warnings(enabled: bool = True) -> Iterator[None]:
    """While the block runs, ignore :data:`QUIET_WARNINGS` (when ``enabled``); the warning filters are
    restored afterwards, so code that calls :func:`main` keeps its own."""
    with warnings.catch_warnings():
        if enabled:
            for category, module, message in QUIET_WARNINGS:
                warnings.filterwarnings("ignore", message=message, category=category, module=module)
        yield


def split_verbose(argv: list[str]) -> tuple[list[str], bool]:
    """``argv`` without the :data:`VERBOSE_FLAGS`, and whether one was there."""
    rest = [a for a in argv if a not in VERBOSE_FLAGS]
    return rest, len(rest) != len(argv)


def _load_subcommands() -> dict[str, Any]:
    commands: dict[str, Any] = {}
    for name, target in SUBCOMMANDS.items():
        module_name, class_name = target.split(":")
        commands[name] = getattr(importlib.import_module(module_name), class_name)
    return commands


#: True when this process is the ``posefix`` command (:func:`entrypoint`), not a caller of :func:`main`.
_COMMAND_PROCESS = False


def ignore_further_interrupts() -> None:
    """In the ``posefix`` process, ignore SIGINT and SIGTERM from now on: called once an interruption is
    being handled, so a second signal cannot interrupt the handler or the interpreter's exit handlers
    (atexit) with a traceback. A no-op when :func:`main` is called from Python (tests, scripts)."""
    if not _COMMAND_PROCESS:
        return
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    except ValueError:  # not the main thread
        pass


class Terminated(KeyboardInterrupt):
    """SIGTERM in the ``posefix`` process, raised where Ctrl-C's KeyboardInterrupt would be, so the same
    clean-up runs (a subclass: every ``except KeyboardInterrupt`` handles it); the exit code is 143."""


#: Set once SIGTERM arrived (the training loop turns it into a plain KeyboardInterrupt of its own).
_TERMINATED = False


def _on_sigterm(signum: int, frame: Any) -> None:  # noqa: ARG001
    global _TERMINATED
    _TERMINATED = True
    raise Terminated(f"signal {signum}")


def interrupt_exit_code(err: BaseException) -> int:
    """The exit code of an interruption: 143 after SIGTERM (128 + 15), 130 after SIGINT (Ctrl-C)."""
    term = isinstance(err, Terminated) or (bool(err.args) and err.args[0] == f"signal {int(signal.SIGTERM)}")
    return 128 + int(signal.SIGTERM) if term or _TERMINATED else 128 + int(signal.SIGINT)


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand; returns the process exit code."""
    argv, verbose = split_verbose(list(sys.argv[1:] if argv is None else argv))
    try:
        import tyro

        commands = _load_subcommands()
        config = tyro.extras.subcommand_cli_from_dict(
            commands,
            args=argv,
            description="nerf-posefix: refine camera poses (robust bundle adjustment of tracks, optionally a NeRF under "
            "the homography pose prior). -v / --verbose (anywhere): also show third-party warnings and nerfstudio's console.",
        )
        if verbose and dataclasses.is_dataclass(config) and any(f.name == "verbose" for f in dataclasses.fields(config)):
            config.verbose = True
        with quiet_warnings(not verbose):
            config.run()
    except (InputError, FileNotFoundError, FileExistsError) as err:
        print(f"posefix: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a file-system failure no workflow named more precisely
        from nerf_posefix.io.atomic import os_reason

        print(f"posefix: error: {os_reason(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        ignore_further_interrupts()
        code = interrupt_exit_code(err)
        print("\nposefix: " + ("terminated (SIGTERM)" if code == 143 else "interrupted"), file=sys.stderr)
        return code
    return 0


def entrypoint() -> None:
    """Console-script entry point (``posefix``)."""
    global _COMMAND_PROCESS
    _COMMAND_PROCESS = True
    import nerf_posefix.cli.main as importable  # the same flag when run as ``python -m nerf_posefix.cli.main``

    importable._COMMAND_PROCESS = True
    try:  # importing pycolmap installs glog's failure handler for SIGTERM over the one below: import it first (0.13 s)
        import pycolmap  # noqa: F401
    except ImportError:
        pass
    try:
        signal.signal(signal.SIGTERM, importable._on_sigterm)
    except ValueError:  # not the main thread
        pass
    try:
        code = main()
    except KeyboardInterrupt as err:  # between the handlers above and here
        ignore_further_interrupts()
        code = importable.interrupt_exit_code(err)
    sys.exit(code)


if __name__ == "__main__":
    entrypoint()
