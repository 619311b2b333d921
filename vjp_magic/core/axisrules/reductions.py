"""Reductions, ops along one dim (softmax, cumsum, sort) and normalisations: the axes they mix
lose their carries, the others keep them."""
from __future__ import annotations

from .flow import Flow, all_exact, base_name, broadcast, drop_axes, meet, to_axes


def reduction(node, inputs, shapes):
    (flow,) = [f for f in inputs if f is not None][:1]
    ndim = len(flow.shape)
    out = shapes[0]
    dims = getattr(node, "_saved_dim", None)
    keepdim = bool(getattr(node, "_saved_keepdim", False))
    reduced = set(range(ndim)) if dims is None or len(out) == 0 else set(to_axes(dims, ndim))
    if not keepdim and len(out) != ndim - len(reduced):
        reduced = set(range(ndim))  # a full reduction spelled another way
        keepdim = len(out) == ndim
    # every output (std_mean / var_mean have two) is the same reduction
    return [Flow(shape, drop_axes(flow, reduced, keepdim), flow.exact) for shape in shapes]


def along_dim(node, inputs, shapes):
    """softmax, cumsum, … along ``dim``: that axis mixes, the others are untouched."""
    (flow,) = [f for f in inputs if f is not None][:1]
    dims = getattr(node, "_saved_dim", None)
    if dims is None:
        dims = node._saved_dims
    mixed = set(to_axes(dims, len(flow.shape)))
    return [Flow(shapes[0], drop_axes(flow, mixed, True), flow.exact)]


POOLED_AXES = {"MaxPool2DWithIndices": 2, "MaxPool3DWithIndices": 3, "AvgPool2D": 2,
               "AvgPool3D": 3, "AdaptiveMaxPool2D": 2, "AdaptiveMaxPool3D": 3,
               "AdaptiveAvgPool2D": 2, "AdaptiveAvgPool3D": 3}  # node name -> pooled axes


def pooling(node, inputs, shapes):
    """Max and average pooling (adaptive too; 1-d pools come as 2-d ones between an unsqueeze
    and a squeeze) over the last 2 or 3 axes: an output entry reads only input entries of
    its own leading (batch, channel) indices, so those axes keep their carries; the windows
    are not modelled (not exact: a window of one position keeps positions)."""
    flow, out = inputs[0], shapes[0]
    if flow is None:
        return [Flow(out, {}, False)]
    lead = len(out) - POOLED_AXES[base_name(node)]
    if lead < 0 or len(flow.shape) != len(out) or tuple(flow.shape[:lead]) != tuple(out[:lead]):
        return [Flow(out, {}, False)]
    return meet(out, [{a: c for a, c in flow.carries.items() if a < lead}], False)


def layer_norm(node, inputs, shapes):
    flow = inputs[0]
    out = shapes[0]
    k = len(node._saved_normalized_shape)
    main = [] if flow is None else [{a: c for a, c in flow.carries.items() if a < len(out) - k}]
    maps = main + [broadcast(f, out) for f in inputs[1:] if f is not None]
    return meet(out, maps, all_exact(inputs))


def batch_norm(node, inputs, shapes):
    flow = inputs[0]
    out = shapes[0]
    maps = []
    if flow is not None:
        training = bool(getattr(node, "_saved_training", True))
        maps.append(dict(flow.carries) if not training else
                    {a: c for a, c in flow.carries.items() if a == 1})
    for f in inputs[1:]:
        if f is not None:  # weight / bias of shape (C,): channel axis 1
            maps.append({1: f.carries[0]} if 0 in f.carries else {})
    return meet(out, maps, all_exact(inputs))


def group_norm(node, inputs, shapes):
    """GroupNorm normalises each sample over its groups of channels (and every position):
    the batch axis 0 survives; weight and bias live on the channel axis 1. Exact with one
    group (everything else mixes); with more, channels of different groups stay apart."""
    flow = inputs[0]
    out = shapes[0]
    maps = [] if flow is None else [{0: flow.carries[0]} if 0 in flow.carries else {}]
    for f in inputs[1:3]:
        if f is not None:  # weight / bias of shape (C,)
            maps.append({1: f.carries[0]} if 0 in f.carries else {})
    return meet(out, maps, all_exact(inputs) and int(node._saved_group) == 1)


def class_loss(node, inputs, shapes):
    """nll_loss: with ``reduction="none"`` the class axis 1 goes (row n reads its own
    target's class), the others are kept; a mean or sum keeps nothing. Not exact: a row
    reads one class, fewer entries than the pairing allows."""
    (flow,) = [f for f in inputs if f is not None][:1]
    ndim, out = len(flow.shape), shapes[0]
    if int(node._saved_reduction) != 0 or ndim < 2 or len(out) != ndim - 1:
        return [Flow(out, {}, False)]
    return [Flow(out, drop_axes(flow, {1}, False), False)]


def pointwise_loss(node, inputs, shapes):
    """mse, smooth L1, Huber, binary cross entropy, soft margin: elementwise with
    ``reduction="none"``, a full reduction otherwise."""
    out = shapes[0]
    if int(node._saved_reduction) != 0:
        return [Flow(out, {}, all_exact(inputs))]
    return meet(out, [broadcast(f, out) for f in inputs if f is not None], all_exact(inputs))
