"""The relevance stage's own checks: params, labels, the cache it reads, and its exit status."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import yaml

from lavise.training.target_data import LabelledImages, MultiLabelData
from stages.params import ParamsError, validate_params
from stages.relevance import category_classes, check_cache, label_kind, make_labels, one_hot, val_rows

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def defaults() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ([], "`relevance.mu` = [] is invalid; allowed: a non-empty list of numbers > 0"),
        ([0.0, 1.0], "a non-empty list of numbers > 0"),
        ([-1], "a non-empty list of numbers > 0"),
        ([0.2, 0.1], "strictly increasing"),
        ("0.1", "a non-empty list of numbers > 0"),
    ],
)
def test_bad_mu_names_the_key(defaults: dict, value: object, fragment: str) -> None:
    params = copy.deepcopy(defaults)
    params["relevance"]["mu"] = value
    with pytest.raises(ParamsError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        validate_params(params, ROOT)


def data_of(train_labels: np.ndarray, val_ids: list[int]) -> MultiLabelData:
    categories = [f"c{i}" for i in range(train_labels.shape[1])]
    train = LabelledImages(np.arange(len(train_labels)), [Path("x")] * len(train_labels), train_labels)
    val = LabelledImages(np.array(val_ids), [Path("y")] * len(val_ids), np.eye(len(val_ids), train_labels.shape[1]))
    return MultiLabelData(categories, train, val, {})


def test_label_kind_resolves_auto(defaults: dict) -> None:
    params = copy.deepcopy(defaults)
    assert label_kind(params) == "categories"  # the demo's `target` CNN
    params["backbone"]["weights"] = "IMAGENET1K_V1"
    assert label_kind(params) == "predictions"


def test_class_without_positive_is_reported_and_skipped(defaults: dict, caplog: pytest.LogCaptureFixture) -> None:
    data = data_of(np.array([[1, 0, 0], [1, 0, 1]], dtype=np.float32), [5, 6])
    logits = np.zeros((2, 3), dtype=np.float32)
    labels = make_labels(defaults, data, logits, np.array([True, True]), logits, np.array([1, 0]), Path("none"))
    assert labels.scored.tolist() == [True, False, True]
    assert "c1" in caplog.text
    np.testing.assert_array_equal(labels.val, data.val.labels[[1, 0]])


def test_predictions_are_the_models_top1(defaults: dict) -> None:
    params = copy.deepcopy(defaults)
    params["relevance"]["labels"] = "predictions"
    logits = np.array([[0.1, 2.0, 0.0], [3.0, 0.0, 1.0]], dtype=np.float32)
    np.testing.assert_array_equal(one_hot(logits), [[0, 1, 0], [1, 0, 0]])
    data = data_of(np.zeros((2, 3), dtype=np.float32), [5])
    labels = make_labels(params, data, logits, np.array([True, True]), logits[:1], np.array([0]), Path("none"))
    assert labels.kind == "predictions" and labels.scored.tolist() == [True, True, False]


def test_categories_need_one_output_per_category() -> None:
    data = data_of(np.ones((2, 3), dtype=np.float32), [5])
    with pytest.raises(ValueError, match="relevance.labels: categories needs a model with one output per category"):
        category_classes(data, 1000, Path("none"), "IMAGENET1K_V1")


def test_cache_of_another_layer_or_image_set_is_refused(defaults: dict) -> None:
    meta = {"backbone": "resnet18", "layer": "layer3", "transform": {"resize": 256, "crop": 224}}
    with pytest.raises(ValueError, match="run the features stage"):
        check_cache(meta, defaults, Path("data/features"))
    with pytest.raises(ValueError, match="validation image 9 is not a readable val image"):
        val_rows(np.array([5, 9]), data_of(np.ones((1, 2), dtype=np.float32), [5, 6]), Path("data/features"))
