"""Activation statistics of the cached layer: the exact thresholds T_u, per-image maxima, top images.

Definitions (binding, docs/PROTOCOL.md):

* ``T_u``: the ``q``-quantile (q = 0.995, so P(a > T_u) = 0.005) of filter u's activations over
  every evaluation image and every map position. Computed exactly from order statistics with
  NumPy's default "linear" rule: for the n values sorted ascending ``a_(0) <= ... <= a_(n-1)``,
  ``pos = q (n - 1)``, ``lo = floor(pos)``, ``T_u = a_(lo) + (pos - lo) (a_(lo+1) - a_(lo))``
  (``np.quantile(values, q)``). The order statistics come from ``np.partition`` on chunks of
  filters (read from a filter-major scratch copy written in one pass over the cache),
  never ``torch.quantile`` (which refuses more than 2^24 values).
* top images of u: the ``p`` images of highest maximum activation of u (positive only), ties to
  the lower row; each (filter, top image) pair is explained and scored.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import warnings
from collections.abc import Sequence
from typing import Self

import numpy as np
import torch
from tqdm import tqdm

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
        _partition_filters(values, (lo, hi, frac), memory_bytes, thresholds, image_max)
    return thresholds, image_max


def _partition_filters(
    values: np.ndarray | _ScratchRows,
    rule: tuple[int, int, float],
    memory_bytes: int,
    thresholds: np.ndarray,
    image_max: np.ndarray,
) -> None:
    """Step 2 of :func:`filter_thresholds`: per chunk of filters (rows of ``values`` ``[F, N·h·w]``),
    fill ``image_max`` ``[N, F]`` and ``thresholds`` ``[F]`` from the order statistics ``rule``."""
    lo, hi, frac = rule
    n_filters, n_values = values.shape
    n_images = image_max.shape[0]
    cells = n_values // n_images
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


class TopImagePairs:
    """(filter, top image) pairs sorted by image row, so they stream with the maps.

    ``filter_pos`` is the pair's position among the evaluated filters, ``rank`` its image's rank
    among the filter's top images and ``row`` the image's map row, each ``int64 [P]``.
    """

    def __init__(self, top_rows: np.ndarray) -> None:
        filter_pos, rank = np.nonzero(top_rows >= 0)
        rows = top_rows[filter_pos, rank]
        order = np.lexsort((rank, filter_pos, rows))
        self.filter_pos = filter_pos[order]
        self.rank = rank[order]
        self.row = rows[order]

    def __len__(self) -> int:
        return len(self.row)

    def of_rows(self, start: int, stop: int) -> slice:
        """The pairs whose image row lies in ``[start, stop)``: a slice, the pairs being sorted by row."""
        lo, hi = np.searchsorted(self.row, [start, stop])
        return slice(int(lo), int(hi))
