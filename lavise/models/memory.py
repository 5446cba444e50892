"""Whether a model of a given size fits in memory, asked before it is allocated.

On Linux an allocation far beyond the machine's memory often succeeds (overcommit) and the first
writes then bring in the OOM killer, or, under an address-space limit, end in a bare allocator
error: the size is checked against what the device can give first, so that the user gets one
line saying what the setting would take.
"""

from __future__ import annotations

import resource
from pathlib import Path

import torch

GB = 1e9
_CGROUP = Path("/sys/fs/cgroup")


def _proc_kib(path: str, field: str) -> int | None:
    """A ``Field:  N kB`` value of a /proc file, in bytes (None where there is no such file)."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_room() -> int | None:
    """Bytes left under this process's cgroup v2 memory limit (None without one)."""
    try:
        limit = (_CGROUP / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int((_CGROUP / "memory.current").read_text())
    except (OSError, ValueError):
        return None


def available_bytes(device: torch.device) -> int | None:
    """Bytes a new allocation can get on ``device`` now: free memory on a GPU; on the CPU the
    least of the kernel's MemAvailable, the cgroup's room and the address-space limit's room.
    None when nothing can be measured (the check is then skipped)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    candidates = [_proc_kib("/proc/meminfo", "MemAvailable"), _cgroup_room()]
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    used = _proc_kib("/proc/self/status", "VmSize")
    if soft != resource.RLIM_INFINITY and used is not None:
        candidates.append(soft - used)
    known = [value for value in candidates if value is not None]
    return max(0, min(known)) if known else None


def check_fits(needed: int, device: torch.device, claim: str, remedy: str, available: int | None = None) -> None:
    """ValueError ``{claim}, but only Y GB is available on <device>: {remedy}`` unless ``needed``
    bytes fit; ``claim`` says which setting needs what (e.g. "hidden_dim 10000000 needs ~20.6 GB
    for the explainer's weights"). ``available`` overrides the measurement (tests)."""
    room = available_bytes(device) if available is None else available
    if room is None or needed <= room:
        return
    raise ValueError(f"{claim}, but only {room / GB:.1f} GB is available on {device.type}: {remedy}")
