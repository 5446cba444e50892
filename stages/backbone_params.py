"""The backbone checks of params.yaml, for the stages that load a model (target, features, evaluate).

Kept apart from `stages.params` so that the stages which never build a model (download,
annotations, train) neither import nor, in dvc.yaml, depend on the model code: an edit to the
backbones module re-runs only the stages that load one.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lavise.models import backbones
from lavise.models.checkpoints import looks_like_checkpoint
from stages.params import fail


def validate_backbone(params: Mapping[str, Any], root: Path) -> None:
    """Model, layer and weights against what `lavise.models.backbones` will accept, before any work."""
    backbone = params["backbone"]
    models = backbones.classification_models()
    if backbone["name"] not in models:
        fail("backbone.name", backbone["name"], "a torchvision classification model: " + ", ".join(models))
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
