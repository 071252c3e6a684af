"""Helpers shared by the CLI fault tests (tests/test_safety.py, tests/test_reliability.py): run a command in
process, require its one-line refusal, copy the tiny scene, list what a run could leave behind."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from nerf_posefix.cli.main import main

TINY = Path(__file__).resolve().parents[1] / "assets" / "toybox_tiny"


def leftovers(directory: Path) -> list[str]:
    """Work and temporary directories posefix could leave behind, anywhere below ``directory``."""
    marks = (".partial", ".tmp-", ".old-", ".tmp")
    return sorted(str(p) for p in Path(directory).rglob("*") if any(m in p.name for m in marks))


def cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def refused(capsys: pytest.CaptureFixture[str], *args: object, says: tuple[str, ...] = ()) -> str:
    """Run the command; it must exit 2 with one ``posefix: error:`` line containing every ``says``."""
    code, err = cli(capsys, *args)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("posefix: error: "), err
    for fragment in says:
        assert fragment in lines[0], lines[0]
    return lines[0]


def copy_scene(dst: Path, transforms: bool = True) -> Path:
    """A copy of the tiny scene (COLMAP model in sparse/0, images, optionally transforms.json)."""
    dst.mkdir(parents=True)
    shutil.copytree(TINY / "sparse", dst / "sparse")
    shutil.copytree(TINY / "images", dst / "images")
    if transforms:
        shutil.copy(TINY / "transforms.json", dst / "transforms.json")
    return dst
