"""The saliency stage's checks at start: methods, LIME samples, the CAM layer, the model's classes."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from torch import nn

from lavise.saliency.models import cam_layer, model_categories
from stages.params import ParamsError, validate_params
from stages.saliency import validate_saliency

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def defaults() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def with_value(defaults: dict, path: tuple, value: object) -> dict:
    params = copy.deepcopy(defaults)
    node = params
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return params


@pytest.mark.parametrize(
    ("path", "value", "fragment"),
    [
        (("saliency", "methods"), ["gradcam", "xcam"], "`saliency.methods` = ['gradcam', 'xcam'] is invalid"),
        (("saliency", "lime_samples"), 0, "`saliency.lime_samples` = 0 is invalid; allowed: an integer in [1, inf]"),
        (("saliency", "images"), 0, "`saliency.images` = 0 is invalid; allowed: `all` or an integer >= 1"),
        (("saliency", "road_percentiles"), [50, 20], "strictly increasing list of integer percentiles"),
        (("saliency", "lime_hide_color"), 2, "null or a number in [0, 1]"),
    ],
)
def test_bad_saliency_values_name_the_key(defaults: dict, path: tuple, value: object, fragment: str) -> None:
    with pytest.raises(ParamsError) as err:
        validate_params(with_value(defaults, path, value), ROOT)
    assert fragment in str(err.value)


@pytest.mark.parametrize(
    ("path", "value", "key"),
    [(("saliency", "layer"), "fc", "saliency.layer"), (("backbone", "layer"), "fc", "backbone.layer")],
)
def test_a_layer_at_or_after_the_head_is_refused(defaults: dict, path: tuple, value: str, key: str) -> None:
    params = with_value(defaults, path, value)
    with pytest.raises(ParamsError, match=rf"`{key}` = 'fc' is invalid.*before its classifier head"):
        validate_saliency(params, ROOT)
    validate_saliency(with_value(defaults, ("saliency", "layer"), "layer3.1"), ROOT)


def test_cam_layer_needs_a_head_before_which_it_lies() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Sequential(nn.Linear(4, 2)))
    assert cam_layer(model, "0") is model[0]
    with pytest.raises(ValueError, match="not before the classifier head '2.0'"):
        cam_layer(model, "2")  # the container holding the head
    with pytest.raises(ValueError, match="no classifier head"):
        cam_layer(nn.Sequential(nn.ReLU()), "0")
    with pytest.raises(ValueError, match="not a module"):
        cam_layer(model, "7")


def test_categories_come_from_the_config_beside_the_checkpoint(tmp_path: Path) -> None:
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"")
    assert model_categories(str(checkpoint)) is None
    (tmp_path / "config.json").write_text(json.dumps({"categories": ["a", "b"]}))
    assert model_categories(str(checkpoint)) == ["a", "b"]
    assert model_categories("IMAGENET1K_V1") is None and model_categories("none") is None


def test_stage_stops_at_start_with_one_line(tmp_path: Path, defaults: dict) -> None:
    params = with_value(defaults, ("saliency", "methods"), ["gradcam", "fullgrad"])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = subprocess.run(
        [sys.executable, "-m", "stages.saliency"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: params.yaml: `saliency.methods` = ['gradcam', 'fullgrad'] is invalid; allowed: a non-empty list "
        "without repeats drawn from ['gradcam', 'gradcam++', 'scorecam', 'ablationcam', 'lime']."
    ]


def test_saliency_geometry_follows_the_preset_and_refuses_other_normalisations(defaults: dict) -> None:
    from stages.saliency import saliency_geometry

    assert saliency_geometry(defaults) == {"resize": 256, "crop": 224}
    assert saliency_geometry(with_value(defaults, ("transform", "crop"), 192)) == {"resize": 256, "crop": 192}
    with pytest.raises(ValueError, match="saliency runs with ImageNet mean/std"):
        saliency_geometry(with_value(defaults, ("transform", "interpolation"), "bicubic"))
