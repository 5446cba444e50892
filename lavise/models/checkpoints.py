"""Model checkpoints on disk: telling a path from a weights name, reading, writing, `target`.

A checkpoint is a plain state_dict (safetensors, or torch with ``weights_only=True``), so loading
one never runs code; the `target` stage writes one and `features` and `evaluate` read it back.
A file that is not one, or one that does not fit the model, ends in one line saying what was
found (``load_state_dict``; ``mismatch_summary`` and ``describe_checkpoint`` for the model code),
naming the setting the stage passes as ``what``.
"""

from __future__ import annotations

import pickle
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from lavise.io import atomic_path

CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth")
TARGET_CHECKPOINT = "model.safetensors"
FILLED_IN = ".num_batches_tracked"  # a key torch's load_state_dict adds when a checkpoint lacks it
SAVE_HINT = "save one with torch.save(model.state_dict(), path) or safetensors"
# What torch.load / safetensors raise for a file they cannot parse (a read error, OSError, passes).
UNREADABLE = (
    pickle.UnpicklingError,
    SafetensorError,
    RuntimeError,
    EOFError,
    KeyError,
    ValueError,
    IndexError,
    TypeError,
    AttributeError,
)


def looks_like_checkpoint(weights: str) -> bool:
    """The one rule that tells a checkpoint path from a torchvision weights name."""
    return weights.endswith(CHECKPOINT_SUFFIXES) or "/" in weights or "\\" in weights or Path(weights).is_file()


def shape_text(shape: Sequence[int]) -> str:
    """A tensor shape as messages write it: ``[64, 3, 7, 7]``."""
    return "[" + ", ".join(str(int(n)) for n in shape) + "]"


def describe_value(value: Any) -> str:
    """What a loaded object is, in a few words, for "found ..." in messages."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {shape_text(value.shape)}"
    if isinstance(value, dict):
        keys = ", ".join(map(str, list(value)[:5])) + (", ..." if len(value) > 5 else "")
        odd = next(((k, v) for k, v in value.items() if not isinstance(v, torch.Tensor)), None)
        if odd is None:
            return f"a dict of {len(value)} tensors"
        nested = next((k for k, v in value.items() if isinstance(v, dict) and v and _all_tensors(v)), None)
        hint = f"; its {nested!r} entry looks like a state_dict: save that alone" if nested is not None else ""
        return f"a dict of {len(value)} entries whose {odd[0]!r} is {_short(odd[1])} (keys: {keys}){hint}"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)} items"
    return _short(value)


def _short(value: Any) -> str:
    """A value in a few words: scalars with their value, containers by kind, objects by class."""
    if isinstance(value, (dict, list, tuple, set)):
        return f"a {type(value).__name__} of {len(value)} items"
    if isinstance(value, (bool, int, float, str)) or value is None:
        text = repr(value)
        return f"the {type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"
    return f"a {type(value).__module__}.{type(value).__qualname__}"


def _all_tensors(state: dict[Any, Any]) -> bool:
    return all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())


def _unreadable(error: Exception) -> str:
    """What torch.load or safetensors said about a file it could not read, in one clause."""
    text = str(error)
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if refused:
        return (
            f"a pickled {refused.group(1)}, which torch.load(weights_only=True) does not load "
            "(a whole model or training state, not only weights)"
        )
    if isinstance(error, pickle.UnpicklingError):
        return "a pickle that torch.load(weights_only=True) refuses, not a torch.save file of tensors"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    detail = lines[0].split(". ")[0][:120] if lines else "the file ends early"
    return f"no safetensors or torch.save data ({type(error).__name__}: {detail})"


def _read_checkpoint(path: Path, what: str) -> Any:
    """The object in a checkpoint file; anything that cannot be parsed is a one-line ValueError."""
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        with warnings.catch_warnings():  # torch warns about pickle protocols before it refuses a file
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except UNREADABLE as error:
        raise ValueError(
            f"{what} {path} is not a state_dict of tensors (found {_unreadable(error)}); {SAVE_HINT}"
        ) from None


def load_state_dict(path: str | Path, what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Read a user checkpoint: safetensors, or a torch state_dict with ``weights_only=True``.

    A DataParallel ``module.`` prefix is removed so checkpoints saved from wrapped models load.
    Anything else (a bare tensor, a list, a pickled model, a file neither format reads) is a
    one-line ValueError saying what was found; ``what`` names the setting (the stage passes
    its params key).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} {path} does not exist")
    state = _read_checkpoint(path, what)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state or not _all_tensors(state):
        found = describe_value(state) if not isinstance(state, dict) or state else "an empty dict"
        raise ValueError(f"{what} {path} is not a state_dict of tensors (found {found}); {SAVE_HINT}")
    if all(key.startswith("module.") for key in state):
        state = {key[len("module.") :]: value for key, value in state.items()}
    return state


def _natural(key: str) -> tuple[Any, ...]:
    """Sort key for keys the model does not know: parameters before buffers, numbers by value
    (layer2 before layer10), so that they read in about module order even from a safetensors
    file (stored sorted by name)."""
    buffer = key.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked")
    return (buffer, *[(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", key)])


def describe_checkpoint(state: Mapping[str, torch.Tensor], head: str | None = None) -> str:
    """``320 tensors in conv1, bn1, layer1, ..., fc; classifier fc.weight [1000, 2048]``: enough to
    recognise a checkpoint (``head``: the classifier module's name, shown when the state has it)."""
    tops = list(dict.fromkeys(key.split(".", 1)[0] for key in state))
    modules = ", ".join(tops[:8]) + (", ..." if len(tops) > 8 else "")
    key = f"{head}.weight"
    classifier = f"; classifier {key} {shape_text(state[key].shape)}" if head is not None and key in state else ""
    return f"{len(state)} tensors in {modules}{classifier}"


def mismatch_summary(
    expected: Mapping[str, Sequence[int]], state: Mapping[str, torch.Tensor], model: str
) -> str | None:
    """Which keys of ``state`` do not fit a model whose state_dict shapes are ``expected``: the
    first few missing and unexpected keys and the first shape mismatch with both shapes (None when
    everything fits). Pure data, so this module needs no model code."""

    def first(keys: list[str]) -> str:
        return ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")

    # in the model's module order; a missing BatchNorm step counter is filled in by load_state_dict
    missing = [key for key in expected if key not in state and not key.endswith(FILLED_IN)]
    unexpected = sorted((key for key in state if key not in expected), key=_natural)
    reshaped = [key for key in expected if key in state and tuple(state[key].shape) != tuple(expected[key])]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys ({first(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys ({first(unexpected)})")
    if reshaped:
        key = reshaped[0]
        parts.append(
            f"{len(reshaped)} tensors of another shape (first {key}: checkpoint {shape_text(state[key].shape)}, "
            f"{model} {shape_text(expected[key])})"
        )
    return "; ".join(parts) or None


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
