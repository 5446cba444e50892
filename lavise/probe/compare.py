"""Comparing groups of the probe set by the filters that fire on them (the paper's §4.6 bias analysis).

Definitions (docs/PROTOCOL.md): an image is *qualified* for filter u when its maximum activation
exceeds ``T_u``, the threshold over the pooled probe set. For each filter and group g, the rate
is the share of g's usable images qualified for u; g is compared with the rest of the probe set
(with two groups: the other group) by ``difference = rate - rate_rest`` and the two-proportion
z-test (:mod:`lavise.metrics.two_proportion`). Benjamini-Hochberg runs over the distinct tests:
one per filter with two groups (the second group's row mirrors the first's), one per (filter,
group) with more. Within each group, filters are ranked by ``difference``, largest first (ties to
the lower filter index): rank 1 is the filter most over-represented in the group.

The table, one row per (filter, group): ``filter``, ``group``, ``n_images``, ``n_qualified``,
``rate``, ``rest_images``, ``rest_qualified``, ``rate_rest``, ``difference``, ``z``, ``p_value``,
``q_value``, ``significant`` (``q_value < fdr``) and ``rank``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lavise.metrics.two_proportion import benjamini_hochberg, two_proportion_z
from lavise.probe.listing import MIN_GROUP_IMAGES


def check_groups(groups: np.ndarray) -> list[str]:
    """The sorted group names of the usable images' labels ``[N]``; ValueError unless there are at
    least two groups, each of at least ``MIN_GROUP_IMAGES`` usable images, and no unlabelled image."""
    labels = pd.Series(groups, dtype=object)
    if labels.isna().any():
        raise ValueError(f"{int(labels.isna().sum())} probe image(s) have no group; comparing needs a group per image")
    sizes = labels.value_counts().sort_index()
    if len(sizes) < 2:
        raise ValueError(f"comparing needs at least two probe groups, found {list(sizes.index)}")
    small = sizes[sizes < MIN_GROUP_IMAGES]
    if len(small):
        raise ValueError(
            f"probe group {small.index[0]!r} has {int(small.iloc[0])} usable image(s); each group needs at "
            f"least {MIN_GROUP_IMAGES}"
        )
    return [str(name) for name in sizes.index]


def compare_groups(qualified: np.ndarray, groups: np.ndarray, filters: np.ndarray, fdr: float) -> pd.DataFrame:
    """The comparison table (module docstring) of ``qualified`` bool ``[N, F]`` for image groups ``[N]``."""
    names = check_groups(groups)
    labels = np.asarray(groups, dtype=object)
    total_images, total_qualified = qualified.shape[0], qualified.sum(axis=0)  # [F]
    blocks = []
    for group in names:
        member = labels == group
        n, x = int(member.sum()), qualified[member].sum(axis=0)  # x: [F]
        n_rest, x_rest = total_images - n, total_qualified - x
        z, p = two_proportion_z(x, n, x_rest, n_rest)
        blocks.append(
            pd.DataFrame(
                {
                    "filter": filters.astype(np.int64),
                    "group": group,
                    "n_images": n,
                    "n_qualified": x.astype(np.int64),
                    "rate": x / n,
                    "rest_images": n_rest,
                    "rest_qualified": x_rest.astype(np.int64),
                    "rate_rest": x_rest / n_rest,
                    "difference": x / n - x_rest / n_rest,
                    "z": z,
                    "p_value": p,
                }
            )
        )
    if len(names) == 2:  # one test per filter: the second group's row is the mirror of the first's
        q = benjamini_hochberg(blocks[0]["p_value"].to_numpy())
        blocks[0]["q_value"], blocks[1]["q_value"] = q, q
    else:
        q = benjamini_hochberg(np.concatenate([block["p_value"].to_numpy() for block in blocks]))
        for index, block in enumerate(blocks):
            block["q_value"] = q[index * len(filters) : (index + 1) * len(filters)]
    for block in blocks:
        block["significant"] = block["q_value"] < fdr
        order = np.lexsort((block["filter"].to_numpy(), -block["difference"].to_numpy()))
        rank = np.empty(len(block), dtype=np.int64)
        rank[order] = np.arange(1, len(block) + 1)
        block["rank"] = rank
    return pd.concat(blocks, ignore_index=True)


def example_rows(
    qualified: np.ndarray, image_max: np.ndarray, groups: np.ndarray, group: str, position: int, k: int
) -> np.ndarray:
    """Map rows of up to ``k`` of ``group``'s images qualified for filter position ``position``,
    highest maximum activation first (ties to the lower row)."""
    rows = np.flatnonzero((np.asarray(groups, dtype=object) == group) & qualified[:, position])
    order = np.argsort(-image_max[rows, position], kind="stable")
    return rows[order[:k]]
