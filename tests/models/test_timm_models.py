"""timm models by name (lavise/models/timm_models.py) and the preprocessing presets (lavise/models/presets.py)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants
from timm.data import resolve_model_data_config

from lavise.data.transforms import DEFAULT_PREPROCESSING, resolve_preprocessing
from lavise.models import timm_models
from lavise.models.backbones import build_model, check_model_name, layer_names
from lavise.models.checkpoints import save_checkpoint
from lavise.models.presets import weights_preset

CNN = "timm/resnet10t"  # the smallest timm ResNet: a CNN test model that builds in a fraction of a second


def test_unknown_timm_names_are_one_line_with_close_matches() -> None:
    with pytest.raises(ValueError, match=r"unknown timm model 'timm/resnet10 '; close matches: timm/resnet10t, "):
        check_model_name("timm/resnet10 ")
    with pytest.raises(ValueError, match=r"unknown timm model 'timm/resnet10t.no_such_tag'; close matches: "):
        check_model_name("timm/resnet10t.no_such_tag")
    with pytest.raises(ValueError, match=r"unknown model 'resnet '; valid: .*, or timm/<name> for a timm model"):
        check_model_name("resnet ")
    check_model_name("timm/resnet10t.c3_in1k")  # a pretrained tag is part of the name


def test_layers_are_module_names_and_none_is_a_seeded_init() -> None:
    assert {"conv1", "layer4", "layer4.0.conv2", "fc"} <= set(layer_names(CNN))
    first, second = build_model(CNN, "none", seed=3), build_model(CNN, "none", seed=3)
    other = build_model(CNN, "none", seed=4)
    for (key, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), key
    assert not torch.equal(first.conv1[0].weight, other.conv1[0].weight)
    with pytest.raises(ValueError, match=r"unknown weights 'IMAGENET1K_V1' for timm/resnet10t; valid: pretrained"):
        build_model(CNN, "IMAGENET1K_V1")


def test_a_checkpoint_loads_with_its_classes(tmp_path: Path) -> None:
    model = build_model(CNN, "none", num_classes=7, seed=1)
    save_checkpoint(model, tmp_path / "model.safetensors")
    loaded = build_model(CNN, str(tmp_path / "model.safetensors"))
    assert loaded.fc.out_features == 7
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def _hub_cache(root: Path, repo: str, state: dict[str, torch.Tensor]) -> None:
    """Write ``state`` where huggingface_hub keeps a download of ``repo``'s model.safetensors."""
    revision = "0" * 40
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(revision)
    (folder / "snapshots" / revision).mkdir(parents=True)
    save_checkpoint(state, folder / "snapshots" / revision / "model.safetensors")


def test_pretrained_loads_the_file_where_timm_looks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    repo = timm_models.create_skeleton(CNN).pretrained_cfg["hf_hub_id"]
    with pytest.raises(FileNotFoundError) as error:  # nothing there yet: one line saying what to do
        build_model(CNN, "pretrained", what="backbone.weights")
    message = str(error.value)
    assert message.startswith(f"backbone.weights pretrained: timm could not load the pretrained weights of {CNN}")
    assert f"from {repo} (cached under {tmp_path})" in message and "\n" not in message
    planted = build_model(CNN, "none", seed=9).state_dict()
    _hub_cache(tmp_path, repo, planted)
    model = build_model(CNN, "pretrained")
    for key, value in planted.items():
        assert torch.equal(model.state_dict()[key], value), key


def test_presets_follow_the_weights() -> None:
    vit = weights_preset("timm/vit_tiny_patch16_224", "none")
    config = resolve_model_data_config(timm_models.create_skeleton("timm/vit_tiny_patch16_224"))
    assert config["input_size"] == (3, 224, 224) and config["crop_pct"] == 0.9
    assert vit == {
        "resize": math.floor(224 / 0.9),  # 248: timm's eval transform
        "crop": 224,
        "interpolation": "bicubic",
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "source": "timm:vit_tiny_patch16_224.augreg_in21k_ft_in1k",
    }
    swin = weights_preset("swin_t", "IMAGENET1K_V1")
    assert (swin["resize"], swin["crop"], swin["interpolation"]) == (232, 224, "bicubic")
    assert swin["source"] == "torchvision:Swin_T_Weights.IMAGENET1K_V1"
    assert weights_preset("vit_b_16", "IMAGENET1K_SWAG_E2E_V1")["crop"] == 384
    for weights in ("none", "target", "models/mine.safetensors"):
        assert weights_preset("resnet18", weights) is None


def test_set_values_override_the_preset_and_no_preset_is_the_default() -> None:
    unset = {"resize": None, "crop": None, "interpolation": None, "mean": None, "std": None}
    assert resolve_preprocessing(None, unset) == DEFAULT_PREPROCESSING
    assert resolve_preprocessing(None, {"resize": 256, "crop": 224}) == DEFAULT_PREPROCESSING
    preset = weights_preset("swin_t", "IMAGENET1K_V1")
    mixed = resolve_preprocessing(preset, {**unset, "resize": 256, "mean": [0.5, 0.4, 0.3]})
    assert (mixed.resize, mixed.crop, mixed.interpolation) == (256, 224, "bicubic")
    assert mixed.mean == (0.5, 0.4, 0.3) and mixed.std == DEFAULT_PREPROCESSING.std
    assert mixed.preset == "torchvision:Swin_T_Weights.IMAGENET1K_V1"
    with pytest.raises(ValueError, match=r"crop 384 is larger than resize 256"):
        resolve_preprocessing(weights_preset("vit_b_16", "IMAGENET1K_SWAG_E2E_V1"), {**unset, "resize": 256})
