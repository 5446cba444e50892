"""Training the target CNN (multi-label classification) for the optional `target` stage.

LaViSE explains a *trained* network. The embedded demo ships no weights and the paper compares
networks trained on the reference dataset (from ImageNet weights vs from scratch), so this module
trains a torchvision classifier on the reference dataset's image-level labels (an image is
positive for every kept category it has an object of) with binary cross-entropy and reports
validation mAP; the stage writes the result as a plain state_dict that `features` loads as its
backbone. The loop has the shape of torchvision's reference scripts: ``train_one_epoch``,
``validate``, and ``fit`` looping over epochs.

Choices (documented because they shape the result):
- Optimiser: SGD, momentum 0.9 (Nesterov), one warm-up epoch then cosine decay to zero, stepped
  per batch. It is the standard recipe for ResNets trained from scratch and needs no tuning of a
  second schedule; `weight_decay` applies to all parameters.
- The classifier bias starts at the log-odds of each category's training frequency
  (`lavise.models.classifier.set_head_bias_to_prior`).
- Augmentation and the in-memory decode cache: see `lavise.training.target_data`.
- Resolution: images are trained at `crop` (may be smaller than the crop `features` uses;
  convolutional backbones with global pooling accept any size). Smaller crops train
  quadratically faster; objects then appear larger at feature time (train/test resolution
  discrepancy), which costs a little accuracy. The final model is also scored at the `features`
  geometry (`val_map_at_transform`) so the trade-off is measured, not guessed.
- The checkpoint written is the last epoch's (the cosine schedule ends at zero). Val mAP is
  computed every epoch to monitor training, never to choose an epoch: the val split is the one
  `features` and `evaluate` explain, so picking the epoch that scores best there would tune the
  explained network on its evaluation images.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from tqdm import tqdm

from lavise.data.transforms import to_model_input
from lavise.distributed import (
    ONE_PROCESS,
    World,
    all_reduce_sum,
    gather_rows,
    init_process_group,
    rank_device,
    wrap_ddp,
)
from lavise.metrics.average_precision import mean_average_precision
from lavise.models.classifier import set_head_bias_to_prior
from lavise.training.target_data import (
    DEFAULT_MAX_CACHED_IMAGES,
    AugmentedImages,
    LabelledImages,
    MultiLabelData,
    ResizedImageSource,
    collate_skipping_unreadable,
    make_views,
)

log = logging.getLogger(__name__)

OPTIMIZER_DESCRIPTION = "SGD momentum 0.9 nesterov, 1 warm-up epoch, cosine decay per step"
LOSS_DESCRIPTION = "BCEWithLogits over categories"


@dataclass
class TrainingResult:
    """The last epoch's weights (CPU), the per-epoch history and what was skipped."""

    state_dict: dict[str, torch.Tensor]
    val_map_per_epoch: list[float]
    train_loss_per_epoch: list[float]
    seconds: float
    cpu_seconds: float
    skipped_unreadable: dict[str, int] = field(default_factory=dict)
    val_map_at_transform: float | None = None
    cached: bool = True


def cosine_with_warmup(step: int, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate factor at ``step``: linear warm-up to 1 over ``warmup_steps``, then cosine to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(
    model: nn.Module, lr: float, weight_decay: float, steps_per_epoch: int, epochs: int
) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.LambdaLR]:
    """SGD (Nesterov momentum 0.9) with one warm-up epoch then cosine decay, stepped per batch."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    total_steps = epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cosine_with_warmup(step, steps_per_epoch, total_steps)
    )
    return optimizer, scheduler


def shard(view: Dataset, world: World) -> Dataset:
    """Every ``world_size``-th item of ``view`` from ``rank`` on (all of it for one process):
    each rank scores its share and the scores are gathered, so no image is scored twice."""
    if world.world_size == 1:
        return view
    return Subset(view, range(world.rank, len(view), world.world_size))


def _distributed_loaders(
    train_view: AugmentedImages, val_view: AugmentedImages, batch_size: int, seed: int, num_workers: int, world: World
) -> tuple[DataLoader, DataLoader]:
    """Per rank ``batch_size / world_size`` images from its DistributedSampler share (shuffled
    from ``seed``, re-drawn each epoch by ``set_epoch``; the few images that do not divide among
    the ranks are dropped, so every rank takes the same number of steps) and its val shard."""
    if batch_size % world.world_size:
        raise ValueError(f"batch size {batch_size} does not divide among {world.world_size} processes")
    per_rank = batch_size // world.world_size
    sampler = DistributedSampler(
        train_view, num_replicas=world.world_size, rank=world.rank, shuffle=True, seed=seed, drop_last=True
    )
    train_loader = DataLoader(
        train_view,
        batch_size=per_rank,
        sampler=sampler,
        drop_last=len(sampler) > per_rank,
        num_workers=num_workers,
        collate_fn=collate_skipping_unreadable,
    )
    val_loader = DataLoader(
        shard(val_view, world), batch_size=per_rank, num_workers=num_workers, collate_fn=collate_skipping_unreadable
    )
    return train_loader, val_loader


def make_loaders(
    train_view: AugmentedImages,
    val_view: AugmentedImages,
    batch_size: int,
    seed: int,
    num_workers: int,
    world: World = ONE_PROCESS,
) -> tuple[DataLoader, DataLoader]:
    """Shuffled (seeded) training batches and in-order validation batches.

    The last incomplete training batch is dropped unless it is the only one: BatchNorm statistics
    of a tiny trailing batch are noise. Several ranks: :func:`_distributed_loaders`
    (``batch_size`` stays the global batch).
    """
    if world.world_size > 1:
        return _distributed_loaders(train_view, val_view, batch_size, seed, num_workers, world)
    train_loader = DataLoader(
        train_view,
        batch_size=batch_size,
        shuffle=True,
        drop_last=len(train_view) > batch_size,
        generator=torch.Generator().manual_seed(seed),
        num_workers=num_workers,
        collate_fn=collate_skipping_unreadable,
    )
    val_loader = DataLoader(
        val_view, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_skipping_unreadable
    )
    return train_loader, val_loader


def _batches(loader: DataLoader, counter: dict[str, int], key: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The non-empty batches of ``loader``; unreadable images are added up in ``counter[key]``."""
    for images, labels, n_skipped in loader:
        counter[key] = counter.get(key, 0) + n_skipped
        if len(images):
            yield images, labels


@torch.no_grad()
def predict(
    model: nn.Module, loader: DataLoader, device: torch.device, counter: dict[str, int], key: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sigmoid scores [N, C] and labels [N, C] for every readable image of ``loader``; with
    several ranks, of every rank's loader (each scores its shard, the rows are gathered)."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module  # no collective per batch: the shards' batches are uneven
    model.eval()
    scores, labels = [], []
    for images, batch_labels in _batches(loader, counter, key):
        inputs = to_model_input(images, device)
        scores.append(torch.sigmoid(model(inputs).float()).cpu())
        labels.append(batch_labels)
    empty = torch.empty(0, 0)
    scores, labels = (
        gather_rows(torch.cat(scores) if scores else empty),
        gather_rows(torch.cat(labels) if labels else empty),
    )
    return scores, labels


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
    counter: dict[str, int],
    description: str,
) -> float:
    """One pass of multi-label BCE over ``loader``; returns the image-weighted mean loss.

    Unreadable images are counted in ``counter["unreadable"]``. With several ranks the loss is
    averaged over every rank's images.
    """
    model.train()
    loss_fn = nn.BCEWithLogitsLoss()
    loss_sum, n_seen = 0.0, 0
    progress = tqdm(_batches(loader, counter, "unreadable"), total=len(loader), desc=description, unit="batch")
    for images, labels in progress:
        inputs = to_model_input(images, device)
        logits = model(inputs)
        loss = loss_fn(logits.float(), labels.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        loss_sum += float(loss.detach()) * len(images)
        n_seen += len(images)
    loss_sum, n_seen = all_reduce_sum([loss_sum, n_seen], device)
    return loss_sum / max(1, n_seen)


def validate(
    model: nn.Module, loader: DataLoader, device: torch.device, counter: dict[str, int], key: str = "val_unreadable"
) -> float:
    """Validation mAP over the readable images of ``loader`` (NaN when there are none)."""
    scores, labels = predict(model, loader, device, counter, key)
    return mean_average_precision(scores, labels) if len(scores) else float("nan")


def fit(
    model: nn.Module,
    train_view: AugmentedImages,
    loaders: tuple[DataLoader, DataLoader],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    *,
    epochs: int,
    device: torch.device,
    skipped: dict[str, int] | None,
) -> tuple[list[float], list[float]]:
    """Train ``epochs`` epochs, validating after each; returns (train losses, val mAPs).

    ``train_view.epoch`` is set before each epoch so its crops are drawn for that epoch. With
    ``skipped`` (streamed images), it receives one epoch's count of unreadable images.
    """
    train_loader, val_loader = loaders
    started = time.perf_counter()
    train_losses: list[float] = []
    val_maps: list[float] = []
    for epoch in range(epochs):
        train_view.epoch = epoch
        if isinstance(train_loader.sampler, DistributedSampler):
            train_loader.sampler.set_epoch(epoch)  # the shuffle of epoch e: seed + e, on every rank
        counter: dict[str, int] = {}
        description = f"target epoch {epoch + 1}/{epochs}"
        train_losses.append(train_one_epoch(model, train_loader, optimizer, scheduler, device, counter, description))
        val_maps.append(validate(model, val_loader, device, counter))
        if skipped is not None:  # streamed: the same files fail every epoch; keep the count of one epoch
            keys = ("unreadable", "val_unreadable")
            totals = all_reduce_sum([counter.get(key, 0) for key in keys], device)
            skipped["train_unreadable"], skipped["val_unreadable"] = (int(total) for total in totals)
        log.info(
            "target epoch %d/%d: train loss %.4f, val mAP %.4f, %.0f s",
            epoch + 1,
            epochs,
            train_losses[-1],
            val_maps[-1],
            time.perf_counter() - started,
        )
    return train_losses, val_maps


def score_at_geometry(
    model: nn.Module,
    images: LabelledImages,
    resize: int,
    crop: int,
    *,
    seed: int,
    batch_size: int,
    num_workers: int,
    device: torch.device,
    world: World = ONE_PROCESS,
) -> float:
    """mAP of ``model`` on ``images`` resized to ``resize`` and centre-cropped to ``crop``: the
    geometry `features` feeds the backbone, streamed from disk (each rank its shard)."""
    view = AugmentedImages(
        images.labels, crop, False, seed, source=ResizedImageSource(images.files, resize, images.read)
    )
    loader = DataLoader(
        shard(view, world), batch_size=batch_size, num_workers=num_workers, collate_fn=collate_skipping_unreadable
    )
    val_map = validate(model, loader, device, {}, "unreadable")
    log.info("target: val mAP at the features geometry (%d/%d): %.4f", resize, crop, val_map)
    return val_map


def _views(
    data: MultiLabelData, crop: int, shorter_side: int, seed: int, cache: bool, num_workers: int
) -> tuple[AugmentedImages, AugmentedImages, dict[str, int]]:
    """The augmented train view, the centre-crop val view, and the unreadable images found so far."""
    log.info(
        "target: %d train / %d val images, %d categories, crop %d, %s",
        len(data.train),
        len(data.val),
        len(data.categories),
        crop,
        "cached in memory" if cache else "streamed from disk",
    )
    skipped: dict[str, int] = {}
    views = (crop, shorter_side, seed, cache, num_workers)
    train_view, _ = make_views(data.train, *views, "decode train", skipped, "train_unreadable")
    _, val_view = make_views(data.val, *views, "decode val", skipped, "val_unreadable")
    return train_view, val_view, skipped


def train_target_model(
    data: MultiLabelData,
    model: nn.Module,
    *,
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
    device: torch.device | str = "cpu",
    score_at_transform: bool = True,
) -> TrainingResult:
    """Train ``model`` (a fresh classifier with one output per category) on multi-label BCE;
    the last epoch's weights are the result, on every rank under torchrun (DistributedDataParallel,
    ``batch_size`` the global batch).

    ``eval_resize``/``eval_crop`` are the `features` geometry: training images are resized to the
    same crop/resize ratio at ``crop``, and, if ``score_at_transform``, the final model is scored
    once more at that geometry.
    """
    start, cpu_start = time.perf_counter(), time.process_time()
    world = init_process_group(torch.device(device))  # one process outside torchrun: nothing to join
    torch_device = rank_device(torch.device(device), world)
    cache = len(data.train) + len(data.val) <= max_cached_images
    train_view, val_view, skipped = _views(data, crop, round(crop * eval_resize / eval_crop), seed, cache, num_workers)
    set_head_bias_to_prior(model, data.train.labels.mean(0))
    model = model.to(torch_device).to(memory_format=torch.channels_last)
    loaders = make_loaders(train_view, val_view, batch_size, seed, num_workers, world)
    optimizer, scheduler = make_optimizer(model, lr, weight_decay, len(loaders[0]), epochs)
    train_losses, val_maps = fit(
        wrap_ddp(model, torch_device),
        train_view,
        loaders,
        optimizer,
        scheduler,
        epochs=epochs,
        device=torch_device,
        skipped=None if cache else skipped,
    )
    final_state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    result = TrainingResult(final_state, val_maps, train_losses, 0.0, 0.0, skipped, cached=cache)
    if score_at_transform and len(data.val):
        result.val_map_at_transform = score_at_geometry(
            model,
            data.val,
            eval_resize,
            eval_crop,
            seed=seed,
            batch_size=batch_size,
            num_workers=num_workers,
            device=torch_device,
            world=world,
        )
    result.seconds, result.cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return result
