"""Group comparison: rates, tests and ranks against a naive loop; a planted filter found, permuted labels not."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lavise.metrics.two_proportion import benjamini_hochberg
from lavise.probe.compare import check_groups, compare_groups, example_rows


def _planted(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """60 + 60 images, 40 filters firing at 10%; filter 7 fires on 80% of group b, 10% of a."""
    rng = np.random.default_rng(seed)
    groups = np.array(["a"] * 60 + ["b"] * 60, dtype=object)
    qualified = rng.random((120, 40)) < 0.1
    qualified[60:, 7] = rng.random(60) < 0.8
    return qualified, groups


def test_rates_tests_and_ranks_match_a_naive_loop_for_three_groups() -> None:
    rng = np.random.default_rng(1)
    qualified = rng.random((30, 6)) < 0.4
    groups = np.array(["x"] * 8 + ["y"] * 12 + ["z"] * 10, dtype=object)
    filters = np.array([3, 5, 8, 9, 11, 20])
    table = compare_groups(qualified, groups, filters, fdr=0.05)
    assert len(table) == 18
    p_values = []
    for group in ("x", "y", "z"):
        for pos, filter_index in enumerate(filters):
            row = table[(table["group"] == group) & (table["filter"] == filter_index)].iloc[0]
            inside = [qualified[i, pos] for i in range(30) if groups[i] == group]
            outside = [qualified[i, pos] for i in range(30) if groups[i] != group]
            rate, rest = sum(inside) / len(inside), sum(outside) / len(outside)
            pooled = (sum(inside) + sum(outside)) / 30
            se = math.sqrt(pooled * (1 - pooled) * (1 / len(inside) + 1 / len(outside)))
            z = (rate - rest) / se if se else 0.0
            assert row["rate"] == pytest.approx(rate) and row["rate_rest"] == pytest.approx(rest)
            assert row["difference"] == pytest.approx(rate - rest) and row["z"] == pytest.approx(z)
            assert row["p_value"] == pytest.approx(math.erfc(abs(z) / math.sqrt(2)))
            p_values.append(row["p_value"])
    np.testing.assert_allclose(table["q_value"].to_numpy(), benjamini_hochberg(np.array(p_values)))
    for _, block in table.groupby("group"):
        ordered = block.sort_values("rank")
        assert ordered["rank"].tolist() == list(range(1, 7))
        assert (np.diff(ordered["difference"].to_numpy()) <= 0).all()


def test_two_groups_share_one_test_per_filter() -> None:
    qualified, groups = _planted()
    table = compare_groups(qualified, groups, np.arange(40), fdr=0.05)
    a, b = table[table["group"] == "a"], table[table["group"] == "b"]
    np.testing.assert_allclose(a["difference"].to_numpy(), -b["difference"].to_numpy())
    np.testing.assert_allclose(a["q_value"].to_numpy(), b["q_value"].to_numpy())
    np.testing.assert_allclose(b["q_value"].to_numpy(), benjamini_hochberg(b["p_value"].to_numpy()))


def test_the_planted_filter_ranks_first_and_alone_is_significant() -> None:
    qualified, groups = _planted()
    table = compare_groups(qualified, groups, np.arange(40), fdr=0.05)
    top_b = table[(table["group"] == "b") & (table["rank"] == 1)].iloc[0]
    assert top_b["filter"] == 7 and top_b["significant"]
    assert table.loc[table["significant"], "filter"].unique().tolist() == [7]


def test_permuted_labels_leave_no_filter_significant() -> None:
    qualified, groups = _planted()
    permuted = np.random.default_rng(3).permutation(groups)
    table = compare_groups(qualified, permuted, np.arange(40), fdr=0.05)
    assert not table["significant"].any()


def test_examples_are_qualified_members_by_activation() -> None:
    qualified = np.array([[True], [True], [False], [True], [True]])
    image_max = np.array([[1.0], [3.0], [9.0], [2.0], [3.0]])
    groups = np.array(["a", "a", "a", "b", "a"], dtype=object)
    assert example_rows(qualified, image_max, groups, "a", 0, 2).tolist() == [1, 4]
    assert example_rows(qualified, image_max, groups, "b", 0, 5).tolist() == [3]


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        (["a", "a", "a"], "at least two probe groups"),
        (["a", "a", "b"], "group 'b' has 1 usable image"),
        (["a", None, "b", "b"], "have no group"),
    ],
)
def test_bad_groups_give_one_message(groups: list[str | None], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_groups(np.array(groups, dtype=object))
