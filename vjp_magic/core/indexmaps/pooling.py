"""Pooling and the reductions that keep their argmax: max pooling, max / min along a dim and
sort / topk read the one entry whose index the graph saved; average pooling reads its window
of its own channel."""
from __future__ import annotations

import math

import numpy as np

from .linalg import windows
from .maps import Edge, IndexMap, Unproved, along, grid, moved, to_axis, to_int
from .reductions import reduction


def _planes(edge: Edge, d: int) -> tuple[tuple[int, ...], tuple[int, ...], np.ndarray]:
    """(sizes, output sizes, the flat offset of each (batch, channel) plane shaped to
    broadcast over the output)."""
    shape, out = tuple(edge.in_shape), tuple(edge.out_shape)
    lead, sizes = shape[:-d], shape[-d:]
    if len(shape) <= d or out[:-d] != lead:
        raise Unproved("a pooling of unexpected shapes")
    offsets = np.arange(math.prod(lead), dtype=np.int64).reshape(lead + (1,) * d)
    return sizes, out[-d:], offsets * math.prod(sizes)


def max_pool(edge: Edge) -> IndexMap:
    """max_pool with indices: output entry reads the input entry its saved index names."""
    d = len(edge.saved("kernel_size"))
    indices = edge.selection("result1").cpu().numpy()
    _, _, offsets = _planes(edge, d)
    return moved(offsets + indices, edge.out_shape, injective=False)


def avg_pool(edge: Edge) -> IndexMap:
    kernel = [to_int(k) for k in edge.saved("kernel_size")]
    d = len(kernel)
    stride = [to_int(s) for s in edge.saved("stride")] or kernel
    padding = [to_int(p) for p in edge.saved("padding")]
    stride, padding = stride * (d // len(stride)), padding * (d // len(padding))
    sizes, outs, offsets = _planes(edge, d)
    edge.afford(math.prod(edge.out_shape) * math.prod(kernel))
    ceil_mode = bool(edge.saved("ceil_mode"))  # the last window may stop short of its kernel
    spatial = windows(sizes, outs, kernel, stride, padding, [1] * d, ceil_mode)[0, 0]
    lead = offsets.reshape(offsets.shape + (1,) * (d + 1))  # (lead…, 1…, 1, 1…)
    return along(np.where(spatial >= 0, lead + np.maximum(spatial, 0), -1), edge)


def sort(edge: Edge) -> IndexMap:
    """sort / topk along a dim: output entry j of its line reads the input entry at the saved
    index j (a permutation of the line for sort)."""
    if edge.i != 0 or edge.k != 0:
        raise Unproved("sort's indices are not differentiable")
    shape = tuple(edge.in_shape)
    if not shape:
        return None
    dim = to_axis(edge.saved("dim"), len(shape))
    indices = edge.selection("indices").cpu().numpy().astype(np.int64)
    if indices.shape != tuple(edge.out_shape) or indices.size and (
            int(indices.min()) < 0 or int(indices.max()) >= shape[dim]):
        raise Unproved("sort indices that do not fit the tensor")
    table = np.take_along_axis(grid(shape), indices, axis=dim)
    return moved(table, edge.out_shape, injective=True)


def arg_reduction(edge: Edge) -> IndexMap:
    """max / min / median / kthvalue / mode along a dim: the entry at the saved index; without
    a dim (no index saved) every entry, as a reduction reads them."""
    if not hasattr(edge.node, "_saved_indices"):
        return reduction(edge)
    shape = tuple(edge.in_shape)
    dim = to_axis(edge.saved("dim"), len(shape))
    indices = edge.selection("indices").cpu().numpy()
    if not bool(edge.saved("keepdim")):
        indices = np.expand_dims(indices, dim)
    table = np.take_along_axis(grid(shape), indices, axis=dim)
    return moved(table.reshape(edge.out_shape), edge.out_shape, injective=False)


def max_unpool(edge: Edge) -> IndexMap:
    """max_unpool{2,3}d (1d runs as 2d): output entry o of a plane reads every input entry of
    that plane whose saved index is o (its backward gathers: J[o, i] = 1 where
    indices[i] = o, however many share o), nothing elsewhere."""
    d = 3 if edge.name.endswith("3D") else 2
    indices = edge.selection("indices").cpu().numpy().astype(np.int64)
    shape, out = tuple(edge.in_shape), tuple(edge.out_shape)
    if indices.shape != shape or len(shape) <= d or out[:-d] != shape[:-d]:
        raise Unproved("max_unpool indices that do not fit the tensor")
    planes, size = math.prod(shape[:-d]), math.prod(out[-d:])
    indices = indices.reshape(planes, -1)
    if indices.size and (int(indices.min()) < 0 or int(indices.max()) >= size):
        raise Unproved("max_unpool indices outside the output")
    target = (indices + np.arange(planes, dtype=np.int64)[:, None] * size).reshape(-1)
    order = np.argsort(target, kind="stable")
    sorted_target = target[order]
    starts = np.searchsorted(sorted_target, sorted_target, side="left")
    rank = np.arange(target.size) - starts  # the how-many-th reader of its output entry
    width = int(rank.max()) + 1 if target.size else 1
    edge.afford(planes * size * width)
    table = np.full((planes * size, width), -1, dtype=np.int64)
    table[sorted_target, rank] = order
    return along(table, edge)
