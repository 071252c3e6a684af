"""SIFT features of images into a COLMAP database (pycolmap), the images registered first under ids in a given order,
and the matching of listed image pairs.

Intrinsics are COLMAP camera models (:class:`~nerf_posefix.io.camera_set.ImageCamera`) in pixels of the
full-resolution images; keypoints are stored in those pixels (COLMAP's convention: the centre of the top-left pixel
is ``(0.5, 0.5)``) whatever size the extraction works at. ``pycolmap`` is imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from nerf_posefix.io.camera_set import ImageCamera
from nerf_posefix.sfm.bundle_adjustment import quiet_colmap_log

#: Pose-guided pairing (spatial matching, the neighbours of a blurred frame): two images whose optical axes differ
#: by more than this (degrees) are not paired; cameras that look apart see different things, however close.
SPATIAL_MAX_ANGLE_DEG = 75.0


def camera_groups(names: Sequence[str], cameras: dict[str, ImageCamera]) -> list[tuple[ImageCamera, list[str]]]:
    """Images grouped by identical intrinsics, first-appearance order."""
    groups: dict[ImageCamera, list[str]] = {}
    for name in names:
        groups.setdefault(cameras[name], []).append(name)
    return list(groups.items())


def register_images(database: str | Path, names: Sequence[str], cameras: dict[str, ImageCamera]) -> None:
    """Write one COLMAP camera per group of identical intrinsics (:func:`camera_groups`; a prior focal length, as
    COLMAP's image reader marks given intrinsics) and the images of ``names`` (ids 1, 2, ... in that order, no
    pose, no features) into the new database ``database``; COLMAP's feature extraction then adds the features of
    these images under these ids and cameras."""
    import pycolmap

    db = pycolmap.Database.open(str(database))
    try:
        camera_ids = {}
        for camera, _ in camera_groups(names, cameras):
            colmap_camera = pycolmap.Camera(model=camera.model, width=int(camera.width), height=int(camera.height),
                                            params=[float(p) for p in camera.params])
            colmap_camera.has_prior_focal_length = True
            camera_ids[camera] = db.write_camera(colmap_camera)
        for name in names:
            db.write_image(pycolmap.Image(name=name, camera_id=camera_ids[cameras[name]]))
    finally:
        db.close()


def extract_sift(
    database: str | Path, images_dir: str | Path, names: Sequence[str], cameras: dict[str, ImageCamera], num_threads: int = -1,
    max_image_size: int = 3200, max_num_features: int = 8192, peak_threshold: Optional[float] = None, verbose: bool = False,
) -> None:
    """COLMAP's SIFT extraction (CPU) of ``names`` (relative to ``images_dir``) into ``database``, one COLMAP camera
    per group of identical intrinsics (the images already registered there keep their ids and cameras:
    :func:`register_images`); ``peak_threshold``: the DoG peak threshold (None: COLMAP's, 0.02 / 3)."""
    import pycolmap

    extraction = pycolmap.FeatureExtractionOptions()
    extraction.num_threads = num_threads
    extraction.max_image_size = max_image_size
    extraction.sift.max_num_features = max_num_features
    if peak_threshold is not None:
        extraction.sift.peak_threshold = peak_threshold
    with quiet_colmap_log(verbose):
        for camera, group in camera_groups(names, cameras):
            reader = pycolmap.ImageReaderOptions()
            reader.camera_model = camera.model
            reader.camera_params = ",".join(repr(float(p)) for p in camera.params)
            pycolmap.extract_features(
                database, images_dir, image_names=list(group), camera_mode=pycolmap.CameraMode.SINGLE,
                reader_options=reader, extraction_options=extraction, device=pycolmap.Device.cpu,
            )


def match_listed_pairs(
    database: str | Path, pairs: Sequence[tuple[str, str]], pairs_file: str | Path, num_threads: int = -1, seed: int = 0,
    verbose: bool = False,
) -> None:
    """COLMAP's matching of the image pairs ``pairs`` (names as in ``database``; written to ``pairs_file``, one
    ``name1 name2`` line each, COLMAP's format) with its geometric verification (RANSAC seeded by ``seed``), CPU."""
    import pycolmap

    Path(pairs_file).write_text("".join(f"{a} {b}\n" for a, b in pairs), encoding="utf-8")
    matcher = pycolmap.FeatureMatchingOptions()
    matcher.num_threads = num_threads
    verification = pycolmap.TwoViewGeometryOptions()
    verification.ransac.random_seed = seed
    imported = pycolmap.ImportedPairingOptions()
    imported.match_list_path = str(pairs_file)
    with quiet_colmap_log(verbose):
        pycolmap.match_image_pairs(database, matching_options=matcher, pairing_options=imported, verification_options=verification,
                                   device=pycolmap.Device.cpu)
