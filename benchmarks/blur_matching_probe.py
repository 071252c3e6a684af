"""Probe (issue 22): blur-matched features (:mod:`nerf_posefix.sfm.blur_matching`) on castle-P30's weak frames.

Per seed of a :mod:`benchmarks.weak_frames` castle scene: the track database with the ordinary matches, then with the
blur-matched ones (``--force-rescue``: also for frames with no verified pair, which the module leaves alone); each
degraded frame registered by COLMAP's absolute-pose registration against the points of the sharp frames held at the
ground truth; and the rounds of ``adjust_with_retriangulation`` from the input poses, scored after a Sim(3) on the
sharp frames (``--no-rescue``: the rounds on the ordinary matches, the baseline).

Usage::

    python -m benchmarks.blur_matching_probe --frames benchmark_results/weak_frames_v10 --blur 6 --seeds 0 1 2
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from nerf_posefix.io.camera_set import CameraSet, ImageCamera
from nerf_posefix.sfm import blur_matching
from nerf_posefix.sfm.blur_matching import rescue_blurred_frames, verified_inliers


# ---------------------------------------------------------------------------------------------
# the probe


def _pose_errors(c2w: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """Rotation (deg) and centre (input units) difference of two camera-to-world poses [4, 4]."""
    from nerf_posefix.geometry.poses import rotation_angle_deg

    return float(rotation_angle_deg(c2w[None, :3, :3], reference[None, :3, :3])[0]), float(np.linalg.norm(c2w[:3, 3] - reference[:3, 3]))


def castle_seed(frames: Path, tag: str, seed: int, work: Path, threads: int) -> dict[str, Any]:
    """One seed of a :mod:`benchmarks.weak_frames` castle scene (``tag``: ``blur6``, ``motion40``, ...), its track
    database with the ordinary matches built in ``work`` (emptied first): ``data``, ``degraded`` (names), ``noisy``,
    ``truth`` (:class:`CameraSet`, camera-to-world, OpenCV axes), ``names``, ``cameras``, ``images``, ``database``,
    ``focal_px``."""
    from nerf_posefix.io.transforms_json import read_transforms_json
    from nerf_posefix.sfm import track_building as tb

    data = frames / f"scenes/castle-{tag}/2deg-3pct/s{seed}/data"
    degraded = set(json.loads((frames / f"sources/castle_{tag}/degraded.json").read_text())["images"])
    noisy, truth = read_transforms_json(data / "transforms.json"), read_transforms_json(data / "transforms_gt.json")
    names = list(noisy.names)
    meta = json.loads((data / "transforms.json").read_text())
    camera = ImageCamera(model="PINHOLE", width=int(meta["w"]), height=int(meta["h"]),
                         params=(meta["fl_x"], meta["fl_y"], meta["cx"], meta["cy"]))
    cameras = {n: camera for n in names}
    images = data / "images"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    database = work / "database.db"
    tb.match_features(images, names, cameras, database, tb.TrackOptions(num_threads=threads, blur_matching=False), poses=noisy)
    return {"data": data, "degraded": degraded, "noisy": noisy, "truth": truth, "names": names, "cameras": cameras,
            "images": images, "database": database, "focal_px": float(meta["fl_x"])}


def register_against(database: Path, images: Path, poses: CameraSet, cameras: dict[str, ImageCamera], frames: Sequence[str],
                     focal_px: float, threads: int) -> dict[str, Optional[np.ndarray]]:
    """Each of ``frames`` registered by COLMAP's absolute-pose registration against the tracks of ``database``
    triangulated (4 px) with every other image held at ``poses`` (camera-to-world, OpenCV axes): its camera-to-world
    pose ``[4, 4]``, or None where registration fails. The other images never move."""
    import pycolmap

    from nerf_posefix.sfm import track_building as tb

    rec = tb.reconstruction_from_poses(database, poses, cameras)
    ids = {rec.images[i].name: i for i in rec.reg_image_ids()}
    for n in frames:
        rec.deregister_frame(rec.images[ids[n]].frame_id)
    cache = tb.open_track_cache(database)
    points = tb.triangulate_fixed_poses(rec, database, images, 4.0, threads, 0, cache=cache, colours=False)
    mapper = pycolmap.IncrementalMapper(cache)
    mapper.begin_reconstruction(points)
    options = tb._triangulation_options(4.0, focal_px, threads, 0).get_mapper()  # noqa: SLF001
    out: dict[str, Optional[np.ndarray]] = {}
    for n in frames:
        ok = bool(mapper.register_next_image(options, ids[n]))
        out[n] = np.linalg.inv(np.vstack([points.images[ids[n]].cam_from_world().matrix(), [0, 0, 0, 1]])) if ok else None
    return out


def probe_seed(frames: Path, blur: str, seed: int, work: Path, threads: int, adjust: bool, rescue: str = "auto") -> dict[str, Any]:
    """One seed of a :mod:`benchmarks.weak_frames` castle scene: the database with the ordinary matches, then with
    the blur-matched ones; the degraded frames registered by COLMAP against the sharp frames' points (sharp frames
    at the ground truth); with ``adjust``, the rounds of ``adjust_with_retriangulation`` from the input poses."""
    from benchmarks.weak_frames import aligned_errors, scene_tag
    from nerf_posefix.sfm import track_building as tb

    work = work / f"blur{blur}_s{seed}"
    scene = castle_seed(frames, scene_tag("gaussian", float(blur)), seed, work, threads)
    degraded, noisy, truth, names = scene["degraded"], scene["noisy"], scene["truth"], scene["names"]
    cameras, images, database = scene["cameras"], scene["images"], scene["database"]
    before = verified_inliers(database)
    rescued = {}
    if rescue != "none":  # force: frames with no verified pair too
        rescued = {f.name: f for f in rescue_blurred_frames(database, images, names, cameras, work, c2w=noisy.c2w, num_threads=threads,
                                                            min_inliers=0 if rescue == "force" else blur_matching.MIN_PAIR_INLIERS)}
    true_by, noisy_by = dict(zip(truth.names, truth.c2w)), dict(zip(noisy.names, noisy.c2w))
    mixed = CameraSet(names=names, c2w=np.stack([noisy_by[n] if n in degraded else true_by[n] for n in names]))
    placed = register_against(database, images, mixed, cameras, sorted(degraded), scene["focal_px"], threads)
    rows = {}
    for n in sorted(degraded):
        row = {"inliers_before": before.get(n, 0), "rescue": rescued[n].to_dict() if n in rescued else None,
               "input_rot_deg": _pose_errors(noisy_by[n], true_by[n])[0], "registered": placed[n] is not None}
        if placed[n] is not None:
            row["registered_rot_deg"], row["registered_centre"] = _pose_errors(placed[n], true_by[n])
        rows[n] = row
    out: dict[str, Any] = {"blur": blur, "seed": seed, "frames": rows}
    if adjust:
        result = tb.adjust_with_retriangulation(database, images, noisy, tb.TrackOptions(num_threads=threads), cameras=cameras)
        estimate = CameraSet(names=list(result.names), c2w=result.c2w)
        frame_names, sharp, rot, _ = aligned_errors(truth, estimate, {Path(n).name for n in degraded})
        out["adjusted_rot_deg"] = {n: float(r) for n, r in zip(frame_names, rot)}
        out["adjusted_degraded_median_deg"] = float(np.median(rot[~sharp]))
        out["adjusted_sharp_median_deg"] = float(np.median(rot[sharp]))
    return out


def main(argv: Optional[Sequence[str]] = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=Path, required=True, help="a benchmarks.weak_frames --output directory holding the castle scene")
    parser.add_argument("--blur", default="12")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work", type=Path, default=Path("benchmark_results/blur_matching_probe"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-adjust", action="store_true", help="skip the rounds from the input poses")
    parser.add_argument("--rescue", choices=("auto", "force", "none"), default="auto",
                        help="auto: the module's rule; force: also frames with no verified pair; none: ordinary matches only")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        result = probe_seed(args.frames, args.blur, seed, args.work / args.rescue, args.threads, not args.no_adjust, args.rescue)
        (args.work / args.rescue / f"blur{args.blur}_s{seed}.json").write_text(json.dumps(result, indent=2))
        print(f"blur {args.blur} px, seed {seed}, rescue {args.rescue}")
        for n, row in result["frames"].items():
            rescue = row["rescue"] or {}
            placed = f"{row['registered_rot_deg']:.2f} deg" if row["registered"] else "not registered"
            adjusted = f", rounds from the input {result['adjusted_rot_deg'][Path(n).name]:.2f} deg" if "adjusted_rot_deg" in result else ""
            print(f"  {n}: inliers {row['inliers_before']} -> +{rescue.get('inliers', 0)} over {rescue.get('pairs', 0)} pairs "
                  f"(σ {rescue.get('level_px', 0):.1f} px); registered on the true sharp frames: {placed}{adjusted}")
        if "adjusted_degraded_median_deg" in result:
            print(f"  rounds from the input: degraded {result['adjusted_degraded_median_deg']:.3f} deg, sharp {result['adjusted_sharp_median_deg']:.3f} deg (medians)")


if __name__ == "__main__":
    main()
