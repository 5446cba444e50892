"""The target CNN before training: a torchvision classifier with our number of categories,
initialised from nothing, torchvision weights or a checkpoint, its head's bias at the prior."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lavise.models.backbones import (
    check_state_fits,
    classifier_head_name,
    download_hint,
    resolve_weights_enum,
    seeded_model,
    weight_names,
)
from lavise.models.checkpoints import load_state_dict, looks_like_checkpoint


def initial_state_dict(init: str, architecture: str, what: str = "init") -> dict[str, torch.Tensor] | None:
    """The state_dict named by ``init``: torchvision weights, a checkpoint path, or None for 'none'.

    ``what`` names the setting in error messages (the stage passes its params key).
    """
    if init == "none":
        return None
    if looks_like_checkpoint(init):
        return load_state_dict(init, what)
    try:
        weights = resolve_weights_enum(architecture, init)
    except ValueError:
        raise ValueError(
            f"{what} {init!r} is not 'none', a checkpoint path, or a weights name of "
            f"{architecture} ({', '.join(weight_names(architecture))})"
        ) from None
    with download_hint(weights, what, init):  # weights are fetched on first use
        return weights.get_state_dict(progress=False)


def build_classifier(architecture: str, num_classes: int, init: str, seed: int, what: str = "init") -> nn.Module:
    """torchvision ``architecture`` with ``num_classes`` outputs, initialised from ``init``.

    Parameters start from ``seed`` (the global RNG is left untouched). The classifier head (last
    Linear layer) of an initial state_dict is always discarded: its classes are not ours.
    Everything else must match the architecture exactly. ``what`` names ``init`` in errors.
    """
    model = seeded_model(architecture, seed, num_classes)
    state = initial_state_dict(init, architecture, what)
    if state is None:
        return model
    head = classifier_head_name(model)
    check_state_fits(model, state, architecture, init, what, skip=head)
    model.load_state_dict(
        {k: v for k, v in state.items() if head is None or not k.startswith(f"{head}.")}, strict=False
    )
    return model


def set_head_bias_to_prior(model: nn.Module, positive_rate: np.ndarray) -> None:
    """Start each category's logit at the log-odds of its training frequency ``positive_rate``
    [C] (clipped to [1e-3, 1 - 1e-3]), so the first steps do not spend themselves pushing every
    logit down from 0 (most labels are negative). A model without a matching biased head is left
    as it is."""
    head = classifier_head_name(model)
    if head is None:
        return
    linear = model.get_submodule(head)
    if linear.bias is None or linear.bias.shape[0] != len(positive_rate):
        return
    rate = np.clip(positive_rate, 1e-3, 1 - 1e-3)
    with torch.no_grad():
        linear.bias.copy_(torch.from_numpy(np.log(rate / (1 - rate))).to(linear.bias.dtype))
