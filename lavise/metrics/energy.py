"""Energy inside the mask: the share of a saliency map's positive mass that lies on the object.

Definition (binding, docs/PROTOCOL.md): ``sum(max(S, 0) * M) / sum(max(S, 0))`` over the crop's
pixels; 0 for a map with no positive mass (it puts no energy anywhere).
"""

from __future__ import annotations

import numpy as np


def energy_inside(saliency: np.ndarray, mask: np.ndarray) -> float:
    """Share of the positive mass of ``saliency`` ``[H, W]`` inside boolean ``mask`` ``[H, W]``."""
    if saliency.shape != mask.shape:
        raise ValueError(f"map {saliency.shape} and mask {mask.shape} differ in shape")
    positive = np.maximum(saliency.astype(np.float64), 0.0)
    total = positive.sum()
    if total <= 0.0:
        return 0.0
    return float(positive[mask.astype(bool)].sum() / total)
