"""Benchmark rows of practitioners' models at scale (issue 23), each against its target:

- dependency verdicts at B = 4,096 (clean MLP, adjacent and distant leak, BatchNorm in
  training mode, mixup: ≤ 1 s and ≤ 0.5 GiB of peak RSS growth) and attention at T = 1,024
  (plain, causal, mask after softmax: ≤ 2 s), three width-3 Conv1d layers at L = 4,096 and
  the periodic stencil (issue 20: band verdicts, ≤ 1 s), each case in a fresh process
  (``dependency_scale.py``), with one plain backward of the same model timed there too;
- per-sample gradients, ``%%vjp --wrt model`` end to end against the forward plus
  ``vmap(grad)`` (≤ 2×), for an MLP at B = 1,024, a CNN at B = 256 and a transformer encoder
  layer at B = 256, with Opacus and BackPACK where they import (``per_sample.py``);
- ``--wrt net`` on a ResNet-like CNN at B = 8, train and eval, against a loop of B
  ``autograd.grad`` calls (≤ 2×; ``shared_passes.py``).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

import dependency_scale
import per_sample
import shared_passes
from timing import row

HERE = os.path.dirname(os.path.abspath(__file__))
DEPENDENCY_CASES = {"mlp": 1.0, "adjacent": 1.0, "distant": 1.0, "bn": 1.0, "mixup": 1.0,
                    "attention": 2.0, "attention-causal": 2.0, "attention-after": 2.0,
                    "conv": 1.0, "periodic": 1.0}
MAX_GIB = 0.5


def bench_dependency(quick: bool) -> bool:
    ok = True
    for name, must in DEPENDENCY_CASES.items():
        out = subprocess.run([sys.executable, os.path.join(HERE, "dependency_scale.py"),
                              "--one", name], check=True, capture_output=True, text=True,
                             timeout=900).stdout
        found = json.loads(out.strip().splitlines()[-1])
        good = found["seconds"] <= must and found["rss_gib"] <= MAX_GIB
        ok &= good
        size = {"attention": f"T={dependency_scale.T}", "conv": f"L={dependency_scale.L}",
                "periodic": f"n={dependency_scale.L}"}.get(name.partition("-")[0],
                                                          f"B={dependency_scale.B}")
        print(f"{'dependency, ' + name + ', ' + size:<44} {found['seconds']:6.2f} s   "
              f"must<={must:.0f} s, <={MAX_GIB} GiB {'ok' if good else 'OVER'}   "
              f"{found['rss_gib']:.2f} GiB, {found['seconds'] / found['backward']:.0f}x one "
              f"backward; {found['verdict']}")
    return ok


def bench_per_sample(ip, repeat: int, quick: bool) -> bool:
    ok = True
    for which in ("mlp", "cnn") if quick else tuple(per_sample.SETUP):
        medians = per_sample.bench(ip, which, max(1, repeat // 2))
        batch = per_sample.SETUP[which][0]
        ok &= row(f"  per-sample %%vjp --wrt model, {which} B={batch}", medians["%%vjp"],
                  medians["vmap(grad)"], "fwd+vmap(grad)", 2.0, 1.0)
    return ok


def bench_wrt_net(repeat: int, quick: bool) -> bool:
    torch.manual_seed(0)
    net = shared_passes.ResNetLike(32 if quick else 64)
    return all([shared_passes.bench_mode(net, train, 8, max(1, repeat // 2))
                for train in (True, False)])


def rows(ip, repeat: int, quick: bool) -> list[bool]:
    return [bench_dependency(quick), bench_per_sample(ip, repeat, quick),
            bench_wrt_net(repeat, quick)]
