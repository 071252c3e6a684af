"""Issue 14: posefix never destroys a user's data, and every failure is one line.

One test (or parametrised family) per cause of the issue, each through the command line
(``nerf_posefix.cli.main.main``, in process): exit code 2, exactly one line ``posefix: error: ...`` naming
the path and the reason, nothing written (no output, no ``.partial``, no temporary ``.tmp-`` / ``.old-``
directory), and the inputs' checksums unchanged.

1. ``export`` into the run or its dataset (COLMAP model, the transforms.json it trained on), ``..`` /
   symbolic link / ``.`` forms, with and without ``--overwrite``; ``--load-config RUN_DIR`` accepted.
2. ``refine --overwrite`` (and ``perturb``) through ``..``, a symbolic link, ``.``; ``--output .`` never
   leaves ``.partial`` / ``..old-*`` behind.
3. Duplicate image names in a COLMAP model: refine, perturb and compare refuse.
4. Images that would break training: truncated, 16-bit; mixed channel layouts are converted to one
   (RGB, or RGBA when a pixel is transparent) and said so, and training runs.
5. Non-ASCII image names: refine's conversion and perturb write them; pycolmap reads them back.
6. File-system failures: read-only output parent, ``--json`` a directory, ``--output`` under a regular
   file, an unreadable model file, a failure while writing (ENOSPC).
7. ``demo`` refuses bad options before creating ``--output``.
8. Errors involving a run config (export, compare, ``refine --resume``) come before torch is imported.
Smaller items: camera-model lists, NaN line numbers in TUM files, unknown estimate formats, Ctrl-C
messages (start-up, a checkpoint kept, double Ctrl-C), ``--resume`` with fewer ``--iterations``.

Running as root (as CI containers do), permission cases drop the effective uid to ``nobody`` for the
call (``os.seteuid``), so that permissions apply; files of those cases live in a world-accessible
temporary directory.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from nerf_posefix.io.atomic import MARKER_FILE
from nerf_posefix.io.colmap import read_colmap_model, write_colmap_model
from cli_helpers import cli, copy_scene, leftovers, refused

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "assets" / "toybox_tiny"
NOBODY = 65534


# ---------------------------------------------------------------------------------------------
# helpers


def digest(path: Path) -> str:
    """Checksum of a file or a directory tree (names, contents, symbolic-link targets)."""
    h = hashlib.sha256()
    path = Path(path)
    items = [path] if not path.is_dir() else sorted(path.rglob("*"))
    for p in items:
        h.update(str(p.relative_to(path) if p != path else p.name).encode())
        if p.is_symlink():
            h.update(b"->" + os.readlink(p).encode())
        elif p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture()
def scene(tmp_path: Path) -> Path:
    return copy_scene(tmp_path / "scene")


@pytest.fixture()
def shared_dir() -> Iterator[Path]:
    """A temporary directory every user can enter and write (for the permission cases)."""
    base = Path(tempfile.mkdtemp(prefix="posefix-safety-"))
    os.chmod(base, 0o777)
    yield base
    for p in [base, *base.rglob("*")]:  # restore permissions so the tree can be removed
        with contextlib.suppress(OSError):
            if p.is_dir() and not p.is_symlink():
                os.chmod(p, 0o755)
            elif p.is_file() and not p.is_symlink():
                os.chmod(p, 0o644)
    shutil.rmtree(base, ignore_errors=True)


def preload() -> None:
    """Import what the command's error paths import, while this process can still read the interpreter's
    own files (a root-owned Python under /root is not readable by ``nobody``)."""
    import importlib

    for name in ("nerf_posefix.workflows.compare", "nerf_posefix.workflows.reports", "nerf_posefix.workflows.export",
                 "nerf_posefix.workflows.perturb", "nerf_posefix.workflows.refine", "nerf_posefix.workflows.demo",
                 "nerf_posefix.io.sources", "PIL.Image", "PIL.PngImagePlugin", "rich.console", "rich.table", "tyro"):
        importlib.import_module(name)
    from nerf_posefix.cli.main import _load_subcommands

    _load_subcommands()


@contextlib.contextmanager
def unprivileged() -> Iterator[None]:
    """Permissions apply inside: as root, the effective user becomes ``nobody`` for the block."""
    if os.geteuid() != 0:
        yield
        return
    preload()
    os.setegid(NOBODY)
    os.seteuid(NOBODY)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def make_run(data: Path, output: Path, colmap: bool) -> Path:
    """A posefix-small run on ``data`` with 0 iterations (a checkpoint, no training); its config.yml."""
    from nerfstudio.data.dataparsers.colmap_dataparser import ColmapDataParserConfig

    from nerf_posefix.plugin.training import in_process_config, run_training

    def edit(config) -> None:  # noqa: ANN001
        if colmap:
            config.pipeline.datamanager.dataparser = ColmapDataParserConfig(data=data, colmap_path=Path("sparse/0"))

    config = in_process_config("posefix-small", data=data, output_dir=output, max_iterations=0, overrides=edit)
    config.pipeline.datamanager.train_num_rays_per_batch = 256
    return run_training(config, progress=False, quiet=True).config_path


@pytest.fixture(scope="module")
def runs() -> Iterator[dict[str, Path]]:
    """A COLMAP-data run and a transforms.json-data run on one copy of the tiny scene (world-readable)."""
    base = Path(tempfile.mkdtemp(prefix="posefix-runs-"))
    os.chmod(base, 0o755)
    data = copy_scene(base / "data")
    colmap = make_run(data, base / "colmap_runs", colmap=True)
    nerfstudio = make_run(data, base / "json_runs", colmap=False)
    yield {"base": base, "data": data, "colmap": colmap, "json": nerfstudio}
    shutil.rmtree(base, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# 1. export never writes into the run or its dataset


EXPORT_TARGETS = ["dataset", "dataset-model", "dataset-dotdot", "dataset-symlink", "dataset-dot", "run-inside", "run-parent"]


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
@pytest.mark.parametrize("target", EXPORT_TARGETS)
@pytest.mark.parametrize("kind", ["colmap", "json"])
def test_export_refuses_the_run_and_its_dataset(
    runs: dict[str, Path], kind: str, target: str, overwrite: bool, tmp_path: Path, capsys, monkeypatch  # noqa: ANN001
) -> None:
    data, run_dir = runs["data"], runs[kind].parent
    output = {
        "dataset": data,
        "dataset-model": data / "sparse" / "0",
        "dataset-dotdot": data / "images" / "..",
        "dataset-symlink": tmp_path / "link",
        "dataset-dot": Path("."),
        "run-inside": run_dir / "export",
        "run-parent": run_dir.parent,
    }[target]
    if target == "dataset-symlink":
        (tmp_path / "link").symlink_to(data, target_is_directory=True)
    if target == "dataset-dot":
        monkeypatch.chdir(data)
    before = digest(data), digest(run_dir)
    line = refused(capsys, "export", "--load-config", runs[kind], "--output", output, *(["--overwrite"] if overwrite else []))
    assert "lies inside the input" in line or "is the current directory" in line
    assert (digest(data), digest(run_dir)) == before
    assert not (run_dir / "export").exists() and not leftovers(data) and not leftovers(run_dir.parent)


def test_export_accepts_a_run_directory(runs: dict[str, Path], tmp_path: Path, capsys) -> None:  # noqa: ANN001
    experiment = runs["colmap"].parent.parent  # holds one run, two levels above config.yml
    code, err = cli(capsys, "export", "--load-config", experiment, "--output", tmp_path / "out")
    assert code == 0, err
    assert (tmp_path / "out" / "transforms.json").is_file() and (tmp_path / "out" / "sparse" / "0" / "images.bin").is_file()
    assert (tmp_path / "out" / MARKER_FILE).is_file()
    # a second export needs --overwrite, and replaces only that posefix output
    refused(capsys, "export", "--load-config", experiment, "--output", tmp_path / "out", says=("already exists",))
    code, err = cli(capsys, "export", "--load-config", experiment, "--output", tmp_path / "out", "--overwrite")
    assert code == 0, err
    assert not leftovers(tmp_path)


# ---------------------------------------------------------------------------------------------
# 2. refine / perturb through aliases of their input


@pytest.mark.parametrize("form", ["dotdot", "symlink", "dot", "parent-of-input"])
def test_refine_overwrite_never_reaches_its_input(form: str, scene: Path, tmp_path: Path, capsys, monkeypatch) -> None:  # noqa: ANN001
    model, images = scene / "sparse" / "0", scene / "images"
    if form == "symlink":
        (tmp_path / "link").symlink_to(model, target_is_directory=True)
    if form == "dot":
        monkeypatch.chdir(model)
    output = {"dotdot": scene / "sparse" / ".." / "sparse" / "0", "symlink": tmp_path / "link", "dot": Path("."),
              "parent-of-input": images / ".."}[form]
    before = digest(scene)
    refused(capsys, "refine", "--colmap-model", model.resolve(), "--images", images.resolve(), "--output", output,
            "--overwrite", "--iterations", "0", says=("lies inside the input",))
    assert digest(scene) == before and not leftovers(tmp_path)


@pytest.mark.parametrize("form", ["dotdot", "symlink", "dot"])
def test_perturb_overwrite_never_reaches_its_input(form: str, scene: Path, tmp_path: Path, capsys, monkeypatch) -> None:  # noqa: ANN001
    if form == "symlink":
        (tmp_path / "link").symlink_to(scene, target_is_directory=True)
    if form == "dot":
        monkeypatch.chdir(scene)
    output = {"dotdot": scene / "images" / "..", "symlink": tmp_path / "link", "dot": Path(".")}[form]
    before = digest(scene)
    refused(capsys, "perturb", "--data", scene.resolve(), "--output", output, "--overwrite", says=("lies inside the input",))
    assert digest(scene) == before and not leftovers(tmp_path)


@pytest.mark.parametrize("command", ["refine", "perturb"])
def test_output_dot_overwrite_of_a_posefix_output_leaves_nothing_behind(command: str, scene: Path, tmp_path: Path, capsys, monkeypatch) -> None:  # noqa: ANN001
    """``--output . --overwrite`` inside an earlier posefix output (not an input): refused, because it
    would replace the current directory; nothing (``.partial``, ``..old-*``, ``.tmp-*``) is left."""
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / MARKER_FILE).write_text("written by nerf-posefix\n")
    (earlier / "keep.txt").write_text("an earlier result")
    monkeypatch.chdir(earlier)
    before = digest(earlier)
    args = (["refine", "--colmap-model", scene / "sparse" / "0", "--images", scene / "images", "--iterations", "0"]
            if command == "refine" else ["perturb", "--data", scene])
    refused(capsys, *args, "--output", ".", "--overwrite", says=("is the current directory",))
    assert digest(earlier) == before and not leftovers(tmp_path)


# ---------------------------------------------------------------------------------------------
# 3. duplicate image names


@pytest.fixture()
def duplicate_names(tmp_path: Path) -> Path:
    """A COLMAP-only dataset whose images 4 and 6 are both named 003.png."""
    data = copy_scene(tmp_path / "dup", transforms=False)
    model = read_colmap_model(data / "sparse" / "0")
    images = dict(model.images)
    images[6] = images[6]._replace(name=images[4].name)
    write_colmap_model(replace(model, images=images), data / "sparse" / "0", formats=("bin",))
    return data


@pytest.mark.parametrize("command", ["refine", "perturb", "compare"])
def test_duplicate_image_names_are_refused(command: str, duplicate_names: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    data, out = duplicate_names, tmp_path / "out"
    args = {
        "refine": ["refine", "--colmap-model", data / "sparse" / "0", "--images", data / "images", "--output", out],
        "perturb": ["perturb", "--data", data, "--output", out],
        "compare": ["compare", "--reference", data / "sparse" / "0", TINY / "transforms.json", "--output", out],
    }[command]
    before = digest(data)
    name = read_colmap_model(TINY / "sparse" / "0").images[4].name
    refused(capsys, *args, says=(str(data / "sparse" / "0" / "images.bin"), f"{name!r} (images 4, 6)"))
    assert digest(data) == before and not out.exists() and not leftovers(tmp_path)


# ---------------------------------------------------------------------------------------------
# 4. images that would break training


def _refine_args(scene: Path, out: Path, *extra: object) -> list[object]:
    return ["refine", "--colmap-model", scene / "sparse" / "0", "--images", scene / "images", "--output", out, *extra]


def test_truncated_image_is_refused(scene: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    png = scene / "images" / "005.png"
    png.write_bytes(png.read_bytes()[: png.stat().st_size // 2])
    before = digest(scene)
    out = tmp_path / "out"
    refused(capsys, *_refine_args(scene, out), says=(str(png), "cannot decode the image"))
    assert digest(scene) == before and not out.exists() and not leftovers(tmp_path)


def test_sixteen_bit_image_is_refused(scene: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    from PIL import Image

    with Image.open(scene / "images" / "002.png") as img:
        gray = (np.asarray(img.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(gray).save(scene / "images" / "002.png")  # PIL mode I;16
    out = tmp_path / "out"
    refused(capsys, *_refine_args(scene, out), says=(str(scene / "images" / "002.png"), "16-bit grayscale"))
    assert not out.exists() and not leftovers(tmp_path)


def _images_of(data_dir: Path) -> dict[str, np.ndarray]:
    from PIL import Image

    out = {}
    for p in sorted((data_dir / "images").iterdir()):
        with Image.open(p) as img:
            out[p.name] = np.asarray(img)
    return out


def test_opaque_rgba_and_grayscale_among_rgb_are_converted_to_rgb(scene: Path, tmp_path: Path) -> None:
    from PIL import Image

    from nerf_posefix.sfm.inputs import validate_inputs
    from nerf_posefix.workflows.refine_inputs import prepare_training_data

    with Image.open(scene / "images" / "003.png") as img:
        rgb3 = np.asarray(img.convert("RGB"))
        img.convert("RGBA").save(scene / "images" / "003.png")  # alpha 255 everywhere
    with Image.open(scene / "images" / "009.png") as img:
        gray9 = np.asarray(img.convert("L"))
        img.convert("L").save(scene / "images" / "009.png")
    before = digest(scene)
    said: list[str] = []
    inp = validate_inputs(scene / "sparse" / "0", scene / "images", log=said.append)
    assert inp.channels == "RGB"
    assert inp.converted == {"003.png": "RGBA with opaque alpha -> RGB", "009.png": "grayscale -> RGB"}
    assert len(said) == 1 and "2 of 16 images are trained on as RGB copies" in said[0] and "003.png" in said[0]
    prepare_training_data(inp, tmp_path / "data")
    images = _images_of(tmp_path / "data")
    assert {a.shape for a in images.values()} == {(64, 64, 3)}
    np.testing.assert_array_equal(images["003.png"], rgb3)
    np.testing.assert_array_equal(images["009.png"], np.repeat(gray9[..., None], 3, axis=2))
    assert digest(scene) == before


def test_transparent_rgba_among_rgb_trains_as_rgba(scene: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """The issue's case (one RGBA image among RGB ones) with real transparency: every image is trained on
    as RGBA (opaque alpha added to the others), it is said in one line, and training runs."""
    from PIL import Image

    with Image.open(scene / "images" / "004.png") as img:
        rgba = np.asarray(img.convert("RGBA")).copy()
    rgba[:16, :16, 3] = 0
    Image.fromarray(rgba, mode="RGBA").save(scene / "images" / "004.png")
    before = digest(scene)
    out = tmp_path / "out"
    code, err = cli(capsys, *_refine_args(scene, out, "--iterations", "1", "--threads", "1", "--quiet"))
    assert code == 0, err
    assert "15 of 16 images are trained on as RGBA copies (some images have transparent pixels" in err
    assert (out / "sparse" / "0" / "images.bin").is_file() and not leftovers(tmp_path)
    assert digest(scene) == before

    from nerf_posefix.sfm.inputs import validate_inputs
    from nerf_posefix.workflows.refine_inputs import prepare_training_data

    inp = validate_inputs(scene / "sparse" / "0", scene / "images", log=lambda line: None)
    prepare_training_data(inp, tmp_path / "data")
    images = _images_of(tmp_path / "data")
    assert {a.shape for a in images.values()} == {(64, 64, 4)}
    assert (images["000.png"][..., 3] == 255).all()
    np.testing.assert_array_equal(images["004.png"], rgba)


# ---------------------------------------------------------------------------------------------
# 5. non-ASCII image names


@pytest.fixture()
def unicode_scene(tmp_path: Path) -> Path:
    """A COLMAP-only dataset (written by pycolmap) whose image 8 is named ``img 007 é.png``."""
    pycolmap = pytest.importorskip("pycolmap")
    data = copy_scene(tmp_path / "uni", transforms=False)
    rec = pycolmap.Reconstruction(str(data / "sparse" / "0"))
    old = rec.images[8].name
    rec.images[8].name = "img 007 é.png"
    rec.write(str(data / "sparse" / "0"))
    for stale in ("rigs.bin", "frames.bin"):  # keep the poses in images.bin only
        (data / "sparse" / "0" / stale).unlink(missing_ok=True)
    (data / "images" / old).rename(data / "images" / "img 007 é.png")
    return data


def test_refine_writes_non_ascii_names(unicode_scene: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    pycolmap = pytest.importorskip("pycolmap")
    out = tmp_path / "out"
    code, err = cli(capsys, *_refine_args(unicode_scene, out, "--iterations", "0", "--quiet"))
    assert code == 0, err
    rec = pycolmap.Reconstruction(str(out / "sparse" / "0"))
    assert rec.images[8].name == "img 007 é.png"
    assert read_colmap_model(out / "sparse" / "0").images[8].name == "img 007 é.png"
    frames = json.loads((out / "transforms.json").read_text(encoding="utf-8"))["frames"]
    assert any(f["file_path"].endswith("img 007 é.png") for f in frames)
    assert not leftovers(tmp_path)


def test_perturb_writes_non_ascii_names(unicode_scene: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    pycolmap = pytest.importorskip("pycolmap")
    out = tmp_path / "out"
    code, err = cli(capsys, "perturb", "--data", unicode_scene, "--output", out)
    assert code == 0, err
    for sub in ("sparse/0", "sparse_gt/0"):
        names = {im.name for im in pycolmap.Reconstruction(str(out / sub)).images.values()}
        assert "img 007 é.png" in names and len(names) == 16
    gt = json.loads((out / "transforms_gt.json").read_text(encoding="utf-8"))
    assert "images/img 007 é.png" in [f["file_path"] for f in gt["frames"]]


# ---------------------------------------------------------------------------------------------
# 6. file-system failures


def _commands_writing(kind: str, scene: Path, runs: dict[str, Path], output: Path) -> list[object]:
    return {
        "refine": _refine_args(scene, output),
        "perturb": ["perturb", "--data", scene, "--output", output],
        "export": ["export", "--load-config", runs["colmap"], "--output", output],
        "compare-output": ["compare", "--reference", scene / "sparse" / "0", scene / "transforms.json", "--output", output],
        "compare-json": ["compare", "--reference", scene / "sparse" / "0", scene / "transforms.json", "--json", output],
    }[kind]


WRITERS = ["refine", "perturb", "export", "compare-output", "compare-json"]


@pytest.fixture()
def no_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail if ``posefix compare`` computes anything: its path checks must come first."""
    import nerf_posefix.workflows.compare as workflow

    def computed(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("compare computed metrics before checking its outputs")

    monkeypatch.setattr(workflow, "compare", computed)


@pytest.mark.parametrize("kind", WRITERS)
def test_read_only_output_parent(kind: str, runs: dict[str, Path], shared_dir: Path, capsys, no_metrics) -> None:  # noqa: ANN001
    scene = copy_scene(shared_dir / "scene")
    locked = shared_dir / "locked"
    locked.mkdir()
    os.chmod(locked, 0o555)
    output = locked / ("report.json" if kind == "compare-json" else "out")
    before = digest(scene)
    with unprivileged():
        refused(capsys, *_commands_writing(kind, scene, runs, output), says=(str(output), f"cannot write in {locked}"))
    assert list(locked.iterdir()) == [] and digest(scene) == before


@pytest.mark.parametrize("kind", WRITERS)
def test_output_under_a_regular_file(kind: str, runs: dict[str, Path], scene: Path, tmp_path: Path, capsys, no_metrics) -> None:  # noqa: ANN001
    (tmp_path / "notes.txt").write_text("mine")
    output = tmp_path / "notes.txt" / "out"
    refused(capsys, *_commands_writing(kind, scene, runs, output), says=(str(output), "notes.txt is a file, not a directory"))
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_json_naming_a_directory_or_a_foreign_file(scene: Path, tmp_path: Path, capsys, no_metrics) -> None:  # noqa: ANN001
    base = ["compare", "--reference", scene / "sparse" / "0", scene / "transforms.json"]
    (tmp_path / "adir").mkdir()
    refused(capsys, *base, "--json", tmp_path / "adir", says=(str(tmp_path / "adir"), "is a directory"))
    (tmp_path / "notes.json").write_text('{"mine": 1}')
    refused(capsys, *base, "--json", tmp_path / "notes.json", says=("not written by posefix",))
    assert (tmp_path / "notes.json").read_text() == '{"mine": 1}'
    refused(capsys, *base, "--json", tmp_path / "out" / "r.json", "--output", tmp_path / "out", says=("--json", "--output"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["refine", "perturb", "compare"])
def test_unreadable_model_file(command: str, shared_dir: Path, capsys) -> None:  # noqa: ANN001
    scene = copy_scene(shared_dir / "scene", transforms=False)
    images_bin = scene / "sparse" / "0" / "images.bin"
    os.chmod(images_bin, 0)
    out = shared_dir / "out"
    # the estimate beside the scene: the checkout may lie under a directory the unprivileged user cannot enter
    estimate = shutil.copy(TINY / "transforms.json", shared_dir / "estimate.json")
    args = {
        "refine": _refine_args(scene, out),
        "perturb": ["perturb", "--data", scene, "--output", out],
        "compare": ["compare", "--reference", scene / "sparse" / "0", estimate, "--output", out],
    }[command]
    with unprivileged():
        refused(capsys, *args, says=(str(images_bin), "cannot read", "Permission denied"))
    assert not out.exists() and not leftovers(shared_dir)


def test_failure_while_writing_is_one_line_and_leaves_nothing(scene: Path, tmp_path: Path, capsys, monkeypatch) -> None:  # noqa: ANN001
    """Disk full while the output is written (only catchable then): one line naming the output and the
    reason, no temporary directory left, an earlier output kept as it was."""
    import nerf_posefix.workflows.perturb as perturb_workflow
    import nerf_posefix.workflows.reports as reports

    def disk_full(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise OSError(errno.ENOSPC, "No space left on device", str(args[-1]))

    out = tmp_path / "noisy"
    monkeypatch.setattr(perturb_workflow, "write_colmap_model", disk_full)
    refused(capsys, "perturb", "--data", scene, "--output", out, says=(str(out), "No space left on device"))
    assert not out.exists() and not leftovers(tmp_path)

    monkeypatch.setattr(reports, "_write_frusta", disk_full)
    earlier = tmp_path / "cmp"
    code, _ = cli(capsys, "compare", "--reference", scene / "sparse" / "0", scene / "transforms.json", "--json", tmp_path / "r.json")
    assert code == 0
    earlier.mkdir()
    (earlier / MARKER_FILE).write_text("written by nerf-posefix\n")
    (earlier / "compare.json").write_text("{}")
    before = digest(earlier)
    refused(capsys, "compare", "--reference", scene / "sparse" / "0", scene / "transforms.json", "--output", earlier,
            "--overwrite", says=(str(earlier), "No space left on device"))
    assert digest(earlier) == before and not leftovers(tmp_path)


def test_refine_failure_leaves_no_work_directory(scene: Path, tmp_path: Path, capsys, monkeypatch) -> None:  # noqa: ANN001
    """A file-system failure in refine's work directory (before any checkpoint): one line, and no
    ``OUT.partial`` that a rerun would ask to ``--resume``."""
    import nerf_posefix.workflows.refine as refine_workflow

    def disk_full(inp, data_dir, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        raise OSError(errno.ENOSPC, "No space left on device", str(data_dir))

    monkeypatch.setattr(refine_workflow, "prepare_training_data", disk_full)
    out = tmp_path / "out"
    refused(capsys, *_refine_args(scene, out, "--iterations", "1"), says=("out.partial/data", "No space left on device"))
    assert not out.exists() and not leftovers(tmp_path)


# ---------------------------------------------------------------------------------------------
# 7. demo checks its options before creating --output


@pytest.mark.parametrize(
    "option, value, says",
    [
        ("--iterations", "0", "--iterations must be >= 1"),
        ("--rotation-deg", "181", "--rotation-deg must be in [0, 180]"),
        ("--rotation-deg", "nan", "--rotation-deg must be in [0, 180]"),
        ("--translation", "-0.1", "--translation must be a finite number >= 0"),
        ("--method", "nerfacto", "--method must be one of posefix, posefix-small"),
        ("--eval-interval", "-1", "--eval-interval must be >= 0"),
        ("--threads", "0", "--threads must be >= 1"),
        ("--scene", "/nonexistent/scene", "no transforms.json"),
    ],
)
def test_demo_checks_options_before_creating_output(option: str, value: str, says: str, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    out = tmp_path / "demo"
    refused(capsys, "demo", "--output", out, option, value, says=(says,))
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_demo_refuses_its_scene_and_the_current_directory(tmp_path: Path, capsys, monkeypatch) -> None:  # noqa: ANN001
    scene = copy_scene(tmp_path / "scene")
    before = digest(scene)
    refused(capsys, "demo", "--scene", scene, "--output", scene / "demo", "--overwrite", says=("lies inside the input --scene",))
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    refused(capsys, "demo", "--scene", scene, "--output", ".", "--overwrite", says=("is the current directory",))
    assert digest(scene) == before and sorted(p.name for p in tmp_path.iterdir()) == ["here", "scene"]
    assert list((tmp_path / "here").iterdir()) == []


# ---------------------------------------------------------------------------------------------
# 8 and --resume: errors that involve a run config come before torch is imported


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A refine run interrupted after 4 of 8 iterations (its checkpoint kept in OUT.partial)."""
    from nerf_posefix.cli.refine import Refine
    from nerf_posefix.workflows.refine import partial_dir, refine

    base = tmp_path_factory.mktemp("interrupted")
    scene = copy_scene(base / "scene")
    out = base / "refined"

    def stop_at_4(done: int, loss: float | None) -> None:
        if done == 4:
            raise KeyboardInterrupt

    options = Refine(colmap_model=scene / "sparse" / "0", images=scene / "images", output=out, iterations=8,
                     checkpoint_every=100, threads=1, quiet=True)
    with pytest.raises(KeyboardInterrupt):
        refine(options, callback=stop_at_4)
    return {"scene": scene, "out": out, "work": partial_dir(out)}


def test_resume_with_fewer_iterations_is_refused(interrupted: dict[str, Path], capsys) -> None:  # noqa: ANN001
    scene, out, work = interrupted["scene"], interrupted["out"], interrupted["work"]
    before = digest(work)
    refused(capsys, *_refine_args(scene, out, "--resume", "--iterations", "2"),
            says=("--iterations 2", str(work), "already done 4 iterations", "--iterations 4 or more"))
    assert digest(work) == before and not out.exists()


def test_interruption_messages_are_true(interrupted: dict[str, Path], tmp_path: Path) -> None:
    from nerf_posefix.cli.refine import Refine, interruption_message

    kept = interruption_message(Refine(colmap_model=interrupted["scene"], images=interrupted["scene"], output=interrupted["out"]))
    assert f"{interrupted['work']} keeps the checkpoint of iteration 4" in kept and "--resume" in kept
    # interrupted during start-up: no checkpoint, nothing claimed; a work directory holding no checkpoint is removed
    fresh = tmp_path / "fresh"
    early = interruption_message(Refine(colmap_model=tmp_path, images=tmp_path, output=fresh))
    assert "before the first checkpoint; nothing to resume" in early
    work = tmp_path / "fresh.partial"
    (work / "data").mkdir(parents=True)
    (work / "refine_input.json").write_text("{}")
    assert "nothing to resume" in interruption_message(Refine(colmap_model=tmp_path, images=tmp_path, output=fresh))
    assert not work.exists()


_NO_TORCH = """
import json, sys
from nerf_posefix.cli.main import main
results = []
for argv in json.loads(sys.argv[1]):
    code = main(argv)
    results.append({"argv": argv, "code": code, "torch": "torch" in sys.modules, "nerfstudio_engine": "nerfstudio.engine.trainer" in sys.modules})
print(json.dumps(results))
"""


def test_run_config_errors_come_before_torch(runs: dict[str, Path], interrupted: dict[str, Path], tmp_path: Path) -> None:
    broken = tmp_path / "broken_run"
    shutil.copytree(runs["colmap"].parent, broken)
    (broken / "config.yml").write_text("!!python/object:nerfstudio.engine.trainer.TrainerConfig\n  : [unbalanced\n")
    no_ckpt = tmp_path / "no_checkpoint_run"  # a copy without checkpoint, whose output_dir moved too
    shutil.copytree(runs["colmap"].parent, no_ckpt)
    shutil.rmtree(no_ckpt / "nerfstudio_models")
    lines = (no_ckpt / "config.yml").read_text().splitlines()
    at = lines.index("output_dir: !!python/object/apply:pathlib.PosixPath") + 1
    while lines[at].startswith("- "):
        at += 1
    lines[at:at] = ["- moved"]  # output_dir/moved: no checkpoint there either
    (no_ckpt / "config.yml").write_text("\n".join(lines) + "\n")
    work = tmp_path / "work_copy"
    scene = interrupted["scene"]
    shutil.copytree(interrupted["work"], work.with_name("refined2.partial"))
    run_config = next(work.with_name("refined2.partial").glob("runs/refine/*/run/config.yml"))
    run_config.write_text("{unbalanced: [")
    cases = [
        ["export", "--load-config", str(tmp_path / "missing"), "--output", str(tmp_path / "e1")],
        ["export", "--load-config", str(runs["colmap"]), "--output", str(runs["data"] / "sparse" / "0"), "--overwrite"],
        ["export", "--load-config", str(broken), "--output", str(tmp_path / "e2")],
        ["export", "--load-config", str(no_ckpt), "--output", str(tmp_path / "e3")],
        ["compare", "--reference", str(runs["colmap"].parent), str(TINY / "transforms.json"), "--json", str(runs["data"] / "r.json")],
        ["compare", "--reference", str(TINY / "sparse" / "0"), str(no_ckpt), "--output", str(tmp_path / "c1")],
        ["compare", "--reference", str(TINY / "sparse" / "0"), str(broken)],
        [*map(str, _refine_args(scene, interrupted["out"], "--resume", "--iterations", "2"))],
        [*map(str, _refine_args(scene, work.with_name("refined2"), "--resume"))],
    ]
    proc = subprocess.run([sys.executable, "-c", _NO_TORCH, json.dumps(cases)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    errors = [line for line in proc.stderr.splitlines() if line.startswith("posefix: error: ")]
    assert len(errors) == len(cases), proc.stderr
    for result, line in zip(results, errors):
        assert result["code"] == 2, (result, line)
        assert not result["torch"] and not result["nerfstudio_engine"], f"torch imported before: {line}"
    assert "no nerfstudio checkpoint" in errors[3] and "cannot read the run config" in errors[2]
    assert str(run_config) in errors[8] and not (tmp_path / "e1").exists()


# ---------------------------------------------------------------------------------------------
# smaller items


def test_camera_model_lists_match_what_each_command_accepts(scene: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    cameras = scene / "sparse" / "0" / "cameras.bin"
    data = bytearray(cameras.read_bytes())
    data[12:16] = (99).to_bytes(4, "little")  # model id of camera 1
    cameras.write_bytes(bytes(data))
    line = refused(capsys, *_refine_args(scene, tmp_path / "out"), says=(str(cameras), "unsupported COLMAP camera model id 99"))
    from nerf_posefix.sfm.inputs import REFINE_CAMERA_MODELS

    assert line.endswith(f"(supported: {', '.join(REFINE_CAMERA_MODELS)})")
    line = refused(capsys, "compare", "--reference", scene / "sparse" / "0", TINY / "transforms.json")
    assert "FULL_OPENCV" in line  # compare reads every model the reader knows


def test_tum_nan_names_its_line_and_unknown_formats_are_named(scene: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    ref = scene / "sparse" / "0"
    (tmp_path / "traj.tum").write_text("# t x y z qx qy qz qw\n0 0 0 0 0 0 0 1\n1 0 nan 0 0 0 0 1\n")
    refused(capsys, "compare", "--reference", ref, tmp_path / "traj.tum", says=(f"{tmp_path / 'traj.tum'}:3: non-finite ty",))
    (tmp_path / "zero.txt").write_text("0 0 0 0 0 0 0 0\n")
    refused(capsys, "compare", "--reference", ref, tmp_path / "zero.txt", says=("zero.txt:1: zero quaternion",))
    for unknown in (scene / "images" / "000.png", TINY / "sparse_pc.ply"):
        line = refused(capsys, "compare", "--reference", ref, unknown, says=(str(unknown), "not a pose file posefix reads"))
        assert "utf-8" not in line.lower() and "TUM file" not in line


def test_double_ctrl_c_prints_no_traceback(scene: Path, tmp_path: Path) -> None:
    """Ctrl-C during start-up, then a burst of Ctrl-C while posefix exits: exit code 130, one message,
    no traceback (not from an exit handler either), nothing claimed, nothing left behind."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "nerf_posefix.cli.main", *map(str, _refine_args(scene, tmp_path / "out", "--iterations", "50", "--threads", "1"))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    time.sleep(1.5)
    for _ in range(15):
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGINT)
        time.sleep(0.03)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert "posefix refine: interrupted" in err or "posefix: interrupted" in err
    if "keeps the checkpoint" not in err:
        assert not leftovers(tmp_path)


def test_unprivileged_helper_really_drops_permissions(shared_dir: Path) -> None:
    locked = shared_dir / "locked"
    locked.mkdir()
    os.chmod(locked, stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    with unprivileged(), pytest.raises(PermissionError):
        (locked / "x").write_text("x")
