"""The LaViSE explainer: a small MLP from a pooled feature vector to the word-embedding space.

The layer order copies the reference code (BatchNorm before each Linear, Dropout after each
BatchNorm) so that a checkpoint trained here means the same thing as one trained there. The
hinge rank loss is the DeViSE loss with cosine similarity; several positive tokens (multiword
COCO names) are averaged as FACT2023 does.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from lavise.io import atomic_dir, read_json, write_json
from lavise.models.memory import GB, check_fits

WEIGHTS_FILE = "explainer.safetensors"
CONFIG_FILE = "config.json"
# Copies of the weights training holds: the weights, their gradients, the optimiser's state
# (DAdaptAdam: s, exp_avg, exp_avg_sq; Adam two of them) and the best epoch's copy.
TRAINING_COPIES = 6


class Explainer(nn.Module):
    """BatchNorm1d(d) → Dropout → Linear(d, h) → ReLU → BatchNorm1d(h) → Dropout → Linear(h, E)."""

    def __init__(self, in_dim: int, emb_dim: int, hidden_dim: int | None = None, dropout: float = 0.1):
        super().__init__()
        hidden = in_dim if hidden_dim is None else hidden_dim
        if in_dim < 1 or emb_dim < 1 or hidden < 1:
            raise ValueError(f"dimensions must be positive: in_dim={in_dim}, hidden_dim={hidden}, emb_dim={emb_dim}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.in_dim = in_dim
        self.hidden_dim = hidden
        self.emb_dim = emb_dim
        self.dropout = dropout
        self.layers = nn.Sequential(
            nn.BatchNorm1d(in_dim),
            nn.Dropout(dropout),
            nn.Linear(in_dim, hidden),
            nn.ReLU(),
            nn.BatchNorm1d(hidden),
            nn.Dropout(dropout),
            nn.Linear(hidden, emb_dim),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


def parameter_count(in_dim: int, emb_dim: int, hidden_dim: int | None = None) -> int:
    """Numbers the explainer holds: both Linear layers, both BatchNorms' affine weights and running
    statistics (the step counters aside)."""
    hidden = in_dim if hidden_dim is None else hidden_dim
    return 4 * in_dim + in_dim * hidden + hidden + 4 * hidden + hidden * emb_dim + emb_dim


def check_explainer_fits(
    in_dim: int,
    emb_dim: int,
    hidden_dim: int | None,
    batch_size: int,
    device: torch.device,
    what: str = "hidden_dim",
    available: int | None = None,
) -> None:
    """Before the explainer is built: a ``hidden_dim`` too large to allocate and train on ``device``
    ends in one line saying what it would take (``what`` names the setting; ``available``
    overrides the measured free bytes, for tests), not in the OOM killer."""
    hidden = in_dim if hidden_dim is None else hidden_dim
    weights = 4 * parameter_count(in_dim, emb_dim, hidden)
    # one batch's layer outputs, dropout masks and their gradients, float32
    activations = 4 * batch_size * (3 * in_dim + 6 * hidden + 2 * emb_dim)
    needed = TRAINING_COPIES * weights + activations
    shown = hidden_dim if hidden_dim is not None else f"{hidden_dim} (= the input's {in_dim} channels)"
    claim = (
        f"{what} {shown} needs ~{weights / GB:.1f} GB for the explainer's weights and ~{needed / GB:.1f} GB to "
        f"train it ({in_dim} -> {hidden} -> {emb_dim}, with gradients, optimiser state and a batch of {batch_size})"
    )
    check_fits(needed, device, claim, f"lower {what}", available)


def cosine_scores(outputs: torch.Tensor, class_vectors: torch.Tensor) -> torch.Tensor:
    """Cosine similarity [B, C] between explainer outputs [B, E] and class vectors [C, E]."""
    return F.normalize(outputs, dim=1) @ F.normalize(class_vectors, dim=1).T


def hinge_rank_loss(
    outputs: torch.Tensor,
    class_vectors: torch.Tensor,
    positive_mask: torch.Tensor,
    margin: float,
) -> torch.Tensor:
    """Batch mean of Σ_negatives max(0, margin − mean_pos cos + cos_c).

    Every row needs at least one positive (a row without one has no target and would divide by
    zero), so that is an error rather than a silent NaN.
    """
    if positive_mask.dtype != torch.bool:
        raise TypeError(f"positive_mask must be bool, got {positive_mask.dtype}")
    if positive_mask.shape != (outputs.shape[0], class_vectors.shape[0]):
        raise ValueError(
            f"positive_mask shape {tuple(positive_mask.shape)} != (batch, classes) "
            f"({outputs.shape[0]}, {class_vectors.shape[0]})"
        )
    n_positives = positive_mask.sum(dim=1)
    if bool((n_positives == 0).any()):
        raise ValueError("every row of positive_mask needs at least one positive class")
    scores = cosine_scores(outputs, class_vectors)
    positive_mean = (scores * positive_mask).sum(dim=1) / n_positives
    terms = (margin - positive_mean[:, None] + scores).clamp(min=0.0)
    return terms.masked_fill(positive_mask, 0.0).sum(dim=1).mean()


def save_explainer(model: Explainer, config: dict[str, Any], out_dir: str | os.PathLike[str]) -> None:
    """Write explainer.safetensors + config.json together (out_dir is replaced atomically).

    The architecture keys are taken from the model itself so the config can never disagree with
    the weights; ``config`` adds the rest (class tokens, embedding source, backbone/layer).
    """
    full_config = dict(config)
    full_config.update(in_dim=model.in_dim, hidden_dim=model.hidden_dim, emb_dim=model.emb_dim, dropout=model.dropout)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    with atomic_dir(out_dir) as tmp:
        save_file(state, str(tmp / WEIGHTS_FILE))
        write_json(tmp / CONFIG_FILE, full_config)


def load_explainer(out_dir: str | os.PathLike[str], device: str = "cpu") -> tuple[Explainer, dict[str, Any]]:
    """Rebuild the explainer from its config and weights, in eval mode, on ``device``."""
    directory = Path(out_dir)
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"explainer file missing: {path} (run the train stage)")
    config = read_json(config_path)
    model = Explainer(
        in_dim=int(config["in_dim"]),
        emb_dim=int(config["emb_dim"]),
        hidden_dim=int(config["hidden_dim"]),
        dropout=float(config["dropout"]),
    )
    model.load_state_dict(load_file(str(weights_path), device="cpu"), strict=True)
    return model.to(device).eval(), config


def load_checked_explainer(directory: Path, device: torch.device, n_channels: int, emb_dim: int) -> nn.Module:
    """The trained explainer, which must take the layer's channels and predict GloVe-sized vectors."""
    explainer, config = load_explainer(directory, str(device))
    if int(config["in_dim"]) != n_channels:
        raise ValueError(f"explainer expects {config['in_dim']} channels, the maps have {n_channels}")
    if int(config["emb_dim"]) != emb_dim:
        raise ValueError(f"explainer emb_dim {config['emb_dim']} != GloVe dim {emb_dim}")
    return explainer
