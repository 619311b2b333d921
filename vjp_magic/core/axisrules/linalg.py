"""Linear algebra: the matmul family (batch axes and each factor's free axis survive),
convolutions (the batch axis; weight and bias on the output channel) and the fused attention
kernels (their batch axes)."""
from __future__ import annotations

from .flow import Flow, all_exact, base_name, broadcast, meet


def matmul_family(node, inputs, shapes):
    """mm, bmm, mv, dot, addmm, …: batch axes and the free axis of each factor survive."""
    out = shapes[0]
    name = base_name(node)
    keep = MATMUL_AXES[name]  # per forward input: {input axis: output axis}, or "broadcast"
    maps = []
    for flow, rule in zip(inputs, keep):
        if flow is None:
            continue
        if rule == "broadcast":
            maps.append(broadcast(flow, out))
        else:
            maps.append({rule[a]: c for a, c in flow.carries.items() if a in rule})
    return meet(out, maps, all_exact(inputs))


MATMUL_AXES = {
    "Mm": [{0: 0}, {1: 1}],
    "Bmm": [{0: 0, 1: 1}, {0: 0, 2: 2}],
    "Mv": [{0: 0}, {}],
    "Dot": [{}, {}],
    "Vdot": [{}, {}],
    "Addmm": ["broadcast", {0: 0}, {1: 1}],
    "Addmv": ["broadcast", {0: 0}, {}],
    "Baddbmm": ["broadcast", {0: 0, 1: 1}, {0: 0, 2: 2}],
    "Addbmm": ["broadcast", {1: 0}, {2: 1}],
    "Addr": ["broadcast", {0: 0}, {0: 1}],
}


def convolution(node, inputs, shapes):
    """The batch axis of a convolution is untouched; weight and bias live on the output
    channel axis."""
    out = shapes[0]
    spatial = len(node._saved_stride)
    maps = []
    flow = inputs[0]
    if flow is not None:
        batched = len(flow.shape) == spatial + 2
        maps.append({0: flow.carries[0]} if batched and 0 in flow.carries else {})
    channel = 1 if len(out) == spatial + 2 else 0
    # the output channel is the weight's axis 0 (C_out, C_in/groups, …), or for a transposed
    # convolution its axis 1 (C_in, C_out/groups, …) when there is one group; the bias's axis 0
    transposed, groups = bool(node._saved_transposed), int(node._saved_groups)
    weight_axis = (1 if groups == 1 else None) if transposed else 0
    for extra, axis in zip(inputs[1:3], (weight_axis, 0)):
        if extra is not None:
            carried = axis is not None and axis in extra.carries
            maps.append({channel: extra.carries[axis]} if carried else {})
    # grouped convolutions also pair input with output channels, and a kernel of size 1
    # keeps positions: neither is modelled, so then the proof is not exact
    exact = all_exact(inputs) and int(node._saved_groups) == 1 and not _pointlike_kernel(node)
    return meet(out, maps, exact)


def _pointlike_kernel(node) -> bool:
    """Whether each output position of a convolution may see a single input position."""
    try:
        weight = node._saved_weight
    except (AttributeError, RuntimeError):
        return True  # the kernel cannot be read: claim no exactness
    return weight is None or all(int(k) == 1 for k in weight.shape[2:])




def attention(node, inputs, shapes):
    """scaled_dot_product_attention's fused kernels: query, key, value (and a mask) shaped
    ``(*batch, rows, features)``; output ``(*batch, L, Ev)`` at batch index i reads only batch
    index i of each (broadcast from the right). Each query row reads every key and value row:
    only the batch axes survive, and the proof is not exact (a query row's own pairing is
    not modelled)."""
    out = shapes[0]
    batch = out[:-2]
    maps = []
    for flow in inputs:
        if flow is not None:
            leading = Flow(flow.shape[:-2], {a: c for a, c in flow.carries.items()
                                             if a < len(flow.shape) - 2})
            maps.append(broadcast(leading, batch))
    return meet(out, maps, False)
