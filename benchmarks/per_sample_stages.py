"""Where one ``%%vjp --wrt model`` per-sample cell spends its time, stage by stage (issue 23):
the MLP (or CNN, transformer) of ``per_sample.py``, each pipeline stage timed where it runs,
and counts that do not depend on the machine's load.

Run:  python benchmarks/per_sample_stages.py [--only mlp] [--cells 200]

Times are thread CPU (``time.thread_time``, one torch thread), the lower quartile over the
cells, each stage inclusive of the stages it calls; a stage timed inside the cell is slower
than alone (the cell's 11 MB of per-sample gradients leave the caches cold), which is the
cost that counts. On a shared machine these move by 10-30 %: the counts do not. Counts per
cell, by ``cProfile`` over a few cells: Python function calls, calls into torch's C
functions (each a dispatch, a few µs), ``ast.parse`` calls, backward passes (calls
of the analysis' two ways into the engine).
"""
from __future__ import annotations

import argparse
import ast
import collections
import cProfile
import importlib
import pstats
import sys
import time

import torch

from per_sample import CELL, SETUP
from timing import shell

# (module, name looked up there): the pipeline's stages, outermost first
STAGES = (
    ("vjp_magic.magics", "run_cell"), ("vjp_magic.magics", "pipeline"),
    ("vjp_magic.pipeline", "refuse_reentrant"), ("vjp_magic.pipeline", "analysed_graph"),
    ("vjp_magic.pipeline", "_per_sample"), ("vjp_magic.run.persample", "probe_vector"),
    ("vjp_magic.run.expanded", "_output_gradients"), ("vjp_magic.run.expanded", "proved_apart"),
    ("vjp_magic.run.expanded", "_pass"),
    ("vjp_magic.run.expanded", "check_weights"), ("vjp_magic.run.expanded", "_scaled"),
    ("vjp_magic.run.expanded", "_linear"), ("vjp_magic.pipeline", "_accepted"),
    ("vjp_magic.core.given", "at_once"), ("vjp_magic.pipeline", "_derivatives"),
    ("vjp_magic.features.names", "naming"), ("vjp_magic.pipeline", "gather"),
)


def timed_stages(times: dict) -> list:
    """Each stage wrapped where it is looked up, adding its thread CPU time to ``times``;
    returns what to put back. A stage missing (renamed) is reported, not fatal."""
    undo = []
    for module_name, name in STAGES:
        module = importlib.import_module(module_name)
        original = getattr(module, name, None)
        if original is None:
            print(f"    (no stage {module_name}.{name})")
            continue

        wrapped = _timed(original, times[name])
        setattr(module, name, wrapped)
        undo.append((module, name, original))
    return undo


def _timed(function, spent: list):
    def timed(*args, **kwargs):
        start = time.thread_time()
        try:
            return function(*args, **kwargs)
        finally:
            spent.append(time.thread_time() - start)
    return timed


def counts(run, cells: int = 10) -> dict:
    """Per cell: Python calls, torch C calls, ``ast.parse`` calls, backward passes."""
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(cells):
        run()
    profile.disable()
    stats = pstats.Stats(profile).stats
    found = collections.Counter()
    for (filename, _, function), (_, calls, *_) in stats.items():
        found["python calls" if filename != "~" else "builtin calls"] += calls
        if filename == "~" and "torch" in function:
            found["torch C calls"] += calls
        if filename == ast.__file__ and function == "parse":
            found["ast.parse"] += calls
        if filename.endswith(("derivatives.py", "torch_api.py")) \
                and function in ("_grad", "guarded_grad"):  # (the pass guard's own profiler
            found["backward passes"] += calls  # hides the engine's call from cProfile)
    return {key: value / cells for key, value in found.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="mlp", choices=sorted(SETUP))
    parser.add_argument("--cells", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    ip = shell()
    batch, setup = SETUP[args.only]
    ip.run_cell(f"import torch, torch.nn.functional as F\ntorch.manual_seed(0)\nB = {batch}\n"
                + setup)

    def run():
        return ip.run_cell_magic("vjp", "--wrt model", CELL)
    for _ in range(10):
        run()
    per_cell = counts(run)
    times: dict = collections.defaultdict(list)
    undo = timed_stages(times)
    try:
        for _ in range(5):
            run()
        for spent in times.values():  # (each stage appends to its own list)
            spent.clear()
        total = []
        for _ in range(args.cells):
            start = time.thread_time()
            run()
            total.append(time.thread_time() - start)
    finally:
        for module, name, original in undo:
            setattr(module, name, original)

    def quartile(values):
        return sorted(values)[len(values) // 4] * 1e3

    def mean(values):  # (means add up: a stage's own time is its mean less its parts')
        return sum(values) / args.cells * 1e3
    print(f"{args.only} B={batch}: one cell {quartile(total):.2f} ms thread CPU (lower "
          f"quartile of {args.cells}; mean {mean(total):.2f}); stages inclusive, as called "
          "in the cell: lower quartile of a call, mean per cell")
    for name, values in times.items():
        if not values:  # (not on this path: the analysis, where the rules' result is taken)
            continue
        print(f"    {name:<20} {quartile(values):6.3f} ms  mean {mean(values):6.3f} ms per cell"
              f"  x{len(values) / args.cells:g}")
    print("per cell: " + ", ".join(f"{key} {value:,.1f}" for key, value in per_cell.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
