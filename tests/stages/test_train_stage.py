"""The `train` stage end to end on a tiny synthetic feature cache: weights, history, metrics, the
hold-out that chooses the epoch, and one-line errors."""

from __future__ import annotations

import csv
import json
import re
import resource
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lavise.features.cache import open_feature_cache
from lavise.models.explainer import load_explainer
from lavise.training.explainer import validate
from lavise.training.explainer_data import load_class_vectors, load_classes, load_split, split_holdout
from stages.train import run_train
from tests.writers.cache import write_feature_cache


def train_section(**overrides: Any) -> dict[str, Any]:
    """A `train` params section for the tiny cache, with ``overrides``."""
    settings = dict(
        hidden_dim=None,
        dropout=0.1,
        margin=1.0,
        optimizer="dadapt_adam",
        lr=1.0,
        batch_size=32,
        epochs=12,
        holdout_fraction=0.1,
        patience=12,
        lr_patience=10,
        seed=0,
        device="cpu",
    )
    settings.update(overrides)
    return settings


def run_training(cache: dict[str, Path], out: Path, **overrides: Any) -> dict[str, Any]:
    """The stage with a `train` params section of the given overrides."""
    settings = train_section(**overrides)
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


TRAINED_SEED = 2  # its hold-out loss is lowest before the last epoch: best and last differ


@pytest.fixture(scope="module")
def trained(tiny_cache: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("run")
    return run_training(tiny_cache, out, seed=TRAINED_SEED), out


def holdout_split(cache: dict[str, Path]) -> tuple[Any, Any]:
    """The stage's (fit, holdout) samples of the train split, recomputed from the cache."""
    classes = load_classes(cache["annotations"])
    train = load_split(open_feature_cache(cache["features"]), "train", classes)
    return split_holdout(train, 0.1, TRAINED_SEED)


def test_excluded_objects_are_counted_in_metrics_and_config(trained: tuple[dict[str, Any], Path]) -> None:
    metrics, out = trained
    # 118 usable train objects on 71 images; round(0.1 * 71) = 7 images are held out
    assert (metrics["n_train"] + metrics["n_holdout"], metrics["n_classes"]) == (118, 4)
    assert (metrics["n_train_images"], metrics["n_holdout_images"]) == (64, 7)
    assert metrics["n_excluded_train"] == {"outside_crop": 2, "unseen": 20, "dropped": 3}
    assert not any("val" in key for key in metrics)  # the scored split is not read
    _, config = load_explainer(out / "explainer")
    assert config["classes"] == ["alpha", "beta", "delta", "gamma"]
    assert (config["layer"], config["backbone"], config["embedding_dim"]) == ("layer4", "resnet18", 8)
    keys = ("epochs", "patience", "lr_patience", "device", "dropout", "margin", "holdout_fraction")
    trained_with = {key: config[key] for key in keys}
    assert trained_with == {
        "epochs": 12,
        "patience": 12,
        "lr_patience": 10,
        "device": "cpu",
        "dropout": 0.1,
        "margin": 1.0,
        "holdout_fraction": 0.1,
    }


def test_training_separates_clusters_and_keeps_best_holdout_loss(
    tiny_cache: dict[str, Path], trained: tuple[dict[str, Any], Path]
) -> None:
    metrics, out = trained
    history = read_history(out / "plots" / "history.csv")
    assert list(history[0]) == ["epoch", "train_loss", "holdout_loss", "holdout_top1", "holdout_top5"]
    assert len(history) == metrics["epochs_run"] == 12
    losses = [float(row["holdout_loss"]) for row in history]
    best_epoch = int(np.argmin(losses)) + 1
    assert metrics["best_epoch"] == best_epoch
    assert best_epoch < metrics["epochs_run"]  # so the check below tells best from last
    assert metrics["best_holdout_loss"] == pytest.approx(min(losses))
    assert metrics["holdout_top1"] == 1.0
    assert float(history[-1]["train_loss"]) < float(history[0]["train_loss"])
    assert json.loads((out / "metrics" / "train.json").read_text()) == {
        k: v for k, v in metrics.items() if k != "seconds"
    }
    # the saved weights reproduce the best epoch's hold-out loss, not the last epoch's
    model, config = load_explainer(out / "explainer")
    assert config["best_epoch"] == best_epoch
    classes = load_classes(tiny_cache["annotations"])
    class_vectors = load_class_vectors(tiny_cache["glove"], classes.tokens)
    _, holdout = holdout_split(tiny_cache)
    assert holdout.rows.size == metrics["n_holdout"]
    loss, top1, _ = validate(
        model, holdout, class_vectors, classes.positives, margin=1.0, batch_size=7, device=torch.device("cpu")
    )
    assert loss == pytest.approx(metrics["best_holdout_loss"], rel=1e-5)
    assert top1 == metrics["holdout_top1"]


def planted_val_cache(cache: dict[str, Path], root: Path) -> Path:
    """The tiny cache with its val split relabelled (cat a → dog → car → cat a): a val loss there
    rises as training improves, so choosing on it would keep epoch 1."""
    source = open_feature_cache(cache["features"])
    objects = source.val_objects.copy()
    objects["category"] = objects["category"].replace({"cat a": "dog", "dog": "car", "car": "cat a"})
    return write_feature_cache(
        root,
        train_vectors=source.train_vectors,
        train_objects=source.train_objects,
        val_vectors=source.val_vectors,
        val_objects=objects,
        meta=source.meta,
    )


def test_a_planted_val_split_does_not_change_the_chosen_epoch(
    tiny_cache: dict[str, Path], trained: tuple[dict[str, Any], Path], tmp_path: Path
) -> None:
    """The epoch is chosen on the hold-out of training images only: the scored split plays no part."""
    metrics, out = trained
    planted = {**tiny_cache, "features": planted_val_cache(tiny_cache, tmp_path / "planted")}
    again = run_training(planted, tmp_path / "run", seed=TRAINED_SEED)
    again.pop("seconds")
    assert again == {k: v for k, v in metrics.items() if k != "seconds"}
    for name in ("plots/history.csv", "metrics/train.json", "explainer/explainer.safetensors"):
        assert (tmp_path / "run" / name).read_bytes() == (out / name).read_bytes(), name


def test_holdout_fraction_sets_the_held_out_images(tiny_cache: dict[str, Path], tmp_path: Path) -> None:
    metrics = run_training(tiny_cache, tmp_path, epochs=1, holdout_fraction=0.3)
    assert (metrics["n_train_images"], metrics["n_holdout_images"]) == (71 - 21, 21)  # round(0.3 * 71)


def test_too_few_training_images_for_a_holdout_is_one_line(tiny_cache: dict[str, Path], tmp_path: Path) -> None:
    one_image = write_feature_cache(
        tmp_path / "one_image",
        train_vectors=np.ones((3, 4)),
        train_objects={"object_id": [0, 1, 2], "image_id": [5, 5, 5], "category": ["dog", "dog", "car"]},
        val_vectors=np.ones((2, 4)),
        val_objects={"object_id": [3, 4], "image_id": [6, 6], "category": ["dog", "car"]},
    )
    message = (
        "train.holdout_fraction 0.1: the train split has 1 image(s) with objects of seen categories; "
        "need >= 2 (one to train on, one to hold out to choose the epoch)"
    )
    with pytest.raises(ValueError, match=f"^{message}$".replace("(", r"\(").replace(")", r"\)")):
        run_training({**tiny_cache, "features": one_image}, tmp_path)
    assert not (tmp_path / "explainer").exists()


def test_training_is_deterministic(tiny_cache: dict[str, Path], tmp_path: Path) -> None:
    first = run_training(tiny_cache, tmp_path / "a", epochs=3)
    second = run_training(tiny_cache, tmp_path / "b", epochs=3)
    first.pop("seconds"), second.pop("seconds")
    assert first == second
    weights_a = load_file(str(tmp_path / "a" / "explainer" / "explainer.safetensors"))
    weights_b = load_file(str(tmp_path / "b" / "explainer" / "explainer.safetensors"))
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    names = ("plots/history.csv", "plots/train_loss.png", "plots/train_accuracy.png", "metrics/train.json")
    for name in (*names, "explainer/config.json"):  # byte-identical DVC outputs
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


HIDDEN_DIM_CHILD = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from stages.cli import run_stage
    from stages.train import run_train

    paths, out, settings = json.loads(sys.argv[1])
    run_stage(lambda: run_train(*map(Path, paths), Path(out) / "explainer", Path(out) / "train.json",
                                Path(out) / "history.csv", settings))
    """
)


def _limit_address_space() -> None:
    """The child's memory cap (torch alone maps ~4 GB of address space): a failure cannot take the
    machine down."""
    resource.setrlimit(resource.RLIMIT_AS, (10 * 2**30, 10 * 2**30))


def test_a_hidden_dim_too_large_to_allocate_is_one_line_saying_what_it_takes(
    tiny_cache: dict[str, Path], tmp_path: Path
) -> None:
    """Checked before allocating: 16 -> 10**7 -> 8 is ~1.2 GB of weights and ~15 GB to train."""
    settings = train_section(hidden_dim=10**7, epochs=1, patience=1, lr_patience=1)
    paths = [str(tiny_cache[key]) for key in ("features", "annotations", "glove")]
    result = subprocess.run(
        [sys.executable, "-c", HIDDEN_DIM_CHILD, json.dumps([paths, str(tmp_path), settings])],
        cwd=Path(__file__).resolve().parents[2],
        preexec_fn=_limit_address_space,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert re.fullmatch(
        r"error: train\.hidden_dim 10000000 needs ~1\.2 GB for the explainer's weights and ~14\.6 GB to train it "
        r"\(16 -> 10000000 -> 8, with gradients, optimiser state and a batch of 32\), "
        r"but only \d+\.\d GB is available on cpu: lower train\.hidden_dim",
        result.stderr.strip().splitlines()[-1],
    ), result.stderr[-2000:]
    assert not (tmp_path / "explainer").exists()


def test_a_glove_store_without_a_class_token_and_a_diverging_loss_are_one_line_errors(
    tiny_cache: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both reach the user through run_stage as ValueErrors (one line), not KeyError or
    FloatingPointError tracebacks."""
    import lavise.training.explainer as explainer_training
    from tests.writers.glove import write_glove_store

    other_store = write_glove_store(tmp_path / "other_glove", ["unrelated", "words"], dim=4)
    with pytest.raises(ValueError, match=r"other_glove: .*not in the GloVe vocabulary"):
        run_training({**tiny_cache, "glove": other_store}, tmp_path)
    monkeypatch.setattr(explainer_training, "validate", lambda *args, **kwargs: (float("nan"), 0.0, 0.0))
    with pytest.raises(ValueError, match=r"epoch 1: the loss diverged .*; lower the learning rate"):
        run_training(tiny_cache, tmp_path, epochs=2)
