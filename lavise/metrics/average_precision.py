"""Average precision and its mean over categories (mAP): how the target CNN's multi-label
classification is scored on the validation images."""

from __future__ import annotations

import numpy as np
import torch


def average_precision(scores: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Per-category average precision of ``scores`` [N, C] against binary ``labels`` [N, C].

    AP = sum over thresholds of (recall increase) * precision, with tied scores forming a single
    threshold (the scikit-learn definition), so the value does not depend on how ties are
    ordered. Categories without a positive get NaN. Fully vectorised: one sort per column.
    """
    scores = torch.as_tensor(scores, dtype=torch.float64)
    labels = torch.as_tensor(labels)
    if scores.ndim != 2 or scores.shape != labels.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and labels {tuple(labels.shape)} must both be [N, C]")
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN")
    n, c = scores.shape
    if n == 0:
        return torch.full((c,), float("nan"), dtype=torch.float64)
    order = torch.argsort(scores, dim=0, descending=True, stable=True)  # [N, C]: ranks per column
    sorted_scores = scores.gather(0, order)
    sorted_hits = labels.to(torch.float64).gather(0, order)
    true_positives = sorted_hits.cumsum(0)
    # The last rank of each run of tied scores: precision is measured after the whole run.
    is_run_end = torch.ones_like(sorted_scores, dtype=torch.bool)
    is_run_end[:-1] = sorted_scores[:-1] != sorted_scores[1:]
    ranks = torch.arange(n).unsqueeze(1).expand(n, c)
    run_end_or_n = torch.where(is_run_end, ranks, torch.full_like(ranks, n))
    run_end = run_end_or_n.flip(0).cummin(0).values.flip(0)
    precision_at_run_end = true_positives.gather(0, run_end) / (run_end + 1).to(torch.float64)
    n_positive = sorted_hits.sum(0)
    ap = (precision_at_run_end * sorted_hits).sum(0) / n_positive
    return torch.where(n_positive > 0, ap, torch.full_like(ap, float("nan")))


def mean_average_precision(scores: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> float:
    """Mean AP over the categories that have at least one positive (NaN if none has)."""
    ap = average_precision(scores, labels)
    valid = ~torch.isnan(ap)
    return float(ap[valid].mean()) if bool(valid.any()) else float("nan")
