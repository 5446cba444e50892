"""The network from a layer onward equals the whole network, from cached float16 maps too."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models import resnet18
from torchvision.models.feature_extraction import create_feature_extractor

from lavise.features.cache import DTYPE
from lavise.models.extractor import FeatureExtractor, LayerProbe
from lavise.models.head import head_from_layer, run_head


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return resnet18(num_classes=4).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("layer", ["layer4", "layer4.0"])
def test_head_on_layer_maps_equals_full_model(model: nn.Module, images: torch.Tensor, layer: str) -> None:
    head = head_from_layer(model, layer)
    extractor = FeatureExtractor(create_feature_extractor(model, {layer: "maps"}), "resnet18", "none", layer)
    with torch.inference_mode():
        expected = model(images)
        maps = extractor(images)
    torch.testing.assert_close(run_head(head, maps), expected, rtol=0, atol=1e-5)


def test_head_on_cached_float16_maps_equals_pixels(model: nn.Module, images: torch.Tensor) -> None:
    """The cache stores maps as float16: the head on them is the pixels' logits up to that rounding."""
    head = head_from_layer(model, "layer4")
    probe = LayerProbe(model, "layer4")
    try:
        with torch.inference_mode():
            out = probe(images)
    finally:
        probe.remove()
    cached = torch.from_numpy(out.maps.numpy().astype(DTYPE).astype(np.float32))
    torch.testing.assert_close(run_head(head, cached), out.logits, rtol=1e-2, atol=1e-2)


def test_zeroed_channels_equal_the_probes_ablation(model: nn.Module, images: torch.Tensor) -> None:
    head = head_from_layer(model, "layer4")
    probe = LayerProbe(model, "layer4", ablate=[1, 5, 9])
    try:
        with torch.inference_mode():
            out = probe(images)
    finally:
        probe.remove()
    torch.testing.assert_close(run_head(head, out.maps), out.logits, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        ("layer4.0.conv1", "cannot be run from layer 'layer4.0.conv1'.*residual"),
        ("layer9", "unknown layer 'layer9'"),
    ],
)
def test_layers_the_head_cannot_run_from(model: nn.Module, layer: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        head_from_layer(model, layer)


def test_model_without_a_classifier_head() -> None:
    model = nn.Sequential(nn.ReLU(), nn.Flatten())
    with pytest.raises(ValueError, match="no classifier head"):
        head_from_layer(model, "0")


def test_module_called_twice_is_refused() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = nn.Conv2d(3, 3, 1)
            self.fc = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.block(self.block(x)).mean(dim=(2, 3)))

    with pytest.raises(ValueError, match="called 2 times"):
        head_from_layer(Twice(), "block")
