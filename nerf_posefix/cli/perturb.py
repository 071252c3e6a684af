"""``posefix perturb``: parse, call :func:`nerf_posefix.workflows.perturb.perturb_dataset`, print."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal


@dataclass
class Perturb:
    """Add controlled pose noise to a dataset (nerfstudio transforms.json and/or COLMAP model) and write
    it, with the clean poses as ground truth, to a new directory."""

    data: Path
    """Input dataset directory (transforms.json and/or a COLMAP model, plus images). Never modified."""
    output: Path
    """Directory to create for the noisy dataset."""
    rotation_deg: float = 3.0
    """Rotation applied to every camera, in degrees (exact angle, uniformly random axis)."""
    translation: float = 0.05
    """Camera-centre offset (exact magnitude, uniformly random direction), in --translation-units."""
    translation_units: Literal["scene-fraction", "absolute"] = "scene-fraction"
    """scene-fraction: fraction of the scene radius (largest distance of a camera centre from their
    centroid); absolute: world units."""
    seed: int = 0
    """Seed of the noise (same seed, same noise)."""
    holdout_every: int = 0
    """If > 0, cameras at name-sorted index i with i % N == 0 keep their exact pose: the test views of
    nerfstudio's --eval-mode interval --eval-interval N, so test-view PSNR is measured at true poses."""
    overwrite: bool = False
    """Replace --output if it exists (only an earlier posefix perturb output)."""

    def run(self) -> None:
        from nerf_posefix.workflows.perturb import perturb_dataset

        result = perturb_dataset(
            self.data,
            self.output,
            rotation_deg=self.rotation_deg,
            translation=self.translation,
            translation_units=self.translation_units,
            seed=self.seed,
            holdout_every=self.holdout_every,
            overwrite=self.overwrite,
        )
        held = sum(c["held_out"] for c in result["cameras"])
        print(
            f"perturbed {len(result['cameras']) - held} of {len(result['cameras'])} cameras "
            f"({', '.join(result['formats'])}): {self.rotation_deg:g} deg, "
            f"{result['translation_world']:.6g} world units "
            f"(scene radius {result['scene_radius']:.6g}); wrote {self.output}"
        )
