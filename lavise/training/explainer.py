"""Training the LaViSE explainer from the feature cache.

FACT2023 ran the CNN once per annotation per epoch (~30 A100-minutes an epoch on COCO). The
masked, pooled vectors do not change between epochs, so the `features` stage caches them once
and this loop only gathers batches from the memory-mapped cache: sorted fancy indexing over a
seeded permutation, float16 → float32 per batch, nothing per sample in Python and no copy of the
cache in RAM (resident memory is the page cache plus one batch).
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from lavise.devices import resolve_device
from lavise.io import atomic_path, read_json, write_json
from lavise.models.explainer import Explainer, cosine_scores, hinge_rank_loss, save_explainer

log = logging.getLogger(__name__)

OPTIMIZERS = ("dadapt_adam", "adam")
HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "val_top1", "val_top5")
TOP_K = 5


@dataclass(frozen=True)
class Split:
    """One split's samples: rows into the memory-mapped vectors and each row's category index."""

    vectors: np.ndarray  # memory-mapped [n_rows, d] float16; only `rows` of it are samples
    rows: np.ndarray  # int64 [n]
    category_index: np.ndarray  # int64 [n], into the seen-category positive table
    n_excluded: dict[str, int]  # objects not used, by reason


@dataclass(frozen=True)
class Classes:
    """The explainer's classes: the distinct tokens of the seen categories, sorted."""

    tokens: list[str]
    seen_categories: list[str]
    positives: torch.Tensor  # bool [n_seen_categories, n_classes]
    roles: dict[str, str]  # every known category → seen | unseen | dropped


def load_classes(annotations_dir: Path) -> Classes:
    """Read categories.parquet and build the token classes and each seen category's positives."""
    path = Path(annotations_dir) / "categories.parquet"
    table = pq.read_table(path, columns=["category", "tokens", "role"]).to_pydict()
    roles = dict(zip(table["category"], table["role"]))
    seen = sorted(c for c, r in roles.items() if r == "seen")
    if not seen:
        raise ValueError(f"{path}: no category has role 'seen'; nothing to train on")
    tokens_of = dict(zip(table["category"], table["tokens"]))
    empty = [c for c in seen if not tokens_of[c]]
    if empty:
        raise ValueError(f"{path}: seen categories without tokens: {empty[:10]}")
    tokens = sorted({t for c in seen for t in tokens_of[c]})
    token_index = {t: i for i, t in enumerate(tokens)}
    positives = torch.zeros(len(seen), len(tokens), dtype=torch.bool)
    for row, category in enumerate(seen):
        positives[row, [token_index[t] for t in tokens_of[category]]] = True
    return Classes(tokens=tokens, seen_categories=seen, positives=positives, roles=roles)


def load_class_vectors(embeddings_dir: Path, tokens: list[str]) -> torch.Tensor:
    """The L2-normalised GloVe vector of every class token; a token without one is an error."""
    from lavise.data.embeddings import WordEmbeddings

    store = WordEmbeddings.load(Path(embeddings_dir))
    vectors = torch.from_numpy(np.asarray(store.vectors_of(tokens), dtype=np.float32))
    norms = vectors.norm(dim=1)
    bad = [t for t, n in zip(tokens, norms.tolist()) if not math.isfinite(n) or n < 1e-6]
    if bad:
        raise ValueError(f"class tokens without a usable embedding in {embeddings_dir}: {bad[:10]}")
    return vectors / norms[:, None]


def load_split(features_dir: Path, split: str, classes: Classes) -> Split:
    """Memory-map one split's vectors and keep only objects of seen categories (others counted).

    Objects whose mask the centre crop cuts away entirely (``coverage`` 0) have an all-zero
    pooled vector that says nothing about them: they are excluded and counted as ``outside_crop``.
    """
    vectors_path = Path(features_dir) / f"{split}_vectors.npy"
    objects_path = Path(features_dir) / f"{split}_objects.parquet"
    vectors = np.load(vectors_path, mmap_mode="r")
    if vectors.ndim != 2:
        raise ValueError(f"{vectors_path}: expected [n, d], got shape {vectors.shape}")
    objects = pq.read_table(objects_path, columns=["row", "category", "coverage"])
    rows = objects.column("row").to_numpy().astype(np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= vectors.shape[0]):
        raise ValueError(f"{objects_path}: row out of range [0, {vectors.shape[0]})")
    column = objects.column("category").combine_chunks()
    if column.null_count:
        raise ValueError(f"{objects_path}: {column.null_count} objects have no category")
    # Dictionary-encoded: one Python string per distinct category, not per object (2M objects).
    encoded = column.dictionary_encode()
    unique = np.asarray(encoded.dictionary.to_pylist(), dtype=object)
    inverse = encoded.indices.to_numpy().astype(np.int64)
    unknown = [c for c in unique if c not in classes.roles]
    if unknown:
        raise ValueError(f"{objects_path}: categories missing from categories.parquet: {unknown[:10]}")
    seen_index = {c: i for i, c in enumerate(classes.seen_categories)}
    unique_index = np.array([seen_index.get(c, -1) for c in unique], dtype=np.int64)
    category_index = unique_index[inverse] if unique.size else np.zeros(0, dtype=np.int64)
    inside = objects.column("coverage").to_numpy() > 0
    keep = (category_index >= 0) & inside
    n_excluded: dict[str, int] = {"outside_crop": int(((category_index >= 0) & ~inside).sum())}
    for role in ("unseen", "dropped"):
        role_codes = np.array([classes.roles[c] == role for c in unique], dtype=bool)
        n_excluded[role] = int(role_codes[inverse].sum()) if unique.size else 0
    log.info(
        "%s: %d objects, %d of seen categories used, excluded %s",
        split,
        rows.size,
        int(keep.sum()),
        n_excluded,
    )
    return Split(vectors=vectors, rows=rows[keep], category_index=category_index[keep], n_excluded=n_excluded)


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """Batch [start, stop) ranges; a trailing batch of one joins the previous one.

    BatchNorm cannot train on a single sample, and dropping it would silently lose data.
    """
    bounds = [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def gather_batch(split: Split, sample_indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Read the given samples' vectors (rows sorted for locality) as float32, with category ids."""
    rows = split.rows[sample_indices]
    order = np.argsort(rows, kind="stable")
    rows, category_index = rows[order], split.category_index[sample_indices[order]]
    features = torch.from_numpy(np.asarray(split.vectors[rows], dtype=np.float32))
    if not bool(torch.isfinite(features).all()):
        bad_rows = rows[~torch.isfinite(features).all(dim=1).numpy()]
        raise ValueError(f"non-finite feature vectors in the cache at rows {bad_rows[:10].tolist()}")
    return features, torch.from_numpy(category_index)


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
    ``lr_patience`` epochs without val-loss improvement before the rate is divided by 10)."""
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
        mask = positives[category_index.to(device)]
        loss = hinge_rank_loss(model(features), class_vectors, mask, margin)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach() * (stop - start)
    return float(total) / split.rows.size


@torch.no_grad()
def evaluate(
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
        mask = positives[category_index.to(device)]
        loss_sum += float(hinge_rank_loss(outputs, class_vectors, mask, margin)) * (stop - start)
        ranked = cosine_scores(outputs, class_vectors).topk(k, dim=1).indices
        hits = mask.gather(1, ranked)
        top1 += int(hits[:, 0].sum())
        topk += int(hits.any(dim=1).sum())
    n = split.rows.size
    return loss_sum / n, top1 / n, topk / n


def write_history(path: Path, history: list[dict[str, float]]) -> None:
    """The per-epoch CSV that `dvc plots show` draws."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    with atomic_path(path) as tmp:
        tmp.write_text(buffer.getvalue())


def train_explainer(
    features_dir: Path,
    annotations_dir: Path,
    embeddings_dir: Path,
    out_dir: Path,
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
    device: str,
    metrics_path: Path,
    history_path: Path,
    lr_patience: int = 10,
) -> dict[str, Any]:
    """Train, keep the best-validation-loss state, write weights, history and metrics."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2 (BatchNorm), got {batch_size}")
    if epochs < 1 or patience < 1:
        raise ValueError(f"epochs and patience must be >= 1, got {epochs}, {patience}")
    started = time.perf_counter()
    torch_device = resolve_device(device, "train.device")
    meta = read_json(Path(features_dir) / "meta.json")
    classes = load_classes(Path(annotations_dir))
    class_vectors_cpu = load_class_vectors(Path(embeddings_dir), classes.tokens)
    train_split = load_split(Path(features_dir), "train", classes)
    val_split = load_split(Path(features_dir), "val", classes)
    for name, split in (("train", train_split), ("val", val_split)):
        if split.rows.size < 2:
            raise ValueError(f"{name} split has {split.rows.size} objects of seen categories; need >= 2")
    in_dim = int(train_split.vectors.shape[1])
    if "channels" in meta and int(meta["channels"]) != in_dim:
        raise ValueError(f"meta.json channels={meta['channels']} but train_vectors has {in_dim} columns")
    if val_split.vectors.shape[1] != in_dim:
        raise ValueError(f"val_vectors has {val_split.vectors.shape[1]} columns, train_vectors {in_dim}")

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = Explainer(in_dim, class_vectors_cpu.shape[1], hidden_dim, dropout).to(torch_device)
    class_vectors = class_vectors_cpu.to(torch_device)
    positives = classes.positives.to(torch_device)
    opt, scheduler = make_optimizer(optimizer, model.parameters(), lr, lr_patience)
    log.info(
        "training on %s: %d train / %d val samples, %d classes, in_dim %d, emb_dim %d, %s",
        torch_device,
        train_split.rows.size,
        val_split.rows.size,
        len(classes.tokens),
        in_dim,
        class_vectors.shape[1],
        optimizer,
    )

    history: list[dict[str, float]] = []
    best: dict[str, Any] = {"val_loss": math.inf}
    best_state: dict[str, torch.Tensor] = {}
    epochs_without_improvement = 0
    with deterministic_algorithms(torch_device):
        for epoch in range(1, epochs + 1):
            train_loss = train_one_epoch(
                model,
                train_split,
                class_vectors,
                positives,
                opt,
                margin=margin,
                batch_size=batch_size,
                generator=generator,
                device=torch_device,
                description=f"epoch {epoch}/{epochs}",
            )
            val_loss, val_top1, val_top5 = evaluate(
                model,
                val_split,
                class_vectors,
                positives,
                margin=margin,
                batch_size=batch_size,
                device=torch_device,
            )
            if not math.isfinite(train_loss) or not math.isfinite(val_loss):
                raise FloatingPointError(f"epoch {epoch}: loss diverged (train {train_loss}, val {val_loss})")
            if scheduler is not None:
                scheduler.step(val_loss)
            row = {
                "epoch": epoch,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "val_top1": val_top1,
                "val_top5": val_top5,
            }
            history.append(row)
            log.info(
                "epoch %d: train %.5f  val %.5f  top1 %.4f  top5 %.4f", epoch, train_loss, val_loss, val_top1, val_top5
            )
            if val_loss < best["val_loss"]:
                best = row
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                epochs_without_improvement = 0
            else:
                epochs_without_improvement += 1
                if epochs_without_improvement >= patience:
                    log.info("early stopping: no val-loss improvement for %d epochs", patience)
                    break

    model.load_state_dict(best_state)
    config = {
        "classes": classes.tokens,
        "seen_categories": classes.seen_categories,
        "embedding_dim": int(class_vectors.shape[1]),
        "embeddings_dir": str(embeddings_dir),
        "backbone": meta.get("backbone"),
        "weights": meta.get("weights"),
        "layer": meta.get("layer"),
        "margin": margin,
        "optimizer": optimizer,
        "lr": lr,
        "lr_patience": lr_patience,
        "batch_size": batch_size,
        "epochs": epochs,
        "patience": patience,
        "seed": seed,
        "device": torch_device.type,
        "best_epoch": best["epoch"],
    }
    save_explainer(model.cpu(), config, out_dir)
    write_history(Path(history_path), history)
    metrics = {
        "best_epoch": best["epoch"],
        "best_val_loss": best["val_loss"],
        "val_top1": best["val_top1"],
        "val_top5": best["val_top5"],
        "last_val_top1": history[-1]["val_top1"],
        "last_val_top5": history[-1]["val_top5"],
        "n_train": int(train_split.rows.size),
        "n_val": int(val_split.rows.size),
        "n_excluded_train": train_split.n_excluded,
        "n_excluded_val": val_split.n_excluded,
        "n_classes": len(classes.tokens),
        "epochs_run": len(history),
        "stopped_early": len(history) < epochs,
        "device": torch_device.type,
    }
    # Wall-clock time goes to the log, not to the DVC metric: a rerun must reproduce it byte for byte.
    seconds = round(time.perf_counter() - started, 3)
    log.info("train: %d epochs in %.1f s", len(history), seconds)
    write_json(Path(metrics_path), metrics)
    return {**metrics, "seconds": seconds}
