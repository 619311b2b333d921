"""What every benchmark row shares: medians, alternated runs (all sides see the same load),
one printed row per ratio against its anchor, and the run's one IPython shell."""
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


def alternated_times(functions: dict, repeat: int, clock=time.perf_counter) -> dict:
    """Each function's ``repeat`` times on ``clock`` (wall clock; ``time.thread_time`` for
    CPU time), run in turn so all see the same load, after one warm-up call each."""
    for fn in functions.values():
        fn()
    times: dict = {name: [] for name in functions}
    for _ in range(repeat):
        for name, fn in functions.items():
            gc.collect()
            start = clock()
            fn()
            times[name].append(clock() - start)
    return times


def alternated_medians(functions: dict, repeat: int) -> dict:
    """Median seconds of each function, run in turn so all see the same load (one warm-up)."""
    return {name: statistics.median(t)
            for name, t in alternated_times(functions, repeat).items()}


def paired_medians(ours, anchor, repeat: int) -> tuple[float, float]:
    """Median times of ``ours`` and ``anchor``, run alternately so both see the same load."""
    medians = alternated_medians({"ours": ours, "anchor": anchor}, repeat)
    return medians["ours"], medians["anchor"]


def row(label: str, ours: float, anchor: float, anchor_name: str, must: float, aim: float) -> bool:
    ratio = ours / anchor
    verdict = "ok" if ratio <= must else "OVER"
    aim_note = " (aim met)" if ratio <= aim else ""
    print(f"{label:<44} {ratio:6.2f}x  must<={must:<4} aim<={aim:<4} {verdict}{aim_note}"
          f"   ours {ours * 1e3:8.2f} ms, {anchor_name} {anchor * 1e3:8.2f} ms")
    return ratio <= must


def shell():
    """The one IPython shell of the run, the extension loaded (``start_ipython`` makes it on
    its first call only and returns None after: two rows each calling it broke the second)."""
    from IPython.testing.globalipapp import start_ipython

    start_ipython()
    ip = get_ipython()  # noqa: F821 - start_ipython puts it in builtins
    if "vjp_magic" not in ip.extension_manager.loaded:
        ip.run_line_magic("load_ext", "vjp_magic")
    return ip
