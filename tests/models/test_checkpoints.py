"""Checkpoints: path-or-name rule, reading, writing, num_classes from the head, `target` weights."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from lavise.models.checkpoints import (
    describe_checkpoint,
    infer_num_classes,
    load_state_dict,
    looks_like_checkpoint,
    mismatch_summary,
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


class Opaque:
    """A class torch.load(weights_only=True) refuses to unpickle."""


def write_tensor(path: Path) -> None:
    torch.save(torch.ones(3), path)


def write_list(path: Path) -> None:
    torch.save([torch.ones(3)], path)


def write_int(path: Path) -> None:
    torch.save(101, path)


def write_plain_pickle(path: Path) -> None:
    path.write_bytes(pickle.dumps({"fc.weight": [1, 2]}, protocol=4))


def write_non_tensor_values(path: Path) -> None:
    torch.save({"epoch": 3, "model": {"fc.weight": torch.ones(2, 2)}}, path)


def write_object(path: Path) -> None:
    torch.save({"model": Opaque()}, path)


def write_text(path: Path) -> None:
    path.write_text("hello world")


def write_bad_safetensors(path: Path) -> None:
    path.write_bytes(b"garbage")


@pytest.mark.parametrize(
    ("name", "write", "found"),
    [
        ("tensor.pt", write_tensor, "a tensor of shape [3]"),
        ("list.pt", write_list, "a list of 1 items"),
        ("int.pt", write_int, "the int 101"),
        ("pickle.pt", write_plain_pickle, "a pickle that torch.load(weights_only=True) refuses"),
        (
            "state.pt",
            write_non_tensor_values,
            "a dict of 2 entries whose 'epoch' is the int 3 (keys: epoch, model); "
            "its 'model' entry looks like a state_dict: save that alone",
        ),
        ("object.pt", write_object, f"a pickled {__name__}.Opaque, which torch.load(weights_only=True) does not load"),
        ("text.pt", write_text, "no safetensors or torch.save data (KeyError: 101)"),  # was `KeyError: 101`
        ("bad.safetensors", write_bad_safetensors, "no safetensors or torch.save data (SafetensorError: "),
    ],
)
def test_a_file_that_is_not_a_state_dict_is_one_line_saying_what_was_found(
    tmp_path: Path, name: str, write: Callable[[Path], None], found: str
) -> None:
    path = tmp_path / name
    write(path)
    with pytest.raises(ValueError) as caught:
        load_state_dict(path, "backbone.weights")
    message = str(caught.value)
    assert message.startswith(f"backbone.weights {path} is not a state_dict of tensors (found {found}")
    assert "\n" not in message and len(message) < 400


def test_mismatch_summary_names_missing_unexpected_and_the_first_other_shape() -> None:
    expected = {"a.weight": (4, 3), "b.weight": (2, 2), "c.weight": (5,)}
    state = {"a.weight": torch.zeros(4, 1), "b.weight": torch.zeros(2, 2), "d.weight": torch.zeros(1)}
    assert mismatch_summary(expected, state, "net") == (
        "1 missing keys (c.weight); 1 unexpected keys (d.weight); "
        "1 tensors of another shape (first a.weight: checkpoint [4, 1], net [4, 3])"
    )
    assert mismatch_summary(expected, {k: torch.zeros(v) for k, v in expected.items()}, "net") is None
    assert describe_checkpoint(state) == "3 tensors in a, b, d"
    assert describe_checkpoint(state, "a") == "3 tensors in a, b, d; classifier a.weight [4, 1]"
