"""The target CNN's data: multi-hot image labels from the annotation tables, decoded images
(cached in memory or streamed), and the seeded augmentation.

- Augmentation: random resized crop (scale 0.35-1, so multi-label objects mostly stay in view)
  to `crop` and horizontal flip, drawn from a generator seeded by (seed, epoch, image index):
  runs are identical whatever the number of DataLoader workers.
- Caching: when a dataset has at most `max_cached_images` images, every image is decoded once,
  resized (shorter side `crop * resize / transform_crop`) and kept in memory as uint8 for all
  epochs (~3 * 1.2 * s^2 bytes each: 160 px -> ~90 kB; 5000 images -> ~0.5 GB). Larger
  datasets are streamed: decoded in DataLoader workers every epoch, memory flat in size.
- An unreadable image is logged with the status and message of ``lavise.data.images.read_image``
  and left out of its batch (its ``UnreadableImage`` travels through the dataset and is counted by
  the collate function), never a crash mid-epoch.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
import torchvision.transforms.v2.functional as tvf
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from lavise.data.images import DEFAULT_MAX_PIXELS, OK, UnreadableImage, read_image
from lavise.data.transforms import random_resized_crop_box, resize_shorter_side

log = logging.getLogger(__name__)

LABEL_ROLES = ("seen", "unseen")
CROP_SCALE = (0.35, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
DEFAULT_MAX_CACHED_IMAGES = 5000


@dataclass(frozen=True)
class LabelledImages:
    """Image files of one split with their multi-hot category labels."""

    image_ids: np.ndarray  # int64 [n]
    files: list[Path]
    labels: np.ndarray  # float32 [n, n_categories]
    read: Callable[[Path], torch.Tensor | UnreadableImage] = read_image  # with the stage's pixel limit and root

    def __len__(self) -> int:
        return len(self.files)


@dataclass(frozen=True)
class MultiLabelData:
    """Both splits of the reference dataset, the label categories (sorted) and what was left out."""

    categories: list[str]
    train: LabelledImages
    val: LabelledImages
    counts: dict[str, int]


def load_multilabel_data(
    annotations_dir: str | Path, image_root: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS
) -> MultiLabelData:
    """Read the annotation tables into train/val image lists with multi-hot labels.

    Labels are every kept category (role seen or unseen) of the image; images whose status is
    not ``ok`` are left out and counted. Objects of unknown or dropped categories are counted.
    """
    annotations_dir, image_root = Path(annotations_dir), Path(image_root)
    categories_table = pq.read_table(annotations_dir / "categories.parquet", columns=["category", "role"])
    role = categories_table.column("role").to_pylist()
    names = categories_table.column("category").to_pylist()
    categories = sorted(cat for cat, r in zip(names, role, strict=True) if r in LABEL_ROLES)
    if not categories:
        raise ValueError(f"{annotations_dir / 'categories.parquet'} has no category with role seen or unseen")
    images = pq.read_table(annotations_dir / "images.parquet", columns=["image_id", "path", "split", "status"])
    objects = pq.read_table(annotations_dir / "objects.parquet", columns=["image_id", "category"])

    object_category = pc.index_in(objects.column("category"), value_set=pa.array(categories))
    object_category = object_category.fill_null(-1).to_numpy().astype(np.int64)
    object_image = objects.column("image_id").to_numpy().astype(np.int64)
    counts = {"objects_unlabelled_category": int((object_category < 0).sum())}
    object_image, object_category = object_image[object_category >= 0], object_category[object_category >= 0]

    status = images.column("status").to_numpy(zero_copy_only=False)
    split = images.column("split").to_numpy(zero_copy_only=False)
    image_ids = images.column("image_id").to_numpy().astype(np.int64)
    paths = images.column("path").to_pylist()
    splits: dict[str, LabelledImages] = {}
    for name in ("train", "val"):
        in_split = split == name
        ok = in_split & (status == OK)
        counts[f"{name}_images_not_ok"] = int((in_split & ~ok).sum())
        ids = image_ids[ok]
        labels = np.zeros((len(ids), len(categories)), dtype=np.float32)
        order = np.argsort(ids, kind="stable")
        position = np.searchsorted(ids, object_image, sorter=order).clip(0, max(len(ids) - 1, 0))
        hit = (ids[order[position]] == object_image) if len(ids) else np.zeros(len(object_image), dtype=bool)
        labels[order[position[hit]], object_category[hit]] = 1.0
        files = [image_root / paths[i] for i in np.flatnonzero(ok)]
        read = functools.partial(read_image, max_pixels=max_pixels, root=image_root)
        splits[name] = LabelledImages(ids, files, labels, read)
        counts[f"{name}_images"] = len(ids)
        counts[f"{name}_images_without_label"] = int((labels.sum(1) == 0).sum())
    if len(splits["train"]) == 0:
        raise ValueError(f"{annotations_dir / 'images.parquet'} has no train image with status ok")
    return MultiLabelData(categories, splits["train"], splits["val"], counts)


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """Independent, reproducible stream for one (epoch, image) pair."""
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


class ResizedImageSource(Dataset):
    """Decodes image i and resizes its shorter side; ``read_image``'s record for an unreadable file."""

    def __init__(self, files: Sequence[Path], shorter_side: int, read: Callable[[Path], Any] = read_image) -> None:
        self.files = list(files)
        self.shorter_side = shorter_side
        self.read = read

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | UnreadableImage]:
        image = self.read(self.files[index])
        if isinstance(image, UnreadableImage):
            log.warning("target: skipping %s", image)
            return index, image
        return index, resize_shorter_side(image, self.shorter_side)


def _first_item(batch: list[Any]) -> Any:
    """Collate of batch size 1: the item itself (a top-level function, so workers can pickle it)."""
    return batch[0]


def decode_all(
    files: Sequence[Path],
    shorter_side: int,
    num_workers: int,
    description: str,
    read: Callable[[Path], Any] = read_image,
) -> list[torch.Tensor | UnreadableImage]:
    """Decode and resize every file once (in workers), in file order."""
    images: dict[int, torch.Tensor | UnreadableImage] = {}
    loader = DataLoader(
        ResizedImageSource(files, shorter_side, read), batch_size=1, collate_fn=_first_item, num_workers=num_workers
    )
    for index, image in tqdm(loader, total=len(files), desc=description, unit="img"):
        images[index] = image
    return [images[index] for index in range(len(files))]


class AugmentedImages(Dataset):
    """Training or evaluation views of images, from an in-memory cache or streamed from disk.

    ``train=True``: seeded random resized crop + flip; otherwise the centre crop.
    Items are (uint8 [3, crop, crop], or the ``UnreadableImage`` of an unreadable file, labels [C]).
    """

    def __init__(
        self,
        labels: np.ndarray,
        crop: int,
        train: bool,
        seed: int,
        cached: list[torch.Tensor] | None = None,
        source: ResizedImageSource | None = None,
    ) -> None:
        if (cached is None) == (source is None):
            raise ValueError("give exactly one of cached images or a streaming source")
        self.labels = torch.from_numpy(labels)
        self.crop = crop
        self.train = train
        self.seed = seed
        self.cached = cached
        self.source = source
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.labels)

    def _image(self, index: int) -> torch.Tensor | UnreadableImage:
        if self.cached is not None:
            return self.cached[index]
        return self.source[index][1]

    def __getitem__(self, index: int) -> tuple[torch.Tensor | UnreadableImage, torch.Tensor]:
        image = self._image(index)
        if isinstance(image, UnreadableImage):
            return image, self.labels[index]
        if not self.train:
            return tvf.center_crop(image, [self.crop, self.crop]), self.labels[index]
        generator = sample_generator(self.seed, self.epoch, index)
        top, left, h, w = random_resized_crop_box(
            image.shape[-2], image.shape[-1], generator, scale=CROP_SCALE, ratio=CROP_RATIO
        )
        patch = tvf.resized_crop(
            image, top, left, h, w, [self.crop, self.crop], interpolation=tvf.InterpolationMode.BILINEAR, antialias=True
        )
        if bool(torch.rand(1, generator=generator) < 0.5):
            patch = patch.flip(-1)
        return patch, self.labels[index]


def collate_skipping_unreadable(
    batch: list[tuple[torch.Tensor | UnreadableImage, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Stack the readable samples; the count of unreadable ones travels with the batch."""
    kept = [(image, label) for image, label in batch if not isinstance(image, UnreadableImage)]
    n_skipped = len(batch) - len(kept)
    if not kept:
        return torch.empty(0), torch.empty(0), n_skipped
    images, labels = zip(*kept, strict=True)
    return torch.stack(images), torch.stack(labels), n_skipped


def make_views(
    images: LabelledImages,
    crop: int,
    shorter_side: int,
    seed: int,
    cache: bool,
    num_workers: int,
    description: str,
    counter: dict[str, int],
    key: str,
) -> tuple[AugmentedImages, AugmentedImages]:
    """Train (augmented) and eval (centre crop) views of the same images.

    Cached: decoded once here, and the unreadable ones are dropped and counted in
    ``counter[key]``. Streamed: decoded per item, unreadable ones counted per batch.
    """
    if not cache:
        source = ResizedImageSource(images.files, shorter_side, images.read)
        return (
            AugmentedImages(images.labels, crop, True, seed, source=source),
            AugmentedImages(images.labels, crop, False, seed, source=source),
        )
    decoded = decode_all(images.files, shorter_side, num_workers, description, images.read)
    readable = np.array([not isinstance(image, UnreadableImage) for image in decoded], dtype=bool)
    counter[key] = int((~readable).sum())
    cached = [image for image in decoded if not isinstance(image, UnreadableImage)]
    labels = images.labels[readable]
    return (
        AugmentedImages(labels, crop, True, seed, cached=cached),
        AugmentedImages(labels, crop, False, seed, cached=cached),
    )
