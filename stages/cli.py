"""The shared start of every `stages/<name>.py`: paths from the command line, logging, params."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from stages.params import ParamsError, load_params

Check = Callable[[Mapping[str, Any], Path], None]


def start_stage(
    description: str | None, *, checks: Sequence[Check] = (), **default_paths: str
) -> tuple[argparse.Namespace, dict[str, Any]]:
    """Parse ``--<name> PATH`` options (defaults = the paths in dvc.yaml; ``target_model`` becomes
    ``--target-model``), configure logging, and load the validated params.yaml.

    An invalid params.yaml ends the stage with its one-line message (exit status 2), not a
    traceback: the message already names the key and the allowed values.
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
    return args, params
