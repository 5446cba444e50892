"""Tests of the `target` stage: mAP, augmentation, model init, training, checkpoint, skip path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torchvision
import yaml
from PIL import Image
from safetensors.torch import load_file

from lavise.models.backbones import build_feature_extractor, load_state_dict
from lavise.training.target import (
    LabelledImages,
    MultiLabelData,
    TrainingResult,
    average_precision,
    build_target_model,
    load_multilabel_data,
    mean_average_precision,
    random_resized_crop_box,
    run_target_stage,
    sample_generator,
    train_target_model,
)

CATEGORIES = ["blue disc", "green bar", "red square"]
TARGET = {"init": "none", "epochs": 2, "batch_size": 4, "lr": 0.05, "weight_decay": 1e-4, "crop": 64, "seed": 3}
BACKBONE = {"name": "resnet18", "weights": "target", "layer": "layer4", "num_classes": None}
TRANSFORM = {"resize": 73, "crop": 64}


def _draw(rng: np.random.Generator, labels: set[str], size: tuple[int, int]) -> np.ndarray:
    height, width = size
    image = rng.integers(90, 140, size=(height, width, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:height, :width]
    if "red square" in labels:
        image[5:30, 5:30] = (220, 20, 20)
    if "green bar" in labels:
        image[:, width - 18 : width - 8] = (20, 200, 30)
    if "blue disc" in labels:
        image[(yy - height // 2) ** 2 + (xx - width // 2) ** 2 < 144] = (20, 40, 220)
    return image


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data/annotations + data/raw/demo with 10 train (one corrupt, one not ok) and 5 val images."""
    root = tmp_path_factory.mktemp("target")
    image_dir = root / "raw" / "demo" / "images"
    image_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    image_rows, object_rows = [], []
    for image_id in range(15):
        split = "train" if image_id < 10 else "val"
        labels = {c for c in CATEGORIES if rng.random() < 0.5} or {CATEGORIES[image_id % 3]}
        path = f"images/{image_id:04d}.jpg"
        status = "missing" if image_id == 9 else "ok"
        if image_id == 8:
            (root / "raw" / "demo" / path).write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
        elif status == "ok":
            size = (80, 96) if image_id % 2 else (96, 80)
            Image.fromarray(_draw(rng, labels, size)).save(root / "raw" / "demo" / path, quality=95)
        image_rows.append(
            {"image_id": image_id, "path": path, "width": 96, "height": 80, "split": split, "status": status}
        )
        object_rows += [{"image_id": image_id, "category": c} for c in sorted(labels)]
    object_rows.append({"image_id": 0, "category": "dropped thing"})
    annotations = root / "annotations"
    annotations.mkdir()
    pq.write_table(pa.Table.from_pylist(image_rows), annotations / "images.parquet")
    pq.write_table(pa.Table.from_pylist(object_rows), annotations / "objects.parquet")
    pq.write_table(
        pa.Table.from_pylist(
            [{"category": c, "role": r} for c, r in zip(CATEGORIES, ["seen", "unseen", "seen"], strict=True)]
            + [{"category": "dropped thing", "role": "dropped"}]
        ),
        annotations / "categories.parquet",
    )
    return root


def _naive_average_precision(scores: np.ndarray, labels: np.ndarray) -> list[float]:
    """sklearn's definition, one category and one threshold at a time."""
    result = []
    for c in range(scores.shape[1]):
        n_pos = labels[:, c].sum()
        if n_pos == 0:
            result.append(float("nan"))
            continue
        ap, previous_recall = 0.0, 0.0
        for threshold in sorted(set(scores[:, c].tolist()), reverse=True):
            predicted = scores[:, c] >= threshold
            tp = (predicted & (labels[:, c] == 1)).sum()
            recall = tp / n_pos
            ap += (recall - previous_recall) * tp / predicted.sum()
            previous_recall = recall
        result.append(ap)
    return result


def test_average_precision_hand_computed() -> None:
    scores = torch.tensor([[0.9, 0.5, 0.1], [0.8, 0.5, 0.2], [0.7, 0.2, 0.3], [0.6, 0.1, 0.4]])
    labels = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 1, 0], [0, 0, 0]])
    ap = average_precision(scores, labels)
    # col 0: hits at ranks 1 and 3 -> (1/1 + 2/3) / 2; col 1: the tie at 0.5 is one threshold
    # with precision 1/2, then 2/3 at 0.2 -> 0.5 * 1/2 + 0.5 * 2/3; col 2: no positive.
    assert ap[0].item() == pytest.approx(5 / 6)
    assert ap[1].item() == pytest.approx(7 / 12)
    assert torch.isnan(ap[2])
    assert mean_average_precision(scores, labels) == pytest.approx((5 / 6 + 7 / 12) / 2)
    assert average_precision(torch.tensor([[0.5], [0.5]]), torch.tensor([[1], [0]])).item() == pytest.approx(0.5)


def test_average_precision_matches_naive_loop_with_ties() -> None:
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 6, size=(60, 7)).astype(np.float64) / 5  # many ties
    labels = (rng.random((60, 7)) < 0.3).astype(np.int64)
    labels[:, 4] = 0
    np.testing.assert_allclose(
        average_precision(scores, labels).numpy(), _naive_average_precision(scores, labels), rtol=1e-12, equal_nan=True
    )


def test_average_precision_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="must both be"):
        average_precision(torch.zeros(3, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="NaN"):
        average_precision(torch.tensor([[float("nan")]]), torch.tensor([[1]]))


def test_random_resized_crop_box_is_seeded_and_inside() -> None:
    boxes = [random_resized_crop_box(73, 91, sample_generator(5, 1, i)) for i in range(200)]
    assert boxes == [random_resized_crop_box(73, 91, sample_generator(5, 1, i)) for i in range(200)]
    assert boxes != [random_resized_crop_box(73, 91, sample_generator(5, 2, i)) for i in range(200)]
    for top, left, h, w in boxes:
        assert 0 <= top and top + h <= 73 and 0 <= left and left + w <= 91
        assert 0.35 * 73 * 91 * 0.9 <= h * w <= 73 * 91


def test_load_multilabel_data_labels_and_counts(tiny_dataset: Path) -> None:
    data = load_multilabel_data(tiny_dataset / "annotations", tiny_dataset / "raw" / "demo")
    assert data.categories == CATEGORIES
    assert len(data.train) == 9 and len(data.val) == 5
    assert data.counts["train_images_not_ok"] == 1 and data.counts["objects_unlabelled_category"] == 1
    objects = pq.read_table(tiny_dataset / "annotations" / "objects.parquet").to_pylist()
    for row, image_id in enumerate(data.train.image_ids):
        expected = {o["category"] for o in objects if o["image_id"] == image_id} - {"dropped thing"}
        assert {CATEGORIES[c] for c in np.flatnonzero(data.train.labels[row])} == expected


def test_build_target_model_init_from_checkpoint_drops_head(tmp_path: Path) -> None:
    source = torchvision.models.resnet18(num_classes=5)
    torch.save(source.state_dict(), tmp_path / "init.pt")
    model = build_target_model("resnet18", 3, str(tmp_path / "init.pt"), seed=0)
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert model.fc.weight.shape == (3, 512)
    assert torch.equal(
        build_target_model("resnet18", 3, "none", seed=4).conv1.weight,
        build_target_model("resnet18", 3, "none", seed=4).conv1.weight,
    )
    with pytest.raises(ValueError, match="weights name of resnet18"):
        build_target_model("resnet18", 3, "IMAGENET_TYPO", seed=0)
    torch.save(torchvision.models.resnet34(num_classes=3).state_dict(), tmp_path / "other.pt")
    with pytest.raises(ValueError, match="does not fit resnet18"):
        build_target_model("resnet18", 3, str(tmp_path / "other.pt"), seed=0)


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
    return train_target_model(data, **{**kwargs, **overrides})


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


def test_stage_writes_checkpoint_that_features_loads(tiny_dataset: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    out, metrics_path = tmp_path / "models" / "target", tmp_path / "metrics" / "target.json"
    metrics = run_target_stage(
        tiny_dataset / "annotations",
        tiny_dataset / "raw",
        out,
        metrics_path,
        dataset="demo",
        backbone=BACKBONE,
        target=TARGET,
        transform=TRANSFORM,
    )
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["categories"] == CATEGORIES and config["num_classes"] == 3
    assert len(config["val_map_per_epoch"]) == 2 and "best_epoch" not in config
    assert config["skipped_unreadable"] == {"train_unreadable": 1, "val_unreadable": 0}
    assert json.loads(metrics_path.read_text()) == {k: v for k, v in metrics.items() if k != "seconds"}
    assert metrics["trained"] and 0.0 <= metrics["val_map"] <= 1.0 and metrics["epochs"] == 2
    assert metrics["val_map"] == config["val_map_per_epoch"][-1]
    assert metrics["train_loss"] == config["train_loss_per_epoch"][-1]

    state = load_file(str(out / "model.safetensors"))
    model = torchvision.models.resnet18(num_classes=3)
    model.load_state_dict(state, strict=True)
    torch.save(model.state_dict(), tmp_path / "copy.pt")
    reloaded = torch.load(tmp_path / "copy.pt", weights_only=True)
    assert all(torch.equal(reloaded[k], v) for k, v in state.items())
    assert all(torch.equal(load_state_dict(out / "model.safetensors")[k], v) for k, v in state.items())

    extractor = build_feature_extractor("resnet18", str(out / "model.safetensors"), "layer4")
    images = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        expected = model.layer4(
            model.layer3(model.layer2(model.layer1(model.maxpool(model.relu(model.bn1(model.conv1(images)))))))
        )
        torch.testing.assert_close(extractor(images), expected)


def test_skip_path_writes_only_config_fast(tmp_path: Path) -> None:
    out, metrics_path = tmp_path / "models" / "target", tmp_path / "metrics" / "target.json"
    out.mkdir(parents=True)
    (out / "model.safetensors").write_bytes(b"stale")
    start = time.perf_counter()
    metrics = run_target_stage(
        tmp_path / "no annotations",
        tmp_path / "no raw",
        out,
        metrics_path,
        dataset="demo",
        backbone={**BACKBONE, "weights": "IMAGENET1K_V1"},
        target=TARGET,
        transform=TRANSFORM,
    )
    assert time.perf_counter() - start < 1.0
    assert metrics == {"trained": False} == json.loads(metrics_path.read_text())
    assert [p.name for p in out.iterdir()] == ["config.json"]
    config = json.loads((out / "config.json").read_text())
    assert config["trained"] is False and "IMAGENET1K_V1" in config["reason"]


def test_stage_script_skip_path_from_params(tmp_path: Path) -> None:
    """`python -m stages.target` reads params.yaml from its working directory and honours the paths."""
    repo = Path(__file__).resolve().parents[2]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["backbone"]["weights"] = "none"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PYTHONPATH": str(repo)}
    subprocess.run(
        [sys.executable, "-m", "stages.target", "--out", "m/target", "--metrics", "m/target.json"],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
    )
    assert json.loads((tmp_path / "m" / "target.json").read_text()) == {"trained": False}
    assert json.loads((tmp_path / "m" / "target" / "config.json").read_text())["trained"] is False


def test_stage_script_reports_bad_params_in_one_line(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["lr"] = "1e-4"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = subprocess.run(
        [sys.executable, "-m", "stages.target"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(repo)},
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: params.yaml: `train.lr` = '1e-4' is invalid")


def test_without_val_images_training_completes_unscored(tiny_dataset: Path) -> None:
    torch.set_num_threads(1)
    data = load_multilabel_data(tiny_dataset / "annotations", tiny_dataset / "raw" / "demo")
    no_val = LabelledImages(np.zeros(0, dtype=np.int64), [], np.zeros((0, len(CATEGORIES)), dtype=np.float32))
    result = _train(
        MultiLabelData(data.categories, data.train, no_val, data.counts), crop=32, eval_resize=37, eval_crop=32
    )
    assert len(result.val_map_per_epoch) == 2 and all(np.isnan(result.val_map_per_epoch))
