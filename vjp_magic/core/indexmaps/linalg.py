"""Linear algebra: the matmul family (an output entry reads its whole row of the left factor
and column of the right one) and convolutions (a window of every input channel of its group:
kernel size, stride, dilation and padding from the node)."""
from __future__ import annotations

import math

import numpy as np
import torch

from .maps import NONE, Edge, IndexMap, Unproved, along, broadcast, grid, to_int
from .scatters import inverse

# node name → the role of each forward input: "bias" (broadcast to the output), "left" /
# "right" (a matrix factor), "vector" (the right factor of a matrix-vector product), "dot"
FACTORS = {
    "Mm": ("left", "right"), "Addmm": ("bias", "left", "right"),
    "Bmm": ("left", "right"), "Baddbmm": ("bias", "left", "right"),
    "Mv": ("left", "vector"), "Addmv": ("bias", "left", "vector"),
    "Dot": ("dot", "dot"), "Vdot": ("dot", "dot"),
}


def matmul(edge: Edge) -> IndexMap | None:
    role = FACTORS[edge.name][edge.i]
    shape, out = tuple(edge.in_shape), tuple(edge.out_shape)
    if role == "bias":
        return broadcast(shape, out)
    table = grid(shape)
    if role == "dot":
        return along(table.reshape(1, -1), edge)
    if role == "vector":  # (K,) read whole by every entry of (M,)
        return along(np.broadcast_to(table, out + shape), edge)
    if role == "left" and len(shape) == 2 and out == shape[:1]:  # mv: (M, K) → (M,)
        return along(table, edge)
    if len(shape) != len(out) or len(shape) not in (2, 3):
        raise Unproved("a matrix product of unexpected shapes")
    if role == "left":  # (…, M, K): out (…, M, N) reads its row
        reads = np.broadcast_to(table[..., :, None, :], out + shape[-1:])
    else:  # (…, K, N): out (…, M, N) reads its column
        reads = np.broadcast_to(np.swapaxes(table, -1, -2)[..., None, :, :], out + shape[-2:-1])
    return along(reads, edge)


def constant_weight(edge: Edge):
    """The convolution's weight where it is a constant of the graph (no gradient flows to
    it), else None: its exact-zero taps are then zero for every x and read nothing."""
    if len(edge.node.next_functions) < 2 or edge.node.next_functions[1][0] is not None:
        return None
    weight = edge.saved("weight")
    if weight is None or weight.is_complex() or weight.layout != torch.strided:
        return None
    return weight.detach().cpu()


def convolution(edge: Edge) -> IndexMap:
    """Input 0 of a convolution: output (n, c_out, o…) reads input
    (n, c_in, o·stride − padding + k·dilation) for every c_in of its group and k of the kernel,
    inside the input, but a constant kernel's exact-zero taps; a transposed convolution is
    that map turned round (:func:`transposed`)."""
    if edge.i != 0:
        raise Unproved("a convolution's weight or bias")
    if bool(edge.saved("transposed")):
        return transposed(edge)
    stride, padding, dilation, groups = _conv_arguments(edge)
    kernel = tuple(int(k) for k in edge.saved("weight").shape[2:])
    d = len(kernel)
    shape, out = _conv_shapes(edge, d)
    batch, channels, sizes = shape[0], shape[1], shape[2:]
    c_out, outs = out[1], out[2:]
    if len(sizes) != d or len(outs) != d or channels % groups or c_out % groups:
        raise Unproved("a convolution of unexpected shapes")
    per_group = channels // groups
    edge.afford(math.prod(out) * per_group * math.prod(kernel))
    spatial = windows(sizes, outs, kernel, stride, padding, dilation)  # (o…, k…)
    group = np.arange(c_out) // (c_out // groups)
    c_in = group[:, None] * per_group + np.arange(per_group)[None, :]  # (c_out, per_group)
    base = (np.arange(batch)[:, None, None] * channels + c_in[None]) * math.prod(sizes)
    lead = base.reshape((batch, c_out) + (1,) * d + (per_group,) + (1,) * d)
    inside = spatial >= 0
    weight = constant_weight(edge)
    if weight is not None:
        if tuple(weight.shape) != (c_out, per_group) + kernel:
            raise Unproved("a convolution weight of unexpected shape")
        taps = (weight != 0).numpy()  # (c_out, per_group, k…)
        inside = inside & taps.reshape((1, c_out) + (1,) * d + (per_group,) + kernel)
    table = np.where(inside, lead + np.maximum(spatial, 0), NONE)
    return along(table, edge)


def transposed(edge: Edge) -> IndexMap:
    """Input 0 of a transposed convolution: input (n, c_in, i…) lands on output
    (n, c_out, i·stride − padding + k·dilation) for every c_out of its group and k of the
    kernel inside the output (a constant kernel's exact-zero taps excepted); each output
    entry reads every input entry that lands on it."""
    stride, padding, dilation, groups = _conv_arguments(edge)
    extra = [to_int(p) for p in edge.saved("output_padding")]
    weight_shape = tuple(int(k) for k in edge.saved("weight").shape)
    kernel = weight_shape[2:]
    d = len(kernel)
    shape, out = _conv_shapes(edge, d)
    batch, channels, sizes = shape[0], shape[1], shape[2:]
    c_out, outs = out[1], out[2:]
    if len(sizes) != d or len(outs) != d or out[0] != batch or channels % groups \
            or weight_shape[:2] != (channels, c_out // groups) or c_out % groups \
            or not (len(stride) == len(padding) == len(dilation) == len(extra) == d):
        raise Unproved("a transposed convolution of unexpected shapes")
    per_group = c_out // groups
    edge.afford(3 * batch * channels * math.prod(sizes) * per_group * math.prod(kernel))
    for t in range(d):
        expected = (sizes[t] - 1) * stride[t] - 2 * padding[t] \
            + dilation[t] * (kernel[t] - 1) + extra[t] + 1
        if expected != outs[t]:
            raise Unproved("a transposed convolution whose output size does not match")
    flat, inside = _positions(sizes, outs, kernel, stride, padding, dilation)
    # axes (n, c_in, i…, c_out of the group, k…)
    full = (batch, channels) + sizes + (per_group,) + kernel
    spatial = flat.reshape((1, 1) + flat.shape[:d] + (1,) + flat.shape[d:])
    inside = inside.reshape(spatial.shape)
    weight = constant_weight(edge)
    if weight is not None:
        taps = (weight != 0).numpy()  # (c_in, c_out of the group, k…)
        inside = inside & taps.reshape((1, channels) + (1,) * d + (per_group,) + kernel)
    group = np.arange(channels) // (channels // groups)
    c_to = group[:, None] * per_group + np.arange(per_group)[None, :]  # (c_in, per_group)
    base = (np.arange(batch)[:, None, None] * c_out + c_to[None]) * math.prod(outs)
    target = base.reshape((batch, channels) + (1,) * d + (per_group,) + (1,) * d) + spatial
    source = grid((batch, channels) + sizes).reshape((batch, channels) + sizes
                                                     + (1,) * (d + 1))
    keep = np.broadcast_to(inside, full)
    return inverse(np.broadcast_to(target, full)[keep], np.broadcast_to(source, full)[keep],
                   edge)


def _conv_arguments(edge: Edge) -> tuple[list[int], list[int], list[int], int]:
    """A convolution node's saved stride, padding, dilation and groups."""
    return ([to_int(s) for s in edge.saved("stride")],
            [to_int(p) for p in edge.saved("padding")],
            [to_int(d) for d in edge.saved("dilation")], to_int(edge.saved("groups")))


def _conv_shapes(edge: Edge, d: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The input and output shapes of a d-dimensional convolution node, an unbatched one
    read as a batch of one: (n, c, i…)."""
    shape, out = tuple(edge.in_shape), tuple(edge.out_shape)
    if len(shape) == d + 1:  # unbatched
        shape, out = (1,) + shape, (1,) + out
    return shape, out


def windows(sizes, outs, kernel, stride, padding, dilation,
            ceil_mode: bool = False) -> np.ndarray:
    """(1, 1, o…, 1, k…): the flat spatial input index each output position reads at each
    kernel offset, NONE outside the input (``ceil_mode``: a pooling's last window may start
    in the input past the last full one)."""
    d = len(kernel)
    for t in range(d):
        span = sizes[t] + 2 * padding[t] - dilation[t] * (kernel[t] - 1) - 1
        expected = (span + (stride[t] - 1 if ceil_mode else 0)) // stride[t] + 1
        if ceil_mode and (expected - 1) * stride[t] >= sizes[t] + padding[t]:
            expected -= 1  # PyTorch's rule: the last window starts inside input or left pad
        if expected != outs[t]:
            raise Unproved("a convolution whose output size does not match its parameters")
    flat, inside = _positions(outs, sizes, kernel, stride, padding, dilation)
    spatial = np.where(inside, flat, NONE)
    return spatial.reshape((1, 1) + spatial.shape[:d] + (1,) + spatial.shape[d:])


def _positions(rows, bounds, kernel, stride, padding, dilation) -> tuple[np.ndarray, np.ndarray]:
    """(flat, inside), each shaped (r…, k…): for row ``r`` and kernel offset ``k`` of every
    axis, the position ``r·stride − padding + k·dilation`` flattened row-major over ``bounds``,
    and whether it lies inside them (a convolution's window: rows are its outputs, bounds
    its input; a transposed one's: rows are its inputs, bounds its output)."""
    d = len(kernel)
    flat = np.zeros((1,) * (2 * d), dtype=np.int64)
    inside = np.ones((1,) * (2 * d), dtype=bool)
    for t in range(d):
        pos = (np.arange(rows[t])[:, None] * stride[t] - padding[t]
               + np.arange(kernel[t])[None, :] * dilation[t])
        shape = [1] * (2 * d)
        shape[t], shape[d + t] = rows[t], kernel[t]
        pos = pos.reshape(shape)
        inside = inside & (pos >= 0) & (pos < bounds[t])
        flat = flat * bounds[t] + pos
    return flat, inside
