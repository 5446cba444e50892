"""Global average pooling over a layer's spatial grid: the one pooling every consumer uses.

ResNet applies it after layer4; LaViSE applies it to every model and layer, so the explainer
always sees the same kind of vector whatever produced it.
"""

from __future__ import annotations

import torch


def pool(maps: torch.Tensor) -> torch.Tensor:
    """Mean over the last two (h', w') axes: ``[..., d, h', w'] -> [..., d]``."""
    return maps.mean(dim=(-2, -1))
