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
from typing import Any

import numpy as np
import torch
from torch import nn

from lavise.metrics.average_precision import average_precision
from lavise.models.head import run_head


def sweep_scores(
    head: nn.Module,
    maps: np.ndarray,
    drops: Sequence[Sequence[int]],
    columns: Sequence[int | None],
    batch_size: int,
    device: torch.device,
) -> list[np.ndarray]:
    """Logits of maps ``[N, d, h', w']`` (memory-mapped or not) under each ablation ``drops[k]``
    (channels zeroed), all in one pass over the maps: each batch is read and converted once, then
    run through the head once per ablation. ``columns[k]``: keep only that logit (``[N]``), or
    every one (``None``: ``[N, C]``). An empty ablation runs the head on the maps untouched."""
    d = maps.shape[1]
    masks = torch.ones((len(drops), d, 1, 1), device=device)  # [K, d, 1, 1]
    for k, drop in enumerate(drops):
        masks[k, torch.as_tensor(np.asarray(drop, dtype=np.int64), device=device)] = 0.0
    outputs: list[list[torch.Tensor]] = [[] for _ in drops]
    for start in range(0, maps.shape[0], batch_size):
        batch = torch.from_numpy(np.asarray(maps[start : start + batch_size], dtype=np.float32)).to(device)
        for k, drop in enumerate(drops):
            logits = run_head(head, batch * masks[k] if len(drop) else batch).float()  # [B, C]
            outputs[k].append(logits if columns[k] is None else logits[:, columns[k]])
    return [torch.cat(parts).cpu().numpy() for parts in outputs]


def ablated_scores(
    head: nn.Module, maps: np.ndarray, drop: Sequence[int], batch_size: int, device: torch.device
) -> np.ndarray:
    """Logits ``[N, C]`` of maps ``[N, d, h', w']`` with channels ``drop`` zeroed."""
    return sweep_scores(head, maps, [drop], [None], batch_size, device)[0]


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
        return self.aps([drop])[0]

    def aps(self, drops: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """:meth:`ap` of every ablation in ``drops``, from one pass over the maps."""
        scores = sweep_scores(self.head, self.maps, drops, [None] * len(drops), self.batch_size, self.device)
        return [np.where(self.scored, average_precision(s, self.labels).numpy(), np.nan) for s in scores]

    def class_aps(self, c: int, drops: Sequence[Sequence[int]]) -> list[float]:
        """AP of class ``c`` alone under each ablation in ``drops`` (one pass, one logit kept)."""
        scores = sweep_scores(self.head, self.maps, drops, [c] * len(drops), self.batch_size, self.device)
        return [float(average_precision(s[:, None], self.labels[:, c : c + 1])[0]) for s in scores]


def mean_ap(ap: np.ndarray) -> float:
    """mAP over the classes with an AP (NaN if none)."""
    valid = ~np.isnan(ap)
    return float(ap[valid].mean()) if valid.any() else float("nan")


def single_filter_harm(setup: AblationSetup, original: np.ndarray, chunk: int = 32) -> np.ndarray:
    """mAP drop ``[d]`` from the unablated per-class AP ``original`` ``[C]`` when each filter alone
    is zeroed (``chunk`` ablations per pass over the maps): the network's own ranking of its
    filters, with no labels of the lasso involved."""
    base = mean_ap(original)
    d = setup.maps.shape[1]
    harm = np.empty(d, dtype=np.float64)
    for start in range(0, d, chunk):
        filters = list(range(start, min(start + chunk, d)))
        harm[filters] = [base - mean_ap(ap) for ap in setup.aps([[j] for j in filters])]
    return harm


def most_harmful(harm: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` filters of largest single-filter harm ``[d]`` (ties: lower index first), sorted."""
    return np.sort(np.argsort(-harm, kind="stable")[:k])


def ablation_row(
    setup: AblationSetup,
    selected: np.ndarray,
    original: np.ndarray,
    repeats: int,
    seed: int,
    key: int,
    harm: np.ndarray | None = None,
) -> dict[str, Any]:
    """The study's row for one µ: selected ``[d]`` bool (the union over classes).

    Returns a dict: ``dropped``, ``selected_map``, ``random_map`` (mean over ``repeats`` draws),
    ``random_sd`` (their sample sd, ddof 1; 0 for one repeat) and ``random_maps`` (each draw);
    with ``harm`` (:func:`single_filter_harm`) also ``harmful_map``: as many filters ablated, the
    individually most harmful ones, a reference for what a selection of that size can do.
    """
    drop = np.flatnonzero(selected)
    d = setup.maps.shape[1]
    randoms = [random_filters(d, len(drop), seed, (key, r)) for r in range(repeats)]
    extra = [] if harm is None else [most_harmful(harm, len(drop))]
    selected_ap, *other_aps = setup.aps([drop, *randoms, *extra])
    draws = [mean_ap(ap) for ap in other_aps[:repeats]]
    row = {
        "dropped": int(len(drop)),
        "original_map": mean_ap(original),
        "selected_map": mean_ap(selected_ap),
        "random_map": float(np.mean(draws)),
        "random_sd": float(np.std(draws, ddof=1)) if repeats > 1 else 0.0,
        "random_maps": [float(v) for v in draws],
    }
    if harm is not None:
        row["harmful_map"] = mean_ap(other_aps[-1])
    return row


def class_rows(
    setup: AblationSetup, weights: np.ndarray, original: np.ndarray, repeats: int, seed: int, key: int
) -> list[dict[str, Any]]:
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
