"""Backbones by name and weights, the classifier head, seeded initialisation; errors that list the valid choices."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from torchvision.models import get_model

from lavise.models.backbones import (
    build_model,
    classification_models,
    classifier_head_name,
    layer_names,
    seeded_model,
    weight_names,
)
from lavise.models.classifier import build_classifier
from lavise.models.extractor import build_feature_extractor


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


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
    with pytest.raises(
        ValueError, match=rf"^weights {re.escape(str(path))} does not fit {name}: 2 tensors of another shape"
    ):
        build_model(name, str(path), num_classes=5)


def test_a_checkpoint_of_another_architecture_says_which_layers_and_what_it_looks_like(tmp_path: Path) -> None:
    """Was a multi-kilobyte load_state_dict error not naming the setting."""
    with torch.device("meta"):
        shapes = get_model("resnet50", weights=None).state_dict()
    path = tmp_path / "resnet50.safetensors"
    save_file({k: torch.zeros(v.shape, dtype=v.dtype) for k, v in shapes.items()}, str(path))
    with pytest.raises(ValueError) as caught:
        build_feature_extractor("resnet18", str(path), "layer4", what="backbone.weights")
    message = str(caught.value)
    assert message == (
        f"backbone.weights {path} does not fit resnet18: "
        "198 unexpected keys (layer1.0.bn3.bias, layer1.0.bn3.weight, layer1.0.conv3.weight, ...); "
        "24 tensors of another shape (first layer1.0.conv1.weight: checkpoint [64, 64, 1, 1], "
        "resnet18 [64, 64, 3, 3]); the checkpoint has 320 tensors in bn1, layer1, layer2, layer3, layer4, "
        "conv1, fc; classifier fc.weight [1000, 2048] (it looks like resnet50 with 1000 classes): give a "
        "checkpoint of resnet18, or the architecture the checkpoint is of"
    )
    with torch.device("meta"):
        vgg = get_model("vgg11", weights=None).state_dict()
    torch.save({k: torch.zeros(v.shape) for k, v in vgg.items()}, tmp_path / "vgg11.pt")
    with pytest.raises(ValueError, match=r"102 missing keys \(conv1\.weight, bn1\.weight, bn1\.bias, \.\.\.\); "):
        build_model("resnet18", str(tmp_path / "vgg11.pt"))  # no fc.weight to read num_classes from: still this


def test_a_checkpoint_without_batchnorm_step_counters_still_loads(tmp_path: Path) -> None:
    """load_state_dict fills in a missing num_batches_tracked: the fit check does not call it missing."""
    torch.manual_seed(2)
    state = {k: v for k, v in get_model("resnet18", weights=None).state_dict().items() if "num_batches" not in k}
    torch.save(state, tmp_path / "old.pt")
    loaded = build_model("resnet18", str(tmp_path / "old.pt")).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    state.pop("layer1.0.conv1.weight")
    torch.save(state, tmp_path / "short.pt")
    with pytest.raises(ValueError, match=r"does not fit resnet18: 1 missing keys \(layer1\.0\.conv1\.weight\); "):
        build_model("resnet18", str(tmp_path / "short.pt"))


def test_weights_that_cannot_be_downloaded_say_where_to_put_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Offline, `IMAGENET1K_V1` was a URLError traceback."""

    def offline(*args: object, **kwargs: object) -> None:
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "urlopen", offline)
    url = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
    expected = (
        f"backbone.weights IMAGENET1K_V1: could not download ResNet18_Weights.IMAGENET1K_V1 from {url} "
        "([Errno -3] Temporary failure in name resolution); download that file elsewhere and put it at "
        f"{tmp_path / 'hub' / 'checkpoints' / 'resnet18-f37072fd.pth'}, or give a checkpoint path"
    )
    with pytest.raises(FileNotFoundError, match=f"^{re.escape(expected)}$"):
        build_feature_extractor("resnet18", "IMAGENET1K_V1", "layer4", what="backbone.weights")
    with pytest.raises(FileNotFoundError, match=f"^{re.escape(expected.replace('backbone.weights', 'target.init'))}$"):
        build_classifier("resnet18", 3, "IMAGENET1K_V1", seed=0, what="target.init")


def test_random_init_is_seeded_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    first = build_model("resnet18", "none").state_dict()
    assert torch.equal(torch.random.get_rng_state(), before)
    second = build_model("resnet18", "none").state_dict()
    other = build_model("resnet18", "none", seed=1).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["conv1.weight"], other["conv1.weight"])


def test_seeded_model_is_the_seeded_torchvision_model_and_keeps_the_global_rng() -> None:
    torch.manual_seed(7)
    expected = get_model("resnet18", weights=None, num_classes=3).state_dict()
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    model = seeded_model("resnet18", 7, num_classes=3)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert model.fc.out_features == 3
    assert all(torch.equal(model.state_dict()[k], expected[k]) for k in expected)


@pytest.mark.parametrize(
    ("name", "head"),
    [
        ("resnet18", "fc"),
        ("mobilenet_v3_large", "classifier.3"),
        ("squeezenet1_0", "classifier.1"),
        ("vgg16", "classifier.6"),
    ],
)
def test_classifier_head_is_the_last_linear_or_conv(name: str, head: str) -> None:
    with torch.device("meta"):
        model = get_model(name, weights=None)
    assert classifier_head_name(model) == head


def test_classifier_head_of_a_hand_built_model() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Sequential(nn.Linear(4, 5), nn.Conv2d(5, 2, 1)), nn.ReLU())
    assert classifier_head_name(model) == "2.1"
    assert classifier_head_name(nn.Sequential(nn.ReLU(), nn.Flatten())) is None


def test_names_of_models_layers_and_weights() -> None:
    assert {"resnet18", "vgg16", "alexnet"} <= set(classification_models())
    assert classification_models() == sorted(classification_models())
    layers = layer_names("resnet18")
    assert layers[:4] == ["conv1", "bn1", "relu", "maxpool"] and "layer4.1.conv2" in layers and "" not in layers
    assert weight_names("resnet18") == ["IMAGENET1K_V1", "DEFAULT"]
