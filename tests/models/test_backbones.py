"""Backbones by name, weights and (nested) layer; errors that list the valid choices."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torchvision.models import get_model

from lavise.models.backbones import build_feature_extractor, build_model, layer_output_shape, pool_features

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


def test_unknown_model_lists_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'resnet19'.*resnet18.*vgg16"):
        build_feature_extractor("resnet19", "none", "layer4")


def test_unknown_weights_lists_choices() -> None:
    with pytest.raises(ValueError, match=r"IMAGENET1K_V1, DEFAULT, none"):
        build_feature_extractor("resnet18", "IMAGENET1K_V9", "layer4")


def test_unknown_layer_lists_module_names() -> None:
    with pytest.raises(ValueError, match=r"unknown layer 'layer5'.*layer4\.1\.conv2"):
        build_feature_extractor("resnet18", "none", "layer5")


def test_missing_checkpoint_path(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        build_feature_extractor("resnet18", str(tmp_path / "model.safetensors"), "layer4")


def test_weights_from_preseeded_torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(3)
    seeded = get_model("resnet18", weights=None).state_dict()
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(seeded, checkpoints / "resnet18-f37072fd.pth")  # ResNet18_Weights.IMAGENET1K_V1
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    for weights in ["IMAGENET1K_V1", "DEFAULT", "ResNet18_Weights.IMAGENET1K_V1"]:
        loaded = build_model("resnet18", weights).state_dict()
        assert loaded.keys() == seeded.keys()
        assert all(torch.equal(loaded[k], seeded[k]) for k in seeded)
    extractor = build_feature_extractor("resnet18", "IMAGENET1K_V1", "layer4")
    torch.testing.assert_close(extractor.body.state_dict()["layer4.1.conv2.weight"], seeded["layer4.1.conv2.weight"])


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
@pytest.mark.parametrize(("name", "head"), [("resnet18", "fc.weight"), ("mobilenet_v3_large", "classifier.3.weight")])
def test_user_checkpoint_infers_num_classes(tmp_path: Path, suffix: str, name: str, head: str) -> None:
    torch.manual_seed(5)
    state = get_model(name, weights=None, num_classes=7).state_dict()
    path = tmp_path / f"model{suffix}"
    if suffix == ".pt":
        torch.save({f"module.{k}": v for k, v in state.items()}, path)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    model = build_model(name, str(path))
    assert model.state_dict()[head].shape[0] == 7
    assert all(torch.equal(model.state_dict()[k], state[k]) for k in state)
    with pytest.raises(RuntimeError, match="size mismatch"):
        build_model(name, str(path), num_classes=5)


def test_pool_features_hand_computed() -> None:
    maps = torch.tensor([[[[1.0, 2.0], [3.0, 6.0]], [[0.0, 0.0], [0.0, 4.0]]]])
    torch.testing.assert_close(pool_features(maps), torch.tensor([[3.0, 1.0]]))


def test_random_init_is_seeded_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    first = build_model("resnet18", "none").state_dict()
    assert torch.equal(torch.random.get_rng_state(), before)
    second = build_model("resnet18", "none").state_dict()
    other = build_model("resnet18", "none", seed=1).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["conv1.weight"], other["conv1.weight"])
