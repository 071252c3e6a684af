"""The images a NeRF stage trains on in a large capture: the weakly held frames and their nearest held neighbours.

The NeRF stage of ``posefix refine`` refines the frames the tracks hold weakly
(:mod:`nerf_posefix.sfm.support`) against a radiance field trained with the others, which keep the adjustment's
poses. Beyond a few hundred images the whole capture is neither needed nor affordable for that: nerfstudio caches
every training image in memory as float32 (a 1000-image capture of 640x480 peaked at 8.1 GB in ``ns-train
posefix-small``, docs/scaling.md), and one small field spread over thousands of frames renders none of them well
within the stage's budget. So above :data:`NERF_STAGE_MAX_IMAGES` images the stage trains on the weak frames and
their neighbours: round by round, each weak frame adds its next nearest held frame by camera centre among those
whose optical axis is within 75 degrees of its own (all of them when none is: the partners blur matching pairs a
blurred frame with, :func:`nerf_posefix.sfm.blur_matching.nearest_partners`), until the
subset holds ``max_images`` images, and at least :data:`NERF_STAGE_MIN_NEIGHBOURS` rounds (a capture with many weak
frames gets a larger subset rather than a field each weak frame sees from one neighbour). The other frames keep the
adjustment's poses, as held frames do anyway.

Conventions: ``c2w [N, 4, 4]`` camera-to-world, OpenCV axes (the optical axis is the third column), any world frame.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nerf_posefix.sfm.blur_matching import nearest_partners

#: Largest capture a NeRF stage trains on whole; above it, the weak frames and their nearest held neighbours.
NERF_STAGE_MAX_IMAGES = 300
#: Held neighbours every weak frame gets at least (when the capture has that many), whatever the subset's size.
NERF_STAGE_MIN_NEIGHBOURS = 4


def nerf_stage_images(
    names: Sequence[str], c2w: np.ndarray, weak: Sequence[str], max_images: int = NERF_STAGE_MAX_IMAGES,
    min_neighbours: int = NERF_STAGE_MIN_NEIGHBOURS,
) -> list[str]:
    """The images the NeRF stage trains on (module docstring), in ``names`` order.

    Every image when there are at most ``max_images`` (or ``max_images <= 0``, or no weak frame, or no held one).
    Otherwise every weak frame, then, in rounds, each weak frame's next nearest held frame
    (:func:`~nerf_posefix.sfm.blur_matching.nearest_partners`; weak frames in ``weak``'s order within a round),
    until ``max_images`` are chosen or no weak frame has a neighbour left; the first ``min_neighbours`` rounds are
    always complete (a field needs held frames around each weak frame to refine it against), so many weak frames
    make a larger subset.

    Args:
        names: the images, ``c2w [N, 4, 4]`` their camera-to-world poses (OpenCV axes) in that order.
        weak: the weakly held frames (names of ``names``).
        max_images: the subset's size (see above).
        min_neighbours: rounds that are always complete.
    """
    present = set(names)
    weak = [n for n in weak if n in present]
    if max_images <= 0 or len(names) <= max_images or not weak or len(weak) == len(names):
        return list(names)
    rounds = max(min_neighbours, 1, -(-(max_images - len(weak)) // len(weak)))  # neighbours each weak frame may add
    # per weak frame: held frames, nearest first; more than the rounds, as weak frames may share neighbours
    partners = nearest_partners(names, weak, c2w, count=4 * rounds + 4)
    chosen = set(weak)
    for r in range(max(len(p) for p in partners.values())):
        for name in weak:
            if len(chosen) >= max_images and r >= min_neighbours:  # the first min_neighbours rounds are always complete
                return [n for n in names if n in chosen]
            if r < len(partners[name]):
                chosen.add(partners[name][r])
    return [n for n in names if n in chosen]
