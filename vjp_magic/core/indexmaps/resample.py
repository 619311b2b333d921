"""Upsampling (nearest, nearest-exact, linear, bilinear, bicubic, trilinear, antialiased) and
adaptive average pooling: each output entry reads a window of its own plane, the product of
one range of input positions per spatial axis. The ranges follow from the sizes and the
saved scales alone (never from x): proved for every x.

Each axis's range is PyTorch's source coordinate (``area_pixel_compute_source_index``) with
the kernel's support around it, widened to a superset wherever rounding could move it: the
coordinate ± a margin (float32 coordinates round differently from float64, a kernel on
another device too), both scales PyTorch may use (1 / the saved scale, or in / out), and for
the antialiased kernels one more position each side. A superset is sound (an entry it adds
reads 0); a smaller set never is.
"""
from __future__ import annotations

import math

import numpy as np

from .maps import NONE, Edge, IndexMap, Unproved, along
from .pooling import _planes

_MARGIN = 1e-5  # relative: a coordinate's rounding in float32 is ~1e-7 of it

# node name → (spatial dims, kernel): how far each side of the coordinate an output reads
KERNELS = {"UpsampleNearest1D": (1, "nearest"), "UpsampleNearest2D": (2, "nearest"),
           "UpsampleNearest3D": (3, "nearest"), "UpsampleNearestExact1D": (1, "exact"),
           "UpsampleNearestExact2D": (2, "exact"), "UpsampleNearestExact3D": (3, "exact"),
           "UpsampleLinear1D": (1, "linear"), "UpsampleBilinear2D": (2, "linear"),
           "UpsampleTrilinear3D": (3, "linear"), "UpsampleBicubic2D": (2, "cubic"),
           "UpsampleBilinear2DAa": (2, "linear aa"), "UpsampleBicubic2DAa": (2, "cubic aa")}
_SCALES = {1: ("scales",), 2: ("scales_h", "scales_w"), 3: ("scales_d", "scales_h", "scales_w")}


def upsample(edge: Edge) -> IndexMap:
    """An upsampling node: the product over its spatial axes of :func:`_source_range`."""
    d, kernel = KERNELS[edge.name]
    sizes, outs, offsets = _planes(edge, d)
    if tuple(int(o) for o in edge.saved("output_size")) != tuple(outs):
        raise Unproved("an upsampling whose output size is not its saved one")
    corners = bool(getattr(edge.node, "_saved_align_corners", False))
    scales = [getattr(edge.node, "_saved_" + name, None) for name in _SCALES[d]]
    ranges = [_source_range(kernel, n, o, s, corners) for n, o, s in zip(sizes, outs, scales)]
    return _product(ranges, sizes, offsets, edge)


def adaptive_avg_pool(edge: Edge) -> IndexMap:
    """adaptive_avg_pool{2,3}d (1d runs as 2d): output o of an axis averages the input
    positions floor(o·in/out) to ceil((o+1)·in/out) - 1 (integer arithmetic: exact)."""
    d = 3 if edge.name.endswith("3D") else 2
    sizes, outs, offsets = _planes(edge, d)
    ranges = []
    for n, o in zip(sizes, outs):
        at = np.arange(o, dtype=np.int64)
        ranges.append((at * n // o, -(-(at + 1) * n // o) - 1))
    return _product(ranges, sizes, offsets, edge)


def _source_range(kernel: str, n: int, out: int, scale, corners: bool):
    """(first, last) input position read by each output position along one axis (int64
    arrays of ``out``), a superset of what PyTorch's kernel reads (module docstring)."""
    at = np.arange(out, dtype=np.float64)
    if corners and kernel not in ("nearest", "exact"):
        candidates = [(n - 1) / (out - 1) if out > 1 else 0.0]
    else:
        candidates = [n / out] + ([1.0 / scale] if scale else [])
    first, last = np.full(out, n, dtype=np.int64), np.full(out, -1, dtype=np.int64)
    for ratio in candidates:
        lo, hi = _reach(kernel, at, ratio, corners)
        first, last = np.minimum(first, lo), np.maximum(last, hi)
    return np.clip(first, 0, n - 1), np.clip(last, 0, n - 1)


def _reach(kernel: str, at: np.ndarray, ratio: float, corners: bool):
    """(first, last) positions one candidate scale reads, rounding margins included."""
    if kernel in ("nearest", "exact"):
        source = (at + 0.5) * ratio if kernel == "exact" else at * ratio
        before, after = 0, 0
    elif kernel.endswith("aa"):
        support = (1.0 if kernel.startswith("linear") else 2.0) * max(ratio, 1.0)
        centres = [(at + 0.5) * ratio, at * ratio + 0.5]
        source = np.minimum(*centres) - support, np.maximum(*centres) + support
        margin = _MARGIN * (1 + np.abs(source[1]))
        return (np.floor(source[0] - margin).astype(np.int64) - 1,
                np.ceil(source[1] + margin).astype(np.int64) + 1)
    else:
        source = at * ratio if corners else (at + 0.5) * ratio - 0.5
        before, after = (0, 1) if kernel == "linear" else (1, 2)
    margin = 0.0 if _exact(ratio, len(at)) else _MARGIN * (1 + np.abs(source))
    return (np.floor(source - margin).astype(np.int64) - before,
            np.floor(source + margin).astype(np.int64) + after)


def _exact(ratio: float, out: int) -> bool:
    """Whether every coordinate o·ratio (± 0.5) is exact in float32 and float64 alike: a
    ratio that is a multiple of 2⁻¹⁰ (0.5, 0.25, 2) and products well inside float32's
    24 bits. Then no rounding can move it, and it needs no margin."""
    scaled = ratio * 1024
    return float(scaled).is_integer() and (out + 1) * scaled < 2**22


def _product(ranges, sizes, offsets: np.ndarray, edge: Edge) -> IndexMap:
    """The table of a window that is the product of one range per spatial axis:
    (lead…, out…, k…) flat input indices, :data:`.maps.NONE` past a shorter range's end."""
    d = len(ranges)
    widths = [int((last - first).max(initial=-1)) + 1 for first, last in ranges]
    edge.afford(math.prod(edge.out_shape) * math.prod(widths))
    flat = np.zeros((1,) * (2 * d), dtype=np.int64)
    inside = np.ones((1,) * (2 * d), dtype=bool)
    for t, (first, last) in enumerate(ranges):
        pos = first[:, None] + np.arange(widths[t])[None, :]
        shape = [1] * (2 * d)
        shape[t], shape[d + t] = len(first), widths[t]
        inside = inside & (pos <= last[:, None]).reshape(shape)
        flat = flat * sizes[t] + pos.reshape(shape)
    spatial = np.where(inside, flat, NONE)
    lead = offsets.reshape(offsets.shape + (1,) * d)
    return along(np.where(spatial >= 0, lead + spatial, NONE), edge)
