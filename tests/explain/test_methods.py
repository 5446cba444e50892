"""The per-filter feature vectors against naive loops over filters and positions, and the registry."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lavise.explain.methods import (
    REGISTRY,
    Method,
    PairBatch,
    activation_masking,
    filter_attention,
    image_masking,
    mask_images,
    method_named,
    projection,
)
from lavise.features.pooling import pool


@pytest.fixture
def batch() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    maps = np.maximum(rng.normal(size=(4, 5, 3, 2)), 0)
    maps[2, 3] = 0.0  # an all-zero map: its cosine is 0 with everything
    filters = np.array([0, 4, 1, 3])
    thresholds = np.array([0.2, 0.5, 10.0, 0.0])
    return maps, filters, thresholds


def _tensor(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x.astype(np.float64))


def test_filter_attention_matches_paper_equation_loop(batch) -> None:
    maps, filters, _ = batch
    out = filter_attention(_tensor(maps), torch.from_numpy(filters)).numpy()
    for b in range(maps.shape[0]):
        u = maps[b, filters[b]].ravel()
        for k in range(maps.shape[1]):
            fk = maps[b, k].ravel()
            norms = math.sqrt(sum(v * v for v in u)) * math.sqrt(sum(v * v for v in fk))
            cos = sum(a * c for a, c in zip(u, fk)) / norms if norms > 0 else 0.0
            attended = [cos * v for v in fk]  # F_k^att, then average pooling over positions
            assert out[b, k] == pytest.approx(sum(attended) / len(attended), abs=1e-12)


def test_projection_matches_reference_loop(batch) -> None:
    maps, filters, _ = batch
    out = projection(_tensor(maps), torch.from_numpy(filters)).numpy()
    for b in range(maps.shape[0]):
        own = maps[b, filters[b]]
        norm = math.sqrt(sum(v * v for v in own.ravel()))
        for k in range(maps.shape[1]):
            total = 0.0
            for y in range(maps.shape[2]):
                for x in range(maps.shape[3]):
                    total += maps[b, k, y, x] * (own[y, x] / norm if norm > 0 else 0.0)
            assert out[b, k] == pytest.approx(total / own.size, abs=1e-12)


def test_activation_masking_matches_loop(batch) -> None:
    maps, filters, thresholds = batch
    out = activation_masking(_tensor(maps), torch.from_numpy(filters), _tensor(thresholds)).numpy()
    for b in range(maps.shape[0]):
        keep = maps[b, filters[b]] > thresholds[b]
        for k in range(maps.shape[1]):
            expected = sum(maps[b, k, y, x] for y in range(3) for x in range(2) if keep[y, x]) / 6
            assert out[b, k] == pytest.approx(expected, abs=1e-12)
    assert np.all(out[2] == 0)  # threshold above every value: the zero vector


def test_original_is_global_average_and_dispatch(batch) -> None:
    maps, filters, thresholds = batch
    assert np.allclose(pool(_tensor(maps)).numpy(), maps.mean(axis=(2, 3)))
    pairs = PairBatch(maps=_tensor(maps), filters=torch.from_numpy(filters), thresholds=_tensor(thresholds))
    same = method_named("projection").features(pairs)
    assert torch.equal(same, projection(_tensor(maps), torch.from_numpy(filters)))
    assert torch.equal(method_named("original_image").features(PairBatch(maps=_tensor(maps))), pool(_tensor(maps)))
    masked = activation_masking(_tensor(maps), torch.from_numpy(filters), _tensor(thresholds))
    assert torch.equal(method_named("activation_masking").features(pairs), masked)
    with pytest.raises(ValueError, match="unknown method"):
        method_named("gradcam")


def test_image_masking_zeroes_normalised_pixels_outside_region() -> None:
    images = torch.ones(1, 3, 4, 4)
    filter_map = torch.tensor([[[0.0, 1.0], [0.0, 0.0]]])
    masked = mask_images(images, filter_map, torch.tensor([0.5]))
    # bilinear 2x2 -> 4x4 (align_corners=False), by hand: source coordinate (x + 0.5) / 2 - 0.5
    # clamped at 0, so columns weigh (c0, c1) as (1, 0), (.75, .25), (.25, .75), (0, 1); rows alike
    upsampled = torch.tensor(
        [
            [0.0, 0.25, 0.75, 1.0],
            [0.0, 0.1875, 0.5625, 0.75],
            [0.0, 0.0625, 0.1875, 0.25],
            [0.0, 0.0, 0.0, 0.0],
        ]
    )
    expected_keep = (upsampled > 0.5).float()
    assert torch.equal(masked[0, 0], expected_keep)
    assert torch.equal(masked[0, 0], masked[0, 2])


def test_registry_entries_and_their_flags() -> None:
    assert tuple(REGISTRY) == (
        "original_image",
        "image_masking",
        "activation_masking",
        "filter_attention",
        "projection",
    )
    assert [name for name, m in REGISTRY.items() if not m.per_filter] == ["original_image"]
    assert [name for name, m in REGISTRY.items() if m.needs_cnn] == ["image_masking"]
    assert [name for name, m in REGISTRY.items() if m.constant_without_region] == ["activation_masking"]
    with pytest.raises(ValueError, match="explained per filter"):
        Method("bad", lambda batch: batch.maps, per_filter=False, needs_cnn=True)


def test_image_masking_reruns_the_cnn_on_the_masked_image() -> None:
    images = torch.ones(2, 3, 4, 4)
    maps = torch.zeros(2, 3, 2, 2)
    maps[0, 1] = torch.tensor([[0.0, 1.0], [0.0, 0.0]])  # pair 0: filter 1, the region of the test above
    maps[1, 2] = 1.0  # pair 1: filter 2 fires everywhere, nothing masked
    filters, thresholds = torch.tensor([1, 2]), torch.tensor([0.5, 0.5])

    def cnn(x: torch.Tensor) -> torch.Tensor:
        return x[:, :2] * 2  # "maps" [B, 2, 4, 4]: the masked input, doubled

    out = image_masking(images, maps, filters, thresholds, cnn)
    kept = 4 / 16  # 4 pixels of the 4x4 upsampled map exceed 0.5 (0.75, 1, 0.5625, 0.75: see above)
    assert out.tolist() == [[2 * kept, 2 * kept], [2.0, 2.0]]
    batch = PairBatch(maps=maps, filters=filters, thresholds=thresholds, images=images, cnn=cnn)
    assert torch.equal(method_named("image_masking").features(batch), out)
