"""A COLMAP model as ``ns-process-data`` writes it for nerfstudio: ``transforms.json`` + ``sparse_pc.ply``.

The same file as nerfstudio's ``colmap_utils.colmap_to_json(recon_dir, output_dir)`` (nerfstudio 1.1.5),
computed from the model in memory, batched: nerfstudio re-reads the model's files, inverts each pose with
its own ``np.linalg.inv`` and writes the point cloud as text through a formatted torch tensor per value
(at 5000 images and 325k points that is minutes; this is seconds). A test checks the two give the same
file on the bundled scene.

Conventions (nerfstudio's, converted here once)
-----------------------------------------------
* ``frames[k].transform_matrix``: camera-to-world, **OpenGL camera axes** (x right, y up, looking -z), in
  the world frame ``A · COLMAP world`` where ``A`` is the recorded ``applied_transform``: by default
  ``[[1,0,0,0],[0,0,1,0],[0,-1,0,0]]`` (nerfstudio's z-up reorientation: rows x, z, -y of COLMAP's world); a
  caller may give another (``posefix refine`` keeps a transforms.json input's own, so its NeRF stage trains in
  the frame ``ns-train`` would).
* ``frames[k]``: ``file_path`` ``images/<COLMAP image name>``, ``colmap_im_id``; frames in the model's image
  order (the order ``images.bin`` is written in).
* Intrinsics: nerfstudio's ``OPENCV`` model keys (:func:`nerf_posefix.io.transforms_json.camera_keys`), at the
  top level when the model's only camera has id 1, else per frame (nerfstudio's rule).
* ``sparse_pc.ply``: the model's points in the same world frame (``A`` applied), float32 ``x y z`` and
  ``uint8 red green blue`` per vertex, binary little-endian (nerfstudio's loader reads it with open3d; nerfstudio
  writes the same properties as text, rounded to 1e-6).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import numpy as np

from nerf_posefix.geometry.poses import OPENGL_OPENCV_FLIP, colmap_to_c2w
from nerf_posefix.io.camera_set import ImageCamera
from nerf_posefix.io.colmap import ColmapModel
from nerf_posefix.io.transforms_json import camera_keys

#: nerfstudio's ``applied_transform`` of ``colmap_to_json`` (``keep_original_world_coordinate=False``): the rows
#: x, z, -y of the COLMAP world.
NERFSTUDIO_APPLIED_TRANSFORM = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, -1.0, 0.0, 0.0]])
PLY_FILENAME = "sparse_pc.ply"


def _intrinsics(camera: Any) -> dict[str, Any]:
    return camera_keys(ImageCamera(str(camera.model), int(camera.width), int(camera.height), tuple(camera.params)))


def write_nerfstudio_transforms(
    model: ColmapModel, output_dir: str | Path, with_points: bool = True, applied_transform: Optional[np.ndarray] = None
) -> Path:
    """Write ``output_dir/transforms.json`` (and, with ``with_points`` and points in the model,
    ``output_dir/sparse_pc.ply``) as nerfstudio's ``colmap_to_json`` would from ``model`` written to disk
    (module docstring); ``applied_transform`` ``[3, 4]`` (or ``[4, 4]``): the world change ``A`` recorded and applied
    (None: nerfstudio's :data:`NERFSTUDIO_APPLIED_TRANSFORM`).

    Raises:
        InputError: a camera model nerfstudio's transforms.json cannot hold here
            (:func:`nerf_posefix.io.transforms_json.camera_keys`).

    Returns:
        The transforms.json written.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    applied = np.eye(4)
    applied[:3] = (NERFSTUDIO_APPLIED_TRANSFORM if applied_transform is None else np.asarray(applied_transform, dtype=np.float64))[:3]
    images = list(model.images.items())  # the model's image order, as images.bin is written
    single = set(model.cameras) == {1}
    out: dict[str, Any] = _intrinsics(model.cameras[1]) if single else {}
    per_camera = {} if single else {cid: _intrinsics(cam) for cid, cam in model.cameras.items()}
    if images:
        qvec = np.stack([np.asarray(im.qvec, dtype=np.float64) for _, im in images])  # [N, 4]
        tvec = np.stack([np.asarray(im.tvec, dtype=np.float64) for _, im in images])  # [N, 3]
        c2w = colmap_to_c2w(qvec, tvec) @ OPENGL_OPENCV_FLIP  # [N, 4, 4] OpenGL axes, COLMAP world
        c2w = applied @ c2w  # [N, 4, 4] nerfstudio's world
    else:
        c2w = np.zeros((0, 4, 4))
    frames = []
    for (image_id, im), pose in zip(images, c2w):
        frame: dict[str, Any] = {"file_path": Path(f"./images/{im.name}").as_posix(), "transform_matrix": pose.tolist(),
                                 "colmap_im_id": int(image_id)}
        if not single:
            frame.update(per_camera[im.camera_id])
        frames.append(frame)
    out["frames"] = frames
    out["applied_transform"] = applied[:3].tolist()
    if with_points and model.points3D:
        write_points_ply(model, output_dir / PLY_FILENAME, applied)
        out["ply_file_path"] = PLY_FILENAME
    path = output_dir / "transforms.json"
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=4)
    return path


def write_points_ply(model: ColmapModel, path: str | Path, applied_transform: Optional[np.ndarray] = None) -> Path:
    """``model``'s points, nerfstudio's world frame (``applied_transform`` ``[3, 4]`` or ``[4, 4]`` applied; None:
    :data:`NERFSTUDIO_APPLIED_TRANSFORM`), as a binary PLY (module docstring), in the model's point order."""
    applied = np.asarray(NERFSTUDIO_APPLIED_TRANSFORM if applied_transform is None else applied_transform, dtype=np.float64)[:3]
    points = list(model.points3D.values())
    xyz = np.array([p.xyz for p in points], dtype=np.float64).reshape(-1, 3)  # [P, 3] COLMAP world
    rgb = np.array([p.rgb for p in points], dtype=np.uint8).reshape(-1, 3)  # [P, 3]
    xyz = xyz @ applied[:, :3].T + applied[:, 3]
    vertex = np.empty(len(points), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    vertex["x"], vertex["y"], vertex["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    vertex["red"], vertex["green"], vertex["blue"] = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    header = (
        "ply\nformat binary_little_endian 1.0\n"
        f"element vertex {len(points)}\n"
        "property float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\n"
        "end_header\n"
    )
    path = Path(path)
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(vertex.tobytes())
    return path
