"""The centre-bias control: one centred Gaussian map for every image and class.

A saliency method that scores no better against the masks than this map has shown nothing
beyond "objects tend to be in the middle of the crop". ``sigma`` is a share of the crop side.
"""

from __future__ import annotations

import numpy as np


def gaussian_map(size: int, sigma: float) -> np.ndarray:
    """``exp(-d^2 / (2 (sigma * size)^2))`` with ``d`` the distance to the crop's centre, ``[size, size]``."""
    if size < 1 or sigma <= 0:
        raise ValueError(f"need size >= 1 and sigma > 0, got {size}, {sigma}")
    centre = (size - 1) / 2
    offsets = np.arange(size) - centre
    squared = offsets[:, None] ** 2 + offsets[None, :] ** 2
    return np.exp(-squared / (2 * (sigma * size) ** 2)).astype(np.float32)
