"""CSR patterns built from their definitions (for the colouring tests and the benchmarks):
never from the code under test."""
import numpy as np


def csr(rows, cols, m: int):
    """(crow, col) of the pattern with nonzeros at (rows[k], cols[k]), m rows."""
    order = np.lexsort((cols, rows))
    rows, cols = rows[order], cols[order]
    return np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=m))]), cols


def stencil(shape, offsets, periodic: bool = False):
    """The stencil on a grid of ``shape``: entry i reads i + d for each offset d (inside the
    grid, or modulo its size where ``periodic``), flattened row-major."""
    index = np.indices(shape).reshape(len(shape), -1).T
    rows, cols = [], []
    for offset in offsets:
        other = index + np.array(offset)
        if periodic:
            other = other % np.array(shape)
        inside = ((other >= 0) & (other < np.array(shape))).all(1)
        rows.append(np.ravel_multi_index(index[inside].T, shape))
        cols.append(np.ravel_multi_index(other[inside].T, shape))
    return csr(np.concatenate(rows), np.concatenate(cols), int(np.prod(shape)))
