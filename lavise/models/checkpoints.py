"""Model checkpoints on disk: telling a path from a weights name, reading, writing, `target`.

A checkpoint is a plain state_dict (safetensors, or torch with ``weights_only=True``), so loading
one never runs code; the `target` stage writes one and `features` and `evaluate` read it back.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lavise.io import atomic_path

CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth")
TARGET_CHECKPOINT = "model.safetensors"


def looks_like_checkpoint(weights: str) -> bool:
    """The one rule that tells a checkpoint path from a torchvision weights name."""
    return weights.endswith(CHECKPOINT_SUFFIXES) or "/" in weights or "\\" in weights or Path(weights).is_file()


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a user checkpoint: safetensors, or a torch state_dict with ``weights_only=True``.

    A DataParallel ``module.`` prefix is removed so checkpoints saved from wrapped models load.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"checkpoint {path} is not a state_dict of tensors")
    if state and all(key.startswith("module.") for key in state):
        state = {key[len("module.") :]: value for key, value in state.items()}
    return state


def save_checkpoint(model: nn.Module | dict[str, torch.Tensor], path: str | Path) -> None:
    """Plain state_dict as safetensors (contiguous CPU tensors; channels_last is undone), atomically."""
    state = model.state_dict() if isinstance(model, nn.Module) else model
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp))


def infer_num_classes(state: dict[str, torch.Tensor], head: str | None, name: str) -> int:
    """Number of classes = rows of the classifier head's weight in ``state``.

    ``head`` is the module name `lavise.models.backbones.classifier_head_name` gives for model
    ``name`` (passed in, so that this module needs no model code).
    """
    key = f"{head}.weight"
    if head is None or key not in state:
        raise ValueError(f"cannot infer num_classes for {name}: no classifier weight in checkpoint")
    return int(state[key].shape[0])


def resolve_weights(weights: str, target_model: Path, what: str = "weights") -> str:
    """`target` means the checkpoint the `target` stage trained; anything else passes through.

    ``what`` names the setting in the error message (the stage passes its params key).
    """
    if weights != "target":
        return weights
    checkpoint = Path(target_model) / TARGET_CHECKPOINT
    if not checkpoint.is_file():
        raise FileNotFoundError(
            f"{what} is 'target' but {checkpoint} does not exist: run the target stage "
            f"(dvc repro target) or set {what} to a torchvision weights name, none or a path"
        )
    return str(checkpoint)
