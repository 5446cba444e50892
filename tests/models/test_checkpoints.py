"""Checkpoints: path-or-name rule, reading, writing, num_classes from the head, `target` weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from lavise.models.checkpoints import (
    infer_num_classes,
    load_state_dict,
    looks_like_checkpoint,
    resolve_weights,
    save_checkpoint,
)


def test_target_weights_resolution(tmp_path: Path) -> None:
    assert resolve_weights("IMAGENET1K_V1", tmp_path) == "IMAGENET1K_V1"
    with pytest.raises(FileNotFoundError, match="target stage"):
        resolve_weights("target", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"^backbone\.weights is 'target' but .*set backbone\.weights to"):
        resolve_weights("target", tmp_path, "backbone.weights")
    (tmp_path / "model.safetensors").write_bytes(b"x")
    assert resolve_weights("target", tmp_path) == str(tmp_path / "model.safetensors")


def test_checkpoint_paths_are_told_from_weights_names(tmp_path: Path) -> None:
    assert looks_like_checkpoint("model.pt") and looks_like_checkpoint("model.pth")
    assert (
        looks_like_checkpoint("m.safetensors") and looks_like_checkpoint("models/m") and looks_like_checkpoint("a\\b")
    )
    assert not looks_like_checkpoint("IMAGENET1K_V1") and not looks_like_checkpoint("none")
    (tmp_path / "plain").write_bytes(b"")
    assert looks_like_checkpoint(str(tmp_path / "plain"))


def test_save_then_load_round_trip_undoes_channels_last(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).to(memory_format=torch.channels_last)
    path = tmp_path / "sub" / "model.safetensors"
    save_checkpoint(model, path)
    loaded = load_state_dict(path)
    assert loaded.keys() == model.state_dict().keys()
    assert all(torch.equal(loaded[k], v) and loaded[k].is_contiguous() for k, v in model.state_dict().items())
    save_checkpoint({"w": torch.arange(6.0).view(2, 3).t()}, tmp_path / "dict.safetensors")
    assert torch.equal(load_state_dict(tmp_path / "dict.safetensors")["w"], torch.arange(6.0).view(2, 3).t())
    assert not list(tmp_path.glob("**/*.tmp"))


def test_torch_checkpoints_with_a_state_dict_key_and_bad_contents(tmp_path: Path) -> None:
    torch.save({"state_dict": {"module.fc.weight": torch.ones(2, 3)}}, tmp_path / "wrapped.pt")
    assert list(load_state_dict(tmp_path / "wrapped.pt")) == ["fc.weight"]
    torch.save({"fc.weight": [1, 2]}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="is not a state_dict of tensors"):
        load_state_dict(tmp_path / "bad.pt")


def test_num_classes_is_the_rows_of_the_head_weight() -> None:
    state = {"features.0.weight": torch.zeros(8, 3, 3, 3), "fc.weight": torch.zeros(7, 8), "fc.bias": torch.zeros(7)}
    assert infer_num_classes(state, "fc", "net") == 7
    with pytest.raises(ValueError, match="cannot infer num_classes for net: no classifier weight"):
        infer_num_classes(state, "classifier", "net")
    with pytest.raises(ValueError, match="cannot infer num_classes for net"):
        infer_num_classes(state, None, "net")
