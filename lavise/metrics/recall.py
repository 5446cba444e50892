"""Thresholds, activation regions, ground truth, recall@s and the NetDissect baseline.

Definitions (binding, ../shared/LAVISE.md §3-4):

* ``T_u``: the ``q``-quantile (q = 0.995, so P(a > T_u) = 0.005) of filter u's activations over
  every evaluation image and every map position. Computed exactly from order statistics with
  NumPy's default "linear" rule: for the n values sorted ascending ``a_(0) <= ... <= a_(n-1)``,
  ``pos = q (n - 1)``, ``lo = floor(pos)``, ``T_u = a_(lo) + (pos - lo) (a_(lo+1) - a_(lo))``
  (``np.quantile(values, q)``). The order statistics come from ``np.partition`` on chunks of
  filters (read from a filter-major scratch copy written in one pass over the cache),
  never ``torch.quantile`` (which refuses more than 2^24 values).
* ``R_{u,i}``: u's map on image i bilinearly upsampled (``align_corners=False``) to the crop,
  thresholded ``> T_u``. Bilinear weights are a convex combination of neighbouring cells, so
  ``R`` is empty whenever the map's maximum is ``<= T_u``; such pairs are skipped, not computed.
* ``G_{u,i}``: categories of image i whose crop-mapped mask (soft >= 0.5) has
  ``IoU(M, R_{u,i}) > iou_threshold``; compared as GloVe tokens (union of their tokens).
* ``recall@s_{u,i} = |W_{u,i}(s) ∩ G_{u,i}| / |G_{u,i}|`` for pairs with non-empty G.
* NetDissect: ``IoU_{u,c} = Σ_i |R ∩ M_c| / Σ_i |R ∪ M_c|`` over all evaluation images, which
  decomposes into ``I_{u,c} / (Σ_i |R_{u,i}| + Σ_i |M_{c,i}| − I_{u,c})`` (an image without c
  adds |R| to the union, one with an empty R adds |M_c|). Each filter gets the category of
  highest IoU; a filter whose regions never overlap any mask gets no label (recall 0). Its
  "word list" is that one label's tokens for every s, so recall@s is the same for all s.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
import warnings
from collections.abc import Sequence
from typing import Self

import numpy as np
import torch
import torch.nn.functional as nnf
from tqdm import tqdm

log = logging.getLogger(__name__)

THRESHOLD_MEMORY_BYTES = 256 << 20  # float32 copy of one chunk of filters, partitioned in place


def order_statistic_positions(n_values: int, quantile: float) -> tuple[int, int, float]:
    """(lo, hi, frac) of NumPy's linear quantile rule for ``n_values`` sorted values."""
    if n_values < 1:
        raise ValueError("a quantile needs at least one value")
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {quantile}")
    position = quantile * (n_values - 1)
    lo = int(math.floor(position))
    hi = min(lo + 1, n_values - 1)
    return lo, hi, position - lo


def filter_thresholds(
    maps: np.ndarray,
    quantile: float,
    filters: Sequence[int] | np.ndarray,
    memory_bytes: int = THRESHOLD_MEMORY_BYTES,
    scratch_dir: str | os.PathLike[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-filter quantile ``T_u`` and per-image maxima, in one sequential pass over ``maps``.

    ``maps`` is the ``[N, d, h, w]`` (memory-mapped) cache; only its ``shape``, ``dtype`` and
    slices along the image axis are used. Returns ``thresholds`` float32 ``[F]`` and
    ``image_max`` float32 ``[N, F]`` (max of each filter's map on each image), F = len(filters).

    1. One pass over ``maps``, ``maps[i0:i1, filters]`` for consecutive chunks of images: a
       NaN/inf check (ValueError naming every bad filter) and the values written filter-major
       to a scratch file ``[F, N·h·w]`` (float16 for the float16 cache, so ``F·N·h·w·2`` bytes;
       float32 otherwise) in a temporary directory under ``scratch_dir`` (default: the system
       temp dir), removed on return. When all ``F·N·h·w`` values fit ``memory_bytes`` as
       float32 they are kept in memory instead and no file is written.
    2. Chunks of filters: contiguous rows of the scratch file read into one reused float32
       buffer of at most ``memory_bytes`` (at least one filter), their per-image maxima taken,
       then partitioned in place at the two order statistics of the linear rule. Every value of
       a filter is needed at once for an exact quantile, hence the scratch file.

    Working memory is at most ``memory_bytes`` plus a quarter of it for read/write buffers (at
    least one image's maps of the selection and one filter's row). The scratch file is read
    and written with pread/pwrite, not mapped, so it adds page cache but no RSS. float16 ->
    float32 is exact and each row holds a filter's values in the same (image, position) order
    as partitioning everything in memory, so the thresholds are bit-identical to it.
    """
    if maps.ndim != 4:
        raise ValueError(f"expected maps [N, d, h, w], got shape {maps.shape}")
    filters = np.asarray(filters, dtype=np.int64).reshape(-1)
    n_images, n_channels, height, width = maps.shape
    if len(filters) and (filters.min() < 0 or filters.max() >= n_channels):
        raise IndexError(f"filter ids must lie in [0, {n_channels}), got {filters.tolist()}")
    cells = height * width
    n_values = n_images * cells
    lo, hi, frac = order_statistic_positions(n_values, quantile)
    n_filters = len(filters)
    thresholds = np.empty(n_filters, dtype=np.float32)
    image_max = np.empty((n_images, n_filters), dtype=np.float32)
    if n_filters == 0:
        return thresholds, image_max
    in_memory = n_filters * n_values * 4 <= memory_bytes
    # the float16 cache is stored as is (exact in float32); any other dtype is compared as float32
    store = np.dtype(np.float16) if maps.dtype == np.float16 else np.dtype(np.float32)
    with contextlib.ExitStack() as stack:
        if in_memory:
            values: np.ndarray | _ScratchRows = np.empty((n_filters, n_values), dtype=np.float32)
        else:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="lavise-thresholds-", dir=scratch_dir))
            values = stack.enter_context(_ScratchRows(os.path.join(tmp, "values.bin"), (n_filters, n_values), store))
        finite = _copy_filter_major(maps, filters, values, memory_bytes // 4)
        if not finite.all():
            raise ValueError(f"feature maps contain NaN/inf for filter(s) {filters[~finite].tolist()}")
        chunk = min(n_filters, max(1, memory_bytes // (4 * n_values)))
        buffer = np.empty((chunk, n_values), dtype=np.float32) if isinstance(values, _ScratchRows) else None
        for start in tqdm(range(0, n_filters, chunk), desc="thresholds: partition", unit="chunk"):
            stop = min(start + chunk, n_filters)
            if buffer is None:
                rows = values[start:stop]  # in memory: partitioned in place
            else:
                rows = buffer[: stop - start]
                values.read_rows(start, rows, memory_bytes // 4)
            image_max[:, start:stop] = rows.reshape(stop - start, n_images, cells).max(axis=2).T
            rows.partition([lo, hi], axis=1)
            low, high = rows[:, lo].astype(np.float64), rows[:, hi].astype(np.float64)
            thresholds[start:stop] = low + frac * (high - low)
    return thresholds, image_max


def _tensor(array: np.ndarray) -> torch.Tensor:
    """Zero-copy CPU tensor over ``array`` (which may be a read-only memory map: only read from)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.asarray(array))


def _convert(out: np.ndarray, source: np.ndarray) -> None:
    """``out[...] = source`` through torch: float16 -> float32 vectorised (exact, ~10x NumPy's cast)."""
    _tensor(out).copy_(_tensor(source))


class _ScratchRows:
    """A ``[rows, columns]`` matrix in a file: written in column blocks, read back in row blocks.

    Plain pwrite/pread rather than a memory map, so its pages stay page cache, not process RSS.
    """

    def __init__(self, path: str, shape: tuple[int, int], dtype: np.dtype) -> None:
        self.path, self.shape, self.dtype = path, shape, np.dtype(dtype)
        self._row_bytes = shape[1] * self.dtype.itemsize
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self._fd)

    def write_columns(self, column: int, block: np.ndarray) -> None:
        """``matrix[:, column : column + k] = block`` for a C-contiguous block ``[rows, k]``."""
        for row in range(self.shape[0]):
            data = memoryview(block[row]).cast("B")
            offset = row * self._row_bytes + column * self.dtype.itemsize
            while data:
                written = os.pwrite(self._fd, data, offset)
                data, offset = data[written:], offset + written

    def read_rows(self, row: int, out: np.ndarray, staging_bytes: int) -> None:
        """``out[...] = matrix[row : row + len(out)]`` in float32, via staging rows of at most ``staging_bytes``."""
        step = max(1, staging_bytes // self._row_bytes)
        staging = np.empty((min(step, len(out)), self.shape[1]), dtype=self.dtype)
        for start in range(0, len(out), step):
            part = staging[: min(step, len(out) - start)]
            data, offset = memoryview(part).cast("B"), (row + start) * self._row_bytes
            while data:
                count = os.preadv(self._fd, [data], offset)
                if count == 0:
                    raise EOFError(f"scratch file {self.path} ends early")
                data, offset = data[count:], offset + count
            _convert(out[start : start + len(part)], part)


def _copy_filter_major(
    maps: np.ndarray, filters: np.ndarray, values: np.ndarray | _ScratchRows, buffer_bytes: int
) -> np.ndarray:
    """The single pass of :func:`filter_thresholds`: fills ``values`` ``[F, N·h·w]`` filter-major.

    Reads ``maps[i0:i1, filters]`` once for each chunk of images, in order (a slice when the
    filters are consecutive); returns which filters are finite on every image.
    """
    n_images, _, height, width = maps.shape
    cells = height * width
    n_filters = len(filters)
    consecutive = bool(np.all(np.diff(filters) == 1))
    selection = slice(int(filters[0]), int(filters[-1]) + 1) if consecutive else filters
    store = values.dtype
    # per value: the block (a copy unless a slice of a memmap), the check's temporaries, the
    # filter-major copy written to the scratch file
    step = max(1, buffer_bytes // (n_filters * cells * (maps.dtype.itemsize + 3 + store.itemsize)))
    bad = np.zeros(n_filters, dtype=bool)
    for start in tqdm(range(0, n_images, step), desc="thresholds: read", unit="chunk"):
        stop = min(start + step, n_images)
        block = np.asarray(maps[start:stop, selection]).reshape(stop - start, n_filters, cells)
        if block.dtype == np.float16:  # NaN/inf: all exponent bits set; faster than isfinite
            exponent = np.bitwise_and(block.view(np.uint16), 0x7C00)
            bad |= (exponent == 0x7C00).any(axis=(0, 2))
            del exponent
        else:  # compared as float32, as np.asarray(block, np.float32) would
            block = block.astype(np.float32)
            bad |= ~np.isfinite(block).all(axis=(0, 2))
        if isinstance(values, _ScratchRows):
            columns = np.empty((n_filters, stop - start, cells), dtype=store)
            _convert(columns, block.transpose(1, 0, 2))
            values.write_columns(start * cells, columns.reshape(n_filters, -1))
        else:
            target = values.reshape(n_filters, n_images, cells)  # a view: values is C-contiguous
            _convert(target[:, start:stop], block.transpose(1, 0, 2))
    return ~bad


def top_images(image_max: np.ndarray, p: int) -> np.ndarray:
    """Rows of each filter's top-``p`` images by max activation, ``[F, p]``, ``-1`` padded.

    Images whose maximum is ``<= 0`` are skipped, so a filter may have fewer than p. Ties go to
    the lower row (stable sort), so the selection is deterministic.
    """
    if image_max.ndim != 2:
        raise ValueError(f"expected image_max [N, F], got shape {image_max.shape}")
    order = np.argsort(-image_max.T, axis=1, kind="stable")[:, :p]
    top = np.take_along_axis(image_max.T, order, axis=1)
    rows = np.where(top > 0, order, -1).astype(np.int64)
    if rows.shape[1] < p:
        rows = np.pad(rows, ((0, 0), (0, p - rows.shape[1])), constant_values=-1)
    return rows


def upsample_maps(maps: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear upsampling (``align_corners=False``) of maps ``[k, h, w]`` to ``[k, size, size]``."""
    if maps.ndim != 3:
        raise ValueError(f"expected maps [k, h, w], got shape {tuple(maps.shape)}")
    if maps.shape[0] == 0:
        return maps.new_zeros((0, size, size))
    return nnf.interpolate(maps[None], size=(size, size), mode="bilinear", align_corners=False)[0]


def activation_regions(maps: torch.Tensor, thresholds: torch.Tensor, size: int) -> torch.Tensor:
    """``R``: maps ``[k, h, w]`` upsampled to ``size`` and thresholded ``> T``, bool ``[k, size, size]``."""
    return upsample_maps(maps, size) > thresholds.to(maps.dtype)[:, None, None]


def region_overlaps(regions: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """|R|, |M| and |R ∩ M| for regions ``[k, H, W]`` and masks ``[n, H, W]`` (bool).

    One matmul instead of k·n pixel loops; counts are exact in float32 below 2^24 pixels.
    """
    flat_r = regions.flatten(1).to(torch.float32)
    flat_m = masks.flatten(1).to(torch.float32)
    return flat_r.sum(1), flat_m.sum(1), flat_r @ flat_m.T


def iou_from_counts(r_area: torch.Tensor, m_area: torch.Tensor, inter: torch.Tensor) -> torch.Tensor:
    """IoU ``[k, n]`` from areas and intersections; 0 where both sets are empty."""
    union = r_area[:, None] + m_area[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))


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
    def merged(cls, parts: Sequence[NetDissectAccumulator]) -> NetDissectAccumulator:
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
