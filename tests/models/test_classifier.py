"""The target CNN before training: initialisation and head bias prior (lavise.models.classifier)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from lavise.models.classifier import build_classifier, set_head_bias_to_prior


def test_build_target_model_init_from_checkpoint_drops_head(tmp_path: Path) -> None:
    source = torchvision.models.resnet18(num_classes=5)
    torch.save(source.state_dict(), tmp_path / "init.pt")
    model = build_classifier("resnet18", 3, str(tmp_path / "init.pt"), seed=0)
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert model.fc.weight.shape == (3, 512)
    assert torch.equal(
        build_classifier("resnet18", 3, "none", seed=4).conv1.weight,
        build_classifier("resnet18", 3, "none", seed=4).conv1.weight,
    )
    with pytest.raises(ValueError, match="weights name of resnet18"):
        build_classifier("resnet18", 3, "IMAGENET_TYPO", seed=0)
    torch.save(torchvision.models.resnet34(num_classes=3).state_dict(), tmp_path / "other.pt")
    with pytest.raises(ValueError, match="does not fit resnet18"):
        build_classifier("resnet18", 3, str(tmp_path / "other.pt"), seed=0)


def test_errors_name_the_setting_and_the_global_rng_is_untouched(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^target\.init 'IMAGENET_TYPO' is not 'none'"):
        build_classifier("resnet18", 3, "IMAGENET_TYPO", seed=0, what="target.init")
    state = torch.random.get_rng_state()
    model = build_classifier("resnet18", 3, "none", seed=4)
    assert torch.equal(torch.random.get_rng_state(), state) and model.training


def test_head_bias_starts_at_the_log_odds_hand_computed() -> None:
    model = nn.Sequential(nn.Linear(4, 3))
    set_head_bias_to_prior(model, np.array([0.5, 0.2, 0.0]))
    expected = [0.0, math.log(0.2 / 0.8), math.log(1e-3 / (1 - 1e-3))]  # 0 is clipped to 1e-3
    assert model[0].bias.tolist() == pytest.approx(expected)
    other = nn.Sequential(nn.Linear(4, 2))
    before = other[0].bias.clone()
    set_head_bias_to_prior(other, np.array([0.5, 0.2, 0.1]))  # 3 rates for 2 outputs: left as it is
    assert torch.equal(other[0].bias, before)
