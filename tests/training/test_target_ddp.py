"""The `target` stage as 2 gloo ranks (DistributedDataParallel): one checkpoint, loss going down,
the same weights on both ranks; and the global batch must divide among the processes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DistributedSampler

from lavise.distributed import World
from lavise.training.target import make_loaders
from stages.target import run_target
from tests.ranks import spawn_ranks
from tests.training.synthetic import TARGET_PARAMS


def _params(**target: Any) -> dict[str, Any]:
    return {**TARGET_PARAMS, "target": {**TARGET_PARAMS["target"], **target}}


def _target_rank(rank: int, dataset: Path, out: Path, results: Path) -> None:
    torch.set_num_threads(1)
    metrics = run_target(
        dataset / "annotations", dataset / "raw", out / "target", out / "target.json", _params(epochs=3, nproc=2)
    )
    (results / f"rank{rank}.json").write_text(json.dumps(metrics))


@pytest.mark.slow  # two ranks train a ResNet-18 for 3 epochs on 64 px images: ~15 s on 2 cores
def test_two_ranks_train_one_model_and_rank_0_writes_it(tiny_dataset: Path, tmp_path: Path) -> None:
    out, results = tmp_path / "out", tmp_path / "results"
    results.mkdir()
    spawn_ranks(2, _target_rank, tiny_dataset, out, results)
    assert sorted(p.name for p in out.iterdir()) == ["target", "target.json"]
    assert sorted(p.name for p in (out / "target").iterdir()) == ["config.json", "model.safetensors"]
    main, other = (json.loads((results / f"rank{rank}.json").read_text()) for rank in range(2))
    assert other.pop("written") is False and "written" not in main
    assert main.pop("seconds") > 0
    assert main == other == json.loads((out / "target.json").read_text())  # metrics reduced over the ranks
    losses = json.loads((out / "target" / "config.json").read_text())["train_loss_per_epoch"]
    assert losses[-1] < losses[0]
    assert set(load_file(str(out / "target" / "model.safetensors"))) >= {"fc.weight", "conv1.weight"}


def test_distributed_loaders_split_the_global_batch_without_overlap() -> None:
    view = list(range(10))  # a Dataset of 10 items
    shares = []
    for rank in range(2):
        train, val = make_loaders(view, view, 4, seed=3, num_workers=0, world=World(rank, 2, rank))
        assert isinstance(train.sampler, DistributedSampler) and train.batch_size == 2
        train.sampler.set_epoch(1)
        shares.append(list(train.sampler))
        assert list(val.dataset) == view[rank::2]
    assert len(shares[0]) == len(shares[1]) == 5 and not set(shares[0]) & set(shares[1])
    one = make_loaders(view, view, 4, seed=3, num_workers=0)[0]
    assert not isinstance(one.sampler, DistributedSampler) and one.batch_size == 4  # one process: as before


def test_a_batch_that_does_not_divide_names_both_keys(tiny_dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"target.batch_size 4 .* target.nproc = 3"):
        run_target(tiny_dataset / "annotations", tiny_dataset / "raw", tmp_path / "t", tmp_path / "m", _params(nproc=3))
