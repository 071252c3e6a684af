"""nerfstudio's datamanagers, refusing a capture whose image cache cannot fit in memory before they cache it.

nerfstudio's datamanagers read the training and eval images into memory as float32 RGB when they are set up
(``VanillaDataManager``: ``CacheDataloader``, every image unless ``train_num_images_to_sample_from`` says
fewer; ``ParallelDataManager``: every training image in each of its ``num_processes`` worker processes),
whatever the capture's size: a 1000-image capture of 640x480 peaked at 8.1 GB in ``ns-train posefix-small``
(docs/scaling.md, tenth look), and a capture too large for the machine was killed by the kernel while
caching, after the front end's work. :class:`PosefixDataManager` and :class:`PosefixParallelDataManager`
are those two with one check first (:func:`check_image_cache`): an
:class:`~nerf_posefix.errors.InputError` with the estimate, the memory available and what to do, before
any image is read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Sequence, Type, Union

import numpy as np

from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManager, VanillaDataManagerConfig
from nerfstudio.data.datamanagers.parallel_datamanager import ParallelDataManager, ParallelDataManagerConfig
from nerfstudio.data.datasets.base_dataset import InputDataset
from nerfstudio.utils.rich_utils import CONSOLE

from nerf_posefix.errors import InputError
from nerf_posefix.sfm.bundle_adjustment import available_memory_bytes

#: Memory of nerfstudio's image cache per cached pixel: the float32 RGB image (12 bytes) and, while the cache is
#: collated into one tensor, the list of per-image tensors beside it (12 more). ``ns-train posefix-small`` on
#: 1000 images of 640x480 (307 M pixels, train and eval) peaked at 8.1 GB: 1 GiB + 23 bytes per pixel.
IMAGE_CACHE_BYTES_PER_PIXEL = 24
#: What the process holds besides the cache: torch, nerfstudio, the field and its optimizer (posefix-small).
IMAGE_CACHE_BASE_BYTES = 1 << 30


def _pixels_per_camera(cameras: Any, scale: float = 1.0) -> np.ndarray:
    """[N] pixels of each of nerfstudio ``cameras`` rescaled by ``scale`` (rounded down, as
    ``Cameras.rescale_output_resolution`` and the datasets' ``scale_factor`` do)."""
    width = (cameras.width.reshape(-1).cpu().numpy() * scale).astype(np.int64)  # [N]
    height = (cameras.height.reshape(-1).cpu().numpy() * scale).astype(np.int64)  # [N]
    return width * height


def _pixels_per_image(dataset: Optional[InputDataset]) -> np.ndarray:
    """[N] pixels of each image ``dataset`` loads (its cameras' size: the dataparser's downscale and the
    dataset's scale factor applied)."""
    if dataset is None or len(dataset) == 0:
        return np.zeros(0, dtype=np.int64)
    return _pixels_per_camera(dataset.cameras)


def cached_pixels(pixels: Sequence[int] | np.ndarray, num_images_to_sample_from: int = -1) -> int:
    """Pixels a ``CacheDataloader`` holds at once for images of ``pixels`` each: all of them, or the largest
    ``num_images_to_sample_from`` when that is positive (a rotating subset; the largest, to bound it)."""
    pixels = np.sort(np.asarray(pixels, dtype=np.int64))[::-1]
    if num_images_to_sample_from > 0:
        pixels = pixels[:num_images_to_sample_from]
    return int(pixels.sum())


def image_cache_bytes(train_pixels: int, eval_pixels: int) -> int:
    """Peak memory (bytes) of a training process whose datamanagers cache ``train_pixels`` + ``eval_pixels``."""
    return int(IMAGE_CACHE_BASE_BYTES + IMAGE_CACHE_BYTES_PER_PIXEL * (train_pixels + eval_pixels))


def _image_cache_refusal(config: VanillaDataManagerConfig, train: np.ndarray, evals: np.ndarray, parallel: bool,
                         available: Optional[int], warn: bool) -> None:
    """Raise :class:`InputError` when a datamanager of ``config`` caching training images of ``train [N]`` pixels
    and eval images of ``evals [M]`` pixels cannot fit in the memory available; with ``warn``, say so when it takes
    more than half of it."""
    if parallel:  # every worker process caches every training image
        train_cached = int(train.sum()) * max(1, int(config.num_processes))
    else:
        train_cached = cached_pixels(train, int(config.train_num_images_to_sample_from))
    eval_cached = cached_pixels(evals, int(config.eval_num_images_to_sample_from))
    need = image_cache_bytes(train_cached, eval_cached)
    have = available_memory_bytes() if available is None else int(available)
    sizes = f"{len(train)} training and {len(evals)} eval images"
    if need <= have:
        if warn and 2 * need > have:
            CONSOLE.print(f"[yellow]posefix: nerfstudio caches {sizes} in memory as float32: ~{need / 2**30:.1f} GiB with the "
                          f"training process, of the {have / 2**30:.1f} GiB available", soft_wrap=True)
        return
    if parallel:
        todo = ("fewer images, or smaller ones (the dataparser's --downscale-factor: its images_2, images_4 folders"
                + (", or --pipeline.datamanager.num-processes 1" if int(config.num_processes) > 1 else "")
                + "), or posefix-small, whose datamanager can hold a rotating subset (--pipeline.datamanager.train-num-images-to-sample-from N)")
    else:
        todo = ("--pipeline.datamanager.train-num-images-to-sample-from N --pipeline.datamanager.train-num-times-to-repeat-images 100 "
                "(a rotating subset of N images in memory; likewise eval-num-images-to-sample-from), smaller images (the "
                "dataparser's --downscale-factor: its images_2, images_4 folders), or fewer images")
    raise InputError(
        f"nerfstudio would cache {sizes} in memory as float32 (~{need / 2**30:.1f} GiB with the training process) and "
        f"{have / 2**30:.1f} GiB are available: use {todo}"
    )


def check_image_cache(
    datamanager: Union[VanillaDataManager, ParallelDataManager], available: Optional[int] = None
) -> None:
    """Raise :class:`InputError` when the images ``datamanager`` is about to cache cannot fit in the memory
    still available (:func:`~nerf_posefix.sfm.bundle_adjustment.available_memory_bytes`, or ``available``
    bytes); warn when they take more than half of it. Reads no image: the sizes are the datasets' cameras'."""
    _image_cache_refusal(datamanager.config, _pixels_per_image(datamanager.train_dataset), _pixels_per_image(datamanager.eval_dataset),
                         isinstance(datamanager, ParallelDataManager), available, warn=True)


def check_image_cache_config(
    config: VanillaDataManagerConfig, test_mode: Literal["test", "val", "inference"] = "val", available: Optional[int] = None
) -> None:
    """:func:`check_image_cache`'s refusal (no warning) from a datamanager's config, before the datamanager exists:
    the image sizes are its dataparser's cameras (the datasets' ``camera_res_scale_factor`` applied; parsing reads
    no image, except the one nerfstudio's dataparsers read to choose a downscale factor when none is given). The
    posefix pipeline calls it before its front end, so a capture whose cache cannot fit is refused before that
    work, not after it. Not a posefix datamanager config (another datamanager's memory is its own): no check."""
    if not isinstance(config, (PosefixDataManagerConfig, PosefixParallelDataManagerConfig)):
        return
    dataparser = config.dataparser.setup()
    scale = float(config.camera_res_scale_factor)
    test_split = "test" if test_mode in ("test", "inference") else "val"  # as VanillaDataManager picks it

    train, evals = (_pixels_per_camera(dataparser.get_dataparser_outputs(split=split).cameras, scale) for split in ("train", test_split))
    _image_cache_refusal(config, train, evals, isinstance(config, ParallelDataManagerConfig), available, warn=False)


class PosefixDataManager(VanillaDataManager[InputDataset]):
    """nerfstudio's ``VanillaDataManager``, which first checks that its image cache fits in memory."""

    def setup_train(self) -> None:
        check_image_cache(self)
        super().setup_train()


class PosefixParallelDataManager(ParallelDataManager[InputDataset]):
    """nerfstudio's ``ParallelDataManager``, which first checks that its workers' image caches fit in memory."""

    def setup_train(self) -> None:
        check_image_cache(self)
        super().setup_train()


@dataclass
class PosefixDataManagerConfig(VanillaDataManagerConfig):
    """``VanillaDataManagerConfig`` whose datamanager checks its image cache against the memory first."""

    _target: Type = field(default_factory=lambda: PosefixDataManager)


@dataclass
class PosefixParallelDataManagerConfig(ParallelDataManagerConfig):
    """``ParallelDataManagerConfig`` whose datamanager checks its workers' image caches against the memory first."""

    _target: Type = field(default_factory=lambda: PosefixParallelDataManager)
