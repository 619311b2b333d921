"""CSR patterns built from their definitions, and the stencil maps whose Jacobians have them
(for the colouring and sparse tests and the benchmarks): never from the code under test."""
import numpy as np
import torch
import torch.nn.functional as F


def tridiagonal(x):
    """y[i] = x[i-1] + x[i]³ + x[i+1] (zero outside), for a 1-D x: a tridiagonal Jacobian."""
    return F.pad(x, (1, 0))[:-1] + x ** 3 + F.pad(x, (0, 1))[1:]


def laplacian(x):
    """The 2-D 5-point Laplacian plus u³ of a flat x of k² entries (zero outside the grid)."""
    k = int(round(x.numel() ** 0.5))
    u = x.reshape(k, k)
    p = F.pad(u, (1, 1, 1, 1))
    return (p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] - 4 * u + u ** 3).reshape(-1)


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


def dense(pattern):
    """A :class:`vjp_magic.core.pattern.Pattern`'s (crow, col) as an m × n bool tensor."""
    rows = torch.repeat_interleave(torch.arange(pattern.shape[0]), pattern.crow.diff())
    out = torch.zeros(pattern.shape, dtype=torch.bool)
    out[rows, pattern.col] = True
    return out
