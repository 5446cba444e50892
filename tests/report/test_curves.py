"""Learning curves: both charts from a history CSV, the same bytes twice, a clear error for a bad file."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from lavise.report.curves import CURVES, read_history, write_learning_curves

HISTORY = "epoch,train_loss,holdout_loss,holdout_top1,holdout_top5\n1,3.0,3.2,0.2,0.5\n2,2.0,2.5,0.4,0.8\n"


def test_history_is_read_by_column(tmp_path: Path) -> None:
    (tmp_path / "h.csv").write_text(HISTORY)
    history = read_history(tmp_path / "h.csv")
    assert history["epoch"] == [1.0, 2.0] and history["holdout_loss"] == [3.2, 2.5]


def test_both_charts_are_written_and_reproducible(tmp_path: Path) -> None:
    (tmp_path / "h.csv").write_text(HISTORY)
    first = write_learning_curves(tmp_path / "a", read_history(tmp_path / "h.csv"))
    second = write_learning_curves(tmp_path / "b", read_history(tmp_path / "h.csv"))
    assert [p.name for p in first] == list(CURVES) == ["train_loss.png", "train_accuracy.png"]
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes()
        with Image.open(a) as image:
            assert image.format == "PNG"


def test_a_history_without_a_column_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "h.csv").write_text("epoch,train_loss\n1,3.0\n")
    with pytest.raises(ValueError, match=r"h\.csv: no rows or missing columns \['holdout_loss'"):
        read_history(tmp_path / "h.csv")
    (tmp_path / "h.csv").write_text(HISTORY.replace("3.2", "x"))
    with pytest.raises(ValueError, match=r"h\.csv: could not convert"):
        read_history(tmp_path / "h.csv")
