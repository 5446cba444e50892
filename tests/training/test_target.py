"""The target CNN's loop: schedule, training determinism, streaming against the cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lavise.models.classifier import build_classifier
from lavise.training.target import TrainingResult, cosine_with_warmup, make_optimizer, train_target_model
from lavise.training.target_data import LabelledImages, MultiLabelData, load_multilabel_data
from tests.training.synthetic import TARGET_CATEGORIES


def _train(data: MultiLabelData, **overrides: Any) -> TrainingResult:
    kwargs: dict[str, Any] = {
        "architecture": "resnet18",
        "init": "none",
        "epochs": 2,
        "batch_size": 4,
        "lr": 0.05,
        "weight_decay": 1e-4,
        "crop": 48,
        "seed": 3,
        "eval_resize": 55,
        "eval_crop": 48,
        "score_at_transform": False,
    }
    kwargs.update(overrides)
    model = build_classifier(kwargs.pop("architecture"), len(data.categories), kwargs.pop("init"), kwargs["seed"])
    return train_target_model(data, model, **kwargs)


def test_cosine_with_warmup_hand_computed() -> None:
    # 2 warm-up steps of 6: 1/2, 1, then cos over the remaining 4 steps: 1, (1 + cos(pi/4)) / 2, 1/2, ...
    factors = [cosine_with_warmup(step, 2, 6) for step in range(6)]
    assert factors[:3] == [0.5, 1.0, 1.0]
    assert factors[3] == pytest.approx((1 + np.cos(np.pi / 4)) / 2)
    assert factors[4] == pytest.approx(0.5)
    assert factors[5] == pytest.approx((1 + np.cos(3 * np.pi / 4)) / 2)


def test_optimizer_steps_the_schedule_per_batch() -> None:
    model = torch.nn.Linear(2, 1)
    optimizer, scheduler = make_optimizer(model, 0.1, 0.0, steps_per_epoch=2, epochs=3)
    rates = []
    for _ in range(6):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[:3] == pytest.approx([0.05, 0.1, 0.1])
    assert rates[4] == pytest.approx(0.05)
    group = optimizer.param_groups[0]
    assert (group["momentum"], group["nesterov"], group["weight_decay"]) == (0.9, True, 0.0)


def test_training_is_deterministic_and_streaming_matches_cache(tiny_dataset: Path) -> None:
    torch.set_num_threads(1)
    data = load_multilabel_data(tiny_dataset / "annotations", tiny_dataset / "raw" / "demo")
    streamed_with_corrupt = _train(data, max_cached_images=0, epochs=1)
    assert not streamed_with_corrupt.cached
    assert streamed_with_corrupt.skipped_unreadable == {"train_unreadable": 1, "val_unreadable": 0}
    # Without the corrupt file the batches match, so streaming must reproduce the cached run.
    readable = [i for i, f in enumerate(data.train.files) if f.name != "0008.jpg"]
    train = LabelledImages(
        data.train.image_ids[readable], [data.train.files[i] for i in readable], data.train.labels[readable]
    )
    data = MultiLabelData(data.categories, train, data.val, data.counts)
    first, second = _train(data), _train(data)
    streamed = _train(data, max_cached_images=0, num_workers=1)
    assert first.cached and not streamed.cached
    assert first.skipped_unreadable == streamed.skipped_unreadable == {"train_unreadable": 0, "val_unreadable": 0}
    assert first.val_map_per_epoch == second.val_map_per_epoch == streamed.val_map_per_epoch
    for key, value in first.state_dict.items():
        assert torch.equal(value, second.state_dict[key]), key
        assert torch.equal(value, streamed.state_dict[key]), key
    changed = _train(data, seed=4)
    assert not torch.equal(changed.state_dict["conv1.weight"], first.state_dict["conv1.weight"])


def test_without_val_images_training_completes_unscored(tiny_dataset: Path) -> None:
    torch.set_num_threads(1)
    data = load_multilabel_data(tiny_dataset / "annotations", tiny_dataset / "raw" / "demo")
    no_val = LabelledImages(np.zeros(0, dtype=np.int64), [], np.zeros((0, len(TARGET_CATEGORIES)), dtype=np.float32))
    result = _train(
        MultiLabelData(data.categories, data.train, no_val, data.counts), crop=32, eval_resize=37, eval_crop=32
    )
    assert len(result.val_map_per_epoch) == 2 and all(np.isnan(result.val_map_per_epoch))
