"""On the demo's trained target CNN, every CAM method points at the objects better than the
random-weights network and the centred Gaussian (the issue's acceptance test)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lavise.models.checkpoints import resolve_weights
from stages.saliency import Paths, run_saliency_stage

ROOT = Path(__file__).resolve().parents[2]
CAMS = ["gradcam", "gradcam++", "scorecam", "ablationcam"]


@pytest.mark.slow
def test_cam_pointing_game_beats_both_controls_on_the_demo(tmp_path: Path) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    if params["download"]["source"] != "demo" or not (ROOT / "models" / "target" / "model.safetensors").is_file():
        pytest.skip("needs the demo pipeline's annotations and target model: run `dvc repro target` first")
    weights = resolve_weights(params["backbone"]["weights"], ROOT / "models" / "target")
    paths = Paths(
        ROOT / "data" / "annotations", ROOT / "data" / "raw" / params["dataset"], tmp_path / "m.json", tmp_path / "r"
    )
    section = {**params["saliency"], "methods": CAMS, "sheets": 0, "device": "cpu"}
    layer = section["layer"] or params["backbone"]["layer"]
    metrics = run_saliency_stage(paths, {**params["backbone"], "weights": weights}, layer, params["transform"], section)
    for method in CAMS:
        trained = metrics["methods"][method]["pointing_game"]["mean"]
        assert trained > metrics["methods"][method]["random_weights"]["pointing_game"]["mean"], method
        assert trained > metrics["gaussian"]["pointing_game"]["mean"], method
    assert (tmp_path / "r" / "maps.parquet").is_file() and (tmp_path / "m.json").is_file()
