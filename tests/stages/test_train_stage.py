"""The `train` stage end to end on a tiny synthetic feature cache: weights, history, metrics."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lavise.features.cache import open_feature_cache
from lavise.models.explainer import load_explainer
from lavise.training.explainer import validate
from lavise.training.explainer_data import load_class_vectors, load_classes, load_split
from stages.train import run_train
from tests.writers.cache import write_feature_cache


def run_training(cache: dict[str, Path], out: Path, **overrides: Any) -> dict[str, Any]:
    """The stage with a `train` params section of the given overrides."""
    settings = dict(
        hidden_dim=None,
        dropout=0.1,
        margin=1.0,
        optimizer="dadapt_adam",
        lr=1.0,
        batch_size=32,
        epochs=12,
        patience=12,
        lr_patience=10,
        seed=0,
        device="cpu",
    )
    settings.update(overrides)
    return run_train(
        cache["features"],
        cache["annotations"],
        cache["glove"],
        out / "explainer",
        out / "metrics" / "train.json",
        out / "plots" / "history.csv",
        settings,
    )


def read_history(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def trained(tiny_cache: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("run")
    return run_training(tiny_cache, out), out


def test_excluded_objects_are_counted_in_metrics_and_config(trained: tuple[dict[str, Any], Path]) -> None:
    metrics, out = trained
    assert (metrics["n_train"], metrics["n_val"], metrics["n_classes"]) == (118, 30, 4)
    assert metrics["n_excluded_train"] == {"outside_crop": 2, "unseen": 20, "dropped": 3}
    assert metrics["n_excluded_val"] == {"outside_crop": 0, "unseen": 5, "dropped": 0}
    _, config = load_explainer(out / "explainer")
    assert config["classes"] == ["alpha", "beta", "delta", "gamma"]
    assert (config["layer"], config["backbone"], config["embedding_dim"]) == ("layer4", "resnet18", 8)
    trained_with = {key: config[key] for key in ("epochs", "patience", "lr_patience", "device", "dropout", "margin")}
    assert trained_with == {
        "epochs": 12,
        "patience": 12,
        "lr_patience": 10,
        "device": "cpu",
        "dropout": 0.1,
        "margin": 1.0,
    }


def test_training_separates_clusters_and_keeps_best_val_loss(
    tiny_cache: dict[str, Path], trained: tuple[dict[str, Any], Path]
) -> None:
    metrics, out = trained
    history = read_history(out / "plots" / "history.csv")
    assert list(history[0]) == ["epoch", "train_loss", "val_loss", "val_top1", "val_top5"]
    assert len(history) == metrics["epochs_run"] == 12
    val_losses = [float(row["val_loss"]) for row in history]
    best_epoch = int(np.argmin(val_losses)) + 1
    assert metrics["best_epoch"] == best_epoch
    assert best_epoch < metrics["epochs_run"]  # so the check below tells best from last
    assert metrics["best_val_loss"] == pytest.approx(min(val_losses))
    assert metrics["val_top1"] == 1.0
    assert float(history[-1]["train_loss"]) < float(history[0]["train_loss"])
    assert json.loads((out / "metrics" / "train.json").read_text()) == {
        k: v for k, v in metrics.items() if k != "seconds"
    }
    # the saved weights reproduce the best epoch's validation loss, not the last epoch's
    model, config = load_explainer(out / "explainer")
    assert config["best_epoch"] == best_epoch
    classes = load_classes(tiny_cache["annotations"])
    class_vectors = load_class_vectors(tiny_cache["glove"], classes.tokens)
    val = load_split(open_feature_cache(tiny_cache["features"]), "val", classes)
    val_loss, top1, _ = validate(
        model, val, class_vectors, classes.positives, margin=1.0, batch_size=7, device=torch.device("cpu")
    )
    assert val_loss == pytest.approx(metrics["best_val_loss"], rel=1e-5)
    assert top1 == metrics["val_top1"]


def test_training_is_deterministic(tiny_cache: dict[str, Path], tmp_path: Path) -> None:
    first = run_training(tiny_cache, tmp_path / "a", epochs=3)
    second = run_training(tiny_cache, tmp_path / "b", epochs=3)
    first.pop("seconds"), second.pop("seconds")
    assert first == second
    weights_a = load_file(str(tmp_path / "a" / "explainer" / "explainer.safetensors"))
    weights_b = load_file(str(tmp_path / "b" / "explainer" / "explainer.safetensors"))
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    for name in ("plots/history.csv", "metrics/train.json", "explainer/config.json"):  # byte-identical DVC outputs
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    third = run_training(tiny_cache, tmp_path / "c", epochs=3, seed=1)
    third.pop("seconds")
    assert third != first


def test_adam_path_runs_and_early_stops(tiny_cache: dict[str, Path], tmp_path: Path) -> None:
    metrics = run_training(tiny_cache, tmp_path, optimizer="adam", lr=1e-3, epochs=4, patience=1, hidden_dim=8)
    history = read_history(tmp_path / "plots" / "history.csv")
    assert len(history) == metrics["epochs_run"] <= 4
    assert metrics["stopped_early"] == (metrics["epochs_run"] < 4)
    model, config = load_explainer(tmp_path / "explainer")
    assert config["hidden_dim"] == 8 and config["optimizer"] == "adam"


def test_bad_settings_and_inputs_fail_clearly(tiny_cache: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="optimizer"):
        run_training(tiny_cache, tmp_path, optimizer="sgd")
    with pytest.raises(ValueError, match="batch_size"):
        run_training(tiny_cache, tmp_path, batch_size=1)
    cache = open_feature_cache(tiny_cache["features"])
    objects = cache.train_objects.copy()
    objects.loc[0, "category"] = "unicorn"
    bad = write_feature_cache(
        tmp_path / "bad",
        train_vectors=cache.train_vectors,
        train_objects=objects,
        val_vectors=cache.val_vectors,
        val_objects=cache.val_objects,
        meta=cache.meta,
    )
    with pytest.raises(ValueError, match="unicorn"):
        run_training({**tiny_cache, "features": bad}, tmp_path)
    assert not (tmp_path / "explainer").exists()  # nothing written before the inputs are checked


def test_vectors_of_another_width_than_meta_channels_are_rejected(tiny_cache: dict[str, Path], tmp_path: Path) -> None:
    """The stage reads the cache through its reader, whose checks guard the explainer's input size."""
    narrow_maps = write_feature_cache(
        tmp_path / "narrow_maps",
        val_maps=np.zeros((0, 5, 1, 1)),
        train_vectors=np.zeros((3, 6)),
        val_vectors=np.zeros((2, 5)),
    )
    with pytest.raises(ValueError, match="meta.json channels=5"):
        run_training({**tiny_cache, "features": narrow_maps}, tmp_path)
    narrow_val = write_feature_cache(
        tmp_path / "narrow_val", train_vectors=np.zeros((3, 6)), val_vectors=np.zeros((2, 4))
    )
    with pytest.raises(ValueError, match="val_vectors.npy has 4 columns"):
        run_training({**tiny_cache, "features": narrow_val}, tmp_path)
    assert not (tmp_path / "explainer").exists()
