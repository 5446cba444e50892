"""Training the LaViSE explainer from the feature cache.

FACT2023 ran the CNN once per annotation per epoch (~30 A100-minutes an epoch on COCO). The
masked, pooled vectors do not change between epochs, so the `features` stage caches them once
and this loop only gathers batches from the memory-mapped cache (`lavise.training.explainer_data`).
The loop has the shape of torchvision's reference scripts: ``train_one_epoch``, ``validate``,
and ``fit`` looping over epochs with early stopping; the weights kept are the best epoch's.

Which epoch is kept is chosen without looking at the split `evaluate` scores: the stage holds out
a seeded slice of the *training* images (``lavise.training.explainer_data.split_holdout``, by
image, so no object of a held-out image is trained on), trains on the rest, and early stopping,
the best epoch and Adam's ReduceLROnPlateau all read the hold-out loss only. The val split is not
read at all.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from lavise.io import atomic_path
from lavise.models.explainer import Explainer, check_explainer_fits, cosine_scores, hinge_rank_loss
from lavise.options import OPTIMIZERS
from lavise.training.explainer_data import Split, batch_bounds, gather_batch

log = logging.getLogger(__name__)

HISTORY_COLUMNS = ("epoch", "train_loss", "holdout_loss", "holdout_top1", "holdout_top5")
TOP_K = 5


def check_settings(optimizer: str, batch_size: int, epochs: int, patience: int) -> None:
    """Reject settings the loop cannot run with, before any data is read."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2 (BatchNorm), got {batch_size}")
    if epochs < 1 or patience < 1:
        raise ValueError(f"epochs and patience must be >= 1, got {epochs}, {patience}")


@contextlib.contextmanager
def deterministic_algorithms(device: torch.device) -> Iterator[None]:
    """Deterministic kernels for the duration of training; restores the caller's setting.

    On CUDA some kernels have no deterministic variant; warn there instead of failing. cuBLAS is
    deterministic only with a fixed workspace, which it reads when its handle is created: set
    before the first matrix product on the device unless the user chose one.
    """
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=device.type != "cpu")
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn)


def make_optimizer(
    name: str, parameters: Any, lr: float, lr_patience: int = 10
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.ReduceLROnPlateau | None]:
    """DAdaptAdam (FACT2023, learning-rate free) or Adam + ReduceLROnPlateau (reference code;
    ``lr_patience`` epochs without hold-out-loss improvement before the rate is divided by 10)."""
    if name == "dadapt_adam":
        import dadaptation

        return dadaptation.DAdaptAdam(parameters, lr=lr), None
    if name == "adam":
        optimizer = torch.optim.Adam(parameters, lr=lr)
        return optimizer, torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", patience=lr_patience)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


def train_one_epoch(
    model: Explainer,
    split: Split,
    class_vectors: torch.Tensor,
    positives: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    *,
    margin: float,
    batch_size: int,
    generator: torch.Generator,
    device: torch.device,
    description: str,
) -> float:
    """One pass over a seeded permutation; returns the sample-weighted mean training loss."""
    model.train()
    permutation = torch.randperm(split.rows.size, generator=generator).numpy()
    total = torch.zeros((), device=device)
    for start, stop in tqdm(batch_bounds(split.rows.size, batch_size), desc=description, leave=False):
        features, category_index = gather_batch(split, permutation[start:stop])
        features = features.to(device, non_blocking=True)
        mask = positives[category_index.to(device)]  # [b, n_classes]: the sample's positive tokens
        loss = hinge_rank_loss(model(features), class_vectors, mask, margin)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach() * (stop - start)
    return float(total) / split.rows.size


@torch.no_grad()
def validate(
    model: Explainer,
    split: Split,
    class_vectors: torch.Tensor,
    positives: torch.Tensor,
    *,
    margin: float,
    batch_size: int,
    device: torch.device,
) -> tuple[float, float, float]:
    """Mean loss, top-1 and top-k accuracy: correct at k when any positive token is in the top k."""
    model.eval()
    k = min(TOP_K, class_vectors.shape[0])
    loss_sum, top1, topk = 0.0, 0, 0
    all_indices = np.arange(split.rows.size)
    for start, stop in batch_bounds(split.rows.size, batch_size):
        features, category_index = gather_batch(split, all_indices[start:stop])
        outputs = model(features.to(device))
        mask = positives[category_index.to(device)]  # [b, n_classes]
        loss_sum += float(hinge_rank_loss(outputs, class_vectors, mask, margin)) * (stop - start)
        ranked = cosine_scores(outputs, class_vectors).topk(k, dim=1).indices  # [b, k] class indices
        hits = mask.gather(1, ranked)  # [b, k]: is the i-th ranked class a positive
        top1 += int(hits[:, 0].sum())
        topk += int(hits.any(dim=1).sum())
    n = split.rows.size
    return loss_sum / n, top1 / n, topk / n


@dataclass
class EarlyStopping:
    """Tracks the best hold-out loss; stop after ``patience`` epochs without a strictly lower one."""

    patience: int
    best_loss: float = math.inf
    epochs_without_improvement: int = 0

    def improved(self, loss: float) -> bool:
        """Record one epoch's loss; True when it is the best so far."""
        if loss < self.best_loss:
            self.best_loss = loss
            self.epochs_without_improvement = 0
            return True
        self.epochs_without_improvement += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.epochs_without_improvement >= self.patience


@dataclass
class ExplainerFit:
    """A finished run: the model (CPU) holding the best epoch's weights, and the history."""

    model: Explainer
    history: list[dict[str, float]]
    best: dict[str, float]  # the history row of the best epoch


@dataclass(frozen=True)
class TrainingData:
    """What one run trains on: the training samples, the held-out ones that choose the epoch, the
    class embeddings [n_classes, emb_dim] and each seen category's positive classes
    [n_seen_categories, n_classes], on the training device."""

    train: Split
    holdout: Split
    class_vectors: torch.Tensor
    positives: torch.Tensor


def _epoch_row(
    model: Explainer,
    data: TrainingData,
    optimizer: torch.optim.Optimizer,
    *,
    epoch: int,
    epochs: int,
    margin: float,
    batch_size: int,
    generator: torch.Generator,
    device: torch.device,
) -> dict[str, float]:
    """Train one epoch, score the hold-out, and return the epoch's history row; a non-finite loss is an error."""
    train_loss = train_one_epoch(
        model,
        data.train,
        data.class_vectors,
        data.positives,
        optimizer,
        margin=margin,
        batch_size=batch_size,
        generator=generator,
        device=device,
        description=f"epoch {epoch}/{epochs}",
    )
    loss, top1, top5 = validate(
        model, data.holdout, data.class_vectors, data.positives, margin=margin, batch_size=batch_size, device=device
    )
    if not math.isfinite(train_loss) or not math.isfinite(loss):
        raise ValueError(
            f"epoch {epoch}: the loss diverged (train {train_loss}, hold-out {loss}); lower the learning rate"
        )
    return {"epoch": epoch, "train_loss": train_loss, "holdout_loss": loss, "holdout_top1": top1, "holdout_top5": top5}


def fit(
    model: Explainer,
    data: TrainingData,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau | None,
    *,
    margin: float,
    batch_size: int,
    epochs: int,
    patience: int,
    generator: torch.Generator,
    device: torch.device,
) -> tuple[list[dict[str, float]], dict[str, float], dict[str, torch.Tensor]]:
    """Loop epochs until ``epochs`` or early stopping on the hold-out loss; returns the history, the
    best epoch's row (lowest hold-out loss, the earliest on a tie) and a CPU copy of its weights."""
    history: list[dict[str, float]] = []
    best: dict[str, float] = {}
    best_state: dict[str, torch.Tensor] = {}
    stopping = EarlyStopping(patience)
    settings = {"margin": margin, "batch_size": batch_size, "generator": generator, "device": device}
    for epoch in range(1, epochs + 1):
        row = _epoch_row(model, data, optimizer, epoch=epoch, epochs=epochs, **settings)
        if scheduler is not None:
            scheduler.step(row["holdout_loss"])
        history.append(row)
        log.info(
            "epoch %d: train %.5f  hold-out %.5f  top1 %.4f  top5 %.4f",
            epoch,
            row["train_loss"],
            row["holdout_loss"],
            row["holdout_top1"],
            row["holdout_top5"],
        )
        if stopping.improved(row["holdout_loss"]):
            best = row
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        elif stopping.should_stop:
            log.info("early stopping: no hold-out-loss improvement for %d epochs", patience)
            break
    return history, best, best_state


def train_explainer(
    train: Split,
    holdout: Split,
    class_vectors: torch.Tensor,
    positives: torch.Tensor,
    *,
    hidden_dim: int | None,
    dropout: float,
    margin: float,
    optimizer: str,
    lr: float,
    batch_size: int,
    epochs: int,
    patience: int,
    seed: int,
    device: torch.device,
    lr_patience: int = 10,
    hidden_what: str = "hidden_dim",
) -> ExplainerFit:
    """Seed, build the explainer for ``train``'s vectors and ``class_vectors`` [n_classes,
    emb_dim], train on ``device`` and return it with the weights of the epoch of lowest loss on
    ``holdout`` (samples of training images held out, never the scored split). ``hidden_what``
    names ``hidden_dim`` in the error when the explainer would not fit in memory."""
    check_settings(optimizer, batch_size, epochs, patience)
    in_dim = int(train.vectors.shape[1])
    check_explainer_fits(in_dim, int(class_vectors.shape[1]), hidden_dim, batch_size, device, hidden_what)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = Explainer(in_dim, class_vectors.shape[1], hidden_dim, dropout).to(device)
    data = TrainingData(train, holdout, class_vectors.to(device), positives.to(device))
    opt, scheduler = make_optimizer(optimizer, model.parameters(), lr, lr_patience)
    log.info(
        "training on %s: %d train / %d hold-out samples, %d classes, in_dim %d, emb_dim %d, %s",
        device,
        train.rows.size,
        holdout.rows.size,
        class_vectors.shape[0],
        in_dim,
        class_vectors.shape[1],
        optimizer,
    )
    with deterministic_algorithms(device):
        history, best, best_state = fit(
            model,
            data,
            opt,
            scheduler,
            margin=margin,
            batch_size=batch_size,
            epochs=epochs,
            patience=patience,
            generator=generator,
            device=device,
        )
    model.load_state_dict(best_state)
    return ExplainerFit(model.cpu(), history, best)


def write_history(path: Path, history: list[dict[str, float]]) -> None:
    """The per-epoch CSV that `dvc plots show` draws."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    with atomic_path(path) as tmp:
        tmp.write_text(buffer.getvalue())
