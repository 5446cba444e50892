"""The two classifiers the saliency methods explain, and the checks made before any image is read.

The trained model is the backbone with its classifier head (``weights: target`` or any
torchvision/checkpoint weights); the control is the same architecture randomly initialised from
a seed (``lavise.models.backbones.seeded_model``). A model whose classes are the dataset's
categories says so in a ``config.json`` beside its checkpoint (the `target` stage writes one,
listing them in head order); any other model (ImageNet weights) has no ground truth here, and
its predicted top-1 class is explained instead.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import fx, nn

from lavise.models.backbones import build_model, classifier_head_name, seeded_model
from lavise.models.checkpoints import looks_like_checkpoint
from lavise.models.head import head_from_layer
from lavise.saliency.methods import Explainee

log = logging.getLogger(__name__)


def cam_layer(model: nn.Module, layer: str) -> nn.Module:
    """Module ``layer`` of ``model``, which must come before its classifier head (a CAM explains a
    class score through a layer that feeds it); ValueError naming both otherwise."""
    names = [name for name, _ in model.named_modules()]
    head = classifier_head_name(model)
    if head is None:
        raise ValueError("the model has no classifier head (no Linear or Conv2d layer): there is no class to explain")
    if layer not in names:
        raise ValueError(f"layer {layer!r} is not a module of the model")
    if layer == head or head.startswith(f"{layer}.") or names.index(layer) > names.index(head):
        raise ValueError(f"layer {layer!r} is not before the classifier head {head!r}: a CAM needs a layer feeding it")
    return model.get_submodule(layer)


def model_categories(weights: str) -> list[str] | None:
    """The dataset categories of a checkpoint's classes, in head order, from the ``config.json``
    beside it; None for torchvision weights, random weights or a checkpoint without one."""
    if weights.lower() == "none" or not looks_like_checkpoint(weights):
        return None
    config = Path(weights).parent / "config.json"
    if not config.is_file():
        return None
    categories = json.loads(config.read_text()).get("categories")
    return [str(c) for c in categories] if isinstance(categories, list) else None


@dataclass(frozen=True)
class Models:
    """The trained model and the random-weights control, and the categories of their classes
    (None: not the dataset's, explain the top-1 class)."""

    trained: Explainee
    random: Explainee
    categories: list[str] | None


def load_models(
    name: str, weights: str, layer: str, seed: int, device: torch.device, what: str, num_classes: int | None = None
) -> Models:
    """Both models on ``device`` in eval mode; ``what`` names the weights setting in errors,
    ``num_classes`` is a checkpoint's (None = inferred from its head)."""
    categories = model_categories(weights)
    trained = build_model(name, weights, num_classes=num_classes, what=what)
    head = classifier_head_name(trained)
    classes = None if head is None else int(trained.get_submodule(head).weight.shape[0])
    if categories is not None and classes != len(categories):
        raise ValueError(f"{what} {weights}: {classes} classes but its config.json lists {len(categories)} categories")
    random = seeded_model(name, seed, classes).eval()
    multi_label = categories is not None  # the target CNN is trained one-vs-rest (BCE)
    probabilities = torch.sigmoid if multi_label else (lambda logits: torch.softmax(logits, dim=1))
    explainees = [
        Explainee(model.to(device), cam_layer(model, layer), probabilities, head_or_none(model, layer))
        for model in (trained, random)
    ]
    return Models(explainees[0], explainees[1], categories)


def head_or_none(model: nn.Module, layer: str) -> nn.Module | None:
    """The network from ``layer`` onward, or None (logged) where it cannot be cut there: Ablation-CAM
    then re-runs the whole model per ablated batch, which is slower but gives the same maps."""
    try:
        return head_from_layer(model, layer)
    except (ValueError, TypeError, fx.proxy.TraceError) as error:
        log.info("saliency: Ablation-CAM runs the whole %s per batch (%s)", type(model).__name__, error)
        return None
