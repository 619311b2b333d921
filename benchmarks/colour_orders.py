"""Benchmark rows of the row colouring beyond stencils (issue 20: "≤ 1.1× a greedy
colouring's count elsewhere"; review G24: the orders took 1.0–1.1 s on a random gather at
10⁵): ``colour_rows`` against one natural-order greedy of the same pattern (the anchor,
timed alternately in the same run), with both colour counts and the lower bound (the most
rows reading one column). Patterns built from their definitions:

- y = x[idx] * x, idx random: its rows (each reads x[i], x[idx[i]]) and its columns (the
  transpose, what forward mode colours);
- the cyclic 5-point band (x.roll(±1, ±2)) at 100,002: optimum ⌈m / ⌊m / 5⌋⌉ = 6.

Small conflict graphs (≤ SMALL_PAIRS row pairs: the gather's columns at 10⁴) also run
largest-first, smallest-last and DSATUR in Python, ~10× one greedy there (tens of ms);
larger ones the numpy peeling order alone, ~3–4× one greedy.
Run: ``python benchmarks/colour_orders.py [repeat]``.
"""
from __future__ import annotations

import sys

import numpy as np

from timing import paired_medians, row
from vjp_magic.core.colouring import colour_count, colour_rows, natural_greedy, transposed


def _csr(rows, cols, m):
    order = np.lexsort((cols, rows))
    return np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=m))]), cols[order]


def _gather(n, seed=0):
    idx = np.random.default_rng(seed).integers(0, n, n)
    keep = idx != np.arange(n)
    rows = np.concatenate([np.arange(n), np.arange(n)[keep]])
    return _csr(rows, np.concatenate([np.arange(n), idx[keep]]), n)


def _band(m, half=2):
    rows = np.repeat(np.arange(m), 2 * half + 1)
    cols = (rows + np.tile(np.arange(-half, half + 1), m)) % m
    return _csr(rows, cols, m)


def cases():
    for n in (10_000, 100_000, 200_000):
        crow, col = _gather(n)
        yield f"gather rows, n = {n:,}", crow, col, n
        yield f"gather columns, n = {n:,}", *transposed(crow, col, n), n
    yield "cyclic 5-point band, m = 100,002", *_band(100_002), 100_002


def main(repeat: int = 3) -> bool:
    ok = True
    for label, crow, col, n in cases():
        pattern = (crow, col, n)
        ours, anchor = paired_medians(lambda p=pattern: colour_rows(*p),
                                      lambda p=pattern: natural_greedy(*p), repeat)
        ok &= row(label, ours, anchor, "natural greedy", must=16, aim=4)
        counts = np.bincount(col, minlength=n)
        print(f"{'':<44} colours {colour_count(colour_rows(crow, col, n))}, natural greedy "
              f"{colour_count(natural_greedy(crow, col, n))}, lower bound {counts.max()}")
    return ok


if __name__ == "__main__":
    sys.exit(0 if main(int(sys.argv[1]) if len(sys.argv) > 1 else 3) else 1)
