"""Scenes the tests build from the bundled assets (imported as ``from scene_helpers import ...``)."""

from __future__ import annotations

import json
from pathlib import Path

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
