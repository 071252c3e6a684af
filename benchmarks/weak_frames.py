"""Weak frames (issue 22): captures where some frames are blurred and washed out, so tracks cannot hold them.

::

    PYTHONPATH=. .venv/bin/python -m benchmarks.weak_frames --output benchmark_results/weak_frames --scenes toybox --jobs 2
    PYTHONPATH=. .venv/bin/python -m benchmarks.weak_frames --output benchmark_results/weak_frames --scenes castle --blur 2 6 12

Scenes (the clean images of :mod:`benchmarks.poses_from_anywhere`'s scenes, every 4th image in name order
degraded by a Gaussian blur of ``--blur`` pixels (σ, at the image's own resolution) and a contrast cut to 40 %
around its mean), poses perturbed and given as a pose-only transforms.json. ``--kind motion``: a linear motion
blur instead, ``--blur`` its streak's length in pixels (a box of length L has σ = L / √12 along it and none
across), in a direction drawn per image (seeded by its name): what a moving phone or drone leaves. ``--kind noise``:
no blur, the contrast cut and then Gaussian noise of σ ``--blur`` grey levels (of 255): a dim, grainy frame (haze,
water, low light), whose keypoints drown in the noise while its pixels still hold the scene on average:

* ``toybox``: 64 views 128x128 (16 degraded), 3 deg / 5 % of the radius; default blur 3 px;
* ``castle``: castle-P30, 30 photos 768x512 (8 degraded), LIDAR ground truth perturbed 2 deg / 3 %; default
  blur 6 px.

Rows (``posefix-small`` for every NeRF, the same iteration budget ``--iterations``; castle's NeRF rows
train at 1/4 size as in the poses-from-anywhere benchmark, refine picks its own size):

* ``input``: the noisy poses;
* ``adjustment``: ``posefix refine --iterations 0 --no-frame-placement --no-photometric-alignment`` (tracks built
  from the images, robust adjustment: the adjustment alone);
* ``front-end``: ``posefix refine --iterations 0`` (the whole front end without a NeRF: the adjustment, then the
  blurred frames no pair holds placed against the adjusted ones, :mod:`nerf_posefix.sfm.frame_placement`, then the
  frames still weakly held aligned by their intensities, :mod:`nerf_posefix.sfm.photometric_alignment`);
* ``nerfstudio``: nerfstudio's camera optimizer (its L2 penalties) alone, from the noisy poses;
* ``posefix-photometric``: posefix-small's homography prior alone (no tracks), from the noisy poses;
* ``default``: ``posefix refine`` with its defaults: the adjustment, then (weakly held images found) the
  NeRF stage with the track term and the pixels prior, σ per camera from how well its tracks hold it;
* ``default-homography`` / ``default-l2``: the same with the paper's unscaled homography prior or
  nerfstudio's L2 penalties in place of the pixels prior (``--regularizer``), for the choice of the prior;
* ``plugin``: the ``ns-train posefix-small`` path with its defaults (the pipeline's front end builds tracks from
  the NeRF rows' images, the NeRF refines the weakly held cameras, then the pipeline's weak alignment), the
  poses read back from its checkpoint;
* ``plugin-full-res``: the same on the full-resolution dataset, trained at the size ``posefix refine``'s NeRF stage
  picks (the dataparser's ``downscale_factor``, its images in ``images_F`` beside ``images`` as nerfstudio reads
  them): the front end builds its tracks from the full-resolution images, as refine does, so this row and
  ``default`` differ by the path only (castle: tracks at 768x512, training at 384x256; toybox: as ``plugin``).

Errors: a Sim(3) aligns each estimate to the ground truth **on the sharp images only**; then per image the
rotation error (deg) and the centre error (% of the ground truth's radius), medians over the degraded and
over the sharp images. Each (scene, blur, seed, row) runs in its own process and writes
``OUT/rows/KEY.json`` (resumable); the table goes to ``OUT/weak_frames.csv``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ROWS = ("input", "adjustment", "front-end", "nerfstudio", "posefix-photometric", "default", "default-homography", "default-l2", "plugin",
        "plugin-full-res")
NERF_ROWS = ("nerfstudio", "posefix-photometric")
DEFAULT_BLUR = {"toybox": 3.0, "castle": 6.0}
#: The pose noise of each scene (a level of :mod:`benchmarks.poses_from_anywhere`'s scene).
LEVEL = {"toybox": "3deg-5pct", "castle": "2deg-3pct"}
CONTRAST = 0.4
EVERY = 4


def degraded_names(names: Sequence[str]) -> list[str]:
    """Every :data:`EVERY`-th image in name order (the first included)."""
    return sorted(names)[::EVERY]


KINDS = ("gaussian", "motion", "noise")


def motion_kernel(length: float, angle_rad: float) -> np.ndarray:
    """``[k, k]`` kernel (sums to 1) of a straight streak ``length`` px long through the centre at ``angle_rad``
    (from the image's x axis): points every quarter pixel along it, splatted bilinearly."""
    half = int(np.ceil(length / 2.0)) + 1
    kernel = np.zeros((2 * half + 1, 2 * half + 1))
    t = np.linspace(-length / 2.0, length / 2.0, max(2, int(np.ceil(4 * length)) + 1))
    x, y = half + t * np.cos(angle_rad), half + t * np.sin(angle_rad)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = x - x0, y - y0
    for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        np.add.at(kernel, (y0 + dy, x0 + dx), w)
    return kernel / kernel.sum()


def smear(gray: np.ndarray, length: float, angle_rad: float) -> np.ndarray:
    """``gray`` ``[H, W]`` convolved with :func:`motion_kernel` (edges reflected), same shape, float64."""
    from scipy.signal import fftconvolve

    kernel = motion_kernel(length, angle_rad)
    pad = kernel.shape[0] // 2
    return fftconvolve(np.pad(np.asarray(gray, dtype=np.float64), pad, mode="reflect"), kernel, mode="valid")


def scene_tag(kind: str, blur: float) -> str:
    """How a degradation names its scene, sources and rows: ``blur6`` (Gaussian σ 6 px), ``motion40`` (a 40 px streak)."""
    return f"{'blur' if kind == 'gaussian' else kind}{blur:g}"


def motion_angle(name: str) -> float:
    """The streak's direction for image ``name`` (radians, in [0, π)): seeded by the name, the same on every run."""
    import zlib

    return float(np.random.default_rng(zlib.crc32(name.encode("utf-8"))).uniform(0.0, np.pi))


def degrade(path: Path, target: Path, blur: float, kind: str = "gaussian") -> None:
    """A Gaussian blur of ``blur`` px (σ), or (``kind="motion"``) a motion blur along a streak ``blur`` px long
    (:func:`smear`, direction :func:`motion_angle`), then the contrast cut to :data:`CONTRAST` around the image's
    mean; or (``kind="noise"``: a dim, grainy frame, as hazy, underwater or low-light imagery is) the contrast
    cut, then Gaussian noise of σ ``blur`` grey levels (of 255) on every pixel and channel, seeded by the name."""
    from PIL import Image, ImageFilter

    with Image.open(path) as im:
        rgb = im.convert("RGB")
        if kind == "gaussian":
            a = np.asarray(rgb.filter(ImageFilter.GaussianBlur(blur))).astype(np.float32)
        elif kind == "motion":
            src, angle = np.asarray(rgb).astype(np.float64), motion_angle(path.name)
            a = np.stack([smear(src[..., c], blur, angle) for c in range(3)], -1).astype(np.float32)
        else:
            a = np.asarray(rgb).astype(np.float32)
    a = (a - a.mean()) * CONTRAST + a.mean()
    if kind == "noise":
        import zlib

        a = a + np.random.default_rng(zlib.crc32(path.name.encode("utf-8"))).normal(0.0, blur, a.shape).astype(np.float32)
    Image.fromarray(a.clip(0, 255).round().astype(np.uint8)).save(target, quality=95)


def degraded_scene(name: str, blur: float, output: Path, kind: str = "gaussian") -> Any:
    """The poses-from-anywhere scene ``name`` with every 4th image degraded: a copy of its source (links to the
    sharp images, degraded copies of the others) as a :class:`benchmarks.poses_from_anywhere.Scene`."""
    from benchmarks.poses_from_anywhere import SCENES

    base = SCENES[name]
    tag = scene_tag(kind, blur)
    source = output / "sources" / f"{name}_{tag}"
    done = source / ".done"
    if not done.is_file():
        images = source / "images"
        images.mkdir(parents=True, exist_ok=True)
        names = sorted(p.name for p in (base.source / "images").iterdir() if p.is_file())
        weak = set(degraded_names(names))
        for n in names:
            target = images / n
            if target.exists() or target.is_symlink():
                target.unlink()
            if n in weak:
                degrade(base.source / "images" / n, target, blur, kind)
            else:
                os.symlink((base.source / "images" / n).resolve(), target)
        for extra in ("transforms.json", "gt_cameras.json"):
            if (base.source / extra).is_file():
                (source / extra).write_text((base.source / extra).read_text())
        (source / "degraded.json").write_text(json.dumps({"kind": kind, "blur_px": blur, "contrast": CONTRAST, "images": sorted(weak)}, indent=2))
        done.write_text("ok")
    return replace(base, name=f"{name}-{tag}", source=source)


@dataclass
class Spec:
    scene: str
    blur: float
    seed: int
    row: str
    iterations: int
    output: Path
    kind: str = "gaussian"

    @property
    def key(self) -> str:
        return f"{self.scene}__{scene_tag(self.kind, self.blur)}__s{self.seed}__{self.row}" + (f"__{self.iterations}it" if self.row not in ("input", "adjustment", "front-end") else "")

    @property
    def record(self) -> Path:
        return self.output / "rows" / f"{self.key}.json"


def aligned_errors(gt: Any, estimate: Any, weak: set[str]) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Per image of ``gt`` (by file name): ``(names, sharp [N] bool, rotation error [N] deg, centre error [N] % of
    the ground truth's radius)``, after a Sim(3) of the estimate onto the ground truth fitted on the sharp images."""
    from nerf_posefix.geometry.alignment import align
    from nerf_posefix.geometry.poses import rotation_angle_deg, scene_radius

    index = {Path(n).name: k for k, n in enumerate(estimate.names)}
    names = [Path(n).name for n in gt.names]
    est = estimate.c2w[[index[n] for n in names]]
    ref = gt.c2w
    sharp = np.array([n not in weak for n in names])
    sim = align(est[sharp], ref[sharp], mode="sim3")
    aligned = sim.apply(est)
    rot = rotation_angle_deg(ref[:, :3, :3], aligned[:, :3, :3])
    centre = 100.0 * np.linalg.norm(aligned[:, :3, 3] - ref[:, :3, 3], axis=-1) / scene_radius(ref[:, :3, 3])
    return names, sharp, rot, centre


def split_errors(gt: Any, estimate: Any, weak: set[str]) -> dict[str, Any]:
    """Rotation (deg) and centre (% of the ground truth's radius) errors, medians over the degraded and the
    sharp images, after a Sim(3) of the estimate onto the ground truth fitted on the sharp images
    (:func:`aligned_errors`), and each degraded image's rotation error."""
    names, sharp, rot, centre = aligned_errors(gt, estimate, weak)
    return {
        "rot_degraded_per_image_deg": {n: float(r) for n, r, s in zip(names, rot, sharp) if not s},
        "rot_degraded_deg": float(np.median(rot[~sharp])), "rot_sharp_deg": float(np.median(rot[sharp])),
        "centre_degraded_pct": float(np.median(centre[~sharp])), "centre_sharp_pct": float(np.median(centre[sharp])),
        "rot_degraded_max_deg": float(rot[~sharp].max()), "rot_sharp_max_deg": float(rot[sharp].max()),
    }


def refine_downscale(data: Path) -> int:
    """The factor ``posefix refine``'s NeRF stage trains ``data``'s images at (its longer side to at most
    :data:`~nerf_posefix.workflows.refine.WEAK_FRAMES_MAX_SIDE` px)."""
    from nerf_posefix.workflows.refine import WEAK_FRAMES_MAX_SIDE

    meta = json.loads((data / "transforms.json").read_text())
    return max(1, -(-max(int(meta["w"]), int(meta["h"])) // WEAK_FRAMES_MAX_SIDE))


def full_res_dataset(data: Path, factor: int) -> Path:
    """``data/../plugin_full_res``: ``data``'s transforms.json and full-resolution images, with ``images_F`` (the
    images resized by ``1/F``, Lanczos, as nerfstudio's dataparser reads them for ``downscale_factor`` F) beside."""
    from PIL import Image

    target = data.parent / "plugin_full_res"
    if (target / "transforms.json").is_file():
        return target
    target.mkdir(parents=True, exist_ok=True)
    meta = json.loads((data / "transforms.json").read_text())
    images = (data / "images").resolve()
    if not (target / "images").exists():
        os.symlink(images, target / "images", target_is_directory=True)
    if factor > 1:
        small = target / f"images_{factor}"
        small.mkdir(exist_ok=True)
        for frame in meta["frames"]:
            src = data / frame["file_path"]
            with Image.open(src) as im:
                w, h = im.size
                im.convert("RGB").resize((w // factor, h // factor), Image.LANCZOS).save(small / src.name, quality=95)
    (target / "transforms.json").write_text(json.dumps(meta, indent=2))
    return target


def run_plugin(data: Path, work: Path, iterations: int, seed: int, downscale: int | None = None) -> tuple[Any, dict[str, Any]]:
    """The ``plugin`` rows: ``ns-train posefix-small`` in process with the method's defaults (front end on) on
    ``data`` (every image trains; ``downscale``: the dataparser's ``downscale_factor``), resumable; the refined
    poses as the run reader exports them (camera-to-world, OpenCV axes, the transforms.json's frame)."""
    from nerf_posefix.plugin.run_reader import refined_input_poses
    from nerf_posefix.plugin.training import in_process_config, run_training
    from nerf_posefix.plugin.move_check import MOVE_CHECK_FILE
    from nerf_posefix.plugin.weak_alignment import WEAK_ALIGNMENT_FILE

    def edit(config: Any) -> None:
        config.pipeline.datamanager.dataparser.eval_mode = "all"
        config.pipeline.front_end = "on"
        if downscale is not None:
            config.pipeline.datamanager.dataparser.downscale_factor = downscale

    config = in_process_config("posefix-small", data=data, output_dir=work / "runs", max_iterations=iterations, seed=seed,
                               overrides=edit)
    run = run_training(config, progress=False, quiet=True, resume=True, num_threads=1)
    refined = refined_input_poses(run.config_path)
    record = run.run_dir / WEAK_ALIGNMENT_FILE
    alignment = json.loads(record.read_text()) if record.is_file() else None
    pipeline = run.trainer.pipeline if run.trainer is not None else None
    front = getattr(pipeline, "front_end", None)
    info = {"iterations": int(run.completed_iterations), "train_data": str(data), "training_seconds": run.seconds,
            "front_end": front.line if front is not None else None,
            "weak_alignment": {k: v for k, v in (alignment or {}).items() if k != "images"}}
    check = run.run_dir / MOVE_CHECK_FILE
    if check.is_file():
        info["move_check"] = json.loads(check.read_text())
    return refined.cameras, info


def run_row(spec: Spec) -> dict[str, Any]:
    from benchmarks.poses_from_anywhere import Job, nerf_dataset, noisy_dataset, run_nerf
    from nerf_posefix.io.transforms_json import read_transforms_json
    from nerf_posefix.workflows.refine import RefineOptions, refine

    scene = degraded_scene(spec.scene, spec.blur, spec.output, spec.kind)
    level = next(lv for lv in scene.levels if lv.name == LEVEL[spec.scene])
    data = noisy_dataset(scene, level, spec.seed, spec.output)
    weak = set(json.loads((scene.source / "degraded.json").read_text())["images"])
    work = spec.output / "work" / spec.key
    t0 = time.perf_counter()
    info: dict[str, Any] = {}
    if spec.row == "input":
        estimate = read_transforms_json(data / "transforms.json")
    elif spec.row in NERF_ROWS:
        job = Job(scene, level, spec.seed, spec.row, spec.output, spec.iterations)
        estimate, info = run_nerf(job, data)
    elif spec.row == "plugin":
        estimate, info = run_plugin(nerf_dataset(scene, data, spec.output), work, spec.iterations, spec.seed)
    elif spec.row == "plugin-full-res":
        factor = refine_downscale(data)
        estimate, info = run_plugin(full_res_dataset(data, factor), work, spec.iterations, spec.seed, downscale=factor)
        info["downscale_factor"] = factor
    else:
        regularizer = {"default-homography": "homography", "default-l2": "nerfstudio"}.get(spec.row, "pixels")
        result = refine(RefineOptions(output=work / "refined", poses=data / "transforms.json", threads=1, seed=spec.seed, quiet=True,
                                      overwrite=True, regularizer=regularizer,  # type: ignore[arg-type]
                                      iterations=0 if spec.row in ("adjustment", "front-end") else None,
                                      frame_placement=spec.row != "adjustment", photometric_alignment=spec.row != "adjustment"))
        s = result.summary
        support = (s.get("bundle_adjustment") or {}).get("support") if isinstance(s.get("bundle_adjustment"), dict) else None
        placement = (s.get("bundle_adjustment") or {}).get("placement") if isinstance(s.get("bundle_adjustment"), dict) else None
        photometric = (s.get("bundle_adjustment") or {}).get("photometric_alignment") if isinstance(s.get("bundle_adjustment"), dict) else None
        info = {"iterations": s.get("iterations"), "support": support, "placement": placement, "photometric_alignment": photometric,
                "total_seconds": s.get("total_seconds"),
                "training_seconds": s.get("training_seconds"), "warnings": s.get("warnings")}
        estimate = read_transforms_json(work / "refined" / "transforms.json")
    wall = time.perf_counter() - t0
    gt = read_transforms_json(data / "transforms_gt.json")
    return {"key": spec.key, "scene": spec.scene, "kind": spec.kind, "blur": spec.blur, "seed": spec.seed, "row": spec.row, "wall_s": wall,
            **split_errors(gt, estimate, weak), "info": info}


def _table(records: list[dict[str, Any]], output: Path) -> None:
    """``OUT/weak_frames.{csv,md}``: mean ± sd over seeds per (scene, blur, row), and the Markdown printed."""
    from benchmarks.tables import seed_rows, write_tables

    values = ["rot_degraded_deg", "rot_sharp_deg", "centre_degraded_pct", "centre_sharp_pct", "rot_degraded_max_deg", "wall_s"]
    records = [{"kind": "gaussian", **r} for r in records]  # records made before motion blur were all Gaussian
    rows = seed_rows(records, ["scene", "kind", "blur", "row"], values, sort_key=lambda k: (k[0], k[1], k[2], ROWS.index(k[3])))
    columns = [("scene", "scene", ""), ("kind", "blur kind", ""), ("blur", "blur (px)", ""), ("row", "row", ""), ("seeds", "seeds", ""),
               ("rot_degraded_deg", "rotation, degraded (deg)", "{:.3f}"), ("rot_sharp_deg", "rotation, sharp (deg)", "{:.4f}"),
               ("centre_degraded_pct", "centre, degraded (%)", "{:.3f}"), ("centre_sharp_pct", "centre, sharp (%)", "{:.3f}"),
               ("rot_degraded_max_deg", "worst degraded (deg)", "{:.3f}"), ("wall_s", "wall (s)", "{:.0f}")]
    print(write_tables(rows, columns, output / "weak_frames"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--scenes", nargs="+", default=["toybox"], choices=sorted(DEFAULT_BLUR))
    parser.add_argument("--blur", type=float, nargs="+", default=None,
                        help="Gaussian blur σ in px (default per scene), the motion streak's length with --kind motion, the noise's "
                             "σ in grey levels (of 255) with --kind noise")
    parser.add_argument("--kind", choices=KINDS, default="gaussian", help="how the degraded frames are degraded")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    parser.add_argument("--iterations", type=int, default=1000, help="NeRF budget of the nerfstudio / posefix-photometric rows")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        raw = json.loads(args.worker.read_text())
        spec = Spec(raw["scene"], raw["blur"], raw["seed"], raw["row"], raw["iterations"], Path(raw["output"]), raw.get("kind", "gaussian"))
        record = run_row(spec)
        spec.record.write_text(json.dumps(record, indent=2))
        return 0
    output = args.output.resolve()
    if args.kind in ("motion", "noise") and not args.blur:
        parser.error(f"--kind {args.kind} needs --blur (the streak's length in pixels; the noise's σ in grey levels)")
    specs = [Spec(scene, blur, seed, row, args.iterations, output, args.kind)
             for scene in args.scenes for blur in (args.blur or [DEFAULT_BLUR[scene]]) for seed in args.seeds for row in args.rows]

    def launch(spec: Spec) -> None:
        spec.record.parent.mkdir(parents=True, exist_ok=True)
        path = output / "specs" / f"{spec.key}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"scene": spec.scene, "kind": spec.kind, "blur": spec.blur, "seed": spec.seed, "row": spec.row,
                                    "iterations": spec.iterations, "output": str(output)}))
        (output / "logs").mkdir(exist_ok=True)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
        t0 = time.perf_counter()
        with open(output / "logs" / f"{spec.key}.log", "w") as log:
            code = subprocess.run([sys.executable, "-m", "benchmarks.weak_frames", "--worker", str(path), "--output", str(output)],
                                  stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode
        print(f"{spec.key}: exit {code} in {time.perf_counter() - t0:.0f} s", flush=True)

    # the cheap rows first, so that every scene's data (degraded copies, noisy datasets) is built once
    todo = [s for s in specs if not s.record.is_file()]
    for s in [s for s in todo if s.row == "input"]:
        launch(s)
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        list(pool.map(launch, [s for s in todo if s.row != "input"]))
    records = [json.loads(s.record.read_text()) for s in specs if s.record.is_file()]
    if records:
        _table(records, output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
