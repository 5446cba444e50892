"""Run a test function as several gloo ranks, as torchrun would (its environment, one port)."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_rank(rank: int, world_size: int, port: int, function: Callable[..., None], args: tuple[Any, ...]) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        OMP_NUM_THREADS="1",
    )
    function(rank, *args)


def spawn_ranks(world_size: int, function: Callable[..., None], *args: Any) -> None:
    """``function(rank, *args)`` in ``world_size`` fresh processes with torchrun's variables set
    (``function`` must be importable). A rank that raises ends the others and raises here."""
    mp.spawn(_as_rank, args=(world_size, free_port(), function, args), nprocs=world_size, join=True)
