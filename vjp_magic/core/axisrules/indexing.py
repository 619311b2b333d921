"""Indexing and joining: select, slice, gather, advanced index, unbind, split, cat and stack."""
from __future__ import annotations

import torch

from .flow import Flow, all_exact, drop_axes, meet, to_axis


def select(node, inputs, shapes):
    (flow,) = [f for f in inputs if f is not None][:1]
    ndim = len(flow.shape)
    dim = to_axis(node._saved_dim, ndim)  # a later stack can put the selected parts back
    return [Flow(shapes[0], drop_axes(flow, {dim}, False), flow.exact and dim not in flow.carries)]


def slice_(node, inputs, shapes):
    (flow,) = [f for f in inputs if f is not None][:1]
    ndim = len(flow.shape)
    dim = to_axis(node._saved_dim, ndim)
    start = 0 if node._saved_start is None else max(0, to_axis(node._saved_start, flow.shape[dim]))
    if start == 0 and int(node._saved_step) == 1:  # a prefix: index i is still index i
        return [Flow(shapes[0], dict(flow.carries), flow.exact)]
    return [Flow(shapes[0], drop_axes(flow, {dim}, True), False)]


def gather(node, inputs, shapes):
    """``gather`` (and ``take_along_dim``'s) along ``dim``: entry i along another axis reads
    entry i there (kept where the index spans the whole axis), along ``dim`` an entry the
    index picks (``index[..., j, ...]`` may be ``j``: not exact where that axis carries)."""
    flow = inputs[0]
    if flow is None:
        return [None]
    dim = to_axis(node._saved_dim, len(flow.shape))
    out = shapes[0]
    kept = {a: c for a, c in flow.carries.items()
            if a != dim and a < len(out) and out[a] == flow.shape[a]}
    return [Flow(out, kept, flow.exact and kept == flow.carries)]


def index(node, inputs, shapes):
    """``x[i0, i1, …]`` whose first index is proved the identity on axis 0 (its values
    0..B-1 in order, read off the graph: ``x[torch.arange(B), t]``, ``x[range(B), t]``,
    ``x[torch.arange(B)[:, None], t2d]``): the result's axis 0 reads x's row b at b, and
    the axes no index reads keep theirs (after the indices' own axes, in order). Any other
    index claims nothing (a permutation moves rows; values picked along an indexed axis)."""
    flow = inputs[0]
    if flow is None:
        return [None]
    indices, out = list(node._saved_indices), shapes[0]
    plain = [a for a in range(len(flow.shape)) if a >= len(indices) or indices[a] is None]
    lead = len(out) - len(plain)  # the indices' broadcast axes come first (index 0 is one)
    if not flow.shape or lead < 1 or list(out[lead:]) != [flow.shape[a] for a in plain] \
            or not batch_identity(indices, flow.shape[0]):
        return [Flow(out, {}, False)]
    moved = {0: 0, **{a: lead + k for k, a in enumerate(plain)}}
    kept = {moved[a]: c for a, c in flow.carries.items()
            if a in moved and out[moved[a]] == flow.shape[a]}
    return [Flow(out, kept, flow.exact and len(kept) == len(flow.carries))]


def batch_identity(indices, size: int) -> bool:
    """Whether advanced indices (tensors or None per axis, as ``x[...]`` saves them) pick row
    b of axis 0 at every position b of the result's first axis: the first an integer tensor
    which, broadcast with the other tensors, holds b all along position b of axis 0 of that
    broadcast shape, whose axis 0 has ``size`` entries. Read from the values themselves."""
    first, tensors = (indices[0] if len(indices) else None), [i for i in indices if i is not None]
    if not isinstance(first, torch.Tensor) or not all(map(_integer, tensors)):
        return False  # (a mask stands for as many axes as it has: not counted here)
    try:
        shape = torch.broadcast_shapes(*(i.shape for i in tensors))
    except RuntimeError:
        return False
    if not shape or shape[0] != size or first.dim() != len(shape):
        return False
    rows = torch.arange(size, device=first.device).reshape((size,) + (1,) * (len(shape) - 1))
    return bool((first == rows).all())


def _integer(index) -> bool:
    """An index tensor of integers (not a mask: bool, or uint8 as torch reads it)."""
    return isinstance(index, torch.Tensor) and not (index.is_floating_point() or index.is_complex()
                                                    or index.dtype in (torch.bool, torch.uint8))


def unbind(node, inputs, shapes):
    (flow,) = [f for f in inputs if f is not None][:1]
    dim = to_axis(node._saved_dim, len(flow.shape))
    exact = flow.exact and dim not in flow.carries  # a later stack can undo the unbind
    return [Flow(shape, drop_axes(flow, {dim}, False), exact) for shape in shapes]


def split_outputs(node, inputs, shapes):
    (flow,) = [f for f in inputs if f is not None][:1]
    dim = to_axis(node._saved_dim, len(flow.shape))
    first = Flow(shapes[0], dict(flow.carries), flow.exact)  # starts at 0: a prefix
    rest = [Flow(shape, drop_axes(flow, {dim}, True), False) for shape in shapes[1:]]
    return [first] + rest


def cat(node, inputs, shapes):
    out = shapes[0]
    dim = to_axis(node._saved_dim, len(out))
    maps, exact = [], all_exact(inputs)
    for flow in inputs:
        if flow is None:
            continue
        if dim in flow.carries:
            exact = False  # along the joined axis the index shifts by the part's offset
        maps.append(drop_axes(flow, {dim}, True))
    return meet(out, maps, exact)


def stack(node, inputs, shapes):
    out = shapes[0]
    dim = to_axis(node._saved_dim, len(out))
    maps = [{a + (a >= dim): c for a, c in f.carries.items()} for f in inputs if f is not None]
    return meet(out, maps, all_exact(inputs))


