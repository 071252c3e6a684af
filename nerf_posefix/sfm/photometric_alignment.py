"""Weakly held frames aligned by their intensities against held neighbours, through the SfM points.

Why (issue 22): a frame whose keypoints drown (blur, a cut contrast, grain: hazy, underwater or low-light
imagery) keeps most of what its pixels say about the scene on average. Before the NeRF stage, each frame the
adjustment holds weakly (few or no tracks, an uncertain pose) is aligned by its intensities alone, at its full
resolution, against its nearest held neighbours (:func:`direct_alignment`):

* **Points**: the model's 3D points that at least 2 held frames observe, in front of the frame and inside it, and not
  behind a depth edge: none with a point more than :data:`DEPTH_EDGE` nearer within the blur's footprint (there it may
  be hidden, and the blur mixes the nearer surface into it by amounts that parallax makes differ between views);
  each with 4 samples on its surface's tangent plane (fitted to its 20 nearest points), :data:`TANGENT_STEP_SIGMAS`
  blur deviations away in the frame along the blur's axes: a keypoint is a blob's centre, where the blurred image is
  flat, and the slopes around it are what tells the pose.
* **Reference**: each point's intensity in the held neighbours that observe it (the :data:`NEIGHBOURS` nearest by
  centre, facing within 75 deg: :func:`nearest_held`), each neighbour blurred by the frame's blur scaled by the depth
  ratio (a blur of σ px at depth Z in the frame is σ Z / Z_n px at depth Z_n in the neighbour), averaged. The frame's
  blur (a :class:`~nerf_posefix.sfm.blur_matching.Blur`) is a Gaussian of σ px, or a motion streak of L px at an angle
  (the frame placement's choice, when it chose one: a streak smears along one direction only, and a Gaussian of any σ
  is the wrong model for it), the streak drawn in the neighbour at the same angle.
* **Residual**: the frame's intensity at the point's projection minus the reference, both normalised to zero
  mean and unit variance over the points inside the frame (a contrast cut, an exposure change), Huber-weighted.
* **Solver**: Gauss-Newton on the frame's 6-DoF pose (world-to-camera, updated on the left; a step that raises the
  robust cost is halved, up to 4 times, then the stage ends), coarse to fine: both sides blurred by :data:`STAGES`
  more (a fraction of the frame's longer side), :data:`ITERATIONS_PER_STAGE` iterations each. The projection is the
  camera's own (pycolmap's, distortion included); the Jacobian is the pinhole one at its focal lengths.
* **Evidence** (:func:`paired_evidence`): the frame keeps the aligned pose only when, on the points and reference of
  the stage :data:`EVIDENCE_STAGE`, its squared residuals at the aligned pose are below those at the
  start pose by more than :data:`EVIDENCE_Z` standard errors (paired over the points, the error counted over
  cells the size of the blur: :func:`paired_evidence`), and it moved less than
  :data:`MAX_MOVE_DEG`; otherwise it keeps the adjustment's pose.

Measured (``benchmarks/direct_alignment_probe.py``, castle-P30, every 4th photo degraded; docs/benchmarks.md):
grain of σ 40 grey levels after a 40 % contrast cut, seeds 0 / 1: the adjustment's 0.352 / 1.054 deg to 0.262 /
0.168 deg; σ 80 (no track holds them), seed 0: 1.853 to 0.456 deg (the NeRF stage alone: 0.641 deg);
Gaussian blur 12 px, with the front end's blur estimate: 0.731 deg against the NeRF stage's 0.724. A 40 px motion
streak (``benchmarks/streak_alignment_probe.py``, every degraded frame from the adjustment's model, 3 seeds): 0.525 deg
with a Gaussian estimate, 0.287 deg with the streak.

The same comparison tests a move made by something else (:func:`check_moves`: a NeRF stage's): whether the frame
fits its held neighbours worse at the moved pose than at its start, by :data:`EVIDENCE_Z` standard errors, counted
over cells the size of the blur (points within a blur of each other share their pixels: :func:`paired_evidence`).
On the toybox's blurred frames the per-point error made moves the truth calls good look 3-4.5 standard errors worse;
counted over cells they stand (castle's grain σ 40, where the NeRF stage moved a frame 1 deg away: -11 either way).

Conventions: camera-to-world / world-to-camera 4x4 matrices with OpenCV axes (x right, y down, z forward), in
the model's world frame; images are grayscale ``[H, W]`` float64 in [0, 1]; pixel coordinates are array
coordinates (the centre of the top-left pixel at (0, 0): COLMAP's minus 0.5).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

if TYPE_CHECKING:
    import pycolmap

    from nerf_posefix.sfm.blur_matching import Blur

#: Extra blur of both sides per stage, as a fraction of the frame's longer side (16, 8, 4, 0 px at 768 px): coarse
#: to fine.
STAGES = (1 / 48, 1 / 96, 1 / 192, 0.0)
ITERATIONS_PER_STAGE = 30
#: Held neighbours each frame is aligned against (facing within the pose-guided matching rule's
#: :data:`~nerf_posefix.sfm.sift_features.SPATIAL_MAX_ANGLE_DEG`).
NEIGHBOURS = 4
#: Fewest points a stage needs (fewer: the frame keeps its pose).
MIN_POINTS = 100
#: The evidence a frame needs to keep its aligned pose: the paired drop of its squared residuals, in standard errors,
#: on the points and reference of the stage :data:`EVIDENCE_STAGE` (4 px of blur at 768 px: white pixel noise, a grainy
#: frame's, weighs 16x less there than unblurred; a blurred frame's signal is as coarse anyway).
EVIDENCE_Z = 3.0
EVIDENCE_STAGE = 2
#: The largest move kept (degrees): beyond it the alignment has locked onto something else.
MAX_MOVE_DEG = 10.0

#: ``project(cam_points [P, 3]) -> pixels [P, 2]`` (array coordinates; NaN behind the camera).
Projector = Callable[[np.ndarray], np.ndarray]


@dataclass
class FrameAlignment:
    """What :func:`direct_alignment` did to one frame.

    Attributes:
        name: the image's name.
        kept: whether the frame takes the aligned pose (``reason`` says why not).
        sigma_px: the frame's Gaussian blur σ relative to its neighbours (pixels of the aligned image; the front end's
            estimate; 0 for a streak).
        streak_px, angle_deg: the frame's motion streak (pixels of the aligned image; 0: none) and its angle from the
            image's x axis towards its y axis (the frame placement's choice).
        points: the points of the final stage, with their tangent samples (:func:`_tangent_samples`).
        rotation_deg, centre_move: how far the aligned pose is from the start (degrees; world units).
        gain, gain_stderr: the paired drop of the squared normalised residuals (start minus aligned; > 0: better).
        reason: why the frame keeps its pose ("" when kept).
    """

    name: str
    kept: bool
    sigma_px: float
    points: int
    rotation_deg: float
    centre_move: float
    gain: float
    gain_stderr: float
    reason: str = ""
    streak_px: float = 0.0
    angle_deg: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _transform(w2c: np.ndarray, X: np.ndarray) -> np.ndarray:
    return X @ w2c[:3, :3].T + w2c[:3, 3]  # [P, 3]


def _sample(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    from scipy.ndimage import map_coordinates

    uv = np.nan_to_num(uv, nan=-1e6)
    return map_coordinates(image, [uv[:, 1], uv[:, 0]], order=1, mode="nearest")  # [P]


#: The frame's key among the held frames' names in :func:`nearest_held` (no image name holds a NUL).
_FRAME = "\0frame"


def nearest_held(c2w: np.ndarray, held: Mapping[str, np.ndarray], count: int = NEIGHBOURS) -> list[str]:
    """The ``count`` held frames (``name -> c2w``) nearest ``c2w`` by camera centre among those facing within
    :data:`~nerf_posefix.sfm.sift_features.SPATIAL_MAX_ANGLE_DEG` of it (blur matching's
    :func:`~nerf_posefix.sfm.blur_matching.nearest_partners`); none when none faces alike (their points are not the
    frame's)."""
    from nerf_posefix.sfm.blur_matching import nearest_partners
    from nerf_posefix.sfm.sift_features import SPATIAL_MAX_ANGLE_DEG

    names = [*held, _FRAME]
    poses = np.stack([*(np.asarray(held[n], dtype=np.float64) for n in held), np.asarray(c2w, dtype=np.float64)])  # [H + 1, 4, 4]
    near = nearest_partners(names, [_FRAME], poses, count=count)[_FRAME]  # facing first; all of them when none faces
    cos = np.cos(np.deg2rad(SPATIAL_MAX_ANGLE_DEG))
    return [n for n in near if float(held[n][:3, 2] @ c2w[:3, 2]) >= cos]


def _blurred(image: np.ndarray, blur: "Blur") -> np.ndarray:
    """``image [H, W]`` smeared by ``blur``'s streak, then blurred by its Gaussian (either may be none)."""
    from scipy.ndimage import gaussian_filter

    from nerf_posefix.sfm.blur_matching import smear_streak

    if blur.streak_px > 0.5:
        image = smear_streak(image, blur.streak_px, np.deg2rad(blur.angle_deg))
    return gaussian_filter(image, blur.sigma_px) if blur.sigma_px > 0.05 else image


def _reference(X: np.ndarray, seen_by: Sequence[set[str]], depth: np.ndarray, blur: "Blur",
               neighbours: Mapping[str, tuple[np.ndarray, np.ndarray, Projector]], cache: dict) -> tuple[np.ndarray, np.ndarray]:
    """Per point ``[P]``: the mean intensity of the neighbours observing it, each blurred by ``blur`` (the frame's
    pixels) scaled by the depth ratio (from a grid of scales, ``cache``d), and how many contributed ``[P]``."""
    from nerf_posefix.sfm.blur_matching import Blur

    ref, count = np.zeros(len(X)), np.zeros(len(X))
    levels = 2.0 ** (np.arange(-12, 13) / 4.0)  # scales of the frame's blur in the neighbour
    for name, (w2c_n, image_n, project_n) in neighbours.items():
        Pn = _transform(w2c_n, X)
        seen = np.fromiter((name in s for s in seen_by), dtype=bool, count=len(X)) & (Pn[:, 2] > 0) & (depth > 0)
        if not seen.any():
            continue
        uvn = project_n(Pn[seen])
        ok = np.isfinite(uvn).all(axis=1)
        rows = np.nonzero(seen)[0][ok]
        uvn = uvn[ok]
        ratio = np.maximum(depth[rows] / Pn[rows, 2], 1e-6)  # a frame px at depth Z is Z / Z_n px in the neighbour
        level = np.abs(np.log(ratio)[:, None] - np.log(levels)[None, :]).argmin(1)
        for li in np.unique(level):
            scaled = Blur(float(levels[li] * blur.sigma_px), float(levels[li] * blur.streak_px), blur.angle_deg)
            key = (name, round(scaled.sigma_px, 6), round(scaled.streak_px, 6), blur.angle_deg)
            if key not in cache:
                cache[key] = _blurred(image_n, scaled)
            m = level == li
            ref[rows[m]] += _sample(cache[key], uvn[m])
            count[rows[m]] += 1
    return ref, count


def _residuals(frame: np.ndarray, project: Projector, w2c: np.ndarray, X: np.ndarray, ref: np.ndarray,
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """Camera points ``[P, 3]``, pixels ``[P, 2]``, whether inside ``[P]``, residuals ``[P]`` (the frame's intensity
    and the reference ``ref [P]``, each normalised over the points inside) and the frame's intensity spread there
    (for the gradient's scale)."""
    h, w = frame.shape
    P = _transform(w2c, X)
    uv = np.full((len(X), 2), np.nan)
    front = P[:, 2] > 1e-9
    if front.any():
        uv[front] = project(P[front])
    inside = front & np.isfinite(uv).all(axis=1) & (uv[:, 0] > 1) & (uv[:, 0] < w - 2) & (uv[:, 1] > 1) & (uv[:, 1] < h - 2)
    v = _sample(frame, uv)
    if inside.sum() < 2:
        return P, uv, inside, np.zeros(len(X)), 1.0
    mu, sd = float(v[inside].mean()), max(float(v[inside].std()), 1e-9)
    mu_r, sd_r = float(ref[inside].mean()), max(float(ref[inside].std()), 1e-9)
    return P, uv, inside, (v - mu) / sd - (ref - mu_r) / sd_r, sd


def huber_threshold(r: np.ndarray) -> float:
    """Huber's threshold for residuals ``r [M]``: 1.345 robust standard deviations (their median absolute value / 0.6745)."""
    return 1.345 * max(float(np.median(np.abs(r))) / 0.6745, 1e-9)


def huber_gauss_newton_step(J: np.ndarray, r: np.ndarray, c: float) -> np.ndarray:
    """The Gauss-Newton step ``[6]`` (translation, rotation vector) of the Huber-weighted (threshold ``c``) least
    squares of residuals ``r [M]`` with Jacobian ``J [M, 6]`` (lightly damped)."""
    weight = np.where(np.abs(r) < c, 1.0, c / np.maximum(np.abs(r), 1e-12))
    return -np.linalg.solve(J.T @ (J * weight[:, None]) + 1e-6 * np.eye(6), J.T @ (weight * r))


def pose_update(delta: np.ndarray) -> np.ndarray:
    """``[4, 4]`` left update of a world-to-camera pose by ``delta [6]`` (translation, rotation vector):
    ``P' = exp([ω]x) P + t``."""
    from scipy.spatial.transform import Rotation

    update = np.eye(4)
    update[:3, :3] = Rotation.from_rotvec(delta[3:]).as_matrix()
    update[:3, 3] = delta[:3]
    return update


def _huber_cost(r: np.ndarray, c: float) -> float:
    """Mean Huber cost of residuals ``r`` at threshold ``c``."""
    a = np.abs(r)
    return float(np.mean(np.where(a < c, 0.5 * a**2, c * (a - 0.5 * c)))) if a.size else 0.0


def _evidence_cell_px(blur: "Blur") -> float:
    """The side of the cells the evidence's standard error is counted over (pixels): twice the blur (its Gaussian σ
    and half its streak) plus one pixel; points closer than that share their pixels."""
    return 2.0 * (blur.sigma_px + 0.5 * blur.streak_px) + 1.0


def paired_evidence(before: np.ndarray, after: np.ndarray, cells: Optional[np.ndarray] = None) -> tuple[float, float]:
    """The mean drop of the squared residuals from ``before [P]`` to ``after [P]`` (the same points) and its
    standard error; with ``cells [P]`` (a label per point: points in one cell are correlated, as pixels within a blur
    of each other are), the cluster-robust standard error of the mean, ``sqrt(sum over cells of (sum of d - mean)²) / P``
    (with one point per cell, the usual one up to ``ddof``)."""
    diff = before**2 - after**2
    if diff.size < 2:
        return 0.0, float("inf")
    if cells is None:
        return float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(diff.size))
    _, label = np.unique(cells, return_inverse=True, axis=0 if np.ndim(cells) > 1 else None)
    sums = np.bincount(label.reshape(-1), weights=diff - diff.mean())  # [C] per cell
    if sums.size < 2:
        return float(diff.mean()), float("inf")
    return float(diff.mean()), float(np.sqrt(np.sum(sums**2) * sums.size / (sums.size - 1)) / diff.size)


def _stage(frame: np.ndarray, blur: "Blur", fraction: float) -> tuple[np.ndarray, "Blur"]:
    """The frame blurred by a stage's extra Gaussian (``fraction`` of its longer side) and the blur its neighbours then
    take (the frame's own with that Gaussian added)."""
    from scipy.ndimage import gaussian_filter

    from nerf_posefix.sfm.blur_matching import Blur

    extra = fraction * max(frame.shape)
    frame_s = gaussian_filter(frame, extra) if extra > 0 else frame
    return frame_s, Blur(float(np.hypot(blur.sigma_px, extra)), blur.streak_px, blur.angle_deg)


def _compare(frame_s: np.ndarray, project: Projector, w2c_start: np.ndarray, w2c_end: np.ndarray, X: np.ndarray,
             ref: np.ndarray, blur: "Blur") -> tuple[int, float, float]:
    """:func:`paired_evidence` of the end pose against the start on the points ``X`` inside the frame at both (the
    reference ``ref``, both sides blurred by ``blur``), counted over blur-sized cells at the start's projections:
    ``(points, gain, gain_stderr)``."""
    _, _, in_a, r_a, _ = _residuals(frame_s, project, w2c_end, X, ref)
    _, uv, in_b, r_b, _ = _residuals(frame_s, project, w2c_start, X, ref)
    both = in_a & in_b
    gain, stderr = paired_evidence(r_b[both], r_a[both], cells=np.floor(uv[both] / _evidence_cell_px(blur)).astype(np.int64))
    return int(both.sum()), gain, stderr


def align_frame(frame: np.ndarray, blur: "Blur | float", project: Projector, focal: tuple[float, float], start_c2w: np.ndarray,
                X: np.ndarray, seen_by: Sequence[set[str]], neighbours: Mapping[str, tuple[np.ndarray, np.ndarray, Projector]],
                ) -> tuple[np.ndarray, int, float, float, str]:
    """Align one frame (module docstring). ``blur``: how much blurrier the frame is than its neighbours (a
    :class:`~nerf_posefix.sfm.blur_matching.Blur` in the frame's pixels, or a Gaussian σ px); ``neighbours``: ``name ->
    (world-to-camera [4, 4], image [H, W], projector)``; ``seen_by[p]``: the neighbours observing point ``p`` of ``X [P, 3]``.

    Returns ``(camera-to-world [4, 4], points, gain, gain_stderr, reason)``: the aligned pose with the final stage's
    point count and evidence (:func:`paired_evidence`), or the start pose and why (``reason``)."""
    from nerf_posefix.sfm.blur_matching import Blur

    if not isinstance(blur, Blur):
        blur = Blur(sigma_px=float(blur))
    fx, fy = focal
    w2c = np.linalg.inv(start_c2w)
    cache: dict = {}
    evidence: tuple[np.ndarray, np.ndarray, np.ndarray, Blur] = (frame, X[:0], np.zeros(0), blur)
    for stage, fraction in enumerate(STAGES):
        frame_s, total = _stage(frame, blur, fraction)  # the stage's blur added
        depth = _transform(w2c, X)[:, 2]
        ref, count = _reference(X, seen_by, depth, total, neighbours, cache)
        have = count > 0
        if have.sum() < MIN_POINTS:
            return start_c2w, int(have.sum()), 0.0, float("inf"), f"{int(have.sum())} points seen by its neighbours (fewer than {MIN_POINTS})"
        r_ref = ref[have] / count[have]  # [P'] normalised with the frame's, over the points inside it
        Xs = X[have]
        gy, gx = np.gradient(frame_s)
        for _ in range(ITERATIONS_PER_STAGE):
            P, uv, inside, r, sd = _residuals(frame_s, project, w2c, Xs, r_ref)
            if inside.sum() < MIN_POINTS:
                return start_c2w, int(inside.sum()), 0.0, float("inf"), f"{int(inside.sum())} points inside the frame (fewer than {MIN_POINTS})"
            g = np.stack([_sample(gx, uv), _sample(gy, uv)], 1)[inside] / sd  # [M, 2] d residual / d pixel
            x, y, z = P[inside].T
            duv_dP = np.zeros((len(x), 2, 3))  # pinhole at the camera's focal lengths
            duv_dP[:, 0, 0], duv_dP[:, 0, 2] = fx / z, -fx * x / z**2
            duv_dP[:, 1, 1], duv_dP[:, 1, 2] = fy / z, -fy * y / z**2
            dP = np.zeros((len(x), 3, 6))  # P' = exp([w]x) P + t: d P' / d (t, w) at 0
            dP[:, :, :3] = np.eye(3)
            dP[:, 0, 4], dP[:, 0, 5] = z, -y
            dP[:, 1, 3], dP[:, 1, 5] = -z, x
            dP[:, 2, 3], dP[:, 2, 4] = y, -x
            J = np.einsum("ni,nij,njk->nk", g, duv_dP, dP)  # [M, 6]
            rr = r[inside]
            c = huber_threshold(rr)
            cost = _huber_cost(rr, c)
            delta = huber_gauss_newton_step(J, rr, c)
            for _ in range(5):  # a step that raises the cost (on the same points) is halved
                trial = pose_update(delta) @ w2c
                _, _, inside_t, r_t, _ = _residuals(frame_s, project, trial, Xs, r_ref)
                both = inside & inside_t
                if both.sum() >= MIN_POINTS and _huber_cost(r_t[both], c) <= _huber_cost(r[both], c):
                    break
                delta = delta / 2.0
            else:
                break  # no step lowers the cost: this stage is done
            w2c = trial
            if np.linalg.norm(delta) < 1e-7 or cost <= 0:
                break
        if stage == EVIDENCE_STAGE:
            evidence = (frame_s, Xs, r_ref, total)
    frame_e, Xe, r_e, blur_e = evidence  # the end pose against the start, on the evidence stage's points and reference
    count, gain, stderr = _compare(frame_e, project, np.linalg.inv(start_c2w), w2c, Xe, r_e, blur_e)
    return np.linalg.inv(w2c), count, gain, stderr, ""


def pose_evidence(frame: np.ndarray, blur: "Blur | float", project: Projector, start_c2w: np.ndarray, end_c2w: np.ndarray,
                  X: np.ndarray, seen_by: Sequence[set[str]], neighbours: Mapping[str, tuple[np.ndarray, np.ndarray, Projector]],
                  ) -> tuple[int, float, float]:
    """How much better the frame fits its neighbours at ``end_c2w`` than at ``start_c2w`` (arguments as
    :func:`align_frame`'s): ``(points, gain, gain_stderr)``, :func:`paired_evidence` of the normalised residuals on the
    points inside the frame at both poses, with both sides blurred as the stage :data:`EVIDENCE_STAGE` blurs them
    (the reference at the start pose's depths), its standard error counted over square cells of twice the blur plus
    one pixel (at the start pose's projections). ``gain < 0``: the end pose fits worse."""
    from nerf_posefix.sfm.blur_matching import Blur

    if not isinstance(blur, Blur):
        blur = Blur(sigma_px=float(blur))
    frame_s, total = _stage(frame, blur, STAGES[EVIDENCE_STAGE])
    w2c_start, w2c_end = np.linalg.inv(start_c2w), np.linalg.inv(end_c2w)
    ref, count = _reference(X, seen_by, _transform(w2c_start, X)[:, 2], total, neighbours, {})
    have = count > 0
    if have.sum() < MIN_POINTS:
        return int(have.sum()), 0.0, float("inf")
    points, gain, stderr = _compare(frame_s, project, w2c_start, w2c_end, X[have], ref[have] / count[have], total)
    return (points, gain, stderr) if points >= MIN_POINTS else (points, 0.0, float("inf"))


@dataclass
class MoveCheck:
    """A move of one frame (a NeRF stage's) tested against the frame's held neighbours (:func:`check_moves`).

    Attributes:
        name: the image's name.
        worse: whether the frame fits its neighbours worse at the moved pose, by more than :data:`EVIDENCE_Z`
            standard errors (the move is then undone).
        points: the points compared, with their tangent samples.
        rotation_deg: the move's rotation (degrees).
        gain, gain_stderr: :func:`pose_evidence` (moved against the start; < 0: the moved pose fits worse).
        reason: why the move was not tested ("" when it was).
    """

    name: str
    worse: bool
    points: int
    rotation_deg: float
    gain: float
    gain_stderr: float
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: Moves that shift a frame's points by less than this (median, pixels of the aligned image) are not tested.
MIN_TESTED_SHIFT_PX = 0.1


def _median_shift_px(project: Projector, start_c2w: np.ndarray, end_c2w: np.ndarray, X: np.ndarray) -> float:
    """Median image shift of the points ``X [P, 3]`` in front of the camera at both poses (NaN: none)."""
    Pa, Pb = _transform(np.linalg.inv(start_c2w), X), _transform(np.linalg.inv(end_c2w), X)
    front = (Pa[:, 2] > 1e-9) & (Pb[:, 2] > 1e-9)
    if not front.any():
        return float("nan")
    d = np.linalg.norm(project(Pa[front]) - project(Pb[front]), axis=1)
    return float(np.nanmedian(d)) if np.isfinite(d).any() else float("nan")


def _rotation_deg(a: np.ndarray, b: np.ndarray) -> float:
    """The rotation between two poses ``[4, 4]`` (degrees)."""
    from nerf_posefix.geometry.poses import rotation_angle_deg

    return float(rotation_angle_deg(a[:3, :3], b[:3, :3]))


def check_moves(moved: Mapping[str, np.ndarray], scene: HeldFrames) -> list[MoveCheck]:
    """Test each frame's move from its pose in ``scene.c2w`` to ``moved[name]`` (camera-to-world, OpenCV axes) against
    its nearest held neighbours, through the points they observe (:func:`pose_evidence`). Independent of how the move
    was made: a NeRF stage's field, trained with the frame at its drifting pose, can fit a frame that moved away; the
    frame's own pixels against its held neighbours cannot."""
    held_c2w, X, seen_by, gray, tree = _held_points(scene)
    out: list[MoveCheck] = []
    for name, end in moved.items():
        start = np.asarray(scene.c2w[name], dtype=np.float64)
        end = np.asarray(end, dtype=np.float64)
        rotation = _rotation_deg(end, start)
        setup = _frame_setup(name, start, held_c2w, X, seen_by, gray, scene.projector, scene.blur_of, tree)
        if setup is None:
            out.append(MoveCheck(name, False, 0, rotation, 0.0, float("inf"), "no held frame faces alike"))
            continue
        frame, blur, project, _, Xf, seen_f, neighbours = setup
        shift = _median_shift_px(project, start, end, Xf)
        if not shift >= MIN_TESTED_SHIFT_PX:
            out.append(MoveCheck(name, False, len(Xf), rotation, 0.0, float("inf"),
                                 f"moved its points {shift:.2g} px (less than {MIN_TESTED_SHIFT_PX:g})"))
            continue
        count, gain, stderr = pose_evidence(frame, blur, project, start, end, Xf, seen_f, neighbours)
        if not np.isfinite(stderr):
            out.append(MoveCheck(name, False, count, rotation, gain, stderr, f"{count} points (fewer than {MIN_POINTS})"))
            continue
        out.append(MoveCheck(name, bool(gain < -EVIDENCE_Z * stderr), count, rotation, gain, stderr))
    return out


#: Points kept for a frame: those its start pose projects inside the frame grown by this fraction of its longer side
#: on every side (room for the move the alignment makes).
POINT_MARGIN = 0.15
#: A point within the blur's footprint (:func:`_footprint_px`: along a streak, its half-length) of a point nearer than itself by more than this fraction
#: of its depth (in log depth), in the frame at its start pose, is left out: behind an edge, it may be hidden in the
#: frame or in some of its neighbours, and the blur mixes the nearer surface into it by amounts that parallax makes
#: differ from view to view, so no blurred neighbour predicts it; the nearer point, in front, is seen everywhere and
#: stays. On a continuous surface the depth changes across the footprint by about (footprint / focal) x tan(incidence):
#: under 20 % up to ~75 deg at castle-P30's 12 px blur (36 px of 690 px). Measured (session probes, every degraded frame
#: aligned from its input pose, 3 seeds): the toybox's 16 frames blurred 3 px 0.328 -> 0.180 deg (worst 1.8-3.1 ->
#: 0.5-0.6 deg: there the objective preferred wrong poses to the truth by up to 3.3 standard errors, an object's
#: silhouette against the background), castle-P30's 8 frames blurred 12 px 0.584 -> 0.597 deg; leaving out both
#: points of such a pair: 0.168 deg on the toybox, 0.842 deg on castle (seed 0; with a 100 % jump still 0.668): there the
#: nearer side of an edge holds what tells rotation from translation.
DEPTH_EDGE = 0.2


def _footprint_px(blur: "Blur") -> tuple[float, float]:
    """How far (pixels) a blur mixes intensities, across and along its streak: 3 σ of its Gaussian plus a pixel, and
    that plus half the streak (a streak spreads a point uniformly over its length, along its direction only)."""
    across = 3.0 * blur.sigma_px + 1.0
    return across, across + 0.5 * blur.streak_px


def _footprint_coords(uv: np.ndarray, blur: "Blur") -> tuple[np.ndarray, float]:
    """Pixels ``uv [P, 2]`` in coordinates where the blur's footprint (:func:`_footprint_px`) is a disc: along its
    streak scaled by across / along, across it as they are; and that disc's radius (pixels)."""
    across, along = _footprint_px(blur)
    a = np.deg2rad(blur.angle_deg)
    axis = np.array([np.cos(a), np.sin(a)])  # the streak's direction in the image
    t = uv @ axis  # [P] along the streak
    n = uv @ np.array([-axis[1], axis[0]])  # [P] across it
    return np.stack([t * (across / along), n], -1), across


def _samples_off_depth_edges(uv_s: np.ndarray, depth_s: np.ndarray, uv_p: np.ndarray, depth_p: np.ndarray,
                             blur: "Blur") -> np.ndarray:
    """``[S]`` bool: the tangent-plane samples (pixels ``uv_s [S, 2]``, depths ``depth_s [S]``) with no point
    (``uv_p [P, 2]``, ``depth_p [P]``) within the blur's footprint nearer *or farther* than themselves by more than
    :data:`DEPTH_EDGE`: a sample stands for its point's surface only where that surface goes on, so none is taken
    across an edge, in front of it (past a nearer surface's outline, in the air) or behind it."""
    from scipy.spatial import cKDTree

    keep = np.ones(len(uv_s), dtype=bool)
    if not len(uv_s) or not len(uv_p):
        return keep
    coords_s, radius = _footprint_coords(uv_s, blur)
    coords_p, _ = _footprint_coords(uv_p, blur)
    near = cKDTree(coords_s).sparse_distance_matrix(cKDTree(coords_p), radius, output_type="ndarray")  # (s, p, distance)
    if len(near):
        s, q = near["i"], near["j"]
        jump = np.abs(np.log(depth_s[s] / depth_p[q])) > np.log1p(DEPTH_EDGE)
        keep[s[jump]] = False
    return keep


def _off_depth_edges(uv: np.ndarray, depth: np.ndarray, blur: "Blur") -> np.ndarray:
    """``[P]`` bool: the points (pixels ``uv [P, 2]``, depths ``depth [P]``) with no point within the blur's footprint
    (:func:`_footprint_px`: an ellipse along a streak) nearer than themselves by more than :data:`DEPTH_EDGE` (the
    farther point of such a pair is left out)."""
    from scipy.spatial import cKDTree

    keep = np.ones(len(uv), dtype=bool)
    if len(uv) < 2:
        return keep
    coords, across = _footprint_coords(uv, blur)
    pairs = cKDTree(coords).query_pairs(across, output_type="ndarray")  # [K, 2]
    if len(pairs):
        ratio = np.log(depth[pairs[:, 0]] / depth[pairs[:, 1]])  # [K] > 0: the first is the farther
        farther = np.where(ratio > 0, pairs[:, 0], pairs[:, 1])  # [K]
        keep[farther[np.abs(ratio) > np.log1p(DEPTH_EDGE)]] = False
    return keep


#: Samples added around each point on its surface's tangent plane (:func:`_tangent_samples`), at this many of the
#: blur's standard deviations from it in the frame, along the blur's two axes both ways (4 per point; none across a
#: depth edge: :func:`_samples_off_depth_edges`). A point of the model is a keypoint: the centre of a blob, where the
#: blurred image is flat and says little about the pose (a blob of about the blur's size, blurred, is steepest ~1.4 σ
#: from its centre). Session probes (castle-P30's 8 frames blurred 12 px, each aligned from its input, seeds 0 / 1 / 2,
#: before the samples' edge rule): 0.525 / 0.553 / 0.712 deg without samples; 0.552 deg at 0.5 σ (seed 0); 0.458 /
#: 0.525 / 0.723 at 1 σ; 0.417 / 0.437 / 0.503 at 2 σ; 0.456 / 0.426 at 3 σ (seeds 0 / 1). End to end with the edge
#: rule (docs/benchmarks.md, twentieth look): castle 12 px 0.597 -> 0.495 deg, the toybox's 3 px 0.193 -> 0.112 deg.
TANGENT_STEP_SIGMAS = 2.0
#: Nearest model points a point's tangent plane is fitted to (the normal: their covariance's smallest axis).
TANGENT_NEIGHBOURS = 20
#: A sample whose depth in the frame differs from its point's by more than this fraction is dropped (a plane seen
#: edge-on, or a normal the neighbours do not define).
TANGENT_MAX_DEPTH_CHANGE = 0.2


def point_normals(X: np.ndarray, rows: np.ndarray, tree: Any, k: int = TANGENT_NEIGHBOURS) -> np.ndarray:
    """``[R, 3]`` unit normals of the points ``X[rows]`` (``X [P, 3]``, world frame): the smallest principal axis of each
    one's ``k`` nearest points of ``X`` (``tree``: a ``scipy.spatial.cKDTree`` of ``X``); sign arbitrary."""
    if not len(rows):
        return np.zeros((0, 3))
    k = int(min(k, len(X)))
    _, idx = tree.query(X[rows], k=k)  # [R, k]
    near = X[np.asarray(idx).reshape(len(rows), k)]  # [R, k, 3]
    centred = near - near.mean(axis=1, keepdims=True)
    cov = np.einsum("rki,rkj->rij", centred, centred)  # [R, 3, 3]
    return np.linalg.eigh(cov)[1][:, :, 0]  # [R, 3] eigenvector of the smallest eigenvalue


def _blur_axes_px(blur: "Blur") -> tuple[np.ndarray, np.ndarray]:
    """The blur's two axes in the image (``[2, 2]`` unit rows: along its streak, across it) and its standard deviation
    along each (pixels: the Gaussian's σ, with a streak of L px adding L / sqrt(12) along it), at least half a pixel."""
    a = np.deg2rad(blur.angle_deg)
    axes = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
    sd = np.array([np.hypot(blur.sigma_px, blur.streak_px / np.sqrt(12.0)), blur.sigma_px])
    return axes, np.maximum(sd, 0.5)


def _tangent_samples(w2c: np.ndarray, focal: tuple[float, float], X: np.ndarray, normals: np.ndarray, blur: "Blur",
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Points on the tangent planes of ``X [P, 3]`` (unit ``normals [P, 3]``, world frame) whose projections in the
    frame (world-to-camera ``w2c``, focal lengths ``focal`` px) lie :data:`TANGENT_STEP_SIGMAS` blur deviations from
    the point's, along the blur's axes both ways (the pinhole model about the point: offsets of a few tens of pixels).
    Returns the samples ``[S, 3]`` and the row of ``X`` each came from ``[S]``."""
    fx, fy = focal
    R, t = w2c[:3, :3], w2c[:3, 3]
    P = X @ R.T + t  # [P, 3] camera frame
    n_cam = normals @ R.T  # [P, 3]
    axes, sd = _blur_axes_px(blur)
    samples, parents = [], []
    for axis, step in zip(axes, TANGENT_STEP_SIGMAS * sd):
        for sign in (1.0, -1.0):
            du, dv = sign * step * axis
            d = P / P[:, 2:3] + np.array([du / fx, dv / fy, 0.0])  # [P, 3] the offset pixel's ray (z = 1)
            denom = np.einsum("pi,pi->p", n_cam, d)
            depth = np.einsum("pi,pi->p", n_cam, P) / np.where(np.abs(denom) > 1e-9, denom, np.nan)  # [P] along the ray
            ok = np.isfinite(depth) & (np.abs(depth / P[:, 2] - 1.0) < TANGENT_MAX_DEPTH_CHANGE)
            Y = (d[ok] * depth[ok, None] - t) @ R  # [S', 3] world frame
            samples.append(Y)
            parents.append(np.nonzero(ok)[0])
    return np.concatenate(samples), np.concatenate(parents)


def _candidate_points(shape: tuple[int, int], project: Projector, w2c: np.ndarray, X: np.ndarray, seen_by: Sequence[set[str]],
                      neighbours: set[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of ``X [P, 3]`` a frame can use: observed by one of its ``neighbours``, in front of it and inside it (with
    :data:`POINT_MARGIN`) at its start pose ``w2c``; with their pixels ``[R, 2]`` and depths ``[R]`` there (for the
    depth-edge rules: :func:`_off_depth_edges`, :func:`_samples_off_depth_edges`)."""
    h, w = shape
    seen = np.fromiter((bool(s & neighbours) for s in seen_by), dtype=bool, count=len(seen_by))
    P = _transform(w2c, X)
    front = seen & (P[:, 2] > 1e-9)
    rows = np.nonzero(front)[0]
    if not rows.size:
        return rows, np.zeros((0, 2)), np.zeros(0)
    uv = project(P[rows])
    m = POINT_MARGIN * max(h, w)
    ok = np.isfinite(uv).all(axis=1) & (uv[:, 0] > -m) & (uv[:, 0] < w + m) & (uv[:, 1] > -m) & (uv[:, 1] < h + m)
    rows = rows[ok]
    return rows, uv[ok], P[rows, 2]


@dataclass
class HeldFrames:
    """What a frame is compared against: the held frames, the points they observe, and how to read each image.

    Attributes:
        c2w: every image's camera-to-world pose (OpenCV axes, the model's world frame).
        held: the images the tracks hold (the neighbours' pool).
        points: ``[P, 3]`` the model's 3D points (world frame); ``observed_by[p]``: the images observing point ``p``.
        image: ``name -> [H, W]`` grayscale in [0, 1] at the camera's resolution.
        projector: ``name -> (project, (fx, fy))``: the image's camera (see :data:`Projector`).
        blur_of: ``(name, frame, neighbour images) ->`` how much blurrier the frame is than its neighbours: a
            :class:`~nerf_posefix.sfm.blur_matching.Blur` or a Gaussian σ, in the frame's pixels.
    """

    c2w: Mapping[str, np.ndarray]
    held: Sequence[str]
    points: np.ndarray
    observed_by: Sequence[set[str]]
    image: Callable[[str], np.ndarray]
    projector: Callable[[str], tuple[Projector, tuple[float, float]]]
    blur_of: Callable[[str, np.ndarray, list[np.ndarray]], "Blur | float"]


def _held_points(scene: HeldFrames) -> tuple[dict[str, np.ndarray], np.ndarray, list[set[str]], Callable[[str], np.ndarray], Any]:
    """The held frames' poses, the points at least 2 of them observe ``[P', 3]`` with those observers,
    ``scene.image`` read once per name, and a ``scipy.spatial.cKDTree`` of the points (their tangent planes)."""
    from scipy.spatial import cKDTree

    held_set = set(scene.held)
    held_c2w = {n: scene.c2w[n] for n in scene.held if n in scene.c2w}
    by_held = [s & held_set for s in scene.observed_by]
    two = np.fromiter((len(s) >= 2 for s in by_held), dtype=bool, count=len(by_held))
    X = np.asarray(scene.points, dtype=np.float64).reshape(-1, 3)[two]
    seen_by = [s for s, keep in zip(by_held, two) if keep]
    loaded: dict[str, np.ndarray] = {}

    def gray(name: str) -> np.ndarray:
        if name not in loaded:
            loaded[name] = scene.image(name)
        return loaded[name]

    return held_c2w, X, seen_by, gray, cKDTree(X) if len(X) else None


def _frame_setup(name: str, start: np.ndarray, held_c2w: Mapping[str, np.ndarray], X: np.ndarray, seen_by: Sequence[set[str]],
                 gray: Callable[[str], np.ndarray], projector: Callable[[str], tuple[Projector, tuple[float, float]]],
                 blur_of: Callable[[str, np.ndarray, list[np.ndarray]], "Blur | float"], tree: Any) -> Optional[tuple]:
    """One frame's image, blur, camera, candidate points (with the neighbours observing each) and neighbours
    (``name -> (world-to-camera, image, projector)``) at its pose ``start`` (camera-to-world); None when no held frame
    faces alike. With ``tree`` (a ``cKDTree`` of ``X``; None when it is empty) and at least :data:`MIN_POINTS` candidates, the candidates are
    followed by their tangent-plane samples (:func:`_tangent_samples`; each observed by its point's neighbours): the
    floor counts the model's points, not the samples."""
    from nerf_posefix.sfm.blur_matching import Blur

    near = nearest_held(start, held_c2w)
    if not near:
        return None
    frame = gray(name)
    blur = blur_of(name, frame, [gray(m) for m in near[:3]])
    blur = blur if isinstance(blur, Blur) else Blur(sigma_px=float(blur))
    project, focal = projector(name)
    neighbours = {m: (np.linalg.inv(held_c2w[m]), gray(m), projector(m)[0]) for m in near}
    near_set = set(near)
    w2c = np.linalg.inv(start)
    everyone, uv, depth = _candidate_points(frame.shape, project, w2c, X, seen_by, near_set)
    rows = everyone[_off_depth_edges(uv, depth, blur)]
    Xf, seen_f = X[rows], [seen_by[r] & near_set for r in rows]
    if tree is not None and len(rows) >= MIN_POINTS:  # fewer: refused on the model's own points, as without samples
        samples, parent = _tangent_samples(w2c, focal, Xf, point_normals(X, rows, tree), blur)
        if len(samples):  # none across a depth edge of the points near it, those left out as behind one included
            P_s = _transform(w2c, samples)
            ok = _samples_off_depth_edges(project(P_s), P_s[:, 2], uv, depth, blur)
            samples, parent = samples[ok], parent[ok]
        Xf, seen_f = np.concatenate([Xf, samples]), seen_f + [seen_f[i] for i in parent]
    return frame, blur, project, focal, Xf, seen_f, neighbours


def direct_alignment(
    frames: Sequence[str], scene: HeldFrames, log: Optional[Callable[[str], None]] = None,
) -> tuple[dict[str, np.ndarray], list[FrameAlignment]]:
    """Align each of ``frames`` against its nearest held frames (module docstring).

    Args:
        frames: the weakly held images to align (their start: ``scene.c2w``).
        scene: the held frames, the points and the images (:class:`HeldFrames`).
        log: progress lines.

    Returns:
        ``(name -> aligned camera-to-world`` for the frames that keep their aligned pose, one
        :class:`FrameAlignment` per frame``)``.
    """
    held_c2w, X, seen_by, gray, tree = _held_points(scene)
    aligned: dict[str, np.ndarray] = {}
    records: list[FrameAlignment] = []

    for name in frames:
        start = np.asarray(scene.c2w[name], dtype=np.float64)
        setup = _frame_setup(name, start, held_c2w, X, seen_by, gray, scene.projector, scene.blur_of, tree)
        if setup is None:
            records.append(FrameAlignment(name, False, 0.0, 0, 0.0, 0.0, 0.0, float("inf"), "no held frame faces alike"))
            continue
        frame, blur, project, focal, Xf, seen_f, neighbours = setup
        pose, count, gain, stderr, reason = align_frame(frame, blur, project, focal, start, Xf, seen_f, neighbours)
        rotation = _rotation_deg(pose, start)
        centre = float(np.linalg.norm(pose[:3, 3] - start[:3, 3]))
        if not reason and rotation > MAX_MOVE_DEG:
            reason = f"moved {rotation:.1f} deg (more than {MAX_MOVE_DEG:g})"
        if not reason and not (np.isfinite(stderr) and gain > EVIDENCE_Z * stderr):
            reason = f"its residuals dropped by {gain:.3g} ± {stderr:.2g}, under {EVIDENCE_Z:g} standard errors"
        kept = not reason
        if kept:
            aligned[name] = pose
        records.append(FrameAlignment(name, kept, blur.sigma_px, count, rotation, centre, gain, stderr, reason,
                                      blur.streak_px, blur.angle_deg))
        if log is not None:
            log(f"{name}: {blur.describe()}, {count} points and tangent samples, " + (f"moved {rotation:.3f} deg, residuals down {gain:.3g} ± {stderr:.2g}"
                                                                  if kept else f"kept its pose: {reason}"))
    return aligned, records


#: The longer image side the alignment works at (images above it are reduced by an integer factor: block means).
WORK_SIDE = 1024


def align_weak_frames(
    rec: "pycolmap.Reconstruction", frames: Sequence[str], held: Sequence[str], images_dir: Path,
    log: Optional[Callable[[str], None]] = None, streaks: Optional[Mapping[str, "Blur"]] = None,
) -> tuple[dict[str, np.ndarray], list[FrameAlignment]]:
    """:func:`direct_alignment` of the registered images ``frames`` of the adjusted reconstruction ``rec`` against
    the images ``held`` (their poses and the points they observe), reading the images under ``images_dir``. A frame
    in ``streaks`` with a streak (a :class:`~nerf_posefix.sfm.blur_matching.Blur` in full-resolution pixels: the frame
    placement's choice) is aligned with that streak; the others with their Gaussian blur estimated against their
    neighbours (:func:`~nerf_posefix.sfm.blur_matching.estimate_blur_sigma`).

    Returns ``(name -> world-to-camera [4, 4]`` (OpenCV axes, ``rec``'s world frame) for the frames that keep their
    aligned pose, the per-frame records``)``."""
    images = {rec.images[i].name for i in rec.reg_image_ids()}
    frames = [n for n in frames if n in images]
    if not frames:
        return {}, []
    aligned, records = direct_alignment(frames, _held_frames(rec, held, images_dir, streaks), log=log)
    return {n: np.linalg.inv(m) for n, m in aligned.items()}, records


def check_weak_moves(
    rec: "pycolmap.Reconstruction", moved: Mapping[str, np.ndarray], held: Sequence[str], images_dir: Path,
    streaks: Optional[Mapping[str, "Blur"]] = None,
) -> list[MoveCheck]:
    """:func:`check_moves` of the registered images of ``rec`` (their poses there: the start) moved to ``moved``
    (``name -> camera-to-world [4, 4]``, OpenCV axes, ``rec``'s world frame), against the images ``held``, reading the
    images under ``images_dir``; blurs as :func:`align_weak_frames`'s."""
    images = {rec.images[i].name for i in rec.reg_image_ids()}
    moved = {n: m for n, m in moved.items() if n in images}
    if not moved:
        return []
    return check_moves(moved, _held_frames(rec, held, images_dir, streaks))


def check_adjusted_moves(
    rec: "pycolmap.Reconstruction", images_dir: Path, adjustment: Mapping[str, Any], moved: Mapping[str, np.ndarray],
) -> list[MoveCheck]:
    """:func:`check_weak_moves` on a front end's result: its adjusted model ``rec`` (its poses: the start; its
    points), the frames its tracks hold as the references (``adjustment["images"]``: neither weak nor placed: sharp), the
    streaks its placement chose on matches enough (``adjustment["placement"]``, ``blur_supported``), the images under ``images_dir``. ``moved``: ``name ->
    camera-to-world [4, 4]`` (OpenCV axes, the model's world frame). What ``posefix refine`` and the posefix pipeline
    call after their NeRF stage.

    Raises:
        OSError, ValueError, RuntimeError: an image cannot be read."""
    from nerf_posefix.sfm.blur_matching import streaks

    support = adjustment.get("images") or {}
    placement = adjustment.get("placement") if isinstance(adjustment.get("placement"), Mapping) else {}
    blurs = {f["name"]: f.get("blur") or {} for f in (placement or {}).get("frames", []) if f.get("blur_supported")}
    held = [n for n, s in support.items() if not s.get("weak") and not s.get("placed")]
    return check_weak_moves(rec, moved, held, images_dir, streaks=streaks(blurs))


def move_check_record(checks: Sequence[MoveCheck], seconds: float) -> dict[str, Any]:
    """What a move check did, JSON-ready (``report.json``'s ``move_check``, the pipeline's ``move_check.json``)."""
    return {"checked": len(checks), "undone": [c.name for c in checks if c.worse], "frames": [c.to_dict() for c in checks],
            "seconds": seconds}


def _held_frames(rec: "pycolmap.Reconstruction", held: Sequence[str], images_dir: Path,
                 streaks: Optional[Mapping[str, "Blur"]]) -> HeldFrames:
    """:class:`HeldFrames` of the registered images of ``rec`` (``held`` among them), their images under
    ``images_dir`` (reduced to :data:`WORK_SIDE`), their blurs from ``streaks`` or estimated."""
    from nerf_posefix.sfm.blur_matching import SIGMA_LEVELS, Blur, _gray, _reduce, estimate_blur_sigma

    from nerf_posefix.sfm.bundle_adjustment import reconstruction_c2w

    images = {rec.images[i].name: rec.images[i] for i in rec.reg_image_ids()}
    c2w = dict(zip(*reconstruction_c2w(rec)))
    names_by_id = {i: rec.images[i].name for i in rec.reg_image_ids()}
    xyz, observed_by = [], []
    for point in rec.points3D.values():
        xyz.append(point.xyz)
        observed_by.append({names_by_id[e.image_id] for e in point.track.elements if e.image_id in names_by_id})
    points = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)

    def factor(name: str) -> int:
        camera = rec.cameras[images[name].camera_id]
        return max(1, -(-max(int(camera.width), int(camera.height)) // WORK_SIDE))

    def image(name: str) -> np.ndarray:  # read once each: direct_alignment keeps them
        return _reduce(_gray(Path(images_dir) / name), factor(name)).astype(np.float64) / 255.0

    def projector(name: str) -> tuple[Projector, tuple[float, float]]:
        camera, f = rec.cameras[images[name].camera_id], factor(name)

        def project(cam_points: np.ndarray) -> np.ndarray:  # COLMAP's pixels (top-left centre 0.5) -> array pixels, reduced
            return np.asarray(camera.img_from_cam(np.ascontiguousarray(cam_points, dtype=np.float64)), dtype=np.float64) / f - 0.5

        return project, (float(camera.focal_length_x) / f, float(camera.focal_length_y) / f)

    def blur_of(name: str, frame: np.ndarray, neighbours: list[np.ndarray]) -> Blur:  # in the frame's reduced pixels
        streak = (streaks or {}).get(name)
        if streak is not None and streak.streak_px > 0:
            f = factor(name)
            return Blur(streak.sigma_px / f, streak.streak_px / f, streak.angle_deg)
        return Blur(sigma_px=estimate_blur_sigma(frame, neighbours, [s / factor(name) for s in SIGMA_LEVELS]))

    return HeldFrames(c2w, held, points, observed_by, image, projector, blur_of)
