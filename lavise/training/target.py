"""Training the target CNN (multi-label classification) for the optional `target` stage.

LaViSE explains a *trained* network. The embedded demo ships no weights and the paper compares
networks trained on the reference dataset (from ImageNet weights vs from scratch), so this module
trains a torchvision classifier on the reference dataset's image-level labels (an image is
positive for every kept category it has an object of) with binary cross-entropy, reports
validation mAP, and writes a plain state_dict that `features` loads as its backbone.

Choices (documented because they shape the result):
- Optimiser: SGD, momentum 0.9 (Nesterov), one warm-up epoch then cosine decay to zero, stepped
  per batch. It is the standard recipe for ResNets trained from scratch and needs no tuning of a
  second schedule; `weight_decay` applies to all parameters.
- The classifier bias starts at the log-odds of each category's training frequency, so the first
  steps do not spend themselves pushing every logit down from 0 (most labels are negative).
- Augmentation: random resized crop (scale 0.35-1, so multi-label objects mostly stay in view)
  to `crop` and horizontal flip, drawn from a generator seeded by (seed, epoch, image index):
  runs are identical whatever the number of DataLoader workers.
- Resolution: images are trained at `crop` (may be smaller than `transform.crop`, which
  `features` uses; convolutional backbones with global pooling accept any size). Smaller crops
  train quadratically faster; objects then appear larger at feature time (train/test resolution
  discrepancy), which costs a little accuracy. The final model is also scored at the
  `features` geometry (`val_map_at_transform`) so the trade-off is measured, not guessed.
- Caching: when a dataset has at most `max_cached_images` images, every image is decoded once,
  resized (shorter side `crop * resize / transform_crop`) and kept in memory as uint8 for all
  epochs (~3 * 1.2 * s^2 bytes each: 160 px -> ~90 kB; 5000 images -> ~0.5 GB). Larger
  datasets are streamed: decoded in DataLoader workers every epoch, memory flat in size.
- The checkpoint written is the last epoch's (the cosine schedule ends at zero). Val mAP is
  computed every epoch to monitor training, never to choose an epoch: the val split is the one
  `features` and `evaluate` explain, so picking the epoch that scores best there would tune the
  explained network on its evaluation images.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
import torchvision
import torchvision.transforms.v2.functional as tvf
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from lavise.data.images import UndecodableImageError, decode_image
from lavise.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize
from lavise.devices import resolve_device
from lavise.io import atomic_dir, atomic_path, write_json
from lavise.models.backbones import load_state_dict, looks_like_checkpoint, resolve_weights_enum, weight_names

log = logging.getLogger(__name__)

LABEL_ROLES = ("seen", "unseen")
CROP_SCALE = (0.35, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
DEFAULT_MAX_CACHED_IMAGES = 5000


# --------------------------------------------------------------------------------------------
# Metric


def average_precision(scores: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Per-category average precision of ``scores`` [N, C] against binary ``labels`` [N, C].

    AP = sum over thresholds of (recall increase) * precision, with tied scores forming a single
    threshold (the scikit-learn definition), so the value does not depend on how ties are
    ordered. Categories without a positive get NaN. Fully vectorised: one sort per column.
    """
    scores = torch.as_tensor(scores, dtype=torch.float64)
    labels = torch.as_tensor(labels)
    if scores.ndim != 2 or scores.shape != labels.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and labels {tuple(labels.shape)} must both be [N, C]")
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN")
    n, c = scores.shape
    if n == 0:
        return torch.full((c,), float("nan"), dtype=torch.float64)
    order = torch.argsort(scores, dim=0, descending=True, stable=True)
    sorted_scores = scores.gather(0, order)
    sorted_hits = labels.to(torch.float64).gather(0, order)
    true_positives = sorted_hits.cumsum(0)
    # The last rank of each run of tied scores: precision is measured after the whole run.
    is_run_end = torch.ones_like(sorted_scores, dtype=torch.bool)
    is_run_end[:-1] = sorted_scores[:-1] != sorted_scores[1:]
    ranks = torch.arange(n).unsqueeze(1).expand(n, c)
    run_end_or_n = torch.where(is_run_end, ranks, torch.full_like(ranks, n))
    run_end = run_end_or_n.flip(0).cummin(0).values.flip(0)
    precision_at_run_end = true_positives.gather(0, run_end) / (run_end + 1).to(torch.float64)
    n_positive = sorted_hits.sum(0)
    ap = (precision_at_run_end * sorted_hits).sum(0) / n_positive
    return torch.where(n_positive > 0, ap, torch.full_like(ap, float("nan")))


def mean_average_precision(scores: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> float:
    """Mean AP over the categories that have at least one positive (NaN if none has)."""
    ap = average_precision(scores, labels)
    valid = ~torch.isnan(ap)
    return float(ap[valid].mean()) if bool(valid.any()) else float("nan")


# --------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class LabelledImages:
    """Image files of one split with their multi-hot category labels."""

    image_ids: np.ndarray  # int64 [n]
    files: list[Path]
    labels: np.ndarray  # float32 [n, n_categories]

    def __len__(self) -> int:
        return len(self.files)


@dataclass(frozen=True)
class MultiLabelData:
    categories: list[str]
    train: LabelledImages
    val: LabelledImages
    counts: dict[str, int]


def load_multilabel_data(annotations_dir: str | Path, image_root: str | Path) -> MultiLabelData:
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
        ok = in_split & (status == "ok")
        counts[f"{name}_images_not_ok"] = int((in_split & ~ok).sum())
        ids = image_ids[ok]
        labels = np.zeros((len(ids), len(categories)), dtype=np.float32)
        order = np.argsort(ids, kind="stable")
        position = np.searchsorted(ids, object_image, sorter=order).clip(0, max(len(ids) - 1, 0))
        hit = (ids[order[position]] == object_image) if len(ids) else np.zeros(len(object_image), dtype=bool)
        labels[order[position[hit]], object_category[hit]] = 1.0
        files = [image_root / paths[i] for i in np.flatnonzero(ok)]
        splits[name] = LabelledImages(ids, files, labels)
        counts[f"{name}_images"] = len(ids)
        counts[f"{name}_images_without_label"] = int((labels.sum(1) == 0).sum())
    if len(splits["train"]) == 0:
        raise ValueError(f"{annotations_dir / 'images.parquet'} has no train image with status ok")
    return MultiLabelData(categories, splits["train"], splits["val"], counts)


def resize_shorter_side(image: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear, antialiased resize so the shorter side is ``size``: the first half of
    ``lavise.data.transforms.transform_geometry``, kept separately so the result can be cached."""
    return tvf.resize(image, [size], interpolation=tvf.InterpolationMode.BILINEAR, antialias=True)


def random_resized_crop_box(
    height: int,
    width: int,
    generator: torch.Generator,
    scale: tuple[float, float] = CROP_SCALE,
    ratio: tuple[float, float] = CROP_RATIO,
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random crop covering ``scale`` of the area with aspect in ``ratio``.

    Same sampling as torchvision's RandomResizedCrop, but from an explicit generator so that the
    crops depend only on the seed, not on global RNG state or worker scheduling.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        u = torch.rand(3, generator=generator, dtype=torch.float64).tolist()
        target_area = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[1])
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(u[2] * (height - h + 1))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return top, left, h, w
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side, side


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """Independent, reproducible stream for one (epoch, image) pair."""
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


def to_model_input(batch_uint8: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> ImageNet-normalised float, as `features` feeds the backbone."""
    return normalize(batch_uint8.to(device).float() / 255.0).contiguous(memory_format=torch.channels_last)


class ResizedImageSource(Dataset):
    """Decodes image i and resizes its shorter side; ``None`` for an unreadable file."""

    def __init__(self, files: Sequence[Path], shorter_side: int) -> None:
        self.files = list(files)
        self.shorter_side = shorter_side

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None]:
        try:
            image = decode_image(self.files[index])
        except (UndecodableImageError, FileNotFoundError) as error:
            log.warning("skipping %s: %s", self.files[index], error)
            return index, None
        return index, resize_shorter_side(image, self.shorter_side)


def _first_item(batch: list[Any]) -> Any:
    return batch[0]


def decode_all(
    files: Sequence[Path], shorter_side: int, num_workers: int, description: str
) -> list[torch.Tensor | None]:
    """Decode and resize every file once (in workers), in file order."""
    images: list[torch.Tensor | None] = [None] * len(files)
    loader = DataLoader(
        ResizedImageSource(files, shorter_side), batch_size=1, collate_fn=_first_item, num_workers=num_workers
    )
    for index, image in tqdm(loader, total=len(files), desc=description, unit="img"):
        images[index] = image
    return images


class AugmentedImages(Dataset):
    """Training or evaluation views of images, from an in-memory cache or streamed from disk.

    ``train=True``: seeded random resized crop + flip; otherwise the centre crop.
    Items are (uint8 [3, crop, crop] or None if unreadable, labels [C]).
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

    def _image(self, index: int) -> torch.Tensor | None:
        if self.cached is not None:
            return self.cached[index]
        return self.source[index][1]

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, torch.Tensor]:
        image = self._image(index)
        if image is None:
            return None, self.labels[index]
        if not self.train:
            return tvf.center_crop(image, [self.crop, self.crop]), self.labels[index]
        generator = sample_generator(self.seed, self.epoch, index)
        top, left, h, w = random_resized_crop_box(image.shape[-2], image.shape[-1], generator)
        patch = tvf.resized_crop(
            image, top, left, h, w, [self.crop, self.crop], interpolation=tvf.InterpolationMode.BILINEAR, antialias=True
        )
        if bool(torch.rand(1, generator=generator) < 0.5):
            patch = patch.flip(-1)
        return patch, self.labels[index]


def collate_skipping_unreadable(
    batch: list[tuple[torch.Tensor | None, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Stack the readable samples; the count of unreadable ones travels with the batch."""
    kept = [(image, label) for image, label in batch if image is not None]
    n_skipped = len(batch) - len(kept)
    if not kept:
        return torch.empty(0), torch.empty(0), n_skipped
    images, labels = zip(*kept, strict=True)
    return torch.stack(images), torch.stack(labels), n_skipped


# --------------------------------------------------------------------------------------------
# Model


def classifier_head_name(model: nn.Module) -> str | None:
    """The last Linear/Conv2d module: the classifier (the rule `lavise.models.backbones` infers
    num_classes by)."""
    names = [name for name, module in model.named_modules() if isinstance(module, (nn.Linear, nn.Conv2d))]
    return names[-1] if names else None


def _init_state_dict(init: str, architecture: str) -> dict[str, torch.Tensor] | None:
    """The state_dict named by ``init``: torchvision weights, a checkpoint path, or None for 'none'."""
    if init == "none":
        return None
    if looks_like_checkpoint(init):
        return load_state_dict(init)
    try:
        weights = resolve_weights_enum(architecture, init)
    except ValueError:
        raise ValueError(
            f"target.init {init!r} is not 'none', a checkpoint path, or a weights name of "
            f"{architecture} ({', '.join(weight_names(architecture))})"
        ) from None
    try:
        return weights.get_state_dict(progress=False)
    except OSError as error:  # urllib's URLError included: weights are fetched on first use
        raise RuntimeError(
            f"target.init {init!r}: could not fetch torchvision weights {weights} ({error}); "
            "on an offline machine give a checkpoint path instead"
        ) from error


def build_target_model(architecture: str, num_classes: int, init: str, seed: int) -> nn.Module:
    """torchvision ``architecture`` with ``num_classes`` outputs, initialised from ``init``.

    The classifier head (last Linear layer) of an initial state_dict is always discarded: its
    classes are not ours. Everything else must match the architecture exactly.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = torchvision.models.get_model(architecture, weights=None, num_classes=num_classes)
    state = _init_state_dict(init, architecture)
    if state is not None:
        head = classifier_head_name(model)
        own = model.state_dict()
        head_keys = {k for k in own if head is not None and k.startswith(head + ".")}
        state = {k: v for k, v in state.items() if k not in head_keys}
        mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
        if mismatched:
            raise ValueError(f"target.init {init!r} does not fit {architecture}: shapes differ for {mismatched[:5]}")
        result = model.load_state_dict(state, strict=False)
        missing = set(result.missing_keys) - head_keys
        if missing or result.unexpected_keys:
            raise ValueError(
                f"target.init {init!r} does not fit {architecture}: missing {sorted(missing)[:5]}, "
                f"unexpected {result.unexpected_keys[:5]}"
            )
    return model


def _set_head_bias_to_prior(model: nn.Module, positive_rate: np.ndarray) -> None:
    head = classifier_head_name(model)
    if head is None:
        return
    linear = model.get_submodule(head)
    if linear.bias is None or linear.bias.shape[0] != len(positive_rate):
        return
    rate = np.clip(positive_rate, 1e-3, 1 - 1e-3)
    with torch.no_grad():
        linear.bias.copy_(torch.from_numpy(np.log(rate / (1 - rate))).to(linear.bias.dtype))


def save_checkpoint(model: nn.Module | dict[str, torch.Tensor], path: str | Path) -> None:
    """Plain state_dict as safetensors (contiguous CPU tensors; channels_last is undone), atomically."""
    state = model.state_dict() if isinstance(model, nn.Module) else model
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp))


# --------------------------------------------------------------------------------------------
# Training


@dataclass
class TrainingResult:
    state_dict: dict[str, torch.Tensor]
    val_map_per_epoch: list[float]
    train_loss_per_epoch: list[float]
    seconds: float
    cpu_seconds: float
    skipped_unreadable: dict[str, int] = field(default_factory=dict)
    val_map_at_transform: float | None = None
    cached: bool = True


def _cosine_with_warmup(step: int, warmup_steps: int, total_steps: int) -> float:
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _batches(loader: DataLoader, counter: dict[str, int], key: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for images, labels, n_skipped in loader:
        counter[key] = counter.get(key, 0) + n_skipped
        if len(images):
            yield images, labels


@torch.no_grad()
def predict(
    model: nn.Module, loader: DataLoader, device: torch.device, counter: dict[str, int], key: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sigmoid scores and labels for every readable image of ``loader``."""
    model.eval()
    scores, labels = [], []
    for images, batch_labels in _batches(loader, counter, key):
        inputs = to_model_input(images, device)
        scores.append(torch.sigmoid(model(inputs).float()).cpu())
        labels.append(batch_labels)
    if not scores:
        return torch.empty(0, 0), torch.empty(0, 0)
    return torch.cat(scores), torch.cat(labels)


def _make_views(
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
    """Train (augmented) and eval (centre crop) views of the same images."""
    if not cache:
        source = ResizedImageSource(images.files, shorter_side)
        return (
            AugmentedImages(images.labels, crop, True, seed, source=source),
            AugmentedImages(images.labels, crop, False, seed, source=source),
        )
    decoded = decode_all(images.files, shorter_side, num_workers, description)
    readable = np.array([image is not None for image in decoded], dtype=bool)
    counter[key] = int((~readable).sum())
    cached = [image for image in decoded if image is not None]
    labels = images.labels[readable]
    return (
        AugmentedImages(labels, crop, True, seed, cached=cached),
        AugmentedImages(labels, crop, False, seed, cached=cached),
    )


def train_target_model(
    data: MultiLabelData,
    *,
    architecture: str,
    init: str,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    crop: int,
    seed: int,
    eval_resize: int,
    eval_crop: int,
    num_workers: int = 0,
    max_cached_images: int = DEFAULT_MAX_CACHED_IMAGES,
    device: str = "cpu",
    score_at_transform: bool = True,
) -> TrainingResult:
    """Train ``architecture`` on multi-label BCE; the last epoch's weights are the result.

    ``eval_resize``/``eval_crop`` are the `features` geometry (transform.resize/crop): training
    images are resized to the same crop/resize ratio at ``crop``, and, if ``score_at_transform``,
    the chosen model is scored once more at that geometry.
    """
    start, cpu_start = time.perf_counter(), time.process_time()
    torch_device = torch.device(device)
    shorter_side = round(crop * eval_resize / eval_crop)
    n_categories = len(data.categories)
    skipped: dict[str, int] = {}
    cache = len(data.train) + len(data.val) <= max_cached_images
    log.info(
        "target: %s from %s, %d train / %d val images, %d categories, crop %d, %s",
        architecture,
        init,
        len(data.train),
        len(data.val),
        n_categories,
        crop,
        "cached in memory" if cache else "streamed from disk",
    )
    train_view, _ = _make_views(
        data.train, crop, shorter_side, seed, cache, num_workers, "decode train", skipped, "train_unreadable"
    )
    _, val_view = _make_views(
        data.val, crop, shorter_side, seed, cache, num_workers, "decode val", skipped, "val_unreadable"
    )

    model = build_target_model(architecture, n_categories, init, seed)
    _set_head_bias_to_prior(model, data.train.labels.mean(0))
    model = model.to(torch_device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    loss_fn = nn.BCEWithLogitsLoss()
    shuffle = torch.Generator().manual_seed(seed)
    drop_last = len(train_view) > batch_size
    train_loader = DataLoader(
        train_view,
        batch_size=batch_size,
        shuffle=True,
        drop_last=drop_last,
        generator=shuffle,
        num_workers=num_workers,
        collate_fn=collate_skipping_unreadable,
    )
    val_loader = DataLoader(
        val_view, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_skipping_unreadable
    )
    steps_per_epoch = len(train_loader)
    total_steps = epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _cosine_with_warmup(step, steps_per_epoch, total_steps)
    )

    val_maps: list[float] = []
    train_losses: list[float] = []
    for epoch in range(epochs):
        model.train()
        train_view.epoch = epoch
        loss_sum, n_seen = 0.0, 0
        counter: dict[str, int] = {}
        progress = tqdm(
            _batches(train_loader, counter, "unreadable"),
            total=steps_per_epoch,
            desc=f"target epoch {epoch + 1}/{epochs}",
            unit="batch",
        )
        for images, labels in progress:
            inputs = to_model_input(images, torch_device)
            logits = model(inputs)
            loss = loss_fn(logits.float(), labels.to(torch_device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += float(loss.detach()) * len(images)
            n_seen += len(images)
        train_losses.append(loss_sum / max(1, n_seen))
        scores, labels = predict(model, val_loader, torch_device, counter, "val_unreadable")
        if not cache:  # streamed: the same files fail every epoch; keep the count of one epoch
            skipped["train_unreadable"] = counter.get("unreadable", 0)
            skipped["val_unreadable"] = counter.get("val_unreadable", 0)
        val_map = mean_average_precision(scores, labels) if len(scores) else float("nan")
        val_maps.append(val_map)
        log.info(
            "target epoch %d/%d: train loss %.4f, val mAP %.4f, %.0f s",
            epoch + 1,
            epochs,
            train_losses[-1],
            val_map,
            time.perf_counter() - start,
        )

    final_state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    result = TrainingResult(final_state, val_maps, train_losses, 0.0, 0.0, skipped, cached=cache)
    if score_at_transform and len(data.val):
        transform_view = AugmentedImages(
            data.val.labels, eval_crop, False, seed, source=ResizedImageSource(data.val.files, eval_resize)
        )
        loader = DataLoader(
            transform_view, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_skipping_unreadable
        )
        scores, labels = predict(model, loader, torch_device, {}, "unreadable")
        result.val_map_at_transform = mean_average_precision(scores, labels) if len(scores) else float("nan")
        log.info(
            "target: val mAP at the features geometry (%d/%d): %.4f",
            eval_resize,
            eval_crop,
            result.val_map_at_transform,
        )
    result.seconds = time.perf_counter() - start
    result.cpu_seconds = time.process_time() - cpu_start
    return result


# --------------------------------------------------------------------------------------------
# Stage


def _json_number(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else round(float(value), 6)


def write_not_trained(out_dir: str | Path, metrics_path: str | Path, backbone_weights: str) -> None:
    """The skip path: the backbone names its own weights, so nothing is trained."""
    with atomic_dir(out_dir) as tmp:
        write_json(
            tmp / "config.json",
            {
                "trained": False,
                "reason": f"backbone.weights is {backbone_weights!r}, not 'target': "
                "features loads those weights directly",
            },
        )
    write_json(metrics_path, {"trained": False})


def run_target_stage(
    annotations_dir: str | Path,
    raw_dir: str | Path,
    out_dir: str | Path,
    metrics_path: str | Path,
    *,
    dataset: str,
    backbone: dict[str, Any],
    target: dict[str, Any],
    transform: dict[str, Any],
    num_workers: int = 0,
    device: str = "cpu",
    max_cached_images: int = DEFAULT_MAX_CACHED_IMAGES,
) -> dict[str, Any]:
    """Train the target model when ``backbone['weights'] == 'target'``; otherwise record the skip.

    Writes ``out_dir/model.safetensors`` + ``out_dir/config.json`` and ``metrics_path``;
    returns the metrics dict.
    """
    if backbone["weights"] != "target":
        log.info("target: backbone.weights is %r, nothing to train", backbone["weights"])
        write_not_trained(out_dir, metrics_path, backbone["weights"])
        return {"trained": False}
    device = str(resolve_device(device, "features.device"))
    data = load_multilabel_data(annotations_dir, Path(raw_dir) / dataset)
    for key, value in data.counts.items():
        if value and ("not_ok" in key or "unlabelled" in key):
            log.warning("target: %s = %d", key, value)
    result = train_target_model(
        data,
        architecture=backbone["name"],
        init=target["init"],
        epochs=target["epochs"],
        batch_size=target["batch_size"],
        lr=target["lr"],
        weight_decay=target["weight_decay"],
        crop=target["crop"],
        seed=target["seed"],
        eval_resize=transform["resize"],
        eval_crop=transform["crop"],
        num_workers=num_workers,
        max_cached_images=max_cached_images,
        device=device,
    )
    config = {
        "trained": True,
        "architecture": backbone["name"],
        "num_classes": len(data.categories),
        "categories": data.categories,
        "init": target["init"],
        "epochs": target["epochs"],
        "batch_size": target["batch_size"],
        "lr": target["lr"],
        "weight_decay": target["weight_decay"],
        "crop": target["crop"],
        "seed": target["seed"],
        "optimizer": "SGD momentum 0.9 nesterov, 1 warm-up epoch, cosine decay per step",
        "loss": "BCEWithLogits over categories",
        "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        "val_map_per_epoch": [_json_number(v) for v in result.val_map_per_epoch],
        "train_loss_per_epoch": [_json_number(v) for v in result.train_loss_per_epoch],
        "val_map": _json_number(result.val_map_per_epoch[-1]),
        "val_map_at_transform": _json_number(result.val_map_at_transform),
        "images": data.counts,
        "skipped_unreadable": result.skipped_unreadable,
        "cached_in_memory": result.cached,
    }
    with atomic_dir(out_dir) as tmp:
        save_checkpoint(result.state_dict, tmp / "model.safetensors")
        write_json(tmp / "config.json", config)
    metrics = {
        "trained": True,
        "val_map": _json_number(result.val_map_per_epoch[-1]),
        "val_map_at_transform": _json_number(result.val_map_at_transform),
        "train_loss": _json_number(result.train_loss_per_epoch[-1]),
        "epochs": target["epochs"],
        "skipped_unreadable": sum(result.skipped_unreadable.values()),
    }
    # Wall-clock times go to the log, not to DVC-tracked files: a rerun must reproduce them byte for byte.
    log.info("target: trained in %.1f s (%.1f CPU-s in the main process)", result.seconds, result.cpu_seconds)
    write_json(metrics_path, metrics)
    return {**metrics, "seconds": round(result.seconds, 2)}
