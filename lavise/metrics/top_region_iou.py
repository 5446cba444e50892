"""IoU of a map's top region with a mask, and of two maps' top regions (method agreement).

Definitions (binding, docs/PROTOCOL.md):

* ``top_region(S, k)``: the ``k`` pixels of highest value; ties broken by row-major order
  (a stable sort), so the region is always exactly ``k`` pixels and the same on every run;
* ground truth: ``IoU(top_region(S, |M|), M)``, the top region of the mask's own area, so no
  threshold is chosen; a flat map (no pixel above its minimum) has no top region: IoU 0;
* agreement of two maps: ``IoU(top_region(S1, k), top_region(S2, k))`` with
  ``k = round(q * H * W)``; two flat maps agree on nothing (0), a map agrees with itself fully.
"""

from __future__ import annotations

import numpy as np


def top_region(saliency: np.ndarray, k: int) -> np.ndarray:
    """Boolean ``[H, W]``: the ``k`` highest pixels of ``saliency`` (ties: row-major order)."""
    if not 0 <= k <= saliency.size:
        raise ValueError(f"k must be in [0, {saliency.size}], got {k}")
    order = np.argsort(-saliency.ravel(), kind="stable")  # descending, first index first among equals
    region = np.zeros(saliency.size, dtype=bool)
    region[order[:k]] = True
    return region.reshape(saliency.shape)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = int(np.logical_or(a, b).sum())
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def flat(saliency: np.ndarray) -> bool:
    """A map with no pixel above its minimum ranks nothing above anything."""
    return bool(saliency.max() <= saliency.min())


def top_region_iou(saliency: np.ndarray, mask: np.ndarray) -> float:
    """IoU of the map's top ``|M|`` pixels with ``mask`` ``[H, W]``; 0 for a flat map or an empty mask."""
    if saliency.shape != mask.shape:
        raise ValueError(f"map {saliency.shape} and mask {mask.shape} differ in shape")
    mask = mask.astype(bool)
    area = int(mask.sum())
    if area == 0 or flat(saliency):
        return 0.0
    return _iou(top_region(saliency, area), mask)


def region_size(shape: tuple[int, int], q: float) -> int:
    """``k = round(q * H * W)``: the pixels of a top-q region (at least 1)."""
    if not 0.0 < q <= 1.0:
        raise ValueError(f"q must be in (0, 1], got {q}")
    return max(1, int(round(q * shape[0] * shape[1])))


def agreement_matrix(maps: np.ndarray, q: float) -> np.ndarray:
    """``[K, K]`` IoU of the top-q regions of maps ``[K, H, W]`` (symmetric; diagonal 1, or 0 for a flat map)."""
    k = region_size(maps.shape[1:], q)
    regions = [None if flat(m) else top_region(m, k) for m in maps]
    out = np.zeros((len(maps), len(maps)))
    for i, a in enumerate(regions):
        for j in range(i, len(maps)):
            b = regions[j]
            out[i, j] = out[j, i] = 0.0 if a is None or b is None else _iou(a, b)
    return out
