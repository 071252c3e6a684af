"""Issue 24: the console of ``posefix`` holds the package's own lines.

Third-party warnings that say nothing to the user are ignored while a command runs, in that command only
(the caller's warning filters are restored), and ``-v`` / ``--verbose`` anywhere on the command line shows
them. End to end: ``posefix refine``'s default run on the bundled scene prints no line that does not come
from the package.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

import nerf_posefix.cli.main as cli

ROOT = Path(__file__).resolve().parents[1]
TOYBOX = ROOT / "assets" / "toybox"


def _third_party_warnings() -> None:
    """Warnings as torch and nerfstudio emit them (attributed to their modules), and one of the user's."""
    warnings.warn_explicit("`torch.jit.script` is deprecated.", FutureWarning, "_script.py", 1, module="torch.jit._script")
    warnings.warn_explicit("`torch.cuda.amp.custom_fwd(args...)` is deprecated.", FutureWarning, "activations.py", 32,
                           module="nerfstudio.field_components.activations")
    warnings.warn_explicit("This DataLoader will create 4 worker processes in total. Our suggested max number of worker in "
                           "current system is 2", UserWarning, "dataloader.py", 431, module="torch.utils.data.dataloader")
    warnings.warn_explicit("the user's own warning", UserWarning, "mine.py", 1, module="my_project.module")


@dataclass
class Noisy:
    """A stand-in subcommand that warns like the libraries do."""

    verbose: bool = False

    def run(self) -> None:
        _third_party_warnings()
        print(f"verbose={self.verbose}")


def _run(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> list[str]:
    monkeypatch.setattr(cli, "_load_subcommands", lambda: {"noisy": Noisy, "other": Noisy})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cli.main(argv) == 0
    return [str(w.message) for w in caught]


def test_third_party_warnings_are_ignored_while_a_command_runs(monkeypatch: pytest.MonkeyPatch, capsys) -> None:  # noqa: ANN001
    shown = _run(monkeypatch, ["noisy"])
    assert shown == ["the user's own warning"]  # only what is not on the list
    assert "verbose=False" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["-v", "noisy"], ["noisy", "-v"], ["noisy", "--verbose"], ["--verbose", "noisy"]])
def test_verbose_anywhere_shows_everything(argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys) -> None:  # noqa: ANN001
    shown = _run(monkeypatch, argv)
    assert len(shown) == 4 and any("DataLoader" in m for m in shown)
    assert "verbose=True" in capsys.readouterr().out  # and the command's own verbose option is set


def test_the_callers_filters_are_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    before = list(warnings.filters)
    _run(monkeypatch, ["noisy"])
    assert warnings.filters == before
    with warnings.catch_warnings(record=True) as caught:  # after the command, torch's warnings reach the caller again
        warnings.simplefilter("always")
        _third_party_warnings()
    assert len(caught) == 4


def test_refine_default_run_prints_only_the_package_lines(tmp_path: Path) -> None:
    """The issue's target: ``posefix refine`` on the bundled scene (3 deg / 5 % noise) in a fresh process:
    every line of stdout and stderr is the package's (``posefix ...``, the summary table's indented rows and
    its ``wrote`` list); no warnings, no nerfstudio console (no NeRF trains). Issue 23: without a NeRF stage torch
    is never imported, and a grayscale image among RGB ones is not announced as converted for training (nothing
    trains). About 15 s."""
    from PIL import Image

    from nerf_posefix.workflows.perturb import perturb_dataset

    noisy = tmp_path / "noisy"
    perturb_dataset(TOYBOX, noisy, rotation_deg=3.0, translation=0.05, seed=0)
    gray = sorted((noisy / "images").iterdir())[5]
    with Image.open(gray) as img:
        img.convert("L").save(gray)  # a copy of perturb's: the bundled scene is not touched
    out = tmp_path / "out"
    argv = ["posefix", "refine", "--poses", str(noisy / "transforms.json"), "--output", str(out), "--threads", "1"]
    probe = ("import atexit, runpy, sys; atexit.register(lambda: print('torch imported:', 'torch' in sys.modules, file=sys.stderr)); "
             f"sys.argv = {argv!r}; runpy.run_module('nerf_posefix.cli.main', run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "torch imported: False\n", proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    foreign = [line for line in lines if not (line.startswith("posefix") or line.startswith("  ") or line == "wrote")]
    assert not foreign, foreign
    assert "flagged       none of 64 images" in proc.stdout
    assert proc.stdout.count(str(out / "sparse" / "0")) == 1 and proc.stdout.count(str(out / "transforms.json")) == 1


def test_the_entry_points_pycolmap_import_leaves_zlib_and_png_writing_working(tmp_path: Path) -> None:
    """``posefix``'s entry point imports pycolmap before anything else of its command (its SIGTERM handler): the
    system zlib must still serve Python's ``zlib`` and Pillow's PNG encoder afterwards, as the demo's plots need (with
    pycolmap 4.2.1 loading it first, both aborted in ``deflateEnd``: the package loads it first)."""
    probe = ("import nerf_posefix.cli.main, pycolmap, zlib, numpy as np; from PIL import Image; "
             "z = zlib.compressobj(); assert len(z.compress(b'posefix' * 20000) + z.flush()) > 0; "
             f"Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save({str(tmp_path / 'x.png')!r}); "
             "print('written')")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout == "written\n", proc.stderr[-2000:]
    assert (tmp_path / "x.png").stat().st_size > 1000
