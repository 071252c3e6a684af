"""``posefix export``: a run's refined poses written in its input's own format and world frame.

* transforms.json input: a transforms.json in the frame of the input file (its ``applied_transform``
  and ``applied_scale`` kept, file paths rewritten relative to the export directory); when the dataset has
  a COLMAP model of the same cameras beside it (``ns-process-data``'s ``colmap/sparse/0``), also that model
  with the refined poses, in the model's own world frame (``sparse/0``, as below), for COLMAP-based tools
  (3DGS trainers, MVS);
* COLMAP input: a COLMAP model ``sparse/0`` (``.bin`` and ``.txt``; world-to-camera, OpenCV axes,
  points unchanged, no ``rigs``/``frames``) and a transforms.json of it (camera-to-world,
  OpenGL axes, COLMAP world, intrinsics from nerfstudio's ``parse_colmap_camera_params``).

Intrinsics are those the run trained with: the dataset's, or the front end's where its adjustment refined a camera
(``--pipeline.front-end-intrinsics``: a principal point at COLMAP's placeholder that the tracks contradict).

Evaluation frames keep their input poses; each frame is marked ``posefix_refined``. How the refined
poses are mapped back to the input frame: :mod:`nerf_posefix.plugin.run_reader`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from nerf_posefix.io.colmap import ColmapModel
    from nerf_posefix.plugin.run_reader import RefinedInput

from nerf_posefix.io.atomic import atomic_directory, check_output_dir
from nerf_posefix.io.colmap import write_colmap_model
from nerf_posefix.io.sources import check_run_config, resolve_run_config
from nerf_posefix.io.transforms_json import FILENAME, transforms_meta, write_transforms_json


def _relative(path: Path, start: Path) -> str:
    try:
        return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()
    except ValueError:  # different drives
        return path.resolve().as_posix()


def export_run(config_path: str | os.PathLike[str], output_dir: str | os.PathLike[str], overwrite: bool = False) -> dict[str, Path]:
    """Write a run's refined poses into ``output_dir`` (see the module docstring).

    ``config_path``: the run's ``config.yml`` or a directory holding one run (as ``posefix compare``).
    Every check that needs no nerfstudio runs first (the run config, its dataset and checkpoint, the
    output path against the run directory and its dataset), so these errors come in well under a second.

    Returns:
        ``{"transforms": path}`` and, for COLMAP inputs, ``"colmap": sparse/0 directory``.

    Raises:
        InputError: an unreadable run (:func:`~nerf_posefix.io.sources.check_run_config`,
            :func:`~nerf_posefix.plugin.run_reader.load_refined_run`); ``output_dir`` is, holds or lies
            inside the run or its dataset (with or without ``overwrite``); it exists and is not a posefix
            output replaced with ``overwrite``; its parent cannot be written; a write fails (named).
    """
    config_path = resolve_run_config(config_path)  # cheap checks first: no torch / nerfstudio yet
    output_dir = Path(output_dir)
    inputs = check_run_config(config_path)
    check_output_dir(output_dir, [("run", inputs[0]), *[("dataset", p) for p in inputs[1:]]], overwrite, option="--output",
                     command="export")
    from nerf_posefix.plugin.run_reader import refined_input_poses  # lazy: nerfstudio

    return write_export(refined_input_poses(config_path), output_dir)


def _input_transforms_path(run) -> Path:  # noqa: ANN001 (RefinedRun)
    """The transforms.json the run was given (not the front end's adjusted copy it read)."""
    data = getattr(run.config.pipeline.datamanager, "data", None) or run.config.pipeline.datamanager.dataparser.data
    data = Path(data)
    return data if data.suffix == ".json" else data / FILENAME


def _refined_model_of_transforms_run(refined: "RefinedInput") -> tuple[Optional["ColmapModel"], str]:
    """The COLMAP model beside a run's transforms.json with the run's refined poses mapped into the model's
    world (by the similarity relating the model's cameras to the transforms.json's input poses, checked
    exact), or None and why not."""
    from nerf_posefix.io.camera_set import CameraSet, match_image_names
    from nerf_posefix.io.colmap import read_colmap_model
    from nerf_posefix.io.transforms_json import read_transforms_json
    from nerf_posefix.plugin.front_end import frame_similarity

    info = refined.run.info
    assert info.colmap_dir is not None and info.transforms_path is not None
    model = read_colmap_model(info.colmap_dir)
    model_cams = model.to_camera_set()  # image-id order, c2w OpenCV, the model's world
    json_in = read_transforms_json(info.transforms_path)  # the run's input poses, same conventions as refined.cameras
    sim, why = frame_similarity(model_cams, json_in)
    if sim is None:
        return None, f"the COLMAP model {info.colmap_dir}: {why}"
    back = sim.inverse()
    match = match_image_names(refined.cameras.names, model_cams.names)
    c2w = model_cams.c2w.copy()
    for j, m in enumerate(match):
        if m is not None:
            c2w[m] = back.apply(refined.cameras.c2w[j : j + 1])[0]
    return model.with_poses(CameraSet(names=model_cams.names, c2w=c2w, source=str(refined.run.config_path))), "of the dataset"


def write_export(refined: "RefinedInput", output_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write the refined poses of a run already read (:func:`~nerf_posefix.plugin.run_reader.refined_input_poses`)
    into ``output_dir`` (replaced if it exists; see the module docstring)."""
    output_dir = Path(output_dir)
    run = refined.run
    provenance = {"run": str(run.config_path), "checkpoint": str(run.checkpoint), "step": run.step}
    marks = [{"posefix_refined": bool(r)} for r in refined.refined]
    written: dict[str, Path] = {}
    with atomic_directory(output_dir, command="export") as tmp:
        if refined.kind == "nerfstudio":
            meta, data_dir = refined.meta, run.info.data_dir
            assert meta is not None and refined.json_c2w is not None
            out = dict(meta)
            frames = []
            for k, frame in enumerate(meta["frames"]):
                frame = {**frame, "transform_matrix": refined.json_c2w[k].tolist(), **marks[k]}
                for key in ("file_path", "mask_path", "depth_file_path"):
                    if key in frame:
                        frame[key] = _relative(data_dir / frame[key], output_dir)
                frames.append(frame)
            out["frames"] = frames
            if "ply_file_path" in out:
                out["ply_file_path"] = _relative(data_dir / out["ply_file_path"], output_dir)
            source = _input_transforms_path(run)
            out["posefix"] = {**provenance, "frame": f"the world frame of {source}"}
            if run.info.colmap_dir is not None:
                model, note = _refined_model_of_transforms_run(refined)
                if model is not None:
                    write_colmap_model(model, tmp / "sparse" / "0", formats=("bin", "txt"))
                    written["colmap"] = output_dir / "sparse" / "0"
                    out["posefix"]["colmap_model"] = f"sparse/0: the COLMAP model {note} with the refined poses, in its own world frame"
                else:
                    out["posefix"]["colmap_model"] = f"not written: {note}"
        else:
            from nerfstudio.process_data.colmap_utils import parse_colmap_camera_params

            model, cams = refined.model, refined.cameras
            assert model is not None
            write_colmap_model(model.with_poses(cams), tmp / "sparse" / "0", formats=("bin", "txt"))
            written["colmap"] = output_dir / "sparse" / "0"
            images = [model.images[i] for i in model.image_ids()]
            out = transforms_meta(
                [_relative(run.info.images_dir / im.name, output_dir) for im in images],
                cams.c2w,
                frame_extra=[
                    {"colmap_im_id": int(im.id), **parse_colmap_camera_params(model.cameras[im.camera_id]), **marks[k]}
                    for k, im in enumerate(images)
                ],
            )
            del out["applied_transform"]  # the COLMAP world as it is (nerfstudio reads no implicit transform here)
            camera_models = {f["camera_model"] for f in out["frames"]}
            if len(camera_models) == 1:
                out = {"camera_model": out["frames"][0]["camera_model"], **out}
            out["posefix"] = {**provenance, "frame": f"the COLMAP world frame of {model.path} (OpenGL camera axes)"}
        write_transforms_json(out, tmp / FILENAME)
    written["transforms"] = output_dir / FILENAME
    return written

