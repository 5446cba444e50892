"""Which torch device a stage runs on."""

from __future__ import annotations

import torch


def resolve_device(name: str, key: str) -> torch.device:
    """``auto`` picks CUDA when present; an explicit ``cuda`` without one is an error naming the
    params key ``key``, never a silent fallback to the CPU (timings would lie)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"{key} is {name!r} but no CUDA device is available; use auto or cpu")
    return torch.device(name)
