"""Global average pooling over a layer's spatial grid: the one pooling every consumer uses.

ResNet applies it after layer4; LaViSE applies it to every model and layer, so the explainer
always sees the same kind of vector whatever produced it. An object's vector is the pooling of
the maps weighted by its mask on the feature grid, pool(F * M): :func:`masked_pool`.
"""

from __future__ import annotations

import torch


def pool(maps: torch.Tensor) -> torch.Tensor:
    """Mean over the last two (h', w') axes: ``[..., d, h', w'] -> [..., d]``."""
    return maps.mean(dim=(-2, -1))


def masked_pool(weights: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """pool(F * M) for every (image, object): ``weights [B, K, h', w']``, ``maps [B, d, h', w']``
    -> ``[B, K, d]``, the mean over all h' x w' cells (a cell outside the mask counts as zero)."""
    return torch.einsum("bkhw,bdhw->bkd", weights, maps) / (maps.shape[-2] * maps.shape[-1])
