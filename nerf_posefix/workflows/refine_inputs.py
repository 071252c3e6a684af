"""The input of ``posefix refine``: a COLMAP model checked against its images, and the training dataset
made from it (nothing is written before the checks pass).

Conventions: the model is read as COLMAP writes it (world-to-camera ``qvec``/``tvec``, OpenCV camera
axes, COLMAP world frame); the training dataset is nerfstudio's ``colmap_to_json`` conversion of it
(camera-to-world, OpenGL axes, ``applied_transform`` recorded), exactly as ``ns-process-data`` makes it.

Images
------
Every image is decoded in full before anything is written (a truncated or corrupt file is one error
naming it), and training gets **one channel layout** for all images, since nerfstudio batches them
together (an RGBA image among RGB ones, or a two-channel grayscale+alpha image, crashes it):

* no image has a transparent pixel: every image is trained on as 8-bit **RGB**; grayscale (``L``, ``1``),
  palette (``P``) and RGBA/LA images whose alpha is 255 everywhere are converted (losslessly);
* some image has a transparent pixel (alpha < 255): every image is trained on as **RGBA** (nerfstudio
  then blends the transparent pixels with its background, as for any RGBA dataset); images without an
  alpha channel get an opaque one.

Converted images are written as PNG copies in the work directory (the inputs are never changed), and
the conversion is reported in one line (and in ``ValidatedInput.converted``). Other pixel formats
(16-bit, float, CMYK, ...) are refused with one line naming the image and its format.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from unittest import mock
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

import numpy as np

from nerf_posefix.errors import InputError
from nerf_posefix.io.colmap import MODEL_FILES, ColmapModel, find_colmap_model_dir, read_colmap_model, write_colmap_model

#: COLMAP camera models ``posefix refine`` accepts (those nerfstudio's ``colmap_to_json`` maps to a
#: perspective ``OPENCV`` camera).
REFINE_CAMERA_MODELS: tuple[str, ...] = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV")
#: Fewest images a model must have.
MIN_IMAGES = 3


@dataclass
class ValidatedInput:
    """A COLMAP model checked against its images.

    Attributes:
        model: the model (world-to-camera poses, OpenCV axes, COLMAP world frame).
        model_dir: the directory it was read from; ``ext``: ``".bin"`` or ``".txt"``.
        images_dir: the image directory (absolute).
        image_paths: ``{image name: absolute path}``.
        flat_names: ``{image name: file name in the work directory}`` (no directories).
        channels: ``"RGB"`` or ``"RGBA"``: the one layout training gets (see the module docstring).
        converted: ``{image name: what was converted}`` for the images trained on from a converted copy.
    """

    model: ColmapModel
    model_dir: Path
    ext: str
    images_dir: Path
    image_paths: dict[str, Path]
    flat_names: dict[str, str]
    channels: str = "RGB"
    converted: dict[str, str] = field(default_factory=dict)

    def fingerprint(self) -> str:
        """A hash of the cameras and image poses (to recognise the input of a work directory)."""
        h = hashlib.sha256()
        for cam_id in sorted(self.model.cameras):
            cam = self.model.cameras[cam_id]
            h.update(repr((cam_id, cam.model, int(cam.width), int(cam.height), np.asarray(cam.params).tolist())).encode())
        for image_id in self.model.image_ids():
            im = self.model.images[image_id]
            h.update(repr((image_id, im.name, im.camera_id, np.asarray(im.qvec).tolist(), np.asarray(im.tvec).tolist())).encode())
        h.update(str(len(self.model.points3D)).encode())
        return h.hexdigest()


def _flat_names(names: list[str]) -> dict[str, str]:
    """Work-directory file names: the image names, with directory separators replaced by ``__`` (or
    numbered when that is ambiguous)."""
    if not any("/" in n or "\\" in n for n in names):
        return {n: n for n in names}
    flat = {n: n.replace("\\", "/").strip("/").replace("/", "__") for n in names}
    if len(set(flat.values())) == len(names):
        return flat
    return {n: f"{i:06d}_{Path(n).name}" for i, n in enumerate(names)}


def _png_names(flat: dict[str, str], converted: set[str]) -> dict[str, str]:
    """``flat`` with ``.png`` appended to the converted images not already named ``*.png`` (their copies
    are PNG files), keeping every name unique."""
    out = {n: (f + ".png" if n in converted and not f.lower().endswith(".png") else f) for n, f in flat.items()}
    if len(set(out.values())) == len(out):
        return out
    return {n: (f"{i:06d}_{f}" if n in converted else f) for i, (n, f) in enumerate(out.items())}


#: PIL modes trained on after a lossless conversion, and how they are described.
_GRAY_MODES = {"L": "grayscale", "1": "1-bit", "P": "palette"}
_ALPHA_MODES = {"RGBA": "RGBA", "LA": "grayscale + alpha", "PA": "palette + alpha", "RGBa": "RGBA", "La": "grayscale + alpha"}
_MODE_NAMES = {"I;16": "16-bit grayscale", "I;16B": "16-bit grayscale", "I;16L": "16-bit grayscale", "I": "32-bit integer",
               "F": "32-bit float", "CMYK": "CMYK", "YCbCr": "YCbCr", "LAB": "Lab", "HSV": "HSV"}


@dataclass
class _ImageInfo:
    width: int
    height: int
    mode: str
    transparent: bool


def _inspect_image(path: Path) -> _ImageInfo:
    """Decode ``path`` in full; its size, PIL mode and whether any pixel is transparent.

    Raises:
        InputError: the file cannot be decoded (truncated, corrupt, not an image) or has a pixel format
            other than 8-bit RGB(A), grayscale(+alpha) or palette.
    """
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()  # decodes every pixel: a truncated file fails here
            mode = img.mode
            if mode not in ("RGB",) and mode not in _GRAY_MODES and mode not in _ALPHA_MODES:
                what = _MODE_NAMES.get(mode, f"PIL mode {mode}")
                raise InputError(
                    f"{path}: {what} pixels; posefix refine trains on 8-bit RGB, RGBA, grayscale or palette images: "
                    "convert it (e.g. to an 8-bit RGB PNG)"
                )
            transparent = False
            if mode in _ALPHA_MODES:
                transparent = img.getchannel("A").getextrema()[0] < 255
            elif mode == "P" and "transparency" in img.info:
                transparent = img.convert("RGBA").getchannel("A").getextrema()[0] < 255
            return _ImageInfo(int(img.width), int(img.height), mode, bool(transparent))
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 (PIL raises OSError, SyntaxError, ValueError, struct.error, ...)
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"{path}: cannot decode the image ({reason})") from None


def _inspect_all(paths: list[Path]) -> list[Any]:
    """:func:`_inspect_image` of every path (threads: PIL decodes without the GIL); an entry is the
    info or the InputError of that image."""

    def one(path: Path) -> Any:
        try:
            return _inspect_image(path)
        except InputError as err:
            return err

    workers = max(1, min(8, os.cpu_count() or 1, len(paths)))
    if workers == 1:
        return [one(p) for p in paths]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, paths))


def _describe_conversion(info: _ImageInfo, channels: str) -> str:
    if info.mode in _GRAY_MODES:
        return f"{_GRAY_MODES[info.mode]} -> {channels}"
    if info.mode in _ALPHA_MODES:
        return f"{_ALPHA_MODES[info.mode]} with opaque alpha -> RGB" if channels == "RGB" else f"{_ALPHA_MODES[info.mode]} -> RGBA"
    return f"{info.mode} -> {channels} (opaque alpha added)"


def _print_to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def validate_inputs(colmap_model: Path, images: Path, log: Optional[Callable[[str], None]] = None) -> ValidatedInput:
    """Read the model and check it against the images on disk (see the module docstring). Writes nothing.

    Args:
        log: receives the one line saying which images are converted for training (default: stderr).

    Raises:
        InputError: naming the offending file.
    """
    model, model_dir, ext = read_refine_model(colmap_model)
    return validate_model(model, model_dir, ext, images, log=log)


def read_refine_model(colmap_model: Path) -> tuple[ColmapModel, Path, str]:
    """Read a COLMAP model ``refine`` can train on: ``(model, model directory, ".bin" | ".txt")``.

    Raises:
        InputError: naming the file: one of the model's files missing, unreadable, truncated, duplicate
            names, a camera model outside :data:`REFINE_CAMERA_MODELS`.
    """
    colmap_model = Path(colmap_model)
    for ext in (".bin", ".txt"):  # a model directory missing one of its files: name that file
        present = [k for k in MODEL_FILES if (colmap_model / f"{k}{ext}").is_file()]
        if present and len(present) < len(MODEL_FILES) and find_colmap_model_dir(colmap_model) in (None, (colmap_model, ext)):
            missing = next(k for k in MODEL_FILES if k not in present)
            raise InputError(f"{colmap_model / f'{missing}{ext}'}: missing COLMAP {missing} file")
    model = read_colmap_model(colmap_model, supported=REFINE_CAMERA_MODELS)
    found = find_colmap_model_dir(colmap_model)
    assert found is not None
    return model, found[0], found[1]


def validate_model(
    model: ColmapModel, model_dir: Path, ext: str, images: Path, log: Optional[Callable[[str], None]] = None,
    require_tracks: bool = True, source: Optional[Path] = None,
) -> ValidatedInput:
    """Check ``model`` (read from ``model_dir``, files ``*{ext}``; or built in memory from ``source``, a pose
    file) against the images on disk: enough images, supported cameras, every image present, decodable and
    of its camera's size; with ``require_tracks`` the model must have points observed by its images.

    Raises:
        InputError: naming the offending file.
    """
    log = _print_to_stderr if log is None else log
    images = Path(images)
    cameras_file = source or model_dir / f"cameras{ext}"
    images_file = source or model_dir / f"images{ext}"
    if not images.is_dir():
        raise InputError(f"{images}: no such image directory")
    if len(model.images) < MIN_IMAGES:
        raise InputError(f"{images_file}: the model has {len(model.images)} images; refining needs at least {MIN_IMAGES}")
    used = sorted({im.camera_id for im in model.images.values()})
    for cam_id in used:
        cam = model.cameras[cam_id]
        if cam.model not in REFINE_CAMERA_MODELS:
            raise InputError(
                f"{cameras_file}: camera {cam_id} uses the camera model {cam.model}, which posefix refine does not "
                f"support (supported: {', '.join(REFINE_CAMERA_MODELS)})"
            )
    if require_tracks:
        if not model.points3D:
            raise InputError(
                f"{model_dir / f'points3D{ext}'}: the model has no 3D points; posefix refine needs the sparse points "
                "(depth bounds of the homography prior, nerfstudio's conversion)"
            )
        _check_tracks(model, model_dir / f"images{ext}")
    images_dir = images.resolve()
    paths: dict[str, Path] = {}
    for image_id in model.image_ids():  # cheap checks first: every file is there
        im = model.images[image_id]
        path = images_dir / im.name
        if not path.is_file():
            raise InputError(f"{images / im.name}: image file not found (image {image_id} {im.name!r} of {images_file})")
        paths[im.name] = path
    names = [model.images[i].name for i in model.image_ids()]
    infos = dict(zip(names, _inspect_all([paths[n] for n in names])))
    for image_id in model.image_ids():
        im = model.images[image_id]
        info = infos[im.name]
        if isinstance(info, InputError):
            raise InputError(str(info).replace(str(images_dir / im.name), str(images / im.name), 1))
        cam = model.cameras[im.camera_id]
        if (info.width, info.height) != (int(cam.width), int(cam.height)):
            raise InputError(
                f"{images / im.name}: the image is {info.width}x{info.height} pixels but its camera {cam.id} in {cameras_file} "
                f"is {cam.width}x{cam.height}"
            )
    channels = "RGBA" if any(info.transparent for info in infos.values()) else "RGB"
    converted = {n: _describe_conversion(info, channels) for n, info in infos.items() if info.mode != channels}
    if converted:
        listed = ", ".join(f"{n} ({what})" for n, what in list(converted.items())[:5])
        more = f", ... ({len(converted) - 5} more)" if len(converted) > 5 else ""
        why = "some images have transparent pixels" if channels == "RGBA" else "one channel layout for all images"
        log(
            f"posefix refine: {len(converted)} of {len(names)} images are trained on as {channels} copies ({why}; "
            f"the input files are not changed): {listed}{more}"
        )
    flat = _png_names(_flat_names(names), set(converted))
    return ValidatedInput(model, model_dir, ext, images_dir, paths, flat, channels, converted)


def _training_image(path: Path, channels: str) -> Any:
    """The image at ``path`` as a PIL image in the ``channels`` layout (``"RGB"``: only used when no image
    has a transparent pixel, so no alpha is lost; ``"RGBA"``: PIL's conversion, opaque alpha for images
    without one, a palette's transparency as alpha)."""
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        return img.convert(channels)


# ---------------------------------------------------------------------------------------------
# work directory


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.symlink(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def colmap_to_transforms(recon_dir: Path, output_dir: Path, has_points: bool = True) -> Path:
    """nerfstudio's ``colmap_to_json`` (as ``ns-process-data``): ``output_dir/transforms.json`` and, when the
    model has points, ``sparse_pc.ply``. Without points (tracks could not be built) nerfstudio's conversion
    fails on the empty point cloud: the same file is written without the point cloud."""
    from nerfstudio.process_data import colmap_utils

    with contextlib.redirect_stdout(io.StringIO()):  # colmap_to_json prints the cameras of multi-camera models
        if has_points:
            colmap_utils.colmap_to_json(recon_dir=recon_dir, output_dir=output_dir)
            return output_dir / "transforms.json"
        with mock.patch.object(colmap_utils, "create_ply_from_colmap", lambda *args, **kwargs: None):
            colmap_utils.colmap_to_json(recon_dir=recon_dir, output_dir=output_dir)
    meta = json.loads((output_dir / "transforms.json").read_text(encoding="utf-8"))
    meta.pop("ply_file_path", None)
    (output_dir / "transforms.json").write_text(json.dumps(meta, indent=4), encoding="utf-8")
    return output_dir / "transforms.json"


def prepare_training_data(inp: ValidatedInput, data_dir: Path, downscale_factor: int = 1) -> Path:
    """Write the training dataset into ``data_dir``: links to the images (PNG copies of the converted
    ones, see the module docstring), downscaled copies, a binary copy of the model with the work-directory
    names and nerfstudio's ``colmap_to_json`` of it. Assembled in ``data_dir.tmp`` and renamed, so
    ``data_dir`` is complete or absent.

    Returns:
        ``data_dir / "transforms.json"``.
    """
    from PIL import Image

    tmp = data_dir.with_name(data_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "images").mkdir(parents=True)
    for name, flat in inp.flat_names.items():
        if name in inp.converted:
            _training_image(inp.image_paths[name], inp.channels).save(tmp / "images" / flat, format="PNG")
        else:
            _link_or_copy(inp.image_paths[name], tmp / "images" / flat)
    if downscale_factor > 1:
        (tmp / f"images_{downscale_factor}").mkdir()
        for name, flat in inp.flat_names.items():
            img = _training_image(inp.image_paths[name], inp.channels)
            size = (max(1, img.width // downscale_factor), max(1, img.height // downscale_factor))
            img.resize(size, Image.Resampling.LANCZOS).save(tmp / f"images_{downscale_factor}" / flat)
    images = {k: im._replace(name=inp.flat_names[im.name]) for k, im in inp.model.images.items()}
    recon = write_colmap_model(replace(inp.model, images=images), tmp / "sparse" / "0", formats=("bin",))
    colmap_to_transforms(recon, tmp, has_points=bool(inp.model.points3D))
    os.replace(tmp, data_dir)
    return data_dir / "transforms.json"


# ---------------------------------------------------------------------------------------------
# resuming


def interrupted_training(work: Path) -> Optional[dict[str, Any]]:
    """What an interrupted refine run left in its work directory ``work`` (``OUT.partial``): its latest
    training checkpoint as ``{"completed_iterations", "checkpoint", "run_dir"}`` (the iterations from the
    run-state file when it names that checkpoint, else the checkpoint's step + 1, as a resumed run counts
    them), or None when there is no checkpoint. Cheap: no torch, no nerfstudio."""
    from nerf_posefix.plugin.training import read_training_state

    for run_dir in sorted(Path(work).glob("runs/refine/*/run")):
        checkpoints = sorted((run_dir / "nerfstudio_models").glob("step-*.ckpt"))
        steps = [int(p.stem.split("-")[-1]) for p in checkpoints if p.stem.split("-")[-1].isdigit()]
        if not steps:
            continue
        latest = checkpoints[int(np.argmax(steps))]
        state = read_training_state(run_dir)
        done = max(steps) + 1
        if state is not None and (run_dir / str(state.get("checkpoint", ""))) == latest:
            done = int(state["completed_iterations"])
        return {"completed_iterations": done, "checkpoint": str(latest), "run_dir": str(run_dir)}
    return None


def check_resume(work: Path, iterations: Optional[int]) -> None:
    """The checks of ``--resume`` that need no torch: the interrupted run's config is readable, and
    ``--iterations`` is not fewer than it has already done. Such a resume is **refused** (a trained NeRF
    cannot be un-trained, and silently returning the longer run would not be what was asked).

    Raises:
        InputError: naming the work directory (or the run config), the iterations done and the options
            that work.
    """
    from nerf_posefix.io.sources import run_config_inputs

    for config in sorted(Path(work).glob("runs/refine/*/run/config.yml")):
        run_config_inputs(config)  # one line naming the config if it cannot be parsed
    if iterations is None:
        return
    state = interrupted_training(work)
    if state is not None and int(state["completed_iterations"]) > iterations:
        done = int(state["completed_iterations"])
        raise InputError(
            f"--iterations {iterations}: the interrupted run in {work} has already done {done} iterations; "
            f"resume with --iterations {done} or more, or start over with --overwrite"
        )


def _check_tracks(model: ColmapModel, images_file: Path) -> None:
    """The SfM tracks the bundle adjustment and the track term use: the images' 2D observations of the
    model's 3D points. None at all, or observations of points the model does not have (a corrupt
    model; COLMAP never writes one), is one error naming the file."""
    obs = model.observations()
    if len(obs.dangling):
        image_index, point_id = (int(v) for v in obs.dangling[0])
        image_id = model.image_ids()[image_index]
        first_dangling = f"image {image_id} ({model.images[image_id].name}) observes point {point_id}"
        raise InputError(
            f"{images_file}: {len(obs.dangling)} observation(s) refer to 3D points that are not in the model (e.g. "
            f"{first_dangling}); the model is inconsistent: re-export it from COLMAP"
        )
    if len(obs) == 0:
        raise InputError(
            f"{images_file}: no image observes any of the model's {len(model.points3D)} 3D points; posefix refine needs "
            "the SfM tracks (the images' 2D keypoints with their point3D ids), as COLMAP writes them"
        )

