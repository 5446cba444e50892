"""The target CNN's data: labels from the annotation tables, seeded crops, unreadable images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from lavise.data.images import UnreadableImage, read_image
from lavise.data.transforms import random_resized_crop_box
from lavise.training.target_data import (
    CROP_RATIO,
    CROP_SCALE,
    collate_skipping_unreadable,
    load_multilabel_data,
    make_views,
    sample_generator,
)
from tests.training.synthetic import TARGET_CATEGORIES


def _box(height: int, width: int, generator: torch.Generator) -> tuple[int, int, int, int]:
    return random_resized_crop_box(height, width, generator, scale=CROP_SCALE, ratio=CROP_RATIO)


def test_random_resized_crop_box_is_seeded_and_inside() -> None:
    boxes = [_box(73, 91, sample_generator(5, 1, i)) for i in range(200)]
    assert boxes == [_box(73, 91, sample_generator(5, 1, i)) for i in range(200)]
    assert boxes != [_box(73, 91, sample_generator(5, 2, i)) for i in range(200)]
    for top, left, h, w in boxes:
        assert 0 <= top and top + h <= 73 and 0 <= left and left + w <= 91
        assert 0.35 * 73 * 91 * 0.9 <= h * w <= 73 * 91


def test_load_multilabel_data_labels_and_counts(tiny_dataset: Path) -> None:
    data = load_multilabel_data(tiny_dataset / "annotations", tiny_dataset / "raw" / "demo")
    assert data.categories == TARGET_CATEGORIES
    assert len(data.train) == 9 and len(data.val) == 5
    assert data.counts["train_images_not_ok"] == 1 and data.counts["objects_unlabelled_category"] == 1
    objects = pq.read_table(tiny_dataset / "annotations" / "objects.parquet").to_pylist()
    for row, image_id in enumerate(data.train.image_ids):
        expected = {o["category"] for o in objects if o["image_id"] == image_id} - {"dropped thing"}
        assert {TARGET_CATEGORIES[c] for c in np.flatnonzero(data.train.labels[row])} == expected


def test_collate_skips_unreadable_and_counts_them() -> None:
    image, label = torch.zeros(3, 2, 2, dtype=torch.uint8), torch.tensor([1.0, 0.0])
    unreadable = UnreadableImage("missing", "a.jpg: file not found")
    images, labels, n_skipped = collate_skipping_unreadable(
        [(unreadable, label), (image, label), (image + 1, label * 0)]
    )
    assert images.shape == (2, 3, 2, 2) and int(images[1].max()) == 1
    assert labels.tolist() == [[1.0, 0.0], [0.0, 0.0]] and n_skipped == 1
    images, labels, n_skipped = collate_skipping_unreadable([(unreadable, label)])
    assert len(images) == 0 and len(labels) == 0 and n_skipped == 1


def test_cached_views_drop_the_unreadable_image_and_share_the_decode(tiny_dataset: Path) -> None:
    data = load_multilabel_data(tiny_dataset / "annotations", tiny_dataset / "raw" / "demo")
    counter: dict[str, int] = {}
    train_view, eval_view = make_views(data.train, 32, 37, 0, True, 0, "decode", counter, "unreadable")
    assert counter == {"unreadable": 1}  # 0008.jpg is truncated
    assert len(train_view) == len(eval_view) == 8 and train_view.cached is eval_view.cached
    patch, _ = eval_view[0]
    assert patch.shape == (3, 32, 32) and patch.dtype == torch.uint8
    train_view.epoch = 1
    first, _ = train_view[0]
    assert torch.equal(first, train_view[0][0])  # the crop depends only on (seed, epoch, index)
    streamed, _ = make_views(data.train, 32, 37, 0, False, 0, "decode", counter, "unreadable")
    corrupt = [f.name for f in data.train.files].index("0008.jpg")
    assert len(streamed) == 9 and streamed[corrupt][0] == read_image(data.train.files[corrupt])  # found per item
    assert streamed[corrupt][0].status == "undecodable"
