"""The feature extractor contract: a layer's output as maps ``[N, C, H, W]``, for every model.

LaViSE explains the filters (channels) of one layer, so every consumer sees that layer's output
as convolutional maps: channels on axis 1, the spatial grid on axes 2 and 3. The one place a
layer output is turned into that layout is :func:`as_maps`; a layer whose output is laid out
otherwise (a vision transformer's tokens ``[N, 1 + h*w, C]``, a channels-last grid
``[N, h, w, C]``) is converted there, and nowhere else.

Two ways to get the maps, sharing the layer check and the layout:

- :class:`FeatureExtractor` truncates the model at the layer with torchvision's FX feature
  extraction: the forward pass stops there and the modules after it (VGG's 100M-parameter
  classifier, for one) are not kept. This is what the features stage runs, for speed and memory.
- :class:`LayerProbe` keeps the whole model and hooks the layer: one forward pass gives the logits
  and the maps, can keep the maps' gradient (saliency such as Grad-CAM) and can zero a set of
  channels at the layer for everything downstream (ablation).

A module called twice in one forward pass (ResNet's shared ReLU) gives its first call's output,
in both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle
from torchvision.models.feature_extraction import create_feature_extractor

from lavise.models.backbones import build_model, choices


def as_maps(output: torch.Tensor, layer: str) -> torch.Tensor:
    """A layer's output in the contract's layout ``[N, C, H, W]``.

    A 4-D output is a convolutional map and passes through unchanged (the same tensor). Other
    layouts would be converted here; until one is supported they are rejected, naming the layer.
    """
    if output.ndim == 4:
        return output
    raise ValueError(
        f"layer {layer!r} outputs shape {tuple(output.shape)}, not convolutional maps [N, C, H, W]; "
        "only 4-D layer outputs are supported"
    )


def check_layer(model: nn.Module, layer: str, name: str) -> None:
    """ValueError listing the module names of ``model`` (called ``name``) unless ``layer`` is one."""
    layers = [module_name for module_name, _ in model.named_modules() if module_name]
    if layer not in layers:
        raise ValueError(f"unknown layer {layer!r} for {name}; valid: {choices(layers)}")


class FeatureExtractor(nn.Module):
    """Normalised images ``[B, 3, H, W]`` -> the layer's maps ``[B, d, h', w']`` (truncated model)."""

    def __init__(self, body: nn.Module, name: str, weights: str, layer: str) -> None:
        super().__init__()
        self.body = body
        self.model_name = name
        self.weights = weights
        self.layer = layer

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return as_maps(self.body(images)["maps"], self.layer)


def build_feature_extractor(
    name: str, weights: str, layer: str, *, num_classes: int | None = None, seed: int = 0, what: str = "weights"
) -> FeatureExtractor:
    """Frozen extractor mapping normalised images to the maps of ``layer`` of model ``name``.

    ``weights``: as :func:`lavise.models.backbones.build_model` takes it; ``layer``: a module
    name as in ``model.named_modules()``. ``seed`` only matters for ``none``. ``what`` names
    ``weights`` in errors (the stages pass ``backbone.weights``).
    """
    model = build_model(name, weights, num_classes=num_classes, seed=seed, what=what)
    check_layer(model, layer, name)
    body = create_feature_extractor(model, return_nodes={layer: "maps"})
    extractor = FeatureExtractor(body, name, weights, layer).eval()
    extractor.requires_grad_(False)
    return extractor


def layer_output_shape(extractor: nn.Module, crop: int) -> tuple[int, int, int]:
    """(d, h', w') of the extractor's maps for a ``crop`` x ``crop`` input, by one dummy pass."""
    parameter = next(extractor.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    with torch.inference_mode():
        maps = extractor(torch.zeros(1, 3, crop, crop, device=device))
    return int(maps.shape[1]), int(maps.shape[2]), int(maps.shape[3])


class ProbeOutput(NamedTuple):
    """One forward pass through a :class:`LayerProbe`."""

    logits: torch.Tensor  # [B, n_classes]
    maps: torch.Tensor  # [B, d, h', w'], after any ablation; .grad after backward if kept


class LayerProbe(nn.Module):
    """The full model with a forward hook on ``layer``: logits and the layer's maps in one pass.

    ``retain_grad``: the returned maps keep their gradient (``maps.grad`` after ``backward``),
    also when the model is frozen; run it outside ``torch.inference_mode``. ``ablate``: channels
    of the layer set to zero before the rest of the model sees them. The maps handed downstream
    are a copy, so an in-place operation after the layer (ResNet's ``out += identity``) leaves
    the returned maps as the layer gave them.
    """

    def __init__(self, model: nn.Module, layer: str, *, retain_grad: bool = False, ablate: Sequence[int] = ()) -> None:
        super().__init__()
        check_layer(model, layer, type(model).__name__)
        self.model = model
        self.layer = layer
        self.retain_grad = retain_grad
        self.ablate = list(ablate)
        self._maps: torch.Tensor | None = None
        self._handle: RemovableHandle = model.get_submodule(layer).register_forward_hook(self._hook)

    def _hook(self, _module: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
        """Keep the first call's maps; hand a copy (ablated if asked) on to the rest of the model.

        The copy is in the maps' layout, which is the layer's own while :func:`as_maps` only
        passes 4-D outputs through.
        """
        if self._maps is not None:  # a later call of a module called twice: left alone
            return None
        maps = as_maps(output, self.layer)
        if self.ablate:
            channels = torch.tensor(self.ablate, dtype=torch.long, device=maps.device)
            maps = maps.index_fill(1, channels, 0.0)
        if self.retain_grad:
            if maps.requires_grad:
                maps.retain_grad()
            else:
                maps = maps.detach().requires_grad_(True)
        self._maps = maps
        return maps.clone()

    def forward(self, images: torch.Tensor) -> ProbeOutput:
        self._maps = None
        logits = self.model(images)
        maps, self._maps = self._maps, None
        if maps is None:
            raise RuntimeError(f"layer {self.layer!r} was not called in the forward pass")
        return ProbeOutput(logits, maps)

    def remove(self) -> None:
        """Detach the hook: the wrapped model runs as before the probe."""
        self._handle.remove()
