"""How a stage with an `nproc` param runs as several processes: torchrun (lavise/distributed.py)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any

from lavise.distributed import current_world, relaunch_under_torchrun, under_torchrun


def torchrun_launcher(section: str, module: str) -> Callable[[Mapping[str, Any]], bool]:
    """The ``launch`` of :func:`stages.cli.start_stage` for a stage whose `<section>.nproc` sets
    its processes: above 1 and not yet under torchrun, re-run ``python -m module`` with the same
    arguments as that many torchrun processes on this node and exit with torchrun's status (the
    dvc.yaml cmd stays the same). Returns whether this process owns the outputs (rank 0)."""

    def launch(params: Mapping[str, Any]) -> bool:
        nproc = params[section]["nproc"]
        if nproc > 1 and not under_torchrun():
            raise SystemExit(relaunch_under_torchrun(nproc, module, sys.argv[1:]))
        return current_world().is_main

    return launch
