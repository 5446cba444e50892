"""Stage scripts end with one line, not a traceback, for what the user can fix."""

from __future__ import annotations

import errno

import pytest

from stages.cli import run_stage


def _raising(error: BaseException):
    def main() -> None:
        raise error

    return main


@pytest.mark.parametrize(
    ("error", "status", "line"),
    [
        (
            ValueError("checkpoint x.pt is not a state_dict of tensors"),
            2,
            "error: checkpoint x.pt is not a state_dict of tensors",
        ),
        (
            FileNotFoundError("models/target/model.safetensors does not exist"),
            2,
            "error: models/target/model.safetensors does not exist",
        ),
        (
            OSError(errno.ENOSPC, "No space left on device", "data/features/val_maps.npy"),
            1,
            "error: no space left on the device writing data/features/val_maps.npy; "
            "free some space and run the stage again",
        ),
        (KeyboardInterrupt(), 130, "interrupted"),
    ],
)
def test_user_errors_end_in_one_line(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, error: BaseException, status: int, line: str
) -> None:
    monkeypatch.delenv("LAVISE_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        run_stage(_raising(error))
    assert exit_info.value.code == status
    assert capsys.readouterr().err.splitlines() == [line]


def test_bugs_and_debugging_keep_the_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LAVISE_TRACEBACK", raising=False)
    with pytest.raises(KeyError):
        run_stage(_raising(KeyError(101)))
    with pytest.raises(PermissionError):
        run_stage(_raising(PermissionError(errno.EACCES, "denied")))
    monkeypatch.setenv("LAVISE_TRACEBACK", "1")
    with pytest.raises(ValueError):
        run_stage(_raising(ValueError("bad")))
