"""Exact thresholds T_u, per-image maxima, top images and their pairs, against hand-computed cases,
np.quantile and naive loops; one sequential read of the cache within the memory budget."""

from __future__ import annotations

import math

import numpy as np
import pytest

import lavise.features.thresholds as thresholds_module
from lavise.features.thresholds import TopImagePairs, filter_thresholds, order_statistic_positions, top_images


def test_threshold_hand_computed_linear_rule() -> None:
    # filter 0 takes values 0..99 over 4 images x 5x5; q=0.995: pos = 0.995*99 = 98.505
    values = np.arange(100, dtype=np.float16).reshape(4, 1, 5, 5)
    maps = np.concatenate([values, -values], axis=1)
    thresholds, image_max = filter_thresholds(maps, 0.995, [0, 1])
    assert thresholds[0] == pytest.approx(98 + 0.505, abs=1e-4)
    assert thresholds[1] == pytest.approx(-(1 - 0.505), abs=1e-4)  # sorted: -99..0, pos 98.505
    assert image_max[:, 0].tolist() == [24, 49, 74, 99]
    assert order_statistic_positions(100, 0.995) == (98, 99, pytest.approx(0.505))


@pytest.mark.parametrize("memory", [1, 10_000, 1 << 30])
def test_threshold_matches_numpy_quantile_any_chunking(memory: int) -> None:
    rng = np.random.default_rng(0)
    maps = np.maximum(rng.normal(size=(17, 6, 3, 4)), 0).astype(np.float16)
    filters = [5, 0, 3]
    thresholds, image_max = filter_thresholds(maps, 0.995, filters, memory_bytes=memory)
    for k, f in enumerate(filters):
        values = maps[:, f].astype(np.float64).ravel()
        assert thresholds[k] == pytest.approx(np.quantile(values, 0.995), abs=1e-6)
        expected = np.quantile(values, 0.995)
        assert (values > thresholds[k]).sum() == (values > expected).sum()
        assert np.array_equal(image_max[:, k], maps[:, f].astype(np.float32).max(axis=(1, 2)))


def test_threshold_exact_on_memmap(tmp_path) -> None:
    rng = np.random.default_rng(1)
    np.save(tmp_path / "maps.npy", rng.normal(size=(9, 4, 7, 7)).astype(np.float16))
    maps = np.load(tmp_path / "maps.npy", mmap_mode="r")
    thresholds, _ = filter_thresholds(maps, 0.9, range(4), memory_bytes=9 * 49 * 8)
    ranked = np.sort(np.asarray(maps, dtype=np.float64).transpose(1, 0, 2, 3).reshape(4, -1), axis=1)
    pos = 0.9 * (ranked.shape[1] - 1)
    lo = math.floor(pos)
    manual = ranked[:, lo] + (pos - lo) * (ranked[:, lo + 1] - ranked[:, lo])
    assert np.allclose(thresholds, manual, atol=1e-6)


def test_threshold_rejects_nan() -> None:
    maps = np.zeros((2, 3, 2, 2), dtype=np.float16)
    maps[1, 2, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"filter\(s\) \[2\]"):
        filter_thresholds(maps, 0.5, [0, 1, 2])


def test_threshold_rejects_nan_and_inf_naming_every_filter(tmp_path) -> None:
    maps = np.zeros((6, 5, 2, 2), dtype=np.float16)
    maps[1, 2, 0, 0] = np.nan
    maps[5, 4, 1, 1] = -np.inf
    maps[3, 3, 0, 1] = np.inf  # not selected
    with pytest.raises(ValueError, match=r"filter\(s\) \[4, 2\]"):
        filter_thresholds(maps, 0.5, [4, 0, 2], memory_bytes=16, scratch_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []  # the scratch file is removed on error too


def _reference_thresholds(maps: np.ndarray, quantile: float, filters: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Naive reference: np.quantile (linear) in float64 per filter, float32 max per image."""
    thresholds = [np.quantile(maps[:, f].astype(np.float64).ravel(), quantile, method="linear") for f in filters]
    image_max = np.stack([maps[:, f].astype(np.float32).max(axis=(1, 2)) for f in filters], axis=1)
    return np.array(thresholds).astype(np.float32), image_max


def _spy_scratch(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, tuple[int, int], np.dtype]]:
    """Record the scratch files filter_thresholds creates (path, shape, dtype)."""
    calls = []

    class Spy(thresholds_module._ScratchRows):
        def __init__(self, path, shape, dtype) -> None:
            calls.append((str(path), tuple(shape), np.dtype(dtype)))
            super().__init__(path, shape, dtype)

    monkeypatch.setattr(thresholds_module, "_ScratchRows", Spy)
    return calls


@pytest.mark.parametrize("quantile", [0.0, 0.5, 0.995, 1.0])
@pytest.mark.parametrize("filters", [[7, 2, 3, 8, 0], [2, 3, 4, 5]])
def test_threshold_bit_identical_to_numpy_quantile_scratch_and_chunks(
    tmp_path, monkeypatch: pytest.MonkeyPatch, quantile: float, filters: list[int]
) -> None:
    rng = np.random.default_rng(5)
    # float16 with ties, negatives, exact zeros and a few large values
    raw = rng.normal(size=(23, 9, 5, 3)) * rng.choice([0.01, 1.0, 300.0], size=(23, 9, 1, 1))
    np.save(tmp_path / "maps.npy", np.where(raw < -0.5, 0.0, raw).astype(np.float16))
    maps = np.load(tmp_path / "maps.npy", mmap_mode="r")
    scratch_dir = tmp_path / "scratch"
    scratch_dir.mkdir()
    n_values = 23 * 5 * 3
    memory = 2 * 4 * n_values + 7  # two filters per partition chunk: scratch path, several chunks
    spy = _spy_scratch(monkeypatch)
    thresholds, image_max = filter_thresholds(maps, quantile, filters, memory_bytes=memory, scratch_dir=scratch_dir)
    expected_t, expected_max = _reference_thresholds(np.asarray(maps), quantile, filters)
    assert thresholds.dtype == np.float32 and thresholds.shape == (len(filters),)
    assert image_max.dtype == np.float32 and image_max.shape == (23, len(filters))
    assert np.array_equal(thresholds.view(np.uint32), expected_t.view(np.uint32))  # bit for bit
    assert np.array_equal(image_max, expected_max)
    assert len(spy) == 1
    path, shape, dtype = spy[0]
    assert path.startswith(str(scratch_dir)) and shape == (len(filters), n_values) and dtype == np.float16
    assert list(scratch_dir.iterdir()) == []  # removed on return
    in_memory_t, in_memory_max = filter_thresholds(maps, quantile, filters, memory_bytes=1 << 30)
    assert len(spy) == 1  # everything fits: no scratch file
    assert np.array_equal(in_memory_t.view(np.uint32), thresholds.view(np.uint32))
    assert np.array_equal(in_memory_max, image_max)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_threshold_other_dtypes_compared_as_float32(tmp_path, monkeypatch: pytest.MonkeyPatch, dtype) -> None:
    rng = np.random.default_rng(8)
    maps = (rng.normal(size=(11, 5, 3, 3)) * 1e3).astype(dtype)
    spy = _spy_scratch(monkeypatch)
    thresholds, image_max = filter_thresholds(maps, 0.9, [4, 1, 2], memory_bytes=4 * 99, scratch_dir=tmp_path)
    assert spy[0][1:] == ((3, 99), np.float32)
    expected_t, expected_max = _reference_thresholds(maps.astype(np.float32), 0.9, [4, 1, 2])
    assert np.array_equal(thresholds, expected_t) and np.array_equal(image_max, expected_max)
    maps[3, 1, 0, 0] = 1e300 if dtype == np.float64 else np.inf  # overflows float32: rejected as before
    with np.errstate(over="ignore"), pytest.raises(ValueError, match=r"filter\(s\) \[1\]"):
        filter_thresholds(maps, 0.9, [4, 1, 2], memory_bytes=4 * 99, scratch_dir=tmp_path)


class _CountingMaps:
    """Array-like [N, d, h, w] that records every read; reading it whole (np.asarray) fails."""

    def __init__(self, array: np.ndarray) -> None:
        self.array, self.shape, self.ndim, self.dtype = array, array.shape, array.ndim, array.dtype
        self.reads: list[object] = []

    def __getitem__(self, key):
        self.reads.append(key[0] if isinstance(key, tuple) else key)
        return np.array(self.array[key])

    def __array__(self, *args, **kwargs):
        raise AssertionError("the whole maps array was read at once")


@pytest.mark.parametrize("filters", [[6, 1, 4], list(range(2, 7))])
def test_threshold_reads_each_image_once_in_order(tmp_path, filters: list[int]) -> None:
    rng = np.random.default_rng(6)
    np.save(tmp_path / "maps.npy", rng.normal(size=(41, 8, 4, 4)).astype(np.float16))
    maps = _CountingMaps(np.load(tmp_path / "maps.npy", mmap_mode="r"))
    n_values = 41 * 16
    memory = 4 * n_values  # one filter per partition chunk, a few images per read
    thresholds, image_max = filter_thresholds(maps, 0.995, filters, memory_bytes=memory, scratch_dir=tmp_path)
    assert all(isinstance(key, slice) and key.step is None for key in maps.reads)
    starts, stops = [key.start for key in maps.reads], [key.stop for key in maps.reads]
    assert len(maps.reads) > 3  # chunked over images, each image read exactly once, in order
    assert starts == [0, *stops[:-1]] and stops[-1] == 41
    expected_t, expected_max = _reference_thresholds(maps.array, 0.995, filters)
    assert np.array_equal(thresholds, expected_t) and np.array_equal(image_max, expected_max)


def test_threshold_memory_within_budget(tmp_path) -> None:
    import tracemalloc

    rng = np.random.default_rng(7)
    np.save(tmp_path / "maps.npy", np.maximum(rng.normal(size=(200, 16, 7, 7)), 0).astype(np.float16))
    maps = np.load(tmp_path / "maps.npy", mmap_mode="r")
    memory = 64 << 10  # the selection's float32 values take 627 KB: scratch path
    filter_thresholds(maps, 0.995, [0], memory_bytes=memory, scratch_dir=tmp_path)  # one-time lazy imports
    tracemalloc.start()
    try:
        filter_thresholds(maps, 0.995, list(range(16)), memory_bytes=memory, scratch_dir=tmp_path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    outputs = 200 * 16 * 4 + 16 * 4
    assert peak <= memory * 5 // 4 + outputs + (16 << 10)


def test_top_images_skip_nonpositive_and_stable_ties() -> None:
    image_max = np.array([[0.0, 3.0], [2.0, 3.0], [-1.0, 1.0], [2.0, 5.0]], dtype=np.float32)
    rows = top_images(image_max, 3)
    assert rows.tolist() == [[1, 3, -1], [3, 0, 1]]
    assert top_images(image_max, 6).shape == (2, 6)


def test_top_image_pairs_sorted_by_row_and_sliced_by_chunk() -> None:
    # filter position 0 has top rows [4, 1], filter 1 [1, 3, 0]; -1 pads
    pairs = TopImagePairs(np.array([[4, 1, -1], [1, 3, 0]]))
    assert len(pairs) == 5
    # by row, then filter, then rank: (row 0: f1 r2), (row 1: f0 r1), (row 1: f1 r0), (row 3: f1 r1), (row 4: f0 r0)
    assert pairs.row.tolist() == [0, 1, 1, 3, 4]
    assert pairs.filter_pos.tolist() == [1, 0, 1, 1, 0]
    assert pairs.rank.tolist() == [2, 1, 0, 1, 0]
    assert pairs.of_rows(1, 4) == slice(1, 4)
    assert pairs.of_rows(2, 3) == slice(3, 3)
    assert pairs.of_rows(0, 5) == slice(0, 5)
    assert len(TopImagePairs(np.full((2, 3), -1))) == 0
