"""Where ``%%vjp --wrt model``'s per-sample time goes beyond the arithmetic it cannot skip (issue
23): the MLP of ``per_sample.py`` timed against BackPACK, Opacus and the *compute floor* of the
checked per-layer rules, written out in plain torch with no framework around it: the cell's
forward (its own graph is differentiated, no replay: ``run/hookfree.runs_no_user_code``; with
``--replay``, the replay's forward too, as where user code on the way forces one), one
backward pass weighted by probe 0 to the layer outputs and the parameters (the graph proves
the samples apart: ``run/expanded.proved_apart``; ``--check-passes``: the three passes of an
unproved graph, unweighted, probe 0, one check pass: the fewest that tell 1,024 float32
samples apart, see ``run/expanded.check_weights``), the per-sample gradients G written and
probe 0's vᵀG read.
What ``%%vjp`` spends above the floor is the pipeline's own (recording, replay planning, the
check's bookkeeping, the analysis, the result); against BackPACK it bounds what trimming that
can reach.

Run:  python benchmarks/per_sample_floor.py [--batch 1024] [--rounds 30] [--replay]

CPU time of this thread (``time.thread_time``) with one torch thread, the three run in turn:
far steadier than wall time on a shared machine, but not the figure ``per_sample.py`` reports.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F

from per_sample import CELL, SETUP, backpack, opacus
from timing import shell


def floor(ns: dict, batch: int, replay: bool = False, check: bool = False):
    """The checked rules' unavoidable arithmetic for the MLP, in plain torch (``replay``: a
    second forward, the replay's, differentiated instead of the cell's; ``check``: the
    unproved graph's three passes, else the proved graph's one)."""
    model, data, targets = ns["model"], ns["data"], ns["targets"]
    params = list(model.parameters())
    fresh = [p.detach().requires_grad_() for p in params]
    v = torch.randn(batch).sign()
    ones = torch.ones(batch)

    def run():
        if replay:
            F.cross_entropy(model(data), targets, reduction="none")  # the cell
        w0, b0, w2, b2 = fresh if replay else params
        h1 = F.linear(data, w0, b0)  # the replay, or the cell's own layers
        r = torch.relu(h1)
        h2 = F.linear(r, w2, b2)
        loss = F.cross_entropy(h2, targets, reduction="none")
        if check:
            g1, g2 = torch.autograd.grad(loss, [h1, h2], ones, retain_graph=True)
            torch.autograd.grad(loss, [h1, h2, w0, b0, w2, b2], v, retain_graph=True)
            torch.autograd.grad(loss, [h1, h2], v)
        else:
            g1, g2 = torch.autograd.grad(loss, [h1, h2, w0, b0, w2, b2], v)[:2]
            g1, g2 = g1 * v[:, None], g2 * v[:, None]  # v = ±1: v∘(v∘δ) = δ
        g0 = g1[:, :, None] * data[:, None, :]  # G, then vᵀG read from it
        g2w = g2[:, :, None] * r.detach()[:, None, :]
        return v[None] @ g0.reshape(batch, -1), v[None] @ g2w.reshape(batch, -1)
    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=SETUP["mlp"][0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--replay", action="store_true",
                        help="the floor with the replay's second forward")
    parser.add_argument("--check-passes", action="store_true",
                        help="the floor with the unproved graph's three passes")
    args = parser.parse_args()
    torch.set_num_threads(1)
    ip = shell()
    ip.run_cell("import torch, torch.nn.functional as F\ntorch.manual_seed(0)\n"
                f"B = {args.batch}\n" + SETUP["mlp"][1])
    runs = {"%%vjp": lambda: ip.run_cell_magic("vjp", "--wrt model", CELL),
            "BackPACK": backpack(ip.user_ns), "Opacus": opacus(ip.user_ns),
            "floor": floor(ip.user_ns, args.batch, args.replay, args.check_passes)}
    runs = {name: run for name, run in runs.items() if run is not None}
    times: dict = {name: [] for name in runs}
    for run in runs.values():
        for _ in range(5):
            run()
    for _ in range(args.rounds):
        for name, run in runs.items():
            for _ in range(10):
                start = time.thread_time()
                run()
                times[name].append(time.thread_time() - start)
    quartile = {name: sorted(t)[len(t) // 4] for name, t in times.items()}
    anchors = {name: quartile[name] for name in ("BackPACK", "Opacus") if name in quartile}
    faster = min(anchors, key=anchors.get) if anchors else None
    print(f"MLP B={args.batch}, CPU ms (lower quartile, one torch thread):")
    for name, seconds in quartile.items():
        ratio = f"  {seconds / anchors[faster]:.2f}x {faster} (the faster)" if faster else ""
        print(f"    {name:<9} {seconds * 1e3:6.2f}{ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
