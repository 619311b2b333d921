"""Timing helpers every benchmark row shares: medians, alternated runs (both sides see the
same load), and one printed row per ratio against its anchor."""
from __future__ import annotations

import gc
import statistics
import time


def median_time(fn, repeat: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def paired_medians(ours, anchor, repeat: int) -> tuple[float, float]:
    """Median times of ``ours`` and ``anchor``, run alternately so both see the same load."""
    ours(), anchor()
    times_ours, times_anchor = [], []
    for _ in range(repeat):
        for fn, times in ((ours, times_ours), (anchor, times_anchor)):
            gc.collect()
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(times_ours), statistics.median(times_anchor)


def row(label: str, ours: float, anchor: float, anchor_name: str, must: float, aim: float) -> bool:
    ratio = ours / anchor
    verdict = "ok" if ratio <= must else "OVER"
    aim_note = " (aim met)" if ratio <= aim else ""
    print(f"{label:<44} {ratio:6.2f}x  must<={must:<4} aim<={aim:<4} {verdict}{aim_note}"
          f"   ours {ours * 1e3:8.2f} ms, {anchor_name} {anchor * 1e3:8.2f} ms")
    return ratio <= must
