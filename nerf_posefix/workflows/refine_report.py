"""The report of ``posefix refine``: how far each image moved from its input pose, and the common drift.

Poses compared are camera-to-world, OpenCV axes, in the input's COLMAP world frame (no alignment):
``rotation_deg`` is the geodesic angle, ``translation`` the camera-centre distance in input units and
as a fraction of the scene radius (:func:`nerf_posefix.geometry.poses.scene_radius` of the input
centres), ``homography_error`` the homography pose error with the depth bounds the training used.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from nerf_posefix.errors import InputError
from nerf_posefix.geometry.alignment import pose_alignment
from nerf_posefix.geometry.poses import rotation_angle_deg, scene_radius
from nerf_posefix.io.camera_set import CameraSet
from nerf_posefix.io.colmap import ColmapModel

if TYPE_CHECKING:  # torch and nerfstudio load only when a report is built (posefix refine's checks stay fast)
    from nerf_posefix.plugin.run_reader import RefinedRun

REPORT_CSV = "report.csv"
REPORT_JSON = "report.json"


@dataclass
class ImageReport:
    """How far one image's pose moved (input -> refined). Units: degrees; input world units."""

    image_id: int
    name: str
    rotation_deg: float
    translation: float
    translation_rel: float
    homography_error: float
    xmin: float
    xmax: float
    flagged: bool
    reason: str


@dataclass
class RefineResult:
    """What :func:`refine` wrote and measured."""

    output: Path
    images: list[ImageReport]
    summary: dict[str, Any] = field(default_factory=dict)

    def summary_text(self) -> str:
        """The summary printed at the end."""
        s = self.summary
        rot = np.array([r.rotation_deg for r in self.images])
        trans = np.array([r.translation for r in self.images])
        hom = np.array([r.homography_error for r in self.images])
        flagged = [r for r in self.images if r.flagged]
        ba = s.get("bundle_adjustment")
        built = s.get("tracks_built")
        before = ba.get("reprojection_error_before_px", (built or {}).get("mean_reprojection_error_px")) if isinstance(ba, dict) else None
        stages = (
            f"bundle adjustment ({ba['loss']}"
            + (f", scale {ba['scale_px']:.3g} px" if ba.get("scale_px") is not None else "")
            + (f", {len(ba['rounds'])} rounds re-triangulating" if ba.get("rounds") else "")
            + f": mean reprojection error "
            f"{before:.3g} -> {ba['reprojection_error_after_px']:.3g} px, {ba['seconds']:.1f} s)"
            if isinstance(ba, dict) else "no bundle adjustment"
        )
        if built:
            m = built["matches"]
            stages = (
                f"tracks built from the images ({m['matching']} matching, {m['num_verified_pairs']} verified pairs: "
                f"{built['num_points']} points, {built['num_observations']} observations); " + stages
            )
        nerf = (
            f"NeRF stage {s['method']}, {s['iterations']} iterations ({s['training_seconds']:.0f} s)"
            if s["iterations"] else "no NeRF stage (--iterations 0)"
        )
        lines = [
            f"posefix refine: {len(self.images)} images; {stages}; {nerf}; {s['total_seconds']:.0f} s in all",
            f"  rotation moved:    median {np.median(rot):.3f} deg, max {rot.max():.3f} deg",
            f"  translation moved: median {np.median(trans):.4g}, max {trans.max():.4g} input units "
            f"(scene radius {s['scene_radius']:.4g}: median {np.median(trans) / s['scene_radius']:.2%}, "
            f"max {trans.max() / s['scene_radius']:.2%})",
            f"  homography error:  median {np.median(hom):.3g}, max {hom.max():.3g} (bounds: {s['bounds_mode']})",
            f"  common drift (the Sim(3) best mapping the refined cameras onto the input ones): rotation "
            f"{s['drift']['rotation_deg']:.3f} deg, scale {s['drift']['scale']:.5f}, moves centres by "
            f"{s['drift']['translation']:.4g} (median)",
        ]
        if flagged:
            worst = sorted(flagged, key=lambda r: -r.rotation_deg)[:5]
            listed = ", ".join(f"{r.name} ({r.rotation_deg:.2f} deg, {r.translation_rel:.1%})" for r in worst)
            more = f" and {len(flagged) - len(worst)} more" if len(flagged) > len(worst) else ""
            lines.append(
                f"  FLAGGED: {len(flagged)} image(s) moved more than {s['move_threshold_deg']:g} deg or "
                f"{s['move_threshold_rel']:.1%} of the scene radius: {listed}{more}"
            )
        else:
            lines.append(
                f"  flagged: none (thresholds {s['move_threshold_deg']:g} deg, {s['move_threshold_rel']:.1%} of the scene radius)"
            )
        for warning in s.get("warnings", []):
            lines.append(f"  WARNING: {warning}")
        out = self.output
        poses_file = out / s.get("output_poses", "transforms.json")
        lines.append(
            f"  wrote {poses_file} ({s.get('input_format', 'colmap')} input: same format and world frame), "
            f"{out / 'sparse' / '0'} (bin+txt; points3D {s.get('points3D', 'carried over')}), "
            f"{out / REPORT_CSV}, {out / REPORT_JSON}"
        )
        return "\n".join(lines)


def _training_bounds(run: "RefinedRun") -> tuple[Optional[np.ndarray], Optional[np.ndarray], str]:
    """Per training camera: the homography depth bounds the run used, in input units:
    ``(xmin [N], xmax [N], source)``; None if the run has none."""
    if run.xmin is None or run.xmax is None:
        return None, None, "none"
    scale = run.dataparser_scale
    return run.xmin / scale, run.xmax / scale, f"training bounds / dataparser scale {scale:.6g}"


def build_report(
    model: ColmapModel,
    flat_names: dict[str, str],
    refined: CameraSet,
    run: "RefinedRun",
    bounds_mode: str,
    move_threshold_deg: float,
    move_threshold_rel: float,
) -> tuple[list[ImageReport], dict[str, Any]]:
    """Per-image movement between the input ``model``'s poses and the ``refined`` ones (same world frame,
    no alignment). ``flat_names``: image name -> file name in the run's dataset; ``run``: the training
    run (its depth bounds); thresholds: flag images that moved more (degrees, fraction of the radius)."""
    import torch

    from nerf_posefix.geometry.homography import homography_error

    cams_in = model.to_camera_set()  # image-id order, c2w OpenCV, COLMAP world
    index = {n: i for i, n in enumerate(refined.names)}
    c2w_ref = refined.c2w[[index[n] for n in cams_in.names]]
    c2w_in = cams_in.c2w
    rot = rotation_angle_deg(c2w_in[:, :3, :3], c2w_ref[:, :3, :3])
    trans = np.linalg.norm(c2w_ref[:, :3, 3] - c2w_in[:, :3, 3], axis=-1)
    radius = scene_radius(c2w_in[:, :3, 3])
    rel = trans / radius if radius > 0 else np.full_like(trans, np.nan)

    xmin_t, xmax_t, source = _training_bounds(run)
    files = run.train_filenames
    flat_to_name = {flat: name for name, flat in flat_names.items()}
    if xmin_t is not None:
        by_name = {flat_to_name[Path(f).name]: k for k, f in enumerate(files)}
        order = [by_name[n] for n in cams_in.names]
        xmin, xmax = xmin_t[order], xmax_t[order]
        hom = homography_error(
            torch.from_numpy(c2w_in), torch.from_numpy(c2w_ref), torch.from_numpy(xmin), torch.from_numpy(xmax), camera_convention="opencv"
        ).numpy()
    else:
        xmin = xmax = hom = np.full(len(c2w_in), np.nan)

    reports = []
    for k, name in enumerate(cams_in.names):
        reasons = []
        if rot[k] > move_threshold_deg:
            reasons.append(f"rotation {rot[k]:.3f} deg > {move_threshold_deg:g}")
        if rel[k] > move_threshold_rel:
            reasons.append(f"translation {rel[k]:.2%} of the scene radius > {move_threshold_rel:.2%}")
        reports.append(
            ImageReport(
                image_id=int(model.image_ids()[k]),
                name=name,
                rotation_deg=float(rot[k]),
                translation=float(trans[k]),
                translation_rel=float(rel[k]),
                homography_error=float(hom[k]),
                xmin=float(xmin[k]),
                xmax=float(xmax[k]),
                flagged=bool(reasons),
                reason="; ".join(reasons),
            )
        )
    try:  # overall drift: the similarity mapping the refined cameras onto the input ones (rotation from the
        # orientations, scale and translation from the centres: well posed even for nearly coplanar centres)
        sim = pose_alignment(c2w_ref, c2w_in)
        angle = float(rotation_angle_deg(np.eye(3), sim.rotation))
        shift = np.linalg.norm(sim.apply_points(c2w_ref[:, :3, 3]) - c2w_ref[:, :3, 3], axis=-1)
        drift = {"rotation_deg": angle, "translation": float(np.median(shift)), "scale": float(sim.scale)}
    except InputError:
        drift = {"rotation_deg": float("nan"), "translation": float("nan"), "scale": float("nan")}
    summary = {
        "scene_radius": radius,
        "bounds_mode": bounds_mode,
        "bounds_source": source,
        "drift": drift,
        "rotation_deg": {"median": float(np.median(rot)), "max": float(rot.max())},
        "translation": {"median": float(np.median(trans)), "max": float(trans.max())},
        "homography_error": {"median": float(np.median(hom)), "max": float(hom.max())},
        "num_flagged": int(sum(r.flagged for r in reports)),
        "move_threshold_deg": move_threshold_deg,
        "move_threshold_rel": move_threshold_rel,
    }
    return reports, summary


def write_report(directory: Path, reports: list[ImageReport], summary: dict[str, Any]) -> None:
    columns = list(ImageReport.__dataclass_fields__)
    with open(directory / REPORT_CSV, "w", newline="", encoding="utf-8") as fid:
        writer = csv.writer(fid)
        writer.writerow(columns)
        for r in reports:
            row = asdict(r)
            writer.writerow([f"{row[c]:.9g}" if isinstance(row[c], float) else row[c] for c in columns])
    payload = {
        "summary": summary,
        "units": {
            "rotation_deg": "degrees (geodesic angle between the input and refined camera rotations)",
            "translation": "input (COLMAP) world units (distance between the input and refined camera centres)",
            "translation_rel": "fraction of the scene radius",
            "homography_error": "dimensionless (homography pose error, input pose as reference, bounds xmin/xmax in input units)",
        },
        "images": [asdict(r) for r in reports],
    }
    (directory / REPORT_JSON).write_text(json.dumps(payload, indent=2, allow_nan=True), encoding="utf-8")
