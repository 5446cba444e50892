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


def test_second_writer_of_an_output_is_told_who_holds_it(tmp_path, capsys, monkeypatch) -> None:
    """Two direct runs of one stage must not interleave: the second stops at once (exit 1), naming
    the holder; the lock dies with its process, even under kill -9."""
    import os
    import signal
    import subprocess
    import sys

    from lavise.io import OutputLockedError, output_lock

    out = tmp_path / "features"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from lavise.io import output_lock\n"
            f"with output_lock({str(out)!r}, 'the features stage'):\n    print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=os.getcwd()),
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(
            OutputLockedError, match=rf"{out} is being written by the features stage \(pid {holder.pid}"
        ):
            with output_lock(out, "the features stage"):
                pass
        with pytest.raises(SystemExit) as exit_info:
            run_stage(lambda: output_lock(out, "x").__enter__())
        assert exit_info.value.code == 1
        assert "is being written by the features stage" in capsys.readouterr().err
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with output_lock(out, "the features stage") as lock_path:  # the killed holder's lock is gone
        assert lock_path.name.startswith("features.") and not out.parent.joinpath(".features.lock").exists()
