"""Index maps of the ops that write one tensor's entries into another: ``scatter``,
``scatter_add``, ``index_add`` and ``index_put`` (the source's entries land where the saved
index says, so
an output entry reads every source entry sent to it; the destination's own entries pass
through, claimed even where ``scatter`` overwrites them: a rule may claim an entry whose
derivative vanishes, never miss one), and ``as_strided`` of a contiguous leaf (output entry
m reads storage entry offset + Σ m_a · stride_a, which is its flat index there)."""
from __future__ import annotations

import math

import numpy as np
import torch

from .maps import NONE, Edge, IndexMap, Unproved, grid, moved, to_axis, to_int


def _destination(edge: Edge) -> None:
    """The tensor written into: entry j of the output reads its entry j (the identity)."""
    if tuple(edge.in_shape) != tuple(edge.out_shape):
        raise Unproved("a destination of another shape than the output")
    return None


def inverse(target: np.ndarray, source: np.ndarray, edge: Edge) -> IndexMap:
    """Output entry ``target[t]`` reads source entry ``source[t]``, grouped by output entry
    into a table padded with :data:`NONE`."""
    out_numel = math.prod(edge.out_shape)
    order = np.argsort(target, kind="stable")
    target, source = target[order], source[order]
    counts = np.bincount(target, minlength=out_numel)
    width = max(int(counts.max()) if counts.size else 0, 1)
    edge.afford(out_numel * width)
    table = np.full((out_numel, width), NONE, dtype=np.int64)
    starts = np.cumsum(counts) - counts
    table[target, np.arange(target.size, dtype=np.int64) - starts[target]] = source
    return IndexMap(table, injective=False)


def _flat(positions: list, shape) -> np.ndarray:
    """Flat row-major indices of the multi-indices ``positions`` (each axis in range)."""
    for axis, size in zip(positions, shape):
        if axis.size and (int(axis.min()) < 0 or int(axis.max()) >= size):
            raise Unproved("an index outside the tensor")
    return np.ravel_multi_index(tuple(positions), tuple(shape)).reshape(-1) if shape else \
        np.zeros(1, dtype=np.int64)


def scatter(edge: Edge) -> IndexMap | None:
    """scatter / scatter_add(self, dim, index, src): src's entry at m lands at m with axis
    ``dim`` replaced by index[m] (m within index's shape)."""
    if edge.i == 0:
        return _destination(edge)
    ndim = len(edge.out_shape)
    index = edge.selection("index").cpu().numpy().astype(np.int64)
    if ndim == 0 or index.ndim != ndim or len(edge.in_shape) != ndim:
        raise Unproved("scatter of tensors of different ranks")
    dim = to_axis(edge.saved("dim"), ndim)
    positions = [a.astype(np.int64) for a in np.indices(index.shape)]
    source = _flat(positions, edge.in_shape)
    positions[dim] = index
    return inverse(_flat(positions, edge.out_shape), source, edge)


def index_add(edge: Edge) -> IndexMap | None:
    """index_add(self, dim, index, source): source's slice i along ``dim`` lands on the
    output's slice index[i]."""
    if edge.i == 0:
        return _destination(edge)
    ndim = len(edge.out_shape)
    in_shape = tuple(edge.in_shape)
    if ndim == 0 or len(in_shape) != ndim:
        raise Unproved("index_add of tensors of different ranks")
    dim = to_axis(edge.saved("dim"), ndim)
    index = edge.selection("index").cpu().numpy().astype(np.int64).reshape(-1)
    if index.size != in_shape[dim]:
        raise Unproved("an index that does not fit the source")
    positions = [a.astype(np.int64) for a in np.indices(in_shape)]
    source = _flat(positions, in_shape)
    positions[dim] = index[positions[dim]]
    return inverse(_flat(positions, edge.out_shape), source, edge)


def index_put(edge: Edge) -> IndexMap | None:
    """index_put(self, indices, values, accumulate) and ``y[idx] = v``: the indexing replayed
    on the output's index grid gives the output entry each (broadcast) value lands on; the
    destination's entries pass through, those a plain (not accumulating) put overwrites
    excepted (a value written twice to one entry is claimed by both writes)."""
    indices = edge.selection("indices")
    out_shape = tuple(edge.out_shape)
    if any(i is not None and not isinstance(i, torch.Tensor) for i in indices):
        raise Unproved("an index_put of indices the graph does not show")
    key = tuple(slice(None) if i is None else i.cpu() for i in indices)
    edge.afford(2 * math.prod(out_shape))
    with torch.no_grad():
        target = torch.from_numpy(grid(out_shape))[key]  # the output entries written
    if edge.i == 0:
        if tuple(edge.in_shape) != out_shape:
            raise Unproved("a destination of another shape than the output")
        if bool(edge.saved("accumulate")):
            return None
        table = grid(out_shape).reshape(-1).copy()
        table[target.reshape(-1).numpy()] = NONE
        return IndexMap(table.reshape(-1, 1), injective=True)
    if edge.i != 1:
        raise Unproved("an index_put input other than self and values")
    edge.afford(2 * target.numel())
    with torch.no_grad():
        source = torch.broadcast_to(torch.from_numpy(grid(edge.in_shape)), target.shape)
    return inverse(target.reshape(-1).numpy(), source.reshape(-1).numpy(), edge)


def as_strided(edge: Edge) -> IndexMap:
    """as_strided(x, size, stride, offset) of a leaf x that is contiguous from the start of
    its storage (then a storage position is x's flat index); any other input: unproved."""
    producer = edge.node.next_functions[edge.i][0]
    variable = getattr(producer, "variable", None)
    if not isinstance(variable, torch.Tensor) or not variable.is_contiguous() \
            or variable.storage_offset() != 0:
        raise Unproved("as_strided of a tensor whose storage layout the graph does not show")
    size = [to_int(s) for s in edge.saved("size")]
    stride = [to_int(s) for s in edge.saved("stride")]
    offset = edge.saved("storage_offset")
    offset = 0 if offset is None else to_int(offset)
    table = np.full(tuple(size), offset, dtype=np.int64)
    for axis, (n, step) in enumerate(zip(size, stride)):
        shape = [1] * len(size)
        shape[axis] = n
        table = table + (np.arange(n, dtype=np.int64) * step).reshape(shape)
    if table.size and (int(table.min()) < 0 or int(table.max()) >= math.prod(edge.in_shape)):
        raise Unproved("as_strided reaching outside the tensor")
    return moved(table, edge.out_shape, injective=False)

