"""One unreadable file, one record: the feature cache, the target CNN's loader and the heatmaps all
get the status and message of ``read_image`` for a planted missing and a planted truncated file."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from lavise.data.images import UnreadableImage, read_image
from lavise.explain.heatmaps import tile_image, write_heatmaps
from lavise.features.extract import ImageObjectsDataset
from lavise.training.target_data import (
    AugmentedImages,
    ResizedImageSource,
    collate_skipping_unreadable,
    decode_all,
)

HEIGHT, WIDTH, RESIZE, CROP = 48, 64, 40, 32
NAMES = ["good.jpg", "missing.jpg", "truncated.jpg"]


@pytest.fixture()
def planted(tmp_path: Path) -> dict[str, Path]:
    """A good JPEG, a path with no file behind it, and a JPEG cut in half (its header still valid)."""
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8))
    picture.save(tmp_path / "good.jpg", quality=90)
    data = (tmp_path / "good.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    return {name: tmp_path / name for name in NAMES}


def _expected(planted: dict[str, Path]) -> dict[str, UnreadableImage]:
    records = {name: read_image(path) for name, path in planted.items() if name != "good.jpg"}
    assert records["missing.jpg"] == UnreadableImage("missing", f"{planted['missing.jpg']}: file not found")
    assert records["truncated.jpg"].status == "undecodable"
    assert records["truncated.jpg"].error.startswith(f"{planted['truncated.jpg']}: torchvision: ")
    return records


@pytest.mark.parametrize("decode", ["workers", "device"])
def test_feature_cache_records_read_images_status_and_message(planted: dict[str, Path], decode: str) -> None:
    expected = _expected(planted)
    images = pa.table(
        {
            "image_id": [1, 2, 3],
            "path": NAMES,
            "height": [HEIGHT] * 3,
            "width": [WIDTH] * 3,
            "status": ["ok"] * 3,  # the files went bad after the annotations stage checked them
        }
    )
    objects = pa.table(
        {
            "kind": pa.array([], pa.string()),
            "rle": pa.array([], pa.string()),
            "boxes": pa.array([], pa.list_(pa.float32())),
        }
    )
    root = planted["good.jpg"].parent
    dataset = ImageObjectsDataset(images, objects, np.zeros(4, np.int64), root, RESIZE, CROP, (4, 4), decode=decode)
    items = {name: dataset[position] for position, name in enumerate(NAMES)}
    assert items["good.jpg"]["status"] == "ok" and items["good.jpg"]["error"] is None
    for name, record in expected.items():
        assert (items[name]["status"], items[name]["error"]) == (record.status, record.error), name


def test_target_loader_skips_counts_and_logs_read_images_record(
    planted: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    expected = _expected(planted)
    files = [planted[name] for name in NAMES]
    with caplog.at_level(logging.WARNING, logger="lavise.training.target_data"):
        streamed = ResizedImageSource(files, RESIZE)
        items = {name: streamed[index][1] for index, name in enumerate(NAMES)}
    assert isinstance(items["good.jpg"], torch.Tensor) and items["good.jpg"].shape == (3, 40, 53)
    for name, record in expected.items():
        assert items[name] == record, name
        assert f"target: skipping {record}" in caplog.messages
    assert decode_all(files, RESIZE, 0, "decode")[1:] == [expected["missing.jpg"], expected["truncated.jpg"]]
    view = AugmentedImages(np.eye(3, dtype=np.float32), CROP, False, 0, source=streamed)
    images, labels, n_skipped = collate_skipping_unreadable([view[index] for index in range(3)])
    assert images.shape == (1, 3, CROP, CROP) and labels.tolist() == [[1.0, 0.0, 0.0]] and n_skipped == 2


def test_heatmaps_draw_grey_and_warn_with_read_images_record(
    planted: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    expected = _expected(planted)
    grey = torch.full((3, CROP, CROP), 128, dtype=torch.uint8)
    with caplog.at_level(logging.WARNING, logger="lavise.explain.heatmaps"):
        assert torch.equal(tile_image(planted["missing.jpg"], "image 2", RESIZE, CROP), grey)
        assert not torch.equal(tile_image(planted["good.jpg"], "image 1", RESIZE, CROP), grey)
        write_heatmaps(
            tmp_path / "heatmaps",
            [7],
            np.array([7]),
            np.array([0.5]),
            np.array([[0, 1, 2]]),
            np.ones((3, 8, 2, 2), dtype=np.float32),
            np.array([1, 2, 3]),
            lambda row: planted[NAMES[row]],
            {7: {"method": ["word"]}},
            (RESIZE, CROP),
        )
    assert f"heatmap image 2: {expected['missing.jpg']}, drawn grey" in caplog.messages
    assert f"heatmap image 3: {expected['truncated.jpg']}, drawn grey" in caplog.messages
    assert [path.name for path in (tmp_path / "heatmaps").iterdir()] == ["filter_0007.png"]
