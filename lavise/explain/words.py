"""Words for explainer outputs: the nearest vocabulary words, and each filter's explanation by word voting.

Conventions not fixed by the paper (docs/PROTOCOL.md):

* a filter's explanation counts each top image's top ``min(s)`` words (the reference code's
  ``--s 5``) and keeps the ``EXPLANATION_SIZE`` most frequent (its ``--num-output 10``); with
  ``activation`` weighting each image adds ``max(1, int(max activation))`` votes (the
  reference repeats ``int(weight)`` times, which gives 0 votes below 1; we keep at least one so
  no top image is silently ignored); ties go to the word seen first in activation order.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as nnf

from lavise.explain.explaining import MethodOutputs
from lavise.features.thresholds import TopImagePairs
from lavise.options import WORD_WEIGHTINGS

EXPLANATION_SIZE = 10  # words kept per filter explanation (reference code --num-output)


def _chunk_top_k(scores: torch.Tensor, k: int, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k ``(values, column indices)`` of each row of ``scores`` ``[B, C]``.

    Columns are split into ``C / group`` strided groups (column c is in group c mod C/group, so
    the max-reduction runs over contiguous slices and vectorises). The k best values of a row lie
    within its k groups of highest maximum: a group outside those has k groups above it, each
    holding a value at least as large. A top-k over k·group candidates thus replaces one over C.
    """
    n_rows, n_cols = scores.shape
    if n_cols <= k * group:
        values, index = scores.topk(min(k, n_cols), dim=1)
        return values, index
    pad = (-n_cols) % group
    if pad:
        scores = nnf.pad(scores, (0, pad), value=-math.inf)
    width = scores.shape[1] // group
    grouped = scores.view(n_rows, group, width)
    _, best_groups = grouped.amax(dim=1).topk(k, dim=1)
    columns = best_groups[:, None, :] + width * torch.arange(group, device=scores.device)[None, :, None]
    columns = columns.reshape(n_rows, -1)
    values, order = scores.gather(1, columns).topk(k, dim=1)
    return values, columns.gather(1, order)


def _merge_top_k(
    best: tuple[torch.Tensor, torch.Tensor], scores: torch.Tensor, index: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Running top-k: merge candidate (scores, vocabulary indices) into ``best``."""
    merged_scores = torch.cat([best[0], scores], dim=1)
    merged_index = torch.cat([best[1], index], dim=1)
    top, order = merged_scores.topk(min(k, merged_scores.shape[1]), dim=1)
    return top, merged_index.gather(1, order)


def _exact_top_k(rows: torch.Tensor, vocabulary: torch.Tensor, k: int, chunk: int, group: int) -> torch.Tensor:
    """float32 scores of every word, chunk by chunk, merged into a running top-k."""
    best = (
        rows.new_full((rows.shape[0], 0), -math.inf),
        torch.zeros((rows.shape[0], 0), dtype=torch.int64, device=rows.device),
    )
    for offset in range(0, vocabulary.shape[0], chunk):
        scores, index = _chunk_top_k(rows @ vocabulary[offset : offset + chunk].T, k, group)
        best = _merge_top_k(best, scores, index + offset, k)
    return best[1]


def nearest_words(
    queries: torch.Tensor,
    vocabulary: torch.Tensor,
    k: int,
    row_batch: int = 128,
    vocab_chunk: int = 16384,
    group: int = 32,
) -> torch.Tensor:
    """Indices ``[Q, k]`` of the ``k`` vocabulary rows of highest cosine with each query, best first.

    ``vocabulary`` rows must be unit vectors. The score matrix is never materialised: vocabulary
    chunks are scored in float32 and merged into a running top-k, so memory is
    ``row_batch × vocab_chunk`` whatever the vocabulary size. The defaults keep one score block
    (8 MiB) in cache: measured ~1.5x faster than 256 × 32768 on the 2-core CI machine. (A float16
    screen with float32 rescoring was slower there: half-precision reductions do not vectorise.)
    """
    k = min(k, vocabulary.shape[0])
    normed = nnf.normalize(queries.to(torch.float32), dim=1)
    result = torch.empty((queries.shape[0], k), dtype=torch.int64)
    for start in range(0, queries.shape[0], row_batch):
        rows = normed[start : start + row_batch].to(vocabulary.device)
        result[start : start + rows.shape[0]] = _exact_top_k(rows, vocabulary, k, vocab_chunk, group).cpu()
    return result


def filter_explanation(word_ids: np.ndarray, weights: np.ndarray, size: int) -> tuple[list[int], list[int]]:
    """Most frequent words over a filter's images: ``word_ids [n_images, s]`` in activation order.

    Each image's words get that image's weight in votes; ties go to the word seen first.
    Returns (word ids, vote counts), best first, at most ``size``.
    """
    if word_ids.size == 0:
        return [], []
    flat = word_ids.reshape(-1)
    votes = np.repeat(weights, word_ids.shape[1])
    words, first, inverse = np.unique(flat, return_index=True, return_inverse=True)
    counts = np.bincount(inverse, weights=votes).round().astype(np.int64)
    order = np.lexsort((first, -counts))[:size]
    return words[order].tolist(), counts[order].tolist()


def image_weights(max_activation: np.ndarray, weighting: str) -> np.ndarray:
    """Votes per image: ``max(1, int(max activation))`` (reference) or 1 (``count``)."""
    if weighting == "activation":
        return np.maximum(1, max_activation.astype(np.float64).astype(np.int64))
    if weighting == "count":
        return np.ones(len(max_activation), dtype=np.int64)
    raise ValueError(f"unknown word weighting {weighting!r}; expected {' | '.join(WORD_WEIGHTINGS)}")


def method_words(
    outputs: MethodOutputs, pairs: TopImagePairs, vocabulary: torch.Tensor, k: int, no_region: np.ndarray
) -> np.ndarray:
    """Vocabulary ids ``[len(outputs.pairs), min(k, V)]`` of the words nearest each explained pair's output.

    A method that ignores the filter is searched once per image; a method whose output is the same
    for every pair without region (``no_region`` bool ``[P]``: the map never exceeds ``T_u``) is
    searched once for all of those pairs.
    """
    if not outputs.method.per_filter:
        used_rows = np.unique(pairs.row)
        row_words = np.zeros((outputs.vectors.shape[0], min(k, len(vocabulary))), dtype=np.int64)
        row_words[used_rows] = nearest_words(outputs.vectors[used_rows], vocabulary, k).numpy()
        return row_words[pairs.row[outputs.pairs]]
    subset = outputs.pairs
    ids = np.zeros((len(subset), min(k, len(vocabulary))), dtype=np.int64)
    search = subset
    shared = no_region[subset]
    if outputs.method.constant_without_region and shared.any():
        ids[shared] = nearest_words(outputs.vectors[subset[shared][:1]], vocabulary, k).numpy()
        search = subset[~shared]
    if len(search):
        ids[np.searchsorted(subset, search)] = nearest_words(outputs.vectors[search], vocabulary, k).numpy()
    return ids


def filter_explanations(
    words: np.ndarray, weights: np.ndarray, pairs: TopImagePairs, subset: np.ndarray, n_filters: int
) -> dict[int, tuple[list[int], list[int]]]:
    """Per filter position: explanation words and votes from its images in activation order.

    ``words`` ``[len(subset), s]`` and ``weights`` ``[len(subset)]`` belong to the pairs ``subset``.
    """
    owners = pairs.filter_pos[subset]
    order = np.lexsort((pairs.rank[subset], owners))
    bounds = np.searchsorted(owners[order], np.arange(n_filters + 1))
    result: dict[int, tuple[list[int], list[int]]] = {}
    for pos in range(n_filters):
        chosen = order[bounds[pos] : bounds[pos + 1]]
        if len(chosen):
            result[pos] = filter_explanation(words[chosen], weights[chosen], EXPLANATION_SIZE)
    return result
