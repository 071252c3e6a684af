"""Probe benchmark: every bad-input and fault case of the ``posefix`` command line (issues 14 and 25).

Usage: ``python -m benchmarks.error_latency [--repeats 3] [--keep DIR] [--only TEXT]``.

Builds the inputs in a temporary directory (copies of ``assets/toybox_tiny``, a 0-iteration
``posefix-small`` run, a 1-iteration run trained as ``ns-train --data DATA`` stores it, an interrupted
``refine`` run, databases, degenerate image sets; set-up time is not measured), then runs every case as a
fresh subprocess (``python -c`` calling ``nerf_posefix.cli.main.main``, i.e. the ``posefix`` command with its
whole start-up) and prints, per case:

* the exit code and the one it should be (2 for an error; 0 where the case must now work; 143 after
  SIGTERM, 130 after SIGINT);
* the median wall time of ``--repeats`` runs, and whether torch had been imported when it answered (the
  target for an error found before any work: < 1 s, torch not loaded);
* whether the case's input tree is unchanged (a checksum of names, contents and link targets before the
  first run and after the last);
* what it left behind (work directories ``*.partial``, temporary ``.tmp-`` / ``.old-`` directories, and an
  output where the case must write none);
* the one line it printed (``posefix: error: ...``), and whether it holds the expected words.

Cases that are not one command (two concurrent runs on one output, SIGTERM / SIGINT during a run, a full
disk) run their own sequence; the full disk needs root and a tmpfs mount (otherwise the row says skipped).
Permission cases run as the user ``nobody`` when this runs as root (so that permissions apply); the
subprocess then imports posefix's command modules before it drops privileges, and that time is included.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "assets" / "toybox_tiny"
TARGET_S = 1.0
NOBODY = 65534

#: Runs the command in a subprocess and reports, on its last stderr line, whether torch was imported.
#: With POSEFIX_AS_NOBODY=1 (root only) it first imports what the error paths import (a root-owned
#: interpreter under /root is unreadable for nobody), then drops the effective user to nobody. Signals
#: are handled as by the ``posefix`` entry point (SIGTERM: exit 143).
_WRAPPER = (
    "import sys, json, os, importlib, signal\n"
    "import nerf_posefix.cli.main as cli\n"
    "from nerf_posefix.cli.main import main, _load_subcommands\n"
    "cli._COMMAND_PROCESS = True\n"
    "signal.signal(signal.SIGTERM, cli._on_sigterm) if hasattr(cli, '_on_sigterm') else None\n"
    "if os.environ.get('POSEFIX_AS_NOBODY') == '1':\n"
    "    import tyro\n"
    "    tyro.extras.subcommand_cli_from_dict(_load_subcommands(), args=sys.argv[1:])  # parse once: tyro's imports\n"
    "    for m in ('nerf_posefix.workflows.compare', 'nerf_posefix.workflows.reports', 'nerf_posefix.workflows.export',\n"
    "              'nerf_posefix.workflows.perturb', 'nerf_posefix.io.sources', 'PIL.Image', 'PIL.PngImagePlugin',\n"
    "              'rich.console', 'rich.table'):\n"
    "        importlib.import_module(m)\n"
    "    os.setegid(65534); os.seteuid(65534)\n"
    "try:\n"
    "    code = main(sys.argv[1:])\n"
    "except SystemExit as exit_:\n"
    "    code = exit_.code if isinstance(exit_.code, int) else 1\n"
    "print(json.dumps({'torch': 'torch' in sys.modules}), file=sys.stderr)\n"
    "sys.exit(code)\n"
)


@dataclass
class Case:
    """One probe: a command, what it must answer, the paths it must not change, what it may write."""

    name: str
    argv: list[str]
    code: int = 2
    says: tuple[str, ...] = ()
    inputs: list[Path] = field(default_factory=list)
    output: Optional[Path] = None  # must not exist afterwards (error cases), or must (code 0)
    as_nobody: bool = False
    cwd: Optional[Path] = None
    setup: Optional[Callable[[], None]] = None  # before every run (stateful cases)
    before_work: bool = True  # an error found before any work: < 1 s, no torch
    repeats: Optional[int] = None
    check: Optional[Callable[[], str]] = None  # extra check after the runs: "" when fine, else what is wrong
    issue: str = "25"


@dataclass
class Row:
    name: str
    code: int
    expected: int
    seconds: float
    torch: bool
    unchanged: bool
    leftovers: list[str]
    line: str
    ok_words: bool
    before_work: bool
    extra: str = ""
    cpu: Optional[float] = None  # CPU seconds of the process, where runs compete for the cores (judged by it)

    @property
    def passed(self) -> bool:
        seconds = self.seconds if self.cpu is None else self.cpu
        return (self.code == self.expected and self.unchanged and not self.leftovers and self.ok_words and not self.extra
                and (not self.before_work or (seconds < TARGET_S and not self.torch)))


# ---------------------------------------------------------------------------------------------
# helpers


def digest(*paths: Path) -> str:
    """Checksum of files and directory trees (names, contents, symbolic-link targets); missing paths count."""
    h = hashlib.sha256()
    for path in paths:
        path = Path(path)
        h.update(str(path).encode())
        if not os.path.lexists(path):
            h.update(b"<missing>")
            continue
        items = [path] if not path.is_dir() or path.is_symlink() else sorted(path.rglob("*"))
        for p in items:
            h.update(str(p.relative_to(path) if p != path else p.name).encode())
            try:
                if p.is_symlink():
                    h.update(b"->" + os.readlink(p).encode())
                elif p.is_file():
                    h.update(p.read_bytes())
            except OSError as err:
                h.update(f"<{err.strerror}>".encode())
    return h.hexdigest()


def leftovers(base: Path, since: set[str]) -> list[str]:
    """Work and temporary directories below ``base`` that were not there before (``since``)."""
    marks = (".partial", ".tmp-", ".old-")
    found = []
    for p in Path(base).rglob("*"):
        try:
            if any(m in p.name for m in marks) and str(p) not in since and not any(str(a) in since for a in p.parents if a != base):
                found.append(str(p))
        except OSError:
            continue
    return sorted(found)


def _existing_marks(base: Path) -> set[str]:
    marks = (".partial", ".tmp-", ".old-")
    return {str(p) for p in Path(base).rglob("*") if any(m in p.name for m in marks)}


def _copy_scene(dst: Path, transforms: bool = True) -> Path:
    dst.mkdir(parents=True)
    shutil.copytree(TINY / "sparse", dst / "sparse")
    shutil.copytree(TINY / "images", dst / "images")
    if transforms:
        shutil.copy(TINY / "transforms.json", dst / "transforms.json")
    return dst


def _make_run(data: Path, output: Path, iterations: int = 0, ns_train: bool = False) -> Path:
    """A posefix-small run; ``ns_train``: its config as ``ns-train posefix-small --data DATA`` stores it (the
    dataset in ``TrainerConfig.data`` and the datamanager, the dataparser's own ``data`` left at ``.``),
    front end off, trained in the current directory with ``data`` as given (relative)."""
    from nerfstudio.data.dataparsers.colmap_dataparser import ColmapDataParserConfig

    from nerf_posefix.plugin.training import in_process_config, run_training

    def edit(config) -> None:  # noqa: ANN001
        if ns_train:
            config.pipeline.front_end = "off"
            config.data = Path(data)
            config.pipeline.datamanager.dataparser.data = Path(".")
        else:
            config.pipeline.datamanager.dataparser = ColmapDataParserConfig(data=data, colmap_path=Path("sparse/0"))

    config = in_process_config("posefix-small", data=data, output_dir=output, max_iterations=iterations, overrides=edit)
    config.pipeline.datamanager.train_num_rays_per_batch = 256
    return run_training(config, progress=False, quiet=True).config_path


def _make_interrupted_refine(scene: Path, output: Path) -> None:
    from nerf_posefix.workflows.refine import RefineOptions, refine

    def stop_at_4(done: int, loss: Optional[float]) -> None:
        if done == 4:
            raise KeyboardInterrupt

    options = RefineOptions(colmap_model=scene / "sparse" / "0", images=scene / "images", output=output, iterations=8,
                            checkpoint_every=100, threads=1, quiet=True)
    try:
        refine(options, callback=stop_at_4)
    except KeyboardInterrupt:
        pass


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_lock(work: Path, pid: int) -> None:
    import socket

    work.mkdir(parents=True, exist_ok=True)
    (work / ".posefix-lock").write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "command": "refine"}) + "\n")


def _tum_scene(base: Path) -> tuple[Path, Path]:
    """The tiny scene's images named by timestamps and a TUM trajectory of their poses."""
    from nerf_posefix.io.transforms_json import read_transforms_json
    from nerf_posefix.io.tum import write_tum

    cams = read_transforms_json(TINY / "transforms.json")
    images = base / "tum_images"
    images.mkdir(parents=True)
    names = []
    for k, name in enumerate(cams.names):
        stamp = f"{1000 + k * 0.1:.6f}"
        shutil.copy(TINY / "images" / name, images / f"{stamp}.png")
        names.append(stamp)
    traj = base / "traj.txt"
    write_tum(replace(cams, names=names), traj, timestamps=[float(n) for n in names])
    return traj, images


def _degenerate_scene(base: Path, kind: str) -> Path:
    """A transforms.json scene whose 16 images are all one picture (``identical``) or flat grey (``flat``)."""
    from PIL import Image

    data = _copy_scene(base)
    for k, png in enumerate(sorted((data / "images").glob("*.png"))):
        if kind == "identical":
            shutil.copy(TINY / "images" / "000.png", png)
        else:
            Image.new("RGB", (64, 64), (120 + k % 3, 120, 120)).save(png)
    return data


def _other_database(base: Path) -> Path:
    """A COLMAP database of other 64x64 images (views of the bundled 128x128 scene) under the tiny scene's names."""
    from PIL import Image

    from nerf_posefix.io.posed_images import load_posed_images
    from nerf_posefix.sfm.track_building import TrackOptions, match_features

    other = base / "other_capture"  # names as refine --poses transforms.json gives them: images/000.png, ...
    (other / "images").mkdir(parents=True)
    src = ROOT / "assets" / "toybox" / "images"
    for k in range(16):
        with Image.open(src / f"{k + 32:03d}.png") as img:
            img.convert("RGB").resize((64, 64), Image.Resampling.LANCZOS).save(other / "images" / f"{k:03d}.png")
    posed = load_posed_images(TINY / "transforms.json")
    database = base / "other.db"
    match_features(other, posed.cameras.names, posed.intrinsics, database, TrackOptions(matching="exhaustive", num_threads=1))
    return database


def _text_model_with_spaces(base: Path) -> Path:
    """The tiny scene as a text COLMAP model whose image names hold a space (``img 000.png``)."""
    from nerf_posefix.io import colmap as C

    data = base / "spaced"
    (data / "sparse" / "0").mkdir(parents=True)
    shutil.copytree(TINY / "images", data / "images")
    m = C.read_colmap_model(TINY / "sparse" / "0")
    images = {k: C._as_array_image(v._replace(name="img " + v.name)) for k, v in m.images.items()}
    C._write_cameras_text(m.cameras, data / "sparse" / "0" / "cameras.txt")
    C._write_images_text(images, data / "sparse" / "0" / "images.txt")
    C._write_points3D_text({k: C._as_array_point(v) for k, v in m.points3D.items()}, data / "sparse" / "0" / "points3D.txt")
    for v in m.images.values():
        (data / "images" / v.name).rename(data / "images" / f"img {v.name}")
    return data


def _multi_folder(base: Path) -> tuple[Path, Path]:
    """A transforms.json whose images live in two folders with the same file names (cam0/000.png,
    cam1/000.png), and the COLMAP model refine writes of it (names relative to the file's directory)."""
    from nerf_posefix.io.colmap import read_colmap_model, write_colmap_model

    data = base / "multi"
    meta = json.loads((TINY / "transforms.json").read_text())
    frames = []
    model = read_colmap_model(TINY / "sparse" / "0")
    renamed = {}
    for k, frame in enumerate(meta["frames"]):
        name = Path(frame["file_path"]).name
        new = f"images/cam{k % 2}/{k // 2:03d}.png"
        (data / new).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(TINY / "images" / name, data / new)
        frames.append({**frame, "file_path": new})
        renamed[name] = new
    (data / "transforms.json").write_text(json.dumps({**meta, "frames": frames}, indent=2))
    images = {k: im._replace(name=renamed[im.name]) for k, im in model.images.items()}
    written = write_colmap_model(replace(model, images=images), base / "multi_refined" / "sparse" / "0", formats=("bin",))
    return data, written


def _refine_output(base: Path, name: str, scene: Path) -> Path:
    """A finished ``posefix refine`` output (the adjustment only)."""
    out = base / name
    proc = subprocess.run(
        [sys.executable, "-m", "nerf_posefix.cli.main", "refine", "--colmap-model", str(scene / "sparse" / "0"), "--images",
         str(scene / "images"), "--iterations", "0", "--output", str(out)], capture_output=True, text=True, cwd=ROOT,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"set-up refine failed: {proc.stderr[-500:]}")
    return out


def _pycolmap_reads(model: Path, images: int) -> Callable[[], str]:
    def check() -> str:
        import pycolmap

        try:
            rec = pycolmap.Reconstruction(str(model))
        except Exception as err:  # noqa: BLE001
            return f"pycolmap cannot read {model}: {err}"
        names = {im.name for im in rec.images.values()}
        return "" if len(names) == images else f"pycolmap reads {len(names)} distinct names, not {images}"
    return check


# ---------------------------------------------------------------------------------------------
# the cases


def build_cases(base: Path) -> list[Case]:
    """Every probe, with the files it needs under ``base``."""
    from PIL import Image

    from nerf_posefix.io.colmap import read_colmap_model, write_colmap_model

    os.chmod(base, 0o777)
    scene = _copy_scene(base / "scene")
    model, images = scene / "sparse" / "0", scene / "images"
    (base / "link").symlink_to(model, target_is_directory=True)
    locked = base / "locked"
    locked.mkdir()
    os.chmod(locked, 0o555)
    (base / "notes.txt").write_text("a regular file\n")
    (base / "adir").mkdir()

    dup = _copy_scene(base / "dup", transforms=False)
    m = read_colmap_model(dup / "sparse" / "0")
    ims = dict(m.images)
    ims[6] = ims[6]._replace(name=ims[4].name)
    write_colmap_model(replace(m, images=ims), dup / "sparse" / "0", formats=("bin",))

    unreadable = _copy_scene(base / "unreadable", transforms=False)
    os.chmod(unreadable / "sparse" / "0" / "images.bin", 0)

    truncated = _copy_scene(base / "truncated", transforms=False)
    png = truncated / "images" / "005.png"
    png.write_bytes(png.read_bytes()[: png.stat().st_size // 2])
    missing_image = _copy_scene(base / "missing_image", transforms=False)
    (missing_image / "images" / "005.png").unlink()
    sixteen = _copy_scene(base / "sixteen", transforms=False)
    with Image.open(sixteen / "images" / "002.png") as img:
        import numpy as np

        Image.fromarray(np.asarray(img.convert("L"), dtype=np.uint16) * 257).save(sixteen / "images" / "002.png")

    earlier = base / "earlier"  # an earlier posefix output, used as the current directory
    earlier.mkdir()
    (earlier / ".posefix-output").write_text("written by nerf-posefix\n")

    tum = base / "traj"
    tum.mkdir()
    (tum / "nan.txt").write_text("0 0 0 0 0 0 0 1\n1 0 nan 0 0 0 0 1\n")
    (tum / "a.txt").write_text("".join(f"{i * 0.01:.6f} {i} 0 0 0 0 0 1\n" for i in range(50)))
    (tum / "b.txt").write_text("".join(f"{1000 + i * 0.033:.6f} {i} 0 0 0 0 0 1\n" for i in range(15)))

    # issue 25 inputs
    traj, tum_images = _tum_scene(base / "tum")
    zero_focal = _copy_scene(base / "zero_focal", transforms=False)
    zm = read_colmap_model(zero_focal / "sparse" / "0")
    cam = zm.cameras[1]
    write_colmap_model(replace(zm, cameras={1: cam._replace(params=np.array([0.0, *list(cam.params)[1:]]))}),
                       zero_focal / "sparse" / "0", formats=("bin",))
    identical = _degenerate_scene(base / "identical", "identical")
    flat = _degenerate_scene(base / "flat", "flat")
    empty = base / "empty_frames"
    empty.mkdir()
    (empty / "transforms.json").write_text(json.dumps({**json.loads((TINY / "transforms.json").read_text()), "frames": []}))
    not_db = base / "not_a_database.db"
    not_db.write_text("this is not a COLMAP database\n")
    print("set-up: a database of other images, a 0-iteration run, an ns-train-style run, an interrupted refine, "
          "two refine outputs (not timed) ...", flush=True)
    other_db = _other_database(base / "otherdb")
    spaced = _text_model_with_spaces(base)
    multi, multi_model = _multi_folder(base)

    run_data = _copy_scene(base / "run_data")
    config = _make_run(run_data, base / "runs")
    run_dir = config.parent
    broken = base / "broken_run"
    shutil.copytree(run_dir, broken)
    (broken / "config.yml").write_text("!!python/object:nerfstudio.engine.trainer.TrainerConfig\n  : [unbalanced\n")
    no_ckpt = base / "no_checkpoint_run"
    shutil.copytree(run_dir, no_ckpt)
    shutil.rmtree(no_ckpt / "nerfstudio_models")
    lines = (no_ckpt / "config.yml").read_text().splitlines()
    at = lines.index("output_dir: !!python/object/apply:pathlib.PosixPath") + 1
    while lines[at].startswith("- "):
        at += 1
    lines[at:at] = ["- moved"]
    (no_ckpt / "config.yml").write_text("\n".join(lines) + "\n")

    workdir = base / "nswork"  # ns-train posefix-small --data data, run from this directory
    _copy_scene(workdir / "data")
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        ns_config = _make_run(Path("data"), Path("outputs"), iterations=1, ns_train=True)
    finally:
        os.chdir(cwd)

    _make_interrupted_refine(scene, base / "refined")
    shutil.copytree(base / "refined.partial", base / "refined2.partial")
    next((base / "refined2.partial").glob("runs/refine/*/run/config.yml")).write_text("{unbalanced: [")
    killed = base / "killed"  # the work directory of a run killed by SIGKILL (no end recorded, a dead pid's lock)
    shutil.copytree(base / "refined.partial", base / "killed.partial")
    (base / "killed.partial" / "ended.json").unlink(missing_ok=True)
    dead = _dead_pid()
    _write_lock(base / "killed.partial", dead)

    refined_out = _refine_output(base, "a_refine_output", scene)
    victim = base / "victim"  # refine outputs that other commands' --overwrite must not replace

    def fresh_victim() -> None:
        if victim.exists():
            shutil.rmtree(victim)
        shutil.copytree(refined_out, victim, symlinks=True)

    stale = base / "stale"

    def stale_lock() -> None:
        shutil.rmtree(stale, ignore_errors=True)
        shutil.rmtree(base / "stale.partial", ignore_errors=True)
        _write_lock(base / "stale.partial", dead)

    r = ["refine", "--colmap-model", str(model), "--images", str(images)]
    s = str
    inputs = [scene]
    old = [  # issue 14
        Case("refine --output through ..", [*r, "--output", s(scene / "sparse" / ".." / "sparse" / "0"), "--overwrite"], says=("lies inside",)),
        Case("refine --output symlink to the model", [*r, "--output", s(base / "link"), "--overwrite"], says=("lies inside",)),
        Case("refine --output . (an earlier output)", [*r, "--output", ".", "--overwrite"], says=("current directory",)),
        Case("refine --output exists", [*r, "--output", s(base / "adir")], says=("already exists",)),
        Case("refine read-only output parent", [*r, "--output", s(locked / "out")], as_nobody=True, says=("cannot write",)),
        Case("refine --output under a file", [*r, "--output", s(base / "notes.txt" / "out")], says=("is a file",)),
        Case("refine unreadable images.bin", ["refine", "--colmap-model", s(unreadable / "sparse" / "0"), "--images", s(unreadable / "images"), "--output", s(base / "o1")], as_nobody=True, inputs=[unreadable], says=("images.bin",)),
        Case("refine duplicate image names", ["refine", "--colmap-model", s(dup / "sparse" / "0"), "--images", s(dup / "images"), "--output", s(base / "o2")], inputs=[dup], says=("used by several images",)),
        Case("refine missing image", ["refine", "--colmap-model", s(missing_image / "sparse" / "0"), "--images", s(missing_image / "images"), "--output", s(base / "o3")], inputs=[missing_image], says=("005.png",)),
        Case("refine truncated image (full decode)", ["refine", "--colmap-model", s(truncated / "sparse" / "0"), "--images", s(truncated / "images"), "--output", s(base / "o4")], inputs=[truncated], says=("cannot decode",)),
        Case("refine 16-bit image", ["refine", "--colmap-model", s(sixteen / "sparse" / "0"), "--images", s(sixteen / "images"), "--output", s(base / "o5")], inputs=[sixteen], says=("16-bit",)),
        Case("refine --resume, fewer --iterations", [*r, "--output", s(base / "refined"), "--resume", "--iterations", "2"], inputs=[scene, base / "refined.partial"], says=("already done 4 iterations",)),
        Case("refine --resume, broken run config", [*r, "--output", s(base / "refined2"), "--resume"], inputs=[scene, base / "refined2.partial"], says=("cannot read the run config",)),
        Case("perturb --output through ..", ["perturb", "--data", s(scene), "--output", s(images / ".."), "--overwrite"], says=("lies inside",)),
        Case("perturb --output . (an earlier output)", ["perturb", "--data", s(scene), "--output", ".", "--overwrite"], says=("current directory",)),
        Case("perturb read-only output parent", ["perturb", "--data", s(scene), "--output", s(locked / "out")], as_nobody=True, says=("cannot write",)),
        Case("perturb --output under a file", ["perturb", "--data", s(scene), "--output", s(base / "notes.txt" / "out")], says=("is a file",)),
        Case("perturb duplicate image names", ["perturb", "--data", s(dup), "--output", s(base / "o6")], inputs=[dup], says=("used by several images",)),
        Case("export missing run", ["export", "--load-config", s(base / "missing"), "--output", s(base / "e1")], says=("no such run",)),
        Case("export --output = its dataset", ["export", "--load-config", s(config), "--output", s(run_data), "--overwrite"], inputs=[run_data, run_dir], says=("dataset",)),
        Case("export --output inside the run", ["export", "--load-config", s(run_dir), "--output", s(run_dir / "export")], inputs=[run_dir], says=("run",)),
        Case("export broken run config", ["export", "--load-config", s(broken), "--output", s(base / "e2")], inputs=[broken], says=("cannot read the run config",)),
        Case("export run without checkpoint", ["export", "--load-config", s(no_ckpt), "--output", s(base / "e3")], inputs=[no_ckpt], says=("no nerfstudio checkpoint",)),
        Case("export read-only output parent", ["export", "--load-config", s(config), "--output", s(locked / "out")], as_nobody=True, says=("cannot write",)),
        Case("export --output under a file", ["export", "--load-config", s(config), "--output", s(base / "notes.txt" / "out")], says=("is a file",)),
        Case("compare --json a directory", ["compare", "--reference", s(model), s(scene / "transforms.json"), "--json", s(base / "adir")], says=("is a directory",)),
        Case("compare --json inside the run", ["compare", "--reference", s(run_dir), s(scene / "transforms.json"), "--json", s(run_dir / "r.json")], inputs=[scene, run_dir], says=("lies inside",)),
        Case("compare read-only --output parent", ["compare", "--reference", s(model), s(scene / "transforms.json"), "--output", s(locked / "out")], as_nobody=True, says=("cannot write",)),
        Case("compare read-only --json parent", ["compare", "--reference", s(model), s(scene / "transforms.json"), "--json", s(locked / "r.json")], as_nobody=True, says=("cannot write",)),
        Case("compare --output under a file", ["compare", "--reference", s(model), s(scene / "transforms.json"), "--output", s(base / "notes.txt" / "x")], says=("is a file",)),
        Case("compare run without checkpoint", ["compare", "--reference", s(model), s(no_ckpt)], inputs=[scene, no_ckpt], says=("no nerfstudio checkpoint",)),
        Case("compare broken run config", ["compare", "--reference", s(model), s(broken)], inputs=[scene, broken], says=("cannot read the run config",)),
        Case("compare unknown format (PNG)", ["compare", "--reference", s(model), s(images / "000.png")], says=("not a pose file",)),
        Case("compare NaN in a TUM file", ["compare", "--reference", s(model), s(tum / "nan.txt")], inputs=[scene, tum], says=("non-finite",)),
        Case("compare unreadable images.bin", ["compare", "--reference", s(unreadable / "sparse" / "0"), s(scene / "transforms.json")], as_nobody=True, inputs=[unreadable, scene], says=("images.bin",)),
        Case("compare no timestamp pair", ["compare", "--reference", s(tum / "a.txt"), s(tum / "b.txt")], inputs=[tum], says=("no pose within",)),
        Case("demo --iterations 0", ["demo", "--output", s(base / "d1"), "--iterations", "0"], output=base / "d1", says=("--iterations",)),
        Case("demo --rotation-deg 181", ["demo", "--output", s(base / "d2"), "--rotation-deg", "181"], output=base / "d2", says=("--rotation-deg",)),
        Case("demo --method nerfacto", ["demo", "--output", s(base / "d3"), "--method", "nerfacto"], output=base / "d3", says=("--method",)),
        Case("demo --output . (an earlier output)", ["demo", "--output", ".", "--overwrite"], says=("current directory",)),
    ]
    for case in old:
        case.issue = "14"
        case.inputs = case.inputs or inputs
    t = ["refine", "--poses", s(traj), "--images", s(tum_images)]
    new = [
        # 1. export where users export
        Case("1 export under the working directory of an ns-train run (relative --data)",
             ["export", "--load-config", s(ns_config), "--output", "exports/refined", "--overwrite"], code=0, cwd=workdir,
             inputs=[workdir / "data", workdir / "outputs"], output=workdir / "exports" / "refined", before_work=False),
        # 3./4. inputs a later stage divides by, opens or hands to pycolmap
        Case("3/4 --camera with zero focal lengths (TUM)", [*t, "--camera", "PINHOLE 0,0,32,32", "--output", s(base / "n1")],
             inputs=[traj, tum_images], output=base / "n1", says=("focal length fx = 0",)),
        Case("3 --camera with a negative focal length (TUM)", [*t, "--camera", "PINHOLE -60,60,32,32", "--output", s(base / "n2")],
             inputs=[traj, tum_images], output=base / "n2", says=("focal length fx = -60",)),
        Case("3 zero focal length in the COLMAP model", ["refine", "--colmap-model", s(zero_focal / "sparse" / "0"), "--images",
             s(zero_focal / "images"), "--output", s(base / "n3")], inputs=[zero_focal], output=base / "n3", says=("cameras.bin", "not positive")),
        Case("3/6 all images identical (transforms.json)", ["refine", "--poses", s(identical / "transforms.json"), "--output", s(base / "n4")],
             inputs=[identical], output=base / "n4", says=("same picture",)),
        Case("6 images without texture (transforms.json)", ["refine", "--poses", s(flat / "transforms.json"), "--output", s(base / "n5")],
             inputs=[flat], output=base / "n5", says=("no texture",)),
        Case("3 --database of other images with the same names", ["refine", "--poses", s(scene / "transforms.json"), "--database", s(other_db),
             "--output", s(base / "n6")], inputs=[scene, other_db], output=base / "n6", says=("other images",)),
        Case("4 --database not a database", ["refine", "--poses", s(scene / "transforms.json"), "--database", s(not_db), "--output", s(base / "n7")],
             inputs=[scene, not_db], output=base / "n7", says=("not a COLMAP database",)),
        Case("4 --database a directory", ["refine", "--poses", s(scene / "transforms.json"), "--database", s(base / "adir"), "--output", s(base / "n8")],
             inputs=[scene], output=base / "n8", says=("no such file",)),
        # 5. two readers that agree
        Case("5 text model with spaces in image names", ["refine", "--colmap-model", s(spaced / "sparse" / "0"), "--images", s(spaced / "images"),
             "--iterations", "0", "--output", s(base / "spaced_out"), "--overwrite"], code=0, inputs=[spaced], output=base / "spaced_out",
             before_work=False, check=_pycolmap_reads(base / "spaced_out" / "sparse" / "0", 16)),
        Case("5 compare a multi-folder transforms.json with itself", ["compare", "--reference", s(multi / "transforms.json"), s(multi / "transforms.json")],
             code=0, inputs=[multi], before_work=False),
        Case("5 compare it with refine's model of it (names images/cam0/...)", ["compare", "--reference", s(multi / "transforms.json"), s(multi_model)],
             code=0, inputs=[multi, multi_model], before_work=False),
        # 6. slow or unclear errors
        Case("6 --camera parse error", [*t, "--camera", "PINHOLE 60,60", "--output", s(base / "n9")], inputs=[traj, tum_images], output=base / "n9",
             says=("takes 4 parameters",)),
        Case("6 --camera unknown model", [*t, "--camera", "FISHEYE 60,60,32,32", "--output", s(base / "n10")], inputs=[traj, tum_images],
             output=base / "n10", says=("unknown camera model",)),
        Case("6 --device cuda without CUDA", [*r, "--device", "cuda", "--iterations", "10", "--output", s(base / "n11")], output=base / "n11",
             says=("no CUDA device",)),
        Case("6 --ba-scale-px -1", [*r, "--ba-scale-px", "-1", "--output", s(base / "n12")], output=base / "n12", says=("--ba-scale-px",)),
        Case("6 compare with no shared names", ["compare", "--reference", s(model), s(tum_images.parent / "traj.txt"), "--match", "name"],
             inputs=[scene, traj], says=("no camera in common",)),
        Case("6 empty frames list", ["refine", "--poses", s(empty / "transforms.json"), "--output", s(base / "n13")], inputs=[empty],
             output=base / "n13", says=("'frames' list is empty",)),
        # 2. one run per output (stateful)
        Case("2 work directory of a killed run (dead pid's lock, no end recorded)", [*r, "--output", s(killed)],
             inputs=[scene, base / "killed.partial"], says=("no longer running", "--resume")),
        Case("2 stale lock of a dead process: the run proceeds", [*r, "--iterations", "0", "--output", s(stale)], code=0, setup=stale_lock,
             output=stale, before_work=False),
        # 7. minor
        Case("7 export --overwrite of a refine output", ["export", "--load-config", s(config), "--output", s(victim), "--overwrite"],
             setup=fresh_victim, inputs=[victim], says=("written by posefix refine",)),
        Case("7 compare --overwrite of a refine output", ["compare", "--reference", s(model), s(scene / "transforms.json"), "--output", s(victim),
             "--overwrite"], setup=fresh_victim, inputs=[victim], says=("written by posefix refine",)),
        Case("7 output under /proc", [*r, "--output", "/proc/posefix-out"], says=("/proc",)),
        Case("7 perturb --overwrite of a refine output (workflows/perturb.py: another helper)", ["perturb", "--data", s(scene), "--output",
             s(victim), "--overwrite"], setup=fresh_victim, inputs=[victim], says=("written by posefix refine",), repeats=1),
        Case("7 demo --overwrite of a refine output (demo files: another helper)", ["demo", "--output", s(victim), "--overwrite"],
             setup=fresh_victim, inputs=[victim], says=("written by posefix refine",), repeats=1),
    ]
    for case in new:
        case.inputs = case.inputs or inputs
    return old + new


# ---------------------------------------------------------------------------------------------
# running


def _env(as_nobody: bool) -> dict[str, str]:
    nobody = "1" if as_nobody and os.geteuid() == 0 else "0"
    return {**os.environ, "POSEFIX_AS_NOBODY": nobody, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _parse(proc_stderr: str) -> tuple[bool, str]:
    lines = proc_stderr.strip().splitlines()
    torch_loaded = json.loads(lines[-1]).get("torch", False) if lines and lines[-1].startswith("{") else True
    errors = [line for line in lines if line.startswith("posefix: error: ")]
    if len(errors) == 1:
        return torch_loaded, errors[0]
    if "Traceback" in proc_stderr:
        return torch_loaded, "(traceback) " + " | ".join(lines[-3:-1])
    return torch_loaded, f"({len(errors)} error lines)" if errors else ""


def run_case(argv: list[str], cwd: Path, as_nobody: bool) -> tuple[int, float, bool, str]:
    """``(exit code, wall seconds, torch imported, the error line)`` of one run."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _WRAPPER, *argv], capture_output=True, text=True, cwd=cwd, env=_env(as_nobody))
    seconds = time.perf_counter() - start
    torch_loaded, line = _parse(proc.stderr)
    return proc.returncode, seconds, torch_loaded, line


def probe(case: Case, base: Path, repeats: int) -> Row:
    marks = _existing_marks(base)
    before = digest(*case.inputs)
    runs = []
    for _ in range(max(1, case.repeats or repeats)):
        if case.setup is not None:
            case.setup()
            before = digest(*case.inputs) if not runs else before
        runs.append(run_case(case.argv, case.cwd or base / "earlier", case.as_nobody))
    code, _, torch_loaded, line = runs[-1]
    seconds = statistics.median(r[1] for r in runs)
    unchanged = digest(*case.inputs) == before
    left = leftovers(base, marks)
    if case.output is not None and case.code != 0 and os.path.lexists(case.output):
        left.append(f"{case.output} (an output)")
    extra = ""
    if case.code == 0 and case.output is not None and not case.output.exists():
        extra = f"no output {case.output}"
    if case.check is not None and not extra:
        extra = case.check()
    ok_words = all(w in line for w in case.says) if case.code == 2 else True
    return Row(case.name, code, case.code, seconds, torch_loaded, unchanged, left, line, ok_words, case.before_work, extra)


def _finish(proc: subprocess.Popen, start: float) -> tuple[int, float, float, str]:
    """Wait for ``proc``: ``(exit code, wall seconds since start, CPU seconds it used, stderr)``."""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read() if proc.stderr is not None else ""
    return proc.returncode, wall, usage.ru_utime + usage.ru_stime, err


def probe_concurrent(base: Path) -> list[Row]:
    """Two refine runs on one output started together, and a third with --overwrite while they run: one
    finishes (its output reads in pycolmap), the others are refused in one line, nothing of the live run
    is touched."""
    scene = base / "scene"
    out = base / "concurrent"
    argv = ["refine", "--colmap-model", str(scene / "sparse" / "0"), "--images", str(scene / "images"), "--iterations", "0",
            "--threads", "1", "--output", str(out)]
    before = digest(scene)
    marks = _existing_marks(base)
    starts, procs = [], []
    for _ in range(2):
        starts.append(time.perf_counter())
        procs.append(subprocess.Popen([sys.executable, "-c", _WRAPPER, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      cwd=base / "earlier", env=_env(False)))
    results: dict[int, tuple[int, float, float, str]] = {}
    third = None
    deadline = time.time() + 60
    while time.time() < deadline and not (base / "concurrent.partial" / "refine_input.json").exists():
        for k, proc in enumerate(procs):  # the refused one exits meanwhile
            if k not in results and proc.poll() is None:
                continue
            if k not in results:
                results[k] = _finish(proc, starts[k])
        time.sleep(0.02)
    if (base / "concurrent.partial").exists():
        t0 = time.perf_counter()
        proc3 = subprocess.Popen([sys.executable, "-c", _WRAPPER, *argv, "--overwrite"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, cwd=base / "earlier", env=_env(False))
        third = _finish(proc3, t0)
    for k, proc in enumerate(procs):
        if k not in results:
            results[k] = _finish(proc, starts[k])
    rows = []
    ordered = [results[k] for k in range(len(procs))]
    winners = [r for r in ordered if r[0] == 0]
    losers = [r for r in ordered if r[0] != 0]
    reads = _pycolmap_reads(out / "sparse" / "0", 16)() if out.exists() else f"no output {out}"
    left = leftovers(base, marks)
    unchanged = digest(scene) == before
    first = winners[0] if winners else ordered[0]
    rows.append(Row("2 two refine runs on one output started together: the first", first[0], 0, first[1], True, unchanged, left,
                    "(output reads in pycolmap)" if not reads else reads, True, False,
                    reads if len(winners) == 1 else f"{len(winners)} runs finished"))
    for label, result in (("2 ... the second, started with it (refused)", losers[0] if losers else None),
                          ("2 ... a third with --overwrite while the first runs (refused)", third)):
        if result is None:
            continue
        code, wall, cpu, err = result
        torch_loaded, line = _parse(err)
        rows.append(Row(f"{label}; CPU {cpu:.2f} s (wall: the first run competes for the cores)", code, 2, wall, torch_loaded, unchanged,
                        left, line, "another posefix run" in line, True, cpu=cpu))
    return rows


def probe_signal(base: Path, sig: int, expected: int) -> Row:
    """A refine run with a NeRF stage, sent ``sig`` once training runs: the exit code, one message, no
    traceback, the input unchanged, a work directory only when it keeps a checkpoint (and says so)."""
    scene = base / "scene"
    name = "sigterm" if sig == signal.SIGTERM else "sigint"
    out = base / name
    argv = ["refine", "--colmap-model", str(scene / "sparse" / "0"), "--images", str(scene / "images"), "--iterations", "400",
            "--checkpoint-every", "1000", "--threads", "1", "--output", str(out)]
    before = digest(scene)
    marks = _existing_marks(base)
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", _WRAPPER, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=base / "earlier", env=_env(False), preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and not any((base / f"{name}.partial").glob("runs/refine/*/run/config.yml")):
        time.sleep(0.1)
    time.sleep(3.0)  # training iterations under way
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    seconds = time.perf_counter() - start
    lines = [line for line in err.strip().splitlines() if not line.startswith("{")]
    message = next((line for line in lines if "posefix refine: " in line and ("interrupted" in line or "terminated" in line)), " | ".join(lines[-2:]))
    work = base / f"{name}.partial"
    kept = "keeps the checkpoint" in message
    left = [p for p in leftovers(base, marks) if not (kept and Path(p) == work)]
    traceback = "Traceback" in err
    row = Row(f"7 {signal.Signals(sig).name} during training", proc.returncode, expected, seconds, True, digest(scene) == before, left,
              message, not traceback, False, "traceback" if traceback else ("" if kept or not work.exists() else "work directory kept, not said"))
    shutil.rmtree(work, ignore_errors=True)
    return row


def probe_disk_full(base: Path) -> Row:
    """refine writing into a 100 KiB tmpfs (the adjusted model cannot be written in full): one line naming
    the full disk, exit 2, nothing left on it. Root only (mount)."""
    scene = base / "scene"
    mnt = base / "full"
    mnt.mkdir(exist_ok=True)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=100k", "tmpfs", str(mnt)], capture_output=True).returncode:
        return Row("4 disk full while the adjusted model is written", -1, 2, 0.0, False, True, [], "skipped (needs root and a tmpfs mount)",
                   True, False)
    try:
        before = digest(scene)
        argv = ["refine", "--colmap-model", str(scene / "sparse" / "0"), "--images", str(scene / "images"), "--iterations", "0",
                "--output", str(mnt / "out")]
        code, seconds, torch_loaded, line = run_case(argv, base / "earlier", False)
        left = sorted(str(p) for p in mnt.iterdir())
        return Row("4 disk full while the adjusted model is written", code, 2, seconds, torch_loaded, digest(scene) == before, left, line,
                   "no space left" in line.lower(), False)
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="runs per case (the median time is printed)")
    parser.add_argument("--keep", type=Path, default=None, help="build the cases in this new directory and keep it")
    parser.add_argument("--only", default=None, help="run only the cases whose name holds this text ('special': only the "
                        "concurrency, signal and full-disk probes)")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="posefix-errors-")) if args.keep is None else args.keep
    base.mkdir(parents=True, exist_ok=True)
    try:
        cases = build_cases(base)
        if args.only:
            cases = [c for c in cases if args.only in c.name]  # "special": only the concurrency, signal and disk probes
        print(f"{len(cases)} cases + concurrency, signals, full disk; {args.repeats} runs each (median), {sys.executable}")
        print("| issue | case | exit (expected) | seconds | torch | input unchanged | left behind | message |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        rows: list[tuple[str, Row]] = []

        def show(issue: str, row: Row) -> None:
            message = (row.extra + "; " if row.extra else "") + row.line.replace(str(base), "$TMP")
            if len(message) > 150:
                message = message[:147] + "..."
            left = ", ".join(p.replace(str(base), "$TMP") for p in row.leftovers) or "nothing"
            mark = "" if row.passed else " **NOT MET**"
            print(f"| {issue} | {row.name}{mark} | {row.code} ({row.expected}) | {row.seconds:.2f} | {'yes' if row.torch else 'no'} | "
                  f"{'yes' if row.unchanged else 'NO'} | {left} | {message} |", flush=True)
            rows.append((issue, row))

        for case in cases:
            show(case.issue, probe(case, base, args.repeats))
        if not args.only or args.only == "special":
            for row in probe_concurrent(base):
                show("25", row)
            show("25", probe_signal(base, signal.SIGTERM, 143))
            show("25", probe_signal(base, signal.SIGINT, 130))
            show("25", probe_disk_full(base))
        failed = [f"{row.name}" for _, row in rows if not row.passed and row.code != -1]
        print(f"\n{len(rows) - len(failed)} of {len(rows)} cases meet their target (exit code, one line with the expected words, input "
              f"unchanged, nothing left behind, < {TARGET_S:g} s without torch for errors found before work)"
              + ("" if not failed else "; not met: " + "; ".join(failed)))
    finally:
        if args.keep is None:
            subprocess.run(["umount", str(base / "full")], capture_output=True)
            for p in [base, *base.rglob("*")]:
                try:
                    if p.is_dir() and not p.is_symlink():
                        os.chmod(p, 0o755)
                    elif p.is_file() and not p.is_symlink():
                        os.chmod(p, 0o644)
                except OSError:
                    pass
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
