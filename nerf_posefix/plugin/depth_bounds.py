"""Depth bounds ``[xmin, xmax]`` of the homography regulariser, in dataparser-scaled units.

The homography error averages ``‖I - H(x)‖²`` over fronto-parallel planes at depths ``x`` in
``[xmin, xmax]`` in front of the reference camera; the bounds set how much a translation costs
relative to a rotation (``γ = 1/(xmin·xmax)`` weights ``‖t‖²``). They should bracket the depths of
the scene content. Modes (``HomographyCameraOptimizerConfig.bounds``):

``auto`` (default)
    ``points-global`` when sparse points are available, otherwise ``scene-box``.
``points-global``
    The ``lower_quantile``/``upper_quantile`` (default 2.5 %/97.5 %) quantiles of the depths, along
    each camera's optical axis, of the points that camera observes, pooled over all training cameras
    (the paper's global variant, :func:`nerf_posefix.geometry.homography.global_depth_bounds`). Without
    per-image observations (a bare point cloud), every point in front of a camera counts.
``points-per-camera``
    The same quantiles per camera (the paper's local variant,
    :func:`nerf_posefix.geometry.homography.depth_bounds_from_points`); needs per-image observations (a COLMAP
    model). Cameras observing fewer than ``min_points_per_camera`` points get the global bounds.
``scene-box``
    ``xmin`` = the model's near plane; ``xmax`` = the largest depth of a scene-box corner seen from any
    training camera. Conservative: it covers the whole box (which, after nerfstudio's auto-scaling,
    holds the cameras), so translations weigh more than with SfM points.
``near-far``
    The model's ``near_plane``/``far_plane``. nerfacto's far plane (1000) is a sampling limit, not a
    scene depth: with it the translation term nearly vanishes (a warning says so).
``fixed``
    ``xmin``/``xmax`` as given.

Sparse points (:func:`find_sparse_points`): a COLMAP model of the dataset (the colmap dataparser's
input, or a model beside transforms.json) gives points *and* per-image observations; it is mapped
into the dataparser frame with the dataparser transform and scale, after checking on the matched
camera centres that it is in the same world frame (if not, it is aligned to the training cameras by
Sim(3), or ignored when even that does not fit). Otherwise the dataparser's ``points3D_xyz``
(``load_3D_points``) is used, without observations.

All poses here are camera-to-world ``[N, 3, 4]`` with OpenGL axes in the dataparser frame, and all
depths are dataparser-scaled units.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from nerf_posefix.errors import InputError
from nerf_posefix.geometry.alignment import align
from nerf_posefix.geometry.poses import as_4x4, opencv_to_opengl
from nerf_posefix.io.camera_set import match_image_names
from nerf_posefix.io.colmap import ColmapModel, read_colmap_model
from nerf_posefix.geometry.homography import camera_depths, check_depth_bounds, depth_bounds_from_points, global_depth_bounds

#: Largest median centre residual, as a fraction of the camera spread, for a COLMAP model to be
#: accepted as being in the training cameras' frame (direct mapping or after Sim(3) alignment).
FRAME_TOLERANCE = 0.05
#: nerfacto-like far planes at or above this are reported as not being scene depths.
FAR_PLANE_WARNING = 100.0

OPTION = "--pipeline.model.camera-optimizer"


@dataclass
class SparsePoints:
    """Sparse 3D points in the dataparser frame.

    Attributes:
        xyz: ``[P, 3]`` points, dataparser frame, dataparser-scaled units.
        observations: per training camera, a long tensor of indices into ``xyz`` of the points it
            observes; None when unknown.
        source: where they came from (for messages).
        xyz64: ``[P, 3]`` the same points in float64 (COLMAP models only).
        colmap_model: the COLMAP model they came from (its 2D observations and cameras: the SfM tracks).
        model_index: per training camera, the index of its image in the model's image-id order (None:
            not in the model).
    """

    xyz: Float[Tensor, "num_points 3"]
    observations: Optional[list[Tensor]]
    source: str
    xyz64: Optional[np.ndarray] = None
    colmap_model: Optional[ColmapModel] = None
    model_index: Optional[list[Optional[int]]] = None


@dataclass
class DepthBounds:
    """Per-camera depth bounds (``[N]`` each, dataparser-scaled units) and how they were chosen."""

    xmin: Float[Tensor, "num_cameras"]
    xmax: Float[Tensor, "num_cameras"]
    mode: str
    source: str

    def describe(self, dataparser_scale: Optional[float] = None) -> str:
        """One line for the log (dataparser units, and input units when ``dataparser_scale`` is given)."""
        lo, hi = float(self.xmin.min()), float(self.xmax.max())
        uniform = bool(torch.all(self.xmin == self.xmin[0]) and torch.all(self.xmax == self.xmax[0]))

        def fmt(factor: float) -> str:
            if uniform:
                return f"[{lo * factor:.4g}, {hi * factor:.4g}]"
            return (
                f"xmin {lo * factor:.4g}..{float(self.xmin.max()) * factor:.4g} "
                f"(median {float(self.xmin.median()) * factor:.4g}), "
                f"xmax {float(self.xmax.min()) * factor:.4g}..{hi * factor:.4g} "
                f"(median {float(self.xmax.median()) * factor:.4g})"
            )

        text = f"{fmt(1.0)} dataparser units"
        if dataparser_scale:
            text += f" = {fmt(1.0 / dataparser_scale)} input units"
        per = "" if uniform else " per camera"
        return f"homography depth bounds{per} ({self.mode}): {text}; from {self.source}"


# ---------------------------------------------------------------------------------------------
# sparse points


def _to_dataparser(points: np.ndarray, transform: np.ndarray, scale: float) -> np.ndarray:
    """Input-world points ``[P, 3]`` -> dataparser frame (``scale · (R p + t)``)."""
    return scale * (points @ transform[:3, :3].T + transform[:3, 3])


def find_sparse_points(
    info,  # noqa: ANN001 (nerf_posefix.plugin.dataset.DatasetInfo)
    dataparser_outputs,  # noqa: ANN001 (DataparserOutputs of the train split)
    train_c2w: Float[Tensor, "num_cameras 3 4"],
    log: Optional[list[str]] = None,
) -> Optional[SparsePoints]:
    """Sparse points for the depth bounds (see the module docstring), or None.

    Args:
        info: the dataset's :class:`~nerf_posefix.plugin.dataset.DatasetInfo`.
        dataparser_outputs: train-split outputs (image filenames, dataparser transform and scale,
            metadata).
        train_c2w: ``[N, 3, 4]`` train poses (OpenGL, dataparser frame).
        log: messages about rejected sources are appended here.
    """
    log = log if log is not None else []
    if info.colmap_dir is not None and info.colmap_dir.is_dir():
        try:
            colmap_model = read_colmap_model(info.colmap_dir)
            model_set = colmap_model.to_camera_set()
        except InputError as err:
            log.append(f"ignoring the COLMAP model: {err}")
            model_set = None
        if model_set is not None and model_set.points is not None and len(model_set.points) > 0:
            match = match_image_names(dataparser_outputs.image_filenames, model_set.names)
            train_idx = np.array([i for i, m in enumerate(match) if m is not None], dtype=np.int64)
            model_idx = np.array([m for m in match if m is not None], dtype=np.int64)
            transform = dataparser_outputs.dataparser_transform.double().numpy()  # [3, 4]
            scale = float(dataparser_outputs.dataparser_scale)
            ref = train_c2w.double().cpu().numpy()[train_idx]  # [M, 3, 4] dataparser frame
            ref_centres = ref[:, :3, 3]
            spread = float(np.median(np.linalg.norm(ref_centres - ref_centres.mean(0), axis=1))) if len(ref) else 0.0
            points = None
            if len(train_idx) >= 3 and spread > 0:
                centres = _to_dataparser(model_set.c2w[model_idx, :3, 3], transform, scale)
                residual = float(np.median(np.linalg.norm(centres - ref_centres, axis=1))) / spread
                if residual <= FRAME_TOLERANCE:
                    points = _to_dataparser(model_set.points, transform, scale)
                    how = "dataparser transform"
                else:
                    ref44 = as_4x4(ref)
                    try:
                        alignment = align(opencv_to_opengl(model_set.c2w[model_idx]), ref44, mode="sim3")
                        aligned = alignment.apply_points(model_set.c2w[model_idx, :3, 3])
                        residual2 = float(np.median(np.linalg.norm(aligned - ref_centres, axis=1))) / spread
                    except InputError as err:
                        residual2, alignment = float("inf"), None
                        log.append(f"cannot align the COLMAP model {info.colmap_dir} to the training cameras: {err}")
                    if alignment is not None and residual2 <= FRAME_TOLERANCE:
                        points = alignment.apply_points(model_set.points)
                        how = f"Sim(3) alignment on {len(train_idx)} cameras (median residual {residual2:.2%} of the spread)"
                    else:
                        log.append(
                            f"ignoring the COLMAP model {info.colmap_dir}: its cameras do not match the training "
                            f"cameras (median centre residual {residual:.1%} of the camera spread directly, "
                            f"{residual2:.1%} after Sim(3) alignment)"
                        )
            else:
                log.append(f"ignoring the COLMAP model {info.colmap_dir}: fewer than 3 of its images are training images")
            if points is not None:
                observations = []
                for m in match:
                    obs = model_set.observations[m] if (m is not None and model_set.observations is not None) else []
                    observations.append(torch.as_tensor(np.asarray(obs, dtype=np.int64)))
                return SparsePoints(
                    xyz=torch.from_numpy(points).float(),
                    observations=observations,
                    source=f"{len(points)} points of the COLMAP model {info.colmap_dir} (mapped by {how})",
                    xyz64=points,
                    colmap_model=colmap_model,
                    model_index=list(match),
                )
    xyz = dataparser_outputs.metadata.get("points3D_xyz") if dataparser_outputs.metadata else None
    if xyz is not None and len(xyz) > 0:
        return SparsePoints(xyz=xyz.float(), observations=None, source=f"{len(xyz)} points of the dataparser's points3D_xyz")
    return None


# ---------------------------------------------------------------------------------------------
# bounds


def _check_quantiles(lower: float, upper: float) -> None:
    if not 0.0 <= lower < upper <= 1.0:
        raise InputError(
            f"{OPTION}.lower-quantile {lower} / {OPTION}.upper-quantile {upper}: need 0 <= lower < upper <= 1"
        )


def _validated(xmin: Tensor, xmax: Tensor, what: str, names: Optional[Sequence[str]] = None) -> None:
    """InputError naming ``what`` (and the camera, for per-camera bounds) for invalid bounds."""
    try:
        check_depth_bounds(xmin, xmax)
    except ValueError as err:
        bad = (~torch.isfinite(xmin)) | (~torch.isfinite(xmax)) | (xmin <= 0) | (xmax <= xmin)
        where = ""
        if names is not None and bad.any() and xmin.dim() > 0:
            i = int(torch.nonzero(bad)[0])
            where = f" for camera {i} ({names[i]})"
        raise InputError(f"invalid homography depth bounds{where} from {what}: {err}") from None


def compute_depth_bounds(
    config,  # noqa: ANN001 (HomographyCameraOptimizerConfig)
    train_c2w: Float[Tensor, "num_cameras 3 4"],
    scene_aabb: Float[Tensor, "2 3"],
    near_plane: Optional[float],
    far_plane: Optional[float],
    points: Optional[SparsePoints],
    names: Optional[Sequence[str]] = None,
) -> DepthBounds:
    """Depth bounds per training camera, following ``config.bounds`` (see the module docstring).

    Args:
        config: the camera optimizer config (``bounds``, ``xmin``, ``xmax``, quantiles,
            ``min_points_per_camera``).
        train_c2w: ``[N, 3, 4]`` camera-to-world, OpenGL axes, dataparser frame.
        scene_aabb: ``[2, 3]`` scene box (dataparser frame).
        near_plane, far_plane: the model's collider planes (dataparser units), None if it has none.
        points: sparse points (:func:`find_sparse_points`), or None.
        names: camera names for messages.

    Returns:
        :class:`DepthBounds` with ``[N]`` float32 tensors.

    Raises:
        InputError: a mode whose inputs are missing (no points, no observations, no ``xmin``/``xmax``),
            bad quantiles, or bounds that are not finite, not positive or inverted.
    """
    n = train_c2w.shape[0]
    c2w = train_c2w.detach().double().cpu()
    mode = config.bounds

    def full(lo: float, hi: float) -> tuple[Tensor, Tensor]:
        return torch.full((n,), float(lo), dtype=torch.float64), torch.full((n,), float(hi), dtype=torch.float64)

    if mode == "auto":
        mode = "points-global" if points is not None else "scene-box"

    if mode == "fixed":
        if config.xmin is None or config.xmax is None:
            raise InputError(f"bounds=fixed needs {OPTION}.xmin and {OPTION}.xmax")
        xmin, xmax = full(config.xmin, config.xmax)
        _validated(xmin, xmax, f"{OPTION}.xmin {config.xmin:g} / {OPTION}.xmax {config.xmax:g}")
        source = "the options xmin/xmax"
    elif mode == "near-far":
        if near_plane is None or far_plane is None:
            raise InputError("bounds=near-far needs a model with near_plane and far_plane")
        xmin, xmax = full(near_plane, far_plane)
        _validated(xmin, xmax, f"the model's near_plane {near_plane:g} / far_plane {far_plane:g}")
        source = "the model's near_plane/far_plane"
        if far_plane >= FAR_PLANE_WARNING:
            source += f" (far_plane {far_plane:g} is a sampling limit, not a scene depth: translations barely count)"
    elif mode == "scene-box":
        lo, hi = scene_aabb[0].double(), scene_aabb[1].double()
        corners = torch.stack(
            [torch.stack([(hi if (k >> d) & 1 else lo)[d] for d in range(3)]) for k in range(8)]
        )  # [8, 3]
        far = max(float(camera_depths(c2w[i], corners, "opengl").max()) for i in range(n))
        near = near_plane if near_plane is not None and near_plane > 0 else 1e-3 * far
        xmin, xmax = full(near, far)
        _validated(xmin, xmax, "the scene box")
        source = (
            f"the scene box (xmin = near plane, xmax = farthest box corner over {n} cameras; "
            "no sparse points found)"
        )
    elif mode in ("points-global", "points-per-camera"):
        if points is None:
            raise InputError(
                f"bounds={mode} needs sparse points: a COLMAP model beside the data, or the dataparser "
                "option load-3D-points with a point cloud"
            )
        _check_quantiles(config.lower_quantile, config.upper_quantile)
        xyz = points.xyz.double().cpu()
        if points.observations is not None:
            per_camera = [xyz[obs] for obs in points.observations]
            kind = "observed points"
        else:
            per_camera = [xyz] * n
            kind = "points in front of each camera (no per-image observations)"
        try:
            g_lo, g_hi = global_depth_bounds(c2w, per_camera, config.lower_quantile, config.upper_quantile, "opengl")
        except ValueError as err:
            raise InputError(f"cannot compute depth bounds from {points.source}: {err}") from None
        xmin, xmax = full(g_lo, g_hi)
        q = f"{100 * config.lower_quantile:g}-{100 * config.upper_quantile:g}% depth quantiles"
        if mode == "points-global":
            source = f"{q} of the {kind}, pooled over {n} cameras; {points.source}"
        else:
            if points.observations is None:
                raise InputError(
                    "bounds=points-per-camera needs per-image observations (a COLMAP model with "
                    f"points3D); only {points.source} was found"
                )
            counts = []
            for i in range(n):
                depths = camera_depths(c2w[i], per_camera[i], "opengl")
                counts.append(int((depths > 0).sum()))
            own = [i for i in range(n) if counts[i] >= max(config.min_points_per_camera, 1)]
            if own:
                lo_own, hi_own = depth_bounds_from_points(
                    c2w[own], [per_camera[i] for i in own], config.lower_quantile, config.upper_quantile, "opengl"
                )
                xmin[own], xmax[own] = lo_own, hi_own
            fallback = n - len(own)
            source = f"{q} of the points each camera observes; {points.source}"
            if fallback:
                source += (
                    f"; {fallback} camera(s) observing fewer than {config.min_points_per_camera} points use the "
                    f"global bounds [{g_lo:.4g}, {g_hi:.4g}]"
                )
        _validated(xmin, xmax, points.source, names)
    else:
        raise InputError(f"{OPTION}.bounds: unknown mode {mode!r}")
    return DepthBounds(xmin=xmin.float(), xmax=xmax.float(), mode=mode, source=source)
