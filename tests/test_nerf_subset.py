"""The images a large capture's NeRF stage trains on (:mod:`nerf_posefix.sfm.nerf_subset`) and the model restricted
to them (:meth:`nerf_posefix.io.colmap.ColmapModel.subset`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nerf_posefix.io.colmap import read_colmap_model
from nerf_posefix.sfm.nerf_subset import nerf_stage_images

TINY = Path(__file__).resolve().parents[1] / "assets" / "toybox_tiny"


def _line_of_cameras(n: int) -> np.ndarray:
    """``[n, 4, 4]`` cameras at x = 0, 1, ..., n-1 looking along +z (camera-to-world, OpenCV axes)."""
    c2w = np.tile(np.eye(4), (n, 1, 1))
    c2w[:, 0, 3] = np.arange(n, dtype=np.float64)
    return c2w


def _chosen(c2w: np.ndarray, weak_rows: list[int], **kwargs) -> np.ndarray:  # noqa: ANN003
    """``[N]`` bool of :func:`nerf_stage_images` on cameras named by their row."""
    names = [f"{i:03d}" for i in range(len(c2w))]
    chosen = set(nerf_stage_images(names, c2w, [names[i] for i in weak_rows], **kwargs))
    return np.array([n in chosen for n in names])


def test_the_weak_frames_take_their_nearest_held_neighbours_in_rounds() -> None:
    c2w = _line_of_cameras(100)
    chosen = _chosen(c2w, [10, 60], max_images=8, min_neighbours=1)
    # round 1: 9 and 59 (ties: the stable order) or 11 and 61; after two rounds both sides of each, then one more
    assert chosen.sum() == 8 and chosen[[10, 60]].all()
    assert set(np.flatnonzero(chosen)) <= set(range(7, 14)) | set(range(57, 64))
    assert chosen[[9, 11, 59, 61]].all()
    four = _chosen(c2w, [10, 60], max_images=8)  # the default: 4 neighbours each at least
    assert four.sum() == 10 and set(np.flatnonzero(four)) == {8, 9, 10, 11, 12, 58, 59, 60, 61, 62}
    assert _chosen(c2w, [10, 60], max_images=100).all()  # small enough: the whole capture
    assert _chosen(c2w, [10, 60], max_images=0).all()  # 0: the whole capture
    assert _chosen(c2w, [], max_images=8).all()  # no weak frame: nothing to choose for


def test_a_neighbour_facing_away_is_skipped_and_the_first_rounds_are_complete() -> None:
    c2w = _line_of_cameras(50)
    c2w[11, :3, :3] = np.diag([-1.0, 1.0, -1.0])  # at x = 11, looking along -z: 180 deg from camera 10's axis
    chosen = _chosen(c2w, [10, 30, 40], max_images=3, min_neighbours=1)  # the weak frames alone fill it: each still gets one
    assert chosen.sum() == 6 and not chosen[11]
    assert chosen[[9, 10, 30, 40]].all()
    chosen = _chosen(c2w, [10, 30, 40], max_images=3)  # 4 each: 10's are 9, 8, 12 and 7 or 13 (a tie; 11 faces away)
    assert chosen.sum() == 15 and not chosen[11] and chosen[[8, 9, 12]].all() and chosen[7] != chosen[13]


def test_a_model_restricted_to_some_images_keeps_the_points_two_of_them_observe() -> None:
    model = read_colmap_model(TINY / "sparse" / "0")
    names = [model.images[i].name for i in model.image_ids()][:5]
    sub = model.subset(names)
    assert sorted(im.name for im in sub.images.values()) == sorted(names)
    kept_ids = set(sub.images)
    for pid, pt in model.points3D.items():
        inside = [i for i in np.asarray(pt.image_ids).tolist() if i in kept_ids]
        if len(inside) >= 2:
            assert np.asarray(sub.points3D[pid].image_ids).tolist() == inside
            np.testing.assert_array_equal(sub.points3D[pid].xyz, pt.xyz)
        else:
            assert pid not in sub.points3D
    assert sub.points3D and len(sub.points3D) < len(model.points3D)
    for image_id, im in sub.images.items():
        ids = np.asarray(im.point3D_ids)
        original = np.asarray(model.images[image_id].point3D_ids)
        np.testing.assert_array_equal(ids[ids >= 0], original[ids >= 0])
        assert set(ids[ids >= 0].tolist()) <= set(sub.points3D) and set(ids[ids < 0].tolist()) <= {-1}
        np.testing.assert_array_equal(im.qvec, model.images[image_id].qvec)
