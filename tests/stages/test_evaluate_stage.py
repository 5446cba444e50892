"""The evaluate stage's own steps: filter choices checked up front, annotation sets, all-or-nothing outputs."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

import stages.evaluate as stage
from lavise.io import write_parquet
from lavise.outputs import output_set_id, with_set_id

SETTINGS = {"filters": "all", "image_masking_filters": {"every": 8}, "heatmap_filters": [0, 3]}


def test_heatmap_filters_outside_the_layer_stop_the_stage() -> None:
    filters, masking = stage.choose_filters(SETTINGS, 16)
    assert filters.tolist() == list(range(16)) and np.flatnonzero(masking).tolist() == [0, 8]
    with pytest.raises(ValueError, match=r"evaluate.heatmap_filters: filter\(s\) \[600\] outside the layer's 0..15"):
        stage.choose_filters({**SETTINGS, "heatmap_filters": [0, 600]}, 16)
    assert stage.choose_filters({**SETTINGS, "heatmap_filters": []}, 16)[0].shape == (16,)


def test_annotations_of_two_runs_are_refused(tmp_path: Path) -> None:
    table = pd.DataFrame({"image_id": [1], "path": ["a.jpg"]})
    for name, run in (("images", 1), ("objects", 0), ("categories", 0)):
        write_parquet(tmp_path / f"{name}.parquet", with_set_id(_arrow(table), output_set_id({"seed": run})))
    with pytest.raises(ValueError, match="mixes two runs: objects.parquet and images.parquet"):
        stage.load_annotations(tmp_path, np.array([1]))


def test_interrupted_writing_leaves_old_heatmaps_and_no_metrics(tmp_path: Path, monkeypatch) -> None:
    results, metrics = tmp_path / "results", tmp_path / "metrics" / "recall.json"
    (results / "heatmaps").mkdir(parents=True)
    (results / "heatmaps" / "filter_0000.png").write_bytes(b"old sheet")
    summary = metrics.parent / "summary.json"
    metrics.parent.mkdir()
    metrics.write_text("{}")
    summary.write_text("{}")

    def interrupted_sheets(out_dir: Path, *args: object) -> None:
        (out_dir / "filter_0000.png").write_bytes(b"new sheet")
        raise KeyboardInterrupt

    monkeypatch.setattr(stage, "write_tables", lambda *args: None)
    monkeypatch.setattr(stage, "write_sheets", interrupted_sheets)
    paths = SimpleNamespace(results=results, metrics=metrics, summary=summary)
    inputs = SimpleNamespace(image_ids=np.array([7]), annotations=SimpleNamespace(categories=SimpleNamespace(names=[])))
    selection = SimpleNamespace(top_rows=np.array([[0]]))
    netdissect = SimpleNamespace(labels=np.array([-1]), label_iou=np.array([0.0]))
    with pytest.raises(KeyboardInterrupt):
        stage.write_outputs(paths, inputs, selection, ({}, None, netdissect), {"top_s": [5]}, (256, 224))
    assert not metrics.exists() and not summary.exists()
    assert (results / "heatmaps" / "filter_0000.png").read_bytes() == b"old sheet"
    assert sorted(p.name for p in results.iterdir()) == ["heatmaps"]


def _arrow(frame: pd.DataFrame):
    import pyarrow as pa

    return pa.Table.from_pandas(frame, preserve_index=False)
