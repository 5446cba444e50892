"""The feature extractor contract: a layer's output as maps ``[N, C, H, W]``, for every model.

LaViSE explains the filters (channels) of one layer, so every consumer sees that layer's output
as convolutional maps: channels on axis 1, the spatial grid on axes 2 and 3. The one place a
layer output is turned into that layout is :func:`as_maps`, which applies the layout adapter of
:mod:`lavise.models.token_grid`: a vision transformer's tokens ``[N, k + h*w, C]`` (its ``k``
class/distillation/register tokens dropped) and a channels-last grid ``[N, h, w, C]`` (Swin)
are converted there, and nowhere else.

Two ways to get the maps, sharing the layer check and the layout:

- :class:`FeatureExtractor` truncates the model at the layer with torchvision's FX feature
  extraction: the forward pass stops there and the modules after it (VGG's 100M-parameter
  classifier, for one) are not kept. This is what the features stage runs, for speed and memory.
  A timm model (whose code FX does not always trace) is truncated by a hook on the layer that
  ends the forward pass there (:class:`HookTruncated`): the same maps, the later modules kept.
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

from lavise.models import timm_models
from lavise.models.backbones import build_model, choices
from lavise.models.token_grid import check_grid_layer, extra_tokens, from_maps, layout_of, to_maps


def as_maps(output: torch.Tensor, layer: str, extra: int = 0) -> torch.Tensor:
    """A layer's output in the contract's layout ``[N, C, H, W]``.

    A channels-first 4-D output passes through unchanged (the same tensor); channels-last grids
    and token sequences (``extra``: the model's tokens before the patches, dropped) are converted
    by :func:`lavise.models.token_grid.to_maps`; anything else is a ValueError naming the layer.
    """
    return to_maps(output, layer, extra)


class _Reached(Exception):
    """Raised by :class:`HookTruncated`'s hook to end the forward pass at the layer."""

    def __init__(self, output: torch.Tensor) -> None:
        super().__init__("layer reached")
        self.output = output


class HookTruncated(nn.Module):
    """``model`` run only up to ``layer``: ``{"maps": the layer's first output}``, as FX's body gives."""

    def __init__(self, model: nn.Module, layer: str) -> None:
        super().__init__()
        self.model = model
        self.layer = layer
        model.get_submodule(layer).register_forward_hook(self._stop)

    @staticmethod
    def _stop(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        raise _Reached(output)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        try:
            self.model(images)
        except _Reached as reached:
            return {"maps": reached.output}
        raise RuntimeError(f"layer {self.layer!r} was not called in the forward pass")


def check_layer(model: nn.Module, layer: str, name: str) -> None:
    """ValueError listing the module names of ``model`` (called ``name``) unless ``layer`` is one."""
    layers = [module_name for module_name, _ in model.named_modules() if module_name]
    if layer not in layers:
        raise ValueError(f"unknown layer {layer!r} for {name}; valid: {choices(layers)}")


class FeatureExtractor(nn.Module):
    """Normalised images ``[B, 3, H, W]`` -> the layer's maps ``[B, d, h', w']`` (truncated model)."""

    def __init__(self, body: nn.Module, name: str, weights: str, layer: str, extra: int = 0) -> None:
        super().__init__()
        self.body = body
        self.model_name = name
        self.weights = weights
        self.layer = layer
        self.extra_tokens = extra
        self.layout: dict[str, Any] | None = None  # the layer output's layout, once a batch has run

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        output = self.body(images)["maps"]
        self.layout = layout_of(tuple(output.shape), self.extra_tokens)
        return as_maps(output, self.layer, self.extra_tokens)


def build_feature_extractor(
    name: str,
    weights: str,
    layer: str,
    *,
    num_classes: int | None = None,
    seed: int = 0,
    what: str = "weights",
    crop: int | None = None,
) -> FeatureExtractor:
    """Frozen extractor mapping normalised images to the maps of ``layer`` of model ``name``.

    ``weights``: as :func:`lavise.models.backbones.build_model` takes it; ``layer``: a module
    name as in ``model.named_modules()``. ``seed`` only matters for ``none``. ``what`` names
    ``weights`` in errors (the stages pass ``backbone.weights``). With ``crop``, one dummy pass
    of the whole model first checks that the layer's output is a grid at that input size (a
    ValueError naming its shape and the layers that are, otherwise).
    """
    model = build_model(name, weights, num_classes=num_classes, seed=seed, what=what)
    check_layer(model, layer, name)
    if crop is not None:
        check_grid_layer(model, layer, crop, name)
    extra = extra_tokens(model)
    if timm_models.is_timm(name):
        body: nn.Module = HookTruncated(model, layer)
    else:
        body = create_feature_extractor(model, return_nodes={layer: "maps"})
    extractor = FeatureExtractor(body, name, weights, layer, extra).eval()
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
        self.extra_tokens = extra_tokens(model)
        self.retain_grad = retain_grad
        self.ablate = list(ablate)
        self._maps: torch.Tensor | None = None
        self._handle: RemovableHandle = model.get_submodule(layer).register_forward_hook(self._hook)

    def _hook(self, _module: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
        """Keep the first call's maps; hand a copy (ablated if asked) on to the rest of the model.

        The copy goes back into the layer's own layout (tokens, channels-last) for the modules
        after it; the extra tokens a ViT's maps drop pass on unchanged.
        """
        if self._maps is not None:  # a later call of a module called twice: left alone
            return None
        maps = as_maps(output, self.layer, self.extra_tokens)
        if self.ablate:
            channels = torch.tensor(self.ablate, dtype=torch.long, device=maps.device)
            maps = maps.index_fill(1, channels, 0.0)
        if self.retain_grad:
            if maps.requires_grad:
                maps.retain_grad()
            else:
                maps = maps.detach().requires_grad_(True)
        self._maps = maps
        return from_maps(maps.clone(), output, self.extra_tokens)

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
