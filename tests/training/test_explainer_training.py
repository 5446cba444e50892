"""Explainer training from a tiny synthetic feature cache."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from lavise.models.explainer import cosine_scores, hinge_rank_loss, load_explainer
from lavise.training.explainer import (
    Split,
    batch_bounds,
    evaluate,
    gather_batch,
    load_classes,
    load_split,
    train_explainer,
)

IN_DIM = 16
WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]
# category → (tokens, role); "cat a" is multiword (two positive tokens).
CATEGORIES = {
    "cat a": (["alpha", "beta"], "seen"),
    "dog": (["gamma"], "seen"),
    "car": (["delta"], "seen"),
    "bird": (["epsilon"], "unseen"),
    "rare": (["zeta"], "dropped"),
}
CLUSTER_OF = {"cat a": 0, "dog": 1, "car": 2, "bird": 3, "rare": 4}


def write_split(directory: Path, split: str, counts: dict[str, int], rng: np.random.Generator) -> None:
    """Separable clusters: each category's vectors sit around its own well-separated centre."""
    centres = np.eye(5, IN_DIM) * 6.0 + 1.0
    categories = [c for c, n in counts.items() for _ in range(n)]
    order = rng.permutation(len(categories))
    categories = [categories[i] for i in order]
    vectors = np.stack([centres[CLUSTER_OF[c]] + rng.normal(0, 0.5, IN_DIM) for c in categories])
    np.save(directory / f"{split}_vectors.npy", vectors.astype(np.float16))
    n = len(categories)
    pq.write_table(
        pa.table(
            {
                "row": np.arange(n, dtype=np.int64),
                "object_id": np.arange(n, dtype=np.int64) + (0 if split == "train" else 10_000),
                "image_id": np.arange(n, dtype=np.int64) // 2,
                "category": categories,
                # Two train "dog" objects lie outside the crop: zero coverage, to be excluded.
                "coverage": np.where(
                    (np.array(categories) == "dog")
                    & (np.cumsum(np.array(categories) == "dog") <= 2)
                    & (split == "train"),
                    0.0,
                    0.25,
                ).astype(np.float32),
            }
        ),
        directory / f"{split}_objects.parquet",
    )


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cache")
    rng = np.random.default_rng(0)
    features, annotations, glove = root / "features", root / "annotations", root / "glove"
    for d in (features, annotations, glove):
        d.mkdir()
    write_split(features, "train", {"cat a": 40, "dog": 40, "car": 40, "bird": 20, "rare": 3}, rng)
    write_split(features, "val", {"cat a": 10, "dog": 10, "car": 10, "bird": 5}, rng)
    (features / "meta.json").write_text(
        json.dumps({"backbone": "resnet18", "weights": "none", "layer": "layer4", "channels": IN_DIM})
    )
    pq.write_table(
        pa.table(
            {
                "category": list(CATEGORIES),
                "tokens": [t for t, _ in CATEGORIES.values()],
                "role": [r for _, r in CATEGORIES.values()],
            }
        ),
        annotations / "categories.parquet",
    )
    vectors = rng.normal(size=(len(WORDS) + 2, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    np.save(glove / "vectors.npy", vectors)
    pq.write_table(pa.table({"word": WORDS + ["the", "of"]}), glove / "vocab.parquet")
    return {"features": features, "annotations": annotations, "glove": glove}


def run_training(cache: dict[str, Path], out: Path, **overrides) -> dict:
    settings = dict(
        hidden_dim=None,
        dropout=0.1,
        margin=1.0,
        optimizer="dadapt_adam",
        lr=1.0,
        batch_size=32,
        epochs=12,
        patience=12,
        seed=0,
        device="cpu",
    )
    settings.update(overrides)
    return train_explainer(
        cache["features"],
        cache["annotations"],
        cache["glove"],
        out / "explainer",
        metrics_path=out / "metrics" / "train.json",
        history_path=out / "plots" / "history.csv",
        **settings,
    )


def read_history(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def trained(tiny_cache, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("run")
    return run_training(tiny_cache, out), out


def test_classes_are_sorted_seen_tokens_with_positives(tiny_cache):
    classes = load_classes(tiny_cache["annotations"])
    assert classes.tokens == ["alpha", "beta", "delta", "gamma"]
    assert classes.seen_categories == ["car", "cat a", "dog"]
    assert classes.positives.tolist() == [
        [False, False, True, False],  # car → delta
        [True, True, False, False],  # cat a → alpha, beta
        [False, False, False, True],  # dog → gamma
    ]


def test_unseen_and_dropped_objects_are_excluded_and_counted(tiny_cache, trained):
    split = load_split(tiny_cache["features"], "train", load_classes(tiny_cache["annotations"]))
    assert split.rows.size == 118
    assert split.n_excluded == {"outside_crop": 2, "unseen": 20, "dropped": 3}
    categories = pq.read_table(tiny_cache["features"] / "train_objects.parquet").column("category").to_pylist()
    assert all(categories[r] in ("cat a", "dog", "car") for r in split.rows)
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


def test_training_separates_clusters_and_keeps_best_val_loss(tiny_cache, trained):
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
    model, _ = load_explainer(out / "explainer")
    classes = load_classes(tiny_cache["annotations"])
    from lavise.training.explainer import load_class_vectors

    class_vectors = load_class_vectors(tiny_cache["glove"], classes.tokens)
    val = load_split(tiny_cache["features"], "val", classes)
    val_loss, top1, _ = evaluate(
        model, val, class_vectors, classes.positives, margin=1.0, batch_size=7, device=torch.device("cpu")
    )
    assert val_loss == pytest.approx(metrics["best_val_loss"], rel=1e-5)
    assert top1 == metrics["val_top1"]


def test_training_is_deterministic(tiny_cache, tmp_path):
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


def test_adam_path_runs_and_early_stops(tiny_cache, tmp_path):
    metrics = run_training(tiny_cache, tmp_path, optimizer="adam", lr=1e-3, epochs=4, patience=1, hidden_dim=8)
    history = read_history(tmp_path / "plots" / "history.csv")
    assert len(history) == metrics["epochs_run"] <= 4
    assert metrics["stopped_early"] == (metrics["epochs_run"] < 4)
    model, config = load_explainer(tmp_path / "explainer")
    assert config["hidden_dim"] == 8 and config["optimizer"] == "adam"


def test_bad_settings_and_inputs_fail_clearly(tiny_cache, tmp_path):
    with pytest.raises(ValueError, match="optimizer"):
        run_training(tiny_cache, tmp_path, optimizer="sgd")
    with pytest.raises(ValueError, match="batch_size"):
        run_training(tiny_cache, tmp_path, batch_size=1)
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("meta.json", "train_vectors.npy", "val_vectors.npy", "val_objects.parquet"):
        (bad / name).write_bytes((tiny_cache["features"] / name).read_bytes())
    objects = pq.read_table(tiny_cache["features"] / "train_objects.parquet").to_pydict()
    objects["category"][0] = "unicorn"
    pq.write_table(pa.table(objects), bad / "train_objects.parquet")
    with pytest.raises(ValueError, match="unicorn"):
        run_training({**tiny_cache, "features": bad}, tmp_path)


def test_batch_bounds_cover_everything_without_singletons():
    assert batch_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert batch_bounds(9, 4) == [(0, 4), (4, 9)]
    assert batch_bounds(8, 4) == [(0, 4), (4, 8)]
    assert batch_bounds(3, 4) == [(0, 3)]


def test_gather_batch_matches_per_sample_loop_and_flags_non_finite():
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(50, 6)).astype(np.float16)
    split = Split(
        vectors=vectors,
        rows=rng.permutation(50)[:30].astype(np.int64),
        category_index=rng.integers(0, 3, 30),
        n_excluded={},
    )
    picks = np.array([5, 0, 29, 12, 7])
    features, category_index = gather_batch(split, picks)
    assert features.dtype == torch.float32
    got = {(tuple(f.tolist()), int(c)) for f, c in zip(features, category_index)}
    expected = {
        (tuple(vectors[split.rows[i]].astype(np.float32).tolist()), int(split.category_index[i])) for i in picks
    }
    assert got == expected
    assert np.all(np.diff(split.rows[picks][np.argsort(split.rows[picks])]) > 0)
    vectors[split.rows[12], 2] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        gather_batch(split, picks)


def test_evaluate_accuracy_matches_naive_loop():
    torch.manual_seed(0)
    from lavise.models.explainer import Explainer

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
    split = Split(vectors=vectors, rows=np.arange(40), category_index=np.arange(40) % 3, n_excluded={})
    loss, top1, top5 = evaluate(
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


def test_adam_scheduler_divides_rate_after_lr_patience_epochs():
    from lavise.training.explainer import make_optimizer

    optimizer, scheduler = make_optimizer("adam", [torch.nn.Parameter(torch.zeros(2))], 1e-3, lr_patience=2)
    for val_loss in (1.0, 1.0, 1.0):  # best, then 2 epochs without improvement: still 1e-3
        scheduler.step(val_loss)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)
    scheduler.step(1.0)  # the third epoch without improvement exceeds the patience
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)
    assert make_optimizer("dadapt_adam", [torch.nn.Parameter(torch.zeros(2))], 1.0)[1] is None
