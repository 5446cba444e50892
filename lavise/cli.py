"""The shared start of every `stages/<name>.py`: paths from the command line, logging, params."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from lavise.params import load_params


def start_stage(description: str | None, **default_paths: str) -> tuple[argparse.Namespace, dict[str, Any]]:
    """Parse ``--<name> PATH`` options (defaults = the paths in dvc.yaml; ``target_model`` becomes
    ``--target-model``), configure logging, and load the validated params.yaml."""
    parser = argparse.ArgumentParser(description=description)
    for name, default in default_paths.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=Path, default=Path(default))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return args, load_params()
