"""The ``posefix`` command: tyro subcommands, one module each under :mod:`nerf_posefix.cli`.

Every subcommand is a dataclass with a ``run()`` method. Modules keep heavy imports (nerfstudio,
matplotlib, open3d) inside ``run()`` so that ``posefix --help`` starts quickly.

Bad input raises :class:`nerf_posefix.errors.InputError` (or ``FileNotFoundError``); it is printed as
one line on stderr, without a traceback, and the process exits with code 2.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import tyro

from nerf_posefix.errors import InputError

# subcommand name -> "module:DataclassName".
SUBCOMMANDS: dict[str, str] = {
    "demo": "nerf_posefix.cli.demo:Demo",
    "perturb": "nerf_posefix.cli.perturb:Perturb",
    "refine": "nerf_posefix.cli.refine:Refine",
    "export": "nerf_posefix.cli.export:Export",
    "compare": "nerf_posefix.cli.compare:Compare",
}


def _load_subcommands() -> dict[str, Any]:
    commands: dict[str, Any] = {}
    for name, target in SUBCOMMANDS.items():
        module_name, class_name = target.split(":")
        commands[name] = getattr(importlib.import_module(module_name), class_name)
    return commands


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand; returns the process exit code."""
    commands = _load_subcommands()
    config = tyro.extras.subcommand_cli_from_dict(
        commands,
        args=argv,
        description="nerf-posefix: refine camera poses with a NeRF under the homography pose prior.",
    )
    try:
        config.run()
    except (InputError, FileNotFoundError, FileExistsError) as err:
        print(f"posefix: error: {err}", file=sys.stderr)
        return 2
    return 0


def entrypoint() -> None:
    """Console-script entry point (``posefix``)."""
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
