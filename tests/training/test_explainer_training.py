"""The explainer's loop: validate, optimiser, early stopping and the fit driver."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from lavise.features.cache import open_feature_cache
from lavise.models.explainer import Explainer, cosine_scores, hinge_rank_loss
from lavise.training.explainer import (
    EarlyStopping,
    check_settings,
    make_optimizer,
    train_explainer,
    validate,
)
from lavise.training.explainer_data import Split, load_class_vectors, load_classes, load_split, split_holdout

SETTINGS = dict(
    hidden_dim=None,
    dropout=0.1,
    margin=1.0,
    optimizer="dadapt_adam",
    lr=1.0,
    batch_size=32,
    epochs=3,
    patience=3,
    seed=0,
    device=torch.device("cpu"),
)


def test_evaluate_accuracy_matches_naive_loop() -> None:
    torch.manual_seed(0)
    model = Explainer(in_dim=4, emb_dim=3).eval()
    vectors = np.random.default_rng(2).normal(size=(40, 4)).astype(np.float16)
    positives = torch.tensor(
        [
            [True, False, False, False, False, False, False],
            [False, True, True, False, False, False, False],
            [False, False, False, False, False, False, True],
        ]
    )
    class_vectors = torch.nn.functional.normalize(torch.randn(7, 3), dim=1)
    split = Split(vectors, np.arange(40), np.arange(40) % 3, np.arange(40) // 2, n_excluded={})
    loss, top1, top5 = validate(
        model, split, class_vectors, positives, margin=1.0, batch_size=16, device=torch.device("cpu")
    )
    with torch.no_grad():
        outputs = model(torch.from_numpy(vectors.astype(np.float32)))
    scores = cosine_scores(outputs, class_vectors)
    hits1 = hits5 = 0
    for i in range(40):
        ranking = sorted(range(7), key=lambda c: -float(scores[i, c]))
        pos = positives[i % 3]
        hits1 += bool(pos[ranking[0]])
        hits5 += any(bool(pos[c]) for c in ranking[:5])
    assert (top1, top5) == (hits1 / 40, hits5 / 40)
    mask = positives[torch.arange(40) % 3]
    assert loss == pytest.approx(float(hinge_rank_loss(outputs, class_vectors, mask, 1.0)), rel=1e-6)


def test_adam_scheduler_divides_rate_after_lr_patience_epochs() -> None:
    optimizer, scheduler = make_optimizer("adam", [torch.nn.Parameter(torch.zeros(2))], 1e-3, lr_patience=2)
    for loss in (1.0, 1.0, 1.0):  # best, then 2 epochs without improvement: still 1e-3
        scheduler.step(loss)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)
    scheduler.step(1.0)  # the third epoch without improvement exceeds the patience
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)
    assert make_optimizer("dadapt_adam", [torch.nn.Parameter(torch.zeros(2))], 1.0)[1] is None


def test_early_stopping_hand_computed() -> None:
    # patience 2: epoch 2 is the best (2.0); 2.5 and 2.0 (not strictly lower) are two misses.
    stopping = EarlyStopping(patience=2)
    assert [stopping.improved(loss) for loss in (3.0, 2.0, 2.5)] == [True, True, False]
    assert not stopping.should_stop and stopping.best_loss == 2.0
    assert not stopping.improved(2.0) and stopping.should_stop
    assert stopping.improved(1.0) and not stopping.should_stop and stopping.epochs_without_improvement == 0


def test_check_settings_rejects_what_the_loop_cannot_run() -> None:
    check_settings("adam", 2, 1, 1)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        check_settings("sgd", 32, 1, 1)
    with pytest.raises(ValueError, match="batch_size must be >= 2"):
        check_settings("adam", 1, 1, 1)
    with pytest.raises(ValueError, match="epochs and patience must be >= 1, got 1, 0"):
        check_settings("adam", 2, 1, 0)


def test_train_explainer_returns_the_best_holdout_epoch_on_the_cpu(tiny_cache: dict[str, Path]) -> None:
    classes = load_classes(tiny_cache["annotations"])
    class_vectors = load_class_vectors(tiny_cache["glove"], classes.tokens)
    cache = open_feature_cache(tiny_cache["features"])
    train, holdout = split_holdout(load_split(cache, "train", classes), 0.1, 0)
    first = train_explainer(train, holdout, class_vectors, classes.positives, **SETTINGS)
    second = train_explainer(train, holdout, class_vectors, classes.positives, **SETTINGS)
    assert first.history == second.history and len(first.history) == 3
    assert [row["epoch"] for row in first.history] == [1, 2, 3]
    assert first.best == min(first.history, key=lambda row: row["holdout_loss"])
    assert all(p.device.type == "cpu" for p in first.model.parameters())
    assert all(torch.equal(v, second.model.state_dict()[k]) for k, v in first.model.state_dict().items())
    loss, _, _ = validate(
        first.model, holdout, class_vectors, classes.positives, margin=1.0, batch_size=32, device=torch.device("cpu")
    )
    assert loss == pytest.approx(first.best["holdout_loss"], rel=1e-5)


def test_the_epoch_is_chosen_on_the_holdout_loss_alone(tiny_cache: dict[str, Path]) -> None:
    """Same training samples, two hold-outs: the history's training losses agree (the hold-out is
    only scored), and each run keeps the epoch of its own hold-out's lowest loss."""
    classes = load_classes(tiny_cache["annotations"])
    class_vectors = load_class_vectors(tiny_cache["glove"], classes.tokens)
    train, holdout = split_holdout(load_split(open_feature_cache(tiny_cache["features"]), "train", classes), 0.1, 0)
    # a hold-out whose labels are wrong: its loss rises as training improves, so epoch 1 is the best
    wrong = Split(holdout.vectors, holdout.rows, (holdout.category_index + 1) % 3, holdout.image_ids, {})
    settings = {**SETTINGS, "epochs": 6, "patience": 6}
    honest = train_explainer(train, holdout, class_vectors, classes.positives, **settings)
    misled = train_explainer(train, wrong, class_vectors, classes.positives, **settings)
    assert [row["train_loss"] for row in honest.history] == [row["train_loss"] for row in misled.history]
    assert honest.best["epoch"] > 1 and misled.best["epoch"] == 1
    for fit in (honest, misled):
        assert fit.best == min(fit.history, key=lambda row: row["holdout_loss"])


def test_a_hidden_dim_that_does_not_fit_is_refused_before_allocating() -> None:
    from lavise.models.explainer import check_explainer_fits

    check_explainer_fits(512, 300, None, 256, torch.device("cpu"), available=10**9)  # ~1.7 MB of weights
    message = (
        "train.hidden_dim 10000000 needs ~32.7 GB for the explainer's weights and ~257.5 GB to train it "
        "(512 -> 10000000 -> 300, with gradients, optimiser state and a batch of 256), "
        "but only 64.0 GB is available on cpu: lower train.hidden_dim"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        check_explainer_fits(512, 300, 10**7, 256, torch.device("cpu"), "train.hidden_dim", available=64 * 10**9)
