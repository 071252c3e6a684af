"""The report of ``posefix refine``: how far each image moved from its input pose, and the common drift.

Poses compared are camera-to-world, OpenCV axes, in the input's COLMAP world frame (no alignment):
``rotation_deg`` is the geodesic angle, ``translation`` the camera-centre distance in input units and
as a fraction of the scene radius (:func:`nerf_posefix.geometry.poses.scene_radius` of the input
centres), ``homography_error`` the homography pose error with the depth bounds the training used.

Flags
-----
A camera is **flagged** when it moved far more than its input's own accuracy says it should
(:func:`flag_moves`). Each move is converted into what it does to the image: ``move_px``, the image
displacement at the camera's median scene depth, ``f · (rotation + translation / depth)`` (``f``: focal
length in pixels; depth: median depth of the points the image observes, under its input pose). Its input
accuracy is ``input_residual_px``, the median reprojection residual of its observations under its input
pose. A camera is flagged when its ``move_px`` is

* more than :data:`RESIDUAL_FACTOR` times its input residual (what its own observations say it may be
  off by), **and**
* an outlier among the moves of all cameras (:mod:`nerf_posefix.geometry.outliers`): more than :data:`MEDIAN_FACTOR` times the median move and
  more than :data:`MAD_SIGMAS` robust standard deviations (1.4826 · MAD) above it, **and**
* at least :data:`MIN_MOVE_PX` pixel (and, where ``--move-threshold-deg`` / ``--move-threshold-rel`` are
  not 0, at least that rotation or that fraction of the scene radius).

So poses that are all degrees off (phone AR, SLAM) and all move by degrees flag nothing, while the one
camera of a COLMAP model that moves 8x more than the others does. Without tracks (no residuals) the
first condition is left out, and the summary says so.
"""

from __future__ import annotations

import csv
import json
import textwrap
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from nerf_posefix.errors import InputError
from nerf_posefix.geometry.alignment import pose_alignment
from nerf_posefix.geometry.grouped import grouped_count, grouped_median
from nerf_posefix.geometry.homography_numpy import homography_error_numpy
from nerf_posefix.geometry.outliers import MAD_SIGMAS, MEDIAN_FACTOR, MIN_MOVE_PX, image_shift_px, outlier_threshold
from nerf_posefix.geometry.poses import rotation_angle_deg, scene_radius
from nerf_posefix.io.camera_set import CameraSet
from nerf_posefix.io.colmap import ColmapModel
from nerf_posefix.sfm.frame_placement import BEYOND_CAP
from nerf_posefix.sfm.principal_point import CHI2_2DOF_P001
from nerf_posefix.sfm.residuals import ModelResiduals, model_residuals

REPORT_CSV = "report.csv"
#: The summary's ``no_nerf_stage`` when the default skipped the NeRF stage because the images are too small for one.
NO_NERF_TOO_SMALL = "the weakly held images are too small for a NeRF"
REPORT_JSON = "report.json"

#: A flagged camera moved more than this many times its input reprojection residual (see the module docstring), and
#: is an outlier among the cameras' moves (:func:`nerf_posefix.geometry.outliers.outlier_threshold`: more than
#: ``MEDIAN_FACTOR`` x the median camera's move, ``MAD_SIGMAS`` robust standard deviations above it, ``MIN_MOVE_PX``).
RESIDUAL_FACTOR = 3.0
#: Fewest observations for an image's median residual and depth.
MIN_OBSERVATIONS = 5


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
    move_px: float = float("nan")
    """Image displacement of the move at the image's median scene depth (pixels; see the module docstring)."""
    input_residual_px: float = float("nan")
    """Median reprojection residual of the image's observations under its input pose (pixels; NaN: no tracks)."""
    observations: int = -1
    """How well the adjustment's tracks hold the image (:mod:`nerf_posefix.sfm.support`; -1: no adjustment ran):
    its inlier observations ..."""
    sigma_rotation_deg: float = float("nan")
    """... its pose's standard deviation (degrees, largest axis; conditional on the points) ..."""
    sigma_centre: float = float("nan")
    """... the same for its centre (input units) ..."""
    weak: bool = False
    """... whether the tracks hold it only weakly ..."""
    weak_reason: str = ""
    """... and why (few tracks, a separate group, an uncertain pose)."""


@dataclass
class RefineResult:
    """What :func:`refine` wrote and measured."""

    output: Path
    images: list[ImageReport]
    summary: dict[str, Any] = field(default_factory=dict)

    def summary_text(self) -> str:
        """The summary printed at the end: one table (stages, how far the cameras moved, flags), the
        warnings, then each path written, once, with what it holds."""
        s = self.summary
        rot = np.array([r.rotation_deg for r in self.images])
        trans = np.array([r.translation for r in self.images])
        hom = np.array([r.homography_error for r in self.images])
        move = np.array([r.move_px for r in self.images])
        flagged = [r for r in self.images if r.flagged]
        radius = s.get("scene_radius", float("nan"))
        rows: list[tuple[str, str]] = []
        built = s.get("tracks_built")
        if built:
            m = built["matches"]
            blurred = m.get("blur_matched") or []
            rows.append(("tracks", f"built from the images: {m['matching']} matching, {m['num_verified_pairs']} verified pairs, "
                                   f"{built['num_points']} points, {built['num_observations']} observations"
                                   + (f"; {len(blurred)} blurred image(s) matched against their neighbours blurred alike "
                                      f"(+{sum(int(b['inliers']) for b in blurred)} matches)" if blurred else "")))
        ba = s.get("bundle_adjustment")
        if isinstance(ba, dict):
            before = ba.get("reprojection_error_before_px", (built or {}).get("mean_reprojection_error_px"))
            before_text = f"{before:.3g} -> " if before is not None else ""
            rows.append(("adjustment", f"bundle adjustment ({ba['loss']}"
                         + (f", scale {ba['scale_px']:.3g} px" if ba.get("scale_px") is not None else "")
                         + (f", {len(ba['rounds'])} rounds re-triangulating" if ba.get("rounds") else "")
                         + f": mean reprojection error {before_text}{ba['reprojection_error_after_px']:.3g} px, {ba['seconds']:.1f} s)"))
        else:
            rows.append(("adjustment", "none"))
        if isinstance(ba, dict) and ba.get("cameras"):  # --intrinsics: the cameras the adjustment refined
            for camera_id, change in list(ba["cameras"].items())[:3]:
                rows.append(("intrinsics", f"camera {camera_id} ({change['model']}, {ba['intrinsics']}): "
                             + " ".join(f"{a:.4g}" for a in change["before"]) + " -> " + " ".join(f"{b:.4g}" for b in change["after"])))
        if isinstance(ba, dict):  # --intrinsics auto: the principal points at COLMAP's placeholder the tracks agree with
            for test in [t for t in ba.get("principal_point_tests") or [] if not t["refined"]][:3]:
                rows.append(("intrinsics", f"camera {test['camera_id']} held: its principal point is the image centre and the "
                             f"tracks agree with it (χ² {test['chi2']:.3g} <= {CHI2_2DOF_P001:.3g})"))
        if s.get("iterations"):
            seconds = s.get("training_seconds")
            rows.append(("NeRF stage", f"{s.get('method', 'posefix')}, {s['iterations']} iterations"
                         + (f" ({seconds:.0f} s)" if seconds is not None else "")))
            check = s.get("move_check") or {}
            if check.get("checked"):
                undone = check.get("undone") or []
                rows.append(("", f"its moves of {check['checked']} weakly held image(s) checked against their held neighbours: "
                                 + (f"{len(undone)} undone (the image fit them worse after the move)" if undone else "none undone")))
        else:
            rows.append(("NeRF stage", f"none ({s.get('no_nerf_stage', '--iterations 0')})"))
        rows.append(("", ""))
        rows.append(("moved", f"{'median':>8}      {'max':>8}"))
        rows.append(("rotation", f"{_num(np.median(rot), '.3f')} deg {_num(rot.max(), '.3f')} deg"))
        if radius and np.isfinite(radius):
            rows.append(("centre", f"{_num(100 * np.median(trans) / radius, '.2f')} %   {_num(100 * trans.max() / radius, '.2f')} %   "
                         f"of the scene radius {radius:.4g} ({np.median(trans):.4g} / {trans.max():.4g} input units)"))
        else:
            rows.append(("centre", f"{_num(np.median(trans), '.4g')}     {_num(trans.max(), '.4g')}     input units"))
        if np.isfinite(move).any():
            rows.append(("image shift", f"{_num(np.nanmedian(move), '.3g')} px  {_num(np.nanmax(move), '.3g')} px  "
                         "(the move's displacement of the image at its scene depth)"))
        if np.isfinite(hom).any():
            rows.append(("homography", f"{_num(np.nanmedian(hom), '.3g')}     {_num(np.nanmax(hom), '.3g')}     "
                         f"(homography pose error, bounds: {s.get('bounds_mode', '?')})"))
        drift = s.get("drift")
        if drift:
            rows.append(("common drift", f"rotation {drift['rotation_deg']:.3f} deg, scale {drift['scale']:.5f}, centres moved "
                         f"{drift['translation']:.3g} (median) by the Sim(3) mapping the refined cameras onto the input"))
        rows.append(("", ""))
        if flagged:
            worst = sorted(flagged, key=lambda r: -(r.move_px if np.isfinite(r.move_px) else r.rotation_deg))[:5]
            listed = ", ".join(f"{r.name} ({r.rotation_deg:.2f} deg, {r.translation_rel:.1%}, {r.move_px:.3g} px)" for r in worst)
            more = f" and {len(flagged) - len(worst)} more (report.csv)" if len(flagged) > len(worst) else ""
            rows.append(("FLAGGED", f"{len(flagged)} of {len(self.images)} images: {listed}{more}"))
        else:
            rows.append(("flagged", f"none of {len(self.images)} images"))
        if s.get("flag_rule"):
            rows += [("", line) for line in textwrap.wrap(f"rule: {s['flag_rule']}", width=96)]
        adjusted = ba if isinstance(ba, dict) else {}
        opinions = adjusted.get("second_opinion")
        if opinions:  # cameras the rounds moved far more than the others, registered again against them
            taken = [o for o in opinions if o["replaced"]]
            rows.append(("re-registered", f"{len(taken)} of {len(opinions)} image(s) the track rounds moved far more than the others or held "
                         "weakly (an uncertain pose, few tracks), registered against the others held fixed (" + ", ".join(
                             f"{o['name']} " + (f"{o['disagreement_px']:.3g} px from the rounds' pose, on {o['observations']} observations"
                                                if o["replaced"] else "kept: " + (o["reason"] or "?").split(" (")[0])
                             for o in opinions[:4]) + (", ..." if len(opinions) > 4 else "") + ")"))
        placement = adjusted.get("placement")
        if placement and placement.get("frames"):
            frames = placement["frames"]
            capped = sum(1 for f in frames if (f.get("reason") or "").startswith(BEYOND_CAP))
            rows.append(("placed", f"{placement['num_placed']} of {len(frames)} blurred image(s) the adjustment held weakly or not at all, against the "
                                   "adjusted images held fixed (" + ", ".join(
                                       f"{f['name']} {'held' if f['held'] else ('kept: ' if f.get('held_before') else 'left weak: ') + (f['reason'] or '?').split(' (')[0]}"
                                       for f in frames[:4]) + (", ..." if len(frames) > 4 else "") + f"; {placement['seconds']:.0f} s)"
                                   + (f"; {capped} not tried, beyond --placement-max-frames" if capped else "")))
        photometric = adjusted.get("photometric_alignment")
        if photometric and photometric.get("frames"):
            frames = photometric["frames"]
            rows.append(("aligned", f"{photometric['num_aligned']} of {len(frames)} image(s) still weakly held, by their intensities against their "
                                    "held neighbours (" + ", ".join(
                                        f"{f['name']} " + (f"moved {f['rotation_deg']:.2g} deg" if f["kept"] else "left weak: " + (f["reason"] or "?").split(" (")[0])
                                        for f in frames[:4]) + (", ..." if len(frames) > 4 else "") + f"; {photometric['seconds']:.0f} s)"))
        support = adjusted.get("support")
        if support:
            why = "; ".join(f"{v['count']} {k}" for k, v in support["weak_by_reason"].items())
            placed_text = f", {support['num_placed']} of them placed" if support.get("num_placed") else ""
            rows.append(("tracks hold", f"{support['num_images'] - support['num_weak']} of {support['num_images']} images{placed_text} "
                         f"(median {support['median_observations']:.0f} observations, pose σ {support['median_sigma_rotation_deg']:.2g} deg)"
                         + (f"; weakly held: {support['num_weak']} ({why})" if support["num_weak"] else "")
                         + (("; the images are too small for a NeRF stage: they keep the adjustment's poses" if s.get("no_nerf_stage") == NO_NERF_TOO_SMALL
                             else "; without a NeRF stage they keep their input error (the default runs one for them)")
                            if support["num_weak"] and not s.get("iterations") else "")))
        width = max(len(k) for k, _ in rows)
        total = s.get("total_seconds")
        lines = [f"posefix refine: {len(self.images)} images" + (f", {total:.0f} s in all" if total is not None else "")]
        lines += [f"  {k:<{width}}  {v}".rstrip() for k, v in rows]
        for warning in s.get("warnings", []):
            lines.append(f"  WARNING: {warning}")
        lines.append("wrote")
        lines += [f"  {path}  {what}" for path, what in self.written()]
        return "\n".join(lines)

    def written(self) -> list[tuple[str, str]]:
        """``(path, what it holds)`` of everything written under the output directory, each path once."""
        s, out = self.summary, Path(self.output)
        kind = s.get("input_format", "colmap")
        points = s.get("points3D", "carried over")
        files = model_files(s.get("model_formats", ["bin", "txt"]))
        entries: list[tuple[Path, str]] = []
        if kind == "colmap":
            entries.append((out / "sparse" / "0", f"the refined COLMAP model ({files}; the input's world frame; points3D {points})"))
            entries.append((out / "transforms.json", "the same poses for nerfstudio (its colmap_to_json conversion, with sparse_pc.ply)"))
        else:
            poses = out / s.get("output_poses", "transforms.json")
            what = {"transforms": "transforms.json", "tum": "TUM trajectory"}.get(kind, kind)
            entries.append((poses, f"the refined poses ({what}: the input's format and world frame)"))
            entries.append((out / "sparse" / "0", f"COLMAP model ({files}) of the refined poses and the tracks; points3D {points}"))
        entries.append((out / REPORT_CSV, "per image: how far it moved, flagged and why"))
        entries.append((out / REPORT_JSON, "the same, with this summary, the options and the timings"))
        images = out / "images"
        if images.is_symlink():
            entries.append((images, f"a link to the input images ({images.resolve()})"))
        elif images.is_dir():
            entries.append((images, "a copy of the input images"))
        width = max(len(str(p)) for p, _ in entries)
        return [(f"{str(p):<{width}}", what) for p, what in entries]


def model_files(formats: list[str]) -> str:
    """What a written COLMAP model's ``formats`` (``"bin"``, ``"txt"``) are, in words: ``bin+txt``, or why
    only the binary files are there (:func:`nerf_posefix.io.colmap.write_colmap_model` writes no text files
    when image names hold spaces)."""
    if "txt" in formats:
        return "bin+txt" if "bin" in formats else "txt"
    return "bin only: image names with spaces, which COLMAP's text format cannot hold"


def _num(value: float, fmt: str) -> str:
    """``value`` formatted right-aligned in 8 characters (``n/a`` when not finite)."""
    return f"{value:>8{fmt}}" if np.isfinite(value) else f"{'n/a':>8}"


@dataclass
class ImageAccuracy:
    """Per image of a model (image-id order), under its own poses: focal length (pixels), median depth of
    the points it observes (input units; NaN with fewer than :data:`MIN_OBSERVATIONS`), median
    reprojection residual (pixels; NaN likewise, or for camera models the residuals do not cover)."""

    focal_px: np.ndarray
    depth: np.ndarray
    residual_px: np.ndarray


def image_accuracy(model: ColmapModel, residuals: Optional[ModelResiduals] = None) -> ImageAccuracy:
    """:class:`ImageAccuracy` of ``model``'s images under its own poses and points: per image the medians of
    the depths and reprojection residuals of its observations in front of it (at least
    :data:`MIN_OBSERVATIONS`, else NaN). ``residuals``: ``model``'s :func:`model_residuals`, when the caller
    has them already."""
    ids = model.image_ids()
    n = len(ids)
    focal = np.array([float(np.mean(_focal(model.cameras[model.images[i].camera_id]))) for i in ids])
    res = residuals if residuals is not None else model_residuals(model)
    if res.image_index.size == 0:
        return ImageAccuracy(focal, np.full(n, np.nan), np.full(n, np.nan))
    valid = res.valid
    enough = grouped_count(np.where(valid, 0.0, np.nan), res.image_index, n) >= MIN_OBSERVATIONS
    depth = np.where(enough, grouped_median(np.where(valid, res.depth, np.nan), res.image_index, n), np.nan)
    residual = np.where(enough, grouped_median(np.where(valid, res.residual_px, np.nan), res.image_index, n), np.nan)
    return ImageAccuracy(focal, depth, residual)


def _focal(camera: Any) -> tuple[float, float]:
    """``(fx, fy)`` of a COLMAP camera (single-focal models: ``f`` twice)."""
    params = [float(v) for v in camera.params]
    if camera.model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL", "SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE", "FOV") or len(params) < 2:
        return params[0], params[0]
    return params[0], params[1]


def flag_moves(
    rotation_deg: np.ndarray,
    translation: np.ndarray,
    radius: float,
    accuracy: ImageAccuracy,
    move_threshold_deg: float = 0.0,
    move_threshold_rel: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, list[str], str]:
    """The flag rule of the report (module docstring).

    Args:
        rotation_deg, translation: ``[N]`` how far each camera moved (degrees; input units).
        radius: the scene radius (input units).
        accuracy: the input's focal lengths, depths and residuals per image.
        move_threshold_deg, move_threshold_rel: where > 0, a camera must also have moved at least this
            rotation or this fraction of the scene radius.

    Returns:
        ``(flagged [N] bool, move_px [N], reasons [N], rule)``: ``rule`` says the rule in words.
    """
    depth = accuracy.depth.copy()
    known = np.isfinite(depth) & (depth > 0)
    fallback_depth = float(np.median(depth[known])) if known.any() else (radius if radius > 0 else float("inf"))
    depth[~known] = fallback_depth
    move_px = image_shift_px(rotation_deg, translation, depth, accuracy.focal_px)
    outlier_above, median = outlier_threshold(move_px)
    residual = accuracy.residual_px
    has_residual = np.isfinite(residual)
    typical_residual = float(np.median(residual[has_residual])) if has_residual.any() else float("nan")
    floors = []
    if move_threshold_deg > 0:
        floors.append(rotation_deg > move_threshold_deg)
    if move_threshold_rel > 0 and radius > 0:
        floors.append(translation / radius > move_threshold_rel)
    big_enough = np.logical_or.reduce(floors) if floors else np.ones(len(move_px), dtype=bool)
    beyond_residual = ~has_residual | (move_px > RESIDUAL_FACTOR * residual)
    flagged = (move_px > outlier_above) & beyond_residual & big_enough
    reasons = []
    for k in range(len(move_px)):
        if not flagged[k]:
            reasons.append("")
            continue
        why = f"moved the image by {move_px[k]:.3g} px, {move_px[k] / max(median, 1e-12):.1f}x the median camera's {median:.3g} px"
        if has_residual[k]:
            why += f" and {move_px[k] / max(residual[k], 1e-12):.0f}x its input reprojection residual {residual[k]:.3g} px"
        reasons.append(why)
    residual_words = (
        f"more than {RESIDUAL_FACTOR:g}x its own input reprojection residual (median over the images {typical_residual:.3g} px), "
        if has_residual.any() else ""
    )
    rule = (
        f"a camera is flagged when its move, as the shift of its image at its scene depth, is {residual_words}"
        f"more than {MEDIAN_FACTOR:g}x the median camera's move ({median:.3g} px) and {MAD_SIGMAS:g} robust SDs above it, "
        f"and is at least {MIN_MOVE_PX:g} px"
    )
    if floors:
        parts = ([f"{move_threshold_deg:g} deg"] if move_threshold_deg > 0 else []) + (
            [f"{move_threshold_rel:.1%} of the scene radius"] if move_threshold_rel > 0 else [])
        rule += f" and at least {' or '.join(parts)}"
    if not has_residual.any():
        rule += " (no tracks: the input's residuals are unknown)"
    return flagged, move_px, reasons, rule


def _support_fields(support: Optional[dict[str, Any]]) -> dict[str, Any]:
    """The :class:`ImageReport` fields of one image's support (none without it)."""
    if not support:
        return {}
    return {"observations": int(support["observations"]), "sigma_rotation_deg": float(support["sigma_rotation_deg"]),
            "sigma_centre": float(support["sigma_centre"]), "weak": bool(support["weak"]), "weak_reason": str(support["reason"])}


def build_report(
    model: ColmapModel,
    refined: CameraSet,
    bounds: Optional[tuple[np.ndarray, np.ndarray, str]],
    bounds_mode: str,
    move_threshold_deg: float,
    move_threshold_rel: float,
    support: Optional[dict[str, dict[str, Any]]] = None,
    residuals: Optional[ModelResiduals] = None,
) -> tuple[list[ImageReport], dict[str, Any]]:
    """Per-image movement between the input ``model``'s poses and the ``refined`` ones (same world frame,
    no alignment). ``bounds``: the homography depth bounds ``(xmin [N], xmax [N], source)`` per image of
    ``model`` (image-id order, input units), or None; thresholds: where > 0, a flagged image must also have
    moved more (degrees, fraction of the radius). Flags: :func:`flag_moves`, with the input's accuracy
    from ``model``'s own observations (:func:`image_accuracy`). ``support``: how well the adjustment's tracks
    hold each image, by name (:meth:`nerf_posefix.sfm.support.ImageSupport.to_dict`), or None. ``residuals``:
    ``model``'s :func:`nerf_posefix.sfm.residuals.model_residuals`, when the caller has them already."""
    cams_in = model.to_camera_set(observations=False)  # image-id order, c2w OpenCV, COLMAP world
    index = {n: i for i, n in enumerate(refined.names)}
    c2w_ref = refined.c2w[[index[n] for n in cams_in.names]]
    c2w_in = cams_in.c2w
    rot = rotation_angle_deg(c2w_in[:, :3, :3], c2w_ref[:, :3, :3])
    trans = np.linalg.norm(c2w_ref[:, :3, 3] - c2w_in[:, :3, 3], axis=-1)
    radius = scene_radius(c2w_in[:, :3, 3])
    rel = trans / radius if radius > 0 else np.full_like(trans, np.nan)

    source = "none"
    if bounds is not None:
        xmin, xmax, source = bounds
        hom = homography_error_numpy(c2w_in, c2w_ref, xmin, xmax, camera_convention="opencv")
    else:
        xmin = xmax = hom = np.full(len(c2w_in), np.nan)

    accuracy = image_accuracy(model, residuals)
    flagged, move_px, reasons, rule = flag_moves(rot, trans, radius, accuracy, move_threshold_deg, move_threshold_rel)
    reports = []
    for k, name in enumerate(cams_in.names):
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
                flagged=bool(flagged[k]),
                reason=reasons[k],
                move_px=float(move_px[k]),
                input_residual_px=float(accuracy.residual_px[k]),
                **_support_fields((support or {}).get(name)),
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
        "move_px": {"median": float(np.median(move_px)), "max": float(move_px.max())},
        "num_flagged": int(sum(r.flagged for r in reports)),
        "flag_rule": rule,
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
