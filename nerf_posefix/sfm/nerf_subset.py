"""The images a NeRF stage trains on in a large capture: the weakly held frames and their nearest held neighbours.

The NeRF stage of ``posefix refine`` refines the frames the tracks hold weakly
(:mod:`nerf_posefix.sfm.support`) against a radiance field trained with the others, which keep the adjustment's
poses. Beyond a few hundred images the whole capture is neither needed nor affordable for that: nerfstudio caches
every training image in memory as float32 (a 1000-image capture of 640x480 peaked at 8.1 GB in ``ns-train
posefix-small``, docs/scaling.md), and one small field spread over thousands of frames renders none of them well
within the stage's budget. So above :data:`NERF_STAGE_MAX_IMAGES` images the stage trains on the weak frames and
their neighbours: round by round, each weak frame adds its next nearest held frame by camera centre among those
whose optical axis is within ``max_angle_deg`` of its own (the rule of pose-guided matching,
:func:`nerf_posefix.sfm.track_building.spatial_pairs`: cameras that look apart see different things), until the
subset holds ``max_images`` images, and at least :data:`NERF_STAGE_MIN_NEIGHBOURS` rounds (a capture with many weak
frames gets a larger subset rather than a field each weak frame sees from one neighbour). The other frames keep the
adjustment's poses, as held frames do anyway.

Conventions: ``c2w [N, 4, 4]`` camera-to-world, OpenCV axes (the optical axis is the third column), any world frame.
"""

from __future__ import annotations

import numpy as np

from nerf_posefix.sfm.sift_features import SPATIAL_MAX_ANGLE_DEG

#: Largest capture a NeRF stage trains on whole; above it, the weak frames and their nearest held neighbours.
NERF_STAGE_MAX_IMAGES = 300
#: Held neighbours every weak frame gets at least (when it has that many facing alike), whatever the subset's size.
NERF_STAGE_MIN_NEIGHBOURS = 4


def nerf_stage_images(
    c2w: np.ndarray, weak: np.ndarray, max_images: int = NERF_STAGE_MAX_IMAGES, max_angle_deg: float = SPATIAL_MAX_ANGLE_DEG,
    min_neighbours: int = NERF_STAGE_MIN_NEIGHBOURS,
) -> np.ndarray:
    """``[N]`` bool: the images the NeRF stage trains on (module docstring).

    Every image when there are at most ``max_images`` (or ``max_images <= 0``, or no weak frame). Otherwise every
    weak frame, then, in rounds, each weak frame's next nearest held frame (nearest first; weak frames in index
    order within a round) whose optical axis is within ``max_angle_deg`` of its own, until ``max_images`` are
    chosen or no weak frame has a neighbour left; the first ``min_neighbours`` rounds are always complete (a field
    needs held frames around each weak frame to refine it against), so many weak frames make a larger subset.

    Args:
        c2w: ``[N, 4, 4]`` camera-to-world poses (OpenCV axes).
        weak: ``[N]`` bool, the weakly held frames.
        max_images: the subset's size (see above).
        max_angle_deg: largest angle between a weak frame's optical axis and its neighbours'.
        min_neighbours: rounds that are always complete.
    """
    from scipy.spatial import cKDTree

    weak = np.asarray(weak, dtype=bool).reshape(-1)
    n = weak.size
    chosen = np.ones(n, dtype=bool)
    held = np.flatnonzero(~weak)
    if max_images <= 0 or n <= max_images or not weak.any() or held.size == 0:
        return chosen
    centres = np.asarray(c2w, dtype=np.float64)[:, :3, 3]  # [N, 3]
    axes = np.asarray(c2w, dtype=np.float64)[:, :3, 2]
    axes = axes / np.linalg.norm(axes, axis=1, keepdims=True)  # [N, 3]
    weak_rows = np.flatnonzero(weak)
    rounds = max(min_neighbours, 1, -(-(max_images - weak_rows.size) // weak_rows.size))  # neighbours each weak frame may add
    k = int(min(held.size, 4 * rounds + 4))
    _, index = cKDTree(centres[held]).query(centres[weak_rows], k=k)  # [W, k] rows into held, nearest first
    index = np.asarray(index).reshape(weak_rows.size, k)
    cos_max = np.cos(np.deg2rad(max_angle_deg))
    neighbours = [held[row[axes[held[row]] @ axes[w] >= cos_max]] for w, row in zip(weak_rows, index)]  # per weak frame
    chosen = weak.copy()
    count = int(chosen.sum())
    for r in range(max(len(x) for x in neighbours)):
        for rows in neighbours:
            if count >= max_images and r >= min_neighbours:  # the first min_neighbours rounds are always complete
                return chosen
            if r < len(rows) and not chosen[rows[r]]:
                chosen[rows[r]] = True
                count += 1
    return chosen
