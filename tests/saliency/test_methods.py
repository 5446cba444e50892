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


def test_shared_score_cam_gives_the_library_weights_for_every_target() -> None:
    import torch
    from pytorch_grad_cam import ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from lavise.saliency.methods import SharedScoreCAM
    from tests.saliency.tiny import tiny_model

    model = tiny_model(seed=3, detector=False)
    _, image, _ = bright_square(64)
    batch = image[None].expand(3, -1, -1, -1).contiguous()
    targets = [ClassifierOutputTarget(c) for c in (0, 1, 2)]
    with ScoreCAM(model, [model[2]]) as library, SharedScoreCAM(model, [model[2]]) as shared:
        library.batch_size = shared.batch_size = 3  # 4 channels: a full and a partial batch
        expected = library(input_tensor=batch, targets=targets)
        maps = shared(input_tensor=batch, targets=targets)
    assert maps.shape == (3, 64, 64)
    np.testing.assert_allclose(maps, expected, atol=1e-6)
    assert not np.allclose(maps[0], maps[1])  # the classes differ: each target has its own weights
    different = torch.stack([image, image.flip(-1)])  # not copies of one image: the library's own loop
    with ScoreCAM(model, [model[2]]) as library, SharedScoreCAM(model, [model[2]]) as shared:
        np.testing.assert_allclose(
            shared(input_tensor=different, targets=targets[:2]), library(input_tensor=different, targets=targets[:2])
        )


@pytest.mark.parametrize("channels", [None, 2])
def test_ablation_cam_on_the_head_equals_the_library_on_the_whole_model(channels: int | None) -> None:
    import torch
    import torchvision
    from pytorch_grad_cam import AblationCAM

    from lavise.models.head import head_from_layer
    from lavise.saliency.methods import Explainee, TopChannelAblation, cam_targets

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5).eval()
    model.layer4 = torch.nn.Sequential(model.layer4, torch.nn.Conv2d(512, 6, 1), torch.nn.ReLU())
    model.fc = torch.nn.Linear(6, 5)  # 6 channels at the CAM layer: the library's whole-model loop stays short
    layer = model.layer4
    explainee = Explainee(model, layer, torch.sigmoid, head_from_layer(model, "layer4"))
    image = torch.randn(3, 96, 96)
    settings = dataclasses.replace(SETTINGS, ablationcam_channels=channels, batch_size=4)
    maps = REGISTRY["ablationcam"].explain(explainee, image, image, [1, 3], settings)
    batch = image[None].expand(2, -1, -1, -1).contiguous()
    ablation = TopChannelAblation(channels)
    with AblationCAM(model, [layer], ablation_layer=ablation, batch_size=4) as cam:
        expected = cam(input_tensor=batch, targets=cam_targets("ablationcam", explainee, [1, 3]))
    assert maps.shape == (2, 96, 96) and maps.max() > 0.99
    np.testing.assert_allclose(maps, expected, atol=1e-5)
    headless = dataclasses.replace(explainee, head=None)
    np.testing.assert_allclose(REGISTRY["ablationcam"].explain(headless, image, image, [1, 3], settings), expected)
