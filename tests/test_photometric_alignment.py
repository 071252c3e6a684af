"""Weak frames aligned by their intensities against held neighbours (nerf_posefix/sfm/photometric_alignment.py), on a
textured plane rendered exactly: a frame 1.5 deg off comes back, also through grain as strong as the texture, and
through a motion streak when the streak is modelled; a frame with nothing of the scene in it, or already right, keeps
its pose."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter, map_coordinates
from scipy.spatial.transform import Rotation

from nerf_posefix.sfm.blur_matching import Blur, estimate_blur_sigma, smear_streak
from nerf_posefix.sfm.photometric_alignment import EVIDENCE_Z, HeldFrames, direct_alignment, nearest_held

F, W, H = 110.0, 128, 96
K = np.array([[F, 0.0, (W - 1) / 2], [0.0, F, (H - 1) / 2], [0.0, 0.0, 1.0]])  # array pixel centres
PLANE_Z, EXTENT, TEXELS = 6.0, 6.0, 300  # the textured plane z = 6, x and y in [-6, 6]


def _texture() -> np.ndarray:
    rng = np.random.default_rng(0)
    return gaussian_filter(rng.normal(size=(TEXELS, TEXELS)), 2.0)


def _c2w(yaw_deg: float, x: float) -> np.ndarray:
    """A camera at (x, 0, 0) looking along +z (OpenCV axes), turned by ``yaw_deg`` about y."""
    m = np.eye(4)
    m[:3, :3] = Rotation.from_euler("y", yaw_deg, degrees=True).as_matrix()
    m[:3, 3] = [x, 0.0, 0.0]
    return m


def _render(c2w: np.ndarray, texture: np.ndarray) -> np.ndarray:
    """``[H, W]`` in [0, 1]: the plane's texture seen by the camera (exact ray-plane intersection)."""
    v, u = np.mgrid[:H, :W].astype(np.float64)
    rays = np.stack([(u - K[0, 2]) / F, (v - K[1, 2]) / F, np.ones_like(u)], -1) @ c2w[:3, :3].T  # [H, W, 3] world
    t = (PLANE_Z - c2w[2, 3]) / rays[..., 2]
    X = c2w[:3, 3] + t[..., None] * rays
    coords = (X[..., :2] + EXTENT) / (2 * EXTENT) * (TEXELS - 1)
    values = map_coordinates(texture, [coords[..., 1], coords[..., 0]], order=1, mode="reflect")
    return 0.5 + 0.4 * values / np.abs(texture).max()


def _project(cam_points: np.ndarray) -> np.ndarray:
    return cam_points[:, :2] / cam_points[:, 2:3] * F + K[:2, 2]


def _scene(frame_c2w: np.ndarray, grain: float = 0.0, frame_image: np.ndarray | None = None):  # noqa: ANN202
    texture = _texture()
    c2w = {"a": _c2w(-4.0, -1.0), "b": _c2w(4.0, 1.0), "c": _c2w(0.0, 0.5), "weak": frame_c2w}
    truth = _c2w(1.0, 0.2)
    images = {n: _render(m, texture) for n, m in c2w.items() if n != "weak"}
    image = _render(truth, texture) if frame_image is None else frame_image
    images["weak"] = image + np.random.default_rng(1).normal(0.0, grain, image.shape)
    g = np.linspace(-4.0, 4.0, 81)
    gx, gy = np.meshgrid(g, g)
    points = np.stack([gx.ravel(), gy.ravel(), np.full(gx.size, PLANE_Z)], -1)  # [P, 3]
    observed_by = [{"a", "b", "c"} for _ in range(len(points))]
    return c2w, truth, images, points, observed_by


def _rotation_error_deg(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.degrees(Rotation.from_matrix(a[:3, :3] @ b[:3, :3].T).magnitude()))


def _run(c2w, images, points, observed_by, blur: Blur | float = 0.0):  # noqa: ANN001, ANN202
    return direct_alignment(["weak"], HeldFrames(c2w, ["a", "b", "c"], points, observed_by, images.__getitem__,
                                                 lambda name: (_project, (F, F)), lambda name, frame, neighbours: blur))


def _perturbed(truth: np.ndarray) -> np.ndarray:
    start = truth.copy()
    start[:3, :3] = Rotation.from_rotvec(np.deg2rad(1.5) * np.array([0.6, -0.8, 0.0])).as_matrix() @ truth[:3, :3]
    start[:3, 3] += [0.1, -0.08, 0.05]
    return start


@pytest.mark.parametrize("grain", [0.0, 0.1])
def test_a_frame_off_by_degrees_comes_back_also_through_grain(grain: float) -> None:
    truth = _c2w(1.0, 0.2)
    start = _perturbed(truth)
    c2w, truth, images, points, observed_by = _scene(start, grain=grain)
    assert _rotation_error_deg(start, truth) > 1.4
    aligned, (record,) = _run(c2w, images, points, observed_by)
    assert record.kept and "weak" in aligned, record
    # from 1.5 deg / 0.14: 10x (15 px of 128 to ~1) without grain, 3x with grain of σ the texture's own contrast
    assert _rotation_error_deg(aligned["weak"], truth) < (0.15 if grain == 0 else 0.5)
    assert np.linalg.norm(aligned["weak"][:3, 3] - truth[:3, 3]) < (0.02 if grain == 0 else 0.05)
    assert record.gain > EVIDENCE_Z * record.gain_stderr and record.points >= 100


def test_a_frame_without_the_scene_or_already_right_keeps_its_pose() -> None:
    truth = _c2w(1.0, 0.2)
    start = _perturbed(truth)
    noise = 0.5 + 0.2 * np.random.default_rng(2).normal(size=(H, W))  # nothing of the plane in it
    c2w, _, images, points, observed_by = _scene(start, frame_image=noise)
    aligned, (record,) = _run(c2w, images, points, observed_by)
    assert not record.kept and aligned == {} and record.gain < EVIDENCE_Z * record.gain_stderr, record

    c2w, truth, images, points, observed_by = _scene(truth.copy())
    aligned, (record,) = _run(c2w, images, points, observed_by)
    assert _rotation_error_deg(aligned.get("weak", truth), truth) < 0.05  # kept where it is, or moved by next to nothing


def test_too_few_points_or_no_neighbour_facing_alike_keeps_the_pose() -> None:
    truth = _c2w(1.0, 0.2)
    start = _perturbed(truth)
    c2w, _, images, points, observed_by = _scene(start)
    aligned, (record,) = _run(c2w, images, points[:50], observed_by[:50])
    assert not record.kept and "fewer than" in record.reason
    centre = np.argsort(np.abs(points[:, 0] - 0.5) + np.abs(points[:, 1]))[:60]  # 60 points inside the frame: 300 with samples
    aligned, (record,) = _run(c2w, images, points[centre], [observed_by[i] for i in centre])
    assert not record.kept and record.reason.startswith("60 points seen by its neighbours (fewer than"), record.reason
    away = {**c2w, "weak": _c2w(180.0, 0.0)}  # facing the other way: no neighbour within the facing rule
    assert nearest_held(away["weak"], {n: away[n] for n in "abc"}) == []
    aligned, (record,) = _run(away, images, points, observed_by)
    assert not record.kept and record.reason == "no held frame faces alike"


def test_a_streaked_frame_comes_back_with_its_streak_modelled() -> None:
    """A frame smeared by a 16 px streak (an eighth of its width) at 120 deg: aligned against its sharp neighbours
    smeared alike, it comes back 3x closer than with the Gaussian the blur estimate finds for it."""
    truth = _c2w(1.0, 0.2)
    start = _perturbed(truth)
    streaked = smear_streak(_render(truth, _texture()), 16.0, np.deg2rad(120.0))
    c2w, truth, images, points, observed_by = _scene(start, frame_image=streaked)
    sigma = estimate_blur_sigma(images["weak"], [images[n] for n in "abc"])
    assert sigma > 1.0  # the estimate sees a blur, as a Gaussian
    aligned_g, (record_g,) = _run(c2w, images, points, observed_by, blur=sigma)
    aligned_s, (record_s,) = _run(c2w, images, points, observed_by, blur=Blur(0.0, 16.0, 120.0))
    assert record_s.kept and (record_s.streak_px, record_s.angle_deg, record_s.sigma_px) == (16.0, 120.0, 0.0)
    error_g = _rotation_error_deg(aligned_g.get("weak", start), truth)
    error_s = _rotation_error_deg(aligned_s["weak"], truth)
    assert error_s < 0.2 and error_s < 0.5 * error_g, (error_s, error_g)


def test_the_evidence_counts_correlated_points_once() -> None:
    """Points that share their pixels (within a blur of each other) are one piece of evidence: four copies of each
    point in one cell give the standard error of the points themselves, where the per-point one would halve it."""
    from nerf_posefix.sfm.photometric_alignment import paired_evidence

    rng = np.random.default_rng(0)
    before, after = rng.normal(1.0, 0.5, 400), rng.normal(1.0, 0.5, 400)
    gain, stderr = paired_evidence(before, after)
    copies = np.repeat(np.arange(400), 4)
    gain_4, stderr_4 = paired_evidence(before[copies], after[copies])
    gain_c, stderr_c = paired_evidence(before[copies], after[copies], cells=np.stack([copies, np.zeros_like(copies)], 1))
    assert gain_4 == pytest.approx(gain) and gain_c == pytest.approx(gain)
    assert stderr_4 == pytest.approx(stderr / 2, rel=0.01)  # the per-point error counts each copy as new evidence
    assert stderr_c == pytest.approx(stderr, rel=0.01)


FG_Z, FG_HALF = 3.0, 1.5  # a textured square occluder at half the plane's depth, x and y in [-1.5, 1.5]


def _render_with_occluder(c2w: np.ndarray, texture: np.ndarray, front: np.ndarray) -> np.ndarray:
    """``[H, W]`` in [0, 1]: the plane seen by the camera, with the brighter square in front of it (exact
    ray-plane intersections; the square hides the plane behind it)."""
    v, u = np.mgrid[:H, :W].astype(np.float64)
    rays = np.stack([(u - K[0, 2]) / F, (v - K[1, 2]) / F, np.ones_like(u)], -1) @ c2w[:3, :3].T  # [H, W, 3] world

    def texel(z: float, tex: np.ndarray, extent: float) -> tuple[np.ndarray, np.ndarray]:
        X = c2w[:3, 3] + ((z - c2w[2, 3]) / rays[..., 2])[..., None] * rays
        coords = (X[..., :2] + extent) / (2 * extent) * (TEXELS - 1)
        return X, map_coordinates(tex, [coords[..., 1], coords[..., 0]], order=1, mode="reflect") / np.abs(tex).max()

    _, back = texel(PLANE_Z, texture, EXTENT)
    Xf, fore = texel(FG_Z, front, FG_HALF)
    inside = (np.abs(Xf[..., 0]) <= FG_HALF) & (np.abs(Xf[..., 1]) <= FG_HALF)
    return np.where(inside, 0.75 + 0.2 * fore, 0.35 + 0.3 * back)


def test_points_at_a_depth_edge_are_left_out_where_the_blur_mixes_two_surfaces(monkeypatch: pytest.MonkeyPatch) -> None:
    """A square in front of the textured plane, the frame blurred 3 px: near the square's outline the frame's blurred
    intensity mixes the square and the plane, which parallax moves apart between the frame and its neighbours (and the
    square hides different parts of the plane in each). With every point the alignment's objective prefers a wrong
    pose and the frame ends far farther off than it started (5.7 deg from 1.5); without the plane's points behind the
    outline it comes back nearer (1.1 deg: the square's own points along it, kept, still mix in the plane; leaving
    them out too gives 0.13 deg here, but costs castle-P30 the points that tell rotation from translation)."""
    import nerf_posefix.sfm.photometric_alignment as pa

    texture, front = _texture(), gaussian_filter(np.random.default_rng(5).normal(size=(TEXELS, TEXELS)), 2.0)
    truth = _c2w(1.0, 0.2)
    start = _perturbed(truth)
    c2w = {"a": _c2w(-4.0, -1.0), "b": _c2w(4.0, 1.0), "c": _c2w(0.0, 0.5), "weak": start}
    images = {n: _render_with_occluder(m, texture, front) for n, m in c2w.items() if n != "weak"}
    images["weak"] = gaussian_filter(_render_with_occluder(truth, texture, front), 3.0)
    g = np.linspace(-4.0, 4.0, 81)
    gx, gy = np.meshgrid(g, g)
    f = np.linspace(-FG_HALF, FG_HALF, 21)
    fx, fy = np.meshgrid(f, f)
    points = np.concatenate([np.stack([gx.ravel(), gy.ravel(), np.full(gx.size, PLANE_Z)], -1),
                             np.stack([fx.ravel(), fy.ravel(), np.full(fx.size, FG_Z)], -1)])  # [P, 3]

    def hidden(name: str) -> np.ndarray:  # [P] bool: behind the square from camera ``name``
        o = c2w[name][:3, 3]
        d = points - o
        Y = o + ((FG_Z - o[2]) / d[:, 2])[:, None] * d
        return (points[:, 2] > FG_Z) & (np.abs(Y[:, 0]) <= FG_HALF) & (np.abs(Y[:, 1]) <= FG_HALF)

    seen = {n: ~hidden(n) for n in "abc"}
    observed_by = [{n for n in "abc" if seen[n][i]} for i in range(len(points))]
    errors, counts = {}, {}
    for edge in (np.inf, pa.DEPTH_EDGE):
        monkeypatch.setattr(pa, "DEPTH_EDGE", edge)
        aligned, (record,) = _run(c2w, images, points, observed_by, blur=Blur(3.0))
        errors[edge], counts[edge] = _rotation_error_deg(aligned.get("weak", start), truth), record.points
    print(errors, counts)
    start_error = _rotation_error_deg(start, truth)  # 1.5 deg
    assert errors[np.inf] > start_error  # every point: a biased objective, a frame moved away from the truth
    assert errors[pa.DEPTH_EDGE] < 0.8 * start_error and errors[pa.DEPTH_EDGE] < 0.25 * errors[np.inf]
    assert counts[pa.DEPTH_EDGE] < counts[np.inf]


def test_a_streak_mixes_along_itself_only() -> None:
    """The footprint within which a nearer point hides a farther one is the blur's: a disc for a Gaussian (3σ + 1 px),
    an ellipse along a streak (half its length along it, 1 px across): a point 10 px from a nearer one is left out
    along a 40 px streak and kept across it; the nearer one is kept either way."""
    from nerf_posefix.sfm.photometric_alignment import _off_depth_edges

    depth = np.array([5.0, 10.0])  # the second point is behind the first
    along = np.array([[50.0, 50.0], [50.0 + 10.0 * np.cos(np.deg2rad(30.0)), 50.0 + 10.0 * np.sin(np.deg2rad(30.0))]])
    across = np.array([[50.0, 50.0], [50.0 - 10.0 * np.sin(np.deg2rad(30.0)), 50.0 + 10.0 * np.cos(np.deg2rad(30.0))]])
    streak = Blur(0.0, 40.0, 30.0)
    assert _off_depth_edges(along, depth, streak).tolist() == [True, False]
    assert _off_depth_edges(across, depth, streak).tolist() == [True, True]
    assert _off_depth_edges(across, depth, Blur(3.5)).tolist() == [True, False]  # within 3σ + 1 = 11.5 px of a Gaussian
    assert _off_depth_edges(across, np.array([5.0, 5.5]), Blur(3.5)).tolist() == [True, True]  # 10 % deeper: a slope


def test_tangent_samples_lie_on_the_points_surface_at_the_blurs_steps() -> None:
    """Each point's normal is its neighbours' plane (a tilted plane, points jittered 1 % of their spacing); its 4
    samples lie on that plane and project 2 blur deviations from it along the blur's axes (a streak: along it by its
    σ and L / sqrt(12), across it by its Gaussian's σ); a plane seen edge-on gives none."""
    from scipy.spatial import cKDTree

    from nerf_posefix.sfm.photometric_alignment import TANGENT_STEP_SIGMAS, _tangent_samples, point_normals

    rng = np.random.default_rng(0)
    normal = np.array([0.3, -0.2, 1.0]) / np.linalg.norm([0.3, -0.2, 1.0])
    g = np.linspace(-2.0, 2.0, 41)
    gx, gy = np.meshgrid(g, g)
    X = np.stack([gx.ravel(), gy.ravel(), 6.0 - (0.3 * gx.ravel() - 0.2 * gy.ravel())], -1)  # normal . X = 6 / |n|
    X += rng.normal(0.0, 0.001, X.shape)
    rows = np.arange(0, len(X), 37)
    normals = point_normals(X, rows, cKDTree(X))
    assert np.all(np.abs(normals @ normal) > np.cos(np.deg2rad(1.0)))

    w2c = np.eye(4)
    for blur, steps in ((Blur(3.0), (3.0, 3.0)), (Blur(1.0, 24.0, 30.0), (np.hypot(1.0, 24.0 / np.sqrt(12.0)), 1.0))):
        samples, parent = _tangent_samples(w2c, (F, F), X[rows], normals, blur)
        assert len(samples) == 4 * len(rows) and np.bincount(parent).tolist() == [4] * len(rows)
        assert np.abs((samples - X[rows][parent]) @ normal).max() < 0.01  # on the plane (to its jitter)
        offsets = _project(samples) - _project(X[rows][parent])  # [S, 2] pixels from the point's projection
        a = np.deg2rad(blur.angle_deg)
        along = np.abs(offsets @ np.array([np.cos(a), np.sin(a)]))
        across = np.abs(offsets @ np.array([-np.sin(a), np.cos(a)]))
        np.testing.assert_allclose(np.hypot(along, across)[: 2 * len(rows)], TANGENT_STEP_SIGMAS * steps[0], rtol=0.02)
        np.testing.assert_allclose(np.hypot(along, across)[2 * len(rows):], TANGENT_STEP_SIGMAS * steps[1], rtol=0.02)
        np.testing.assert_allclose(across[: 2 * len(rows)], 0.0, atol=0.05 * steps[0])
        np.testing.assert_allclose(along[2 * len(rows):], 0.0, atol=0.05 * steps[0])

    # the plane x = 0.5 seen at a grazing 85 deg: the steps across its trace (along x) land 40 % nearer or 3x farther and
    # are dropped; the steps along its trace (y) stay at the point's depth
    grazing = np.tile(np.array([[1.0, 0.0, 0.0]]), (len(rows), 1))
    samples, parent = _tangent_samples(w2c, (F, F), np.array([[0.5, 0.0, 6.0]] * len(rows)), grazing, Blur(3.0))
    assert len(samples) == 2 * len(rows) and np.allclose(samples[:, 2], 6.0) and np.allclose(samples[:, 0], 0.5)


def test_samples_off_the_keypoints_tell_the_pose_that_the_keypoints_alone_do_not(monkeypatch: pytest.MonkeyPatch) -> None:
    """A model's points are keypoints: the texture's extrema, where the blurred image is flat. Aligned through them alone,
    a frame blurred 2 px ends ~1.9 deg from the truth from 1.5 deg off (a biased objective); with their tangent-plane
    samples, within 0.5 deg."""
    from scipy.ndimage import maximum_filter, minimum_filter

    import nerf_posefix.sfm.photometric_alignment as pa

    texture = _texture()
    iy, ix = np.nonzero((texture == maximum_filter(texture, 7)) | (texture == minimum_filter(texture, 7)))
    xy = np.stack([ix, iy], 1) / (TEXELS - 1) * 2 * EXTENT - EXTENT
    points = np.concatenate([xy, np.full((len(xy), 1), PLANE_Z)], 1)
    points = points[(np.abs(points[:, 0]) < 4.0) & (np.abs(points[:, 1]) < 4.0)]  # ~630 extrema
    truth = _c2w(1.0, 0.2)
    start = _perturbed(truth)
    c2w, truth, images, _, _ = _scene(start)
    images["weak"] = gaussian_filter(_render(truth, texture), 2.0)
    observed_by = [{"a", "b", "c"} for _ in range(len(points))]
    with_samples, (record,) = _run(c2w, images, points, observed_by, blur=Blur(2.0))
    monkeypatch.setattr(pa, "_tangent_samples", lambda w2c, focal, X, normals, blur: (np.zeros((0, 3)), np.zeros(0, dtype=np.int64)))
    keypoints_only, (alone,) = _run(c2w, images, points, observed_by, blur=Blur(2.0))
    error_with = _rotation_error_deg(with_samples.get("weak", start), truth)
    error_alone = _rotation_error_deg(keypoints_only.get("weak", start), truth)
    assert record.points > 3 * alone.points
    assert error_with < 0.5 and error_alone > 1.0 and error_alone > 3 * error_with, (error_with, error_alone)
