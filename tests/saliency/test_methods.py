"""The method adapters on a tiny model whose class 0 detects brightness."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from lavise import options
from lavise.metrics.pointing_game import pointing_hit
from lavise.saliency.methods import REGISTRY, top_channels
from tests.saliency.tiny import SETTINGS, SIZE, bright_square, tiny_models


def test_registry_lists_the_allowed_methods() -> None:
    assert tuple(REGISTRY) == options.SALIENCY_METHODS


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_method_points_at_what_the_class_detects(name: str) -> None:
    models = tiny_models()
    crop, image, mask = bright_square()
    # LIME hides superpixels with their mean colour by default: a uniform square would not change
    settings = dataclasses.replace(SETTINGS, lime_hide_color=0.0)
    maps = REGISTRY[name].explain(models.trained, image, crop, [0, 1], settings)
    assert maps.shape == (2, SIZE, SIZE) and maps.dtype == np.float32
    assert pointing_hit(maps[0], mask, 0)
    again = REGISTRY[name].explain(models.trained, image, crop, [0, 1], settings)
    assert np.array_equal(maps, again)  # seeded: same maps on every run


def test_top_channels_keeps_the_highest_mean_channels() -> None:
    import torch

    activations = torch.zeros(1, 4, 2, 2)
    activations[0, 2] = 3.0
    activations[0, 0] = 1.0
    kept = top_channels(2)(activations)
    assert kept.shape == (1, 2, 2, 2)
    assert kept[0, :, 0, 0].tolist() == [3.0, 1.0]
    assert top_channels(None) is None
    assert top_channels(8)(activations) is activations


def test_top_channel_ablation_picks_the_highest_mean_channels() -> None:
    from lavise.saliency.methods import TopChannelAblation

    activations = np.zeros((4, 2, 2), dtype=np.float32)
    activations[1], activations[3] = 2.0, 1.0
    assert TopChannelAblation(2).activations_to_be_ablated(activations).tolist() == [1, 3]
    assert TopChannelAblation(None).activations_to_be_ablated(activations).tolist() == [0, 1, 2, 3]
