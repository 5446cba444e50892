"""Any torchvision classification model by name, with the weights asked for.

Which model names, layer names and weights names are valid is answered here (the registry is
torchvision's), so a mistyped name fails at once with the valid choices, before an hour of
decoding is spent. Which module is the classifier head and how a model is initialised
from a seed are answered here once, for the backbone and for the `target` stage's CNN.
"""

from __future__ import annotations

import logging

import torch
import torchvision
from torch import nn
from torchvision.models import get_model, get_model_weights, list_models

from lavise.models.checkpoints import CHECKPOINT_SUFFIXES, infer_num_classes, load_state_dict, looks_like_checkpoint

log = logging.getLogger(__name__)


def choices(values: list[str]) -> str:
    """The valid values of a setting, as error messages list them."""
    return ", ".join(values)


def classification_models() -> list[str]:
    """Every torchvision classification model name (the valid model names)."""
    return sorted(list_models(module=torchvision.models))


def skeleton(name: str) -> nn.Module:
    """Model ``name`` built on the meta device: its module tree without weights, memory or download."""
    with torch.device("meta"):
        return get_model(name, weights=None)


def layer_names(name: str) -> list[str]:
    """Module names of model ``name`` (the valid layer names)."""
    return [module_name for module_name, _ in skeleton(name).named_modules() if module_name]


def weight_names(name: str) -> list[str]:
    """torchvision weights names of model ``name`` (``DEFAULT`` included)."""
    return list(get_model_weights(name).__members__)


def classifier_head_name(model: nn.Module) -> str | None:
    """The classifier head: the last Linear/Conv2d module in ``named_modules`` order (None if none).

    The one rule for "which module is the head": num_classes of a checkpoint is read from it,
    and the `target` stage replaces it and sets its bias.
    """
    names = [name for name, module in model.named_modules() if isinstance(module, (nn.Linear, nn.Conv2d))]
    return names[-1] if names else None


def seeded_model(name: str, seed: int, num_classes: int | None = None) -> nn.Module:
    """Model ``name`` randomly initialised from ``seed``, leaving the global RNG as it was.

    The randomised-model control and the target CNN's initial weights are then the same on
    every run, whatever ran before.
    """
    class_kwargs = {} if num_classes is None else {"num_classes": num_classes}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_model(name, weights=None, **class_kwargs)


def resolve_weights_enum(name: str, weights: str) -> torchvision.models.WeightsEnum:
    """The torchvision weights member named ``weights`` (``IMAGENET1K_V1`` or
    ``ResNet18_Weights.IMAGENET1K_V1``); ValueError listing the valid names otherwise."""
    enum = get_model_weights(name)
    member = weights.split(".")[-1] if weights.startswith(f"{enum.__name__}.") else weights
    if member not in enum.__members__:
        raise ValueError(
            f"unknown weights {weights!r} for {name}; valid: {choices(weight_names(name))}, none, "
            f"or a path to a {'/'.join(CHECKPOINT_SUFFIXES)} state_dict"
        )
    return enum[member]


def _from_checkpoint(name: str, path: str, num_classes: int | None) -> nn.Module:
    """Model ``name`` with a user state_dict; ``num_classes`` None reads it from the head."""
    state = load_state_dict(path)
    classes = (
        num_classes if num_classes is not None else infer_num_classes(state, classifier_head_name(skeleton(name)), name)
    )
    model = get_model(name, weights=None, num_classes=classes)
    model.load_state_dict(state, strict=True)
    log.info("loaded %s from %s (%d classes)", name, path, classes)
    return model


def build_model(name: str, weights: str, *, num_classes: int | None = None, seed: int = 0) -> nn.Module:
    """The full classification model with the requested weights, in eval mode.

    ``weights``: a torchvision weights name (``IMAGENET1K_V1``, ``DEFAULT``), ``none`` (random
    initialisation from ``seed``, the randomised-model control) or a path to a state_dict.
    """
    models = classification_models()
    if name not in models:
        raise ValueError(f"unknown model {name!r}; valid: {choices(models)}")
    if weights.lower() == "none":
        model = seeded_model(name, seed, num_classes)
    elif looks_like_checkpoint(weights):
        model = _from_checkpoint(name, weights, num_classes)
    else:
        weights_enum = resolve_weights_enum(name, weights)
        class_kwargs = {} if num_classes is None else {"num_classes": num_classes}
        model = get_model(name, weights=weights_enum, **class_kwargs)
        log.info("loaded %s with torchvision weights %s", name, weights_enum)
    return model.eval()
