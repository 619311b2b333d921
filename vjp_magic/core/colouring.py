"""Row colouring of a sparsity pattern: output entries of one colour read disjoint input
entries, so one backward pass with v = 1 on a colour's rows returns all of their rows of the
Jacobian at once (Curtis, Powell and Reid 1974; Gebremedhin, Manne and Pothen 2005).

The conflict graph (rows sharing a column) is built vectorised in numpy; the colouring is
greedy in natural order, one row after another. Natural order because the patterns met here
are mostly banded in the flat index, where it is optimal (3 colours on a tridiagonal
pattern, 2k + 1 on a band of half-width k) and because it is deterministic and needs no
priority structure. It is not optimal everywhere: on the 2-D 5-point stencil it takes 7
colours where 5 suffice (DSATUR finds 5; left for later). Vectorised alternatives tried
(Jones–Plassmann with random priorities, then Culberson's iterated greedy by class) were
both slower in numpy and worse (8–11 colours on the 5-point stencil).
"""
from __future__ import annotations

import numpy as np

# At most this many row pairs sharing a column (the conflict graph before deduplication).
MAX_PAIRS = 50_000_000


def conflict_graph(crow: np.ndarray, col: np.ndarray, n: int, max_pairs: int = MAX_PAIRS):
    """(indptr, indices) of the graph whose edges join rows sharing a column, or None when it
    would hold more than ``max_pairs`` pairs (a dense column: colouring would not pay)."""
    m = len(crow) - 1
    rows = np.repeat(np.arange(m, dtype=np.int64), np.diff(crow))
    order = np.argsort(col, kind="stable")
    by_col_rows, by_col = rows[order], col[order]
    counts = np.bincount(by_col, minlength=n).astype(np.int64)
    if int((counts ** 2).sum()) > max_pairs:
        return None
    start = np.concatenate([[0], np.cumsum(counts)])
    length = counts[by_col]
    entry_start = np.concatenate([[0], np.cumsum(length)])[:-1]
    step = np.arange(int(length.sum()), dtype=np.int64) - np.repeat(entry_start, length)
    src = np.repeat(by_col_rows, length)
    dst = by_col_rows[np.repeat(start[by_col], length) + step]
    keep = src != dst
    key = np.unique(src[keep] * m + dst[keep])
    src, dst = key // m, key % m
    indptr = np.concatenate([[0], np.cumsum(np.bincount(src, minlength=m))])
    return indptr, dst


def colour_rows(crow, col, n: int, max_pairs: int = MAX_PAIRS) -> np.ndarray | None:
    """int64 colours 0..k-1 for the m rows of the CSR pattern (``crow``, ``col``, n columns):
    rows sharing a column differ. None when the conflict graph is over ``max_pairs``."""
    graph = conflict_graph(np.asarray(crow, np.int64), np.asarray(col, np.int64), n, max_pairs)
    if graph is None:
        return None
    indptr, adj = graph
    m = len(indptr) - 1
    colours = [-1] * m
    starts, neighbours = indptr.tolist(), adj.tolist()
    for row in range(m):
        used = {colours[j] for j in neighbours[starts[row]:starts[row + 1]]}
        colour = 0
        while colour in used:
            colour += 1
        colours[row] = colour
    return np.asarray(colours, dtype=np.int64)


def colour_count(colours: np.ndarray) -> int:
    return int(colours.max()) + 1 if len(colours) else 0
