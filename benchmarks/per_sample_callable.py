"""Per-sample gradients from plain Python (issue 23, item 4): ``vjp_magic.differentiate(fn,
model)`` with ``fn`` the function computing the per-sample losses (called once, recorded,
replayed vectorised), beside ``differentiate(losses, model)`` on the tensor (no record), the
same cell under ``%%vjp --wrt model``, and the forward plus a hand-written
``torch.func.vmap(grad(...))``.

Run:  python benchmarks/per_sample_callable.py [--repeat 5] [--only mlp,cnn] [--no-tensor]

Medians of runs taken alternately in the same process (noisy on a shared machine).
"""
from __future__ import annotations

import argparse

import torch

import vjp_magic
from per_sample import CELL, SETUP, vmap_grad
from timing import alternated_medians, shell


def bench(ip, which: str, repeat: int, tensor: bool) -> dict:
    batch, setup = SETUP[which]
    ip.run_cell(f"import torch, torch.nn.functional as F\ntorch.manual_seed(0)\nB = {batch}\n"
                + setup)
    ns = ip.user_ns
    model, data, targets = ns["model"], ns["data"], ns["targets"]

    def losses():
        return torch.nn.functional.cross_entropy(model(data), targets, reduction="none")

    runs = {"differentiate(fn)": lambda: vjp_magic.differentiate(losses, model, names="model"),
            "%%vjp --wrt model": lambda: ip.run_cell_magic("vjp", "--wrt model", CELL),
            "vmap(grad)": vmap_grad(ns)}
    if tensor:
        runs["differentiate(tensor)"] = lambda: vjp_magic.differentiate(losses(), model,
                                                                       names="model")
    medians = alternated_medians(runs, repeat)
    base = medians["vmap(grad)"]
    print(f"{which} B={batch} (vmap(grad) {base * 1e3:.1f} ms):")
    for name, seconds in medians.items():
        print(f"    {name:<24} {seconds * 1e3:9.1f} ms = {seconds / base:6.2f}x vmap(grad)")
    return medians


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--only", default="mlp")
    parser.add_argument("--no-tensor", action="store_true",
                        help="leave out differentiate(tensor) (one backward per sample: slow)")
    args = parser.parse_args()
    ip = shell()
    for which in args.only.split(","):
        bench(ip, which, args.repeat, not args.no_tensor)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
