"""`nproc` > 1: the stage re-runs itself under torchrun with its own arguments; ranks other than 0
do not own (lock) the outputs."""

from __future__ import annotations

import sys

import pytest

from stages import launch


def test_nproc_above_one_relaunches_the_module_with_its_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(sys, "argv", ["stages/features.py", "--out", "data/x"])
    monkeypatch.setattr(launch, "relaunch_under_torchrun", lambda *args: calls.append(args) or 3)
    with pytest.raises(SystemExit) as exit_info:
        launch.torchrun_launcher("features", "stages.features")({"features": {"nproc": 2}})
    assert exit_info.value.code == 3 and calls == [(2, "stages.features", ["--out", "data/x"])]


def test_one_process_or_a_rank_runs_here_and_only_rank_0_owns_the_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launch, "relaunch_under_torchrun", lambda *args: pytest.fail("relaunched"))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    assert launch.torchrun_launcher("target", "stages.target")({"target": {"nproc": 1}}) is True
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert launch.torchrun_launcher("target", "stages.target")({"target": {"nproc": 2}}) is False
    monkeypatch.setenv("RANK", "0")
    assert launch.torchrun_launcher("target", "stages.target")({"target": {"nproc": 2}}) is True


def test_torchrun_command_is_the_standalone_launcher() -> None:
    from lavise.distributed import torchrun_command

    assert torchrun_command(4, ["-m", "stages.features"]) == [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=4",
        "-m",
        "stages.features",
    ]
