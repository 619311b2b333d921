"""The shift-like rules (:mod:`.offsets`): a node that maps each output position ``p`` to input
``p + e`` on boxes of ``p`` (same number of dims) gives its pieces, without an index table;
None where this node, here, is not shift-like (a broadcast, a strided slice, a flattened
roll): the index arrays take over."""
from __future__ import annotations

import torch

from .linalg import constant_weight
from .maps import Edge, to_axis, to_int
from .moves import cat_span
from .offsets import Piece, whole


def same(edge: Edge) -> list[Piece] | None:
    """Elementwise maps, views, clones: the identity where the shapes agree."""
    if tuple(edge.in_shape) != tuple(edge.out_shape):
        return None
    return [whole(edge.out_shape)]


def _along(edge: Edge, dim: int, shift: int, lo: int, hi: int) -> list[Piece]:
    """One piece: along ``dim`` positions ``lo <= p < hi`` read ``p + shift``."""
    out = tuple(edge.out_shape)
    e, low, high = [0] * len(out), [0] * len(out), list(out)
    e[dim], low[dim], high[dim] = shift, max(lo, 0), min(hi, out[dim])
    return [Piece(tuple(e), tuple(low), tuple(high))]


def _ranks_agree(edge: Edge, *dims: int) -> bool:
    """Input and output have the same dims, of the same sizes but along ``dims``."""
    shape, out = tuple(edge.in_shape), tuple(edge.out_shape)
    return len(shape) == len(out) > 0 and all(
        a in dims or shape[a] == out[a] for a in range(len(out)))


def slice_(edge: Edge) -> list[Piece] | None:
    dim = to_axis(edge.saved("dim"), len(edge.in_shape))
    if not _ranks_agree(edge, dim) or to_int(edge.saved("step")) != 1:
        return None
    start = _start(edge, edge.in_shape[dim])
    if edge.in_shape[dim] - start < edge.out_shape[dim]:
        return None
    return _along(edge, dim, start, 0, edge.out_shape[dim])


def _start(edge: Edge, size: int) -> int:
    start, end = edge.saved("start"), edge.saved("end")
    part = slice(None if start is None else to_int(start), None if end is None else to_int(end))
    return part.indices(size)[0]


def slice_backward(edge: Edge) -> list[Piece] | None:
    """slice_backward: the full-shape output reads the slice's gradient on the sliced range."""
    dim = to_axis(edge.saved("dim"), len(edge.out_shape))
    if not _ranks_agree(edge, dim) or to_int(edge.saved("step")) != 1:
        return None
    start = _start(edge, edge.out_shape[dim])
    return _along(edge, dim, -start, start, start + edge.in_shape[dim])


def constant_pad(edge: Edge) -> list[Piece] | None:
    """Padding (negative: cropping) per dim, torch's order (last dim first)."""
    pad = [to_int(p) for p in edge.saved("pad")]
    if not _ranks_agree(edge, *range(len(edge.out_shape) - len(pad) // 2, len(edge.out_shape))):
        return None
    out, shape = tuple(edge.out_shape), tuple(edge.in_shape)
    e, lo, hi = [0] * len(out), [0] * len(out), list(out)
    for t in range(len(pad) // 2):
        a = len(out) - 1 - t
        if out[a] != shape[a] + pad[2 * t] + pad[2 * t + 1]:
            return None
        e[a], lo[a], hi[a] = -pad[2 * t], max(0, pad[2 * t]), min(out[a], pad[2 * t] + shape[a])
    return [Piece(tuple(e), tuple(lo), tuple(hi))]


def roll(edge: Edge) -> list[Piece] | None:
    """roll along dims: each dim splits in two pieces (the part that wraps around)."""
    out = tuple(edge.out_shape)
    dims = [to_axis(d, len(out)) for d in edge.saved("dims")] if out else []
    if not dims or len(set(dims)) < len(dims) or tuple(edge.in_shape) != out:
        return None
    pieces = [whole(out)]
    for shift, a in zip([to_int(s) for s in edge.saved("shifts")], dims):
        k = shift % out[a] if out[a] else 0
        pieces = [_split(p, a, k, out[a]) for p in pieces]
        pieces = [q for pair in pieces for q in pair if q.hi[a] > q.lo[a]]
    return pieces


def _split(piece: Piece, a: int, k: int, size: int) -> tuple[Piece, Piece]:
    """Positions ``k <= p`` read ``p - k``, positions ``p < k`` read ``p - k + size``."""
    def put(values, value):
        return values[:a] + (value,) + values[a + 1:]
    return (Piece(put(piece.e, piece.e[a] - k), put(piece.lo, k), piece.hi),
            Piece(put(piece.e, piece.e[a] - k + size), piece.lo, put(piece.hi, k)))


def cat(edge: Edge) -> list[Piece] | None:
    """cat part: output positions ``start <= p < stop`` read ``p - start``."""
    dim, start, stop = cat_span(edge)
    if not _ranks_agree(edge, dim) or stop - start != edge.in_shape[dim]:
        return None
    return _along(edge, dim, -start, start, stop)


def split(edge: Edge) -> list[Piece] | None:
    if edge.name == "Unbind":
        return None
    dim = to_axis(edge.saved("dim"), len(edge.in_shape))
    if not _ranks_agree(edge, dim):
        return None
    if edge.name == "SplitWithSizes":
        sizes = [to_int(s) for s in edge.saved("split_sizes")]
    else:
        sizes = [to_int(edge.saved("split_size"))] * len(edge.out_shapes)
    return _along(edge, dim, sum(sizes[:edge.k]), 0, edge.out_shape[dim])


def convolution(edge: Edge) -> list[Piece] | None:
    """Input 0 of a convolution of stride 1 (groups 1: every input channel, as channel
    offsets; depthwise: its own channel): one piece per channel offset and kernel offset."""
    if edge.i != 0 or bool(edge.saved("transposed")):
        return None
    stride = [to_int(s) for s in edge.saved("stride")]
    padding = [to_int(p) for p in edge.saved("padding")]
    dilation = [to_int(d) for d in edge.saved("dilation")]
    groups = to_int(edge.saved("groups"))
    kernel = tuple(int(k) for k in edge.saved("weight").shape[2:])
    shape, out = tuple(edge.in_shape), tuple(edge.out_shape)
    lead = len(shape) - len(kernel) - 1  # 1 batched, 0 not
    if lead not in (0, 1) or len(out) != len(shape) or any(s != 1 for s in stride) \
            or shape[:lead] != out[:lead]:
        return None
    c_in, c_out = shape[lead], out[lead]
    if groups == 1:
        channel_offsets = range(-(c_out - 1), c_in)
    elif groups == c_in == c_out:
        channel_offsets = range(0, 1)
    else:
        return None
    sizes, outs = shape[lead + 1:], out[lead + 1:]
    if any(o != s + 2 * p - d * (k - 1) for o, s, p, d, k
           in zip(outs, sizes, padding, dilation, kernel)):
        return None
    try:
        live = _live_taps(edge, channel_offsets, (c_in, c_out), kernel, groups)
    except NotShift:
        return None
    return _windows(out[:lead], channel_offsets, (c_in, c_out), sizes, outs,
                    _kernel_offsets(kernel, dilation, padding), live)


def _live_taps(edge: Edge, channel_offsets, channels, kernel, groups):
    """The (channel offset, kernel offset's position in the kernel) pairs whose piece reads
    through a nonzero tap: all of them (None), unless the weight is a constant of the graph
    (then an exact-zero tap is zero for every x). A piece some of whose output channels read
    a zero tap and some a nonzero one is not shift-like here: :class:`NotShift`."""
    weight = constant_weight(edge)
    if weight is None:
        return None
    c_in, c_out = channels
    nonzero = (weight != 0).reshape(weight.shape[0], weight.shape[1], -1)  # (c_out, ·, taps)
    live = set()
    for dc in channel_offsets:
        co = torch.arange(max(0, -dc), min(c_out, c_in - dc))
        ci = torch.zeros_like(co) if groups != 1 else co + dc
        if not co.numel():
            continue
        taps = nonzero[co, ci]  # (channels of the piece, taps)
        if bool((taps.any(0) != taps.all(0)).any()):
            raise NotShift("a constant kernel zero for some channels of a piece only")
        live.update((dc, tap) for tap in taps.all(0).nonzero().reshape(-1).tolist())
    return live


class NotShift(Exception):
    """This node is not shift-like here: the index arrays take over."""


def _kernel_offsets(kernel, dilation, padding) -> list[tuple[int, ...]]:
    offsets = [()]
    for k, d, p in zip(kernel, dilation, padding):
        offsets = [o + (j * d - p,) for o in offsets for j in range(k)]
    return offsets


def _windows(batch, channel_offsets, channels, sizes, outs, kernel_offsets,
             live: set | None = None) -> list[Piece]:
    c_in, c_out = channels
    pieces = []
    for dc in channel_offsets:
        for tap, ks in enumerate(kernel_offsets):
            if live is not None and (dc, tap) not in live:
                continue
            lo = tuple(max(0, -k) for k in ks)
            hi = tuple(min(o, s - k) for o, s, k in zip(outs, sizes, ks))
            if all(h > low for low, h in zip(lo, hi)):
                pieces.append(Piece((0,) * len(batch) + (dc,) + ks,
                                    (0,) * len(batch) + (max(0, -dc),) + lo,
                                    tuple(batch) + (min(c_out, c_in - dc),) + hi))
    return pieces
