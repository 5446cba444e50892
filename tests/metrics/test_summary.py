"""The headline summary: a handful of figures per method, the target mAP only when trained."""

from __future__ import annotations

from lavise.metrics.summary import headline


def test_headline_picks_the_figures_that_matter() -> None:
    metrics = {
        "a": {
            "recall@5": 0.5,
            "recall@10": 0.7,
            "correlation": 0.2,
            "auprc": 0.3,
            "interval": {"recall@5": {"low": 0.4, "high": 0.6}, "recall@10": {"low": 0.6, "high": 0.8}},
            "seen": {"recall@5": 0.9},
        },
        "b": {"recall@5": None, "correlation": None, "auprc": None, "interval": {}},
    }
    expected_a = {"recall@5": 0.5, "recall@5_low": 0.4, "recall@5_high": 0.6, "correlation": 0.2, "auprc": 0.3}
    expected_b = {"recall@5": None, "recall@5_low": None, "recall@5_high": None, "correlation": None, "auprc": None}
    trained = headline(metrics, 5, {"trained": True, "val_map": 0.9})
    assert trained == {"headline": {"a": expected_a, "b": expected_b, "target_val_map": 0.9}}
    assert "target_val_map" not in headline(metrics, 5, {"trained": False})["headline"]
    assert "target_val_map" not in headline(metrics, 5, None)["headline"]
