"""Explaining the probe set: T_u, top images and the words of every method, with no annotations.

The same definitions as the evaluation (docs/PROTOCOL.md): ``T_u`` is the exact 0.995-quantile of
filter u over the probe set's maps (:func:`lavise.features.thresholds.filter_thresholds`), the
top-p images are those of highest maximum activation, every (filter, top image) pair is explained
by every registered method in one pass over the maps (:func:`lavise.explain.explaining.explain_pairs`)
and each filter's explanation is the vote of its top images' nearest words
(:mod:`lavise.explain.words`). There is no recall: the probe set has no ground truth.

The table, one row per filter: ``filter``, ``threshold``, ``n_top_images``, ``top_image_ids`` and
``top_image_paths`` (best first), then per method ``<method>`` (``word:votes ...``) and
``<method>_words`` (the words, best first; empty where the method was not run on the filter).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from lavise.explain.explaining import CnnInputs, explain_pairs
from lavise.explain.words import filter_explanations, image_weights, method_words
from lavise.features.thresholds import TopImagePairs, filter_thresholds, top_images

NO_RECALL = "not computed: the probe set has no ground truth (no recall, no NetDissect)"


@dataclass(frozen=True)
class ProbeSettings:
    """``p`` top images, the ``quantile`` of T_u, ``words_per_image`` voting words per top image,
    the ``word_weighting`` of the votes and the explainer's ``batch_size`` of pairs."""

    p: int
    quantile: float
    words_per_image: int
    word_weighting: str
    batch_size: int


@dataclass(frozen=True)
class ProbeExplanations:
    """``thresholds`` ``[F]``, ``image_max`` ``[N, F]`` and ``top_rows`` ``[F, p]`` (``-1`` padded) of
    the ``filters`` ``[F]``; ``words[method][filter position]`` = (words, votes), best first."""

    filters: np.ndarray
    thresholds: np.ndarray
    image_max: np.ndarray
    top_rows: np.ndarray
    words: dict[str, dict[int, tuple[list[str], list[int]]]]


def explain_probe(
    maps: np.ndarray,
    explainer: torch.nn.Module,
    vocabulary: tuple[np.ndarray, torch.Tensor],
    filters: np.ndarray,
    settings: ProbeSettings,
    device: torch.device,
    cnn: CnnInputs | None = None,
) -> ProbeExplanations:
    """Explain ``filters`` over the probe ``maps`` ``[N, d, h, w]``; ``vocabulary`` is (words ``[V]``,
    unit vectors ``[V, E]`` on ``device``); ``cnn`` for the methods that re-run the CNN."""
    thresholds, image_max = filter_thresholds(maps, settings.quantile, filters)
    top_rows = top_images(image_max, settings.p)
    pairs = TopImagePairs(top_rows)
    outputs = explain_pairs(
        maps, explainer, pairs, filters, thresholds, batch_size=settings.batch_size, device=device, cnn=cnn
    )
    max_activation = image_max[pairs.row, pairs.filter_pos]  # [P]
    weights = image_weights(max_activation, settings.word_weighting)
    no_region = max_activation <= thresholds[pairs.filter_pos]
    words: dict[str, dict[int, tuple[list[str], list[int]]]] = {}
    for name, output in outputs.items():
        ids = method_words(output, pairs, vocabulary[1], settings.words_per_image, no_region)
        found = filter_explanations(ids, weights[output.pairs], pairs, output.pairs, len(filters))
        words[name] = {pos: ([str(vocabulary[0][w]) for w in ws], counts) for pos, (ws, counts) in found.items()}
    return ProbeExplanations(filters, thresholds, image_max, top_rows, words)


def explanation_table(result: ProbeExplanations, image_ids: np.ndarray, paths: np.ndarray) -> pd.DataFrame:
    """The probe table (module docstring); ``image_ids`` and ``paths`` ``[N]`` per map row."""
    top = [rows[rows >= 0] for rows in result.top_rows]
    table = pd.DataFrame(
        {
            "filter": result.filters.astype(np.int64),
            "threshold": result.thresholds.astype(np.float64),
            "n_top_images": np.array([len(rows) for rows in top], dtype=np.int64),
            "top_image_ids": [image_ids[rows].astype(np.int64).tolist() for rows in top],
            "top_image_paths": [[str(p) for p in paths[rows]] for rows in top],
        }
    )
    for method, found in result.words.items():
        entries = [found.get(pos, ([], [])) for pos in range(len(result.filters))]
        table[method] = [" ".join(f"{w}:{c}" for w, c in zip(ws, cs)) for ws, cs in entries]
        table[f"{method}_words"] = [ws for ws, _ in entries]
    return table


def distinct_concepts(result: ProbeExplanations) -> dict[str, dict[str, int]]:
    """Per method: filters it explained and distinct first words among them (as in the evaluation)."""
    return {
        method: {
            "filters_explained": sum(1 for ws, _ in found.values() if ws),
            "n_distinct_concepts": len({ws[0] for ws, _ in found.values() if ws}),
        }
        for method, found in result.words.items()
    }
