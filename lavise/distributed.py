"""Several processes on one job: PyTorch's own launcher (torchrun) and process groups.

A stage whose ``nproc`` is above 1 re-runs itself under ``python -m torch.distributed.run``
(torchrun), which starts one process per rank and sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``
and the rendezvous (:func:`relaunch_under_torchrun`); several nodes are started by the user
with torchrun's ``--nnodes`` and ``--rdzv-endpoint`` (README "Scaling out"). Inside, each rank
joins the default process group (:func:`init_process_group`: gloo on CPU, NCCL on CUDA) and
takes its share of the work by index (:func:`rank_share`). Without torchrun everything here is
a no-op for one process, so single-process code paths stay exactly what they were.
"""

from __future__ import annotations

import datetime
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

# How long a rank waits at a barrier for the slowest one (e.g. rank 0 checking every kept chunk
# of a resumed run); torch's default of 30 minutes is short for 118k images. No effect on results.
BARRIER_TIMEOUT = datetime.timedelta(hours=4)


@dataclass(frozen=True)
class World:
    """This process's place among the job's processes (from torchrun's environment)."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


ONE_PROCESS = World(rank=0, world_size=1, local_rank=0)


def current_world() -> World:
    """The rank and size torchrun gave this process; rank 0 of 1 outside torchrun."""
    return World(
        rank=int(os.environ.get("RANK", "0")),
        world_size=int(os.environ.get("WORLD_SIZE", "1")),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )


def under_torchrun() -> bool:
    """True inside a process torchrun started (it sets ``WORLD_SIZE`` for every rank)."""
    return "WORLD_SIZE" in os.environ


def rank_device(device: torch.device, world: World) -> torch.device:
    """The device of this rank: its local GPU for CUDA (one GPU per process), else ``device``."""
    if device.type != "cuda" or world.world_size == 1:
        return device
    index = world.local_rank % max(1, torch.cuda.device_count())
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def init_process_group(device: torch.device) -> World:
    """Join the job's default process group (NCCL for CUDA, gloo otherwise) when there are
    several ranks; returns this process's :class:`World`. Idempotent; nothing for one process."""
    world = current_world()
    if world.world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=BARRIER_TIMEOUT)
        log.info("rank %d of %d joined the %s process group", world.rank, world.world_size, backend)
    return world


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def rank_share(indices: Sequence[int], world: World) -> list[int]:
    """The indices rank ``world.rank`` owns: those with ``index % world_size == rank``.

    Fixed by index, not by position in ``indices``: a resumed run (fewer pending indices) gives
    every rank the same items it had, and the shares never overlap or pad.
    """
    return [index for index in indices if index % world.world_size == world.rank]


def torchrun_command(nproc: int, argv: Sequence[str]) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc-per-node N <argv>``; ``argv`` starts
    with ``-m module`` or a script path."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *argv]


def relaunch_under_torchrun(nproc: int, module: str, args: Sequence[str]) -> int:
    """Run ``python -m module args`` as ``nproc`` torchrun processes on this node; returns the
    launcher's exit status. ``OMP_NUM_THREADS`` is set to the cores per process unless the user
    set it (torchrun would otherwise pin every process to one thread)."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    command = torchrun_command(nproc, ["-m", module, *args])
    log.info("launching %d processes: %s", nproc, " ".join(command))
    return subprocess.run(command, env=env, check=False).returncode


def all_reduce_sum(values: Sequence[float], device: torch.device) -> list[float]:
    """``values`` summed over the ranks (as float64, on ``device``: NCCL reduces only CUDA
    tensors); ``values`` itself without a process group."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return list(values)
    tensor = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.cpu().tolist()


def gather_rows(rows: torch.Tensor) -> torch.Tensor:
    """Every rank's ``rows`` (CPU, [n_r, ...]) concatenated in rank order on every rank; ranks
    with no rows (shape ``[0, 0]``) add nothing. Uneven sizes are fine (object gather)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return rows
    parts: list[torch.Tensor | None] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, rows.cpu())
    kept = [part for part in parts if part is not None and part.numel()]
    return torch.cat(kept) if kept else rows


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` in DistributedDataParallel when there is a process group of several ranks
    (gradients all-reduced in backward, buffers broadcast from rank 0), else ``model``."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
