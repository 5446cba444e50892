"""params.yaml for transformers and timm models: names, weights, and the `transform` preset rules."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from stages.backbone_params import stage_preprocessing, validate_backbone
from stages.params import ParamsError, validate_params
from stages.target import target_preprocessing

ROOT = Path(__file__).resolve().parents[2]
UNSET = {"resize": None, "crop": None, "interpolation": None, "mean": None, "std": None}


@pytest.fixture(scope="module")
def defaults() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def _with(defaults: dict, backbone: dict, transform: dict | None = None) -> dict:
    params = copy.deepcopy(defaults)
    params["backbone"].update(backbone)
    params["transform"].update(transform or {})
    return params


def test_timm_and_transformer_backbones_are_accepted(defaults: dict) -> None:
    for backbone in (
        {"name": "timm/resnet10t", "weights": "pretrained", "layer": "layer4"},
        {"name": "timm/vit_tiny_patch16_224.augreg_in21k", "weights": "none", "layer": "blocks.11"},
        {"name": "vit_b_16", "weights": "none", "layer": "encoder.layers.encoder_layer_11"},
        {"name": "swin_t", "weights": "IMAGENET1K_V1", "layer": "features.7"},
    ):
        params = _with(defaults, backbone)
        validate_params(params, ROOT)
        validate_backbone(params, ROOT)


@pytest.mark.parametrize(
    ("backbone", "message"),
    [
        (
            {"name": "timm/vit_tiny_patch16_22"},
            r"`backbone.name`: unknown timm model 'timm/vit_tiny_patch16_22'; close",
        ),
        ({"name": "timm/resnet10t", "weights": "target"}, r"`backbone.weights` = 'target' is invalid; allowed: none "),
        ({"name": "timm/resnet10t", "weights": "DEFAULT"}, r"`backbone.weights` = 'DEFAULT' .* none \| target \| pre"),
        ({"name": "timm/resnet10t", "weights": "none", "layer": "blocks.1"}, r"`backbone.layer` = 'blocks.1'"),
    ],
)
def test_bad_timm_settings_name_the_key(defaults: dict, backbone: dict, message: str) -> None:
    with pytest.raises(ParamsError, match=message):
        validate_backbone(_with(defaults, {"layer": "layer4", **backbone}), ROOT)


def test_the_preset_fills_what_transform_leaves_null(defaults: dict) -> None:
    swag = {"name": "vit_b_16", "weights": "IMAGENET1K_SWAG_E2E_V1", "layer": "encoder"}
    preset = stage_preprocessing(_with(defaults, swag, UNSET), "IMAGENET1K_SWAG_E2E_V1")
    assert (preset.resize, preset.crop, preset.interpolation) == (384, 384, "bicubic")
    overridden = stage_preprocessing(_with(defaults, swag), "IMAGENET1K_SWAG_E2E_V1")  # the demo's 256 / 224
    assert (overridden.resize, overridden.crop, overridden.interpolation) == (256, 224, "bicubic")
    with pytest.raises(ParamsError, match=r"`transform` with backbone vit_b_16: crop 384 is larger than resize 256"):
        validate_backbone(_with(defaults, swag, {"crop": None}), ROOT)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("interpolation", "lanczos", r"`transform.interpolation` = 'lanczos' is invalid; allowed: bilinear \| bicubic"),
        ("mean", [0.5, 0.5], r"`transform.mean` = \[0.5, 0.5\] is invalid; allowed: a list of 3 numbers"),
        ("std", [0.5, 0.0, 0.5], r"`transform.std` = \[0.5, 0.0, 0.5\] is invalid; allowed: a list of 3 numbers > 0"),
    ],
)
def test_bad_transform_values_name_the_key(defaults: dict, key: str, value: object, message: str) -> None:
    params = copy.deepcopy(defaults)
    params["transform"][key] = value
    with pytest.raises(ParamsError, match=message):
        validate_params(params, ROOT)


def test_the_target_stage_refuses_statistics_it_does_not_train_with(defaults: dict) -> None:
    assert target_preprocessing(defaults).preset == "default"
    with pytest.raises(ValueError, match=r"leave transform.interpolation, transform.mean and transform.std null"):
        target_preprocessing(_with(defaults, {}, {"mean": [0.5, 0.5, 0.5]}))
