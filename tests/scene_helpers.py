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
