"""Benchmark: how fast each error path of the ``posefix`` command line answers (issue 14).

Usage: ``python -m benchmarks.error_latency [--repeats 3] [--keep DIR]``.

Builds bad inputs in a temporary directory (a copy of ``assets/toybox_tiny``, a 0-iteration
``posefix-small`` run, an interrupted ``refine`` run; set-up time is not measured), then runs every error
case of the command as a fresh subprocess (``python -c`` calling ``nerf_posefix.cli.main.main``, i.e. the
``posefix`` command with its whole start-up) and prints, per case, the exit code, the median wall time of
``--repeats`` runs, whether torch had been imported when it answered, and the one line it printed.

Target: every path check answers in under 1 s, before torch / nerfstudio are imported. Permission cases
run as the user ``nobody`` when this runs as root (so that permissions apply); the subprocess then
imports posefix's command modules before it drops privileges, and that time is included.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "assets" / "toybox_tiny"
TARGET_S = 1.0
NOBODY = 65534

#: Runs the command in a subprocess and reports, on its last stderr line, whether torch was imported.
#: With POSEFIX_AS_NOBODY=1 (root only) it first imports what the error paths import (a root-owned
#: interpreter under /root is unreadable for nobody), then drops the effective user to nobody.
_WRAPPER = (
    "import sys, json, os, importlib\n"
    "from nerf_posefix.cli.main import main, _load_subcommands\n"
    "if os.environ.get('POSEFIX_AS_NOBODY') == '1':\n"
    "    import tyro\n"
    "    tyro.extras.subcommand_cli_from_dict(_load_subcommands(), args=sys.argv[1:])  # parse once: tyro's imports\n"
    "    for m in ('nerf_posefix.workflows.compare', 'nerf_posefix.workflows.reports', 'nerf_posefix.workflows.export',\n"
    "              'nerf_posefix.workflows.perturb', 'nerf_posefix.io.sources', 'PIL.Image', 'PIL.PngImagePlugin',\n"
    "              'rich.console', 'rich.table'):\n"
    "        importlib.import_module(m)\n"
    "    os.setegid(65534); os.seteuid(65534)\n"
    "code = main(sys.argv[1:])\n"
    "print(json.dumps({'torch': 'torch' in sys.modules}), file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def _copy_scene(dst: Path, transforms: bool = True) -> Path:
    dst.mkdir(parents=True)
    shutil.copytree(TINY / "sparse", dst / "sparse")
    shutil.copytree(TINY / "images", dst / "images")
    if transforms:
        shutil.copy(TINY / "transforms.json", dst / "transforms.json")
    return dst


def _make_run(data: Path, output: Path) -> Path:
    from nerfstudio.data.dataparsers.colmap_dataparser import ColmapDataParserConfig

    from nerf_posefix.plugin.training import in_process_config, run_training

    def edit(config) -> None:  # noqa: ANN001
        config.pipeline.datamanager.dataparser = ColmapDataParserConfig(data=data, colmap_path=Path("sparse/0"))

    config = in_process_config("posefix-small", data=data, output_dir=output, max_iterations=0, overrides=edit)
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


def build_cases(base: Path) -> list[tuple[str, list[str], bool]]:
    """``(case, argv, as nobody)`` for every error path, with the files they need under ``base``."""
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

    print("set-up: a 0-iteration posefix-small run and an interrupted refine (not timed) ...", flush=True)
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
    _make_interrupted_refine(scene, base / "refined")
    shutil.copytree(base / "refined.partial", base / "refined2.partial")
    next((base / "refined2.partial").glob("runs/refine/*/run/config.yml")).write_text("{unbalanced: [")

    r = ["refine", "--colmap-model", str(model), "--images", str(images)]
    s = str
    return [
        ("refine --output through ..", [*r, "--output", s(scene / "sparse" / ".." / "sparse" / "0"), "--overwrite"], False),
        ("refine --output symlink to the model", [*r, "--output", s(base / "link"), "--overwrite"], False),
        ("refine --output . (an earlier output)", [*r, "--output", ".", "--overwrite"], False),
        ("refine --output exists", [*r, "--output", s(base / "adir")], False),
        ("refine read-only output parent", [*r, "--output", s(locked / "out")], True),
        ("refine --output under a file", [*r, "--output", s(base / "notes.txt" / "out")], False),
        ("refine unreadable images.bin", ["refine", "--colmap-model", s(unreadable / "sparse" / "0"), "--images", s(unreadable / "images"), "--output", s(base / "o1")], True),
        ("refine duplicate image names", ["refine", "--colmap-model", s(dup / "sparse" / "0"), "--images", s(dup / "images"), "--output", s(base / "o2")], False),
        ("refine missing image", ["refine", "--colmap-model", s(missing_image / "sparse" / "0"), "--images", s(missing_image / "images"), "--output", s(base / "o3")], False),
        ("refine truncated image (full decode)", ["refine", "--colmap-model", s(truncated / "sparse" / "0"), "--images", s(truncated / "images"), "--output", s(base / "o4")], False),
        ("refine 16-bit image", ["refine", "--colmap-model", s(sixteen / "sparse" / "0"), "--images", s(sixteen / "images"), "--output", s(base / "o5")], False),
        ("refine --resume, fewer --iterations", [*r, "--output", s(base / "refined"), "--resume", "--iterations", "2"], False),
        ("refine --resume, broken run config", [*r, "--output", s(base / "refined2"), "--resume"], False),
        ("perturb --output through ..", ["perturb", "--data", s(scene), "--output", s(images / ".."), "--overwrite"], False),
        ("perturb --output . (an earlier output)", ["perturb", "--data", s(scene), "--output", ".", "--overwrite"], False),
        ("perturb read-only output parent", ["perturb", "--data", s(scene), "--output", s(locked / "out")], True),
        ("perturb --output under a file", ["perturb", "--data", s(scene), "--output", s(base / "notes.txt" / "out")], False),
        ("perturb duplicate image names", ["perturb", "--data", s(dup), "--output", s(base / "o6")], False),
        ("export missing run", ["export", "--load-config", s(base / "missing"), "--output", s(base / "e1")], False),
        ("export --output = its dataset", ["export", "--load-config", s(config), "--output", s(run_data), "--overwrite"], False),
        ("export --output inside the run", ["export", "--load-config", s(run_dir), "--output", s(run_dir / "export")], False),
        ("export broken run config", ["export", "--load-config", s(broken), "--output", s(base / "e2")], False),
        ("export run without checkpoint", ["export", "--load-config", s(no_ckpt), "--output", s(base / "e3")], False),
        ("export read-only output parent", ["export", "--load-config", s(config), "--output", s(locked / "out")], True),
        ("export --output under a file", ["export", "--load-config", s(config), "--output", s(base / "notes.txt" / "out")], False),
        ("compare --json a directory", ["compare", "--reference", s(model), s(scene / "transforms.json"), "--json", s(base / "adir")], False),
        ("compare --json inside the run", ["compare", "--reference", s(run_dir), s(scene / "transforms.json"), "--json", s(run_dir / "r.json")], False),
        ("compare read-only --output parent", ["compare", "--reference", s(model), s(scene / "transforms.json"), "--output", s(locked / "out")], True),
        ("compare read-only --json parent", ["compare", "--reference", s(model), s(scene / "transforms.json"), "--json", s(locked / "r.json")], True),
        ("compare --output under a file", ["compare", "--reference", s(model), s(scene / "transforms.json"), "--output", s(base / "notes.txt" / "x")], False),
        ("compare run without checkpoint", ["compare", "--reference", s(model), s(no_ckpt)], False),
        ("compare broken run config", ["compare", "--reference", s(model), s(broken)], False),
        ("compare unknown format (PNG)", ["compare", "--reference", s(model), s(images / "000.png")], False),
        ("compare NaN in a TUM file", ["compare", "--reference", s(model), s(tum / "nan.txt")], False),
        ("compare unreadable images.bin", ["compare", "--reference", s(unreadable / "sparse" / "0"), s(scene / "transforms.json")], True),
        ("compare no timestamp pair", ["compare", "--reference", s(tum / "a.txt"), s(tum / "b.txt")], False),
        ("demo --iterations 0", ["demo", "--output", s(base / "d1"), "--iterations", "0"], False),
        ("demo --rotation-deg 181", ["demo", "--output", s(base / "d2"), "--rotation-deg", "181"], False),
        ("demo --method nerfacto", ["demo", "--output", s(base / "d3"), "--method", "nerfacto"], False),
        ("demo --output . (an earlier output)", ["demo", "--output", ".", "--overwrite"], False),
    ]


def run_case(argv: list[str], cwd: Path, as_nobody: bool) -> tuple[int, float, bool, str]:
    """``(exit code, wall seconds, torch imported, the error line)`` of one run."""
    start = time.perf_counter()
    nobody = "1" if as_nobody and os.geteuid() == 0 else "0"
    proc = subprocess.run(
        [sys.executable, "-c", _WRAPPER, *argv], capture_output=True, text=True, cwd=cwd,
        env={**os.environ, "POSEFIX_AS_NOBODY": nobody, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")},
    )
    seconds = time.perf_counter() - start
    lines = proc.stderr.strip().splitlines()
    torch_loaded = bool(lines) and json.loads(lines[-1]).get("torch", False) if lines and lines[-1].startswith("{") else True
    errors = [line for line in lines if line.startswith("posefix: error: ")]
    return proc.returncode, seconds, torch_loaded, errors[0] if len(errors) == 1 else f"({len(errors)} error lines) " + " | ".join(lines[-3:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="runs per case (the median is printed)")
    parser.add_argument("--keep", type=Path, default=None, help="build the cases in this new directory and keep it")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="posefix-errors-")) if args.keep is None else args.keep
    base.mkdir(parents=True, exist_ok=True)
    try:
        cases = build_cases(base)
        print(f"{len(cases)} error cases, {args.repeats} runs each (median), {sys.executable}")
        print("| case | exit | seconds | torch loaded | message |\n| --- | --- | --- | --- | --- |")
        slow, wrong = [], []
        for name, argv, as_nobody in cases:
            runs = [run_case(argv, base / "earlier", as_nobody) for _ in range(max(1, args.repeats))]
            code, _, torch_loaded, line = runs[-1]
            seconds = statistics.median(r[1] for r in runs)
            message = line.replace(str(base), "$TMP")
            if len(message) > 110:
                message = message[:107] + "..."
            print(f"| {name} | {code} | {seconds:.2f} | {'yes' if torch_loaded else 'no'} | {message} |", flush=True)
            if seconds >= TARGET_S:
                slow.append(name)
            if code != 2 or not line.startswith("posefix: error: "):
                wrong.append(name)
        print(f"\nslowest path check under {TARGET_S:g} s: {'all' if not slow else 'NOT ' + ', '.join(slow)}; "
              f"one line and exit 2: {'all' if not wrong else 'NOT ' + ', '.join(wrong)}")
    finally:
        if args.keep is None:
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
