"""Ops that move entries without mixing them (one read per output entry, or none): views,
permutes, elementwise broadcasting and masks, slices, pads, roll, flip, cat / stack / split,
and the gathers whose index tensors the graph keeps (index_select, gather, indexing, take)."""
from __future__ import annotations

import math

import numpy as np
import torch

from .maps import (NONE, Edge, IndexMap, Unproved, broadcast, grid, moved, replayed, to_axis,
                   to_int)


def same_entries(edge: Edge) -> IndexMap | None:
    """view, reshape, squeeze, unsqueeze, clone, a dtype cast: flat entry j is entry j."""
    if math.prod(edge.in_shape) != math.prod(edge.out_shape):
        raise Unproved("a view that changes the number of entries")
    return None


def elementwise(edge: Edge) -> IndexMap | None:
    return broadcast(edge.in_shape, edge.out_shape)


def where(edge: Edge) -> IndexMap | None:
    """where(condition, self, other): self is read where the condition holds, other elsewhere."""
    condition = np.broadcast_to(edge.selection("condition").cpu().numpy(), edge.out_shape)
    table = np.broadcast_to(grid(edge.in_shape), edge.out_shape).copy()
    table[~condition if edge.i == 0 else condition] = NONE
    return moved(table, edge.out_shape, injective=False)


def masked_fill(edge: Edge) -> IndexMap | None:
    """masked_fill(self, mask, value): self is read where the mask is off, value where on."""
    mask = np.broadcast_to(edge.selection("mask").cpu().numpy(), edge.out_shape)
    table = np.broadcast_to(grid(edge.in_shape), edge.out_shape).copy()
    table[mask if edge.i == 0 else ~mask] = NONE
    return moved(table, edge.out_shape, injective=False)


def permute(edge: Edge) -> IndexMap:
    ndim = len(edge.in_shape)
    order = list(range(ndim))
    if edge.name == "Permute":
        order = [to_axis(d, ndim) for d in edge.saved("dims")]
    elif edge.name == "Transpose":
        d0, d1 = to_axis(edge.saved("dim0"), ndim), to_axis(edge.saved("dim1"), ndim)
        order[d0], order[d1] = order[d1], order[d0]
    elif ndim == 2:  # T
        order = [1, 0]
    return moved(np.transpose(grid(edge.in_shape), order), edge.out_shape)


def slice_(edge: Edge) -> IndexMap:
    dim, part = _saved_slice(edge, len(edge.in_shape))
    return moved(grid(edge.in_shape)[(slice(None),) * dim + (part,)], edge.out_shape)


def select(edge: Edge) -> IndexMap:
    ndim = len(edge.in_shape)
    dim = to_axis(edge.saved("dim"), ndim)
    index = to_int(edge.saved("index"))
    return moved(np.take(grid(edge.in_shape), index, axis=dim), edge.out_shape)


def _padded(table: np.ndarray, pad, mode: str) -> np.ndarray:
    """torch's pad list (last dim first, (left, right) pairs; negative crops) on a grid."""
    pad = [to_int(p) for p in pad]
    widths = [(0, 0)] * table.ndim
    for t in range(len(pad) // 2):
        widths[table.ndim - 1 - t] = (pad[2 * t], pad[2 * t + 1])
    crop = tuple(slice(max(0, -lo), table.shape[a] - max(0, -hi))
                 for a, (lo, hi) in enumerate(widths))
    table = table[crop]
    grow = [(max(0, lo), max(0, hi)) for lo, hi in widths]
    if mode == "constant":
        return np.pad(table, grow, mode="constant", constant_values=NONE)
    return np.pad(table, grow, mode=mode)


def constant_pad(edge: Edge) -> IndexMap:
    return moved(_padded(grid(edge.in_shape), edge.saved("pad"), "constant"), edge.out_shape)


def reflection_pad(edge: Edge) -> IndexMap:
    table = _padded(grid(edge.in_shape), edge.saved("padding"), "reflect")
    return moved(table, edge.out_shape, injective=False)


def replication_pad(edge: Edge) -> IndexMap:
    table = _padded(grid(edge.in_shape), edge.saved("padding"), "edge")
    return moved(table, edge.out_shape, injective=False)


def roll(edge: Edge) -> IndexMap:
    ndim = len(edge.in_shape)
    shifts = [to_int(s) for s in edge.saved("shifts")]
    dims = list(edge.saved("dims"))
    table = grid(edge.in_shape)
    if not dims:
        return moved(np.roll(table, shifts[0]), edge.out_shape)
    return moved(np.roll(table, shifts, axis=[to_axis(d, ndim) for d in dims]), edge.out_shape)


def flip(edge: Edge) -> IndexMap:
    ndim = len(edge.in_shape)
    dims = tuple(to_axis(d, ndim) for d in edge.saved("dims"))  # none: nothing flips
    return moved(np.flip(grid(edge.in_shape), dims) if dims else grid(edge.in_shape),
                 edge.out_shape)


def cat(edge: Edge) -> IndexMap:
    dim, start, stop = cat_span(edge)
    return _placed(edge, dim, slice(start, stop))


def cat_span(edge: Edge) -> tuple[int, int, int]:
    """(dim, start, stop): where this input lies along the cat's dim of its output."""
    out = edge.out_shape
    dim = to_axis(edge.saved("dim"), len(out))
    sizes = [None if s is None else (s[dim] if len(s) == len(out) else 0)
             for s in edge.in_shapes]
    unknown = [j for j, s in enumerate(sizes) if s is None]
    if len(unknown) == 1:  # one constant part: its size is what the others leave
        sizes[unknown[0]] = out[dim] - sum(s for s in sizes if s is not None)
    elif unknown and min(unknown) < edge.i:
        raise Unproved("cat: the sizes of the constant parts before this one are unknown")
    offset = sum(sizes[:edge.i])
    return dim, offset, offset + sizes[edge.i]


def stack(edge: Edge) -> IndexMap:
    dim = to_axis(edge.saved("dim"), len(edge.out_shape))
    return _placed(edge, dim, edge.i)


def _placed(edge: Edge, dim: int, where) -> IndexMap:
    table = np.full(edge.out_shape, NONE, dtype=np.int64)
    table[(slice(None),) * dim + (where,)] = grid(edge.in_shape)
    return moved(table, edge.out_shape)


def split(edge: Edge) -> IndexMap:
    ndim = len(edge.in_shape)
    dim = to_axis(edge.saved("dim"), ndim)
    if edge.name == "Unbind":
        return moved(np.take(grid(edge.in_shape), edge.k, axis=dim), edge.out_shape)
    if edge.name == "SplitWithSizes":
        sizes = [to_int(s) for s in edge.saved("split_sizes")]
    else:
        size = to_int(edge.saved("split_size"))
        sizes = [size] * len(edge.out_shapes)
    start = sum(sizes[:edge.k])
    part = slice(start, start + sizes[edge.k])
    return moved(grid(edge.in_shape)[(slice(None),) * dim + (part,)], edge.out_shape)


def index_select(edge: Edge) -> IndexMap:
    dim, index = to_axis(edge.saved("dim"), len(edge.in_shape)), edge.selection("index").cpu()
    return replayed(lambda t: t.index_select(dim, index), edge)


def gather(edge: Edge) -> IndexMap:
    dim, index = to_axis(edge.saved("dim"), len(edge.in_shape)), edge.selection("index").cpu()
    return replayed(lambda t: t.gather(dim, index), edge)


def index(edge: Edge) -> IndexMap:
    indices = [None if i is None else i.cpu() for i in edge.selection("indices")]
    return replayed(lambda t: torch.ops.aten.index.Tensor(t, indices), edge)


def take(edge: Edge) -> IndexMap:
    index = edge.selection("index").cpu()
    return replayed(lambda t: t.take(index), edge)


def unfold(edge: Edge) -> IndexMap:
    dim = to_axis(edge.saved("dimension"), len(edge.in_shape))
    size, step = to_int(edge.saved("size")), to_int(edge.saved("step"))
    return replayed(lambda t: t.unfold(dim, size, step), edge)


def repeat(edge: Edge) -> IndexMap:
    repeats = [to_int(r) for r in edge.saved("repeats")]
    return replayed(lambda t: t.repeat(repeats), edge)


def expand(edge: Edge) -> IndexMap | None:
    return broadcast(edge.in_shape, edge.out_shape)


def diagonal(edge: Edge) -> IndexMap:
    ndim = len(edge.in_shape)
    offset = to_int(edge.saved("offset"))
    d1, d2 = to_axis(edge.saved("dim1"), ndim), to_axis(edge.saved("dim2"), ndim)
    return replayed(lambda t: t.diagonal(offset, d1, d2), edge, injective=True)


def triangle(edge: Edge) -> IndexMap:
    """tril / triu: the entries off the triangle read nothing."""
    k = to_int(edge.saved("diagonal"))
    keep = torch.tril if edge.name == "Tril" else torch.triu
    return replayed(lambda t: keep(t + 1, k) - 1, edge, injective=True)


def slice_backward(edge: Edge) -> IndexMap:
    """slice_backward (in a gradient's own graph: Hessians): the gradient of a slice placed in
    zeros of the full shape."""
    dim, part = _saved_slice(edge, len(edge.out_shape))
    return _placed(edge, dim, part)


def _saved_slice(edge: Edge, ndim: int) -> tuple[int, slice]:
    """The (dim, slice) a slice node saved; a step that is not positive is not proved."""
    dim = to_axis(edge.saved("dim"), ndim)
    start, end = edge.saved("start"), edge.saved("end")
    step = to_int(edge.saved("step"))
    if step <= 0:
        raise Unproved("a slice step that is not positive")
    return dim, slice(None if start is None else to_int(start),
                      None if end is None else to_int(end), step)


def select_backward(edge: Edge) -> IndexMap:
    """select_backward: the gradient of a select placed in zeros of the full shape."""
    ndim = len(edge.out_shape)
    return _placed(edge, to_axis(edge.saved("dim"), ndim), to_int(edge.saved("index")))
