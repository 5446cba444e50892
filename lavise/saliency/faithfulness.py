"""Faithfulness of a saliency map to the model: pytorch-grad-cam's ROAD (Rong et al. 2022).

``ROADCombined``: for each percentile p, the (100 - p)% most relevant pixels (MoRF: those at or
above the map's p-th percentile) or the (100 - p)% least relevant (LeRF) are replaced by a noisy
linear interpolation of their neighbours and the class logit is read again; the score is
``(mean LeRF change - mean MoRF change) / 2`` over the percentiles. Higher = removing what the
map calls salient hurts the class more than removing the rest: the map explains the model.
The imputation's noise draws from torch's global generator, so it is seeded here and the
generator is left as it was.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from pytorch_grad_cam.metrics.road import ROADCombined
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn


def road_scores(
    model: nn.Module,
    image: torch.Tensor,
    maps: np.ndarray,
    classes: Sequence[int],
    percentiles: Sequence[int],
    seed: int,
) -> np.ndarray:
    """ROAD score ``[K]`` of maps ``[K, H, W]`` for ``classes`` ``[K]`` on the normalised ``image`` ``[3, H, W]``."""
    device = next(model.parameters()).device
    batch = image[None].expand(len(classes), -1, -1, -1).contiguous().to(device)  # [K, 3, H, W]
    targets = [ClassifierOutputTarget(int(c)) for c in classes]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        scores = ROADCombined(percentiles=list(percentiles))(batch, maps.astype(np.float32), targets, model)
    return np.asarray(scores, dtype=np.float64).reshape(len(classes))
