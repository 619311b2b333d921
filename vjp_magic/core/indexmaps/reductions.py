"""Ops that mix entries along dims: reductions (sum, mean, prod, logsumexp) read every entry of
the reduced dims; softmax reads its whole dim; cumsum and cumprod the prefix up to each entry."""
from __future__ import annotations

import math

import numpy as np

from .maps import NONE, Edge, IndexMap, Unproved, along, grid, to_axes, to_axis


def reduction(edge: Edge) -> IndexMap:
    """Each output entry reads the entries of the reduced dims at its kept indices."""
    ndim = len(edge.in_shape)
    # no dim saved: a full reduction (SumBackward0, MeanBackward0, ProdBackward0)
    reduced = set(to_axes(getattr(edge.node, "_saved_dim", None), ndim))
    kept = [a for a in range(ndim) if a not in reduced]
    if math.prod(edge.in_shape[a] for a in kept) != math.prod(edge.out_shape):
        raise Unproved("a reduction whose output does not match its dims")
    table = np.transpose(grid(edge.in_shape), kept + sorted(reduced))
    return along(table, edge)


def whole_dim(edge: Edge) -> IndexMap:
    """softmax / log_softmax along ``dim``: every entry of that dim, at the same other indices."""
    return along(_lines(edge), edge)


def prefix(edge: Edge) -> IndexMap:
    """cumsum / cumprod along ``dim``: entry j reads entries 0 … j of its dim."""
    lines = _lines(edge).copy()  # (…, j along dim, …, position along the dim)
    dim = to_axis(edge.saved("dim"), len(edge.in_shape))
    size = edge.in_shape[dim] if edge.in_shape else 1
    later = np.arange(size)[None, :] > np.arange(size)[:, None]  # (j, position)
    shape = [1] * len(edge.in_shape) + [size]
    if edge.in_shape:
        shape[dim] = size
    lines[np.broadcast_to(later.reshape(shape), lines.shape)] = NONE
    return along(lines, edge)


def _lines(edge: Edge) -> np.ndarray:
    """(input shape…, size of dim): for each entry, the indices of its whole line along dim."""
    shape = tuple(edge.in_shape)
    if tuple(edge.out_shape) != shape:
        raise Unproved("an op along a dim that changes the shape")
    if not shape:
        return grid(()).reshape(1)
    dim = to_axis(edge.saved("dim"), len(shape))
    edge.afford(math.prod(shape) * shape[dim])
    lines = np.moveaxis(grid(shape), dim, -1)  # (others…, size)
    return np.broadcast_to(np.expand_dims(lines, dim), shape + (shape[dim],))
