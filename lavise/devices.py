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


AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # keys: options.PRECISIONS less auto


def resolve_precision(name: str, device: torch.device, key: str) -> str:
    """The CNN's precision on ``device`` (one of ``options.PRECISIONS``), made concrete so the
    cache records what ran. ``auto``: fp32 on CPU (measured, README "Scaling out"), bf16 on CUDA
    (fp16 on GPUs without bf16), which was the implicit CUDA behaviour before it had a param.
    fp16 autocast exists only on CUDA: elsewhere it is an error naming ``key``."""
    if name == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if name == "fp16" and device.type != "cuda":
        raise ValueError(f"{key} is 'fp16' but fp16 autocast needs CUDA and the device is {device.type}; use bf16")
    if name not in AUTOCAST_DTYPES:
        raise ValueError(f"{key} is {name!r}; allowed: auto | {' | '.join(AUTOCAST_DTYPES)}")
    return name
