"""Faithfulness of a saliency map to the model: pytorch-grad-cam's ROAD (Rong et al. 2022).

``ROADCombined``: for each percentile p, the (100 - p)% most relevant pixels (MoRF: those at or
above the map's p-th percentile) or the (100 - p)% least relevant (LeRF) are replaced by a noisy
linear interpolation of their neighbours (the library's ``NoisyLinearImputer``) and the class
logit is read again; the score is ``(mean LeRF change - mean MoRF change) / 2`` over the
percentiles. Higher = removing what the map calls salient hurts the class more than removing
the rest: the map explains the model.

The perturbations are the library's, drawn in its order; what differs is the batching: the
library's ``ROADCombined`` re-scores the unperturbed image for every percentile, direction and
method, here it is scored once per image and the perturbed images of every method go through
the model together (the same scores: tests/saliency). The imputation's noise draws from torch's
global generator, so each method's draws are seeded here and the generator is left as it was.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from pytorch_grad_cam.metrics.perturbation_confidence import RemoveLeastRelevantFirst, RemoveMostRelevantFirst
from pytorch_grad_cam.metrics.road import NoisyLinearImputer
from torch import nn

REMOVALS = (RemoveLeastRelevantFirst, RemoveMostRelevantFirst)  # ROADCombined scores LeRF first


def perturbed_images(image: torch.Tensor, maps: np.ndarray, percentiles: Sequence[int], seed: int) -> torch.Tensor:
    """The library's perturbations of ``image`` ``[3, H, W]`` for maps ``[K, H, W]``, in its order:
    ``[2 (LeRF, MoRF), P, K, 3, H, W]`` flattened to ``[2 * P * K, 3, H, W]``."""
    rows = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for removal in REMOVALS:
            for percentile in percentiles:
                perturb = removal(percentile, NoisyLinearImputer())
                rows.extend(perturb(image, torch.from_numpy(cam)) for cam in maps.astype(np.float32))
    return torch.stack(rows)


def road_scores(
    model: nn.Module,
    image: torch.Tensor,
    maps: Mapping[str, np.ndarray],
    classes: Sequence[int],
    percentiles: Sequence[int],
    seed: int,
    batch_size: int = 32,
) -> dict[str, np.ndarray]:
    """ROAD score ``[K]`` of each method's maps ``[K, H, W]`` for ``classes`` ``[K]`` on the
    normalised ``image`` ``[3, H, W]``; every method's noise is drawn from ``seed``."""
    device = next(model.parameters()).device
    image = image.cpu()
    stacked = torch.cat([perturbed_images(image, m, percentiles, seed) for m in maps.values()])  # [R, 3, H, W]
    index = torch.as_tensor(list(classes))
    with torch.no_grad():
        original = model(image[None].to(device))[0, index].float().cpu()  # [K]
        starts = range(0, len(stacked), batch_size)
        scored = [model(stacked[i : i + batch_size].to(device)).float().cpu() for i in starts]  # [b, classes]
    k, p = len(index), len(percentiles)
    logits = torch.cat(scored).reshape(len(maps), 2, p, k, -1)  # [M, 2, P, K, classes]
    change = logits[..., index].diagonal(dim1=-2, dim2=-1) - original  # [M, 2, P, K]
    lerf, morf = change.mean(dim=2).unbind(dim=1)  # [M, K] each
    road = ((lerf - morf) / 2).numpy().astype(np.float64)
    return {name: road[i] for i, name in enumerate(maps)}
