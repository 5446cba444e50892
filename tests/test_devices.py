"""Device choice: `auto` follows the hardware; an explicit CUDA request never falls back silently."""

from __future__ import annotations

import pytest
import torch

from lavise.devices import resolve_device


def test_auto_and_cpu() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto", "train.device").type == expected
    assert resolve_device("cpu", "train.device") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_gpu_names_the_key() -> None:
    with pytest.raises(ValueError, match=r"features.device is 'cuda' but no CUDA device is available"):
        resolve_device("cuda", "features.device")


def test_precision_auto_is_fp32_on_cpu_and_fp16_needs_cuda() -> None:
    from lavise.devices import resolve_precision

    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu, "features.precision") == "fp32"
    assert resolve_precision("bf16", cpu, "features.precision") == "bf16"
    with pytest.raises(ValueError, match=r"features.precision is 'fp16' but fp16 autocast needs CUDA"):
        resolve_precision("fp16", cpu, "features.precision")
    with pytest.raises(ValueError, match=r"features.precision is 'fp64'"):
        resolve_precision("fp64", cpu, "features.precision")
