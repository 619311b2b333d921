"""Sparse Hessians and colourings (issue 20, items 2 and 3/4): the Rosenbrock Hessian by
``vjp_magic.hessian`` against one plain backward of the same f (target ≤ 30× at n = 10⁶),
and the colouring alone on stencils (tridiagonal 10⁶, 5-point 1000 × 1000, 7-point 100³).

Run:  python benchmarks/sparse_hessian.py [--repeat 3] [--n 1000000]

Ratios of medians taken in the same run (noisy on a shared machine).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

import vjp_magic
from vjp_magic.core.colouring import colour_count, colour_rows


def rosenbrock(x):
    return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()


def median_seconds(run, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def hessian_row(n: int, repeat: int) -> None:
    x = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x.requires_grad_(True)
    backward = median_seconds(lambda: torch.autograd.grad(rosenbrock(x), x), repeat)
    h = None

    def hessian():
        nonlocal h
        h = vjp_magic.hessian(rosenbrock(x), x)
        repr(h)

    seconds = median_seconds(hessian, repeat)
    sparse = h.inputs["x"].sparse
    print(f"Rosenbrock Hessian n={n:,}: {seconds:.2f} s = {seconds / backward:.0f}× one "
          f"backward ({backward * 1e3:.0f} ms, forward included); {sparse.count} products, "
          f"{sparse.nnz:,} nonzeros")


def stencil(shape, offsets):
    index = np.indices(shape).reshape(len(shape), -1).T
    rows, cols = [], []
    for offset in offsets:
        other = index + np.array(offset)
        inside = ((other >= 0) & (other < np.array(shape))).all(1)
        rows.append(np.ravel_multi_index(index[inside].T, shape))
        cols.append(np.ravel_multi_index(other[inside].T, shape))
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    order = np.lexsort((cols, rows))
    m = int(np.prod(shape))
    return np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=m))]), cols[order]


def colouring_rows(repeat: int) -> None:
    cases = [("tridiagonal 10⁶", (10 ** 6,), [(-1,), (0,), (1,)]),
             ("5-point 1000 × 1000", (1000, 1000),
              [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)]),
             ("7-point 100³", (100, 100, 100),
              [(0, 0, 0), (1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1),
               (0, 0, -1)])]
    for name, shape, offsets in cases:
        crow, col = stencil(shape, offsets)
        n = int(np.prod(shape))
        colours = colour_rows(crow, col, n, shape=(shape, shape))
        seconds = median_seconds(
            lambda c=crow, k=col, n=n, s=shape: colour_rows(c, k, n, shape=(s, s)), repeat)
        print(f"colouring {name}: {colour_count(colours)} colours in {seconds * 1e3:.0f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--n", type=int, default=10 ** 6)
    args = parser.parse_args()
    colouring_rows(args.repeat)
    hessian_row(args.n, args.repeat)
