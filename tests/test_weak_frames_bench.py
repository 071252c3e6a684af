"""The weak-frames benchmark's degradations (benchmarks/weak_frames.py): what the motion blur does to an image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.weak_frames import CONTRAST, degrade, motion_angle, motion_kernel


def _moments(kernel: np.ndarray, angle: float) -> tuple[float, float, float]:
    n = kernel.shape[0]
    y, x = np.mgrid[:n, :n] - n // 2
    along, across = x * np.cos(angle) + y * np.sin(angle), -x * np.sin(angle) + y * np.cos(angle)
    return float((kernel * along).sum()), float((kernel * along**2).sum()), float((kernel * across**2).sum())


def test_motion_kernel_is_a_centred_streak_of_its_length() -> None:
    for length, angle in ((8.0, 0.0), (20.0, 0.3), (33.0, 2.0)):
        kernel = motion_kernel(length, angle)
        mean, var_along, var_across = _moments(kernel, angle)
        assert abs(kernel.sum() - 1.0) < 1e-12 and (kernel >= 0).all()
        assert abs(mean) < 1e-9
        assert abs(var_along - length**2 / 12.0) < 0.1 * length**2 / 12.0 + 0.2  # a box of length L: L² / 12
        assert var_across < 0.2  # no blur across the streak (the bilinear splat's own spread)


def test_motion_blur_smears_along_its_direction_only(tmp_path: Path) -> None:
    """A single bright dot becomes a streak of the kernel's length in the direction drawn for the file name, at
    the benchmark's contrast."""
    image = np.full((64, 64, 3), 100, dtype=np.uint8)
    image[30:34, 30:34] = 255
    src, out = tmp_path / "0004.png", tmp_path / "out.png"
    Image.fromarray(image).save(src)
    degrade(src, out, 16.0, kind="motion")
    blurred = np.asarray(Image.open(out).convert("L")).astype(np.float64)
    excess = np.clip(blurred - np.median(blurred), 0, None)
    angle = motion_angle("0004.png")
    assert angle == motion_angle("0004.png") and 0.0 <= angle < np.pi
    ys, xs = np.nonzero(excess > 0.5)
    w = excess[ys, xs]
    cy, cx = (w * ys).sum() / w.sum(), (w * xs).sum() / w.sum()
    along = (xs - cx) * np.cos(angle) + (ys - cy) * np.sin(angle)
    across = -(xs - cx) * np.sin(angle) + (ys - cy) * np.cos(angle)
    assert np.ptp(along[w > 0.2 * w.max()]) > 12.0  # the streak: ~16 px + the dot
    assert np.ptp(across[w > 0.2 * w.max()]) < 7.0  # the dot's own 4 px + resampling
    # the dot's 4 px spread along ~16 px (a peak of ~4 / 17 of its 155 levels) and cut to the benchmark's contrast
    assert CONTRAST * 155 * 4 / 20 < excess.max() < CONTRAST * 155 * 6 / 16


def test_noise_cuts_the_contrast_then_adds_grain_of_its_sigma_the_same_on_every_run(tmp_path: Path) -> None:
    """``--kind noise``: no blur; the contrast cut around the mean, then Gaussian noise of σ grey levels per pixel
    and channel, seeded by the file name."""
    x = np.linspace(0.0, 200.0, 128)
    image = np.repeat(np.repeat(x[None, :, None], 128, 0), 3, 2).astype(np.uint8)  # a horizontal ramp 0..200
    src = tmp_path / "0008.png"
    Image.fromarray(image).save(src)
    outs = [tmp_path / "a.png", tmp_path / "b.png"]
    for out in outs:
        degrade(src, out, 12.0, kind="noise")
    a, b = (np.asarray(Image.open(p)).astype(np.float64) for p in outs)
    assert np.array_equal(a, b)
    expected = (image.astype(np.float64) - image.mean()) * CONTRAST + image.mean()
    residual = a - expected
    assert abs(residual.mean()) < 0.3 and abs(residual.std() - 12.0) < 0.5  # its σ (rounding adds 1/12 level²)
    cols = a.mean(axis=(0, 2))  # averaged over 384 values per column: the ramp, cut, without the grain
    assert np.allclose(cols, expected.mean(axis=(0, 2)), atol=2.5)
    assert np.corrcoef(residual[..., 0].ravel(), residual[..., 1].ravel())[0, 1] < 0.05  # per channel
