"""Pointing game, energy and top-region IoU against hand-computed examples and naive loops."""

from __future__ import annotations

import numpy as np
import pytest

from lavise.metrics.energy import energy_inside
from lavise.metrics.pointing_game import pointing_hit
from lavise.metrics.top_region_iou import agreement_matrix, region_size, top_region, top_region_iou


def _mask(shape: tuple[int, int], pixels: list[tuple[int, int]]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    for row, col in pixels:
        mask[row, col] = True
    return mask


@pytest.mark.parametrize(("col", "tolerance", "hit"), [(24, 15, True), (25, 15, True), (26, 15, False), (10, 0, True)])
def test_pointing_hit_within_the_tolerance(col: int, tolerance: int, hit: bool) -> None:
    saliency = np.zeros((40, 40))
    saliency[10, 10] = 1.0  # the maximum, 14 / 15 / 16 px left of the mask pixel
    assert pointing_hit(saliency, _mask((40, 40), [(10, col)]), tolerance) is hit


def test_pointing_diagonal_distance_is_euclidean() -> None:
    saliency = np.zeros((40, 40))
    saliency[0, 0] = 1.0
    assert pointing_hit(saliency, _mask((40, 40), [(9, 12)]), 15)  # sqrt(81 + 144) = 15
    assert not pointing_hit(saliency, _mask((40, 40), [(10, 12)]), 15)  # sqrt(100 + 144) > 15


def test_flat_map_or_empty_mask_is_a_miss() -> None:
    assert not pointing_hit(np.full((8, 8), 0.3), np.ones((8, 8), dtype=bool), 15)
    assert not pointing_hit(np.random.default_rng(0).random((8, 8)), np.zeros((8, 8), dtype=bool), 15)


def test_pointing_matches_a_naive_loop() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        saliency, mask = rng.random((30, 30)), rng.random((30, 30)) > 0.97
        row, col = np.unravel_index(np.argmax(saliency), saliency.shape)
        naive = any(mask[y, x] and (y - row) ** 2 + (x - col) ** 2 <= 25 for y in range(30) for x in range(30))
        assert pointing_hit(saliency, mask, 5) == naive


def test_energy_is_the_positive_mass_inside() -> None:
    saliency = np.zeros((4, 4))
    saliency[0, :2] = 1.0  # inside: 2
    saliency[1, 0] = 2.0  # inside: 2 more
    saliency[3, 3] = 3.0  # outside positive: 3
    saliency[2, 2] = -5.0  # negative: ignored
    mask = _mask((4, 4), [(0, 0), (0, 1), (1, 0), (2, 2)])
    assert energy_inside(saliency, mask) == pytest.approx(4 / 7)
    assert energy_inside(np.zeros((4, 4)), mask) == 0.0
    assert energy_inside(-np.ones((4, 4)), mask) == 0.0


def test_top_region_breaks_ties_in_row_major_order() -> None:
    saliency = np.array([[1.0, 2.0], [2.0, 2.0]])
    assert top_region(saliency, 2).tolist() == [[False, True], [True, False]]
    assert top_region(saliency, 0).sum() == 0


def test_top_region_iou_uses_the_mask_area() -> None:
    saliency = np.array([[5.0, 4.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    mask = _mask((3, 3), [(0, 0), (0, 1), (2, 2)])  # area 3: top 3 = (0,0), (0,1), (1,0)
    assert top_region_iou(saliency, mask) == pytest.approx(2 / 4)
    assert top_region_iou(np.ones((3, 3)), mask) == 0.0  # flat: no top region
    assert top_region_iou(saliency, np.zeros((3, 3), dtype=bool)) == 0.0


def test_agreement_is_symmetric_with_unit_diagonal_and_matches_a_loop() -> None:
    rng = np.random.default_rng(2)
    maps = rng.random((4, 10, 10))
    maps[3] = 0.0  # flat: agrees with nothing, not even itself
    matrix = agreement_matrix(maps, 0.15)
    assert np.allclose(matrix, matrix.T)
    assert matrix.diagonal().tolist() == [1.0, 1.0, 1.0, 0.0]
    k = region_size((10, 10), 0.15)
    assert k == 15
    for i in range(3):
        for j in range(3):
            a = set(np.argsort(-maps[i].ravel(), kind="stable")[:k])
            b = set(np.argsort(-maps[j].ravel(), kind="stable")[:k])
            assert matrix[i, j] == pytest.approx(len(a & b) / len(a | b))


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        top_region_iou(np.zeros((3, 3)), np.zeros((4, 4), dtype=bool))
