"""PNG charts: valid images, identical bytes for identical data, a clear error for ragged series."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from lavise.report.figures import line_chart


def draw(path: Path) -> bytes:
    line_chart(
        path,
        [1, 2, 3],
        {"train": [3.0, 2.0, 1.5], "holdout": [3.1, 2.4, 2.2]},
        xlabel="epoch",
        ylabel="loss",
        title="loss",
        bands={"holdout": ([3.0, 2.3, 2.0], [3.2, 2.5, 2.4])},
    )
    return path.read_bytes()


def test_chart_is_a_png_and_reproducible(tmp_path: Path) -> None:
    first = draw(tmp_path / "a.png")
    second = draw(tmp_path / "b.png")
    assert first == second
    with Image.open(tmp_path / "a.png") as image:
        assert image.format == "PNG" and image.size == (640, 400)
        assert "Software" not in image.info
    assert not list(tmp_path.glob("*.tmp"))


def test_ragged_series_is_an_error_and_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="2 values for 3"):
        line_chart(tmp_path / "c.png", [1, 2, 3], {"a": [1.0, 2.0]}, xlabel="x", ylabel="y", title="t")
    assert not list(tmp_path.iterdir())
