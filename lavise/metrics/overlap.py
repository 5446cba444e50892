"""Activation regions and their overlaps with object masks: R_{u,i}, |R|, |M|, |R ∩ M| and IoU.

Definitions (binding, docs/PROTOCOL.md):

* ``R_{u,i}``: u's map on image i bilinearly upsampled (``align_corners=False``) to the crop,
  thresholded ``> T_u``. Bilinear weights are a convex combination of neighbouring cells, so
  ``R`` is empty whenever the map's maximum is ``<= T_u``; such pairs are skipped, not computed.
* ``IoU(R, M) = |R ∩ M| / |R ∪ M|`` with ``|R ∪ M| = |R| + |M| - |R ∩ M|`` (0 when both are empty).
"""

from __future__ import annotations

import torch
import torch.nn.functional as nnf


def upsample_maps(maps: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear upsampling (``align_corners=False``) of maps ``[k, h, w]`` to ``[k, size, size]``."""
    if maps.ndim != 3:
        raise ValueError(f"expected maps [k, h, w], got shape {tuple(maps.shape)}")
    if maps.shape[0] == 0:
        return maps.new_zeros((0, size, size))
    return nnf.interpolate(maps[None], size=(size, size), mode="bilinear", align_corners=False)[0]


def activation_regions(maps: torch.Tensor, thresholds: torch.Tensor, size: int) -> torch.Tensor:
    """``R``: maps ``[k, h, w]`` upsampled to ``size`` and thresholded ``> T``, bool ``[k, size, size]``."""
    return upsample_maps(maps, size) > thresholds.to(maps.dtype)[:, None, None]


def region_overlaps(regions: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """|R|, |M| and |R ∩ M| for regions ``[k, H, W]`` and masks ``[n, H, W]`` (bool).

    One matmul instead of k·n pixel loops; counts are exact in float32 below 2^24 pixels.
    """
    flat_r = regions.flatten(1).to(torch.float32)
    flat_m = masks.flatten(1).to(torch.float32)
    return flat_r.sum(1), flat_m.sum(1), flat_r @ flat_m.T


def iou_from_counts(r_area: torch.Tensor, m_area: torch.Tensor, inter: torch.Tensor) -> torch.Tensor:
    """IoU ``[k, n]`` from areas and intersections; 0 where both sets are empty."""
    union = r_area[:, None] + m_area[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))
