"""The `target` stage: the checkpoint that features loads, the skip path, the script and params."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import torchvision
import yaml
from safetensors.torch import load_file, save_file

from lavise.models.checkpoints import load_state_dict
from lavise.models.extractor import build_feature_extractor
from stages.target import run_target
from tests.training.synthetic import BACKBONE, TARGET_CATEGORIES, TARGET_PARAMS


def test_stage_writes_checkpoint_that_features_loads(tiny_dataset: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    out, metrics_path = tmp_path / "models" / "target", tmp_path / "metrics" / "target.json"
    metrics = run_target(tiny_dataset / "annotations", tiny_dataset / "raw", out, metrics_path, TARGET_PARAMS)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["categories"] == TARGET_CATEGORIES and config["num_classes"] == 3
    assert len(config["val_map_per_epoch"]) == 2 and "best_epoch" not in config
    assert config["skipped_unreadable"] == {"train_unreadable": 1, "val_unreadable": 0}
    assert json.loads(metrics_path.read_text()) == {k: v for k, v in metrics.items() if k != "seconds"}
    assert metrics["trained"] and 0.0 <= metrics["val_map"] <= 1.0 and metrics["epochs"] == 2
    assert metrics["val_map"] == config["val_map_per_epoch"][-1]
    assert metrics["train_loss"] == config["train_loss_per_epoch"][-1]
    assert {k: config[k] for k in ("init", "epochs", "batch_size", "crop", "seed")} == {
        "init": "none",
        "epochs": 2,
        "batch_size": 4,
        "crop": 64,
        "seed": 3,
    }
    assert "num_workers" not in config and "device" not in config  # how it ran is not what it is

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


def test_a_second_run_writes_the_same_bytes(tiny_dataset: Path, tmp_path: Path) -> None:
    """Same machine, same inputs and seed: the same checkpoint and metrics, byte for byte (the
    demo pipeline's forced-rerun test leaves `target` out, as its training is the costliest)."""
    torch.set_num_threads(1)
    written = []
    for run in ("a", "b"):
        out, metrics_path = tmp_path / run / "target", tmp_path / run / "target.json"
        run_target(tiny_dataset / "annotations", tiny_dataset / "raw", out, metrics_path, TARGET_PARAMS)
        written.append([(out / name).read_bytes() for name in ("model.safetensors", "config.json")])
        written[-1].append(metrics_path.read_bytes())
    assert written[0] == written[1]


def test_bad_init_is_reported_with_its_params_key(tiny_dataset: Path, tmp_path: Path) -> None:
    params = {**TARGET_PARAMS, "target": {**TARGET_PARAMS["target"], "init": "IMAGENET_TYPO"}}
    with pytest.raises(ValueError, match=r"^target\.init 'IMAGENET_TYPO'"):
        run_target(tiny_dataset / "annotations", tiny_dataset / "raw", tmp_path / "m", tmp_path / "t.json", params)
    assert not (tmp_path / "m").exists()


def run_with_init(tiny_dataset: Path, tmp_path: Path, init: str) -> None:
    params = {**TARGET_PARAMS, "target": {**TARGET_PARAMS["target"], "init": init}}
    run_target(tiny_dataset / "annotations", tiny_dataset / "raw", tmp_path / "m", tmp_path / "t.json", params)


def test_an_init_checkpoint_that_does_not_fit_is_one_line_naming_target_init(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with torch.device("meta"):
        shapes = torchvision.models.resnet34(num_classes=3).state_dict()
    other = tmp_path / "resnet34.safetensors"
    save_file({k: torch.zeros(v.shape, dtype=v.dtype) for k, v in shapes.items()}, str(other))
    with pytest.raises(ValueError, match=rf"^target\.init {re.escape(str(other))} does not fit resnet18: ") as caught:
        run_with_init(tiny_dataset, tmp_path, str(other))
    assert "(it looks like resnet34 with 3 classes)" in str(caught.value) and "\n" not in str(caught.value)
    torch.save(torch.ones(3), tmp_path / "tensor.pt")
    expected = f"target.init {tmp_path / 'tensor.pt'} is not a state_dict of tensors (found a tensor of shape [3])"
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}"):
        run_with_init(tiny_dataset, tmp_path, str(tmp_path / "tensor.pt"))

    def offline(*args: object, **kwargs: object) -> None:
        raise URLError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(torch.hub, "urlopen", offline)
    hub_file = tmp_path / "home" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(FileNotFoundError, match=rf"^target\.init IMAGENET1K_V1: could not download .*{hub_file}"):
        run_with_init(tiny_dataset, tmp_path, "IMAGENET1K_V1")
    assert not (tmp_path / "m").exists() and not (tmp_path / "t.json").exists()


def test_skip_path_writes_only_config_fast(tmp_path: Path) -> None:
    out, metrics_path = tmp_path / "models" / "target", tmp_path / "metrics" / "target.json"
    out.mkdir(parents=True)
    (out / "model.safetensors").write_bytes(b"stale")
    start = time.perf_counter()
    params = {**TARGET_PARAMS, "backbone": {**BACKBONE, "weights": "IMAGENET1K_V1"}}
    metrics = run_target(tmp_path / "no annotations", tmp_path / "no raw", out, metrics_path, params)
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


def test_stage_script_reports_a_missing_annotation_table_in_one_line(tmp_path: Path) -> None:
    """Bad input ends with one line naming the file (stages.cli.run_stage), not a traceback."""
    repo = Path(__file__).resolve().parents[2]
    (tmp_path / "params.yaml").write_text((repo / "params.yaml").read_text())
    result = subprocess.run(
        [sys.executable, "-m", "stages.target", "--annotations", "none", "--out", "m/target"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(repo), "TQDM_DISABLE": "1"},
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "categories.parquet" in last
    assert not (tmp_path / "m").exists()
