"""recall@s of ranked words against each pair's ground truth G, and the metrics entry of a method.

Definitions (binding, docs/PROTOCOL.md):

* ``G_{u,i}`` is compared as GloVe tokens: the union of the tokens of its categories.
* ``recall@s_{u,i} = |W_{u,i}(s) ∩ G_{u,i}| / |G_{u,i}|`` for pairs with non-empty G.
* recall@1 is reported beside the paper's values of s to compare with NetDissect's one label.
* the seen/unseen split (VG) scores each pair against the tokens of its seen categories, then
  against its *novel* tokens: tokens of its unseen categories that are no seen category's token.
  A word the explainer was trained on (``light`` of a seen light.n.02 and of an unseen
  traffic_light.n.01) is not a discovery, so it counts as seen only.
* ``n_filters`` counts the filters evaluated with a method, ``n_filters_scored`` those with at
  least one pair whose ground truth is non-empty (the per-filter distribution is over these).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lavise.data.vocabulary import Categories, tokens_of_categories
from lavise.io import json_float


@dataclass(frozen=True)
class TruthTokens:
    """Ground truth as tokens, bool ``[P, T]`` each: all of G, its seen part, its novel unseen part."""

    all: np.ndarray
    seen: np.ndarray
    unseen: np.ndarray
    has_unseen: bool  # the split has unseen categories, so seen/unseen recall is reported

    def __getitem__(self, pairs: np.ndarray) -> TruthTokens:
        """The ground truth of the pairs ``pairs`` (indices)."""
        return TruthTokens(self.all[pairs], self.seen[pairs], self.unseen[pairs], self.has_unseen)


def truth_tokens(truth: np.ndarray, categories: Categories) -> TruthTokens:
    """Token ground truth of each pair from its categories ``truth`` bool ``[P, C]``."""
    seen = tokens_of_categories(truth & categories.seen[None, :], categories.incidence)
    unseen = tokens_of_categories(truth & ~categories.seen[None, :], categories.incidence)
    unseen &= categories.novel_tokens[None, :]
    return TruthTokens(tokens_of_categories(truth, categories.incidence), seen, unseen, categories.has_unseen)


def recall_at(word_tokens: np.ndarray, ground_truth: np.ndarray, s_values: Sequence[int]) -> dict[int, np.ndarray]:
    """recall@s per pair: ``|W(s) ∩ G| / |G|``, NaN where G is empty.

    ``word_tokens`` ``[P, S]``: each pair's ranked words as category-token ids (``-1`` for a word
    that is no category token; the words of a row are distinct). ``ground_truth`` bool ``[P, T]``
    over the token ids. For s > S the whole list is used.
    """
    n_truth = ground_truth.sum(axis=1).astype(np.float64)
    valid = word_tokens >= 0
    picked = np.take_along_axis(ground_truth, np.where(valid, word_tokens, 0), axis=1) & valid
    hits = np.cumsum(picked, axis=1)
    out: dict[int, np.ndarray] = {}
    for s in s_values:
        if word_tokens.shape[1] == 0:
            found = np.zeros(len(n_truth))
        else:
            found = hits[:, min(s, word_tokens.shape[1]) - 1].astype(np.float64)
        out[s] = np.divide(found, n_truth, out=np.full(len(n_truth), np.nan), where=n_truth > 0)
    return out


def label_recall(label_tokens: np.ndarray, ground_truth: np.ndarray) -> np.ndarray:
    """NetDissect recall per pair: ``|tokens(label) ∩ G| / |G|`` (NaN where G is empty)."""
    n_truth = ground_truth.sum(axis=1).astype(np.float64)
    found = (label_tokens & ground_truth).sum(axis=1).astype(np.float64)
    return np.divide(found, n_truth, out=np.full(len(n_truth), np.nan), where=n_truth > 0)


def summarise_recall(pair_recall: np.ndarray, pair_filter: np.ndarray) -> dict[str, object]:
    """Micro mean over scored pairs, counts, and quartiles of the per-filter means.

    ``pair_recall`` is NaN for pairs without ground truth; those are not scored.
    """
    scored = ~np.isnan(pair_recall)
    values, owners = pair_recall[scored], pair_filter[scored]
    if len(values) == 0:
        return {"mean": None, "n_pairs": 0, "n_filters": 0, "per_filter": None}
    filter_ids, inverse = np.unique(owners, return_inverse=True)
    per_filter = np.bincount(inverse, weights=values) / np.bincount(inverse)
    q25, median, q75 = np.quantile(per_filter, [0.25, 0.5, 0.75])
    return {
        "mean": float(values.mean()),
        "n_pairs": int(len(values)),
        "n_filters": int(len(filter_ids)),
        "per_filter": {
            "mean": float(per_filter.mean()),
            "median": float(median),
            "q25": float(q25),
            "q75": float(q75),
        },
    }


def per_filter_means(pair_recall: np.ndarray, pair_filter: np.ndarray, n_filters: int) -> np.ndarray:
    """Mean recall of each filter over its scored pairs ``[n_filters]`` (NaN without pairs)."""
    scored = ~np.isnan(pair_recall)
    total = np.bincount(pair_filter[scored], weights=pair_recall[scored], minlength=n_filters)
    count = np.bincount(pair_filter[scored], minlength=n_filters)
    return np.divide(total, count, out=np.full(n_filters, np.nan), where=count > 0)


def method_metrics(per_s: dict[int, np.ndarray], pair_filter: np.ndarray, n_filters: int) -> dict[str, Any]:
    """recall@s means, counts and per-filter distributions for one method."""
    entry: dict[str, Any] = {"n_filters": int(n_filters), "per_filter": {}}
    for s, values in per_s.items():
        summary = summarise_recall(values, pair_filter)
        entry[f"recall@{s}"] = json_float(summary["mean"])
        entry["n_pairs"] = summary["n_pairs"]
        entry["n_filters_scored"] = summary["n_filters"]
        distribution = summary["per_filter"]
        entry["per_filter"][f"recall@{s}"] = (
            None if distribution is None else {k: json_float(v) for k, v in distribution.items()}
        )
    return entry


def split_metrics(per_s: dict[int, np.ndarray]) -> dict[str, Any]:
    """Scored pairs and recall@s means of one split (seen, unseen, in-sample)."""
    first = next(iter(per_s.values()))
    entry: dict[str, Any] = {"n_pairs": int((~np.isnan(first)).sum())}
    for s, values in per_s.items():
        scored = values[~np.isnan(values)]
        entry[f"recall@{s}"] = json_float(float(scored.mean())) if len(scored) else None
    return entry


def word_recall_metrics(
    word_tokens: np.ndarray, truth: TruthTokens, pair_filter: np.ndarray, n_filters: int, s_values: Sequence[int]
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A method's metrics entry (with the seen/unseen split when there is one) and the per-pair
    values ``[P]`` of each of its recall figures, keyed by their path in the entry (``recall@5``,
    ``seen.recall@5``, ...), for the intervals.

    ``word_tokens`` ``[P, S]``, ``truth`` and ``pair_filter`` ``[P]`` are those of the pairs the
    method explains, ``n_filters`` the number of filters it was evaluated on.
    """
    per_s = recall_at(word_tokens, truth.all, s_values)
    entry = method_metrics(per_s, pair_filter, n_filters)
    figures = {f"recall@{s}": values for s, values in per_s.items()}
    if truth.has_unseen:
        for split, ground_truth in (("seen", truth.seen), ("unseen", truth.unseen)):
            split_s = recall_at(word_tokens, ground_truth, s_values)
            entry[split] = split_metrics(split_s)
            figures.update({f"{split}.recall@{s}": values for s, values in split_s.items()})
    return entry, figures
