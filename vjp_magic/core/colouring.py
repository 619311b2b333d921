"""Row colouring of a sparsity pattern: output entries of one colour read disjoint input
entries, so one backward pass with v = 1 on a colour's rows returns all of their rows of the
Jacobian at once (Curtis, Powell and Reid 1974; Gebremedhin, Manne and Pothen 2005).

The colouring is greedy in natural order, one row after another, over the conflict graph
(rows sharing a column) held implicitly as one bitmask of colours per column. Natural order
because the patterns met here are mostly banded in the flat index, where it is optimal
(3 colours on a tridiagonal pattern, 2k + 1 on a band of half-width k) and because it is
deterministic and needs no priority structure. It is not optimal everywhere: on the 2-D
5-point stencil it takes 7 colours where 5 suffice (DSATUR finds 5; left for later).
Vectorised alternatives tried (Jones–Plassmann with random priorities, then Culberson's
iterated greedy by class) were both slower in numpy and worse (8–11 colours on the 5-point
stencil).
"""
from __future__ import annotations

import numpy as np

# At most this many row pairs sharing a column (the conflict graph before deduplication).
MAX_PAIRS = 50_000_000


def colour_rows(crow, col, n: int, max_pairs: int = MAX_PAIRS) -> np.ndarray | None:
    """int64 colours 0..k-1 for the m rows of the CSR pattern (``crow``, ``col``, n columns):
    rows sharing a column differ. None when the conflict graph would hold more than
    ``max_pairs`` row pairs (a dense column: colouring would not pay).

    Greedy in natural order without building the conflict graph: each column keeps the
    colours of the rows read so far that read it, as a bitmask; a row takes the lowest colour
    free in all of its columns' masks, then adds itself to them (one pass over the nonzeros).
    """
    crow, col = np.asarray(crow, np.int64), np.asarray(col, np.int64)
    counts = np.bincount(col, minlength=n).astype(np.int64)
    if int((counts ** 2).sum()) > max_pairs:
        return None
    m = len(crow) - 1
    masks = [0] * n
    colours = [0] * m
    starts, columns = crow.tolist(), col.tolist()
    for row in range(m):
        cols = columns[starts[row]:starts[row + 1]]
        used = 0
        for c in cols:
            used |= masks[c]
        bit = ~used & (used + 1)  # the lowest free colour, as a bit
        colours[row] = bit.bit_length() - 1
        for c in cols:
            masks[c] |= bit
    return np.asarray(colours, dtype=np.int64)


def colour_count(colours: np.ndarray) -> int:
    return int(colours.max()) + 1 if len(colours) else 0
