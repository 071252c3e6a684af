"""After training, the NeRF's moves of the weakly held training cameras checked against their sharp neighbours.

``posefix refine`` tests each weakly held frame's move after its NeRF stage against the frame's nearest held
neighbours, through the adjusted model's points (:func:`nerf_posefix.sfm.photometric_alignment.check_adjusted_moves`),
and undoes a move after which the frame fits them worse by 3 standard errors (castle-P30 with grain σ 40: the stage took
frame 0008 from 0.31 deg to 1.35 deg, and its own evidence test, made with a field trained with the frame at its drifting
pose, kept the move). This module runs the same check in the posefix pipeline (``ns-train posefix``), after the run's
last iteration and its weak alignment, before the final checkpoint: a move found worse is undone in the camera
optimizer (:meth:`~nerf_posefix.plugin.camera_optimizer.HomographyCameraOptimizer.reset_corrections`: the camera goes
back to its dataset pose, the front end's), so the run renders, saves and exports the checked poses.

Frames: the optimizer holds the poses in nerfstudio's dataparser frame (camera-to-world, OpenGL axes, dataparser units);
the check works in the front end's adjusted model (camera-to-world, OpenCV axes, the model's world). The two are related
by the similarity that maps the model's cameras onto the training cameras' starting poses (both are the adjusted poses);
it is fitted on them and must map them within :data:`~nerf_posefix.plugin.front_end.FRAME_TOLERANCE` (else the check
does not run, with the reason in its record).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nerf_posefix.errors import InputError
from nerf_posefix.geometry.poses import opengl_to_opencv
from nerf_posefix.io.camera_set import CameraSet, match_image_names
from nerf_posefix.plugin.front_end import FrontEndOutcome, frame_similarity

#: The pipeline's record of the check, in the run directory.
MOVE_CHECK_FILE = "move_check.json"


def check_training_moves(
    front_end: FrontEndOutcome,
    train_names: Sequence[str],
    start_c2w: np.ndarray,
    moved_c2w: np.ndarray,
    candidates: Sequence[int],
) -> dict[str, Any]:
    """Test the moves of the training cameras ``candidates`` from ``start_c2w`` to ``moved_c2w`` (both ``[N, 3|4, 4]``
    camera-to-world, **OpenGL axes, dataparser frame**, one row per training camera named by ``train_names``) against
    their held neighbours in the front end's adjusted model (module docstring).

    Returns:
        The record (:func:`~nerf_posefix.sfm.photometric_alignment.move_check_record`: ``checked``, ``undone`` (model
        names), ``frames``, ``seconds``) with ``undone_cameras``: the training indices whose move was found worse;
        or, when the check cannot run, ``checked`` 0, no camera undone and the ``reason``.
    """
    from nerf_posefix.sfm.bundle_adjustment import read_reconstruction, reconstruction_c2w
    from nerf_posefix.sfm.photometric_alignment import check_adjusted_moves, move_check_record

    t0 = time.perf_counter()

    def not_run(reason: str) -> dict[str, Any]:
        return {"checked": 0, "undone": [], "undone_cameras": [], "reason": reason, "seconds": time.perf_counter() - t0}

    adjustment = front_end.summary.get("adjustment") or {}
    if front_end.model_dir is None or front_end.images_dir is None or not adjustment.get("images"):
        return not_run("the front end did not adjust the poses")
    if not len(candidates):
        return not_run("no weakly held training camera")
    try:
        rec = read_reconstruction(Path(front_end.model_dir))
    except (OSError, ValueError, RuntimeError, InputError) as err:
        return not_run(f"the front end's model cannot be read ({err})")
    if not len(rec.points3D):
        return not_run("the front end's model has no points")
    model = CameraSet(*reconstruction_c2w(rec), source="front end's adjusted model")  # c2w OpenCV, the model's world
    start = CameraSet(names=[str(n) for n in train_names], c2w=opengl_to_opencv(start_c2w),
                      source="training cameras")
    sim, why = frame_similarity(model, start)
    if sim is None:
        return not_run(f"the training cameras are not the front end's model's up to a similarity: {why}")
    to_model = sim.inverse()
    match = match_image_names(start.names, model.names)
    weak = set(n for n, s in adjustment["images"].items() if s.get("weak"))
    moved: dict[str, np.ndarray] = {}
    camera_of: dict[str, int] = {}
    moved_cv = opengl_to_opencv(moved_c2w)  # [N, 4, 4] dataparser frame
    for k in candidates:
        m = match[int(k)]
        if m is None or model.names[m] not in weak:
            continue
        name = model.names[m]
        moved[name] = to_model.apply(moved_cv[int(k)][None])[0]  # [4, 4] OpenCV, the model's world
        camera_of[name] = int(k)
    if not moved:
        return not_run("none of the weakly held training cameras is a weak frame of the front end's model")
    try:
        checks = check_adjusted_moves(rec, Path(front_end.images_dir), adjustment, moved)
    except (OSError, ValueError, RuntimeError, InputError) as err:  # a safeguard: the training's poses are kept
        return not_run(f"the check failed ({err}); the training's poses are kept")
    record = move_check_record(checks, time.perf_counter() - t0)
    record["undone_cameras"] = [camera_of[n] for n in record["undone"]]
    return record


def move_check_line(record: dict[str, Any]) -> str:
    """One console line for a :func:`check_training_moves` record."""
    if record.get("reason"):
        return f"the NeRF's moves of the weakly held cameras not checked: {record['reason']}"
    undone = record["undone"]
    line = f"the NeRF's moves of {record['checked']} weakly held camera(s) checked against their held neighbours in {record['seconds']:.0f} s"
    if undone:
        line += (f": {len(undone)} fit them worse by 3 standard errors and went back to the front end's pose "
                 f"({', '.join(undone[:5])}{', ...' if len(undone) > 5 else ''})")
    else:
        line += ": every move stands"
    return line
