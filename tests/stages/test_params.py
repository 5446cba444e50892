"""params.yaml validation: one clear error naming the key and the allowed values."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from stages.backbone_params import validate_backbone
from stages.params import ParamsError, load_params, validate_params

ROOT = Path(__file__).resolve().parents[2]


def validate_all(params: dict, root: Path) -> None:
    """What a model-loading stage checks: the whole file, then the backbone."""
    validate_params(params, root)
    validate_backbone(params, root)


@pytest.fixture(scope="module")
def defaults() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_committed_params_are_valid() -> None:
    params = load_params(ROOT / "params.yaml")
    assert params["download"]["source"] == "demo"


@pytest.mark.parametrize(
    ("path", "value", "fragment"),
    [
        (
            ("annotations", "val_fraction"),
            1.5,
            "`annotations.val_fraction` = 1.5 is invalid; allowed: a number in (0.0, 1.0)",
        ),
        (("annotations", "seen_fraction"), 0.0, "`annotations.seen_fraction`"),
        (("dataset",), "imagenet", "allowed: coco | vg"),
        (("backbone", "name"), "resnet19", "`backbone.name` = 'resnet19'"),
        (("backbone", "layer"), "layer9", "top level: conv1, bn1, relu, maxpool, layer1, layer2, layer3, layer4"),
        (("backbone", "weights"), "IMAGENET9", "none | target | IMAGENET1K_V1 | DEFAULT"),
        (("backbone", "weights"), "models/missing.pt", "an existing checkpoint file"),
        (("train", "optimizer"), "sgd", "allowed: dadapt_adam | adam"),
        (("features", "decode"), "gpu", "`features.decode` = 'gpu' is invalid; allowed: workers | device"),
        (("train", "epochs"), 0, "`train.epochs` = 0"),
        (("train", "lr"), "1e-4", "YAML reads 1e-4 as text: write it with a dot, e.g. 1.0e-4, or as 0.0001"),
        (("train", "epochs"), 2.5, "`train.epochs` = 2.5"),
        (("evaluate", "top_s"), [10, 5], "strictly increasing"),
        (("evaluate", "filters"), [1, 1], "without repeated filter indices"),
        (("evaluate", "filters"), {"every": 0}, "`{every: k}` with an integer k >= 1"),
        (("evaluate", "image_masking_filters"), {"each": 2}, "`evaluate.image_masking_filters`"),
        (("evaluate", "vocabulary"), "no/such/words.txt", "`evaluate.vocabulary`"),
        (("evaluate", "vocabulary"), "nouns", "allowed: glove | glove_nouns | a path to an existing word-list file"),
        (("evaluate", "presence_top_k"), 0, "`evaluate.presence_top_k` = 0"),
        (("evaluate", "bootstrap", "confidence"), 1.0, "`evaluate.bootstrap.confidence` = 1.0"),
        (("evaluate", "bootstrap", "resamples"), 0, "`evaluate.bootstrap.resamples` = 0"),
        (("download", "glove_dim"), 300, "50 with download.source: demo"),
        (("download", "datasets"), ["coco"], "`dataset` = 'vg' is invalid; allowed: one of download.datasets ['coco']"),
        (("transform", "crop"), 300, "at most transform.resize (256)"),
        (("features", "precision"), "fp64", "`features.precision` = 'fp64' is invalid; allowed: auto | fp32 | bf16"),
        (("features", "nproc"), 0, "`features.nproc` = 0 is invalid"),
        (("target", "nproc"), 1.5, "`target.nproc` = 1.5 is invalid"),
    ],
)
def test_bad_value_names_key_and_allowed(defaults: dict, path: tuple, value: object, fragment: str) -> None:
    params = copy.deepcopy(defaults)
    node = params
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ParamsError) as err:
        validate_all(params, ROOT)
    assert fragment in str(err.value)


def test_unknown_and_missing_keys(defaults: dict) -> None:
    params = copy.deepcopy(defaults)
    params["train"]["learning_rate"] = 1e-3
    with pytest.raises(ParamsError, match=r"unknown key `train.learning_rate`; allowed keys here: \['batch_size'"):
        validate_params(params, ROOT)
    params = copy.deepcopy(defaults)
    del params["evaluate"]["p"]
    with pytest.raises(ParamsError, match=r"missing key `evaluate.p`"):
        validate_params(params, ROOT)


def test_nested_layer_and_other_models_accepted(defaults: dict, tmp_path: Path) -> None:
    params = copy.deepcopy(defaults)
    params["backbone"].update(name="alexnet", layer="features.10", weights="IMAGENET1K_V1")
    validate_all(params, ROOT)
    params["backbone"].update(name="resnet50", layer="layer4.1.conv2", weights="none")
    validate_all(params, ROOT)
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"x")
    params["backbone"]["weights"] = str(checkpoint)
    validate_all(params, ROOT)


def test_file_checks_import_no_model_code(defaults: dict) -> None:
    """Download and annotations validate params without the backbone module: a bad model name
    is left to the stages that load a model, which run `validate_backbone`."""
    params = copy.deepcopy(defaults)
    params["backbone"]["name"] = "resnet19"
    validate_params(params, ROOT)
    with pytest.raises(ParamsError, match="`backbone.name` = 'resnet19'"):
        validate_backbone(params, ROOT)
    source = (ROOT / "stages" / "params.py").read_text() + (ROOT / "stages" / "cli.py").read_text()
    assert "lavise.models" not in source and "backbones" not in source.replace("backbone_params", "")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            b"train:\n  epochs: 30\n  epochs: 1\n",
            "params.yaml line 3: duplicate key `epochs` (first written at line 2).",
        ),
        (b"train:\n\tepochs: 30\n", "params.yaml line 2, column 1: found character '\\t' that cannot start any token"),
        (b"train: [1, 2\nevaluate: 3\n", "params.yaml line 2, column 9: expected ',' or ']', but got ':'."),
        (
            b"dataset: vg\nbackbone: caf\xe9\n",
            "params.yaml line 2: byte 0xe9 is not UTF-8 text; save the file as UTF-8.",
        ),
    ],
)
def test_unreadable_params_file_is_one_message(tmp_path: Path, data: bytes, message: str) -> None:
    path = tmp_path / "params.yaml"
    path.write_bytes(data)
    with pytest.raises(ParamsError) as err:
        load_params(path)
    assert str(err.value).startswith(message)


def test_stage_script_rejects_duplicate_key_without_traceback(tmp_path: Path, defaults: dict) -> None:
    """`dvc repro` refuses a duplicated key; a direct stage run must too (exit 2, one line)."""
    import os
    import subprocess
    import sys

    text = (ROOT / "params.yaml").read_text().replace("  epochs: 30\n", "  epochs: 30\n  epochs: 1\n", 1)
    assert text.count("epochs: 1\n") == 1
    (tmp_path / "params.yaml").write_text(text)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-m", "stages.download"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    duplicate = text[: text.index("  epochs: 1\n")].count("\n") + 1
    first = text[: text.index("  epochs: 30\n")].count("\n") + 1
    assert result.stderr.strip().splitlines() == [
        f"error: params.yaml line {duplicate}: duplicate key `epochs` (first written at line {first})."
    ]
