"""The probe's explanations: T_u and top images by definition, one row per filter, every method's words."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as nnf

from lavise.explain.methods import REGISTRY
from lavise.probe.explain import ProbeSettings, distinct_concepts, explain_probe, explanation_table


def test_one_row_per_filter_with_thresholds_top_images_and_words() -> None:
    rng = np.random.default_rng(0)
    maps = rng.random((9, 4, 3, 3)).astype(np.float16)
    torch.manual_seed(0)
    explainer = torch.nn.Linear(4, 3).eval()
    words = np.array(["red", "green", "blue", "cyan", "grey"], dtype=object)
    vectors = nnf.normalize(torch.randn(5, 3), dim=1)
    settings = ProbeSettings(p=3, quantile=0.9, words_per_image=2, word_weighting="count", batch_size=4)
    filters = np.array([1, 3])
    result = explain_probe(maps, explainer, (words, vectors), filters, settings, torch.device("cpu"))
    ids, paths = np.arange(100, 109), np.array([f"g/{i}.jpg" for i in range(9)], dtype=object)
    table = explanation_table(result, ids, paths)
    assert table["filter"].tolist() == [1, 3]
    for pos, u in enumerate(filters):
        values = maps[:, u].astype(np.float64)
        assert table["threshold"][pos] == pytest.approx(np.quantile(values, 0.9), rel=1e-6)
        maxima = values.max(axis=(1, 2))
        order = sorted(range(9), key=lambda r: (-maxima[r], r))[:3]
        assert table["top_image_ids"][pos] == [100 + r for r in order]
        assert table["top_image_paths"][pos] == [f"g/{r}.jpg" for r in order]
    for name, method in REGISTRY.items():
        found = table[f"{name}_words"]
        if method.needs_cnn:  # no CNN given: the method explains no filter
            assert all(len(w) == 0 for w in found) and (table[name] == "").all()
        else:
            assert all(0 < len(w) <= 5 and set(w) <= set(words) for w in found)
    concepts = distinct_concepts(result)
    assert concepts["filter_attention"]["filters_explained"] == 2
    assert concepts["image_masking"] == {"filters_explained": 0, "n_distinct_concepts": 0}
