"""Activation regions, overlaps and IoU against a pixel loop and a naive bilinear upsampling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lavise.metrics.overlap import activation_regions, iou_from_counts, region_overlaps, upsample_maps


def _naive_bilinear(small: np.ndarray, size: int) -> np.ndarray:
    """PyTorch align_corners=False bilinear, pixel by pixel."""
    h, w = small.shape
    out = np.zeros((size, size))
    for y in range(size):
        sy = max((y + 0.5) * h / size - 0.5, 0.0)
        y0 = int(math.floor(sy))
        y1, ly = min(y0 + 1, h - 1), sy - y0
        for x in range(size):
            sx = max((x + 0.5) * w / size - 0.5, 0.0)
            x0 = int(math.floor(sx))
            x1, lx = min(x0 + 1, w - 1), sx - x0
            out[y, x] = (1 - ly) * ((1 - lx) * small[y0, x0] + lx * small[y0, x1]) + ly * (
                (1 - lx) * small[y1, x0] + lx * small[y1, x1]
            )
    return out


def test_upsampled_iou_matches_pixel_loop() -> None:
    rng = np.random.default_rng(2)
    maps = rng.random((3, 3, 3)).astype(np.float32)
    thresholds = np.array([0.5, 0.7, 2.0], dtype=np.float32)
    size = 12
    masks = rng.random((4, size, size)) > 0.6
    regions = activation_regions(torch.from_numpy(maps), torch.from_numpy(thresholds), size)
    r_area, m_area, inter = region_overlaps(regions, torch.from_numpy(masks))
    iou = iou_from_counts(r_area, m_area, inter).numpy()
    for k in range(3):
        region = _naive_bilinear(maps[k].astype(np.float64), size) > thresholds[k]
        assert np.array_equal(region, regions[k].numpy())
        for j in range(4):
            both = either = 0
            for y in range(size):
                for x in range(size):
                    both += bool(region[y, x] and masks[j, y, x])
                    either += bool(region[y, x] or masks[j, y, x])
            assert iou[k, j] == pytest.approx(both / either if either else 0.0)
    assert not regions[2].any() and (iou[2] == 0).all()
    none_active = torch.zeros((0, size, size), dtype=torch.bool)
    r_area, m_area, inter = region_overlaps(none_active, torch.from_numpy(masks[:0]))
    assert r_area.shape == (0,) and m_area.shape == (0,) and inter.shape == (0, 0)
    assert iou_from_counts(*region_overlaps(none_active, torch.from_numpy(masks))).shape == (0, 4)


def test_upsample_rejects_other_shapes_and_keeps_empty() -> None:
    with pytest.raises(ValueError, match=r"expected maps \[k, h, w\]"):
        upsample_maps(torch.zeros(1, 2, 3, 3), 6)
    assert upsample_maps(torch.zeros(0, 3, 3), 6).shape == (0, 6, 6)
