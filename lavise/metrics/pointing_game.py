"""Pointing game (Zhang et al. 2016): does a saliency map's maximum fall on the object?

Definition (binding, docs/PROTOCOL.md): a hit when the map's maximum lies within ``tolerance``
pixels (Euclidean) of a mask pixel, i.e. inside the mask dilated by a disc of that radius (15
pixels, the usual tolerance). Several maxima: the first in row-major order. A flat map (no
maximum above its minimum) points nowhere and is a miss.
"""

from __future__ import annotations

import numpy as np


def pointing_hit(saliency: np.ndarray, mask: np.ndarray, tolerance: int) -> bool:
    """Whether the maximum of ``saliency`` ``[H, W]`` is within ``tolerance`` px of boolean ``mask`` ``[H, W]``."""
    if saliency.shape != mask.shape:
        raise ValueError(f"map {saliency.shape} and mask {mask.shape} differ in shape")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    if not mask.any() or saliency.max() <= saliency.min():
        return False
    row, col = np.unravel_index(int(np.argmax(saliency)), saliency.shape)
    rows, cols = np.nonzero(mask)
    return bool(((rows - row) ** 2 + (cols - col) ** 2 <= tolerance**2).any())
