"""Scenes the tests build from the bundled assets (imported as ``from scene_helpers import ...``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nerf_posefix.io.posed_images import PosedImages

TOYBOX = Path(__file__).resolve().parents[1] / "assets" / "toybox"


def downscaled_toybox(dst: Path, size: int) -> Path:
    """``assets/toybox`` with its images resized to ``size``² (Lanczos) and the intrinsics scaled, in ``dst``."""
    from PIL import Image

    meta = json.loads((TOYBOX / "transforms.json").read_text())
    scale = size / float(meta["w"])
    for key in ("fl_x", "fl_y", "cx", "cy"):
        meta[key] = float(meta[key]) * scale
    meta["w"] = meta["h"] = size
    meta.pop("ply_file_path", None)
    (dst / "images").mkdir(parents=True)
    for frame in meta["frames"]:
        with Image.open(TOYBOX / frame["file_path"]) as im:
            im.convert("RGB").resize((size, size), Image.LANCZOS).save(dst / frame["file_path"])
    (dst / "transforms.json").write_text(json.dumps(meta))
    return dst


def blur_and_wash_out(path: Path, sigma: float, contrast: float = 0.4) -> None:
    """Replace the image at ``path`` by itself blurred (Gaussian, ``sigma`` px) with its colour contrast cut to
    ``contrast`` around its mean (alpha kept); a link is replaced by a new file, never written through."""
    import imageio.v3 as iio
    import numpy as np
    from scipy.ndimage import gaussian_filter

    pixels = iio.imread(path).astype(np.float64)
    blurred = np.stack([gaussian_filter(pixels[..., c], sigma) for c in range(pixels.shape[-1])], axis=-1)
    mean = blurred[..., :3].mean(axis=(0, 1))
    blurred[..., :3] = mean + contrast * (blurred[..., :3] - mean)
    path.unlink()
    iio.imwrite(path, np.clip(np.rint(blurred), 0, 255).astype(np.uint8))


def toybox_views_one_blurred(images: Path, count: int, sigma: float, which: int = 3) -> tuple["PosedImages", list[str], str]:
    """The bundled scene's first ``count`` views copied into ``images``, view ``which`` blurred by ``sigma`` px and
    washed out (:func:`blur_and_wash_out`). Returns the bundled scene (:class:`PosedImages`), the names copied and
    the blurred one."""
    import shutil

    from nerf_posefix.io.posed_images import load_posed_images

    posed = load_posed_images(TOYBOX / "transforms.json")
    names = list(posed.cameras.names[:count])
    for name in names:
        (images / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(posed.images_dir / name, images / name)
    blur_and_wash_out(images / names[which], sigma)
    return posed, names, names[which]


def frame_and_others_errors(data: Path, refined: Path, frame: str) -> tuple[float, float]:
    """Rotation errors (deg) of ``refined``'s transforms.json against ``data``'s transforms_gt.json after a Sim(3) on
    all views: of the view ``frame`` (its file name), and the median of the others."""
    import numpy as np

    from nerf_posefix.geometry.alignment import align
    from nerf_posefix.geometry.poses import rotation_angle_deg
    from nerf_posefix.io.transforms_json import read_transforms_json

    gt, est = read_transforms_json(data / "transforms_gt.json"), read_transforms_json(refined / "transforms.json")
    order = [est.names.index(n) for n in gt.names]
    aligned = align(est.c2w[order], gt.c2w, mode="sim3").apply(est.c2w[order])
    rot = rotation_angle_deg(aligned[:, :3, :3], gt.c2w[:, :3, :3])
    k = [Path(n).name for n in gt.names].index(Path(frame).name)
    return float(rot[k]), float(np.median(np.delete(rot, k)))


#: The shift given to the tiny scene's principal point by :func:`tiny_model_with_moved_principal_point` (pixels).
PRINCIPAL_POINT_SHIFT_PX = (6.0, -4.0)


def tiny_model_with_moved_principal_point(dst: Path) -> tuple["np.ndarray", tuple[int, int]]:
    """``assets/toybox_tiny``'s model (exact observations) written to ``dst`` with its camera's principal point moved
    by :data:`PRINCIPAL_POINT_SHIFT_PX`, as a self-calibration that held it at a wrong place leaves it. Returns the
    true camera parameters and the indices of the principal point in them."""
    import numpy as np
    import pycolmap

    rec = pycolmap.Reconstruction(str(TOYBOX.parent / "toybox_tiny" / "sparse" / "0"))
    camera = rec.cameras[next(iter(rec.cameras))]
    truth = np.array(camera.params, dtype=np.float64)
    ix, iy = camera.principal_point_idxs()
    moved = truth.copy()
    moved[ix] += PRINCIPAL_POINT_SHIFT_PX[0]
    moved[iy] += PRINCIPAL_POINT_SHIFT_PX[1]
    camera.params = moved
    Path(dst).mkdir(parents=True)
    rec.write(str(dst))
    return truth, (int(ix), int(iy))


def tiny_model_with_placeholder_principal_point(dst: Path, true_shift_px: tuple[float, float], noise_px: float = 0.3,
                                                seed: int = 0) -> tuple["np.ndarray", tuple[int, int]]:
    """``assets/toybox_tiny``'s poses and points with every observation re-projected through its camera whose principal
    point is the image centre moved by ``true_shift_px`` (the truth), plus Gaussian noise of ``noise_px`` per axis
    (seeded), written to ``dst`` with the principal point at the image centre: a model that COLMAP self-calibrated
    holding its placeholder (a shift of ``(0, 0)``: a camera whose principal point is the centre, as synthetic ones).
    Returns the true camera parameters and the indices of the principal point in them."""
    import numpy as np
    import pycolmap

    rec = pycolmap.Reconstruction(str(TOYBOX.parent / "toybox_tiny" / "sparse" / "0"))
    camera = rec.cameras[next(iter(rec.cameras))]
    ix, iy = camera.principal_point_idxs()
    truth = np.array(camera.params, dtype=np.float64)
    truth[ix], truth[iy] = camera.width / 2 + true_shift_px[0], camera.height / 2 + true_shift_px[1]
    true_camera = pycolmap.Camera(model=camera.model, width=camera.width, height=camera.height, params=truth)
    rng = np.random.default_rng(seed)
    for image_id in sorted(rec.reg_image_ids()):
        image = rec.images[image_id]
        cam_from_world = image.cam_from_world()
        points2D = image.points2D
        for k, point2D in enumerate(points2D):
            if point2D.has_point3D():
                xyz = cam_from_world * rec.points3D[point2D.point3D_id].xyz
                points2D[k].xy = true_camera.img_from_cam(np.asarray(xyz)[None])[0] + rng.normal(0.0, noise_px, 2)
    placeholder = truth.copy()
    placeholder[ix], placeholder[iy] = camera.width / 2, camera.height / 2
    camera.params = placeholder
    Path(dst).mkdir(parents=True)
    rec.write(str(dst))
    return truth, (int(ix), int(iy))
