"""The robust loss's automatic scale, matched to a model's own accuracy (numpy only: the bundle adjustment
uses it without torch).

Pixels: reprojection residual norms in pixels of the image the keypoints were found in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

#: The automatic robust scale is this factor times the median reprojection residual norm, clipped to
#: [AUTO_SCALE_MIN_PX, AUTO_SCALE_MAX_PX]. With Gaussian keypoint noise of σ per axis the median residual
#: norm is 1.18 σ, so the scale is ≈ 2.35 σ, the usual tuning of the Cauchy loss (2.385 σ).
AUTO_SCALE_FACTOR = 2.0
AUTO_SCALE_MIN_PX = 0.1
AUTO_SCALE_MAX_PX = 2.0


def auto_robust_scale(residual_norms_px: Any | Sequence[float]) -> float:
    """The robust-loss scale (pixels) matched to a model's own accuracy: ``AUTO_SCALE_FACTOR`` × the
    median of ``residual_norms_px [K]`` (reprojection residual norms, pixels; a sequence, an array or a torch
    tensor on any device), clipped to ``[AUTO_SCALE_MIN_PX, AUTO_SCALE_MAX_PX]``.

    Raises:
        ValueError: no residual.
    """
    if hasattr(residual_norms_px, "detach"):  # a torch tensor
        residual_norms_px = residual_norms_px.detach().cpu().numpy()
    norms = np.asarray(residual_norms_px, dtype=np.float64).reshape(-1)
    if norms.size == 0:
        raise ValueError("auto_robust_scale needs at least one residual")
    median = float(np.median(norms))  # the mean of the two middle values for an even count
    return min(max(AUTO_SCALE_FACTOR * median, AUTO_SCALE_MIN_PX), AUTO_SCALE_MAX_PX)
