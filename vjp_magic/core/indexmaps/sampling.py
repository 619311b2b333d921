"""grid_sample (2-D and 3-D): output entry (n, c, point) reads, in plane (n, c) of the input,
the entries around the grid's point there: 2 per axis (bilinear, trilinear), 1 (nearest),
4 (bicubic), those out of bounds none (padding_mode zeros) or moved inside (border,
reflection). Where they lie follows from the grid's VALUES, which the graph keeps: the map
holds for this grid (a saved selection, :attr:`..pattern.Pattern.conditional_on`); a grid
that is itself in the graph (it requires grad), or not a plain tensor, proves nothing.

Each axis's positions are PyTorch's (``grid_sampler_compute_source_index``, and for bicubic
each tap's ``compute_coordinates``) computed in float64 and widened by a rounding margin
wherever rounding could move them: a superset, never fewer (an entry it adds reads 0).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .maps import NONE, Edge, IndexMap, Unproved, along, to_int

_MARGIN = 4e-6  # relative: float32's few roundings of a coordinate are ~1e-7 of it
_MODES = {0: "linear", 1: "nearest", 2: "cubic"}  # at::native::GridSamplerInterpolation
_PADDINGS = {0: "zeros", 1: "border", 2: "reflection"}  # at::native::GridSamplerPadding


def grid_sample(edge: Edge) -> IndexMap:
    """The input's map of a GridSampler2D / 3D node (module docstring)."""
    if edge.i != 0 or edge.node.next_functions[1][0] is not None:
        raise Unproved("a grid_sample whose grid is in the graph")
    grid = edge.selection("grid")
    if type(grid) is not torch.Tensor or grid.layout != torch.strided or grid.is_complex():
        raise Unproved("a grid_sample grid that is not a plain tensor")
    d = 3 if edge.name.endswith("3D") else 2
    mode = _MODES.get(to_int(edge.saved("interpolation_mode")))
    padding = _PADDINGS.get(to_int(edge.saved("padding_mode")))
    corners = bool(edge.saved("align_corners"))
    shape, out = tuple(edge.in_shape), tuple(edge.out_shape)
    points = grid.detach().cpu().to(torch.float64).numpy()
    if mode is None or padding is None or len(shape) != d + 2 or points.shape[-1] != d \
            or out != shape[:2] + points.shape[1:-1] or points.shape[0] != shape[0]:
        raise Unproved("a grid_sample of unexpected modes or shapes")
    if not np.isfinite(points).all():
        raise Unproved("a grid_sample grid holding NaN or inf")
    (batch, channels), sizes = shape[:2], shape[2:]
    points = points.reshape(batch, -1, d)  # the grid's last axis is (x, y[, z]): W first
    taps = [_taps(points[..., d - 1 - t], sizes[t], mode, padding, corners)
            for t in range(d)]  # per input axis (D,) H, W: (batch, P, k) positions or NONE
    edge.afford(math.prod(out) * math.prod(p.shape[-1] for p in taps))
    spatial = np.zeros(points.shape[:2] + (1,) * d, dtype=np.int64)
    inside = np.ones_like(spatial, dtype=bool)
    for t, positions in enumerate(taps):
        positions = positions.reshape(points.shape[:2] + (1,) * t + (-1,) + (1,) * (d - 1 - t))
        inside = inside & (positions >= 0)
        spatial = spatial * sizes[t] + positions
    spatial = np.where(inside, spatial, NONE).reshape(batch, 1, points.shape[1], -1)
    planes = np.arange(batch * channels, dtype=np.int64).reshape(batch, channels, 1, 1)
    return along(np.where(spatial >= 0, planes * math.prod(sizes) + spatial, NONE), edge)


def _taps(u: np.ndarray, n: int, mode: str, padding: str, corners: bool) -> np.ndarray:
    """(…, k) int64: the positions along one axis of ``n`` entries that a grid coordinate
    ``u`` (normalised, -1..1 the axis's ends) may read, :data:`.maps.NONE` for none."""
    c = (u + 1) / 2 * (n - 1) if corners else ((u + 1) * n - 1) / 2
    if padding != "reflection":  # far outside stays far outside: the margin of a near point
        c = np.clip(c, -5.0, n + 4.0)
    margin = _MARGIN * (1 + np.abs(c))
    if float(margin.max(initial=0.0)) > 0.25:  # past ~60,000 entries out: not bounded here
        raise Unproved("a grid_sample point too far out for its rounding to be bounded")
    if mode == "cubic":  # taps floor(c) - 1 .. floor(c) + 2, each padded on its own
        first, last = np.floor(c - margin) - 1, np.floor(c + margin) + 2
        positions = first[..., None] + np.arange(5)
        return np.where(positions <= last[..., None], _padded(positions, n, padding, corners),
                        NONE)
    source = _padded(c, n, padding, corners, whole=False)
    if mode == "linear":
        first, last, width = np.floor(source - margin), np.floor(source + margin) + 1, 3
    else:  # nearest: round half to even, either neighbour at a tie
        first, last, width = np.ceil(source - margin - 0.5), np.floor(source + margin + 0.5), 2
    positions = first[..., None] + np.arange(width)
    keep = (positions <= last[..., None]) & (positions >= 0) & (positions <= n - 1)
    return np.where(keep, positions, NONE).astype(np.int64)


def _padded(c: np.ndarray, n: int, padding: str, corners: bool, whole: bool = True):
    """PyTorch's ``compute_coordinates``: ``c`` moved inside by the padding mode (zeros: as
    it is); ``whole``: integer taps, made int64 with those still outside :data:`.maps.NONE`."""
    if padding == "border":
        c = np.clip(c, 0, n - 1)
    elif padding == "reflection":
        low, high = (0, 2 * (n - 1)) if corners else (-1, 2 * n - 1)
        c = np.clip(_reflected(c, low, high), 0, n - 1)
    if not whole:
        return c
    return np.where((c >= 0) & (c <= n - 1), c, NONE).astype(np.int64)


def _reflected(c: np.ndarray, twice_low: int, twice_high: int) -> np.ndarray:
    """PyTorch's ``reflect_coordinates``: ``c`` reflected by the bounds low and high (given
    doubled, as PyTorch gives them) until it lies between them."""
    if twice_low == twice_high:
        return np.zeros_like(c)
    low, span = twice_low / 2, (twice_high - twice_low) / 2
    c = np.abs(c - low)
    extra, flips = np.fmod(c, span), np.floor(c / span)
    return np.where(flips % 2 == 0, extra + low, span - extra + low)
