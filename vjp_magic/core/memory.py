"""Memory budget: how many bytes one analysis may hold at once."""
from __future__ import annotations

import math
import numbers
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
    """Bytes allowed: an explicit count, a fraction (< 1) of free memory, or the default
    fraction. Anything else (a string, 0, a negative number, NaN) is a usage error: every
    public entry reads its ``memory_budget`` here."""
    if budget is None:
        return int(DEFAULT_FRACTION * available_bytes(device))
    checked_budget(budget)
    if 0 < budget < 1:
        return int(budget * available_bytes(device))
    return int(budget)


def checked_budget(budget) -> None:
    """A memory budget is None, a fraction (0 < f < 1) or a positive number of bytes; else
    a usage error saying what to pass."""
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, numbers.Real)
                               or not math.isfinite(budget) or budget <= 0):
        raise VJPUsageError(
            f"memory_budget is a fraction of free memory (0 < f < 1, e.g. 0.25) or a number "
            f"of bytes (e.g. 2e9 for 2 GB), not {budget!r}.")


def gb(nbytes: float) -> str:
    """Human size, true at every scale: '3.2 GB', '512 MB', '1.5 kB', '24 bytes'."""
    if nbytes >= 1e9:
        return f"{nbytes / 1e9:.1f} GB"
    for scale, unit in ((1e6, "MB"), (1e3, "kB")):
        if nbytes >= scale:
            value = nbytes / scale
            return f"{value:.0f} {unit}" if value >= 100 else f"{value:.3g} {unit}"
    count = int(nbytes)
    return f"{count} byte" if count == 1 else f"{count} bytes"


# where a budget is set: the one sentence every refusal ends with (a call or a notebook)
BUDGET_KNOBS = "memory_budget= (bytes, or a fraction of free memory) in a call, " \
    "%config VJPMagics.memory_budget in a notebook"
DEFAULT_ADVICE = "Differentiate with respect to fewer inputs (--wrt) or take a smaller slice"


def refuse_if_over(nbytes: int, budget: int, what: str, advice: str = DEFAULT_ADVICE) -> None:
    """Raise a usage error at once when a result alone would not fit the budget."""
    if nbytes > budget:
        need, have = gb(nbytes), gb(budget)
        if need == have:  # close to the budget: exact counts, so the refusal reads true
            need, have = f"{int(nbytes):,} bytes", f"{int(budget):,} bytes"
        raise VJPUsageError(
            f"{what} would need {need}, over the memory budget of {have}. "
            f"{advice}; or raise the budget: {BUDGET_KNOBS}."
        )
