"""The layout adapter: any layer output that is a spatial grid, as convolutional maps ``[N, C, h, w]``.

Three layouts are grids, and the rule that tells them apart uses only the shape (crops are
square, so a grid is square):

- ``channels_first`` ``[N, C, h, w]`` (CNNs, MaxViT, a ViT's patch projection): the 4-D output
  whose last two sizes are equal passes through unchanged (the same tensor);
- ``channels_last`` ``[N, h, w, C]`` (Swin's stages, timm's NHWC blocks): a 4-D output whose sizes
  1 and 2 are equal and 2 and 3 are not, permuted;
- ``tokens`` ``[N, k + h*w, C]`` (a ViT's encoder blocks): the model's ``k`` extra tokens (class,
  distillation, registers: timm's ``num_prefix_tokens``, torchvision's class token) come first and
  are dropped; the remaining ``h*w`` must be a square and are laid out row-major as the patches.
  A layer before the extra tokens are added (timm's ``patch_embed``) has a square number of
  tokens and nothing is dropped (``k + h*w`` = ``g*g`` has no solution with both ``h*w``, ``g*g`` > 0
  for k = 1; for k > 1 the extra tokens are tried first).

A filter is a channel ``C`` of the layer, as for a CNN. Anything else (a pooled vector, the logits,
a token count that is not a square plus the extra tokens) is a ValueError naming the layer and
its shape; :func:`grid_layers` finds the layers that would work, for that message.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

CHANNELS_FIRST, CHANNELS_LAST, TOKENS = "channels_first", "channels_last", "tokens"


def extra_tokens(model: nn.Module) -> int:
    """Tokens before the patch tokens in ``model``'s sequences: timm's ``num_prefix_tokens``, 1 for
    torchvision's ViT (its ``class_token``), else 0."""
    prefix = getattr(model, "num_prefix_tokens", None)
    if isinstance(prefix, int):
        return prefix
    return 1 if isinstance(getattr(model, "class_token", None), torch.Tensor) else 0


def layout_of(shape: tuple[int, ...], extra: int) -> dict[str, Any] | None:
    """How a layer output of ``shape`` is a grid: ``{"layout", "dropped_tokens", "grid"}``; None if it is none."""
    if len(shape) == 4:
        if shape[2] == shape[3] or shape[1] != shape[2]:
            return {"layout": CHANNELS_FIRST, "dropped_tokens": 0, "grid": [shape[2], shape[3]]}
        return {"layout": CHANNELS_LAST, "dropped_tokens": 0, "grid": [shape[1], shape[2]]}
    if len(shape) == 3:
        for dropped in dict.fromkeys((extra, 0)):
            side = math.isqrt(max(shape[1] - dropped, 0))
            if side >= 1 and side * side == shape[1] - dropped:
                return {"layout": TOKENS, "dropped_tokens": dropped, "grid": [side, side]}
    return None


def shape_problem(shape: tuple[int, ...], extra: int) -> str:
    """Why an output of ``shape`` is no grid, in a clause."""
    if len(shape) == 3:
        return (
            f"{shape[1]} tokens are not a square number of patches plus the model's {extra} extra "
            "(class/distillation/register) tokens"
        )
    return "not a spatial grid [N, C, h, w], [N, h, w, C] or tokens [N, extra + h*w, C]"


def to_maps(output: torch.Tensor, layer: str, extra: int) -> torch.Tensor:
    """``output`` of ``layer`` as ``[N, C, h, w]`` (rules in the module docstring)."""
    layout = layout_of(tuple(output.shape), extra) if isinstance(output, torch.Tensor) else None
    if layout is None:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        problem = shape_problem(shape, extra) if isinstance(shape, tuple) else "not a tensor"
        raise ValueError(f"layer {layer!r} outputs shape {shape}: {problem}")
    if layout["layout"] == CHANNELS_FIRST:
        return output
    if layout["layout"] == CHANNELS_LAST:
        return output.permute(0, 3, 1, 2)
    height, width = layout["grid"]
    patches = output[:, layout["dropped_tokens"] :]  # [N, h*w, C], row-major patches
    return patches.reshape(output.shape[0], height, width, output.shape[2]).permute(0, 3, 1, 2)


def from_maps(maps: torch.Tensor, output: torch.Tensor, extra: int) -> torch.Tensor:
    """``maps`` ``[N, C, h, w]`` back in the layout of the layer's ``output`` (the inverse of
    :func:`to_maps`; the dropped extra tokens are taken from ``output``), for the rest of the model."""
    layout = layout_of(tuple(output.shape), extra)
    if layout is None or layout["layout"] == CHANNELS_FIRST:
        return maps
    if layout["layout"] == CHANNELS_LAST:
        return maps.permute(0, 2, 3, 1)
    patches = maps.flatten(2).transpose(1, 2)  # [N, h*w, C]
    return torch.cat([output[:, : layout["dropped_tokens"]], patches], dim=1)


def output_shapes(model: nn.Module, crop: int) -> dict[str, tuple[int, ...] | None]:
    """Every named module's output shape (its first call's; None: not a tensor) for one
    ``crop`` x ``crop`` input, by one forward pass with hooks; in module order, uncalled modules left out."""
    shapes: dict[str, tuple[int, ...] | None] = {}
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue

        def record(_module: nn.Module, _inputs: Any, output: Any, name: str = name) -> None:
            if name not in shapes:
                shapes[name] = tuple(output.shape) if isinstance(output, torch.Tensor) else None

        handles.append(module.register_forward_hook(record))
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    try:
        with torch.inference_mode():
            model(torch.zeros(1, 3, crop, crop, device=device))
    finally:
        for handle in handles:
            handle.remove()
    return {name: shapes[name] for name, _ in model.named_modules() if name in shapes}  # module order


def grid_layers(model: nn.Module, crop: int) -> list[str]:
    """The module names of ``model`` whose output at ``crop`` is a grid (in module order)."""
    extra = extra_tokens(model)
    shapes = output_shapes(model, crop)
    return [name for name, shape in shapes.items() if shape is not None and layout_of(shape, extra) is not None]


def _layer_list(names: list[str], limit: int = 80) -> str:
    """The shallowest names (in module order, whole depth levels while they fit in ``limit``), then
    how many deeper ones there are besides, with an example."""
    shown: list[str] = []
    for depth in sorted({name.count(".") for name in names}):
        level = [name for name in names if name.count(".") == depth]
        if len(shown) + len(level) > limit:
            shown = shown or level[:limit]
            break
        shown += level
    kept = set(shown)
    rest = [name for name in names if name not in kept]
    text = ", ".join(name for name in names if name in kept)
    return text + (f"; and {len(rest)} deeper names such as {rest[0]}" if rest else "")


def check_grid_layer(model: nn.Module, layer: str, crop: int, name: str) -> dict[str, Any]:
    """The grid layout of ``layer`` of ``model`` (called ``name``) at ``crop``, or a ValueError naming
    the layer, its output shape and the layers that are grids."""
    extra = extra_tokens(model)
    shapes = output_shapes(model, crop)
    shape = shapes.get(layer)
    layout = layout_of(shape, extra) if shape is not None else None
    if layout is not None:
        return layout
    valid = [n for n, s in shapes.items() if s is not None and layout_of(s, extra) is not None]
    shown = _layer_list(valid)
    if shape is not None:
        what = f"outputs shape {shape}: {shape_problem(shape, extra)}"
    else:
        what = "outputs no tensor" if layer in shapes else "is not called in the forward pass"
    raise ValueError(f"layer {layer!r} of {name} {what}; layers with a grid output at crop {crop}: {shown}")
