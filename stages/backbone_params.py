"""The backbone checks of params.yaml, for the stages that load a model (target, features, evaluate).

Kept apart from `stages.params` so that the stages which never build a model (download,
annotations, train) neither import nor, in dvc.yaml, depend on the model code: an edit to the
backbones module re-runs only the stages that load one.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lavise.data.transforms import Preprocessing, resolve_preprocessing
from lavise.models import backbones, timm_models
from lavise.models.checkpoints import looks_like_checkpoint
from lavise.models.presets import weights_preset
from stages.params import ParamsError, fail


def _check_name(name: str) -> None:
    """`backbone.name`: a torchvision classifier, or `timm/<name>` that timm knows."""
    if timm_models.is_timm(name):
        try:
            timm_models.timm_model_name(name)
        except ValueError as error:
            raise ParamsError(f"params.yaml: `backbone.name`: {error}.") from None
        return
    models = backbones.classification_models()
    if name not in models:
        fail(
            "backbone.name",
            name,
            "a torchvision classification model (" + ", ".join(models) + f") or {timm_models.PREFIX}<a timm model>",
        )


def stage_preprocessing(params: Mapping[str, Any], weights: str) -> Preprocessing:
    """The preprocessing of `backbone.name` with ``weights`` (`backbone.weights`, `target` resolved
    or not): its preset with the `transform` values that are set on top; ParamsError naming
    `transform` when they do not fit together."""
    try:
        return resolve_preprocessing(weights_preset(params["backbone"]["name"], weights), params["transform"])
    except ValueError as error:
        raise ParamsError(f"params.yaml: `transform` with backbone {params['backbone']['name']}: {error}.") from None


def validate_backbone(params: Mapping[str, Any], root: Path) -> None:
    """Model, layer, weights and preprocessing against what `lavise.models` will accept, before any work."""
    backbone = params["backbone"]
    _check_name(backbone["name"])
    if timm_models.is_timm(backbone["name"]) and backbone["weights"] == "target":
        fail(
            "backbone.weights",
            "target",
            "none | pretrained | a checkpoint path (the target stage trains torchvision models)",
        )
    layers = backbones.layer_names(backbone["name"])
    if backbone["layer"] not in layers:
        top = [n for n in layers if "." not in n]
        fail(
            "backbone.layer",
            backbone["layer"],
            f"a module name of {backbone['name']} (top level: {', '.join(top)}; nested names such as "
            f"{layers[min(len(layers) - 1, 5)]} are allowed too)",
        )
    for section, key, special in (("backbone", "weights", ("none", "target")), ("target", "init", ("none",))):
        value = params[section][key]
        if value in special:
            continue
        if looks_like_checkpoint(value):
            path = Path(value) if Path(value).is_absolute() else root / value
            if not path.is_file():
                fail(f"{section}.{key}", value, "an existing checkpoint file (.pt, .pth, .safetensors)")
            continue
        names = backbones.weight_names(backbone["name"])
        if value not in names:
            fail(f"{section}.{key}", value, " | ".join([*special, *names, "a checkpoint path"]))
    stage_preprocessing(params, backbone["weights"])
