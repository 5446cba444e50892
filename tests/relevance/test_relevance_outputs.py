"""The lasso's inputs from image files, the class table in words, and the per-class sheet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn

from lavise.data.images import read_image
from lavise.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from lavise.relevance.classes import class_table, read_filter_words, sheet_name, write_class_sheet
from lavise.relevance.responses import layer_responses

PREPROCESSING = Preprocessing(32, 32, "bilinear", IMAGENET_MEAN, IMAGENET_STD, "default")


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    )


def image_files(folder: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    files = []
    for i in range(3):
        path = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(path)
        files.append(path)
    broken = folder / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    return [files[0], broken, files[1], files[2]]


def test_responses_pool_the_maps_and_skip_unreadable_files(tmp_path: Path) -> None:
    model = tiny_model().eval()
    files = image_files(tmp_path)
    out = layer_responses(
        model,
        "1",
        files,
        read_image,
        PREPROCESSING,
        batch_size=2,
        num_workers=0,
        device=torch.device("cpu"),
        keep_maps=True,
    )
    assert out.ok.tolist() == [True, False, True, True]
    assert out.pooled.shape == (3, 4) and out.maps.shape == (3, 4, 8, 8) and out.logits.shape == (3, 2)
    np.testing.assert_allclose(out.pooled, out.maps.astype(np.float32).mean(axis=(2, 3)), atol=2e-3)
    with torch.inference_mode():
        np.testing.assert_allclose(out.logits, model[2:](torch.from_numpy(out.pooled)[:, :, None, None]), atol=1e-5)


def explanations() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "filter": [0, 0, 2],
            "method": ["original_image", "projection", "original_image"],
            "words": [["ball", "round"], ["sphere"], ["tree"]],
            "netdissect_label": ["ball.n.01", "ball.n.01", None],
            "threshold": [1.5, 1.5, 0.7],
        }
    )


def test_class_table_ranks_by_absolute_weight_with_words() -> None:
    words = read_filter_words(explanations())
    weights = np.array([[[0.2, 0.0, -0.5, 0.1], [0.0, 0.0, 0.0, 0.0]]])  # [M=1, C=2, d=4]
    table = class_table(
        ["ball", "tree"], [0.8], weights, np.array([True, False]), np.array([4, 0]), top_k=2, words=words
    ).to_pandas()
    assert table["filter"].tolist() == [2, 0] and table["rank"].tolist() == [1, 2]
    assert table["n_selected"].tolist() == [3, 3]
    assert table["words_original_image"].tolist() == ["tree", "ball round"]
    assert table["words_projection"].tolist() == ["", "sphere"]
    assert table["netdissect_label"].isna().tolist() == [True, False] and table["netdissect_label"][1] == "ball.n.01"


def test_class_sheet_is_written(tmp_path: Path) -> None:
    files = [f for f in image_files(tmp_path) if f.suffix == ".png"]
    maps = np.random.default_rng(1).random((3, 4, 2, 2)).astype(np.float16)
    path = tmp_path / sheet_name("traffic light.n.01")
    assert path.name == "class_traffic_light.n.01.png"
    write_class_sheet(
        path, "traffic light", np.array([0.0, 0.3, -0.6, 0.0]), maps, maps.max(axis=(2, 3)).astype(np.float32),
        n_filters=2, n_images=2, words=read_filter_words(explanations()), image_path=lambda i: files[i],
        image_ids=np.array([10, 11, 12]), geometry=(32, 32, "bilinear"), read=read_image,
    )  # fmt: skip
    with Image.open(path) as sheet:
        assert sheet.width == 2 * 32  # two images per filter row
