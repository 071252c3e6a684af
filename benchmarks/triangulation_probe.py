#!/usr/bin/env python
"""Where one fixed-pose triangulation's time goes (issue 23), and whether the cached one gives the same tracks.

On a posed image set (a ``transforms.json``), builds the track database once (the package's
:func:`nerf_posefix.sfm.track_building.match_features`, the front end's options: ``auto`` matching, seed 42),
kept in ``--work``, then times at one threshold:

* ``triangulate_points``: ``pycolmap.triangulate_points`` (COLMAP's point triangulator: database cache, per-image
  triangulation, retriangulation and point-only refinements, colours read from every image);
* the same steps one by one through ``pycolmap.IncrementalMapper`` (database cache, mapper set-up, per-image
  triangulation, ``iterative_global_refinement``, colours);
* :func:`nerf_posefix.sfm.track_building.triangulate_fixed_poses` with the database cache read once
  (:func:`~nerf_posefix.sfm.track_building.open_track_cache`), as the rounds of
  :func:`~nerf_posefix.sfm.track_building.adjust_with_retriangulation` call it (no point-only refinements, no
  colours), and with ``refine_points=True`` (the point triangulator's steps, colours read),

and compares their points with ``triangulate_points``' (count, observations, mean reprojection error, identical
tracks, largest difference of a common track's point).

Usage::

    python -m benchmarks.triangulation_probe --poses benchmark_results/scaling/scenes/rendered-300-noisy/transforms.json \\
        --work /tmp/triangulation_probe [--threshold 16] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def _tracks(rec: Any) -> set[tuple[tuple[int, int], ...]]:
    """The tracks of ``rec`` as sets of (image id, keypoint index), point ids ignored."""
    return {tuple(sorted((el.image_id, el.point2D_idx) for el in p.track.elements)) for p in rec.points3D.values()}


def _summary(rec: Any) -> dict[str, Any]:
    return {"points": int(rec.num_points3D()), "observations": int(rec.compute_num_observations()),
            "mean_reprojection_error_px": float(rec.compute_mean_reprojection_error())}


def main(argv: list[str] | None = None) -> None:
    import pycolmap

    from nerf_posefix.io.posed_images import load_posed_images
    from nerf_posefix.sfm.bundle_adjustment import quiet_colmap_log
    from nerf_posefix.sfm.track_building import (
        TrackOptions, _focal_px, _triangulation_options, match_features, open_track_cache, reconstruction_from_poses,
        triangulate_fixed_poses,
    )

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--poses", type=Path, required=True, help="a transforms.json with its images")
    parser.add_argument("--work", type=Path, required=True, help="where the database is built (kept, reused)")
    parser.add_argument("--threshold", type=float, default=16.0, help="reprojection threshold (px)")
    parser.add_argument("--repeat", type=int, default=2, help="timings per variant (the minimum is reported)")
    args = parser.parse_args(argv)

    posed = load_posed_images(args.poses)
    camset = posed.to_colmap_model().to_camera_set()
    options = TrackOptions(seed=42)
    args.work.mkdir(parents=True, exist_ok=True)
    database = args.work / "database.db"
    if not database.is_file():
        t0 = time.perf_counter()
        match_features(posed.images_dir, list(camset.names), posed.intrinsics, database, options, poses=camset, log=print)
        print(f"database built in {time.perf_counter() - t0:.1f} s")
    base = reconstruction_from_poses(database, camset)
    tri = _triangulation_options(args.threshold, _focal_px(base), options.num_threads, options.seed)
    timings: dict[str, list[float]] = {}
    results: dict[str, Any] = {}

    def timed(key: str, fn: Any) -> Any:
        t0 = time.perf_counter()
        out = fn()
        timings.setdefault(key, []).append(time.perf_counter() - t0)
        return out

    for _ in range(args.repeat):
        with quiet_colmap_log(False):
            # 1. COLMAP's point triangulator (what triangulate_fixed_poses called until issue 23)
            def point_triangulator() -> Any:
                with tempfile.TemporaryDirectory() as work:
                    return pycolmap.triangulate_points(pycolmap.Reconstruction(base), str(database), str(posed.images_dir), work,
                                                       clear_points=True, options=tri)
            results["triangulate_points"] = timed("triangulate_points", point_triangulator)

            # 2. its steps one by one
            rec = pycolmap.Reconstruction(base)
            db = pycolmap.Database.open(str(database))
            cache_options = pycolmap.DatabaseCacheOptions()
            cache_options.min_num_matches = tri.min_num_matches
            cache_options.ignore_watermarks = tri.ignore_watermarks
            cache = timed("steps: database cache", lambda: pycolmap.DatabaseCache.create(db, cache_options))
            db.close()
            mapper = pycolmap.IncrementalMapper(cache)
            timed("steps: begin_reconstruction", lambda: mapper.begin_reconstruction(rec))
            tri_options = tri.get_triangulation()
            mapper_options = tri.get_mapper()
            mapper_options.fix_existing_frames = True
            timed("steps: triangulate_image", lambda: [mapper.triangulate_image(tri_options, i) for i in sorted(rec.reg_image_ids())])
            timed("steps: iterative_global_refinement", lambda: mapper.iterative_global_refinement(
                tri.ba_global_max_refinements, tri.ba_global_max_refinement_change, mapper_options,
                tri.get_global_bundle_adjustment(), tri_options, normalize_reconstruction=False))
            mapper.end_reconstruction(False)
            rec.update_point_3d_errors()
            timed("steps: colours", lambda: rec.extract_colors_for_all_images(str(posed.images_dir)))
            results["steps"] = rec

            # 3. the package's triangulation, the cache read once
            cache = timed("package: open_track_cache", lambda: open_track_cache(database, tri.min_num_matches))
            results["package"] = timed("package: triangulate_fixed_poses (cache given, no refinements, no colours)",
                                       lambda: triangulate_fixed_poses(base, database, posed.images_dir, args.threshold, options.num_threads,
                                                                       options.seed, cache=cache, colours=False))
            results["package_refine_points"] = timed("package: triangulate_fixed_poses (refine_points, colours)",
                                                     lambda: triangulate_fixed_poses(base, database, posed.images_dir, args.threshold,
                                                                                     options.num_threads, options.seed, cache=cache,
                                                                                     refine_points=True))

    reference = _tracks(results["triangulate_points"])
    report = {
        "threshold_px": args.threshold,
        "seconds_min": {k: round(min(v), 3) for k, v in timings.items()},
        "seconds_all": {k: [round(x, 3) for x in v] for k, v in timings.items()},
        "results": {k: {**_summary(r), "same_tracks_as_triangulate_points": _tracks(r) == reference,
                        "tracks_in_common": len(_tracks(r) & reference)} for k, r in results.items()},
    }
    xyz = {k: {tuple(sorted((el.image_id, el.point2D_idx) for el in p.track.elements)): np.asarray(p.xyz)
               for p in r.points3D.values()} for k, r in results.items()}
    for k in ("steps", "package", "package_refine_points"):
        common = [t for t in xyz[k] if t in xyz["triangulate_points"]]
        if common:
            d = np.array([np.linalg.norm(xyz[k][t] - xyz["triangulate_points"][t]) for t in common])
            report["results"][k]["max_xyz_difference"] = float(d.max())
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
