"""The extractor contract: [N, C, H, W] maps from the truncated model and from the hooked full
model (logits, gradients, channel ablation), and the one layout function."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models import get_model

from lavise.models.backbones import build_model
from lavise.models.extractor import LayerProbe, as_maps, build_feature_extractor, layer_output_shape

CASES = [
    ("resnet18", "layer4.1.conv2", (512, 2, 2)),
    ("resnet50", "layer4", (2048, 2, 2)),
    ("alexnet", "features.10", (256, 3, 3)),
    ("vgg16", "features.10", (256, 16, 16)),
    ("densenet121", "features.denseblock2", (512, 8, 8)),
    ("mobilenet_v3_large", "features.10", (80, 4, 4)),
    ("efficientnet_b0", "features.5", (112, 4, 4)),
]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.mark.parametrize(("name", "layer", "shape"), CASES)
def test_every_model_builds_with_nested_layer(name: str, layer: str, shape: tuple[int, int, int]) -> None:
    extractor = build_feature_extractor(name, "none", layer)
    assert not extractor.training
    assert all(not p.requires_grad for p in extractor.parameters())
    assert layer_output_shape(extractor, 64) == shape


def test_truncated_maps_equal_hooked_full_model() -> None:
    torch.manual_seed(0)
    model = get_model("resnet18", weights=None).eval()
    path_state = {k: v.clone() for k, v in model.state_dict().items()}
    captured: list[torch.Tensor] = []
    model.layer3.register_forward_hook(lambda _m, _i, out: captured.append(out))
    images = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        model(images)
    extractor = build_feature_extractor("resnet18", "none", "layer3")
    extractor.body.load_state_dict(
        {k: v for k, v in path_state.items() if k in extractor.body.state_dict()}, strict=True
    )
    with torch.inference_mode():
        maps = extractor(images)
    torch.testing.assert_close(maps, captured[0])


def test_unknown_layer_lists_module_names() -> None:
    with pytest.raises(ValueError, match=r"unknown layer 'layer5'.*layer4\.1\.conv2"):
        build_feature_extractor("resnet18", "none", "layer5")
    with pytest.raises(ValueError, match=r"unknown layer 'layer5' for ResNet.*layer4\.1\.conv2"):
        LayerProbe(get_model("resnet18", weights=None), "layer5")


def test_layout_passes_4d_maps_through_and_rejects_others_naming_the_layer() -> None:
    maps = torch.randn(2, 3, 4, 5)
    assert as_maps(maps, "layer4") is maps
    with pytest.raises(ValueError, match=r"layer 'fc' outputs shape \(2, 10\): not a spatial grid \[N, C, h, w\]"):
        as_maps(torch.zeros(2, 10), "fc")
    with pytest.raises(ValueError, match=r"layer 'encoder' outputs shape \(2, 50, 768\)"):
        as_maps(torch.zeros(2, 50, 768), "encoder")


def test_a_layer_with_non_map_output_is_rejected_by_both_extractors() -> None:
    with pytest.raises(ValueError, match=r"layer 'fc' outputs shape \(1, 1000\)"):
        layer_output_shape(build_feature_extractor("resnet18", "none", "fc"), 64)
    with pytest.raises(ValueError, match=r"layer 'fc' outputs shape \(1, 1000\)"):
        LayerProbe(build_model("resnet18", "none"), "fc")(torch.zeros(1, 3, 64, 64))


# A tiny CNN: head = modules 0-2 (up to the probed layer "2"), tail = the rest.
def _tiny_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 5),
    ).eval()


@pytest.mark.parametrize("frozen", [False, True])
def test_probe_gradient_equals_autograd_of_the_logit_wrt_the_layer_output(frozen: bool) -> None:
    model = _tiny_model()
    model.requires_grad_(not frozen)
    images = torch.randn(2, 3, 8, 8)
    by_hand = model[:3](images).detach().requires_grad_(True)  # the layer output [2, 6, 8, 8]
    expected = torch.autograd.grad(model[3:](by_hand)[:, 4].sum(), by_hand)[0]

    probe = LayerProbe(model, "2", retain_grad=True)
    logits, maps = probe(images)
    logits[:, 4].sum().backward()
    torch.testing.assert_close(maps.detach(), by_hand.detach())
    assert maps.grad is not None and maps.grad.shape == (2, 6, 8, 8)
    torch.testing.assert_close(maps.grad, expected)
    assert expected.abs().sum() > 0


def test_probe_ablation_equals_the_tail_on_maps_with_those_channels_zeroed() -> None:
    model = _tiny_model()
    images = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        zeroed = model[:3](images).clone()
        zeroed[:, [1, 4]] = 0.0
        expected = model[3:](zeroed)
        plain_logits = model(images)
        probe = LayerProbe(model, "2", ablate=[1, 4])
        logits, maps = probe(images)
    torch.testing.assert_close(logits, expected)
    torch.testing.assert_close(maps, zeroed)
    assert not torch.allclose(logits, plain_logits)
    probe.ablate = []
    with torch.no_grad():
        torch.testing.assert_close(probe(images).logits, plain_logits)
    probe.remove()
    with torch.no_grad():
        torch.testing.assert_close(model(images), plain_logits)


@pytest.mark.parametrize("layer", ["layer3", "layer1.0.relu", "layer2.1.bn2"])
def test_probe_maps_equal_the_truncated_extractor(layer: str) -> None:
    """layer1.0.relu is called twice per block (first call kept); layer2.1.bn2's output is
    modified in place downstream (``out += identity``), which must not reach the probe's maps."""
    extractor = build_feature_extractor("resnet18", "none", layer)
    model = build_model("resnet18", "none")
    images = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        expected = extractor(images)
        logits, maps = LayerProbe(model, layer)(images)
        full = model(images)
    torch.testing.assert_close(maps, expected, rtol=0, atol=0)
    torch.testing.assert_close(logits, full)
    assert logits.shape == (2, 1000)
