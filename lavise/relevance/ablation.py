"""The ablation test: zero a set of filters at the layer and re-score the classifier.

Removing the filters the lasso selected should hurt the classes far more than removing as many
random filters (Oramas et al., ICLR 2019). Every score here runs the network from the layer
onward (:func:`lavise.models.head.head_from_layer`) on stored maps, never on pixels, so one pass
costs the head alone. Quality is per-class AP against the labels (mAP: its mean over the scored
classes); random draws come from ``numpy.random.default_rng([seed, *key])``, the same on every
run and independent across µ, classes and repeats.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lavise.metrics.average_precision import average_precision
from lavise.models.head import run_head


def ablated_scores(
    head: nn.Module, maps: np.ndarray, drop: Sequence[int], batch_size: int, device: torch.device
) -> np.ndarray:
    """Logits ``[N, C]`` of maps ``[N, d, h', w']`` (memory-mapped or not) with channels ``drop`` zeroed."""
    channels = torch.as_tensor(np.asarray(drop, dtype=np.int64), device=device)
    scores = []
    for start in range(0, maps.shape[0], batch_size):
        batch = torch.from_numpy(np.asarray(maps[start : start + batch_size], dtype=np.float32)).to(device)
        if len(channels):
            batch = batch.index_fill(1, channels, 0.0)  # [B, d, h', w'] with channels `drop` zero
        scores.append(run_head(head, batch).float().cpu())
    return torch.cat(scores).numpy()


def random_filters(d: int, k: int, seed: int, key: Sequence[int]) -> np.ndarray:
    """``k`` distinct filters of ``d``, sorted, drawn from the stream (seed, *key)."""
    rng = np.random.default_rng([seed, *key])
    return np.sort(rng.choice(d, size=k, replace=False))


@dataclass(frozen=True)
class AblationSetup:
    """What every pass shares: the head, the maps ``[N, d, h', w']``, the labels ``[N, C]``, the
    scored classes ``[C]`` (bool) and the pass settings."""

    head: nn.Module
    maps: np.ndarray
    labels: np.ndarray
    scored: np.ndarray
    batch_size: int
    device: torch.device

    def ap(self, drop: Sequence[int]) -> np.ndarray:
        """Per-class AP ``[C]`` with ``drop`` ablated (NaN for a class that is not scored)."""
        scores = ablated_scores(self.head, self.maps, drop, self.batch_size, self.device)
        ap = average_precision(scores, self.labels).numpy()
        return np.where(self.scored, ap, np.nan)


def mean_ap(ap: np.ndarray) -> float:
    """mAP over the classes with an AP (NaN if none)."""
    valid = ~np.isnan(ap)
    return float(ap[valid].mean()) if valid.any() else float("nan")


def ablation_row(setup: AblationSetup, selected: np.ndarray, original: np.ndarray, repeats: int, seed: int, key: int):
    """The study's row for one µ: selected ``[d]`` bool (the union over classes).

    Returns a dict: ``dropped``, ``selected_map``, ``random_map`` (mean over ``repeats`` draws),
    ``random_sd`` (their sample sd, ddof 1; 0 for one repeat) and ``random_maps`` (each draw).
    """
    drop = np.flatnonzero(selected)
    d = setup.maps.shape[1]
    draws = [mean_ap(setup.ap(random_filters(d, len(drop), seed, (key, r)))) for r in range(repeats)]
    return {
        "dropped": int(len(drop)),
        "original_map": mean_ap(original),
        "selected_map": mean_ap(setup.ap(drop)),
        "random_map": float(np.mean(draws)),
        "random_sd": float(np.std(draws, ddof=1)) if repeats > 1 else 0.0,
        "random_maps": [float(v) for v in draws],
    }


def class_rows(
    setup: AblationSetup, weights: np.ndarray, original: np.ndarray, repeats: int, seed: int, key: int
) -> list[dict]:
    """Per scored class c: its own filters (non-zero in ``weights`` ``[C, d]``) ablated against as
    many random ones: AP of c before, after, and after random (mean of ``repeats`` draws)."""
    d = setup.maps.shape[1]
    rows = []
    for c in np.flatnonzero(setup.scored):
        drop = np.flatnonzero(weights[c])
        ap_selected = setup.ap(drop)[c]
        ap_random = float(
            np.mean([setup.ap(random_filters(d, len(drop), seed, (key, c, r)))[c] for r in range(repeats)])
        )
        rows.append(
            {
                "class_index": int(c),
                "selected": int(len(drop)),
                "ap": float(original[c]),
                "ap_selected": float(ap_selected),
                "ap_random": ap_random,
                "ap_drop_selected": float(original[c] - ap_selected),
                "ap_drop_random": float(original[c] - ap_random),
            }
        )
    return rows
