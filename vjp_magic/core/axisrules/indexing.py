"""Indexing and joining: select, slice, gather, unbind, split, cat and stack."""
from __future__ import annotations

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


