"""The result tables: explanations.{parquet,csv} (filter × method) and filters.parquet (filter × method).

``explanations`` holds each filter's explanation words and vote counts per method, its top
images, its NetDissect label and ``T_u``; ``filters`` holds per filter and method (NetDissect
included) ``T_u``, the number of top images and of scored pairs, the mean recall@s, and the
presence ``correlation`` and ``auprc`` (NaN where undefined; lavise/metrics/presence.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from lavise.io import atomic_path, write_parquet
from lavise.metrics.recall import per_filter_means

EXPLANATIONS_SCHEMA = pa.schema(
    [
        ("filter", pa.int64()),
        ("method", pa.string()),
        ("explanation", pa.string()),
        ("words", pa.list_(pa.string())),
        ("word_counts", pa.list_(pa.int64())),
        ("top_image_ids", pa.list_(pa.int64())),
        ("netdissect_label", pa.string()),
        ("netdissect_iou", pa.float64()),
        ("threshold", pa.float64()),
    ]
)


PER_FILTER = ("correlation", "auprc")  # filters.parquet's presence columns, after recall@s


class ResultRows:
    """Rows of both tables, added method by method (in registry order, NetDissect last)."""

    def __init__(self, filters: np.ndarray, thresholds: np.ndarray, pair_filter: np.ndarray, words: np.ndarray) -> None:
        """``filters`` ``[F]`` and ``thresholds`` ``[F]``; ``pair_filter`` ``[P]`` the filter position of
        every pair; ``words`` ``[V]`` the vocabulary (word id -> word)."""
        self.filters, self.thresholds, self.words = filters, thresholds, words
        self.n_images = np.bincount(pair_filter, minlength=len(filters))
        self.filter_rows: list[dict[str, Any]] = []
        self.explanation_rows: list[dict[str, Any]] = []

    def add_scores(
        self,
        method: str,
        positions: np.ndarray,
        per_s: dict[int, np.ndarray],
        pair_filter: np.ndarray,
        per_filter: Mapping[str, np.ndarray],
    ) -> None:
        """One filters.parquet row per filter position: recall@s ``per_s`` of pairs of filters
        ``pair_filter``, and the ``per_filter`` columns (values ``[len(positions)]``, in order)."""
        n_filters = len(self.filters)
        means = {s: per_filter_means(values, pair_filter, n_filters) for s, values in per_s.items()}
        scored = np.bincount(pair_filter[~np.isnan(next(iter(per_s.values())))], minlength=n_filters)
        for i, pos in enumerate(positions):
            row: dict[str, Any] = {
                "filter": int(self.filters[pos]),
                "method": method,
                "threshold": float(self.thresholds[pos]),
                "n_images": int(self.n_images[pos]),
                "n_pairs": int(scored[pos]),
            }
            row.update({f"recall@{s}": float(values[pos]) for s, values in means.items()})
            row.update({name: float(values[i]) for name, values in per_filter.items()})
            self.filter_rows.append(row)

    def add_explanations(
        self, method: str, positions: np.ndarray, explanations: dict[int, tuple[list[int], list[int]]]
    ) -> None:
        """One explanations row per filter position: its words (ids into the vocabulary) and votes."""
        for pos in positions:
            words, counts = explanations.get(int(pos), ([], []))
            self.explanation_rows.append(
                {
                    "filter": int(self.filters[pos]),
                    "method": method,
                    "words": [str(self.words[w]) for w in words],
                    "word_counts": counts,
                }
            )

    def words_by_filter(self) -> dict[int, dict[str, list[str]]]:
        """Explanation words per filter index, then per method in the order they were added."""
        found: dict[int, dict[str, list[str]]] = {}
        for row in self.explanation_rows:
            found.setdefault(row["filter"], {})[row["method"]] = row["words"]
        return found


def write_tables(
    results_dir: Path,
    rows: ResultRows,
    top_image_ids: list[list[int]],
    netdissect_labels: list[str | None],
    netdissect_iou: np.ndarray,
    s_values: Sequence[int],
) -> None:
    """explanations.{parquet,csv} (one row per filter and method) and filters.parquet.

    ``top_image_ids``, ``netdissect_labels`` and ``netdissect_iou`` are per filter position.
    """
    position = {int(f): i for i, f in enumerate(rows.filters)}
    table = pd.DataFrame(rows.explanation_rows)
    pos = table["filter"].map(position).to_numpy()
    table["explanation"] = [
        " ".join(f"{w}:{c}" for w, c in zip(ws, cs)) for ws, cs in zip(table["words"], table["word_counts"])
    ]
    table["top_image_ids"] = [top_image_ids[p] for p in pos]
    table["netdissect_label"] = [netdissect_labels[p] for p in pos]
    table["netdissect_iou"] = netdissect_iou[pos]
    table["threshold"] = rows.thresholds[pos].astype(np.float64)
    table = table[EXPLANATIONS_SCHEMA.names]
    write_parquet(
        results_dir / "explanations.parquet",
        pa.Table.from_pandas(table, schema=EXPLANATIONS_SCHEMA, preserve_index=False),
    )
    flat = table.drop(columns=["words", "word_counts"]).assign(
        top_image_ids=[" ".join(map(str, ids)) for ids in table["top_image_ids"]]
    )
    with atomic_path(results_dir / "explanations.csv") as tmp:
        flat.to_csv(tmp, index=False)
    filters_table = pd.DataFrame(rows.filter_rows)[
        ["filter", "method", "threshold", "n_images", "n_pairs", *[f"recall@{s}" for s in s_values], *PER_FILTER]
    ]
    write_parquet(results_dir / "filters.parquet", filters_table)
