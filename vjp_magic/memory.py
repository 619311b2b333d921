"""Memory budget: how many bytes one analysis may hold at once."""
from __future__ import annotations

import os
import time

import torch

from .errors import VJPUsageError

DEFAULT_FRACTION = 0.25


_cpu_reading: tuple[float, int] = (-1.0, 0)


def available_bytes(device: torch.device) -> int:
    """Free memory on ``device`` (CUDA: the allocator's view; CPU: MemAvailable, re-read at
    most once a second)."""
    global _cpu_reading
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    now = time.monotonic()
    if now - _cpu_reading[0] < 1.0:
        return _cpu_reading[1]
    _cpu_reading = (now, _read_cpu_available())
    return _cpu_reading[1]


def _read_cpu_available() -> int:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4 * 2**30


def resolve_budget(budget: int | float | None, device: torch.device) -> int:
    """Bytes allowed: an explicit count, a fraction (< 1) of free memory, or the default fraction."""
    if budget is None:
        return int(DEFAULT_FRACTION * available_bytes(device))
    if 0 < budget < 1:
        return int(budget * available_bytes(device))
    return int(budget)


def gb(nbytes: float) -> str:
    """Human size, e.g. '3.2 GB' or '512 MB'."""
    if nbytes >= 1e9:
        return f"{nbytes / 1e9:.1f} GB"
    if nbytes >= 1e6:
        return f"{nbytes / 1e6:.0f} MB"
    return f"{nbytes / 1e3:.0f} kB"


DEFAULT_ADVICE = (
    "Differentiate with respect to fewer inputs (--wrt), take a smaller slice, or let the "
    "point structure work (drop --full)"
)


def refuse_if_over(nbytes: int, budget: int, what: str, advice: str = DEFAULT_ADVICE) -> None:
    """Raise a usage error at once when a result alone would not fit the budget."""
    if nbytes > budget:
        raise VJPUsageError(
            f"{what} would need {gb(nbytes)}, over the memory budget of {gb(budget)}. "
            f"{advice}; the budget is %config VJPMagics.memory_budget."
        )
