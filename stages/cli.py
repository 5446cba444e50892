"""The shared start and end of every `stages/<name>.py`: paths from the command line, logging,
validated params, and one line instead of a traceback for what the user can fix."""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lavise.io import InsufficientSpaceError, OutputLockedError, output_lock, remove_stale_temps
from stages.params import ParamsError, load_params

Check = Callable[[Mapping[str, Any], Path], None]


_HELD_LOCKS = contextlib.ExitStack()  # output locks, held until the process ends


def start_stage(
    description: str | None,
    *,
    checks: Sequence[Check] = (),
    outputs: Sequence[str] = (),
    launch: Callable[[Mapping[str, Any]], bool] | None = None,
    **default_paths: str,
) -> tuple[argparse.Namespace, dict[str, Any]]:
    """Parse ``--<name> PATH`` options (defaults = the paths in dvc.yaml; ``target_model`` becomes
    ``--target-model``), configure logging, and load the validated params.yaml.

    An invalid params.yaml ends the stage with its one-line message (exit status 2), not a
    traceback: the message already names the key and the allowed values. ``outputs`` names the
    path options the stage writes: each is locked (:func:`lavise.io.output_lock`) so that a second
    direct run of the same stage stops at once, saying who holds the output. ``launch``: called
    with the params before any output is touched (:func:`stages.launch.torchrun_launcher`: it may
    re-run the stage as several processes and exit); False means this process shares outputs
    that another one locks (a torchrun rank other than 0), so it neither locks them nor removes
    their temporaries.
    """
    parser = argparse.ArgumentParser(description=description)
    for name, default in default_paths.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=Path, default=Path(default))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        params = load_params()
        for check in checks:  # e.g. stages.backbone_params.validate_backbone, for the stages that load a model
            check(params, Path("params.yaml").resolve().parent)
    except ParamsError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    owns_outputs = launch(params) if launch is not None else True
    owner = f"the {Path(sys.argv[0]).stem} stage"
    for name in outputs if owns_outputs else ():
        path = Path(getattr(args, name))
        _HELD_LOCKS.enter_context(output_lock(path, owner))
        for folder in (path.parent, path) if path.is_dir() else (path.parent,):
            remove_stale_temps(folder)  # left by a run killed while writing; each removal is logged there
    signal.signal(signal.SIGTERM, _terminate)
    return args, params


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM as an exception, so that the atomic writers' cleanup runs before the process ends."""
    raise SystemExit(128 + signum)


TRACEBACK_ENV = "LAVISE_TRACEBACK"  # set to 1 to see the traceback behind a one-line error


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's ``main``, ending with one line for what the user can fix rather than a
    traceback: bad input (a ValueError or a missing file: exit 2), a full disk or an output another
    run holds (exit 1), Ctrl-C
    (exit 130, the shell's convention for SIGINT). Anything else is a bug and keeps its traceback,
    and so do bad input and a full disk when ``LAVISE_TRACEBACK=1``.
    """
    show_traceback = bool(os.environ.get(TRACEBACK_ENV))
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except OutputLockedError as error:
        _fail_in_one_line(str(error), 1)
    except (ValueError, FileNotFoundError) as error:
        if show_traceback:
            raise
        _fail_in_one_line(str(error), 2)
    except InsufficientSpaceError as error:  # refused before writing: its message says what it needs
        _fail_in_one_line(str(error), 1)
    except OSError as error:
        if error.errno != errno.ENOSPC or show_traceback:
            raise
        where = f" writing {error.filename}" if error.filename else ""
        _fail_in_one_line(f"no space left on the device{where}; free some space and run the stage again", 1)


def _fail_in_one_line(message: str, status: int) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(status) from None
