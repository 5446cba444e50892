"""Global average pooling and its masked form pool(F * M), by hand."""

from __future__ import annotations

import torch

from lavise.features.pooling import masked_pool, pool


def test_pool_features_hand_computed() -> None:
    maps = torch.tensor([[[[1.0, 2.0], [3.0, 6.0]], [[0.0, 0.0], [0.0, 4.0]]]])
    torch.testing.assert_close(pool(maps), torch.tensor([[3.0, 1.0]]))


def test_masked_pool_hand_computed() -> None:
    maps = torch.tensor([[[[1.0, 2.0], [3.0, 6.0]], [[0.0, 0.0], [0.0, 4.0]]]])  # [1, 2, 2, 2]
    weights = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.5], [0.0, 1.0]], [[1.0, 1.0], [1.0, 1.0]]]])
    # Means over all 4 cells. Object 0, cell (0, 0) only: (1/4, 0/4). Object 1, weight 0.5 at
    # (0, 1) and 1 at (1, 1): ((0.5 * 2 + 6) / 4, (0.5 * 0 + 4) / 4). Object 2 covers all: pool.
    expected = torch.tensor([[[0.25, 0.0], [1.75, 1.0], [3.0, 1.0]]])
    torch.testing.assert_close(masked_pool(weights, maps), expected)
    assert masked_pool(weights, maps).shape == (1, 3, 2)
