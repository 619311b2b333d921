"""Where the dense 256→256 row of ``bench.py`` spends its time (issue 20's last target, 1.3×
``torch.func.jacrev``): the backward passes each call makes, the arithmetic floor beside
``jacrev``, and the stages of the Python around it.

Run:  python benchmarks/dense_stages.py [--repeat 201] [--calls 150] [--profile 100]

1. Passes per call (``pass_counter``, over ``--calls`` calls, a ``gc.collect()`` before each as
   the bench makes): the steady state is one vectorised pass of 256 one-hot rows and the
   retain_grad guard's plain pass of zeros (``core.retained._flush``); a call whose
   remembered plain-pass time says one chunk would be too long times a plain pass first (3).
2. Medians of thread CPU time (one torch thread, interleaved, ``gc.collect()`` before each):
   ours and jacrev, and the floor's pieces alone (the forward, ``derivatives._vmap_grad`` over
   256 rows, one plain pass): ours minus forward, vectorised and plain pass is the Python.
3. ``cProfile`` (inflates Python about 2×: read as shares) of the stages, cumulative per call.
"""
from __future__ import annotations

import argparse
import collections
import cProfile
import gc
import os
import pstats
import statistics
import sys
import time

import torch

import vjp_magic
from vjp_magic.core import derivatives

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from pass_counter import counted  # noqa: E402 - the tests' pass counter
from timing import alternated_times  # noqa: E402 - benchmarks/ is the script's folder

# (file suffix, function) of the stages shown by --profile, in pipeline order
STAGES = (("run/choose.py", "output"), ("core/reentrant.py", "refuse_reentrant"),
          ("run/hookfree.py", "analysed_graph"), ("core/retained.py", "retained"),
          ("core/axisflow.py", "prove"), ("core/derivatives.py", "component_vjps"),
          ("core/derivatives.py", "_vmap_grad"), ("core/sparse_choice.py", "after_exact"),
          ("core/analysis.py", "_result"), ("core/retained.py", "_flush"),
          ("run/hookfree.py", "restore"), ("features/__init__.py", "gather"),
          ("core/quiet.py", "_quiet"), ("core/quiet.py", "analysis_device"),
          ("core/graph_walk.py", "_walk"))  # the call's one walk of the graph (all stages')


def dense(n: int = 256):
    torch.manual_seed(0)
    w1, w2 = torch.randn(n, n) / n**0.5, torch.randn(n, n) / n**0.5
    x = torch.randn(n, requires_grad=True)
    return (lambda v: torch.tanh(w2 @ torch.tanh(w1 @ v))), x


def pass_counts(f, x, calls: int) -> collections.Counter:
    found: collections.Counter = collections.Counter()
    for _ in range(calls):
        gc.collect()
        found[counted(lambda: vjp_magic.differentiate(f(x), x))[1]] += 1
    return found


def cpu_medians(functions: dict, repeat: int) -> dict:
    """(median, first quartile, third quartile) of each function's thread CPU time."""
    return {name: (statistics.median(t), *statistics.quantiles(t, n=4)[::2])
            for name, t in alternated_times(functions, repeat, time.thread_time).items()}


def stage_shares(f, x, calls: int) -> None:
    for _ in range(10):
        vjp_magic.differentiate(f(x), x)
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(calls):
        vjp_magic.differentiate(f(x), x)
    profile.disable()
    stats = pstats.Stats(profile).stats
    total = max(v[3] for k, v in stats.items() if k[2] == "differentiate"
                and k[0].endswith("vjp_magic/pipeline.py"))
    print(f"cProfile, per call: differentiate {total / calls * 1e6:7.0f} us (100 %)")
    for suffix, name in STAGES:
        cumulative = sum(v[3] for k, v in stats.items() if k[0].endswith(suffix) and k[2] == name)
        label = f"{suffix}:{name}"
        print(f"  {label:<40} {cumulative / calls * 1e6:7.0f} us "
              f"({100 * cumulative / total:4.1f} %)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=201)
    parser.add_argument("--calls", type=int, default=150)
    parser.add_argument("--profile", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(1)
    f, x = dense()
    jac = torch.func.jacrev(f)
    torch.testing.assert_close(vjp_magic.differentiate(f(x), x).jacobian("x"), jac(x.detach()))
    counts = sorted(pass_counts(f, x, args.calls).items())
    print("backward passes per call (passes: calls):", dict(counts))
    y, eye = f(x), torch.eye(256)
    medians = cpu_medians({
        "jacrev": lambda: jac(x.detach()), "ours": lambda: vjp_magic.differentiate(f(x), x),
        "forward": lambda: f(x), "vectorised 256": lambda: derivatives._vmap_grad(y, [x], eye),
        "plain pass": lambda: derivatives._grad(y, [x], torch.zeros(256))}, args.repeat)
    for name, (median, low, high) in medians.items():
        print(f"{name:<16} {median * 1e3:6.3f} ms  (quartiles {low * 1e3:.3f}-{high * 1e3:.3f})")
    floor = sum(medians[k][0] for k in ("forward", "vectorised 256", "plain pass"))
    print(f"ours / jacrev {medians['ours'][0] / medians['jacrev'][0]:.2f}x; floor (forward + "
          f"vectorised + plain) {floor * 1e3:.3f} ms = {floor / medians['jacrev'][0]:.2f}x "
          f"jacrev; Python around it {(medians['ours'][0] - floor) * 1e3:.3f} ms")
    stage_shares(f, x, args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
