"""The saliency pass, its metrics and its sheets on the tiny brightness model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from lavise.data.images import UnreadableImage
from lavise.saliency.controls import gaussian_map
from lavise.saliency.faithfulness import road_scores
from lavise.saliency.run import ScoreSettings, run_saliency
from lavise.saliency.sheets import write_case_sheet
from lavise.saliency.summary import NO_TRUTH, Bootstrap, saliency_metrics
from tests.saliency.tiny import SETTINGS, bright_square, tiny_models

SIZE = 64  # ROAD solves a sparse system per pixel: keep the crop small

METHODS = ["gradcam", "ablationcam"]
SCORES = ScoreSettings(tolerance=15, top_q=0.15, sigma=0.25, road_percentiles=[50], seed=0)
BOOTSTRAP = Bootstrap(n_resamples=200, confidence=0.95, seed=0)


def source(image_id: int) -> tuple[torch.Tensor | UnreadableImage, dict[str, np.ndarray]]:
    """Image 1: the square, labelled `bright`; image 2 unreadable; image 3: a mask of a class the model lacks."""
    crop, _, mask = bright_square(SIZE)
    if image_id == 2:
        return UnreadableImage("undecodable", "2.jpg: broken"), {}
    return crop, ({"bright": mask} if image_id == 1 else {"not_a_class": mask})


def run(tmp_path: Path, categories: list[str] | None = ("bright", "b", "c")) -> object:
    models = tiny_models(categories)
    sheets = (1, lambda case, maps: write_case_sheet(tmp_path, case, maps))
    return run_saliency([1, 2, 3], source, models, (SIZE, SIZE), METHODS, SETTINGS, SCORES, sheets)


def test_pass_scores_the_trained_model_and_both_controls(tmp_path: Path) -> None:
    result = run(tmp_path)
    assert result.images == 1 and result.skipped == {"unreadable": 1, "no_ground_truth_class": 1}
    rows = pd.DataFrame(result.rows)
    assert sorted(set(zip(rows["model"], rows["method"]))) == [
        ("gaussian", "gaussian"),
        ("random", "ablationcam"),
        ("random", "gradcam"),
        ("trained", "ablationcam"),
        ("trained", "gradcam"),
    ]
    trained = rows[rows["model"] == "trained"]
    assert trained["pointing_hit"].all()  # class 0 reads the square's brightness
    assert (trained["agreement_gradcam"][trained["method"] == "gradcam"] == 1.0).all()
    gaussian = rows[rows["model"] == "gaussian"].iloc[0]
    assert not gaussian["pointing_hit"]  # the centre (31.5, 31.5) is > 15 px from the square (4..15)
    assert set(result.seconds) == set(METHODS)
    sheet = Image.open(tmp_path / "image_1.png")
    assert sheet.width == SIZE * (1 + len(METHODS))


def test_metrics_have_intervals_controls_and_the_agreement_matrix(tmp_path: Path) -> None:
    metrics = saliency_metrics(run(tmp_path), METHODS, True, BOOTSTRAP, 0.15)
    assert metrics["images"] == 1 and metrics["pairs"] == 1
    entry = metrics["methods"]["gradcam"]
    assert entry["pointing_game"] == {"mean": 1.0, "low": 1.0, "high": 1.0}
    assert set(entry["random_weights"]) == {"pointing_game", "energy", "top_region_iou"}
    assert metrics["gaussian"]["pointing_game"]["mean"] == 0.0
    matrix = metrics["agreement"]
    assert matrix["gradcam"]["gradcam"]["mean"] == 1.0
    assert matrix["gradcam"]["ablationcam"] == matrix["ablationcam"]["gradcam"]


def test_without_the_datasets_classes_the_top1_class_is_explained_without_truth(tmp_path: Path) -> None:
    result = run(tmp_path, categories=None)
    rows = pd.DataFrame(result.rows)
    assert set(rows["model"]) == {"trained"} and "pointing_hit" not in rows
    assert result.images == 2  # image 3's mask does not matter: no ground truth is used
    metrics = saliency_metrics(result, METHODS, False, BOOTSTRAP, 0.15)
    assert metrics["ground_truth"] == NO_TRUTH
    assert "gaussian" not in metrics and "pointing_game" not in metrics["methods"]["gradcam"]
    assert "road" in metrics["methods"]["gradcam"] and "agreement" in metrics


def test_every_image_skipped_is_an_error(tmp_path: Path) -> None:
    models = tiny_models()
    with pytest.raises(ValueError, match="every chosen image was skipped"):
        saliency_metrics(
            run_saliency([2], source, models, (SIZE, SIZE), METHODS, SETTINGS, SCORES), METHODS, True, BOOTSTRAP, 0.15
        )


def test_gaussian_control_peaks_at_the_centre() -> None:
    g = gaussian_map(5, 0.2)  # sigma = 1 px
    assert g[2, 2] == 1.0 and np.allclose(g, g.T) and np.allclose(g, g[::-1, ::-1])
    assert g[2, 3] == pytest.approx(np.exp(-0.5))


def test_road_prefers_the_map_of_what_the_model_reads() -> None:
    models = tiny_models()
    crop, image, mask = bright_square(SIZE)
    right = mask.astype(np.float32)
    wrong = (~mask).astype(np.float32)
    scores = road_scores(models.trained.model, image, {"m": np.stack([right, wrong])}, [0, 0], [50], seed=0)["m"]
    assert scores[0] > scores[1]
    again = road_scores(models.trained.model, image, {"m": np.stack([right, wrong])}, [0, 0], [50], 0)["m"]
    assert np.array_equal(scores, again)


def test_batched_road_equals_the_library_road_combined_per_method() -> None:
    import torch
    from pytorch_grad_cam.metrics.road import ROADCombined
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from tests.saliency.tiny import tiny_model

    model = tiny_model(seed=2, detector=False)
    _, image, _ = bright_square(32)
    rng = np.random.default_rng(0)
    maps = {name: rng.random((2, 32, 32)).astype(np.float32) for name in ("a", "b", "c")}
    classes, percentiles = [0, 2], [20, 50, 80]
    scores = road_scores(model, image, maps, classes, percentiles, seed=7, batch_size=5)
    for name, cams in maps.items():
        torch.manual_seed(7)
        batch = image[None].expand(2, -1, -1, -1).contiguous()
        targets = [ClassifierOutputTarget(c) for c in classes]
        expected = ROADCombined(percentiles=percentiles)(batch, cams, targets, model)
        np.testing.assert_allclose(scores[name], expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(scores["a"], scores["b"])


def test_road_on_the_first_images_only(tmp_path: Path) -> None:
    """`road_images: 1`: the first explained image gets ROAD, the next ones NaN, and the metrics
    average ROAD over the pairs that have it (`road_pairs`)."""
    import dataclasses

    models = tiny_models(categories=None)  # top-1 class: both readable images are explained
    scores = dataclasses.replace(SCORES, road_images=1)
    result = run_saliency([1, 2, 3], source, models, (SIZE, SIZE), METHODS, SETTINGS, scores)
    rows = pd.DataFrame(result.rows)
    assert rows[rows["image_id"] == 1]["road"].notna().all() and rows[rows["image_id"] == 3]["road"].isna().all()
    metrics = saliency_metrics(result, METHODS, False, BOOTSTRAP, 0.15)
    assert (metrics["pairs"], metrics["road_pairs"]) == (2, 1)
    first = rows[(rows["image_id"] == 1) & (rows["method"] == "gradcam")]["road"].iloc[0]
    assert metrics["methods"]["gradcam"]["road"]["mean"] == pytest.approx(first)
