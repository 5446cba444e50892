"""Thresholds, regions, IoU, recall@s and NetDissect against hand-computed cases and naive loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lavise.metrics.recall import (
    NetDissectAccumulator,
    activation_regions,
    filter_thresholds,
    iou_from_counts,
    label_recall,
    nearest_words,
    order_statistic_positions,
    recall_at,
    region_overlaps,
    summarise_recall,
    top_images,
)


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
    from lavise.metrics import recall

    calls = []

    class Spy(recall._ScratchRows):
        def __init__(self, path, shape, dtype) -> None:
            calls.append((str(path), tuple(shape), np.dtype(dtype)))
            super().__init__(path, shape, dtype)

    monkeypatch.setattr(recall, "_ScratchRows", Spy)
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


def _naive_bilinear(small: np.ndarray, size: int) -> np.ndarray:
    """PyTorch align_corners=False bilinear, pixel by pixel."""
    h, w = small.shape
    out = np.zeros((size, size))
    for y in range(size):
        sy = max((y + 0.5) * h / size - 0.5, 0.0)
        y0 = int(math.floor(sy))
        y1, ly = min(y0 + 1, h - 1), sy - y0
        for x in range(size):
            sx = max((x + 0.5) * w / size - 0.5, 0.0)
            x0 = int(math.floor(sx))
            x1, lx = min(x0 + 1, w - 1), sx - x0
            out[y, x] = (1 - ly) * ((1 - lx) * small[y0, x0] + lx * small[y0, x1]) + ly * (
                (1 - lx) * small[y1, x0] + lx * small[y1, x1]
            )
    return out


def test_upsampled_iou_matches_pixel_loop() -> None:
    rng = np.random.default_rng(2)
    maps = rng.random((3, 3, 3)).astype(np.float32)
    thresholds = np.array([0.5, 0.7, 2.0], dtype=np.float32)
    size = 12
    masks = rng.random((4, size, size)) > 0.6
    regions = activation_regions(torch.from_numpy(maps), torch.from_numpy(thresholds), size)
    r_area, m_area, inter = region_overlaps(regions, torch.from_numpy(masks))
    iou = iou_from_counts(r_area, m_area, inter).numpy()
    for k in range(3):
        region = _naive_bilinear(maps[k].astype(np.float64), size) > thresholds[k]
        assert np.array_equal(region, regions[k].numpy())
        for j in range(4):
            both = either = 0
            for y in range(size):
                for x in range(size):
                    both += bool(region[y, x] and masks[j, y, x])
                    either += bool(region[y, x] or masks[j, y, x])
            assert iou[k, j] == pytest.approx(both / either if either else 0.0)
    assert not regions[2].any() and (iou[2] == 0).all()
    none_active = torch.zeros((0, size, size), dtype=torch.bool)
    r_area, m_area, inter = region_overlaps(none_active, torch.from_numpy(masks[:0]))
    assert r_area.shape == (0,) and m_area.shape == (0,) and inter.shape == (0, 0)
    assert iou_from_counts(*region_overlaps(none_active, torch.from_numpy(masks))).shape == (0, 4)


def test_recall_empty_and_nonempty_ground_truth() -> None:
    # token space: 0 dog, 1 cat, 2 tree, 3 sky
    truth = np.array([[1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 1]], dtype=bool)
    words = np.array([[-1, 1, 0], [0, 1, 2], [2, -1, 0]])  # -1 = not a category token
    recall = recall_at(words, truth, [1, 2, 3, 20])
    assert recall[1][0] == 0.0 and recall[2][0] == 0.5 and recall[3][0] == 1.0 and recall[20][0] == 1.0
    assert all(math.isnan(recall[s][1]) for s in (1, 2, 3, 20))
    assert recall[1][2] == 0.5 and recall[3][2] == 0.5


def test_label_recall_and_summary() -> None:
    truth = np.array([[1, 1, 0], [0, 0, 1], [0, 0, 0]], dtype=bool)
    label = np.array([[0, 1, 0], [0, 1, 0], [1, 0, 0]], dtype=bool)
    assert np.allclose(label_recall(label, truth)[:2], [0.5, 0.0])
    summary = summarise_recall(np.array([1.0, 0.0, math.nan, 0.5, 0.25]), np.array([0, 0, 0, 1, 2]))
    assert summary["mean"] == pytest.approx(1.75 / 4)
    assert summary["n_pairs"] == 4 and summary["n_filters"] == 3
    assert summary["per_filter"]["median"] == pytest.approx(0.5)  # filter means 0.5, 0.5, 0.25
    assert summary["per_filter"]["mean"] == pytest.approx(1.25 / 3)


def test_netdissect_rule_hand_built() -> None:
    # 2 filters, 2 categories, 3 images of 1x4 pixels.
    # image 0: R0 = 1100, R1 = 0011; cat0 = 1000, cat1 = 0011
    # image 1: R0 = 1000, R1 empty;  cat0 = 1100
    # image 2: R0 empty, R1 = 0001;  cat1 = 0001
    acc = NetDissectAccumulator(2, 2)
    regions = [np.array([[1, 1, 0, 0], [0, 0, 1, 1]]), np.array([[1, 0, 0, 0]]), np.array([[0, 0, 0, 1]])]
    actives = [np.array([0, 1]), np.array([0]), np.array([1])]
    masks = [np.array([[1, 0, 0, 0], [0, 0, 1, 1]]), np.array([[1, 1, 0, 0]]), np.array([[0, 0, 0, 1]])]
    cats = [np.array([0, 1]), np.array([0]), np.array([1])]
    for region, active, mask, cat in zip(regions, actives, masks, cats):
        r, m = torch.tensor(region, dtype=torch.bool), torch.tensor(mask, dtype=torch.bool)
        r_area, m_area, inter = region_overlaps(r, m)
        acc.add(active, r_area.numpy(), inter.numpy(), cat, m_area.numpy())
    iou = acc.iou()
    # filter 0: cat0 inter 1+1=2, union (2+1-1)+(1+2-1)=4 -> 0.5; cat1 inter 0, union 2+2 + 1+0 + 0+1 = 6 -> 0
    # filter 1: cat0 inter 0, union (2+1)+(0+2) = 5 -> 0; cat1 inter 2+1=3, union 2+1 = 3 -> 1
    assert iou == pytest.approx(np.array([[0.5, 0.0], [0.0, 1.0]]))
    labels, best = acc.labels()
    assert labels.tolist() == [0, 1] and best.tolist() == [0.5, 1.0]
    empty = NetDissectAccumulator(1, 2)
    assert empty.labels()[0].tolist() == [-1]


def test_nearest_words_matches_full_sort() -> None:
    rng = np.random.default_rng(3)
    vocab = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(5000, 8)).astype(np.float32)), dim=1)
    queries = torch.from_numpy(rng.normal(size=(7, 8)).astype(np.float32))
    found = nearest_words(queries, vocab, 20, row_batch=3, vocab_chunk=997, group=4)
    full = torch.nn.functional.normalize(queries, dim=1) @ vocab.T
    expected = torch.argsort(full, dim=1, descending=True)[:, :20]
    assert torch.equal(found, expected)
    assert nearest_words(queries, vocab[:5], 20).shape == (7, 5)


def test_grouped_top_k_exact_with_padding_and_ties() -> None:
    from lavise.metrics.recall import _chunk_top_k

    rng = np.random.default_rng(4)
    scores = torch.from_numpy(rng.normal(size=(5, 1003)).astype(np.float32))
    scores[0, :] = 0.0
    scores[0, [7, 500, 1002]] = torch.tensor([3.0, 2.0, 1.0])
    values, index = _chunk_top_k(scores, 6, 16)
    expected_values, _ = scores.topk(6, dim=1)
    assert torch.equal(values, expected_values)
    assert torch.equal(scores.gather(1, index), values)
    assert index[0, :3].tolist() == [7, 500, 1002]
