"""The NetDissect baseline: one label per filter from dataset-wide IoU, scored out of sample.

Definitions (binding, docs/PROTOCOL.md):

* ``IoU_{u,c} = Σ_i |R ∩ M_c| / Σ_i |R ∪ M_c|`` over all evaluation images, which decomposes
  into ``I_{u,c} / (Σ_i |R_{u,i}| + Σ_i |M_{c,i}| − I_{u,c})`` (an image without c adds |R| to
  the union, one with an empty R adds |M_c|). Each filter gets the category of highest IoU; a
  filter whose regions never overlap any mask gets no label (recall 0). Its "word list" is that
  one label's tokens for every s, so recall@s is the same for all s.
* 2-fold cross-fitting: the evaluation images are split by map row parity, each filter is
  labelled on each half, and a pair is scored with the label learned on the other half (a label
  picked on the very masks it is scored against would be scored in sample). The label reported
  per filter, and its distinct-concept count, come from all images; ``in_sample`` records the
  in-sample recall@1 for comparison.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Self

import numpy as np

from lavise.data.vocabulary import Categories
from lavise.metrics.recall import TruthTokens, label_recall, method_metrics, split_metrics

NETDISSECT = "netdissect"  # its name in the metrics and the filters table
NETDISSECT_FOLDS = 2  # cross-fitting: a pair is scored with the label of the other half of the images


def fold_of(rows: np.ndarray | int) -> np.ndarray | int:
    """The cross-fitting fold of map rows (their parity)."""
    return rows % NETDISSECT_FOLDS


class NetDissectAccumulator:
    """Dataset-wide sums for NetDissect's IoU_{u,c}, fed one image at a time (memory flat in N)."""

    def __init__(self, n_filters: int, n_categories: int) -> None:
        self.intersection = np.zeros((n_filters, n_categories), dtype=np.float64)
        self.region_area = np.zeros(n_filters, dtype=np.float64)
        self.mask_area = np.zeros(n_categories, dtype=np.float64)

    def add(
        self,
        active_filters: np.ndarray,
        region_area: np.ndarray,
        intersection: np.ndarray,
        categories: np.ndarray,
        mask_area: np.ndarray,
    ) -> None:
        """Add one image: its active filters' |R| and |R ∩ M_c|, and |M_c| of its categories."""
        np.add.at(self.mask_area, categories, mask_area)
        self.region_area[active_filters] += region_area
        if len(active_filters) and len(categories):
            np.add.at(self.intersection, (active_filters[:, None], categories[None, :]), intersection)

    @classmethod
    def merged(cls, parts: Sequence[NetDissectAccumulator]) -> Self:
        """The sums over all images of ``parts`` (accumulators fed disjoint sets of images)."""
        merged = cls(*parts[0].intersection.shape)
        for part in parts:
            merged.intersection += part.intersection
            merged.region_area += part.region_area
            merged.mask_area += part.mask_area
        return merged

    def iou(self) -> np.ndarray:
        """IoU_{u,c} ``[F, C]`` (0 where the union is empty)."""
        union = self.region_area[:, None] + self.mask_area[None, :] - self.intersection
        return np.divide(self.intersection, union, out=np.zeros_like(union), where=union > 0)

    def labels(self) -> tuple[np.ndarray, np.ndarray]:
        """Best category per filter (``-1`` when every IoU is 0) and its IoU."""
        iou = self.iou()
        if iou.shape[1] == 0:
            return np.full(iou.shape[0], -1, dtype=np.int64), np.zeros(iou.shape[0])
        best = iou.argmax(axis=1)
        best_iou = iou[np.arange(len(best)), best]
        return np.where(best_iou > 0, best, -1).astype(np.int64), best_iou


def label_token_sets(labels: np.ndarray, categories: Categories) -> np.ndarray:
    """bool ``[F, T]``: the tokens of each filter's label (none for an unlabelled filter)."""
    tokens = np.zeros((len(labels), len(categories.tokens)), dtype=bool)
    tokens[labels >= 0] = categories.incidence[labels[labels >= 0]]
    return tokens


def fold_label_tokens(folds: Sequence[NetDissectAccumulator], categories: Categories) -> np.ndarray:
    """bool ``[K, F, T]``: the tokens of each filter's label learned on each fold."""
    return np.stack([label_token_sets(fold.labels()[0], categories) for fold in folds])


def other_fold(rows: np.ndarray) -> np.ndarray:
    """The fold whose label judges each map row: one the row is not in."""
    return (fold_of(rows) + 1) % NETDISSECT_FOLDS


def cross_fitted_label_tokens(
    folds: Sequence[NetDissectAccumulator], pair_row: np.ndarray, pair_filter: np.ndarray, categories: Categories
) -> np.ndarray:
    """bool ``[P, T]``: each pair (u, i) gets the tokens of u's label from the fold without image i."""
    return fold_label_tokens(folds, categories)[other_fold(pair_row), pair_filter]


@dataclass
class NetDissectResult:
    """The metrics entry, each filter's label (``-1``: none) and its IoU, recall@s per pair, and the
    per-pair values of every recall figure keyed by its path in the entry (for the intervals)."""

    entry: dict[str, Any]
    labels: np.ndarray
    label_iou: np.ndarray
    per_s: dict[int, np.ndarray]
    figures: dict[str, np.ndarray]


def netdissect_metrics(
    folds: Sequence[NetDissectAccumulator],
    pair_row: np.ndarray,
    pair_filter: np.ndarray,
    n_filters: int,
    categories: Categories,
    truth: TruthTokens,
    s_values: Sequence[int],
) -> NetDissectResult:
    """NetDissect scored like a method: cross-fitted labels per pair, plus the in-sample recall@1."""
    labels, label_iou = NetDissectAccumulator.merged(folds).labels()
    pair_label_tokens = cross_fitted_label_tokens(folds, pair_row, pair_filter, categories)
    per_pair = label_recall(pair_label_tokens, truth.all)
    per_s = {s: per_pair for s in s_values}
    entry = method_metrics(per_s, pair_filter, n_filters)
    figures = {f"recall@{s}": per_pair for s in s_values}
    splits = (("seen", truth.seen), ("unseen", truth.unseen)) if truth.has_unseen else ()
    for split, ground_truth in splits:
        split_recall = label_recall(pair_label_tokens, ground_truth)
        entry[split] = split_metrics({s: split_recall for s in s_values})
        figures.update({f"{split}.recall@{s}": split_recall for s in s_values})
    in_sample = label_recall(label_token_sets(labels, categories)[pair_filter], truth.all)
    entry["in_sample"] = split_metrics({1: in_sample})
    figures["in_sample.recall@1"] = in_sample
    entry["n_distinct_concepts"] = int(len(np.unique(labels[labels >= 0])))
    return NetDissectResult(entry, labels, label_iou, per_s, figures)
