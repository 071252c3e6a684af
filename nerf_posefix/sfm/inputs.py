"""The input of the SfM stages and of a NeRF: a COLMAP model checked against its images (nothing is written).

Conventions: the model is read as COLMAP writes it (world-to-camera ``qvec``/``tvec``, OpenCV camera
axes, COLMAP world frame). Used by ``posefix refine`` and by the plugin's front end, so both refuse the
same inputs with the same one-line :class:`~nerf_posefix.errors.InputError` naming the file.

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

The conversion is reported in one line (and in ``ValidatedInput.converted``); the copies are made by
:func:`nerf_posefix.workflows.refine_inputs.prepare_training_data`. Other pixel formats (16-bit, float,
CMYK, ...) are refused with one line naming the image and its format.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

import numpy as np

from nerf_posefix.errors import InputError
from nerf_posefix.io.colmap import MODEL_FILES, ColmapModel, find_colmap_model_dir, read_colmap_model

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

    def conversion_note(self) -> Optional[str]:
        """The one line saying which images a NeRF stage trains on from converted copies, or None."""
        if not self.converted:
            return None
        listed = ", ".join(f"{n} ({what})" for n, what in list(self.converted.items())[:5])
        more = f", ... ({len(self.converted) - 5} more)" if len(self.converted) > 5 else ""
        why = "some images have transparent pixels" if self.channels == "RGBA" else "one channel layout for all images"
        return (f"{len(self.converted)} of {len(self.image_paths)} images are trained on as {self.channels} copies ({why}; "
                f"the input files are not changed): {listed}{more}")

    def subset(self, names: list[str]) -> "ValidatedInput":
        """The same input with only the images named ``names`` (:meth:`ColmapModel.subset`: the points two of
        them observe, tracks restricted to them); paths, work-directory names and conversions kept for those."""
        keep = set(names)
        return replace(
            self, model=self.model.subset(keep),
            image_paths={n: p for n, p in self.image_paths.items() if n in keep},
            flat_names={n: f for n, f in self.flat_names.items() if n in keep},
            converted={n: c for n, c in self.converted.items() if n in keep},
        )

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


def read_refine_model(colmap_model: Path, model: Optional[ColmapModel] = None) -> tuple[ColmapModel, Path, str]:
    """Read a COLMAP model ``refine`` can train on: ``(model, model directory, ".bin" | ".txt")``. ``model``: the
    model of that directory when the caller has read it already (its files are then only located).

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
    if model is None:
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
    flat = _png_names(_flat_names(names), set(converted))
    validated = ValidatedInput(model, model_dir, ext, images_dir, paths, flat, channels, converted)
    note = validated.conversion_note()
    if note is not None:
        log(f"posefix refine: {note}")
    return validated


def training_image(path: Path, channels: str) -> Any:
    """The image at ``path`` as a PIL image in the ``channels`` layout (``"RGB"``: only used when no image
    has a transparent pixel, so no alpha is lost; ``"RGBA"``: PIL's conversion, opaque alpha for images
    without one, a palette's transparency as alpha)."""
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        return img.convert(channels)



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

