"""The vocabulary every axis rule is written in: :class:`Flow` (what is known about one tensor
of the graph) and the operations on its carries (broadcast, meet, drop axes)."""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Free:
    """A factor of a merged axis that carries no input axis: ``size`` positions that may read
    anything. ``(0, Free(C))`` on an axis of size ``B*C`` (a view merging the batch with an
    uncarried channel axis) says its entry ``i`` reads only input entries whose index along
    axis 0 is ``i // C``."""

    size: int


Carry = tuple  # input axes (ints) and Free factors, row-major: the index a tensor axis carries
AxisMap = dict[int, Carry]

_WRAP = 2**64  # negative dims come back from the C++ side as large unsigned numbers


def proper(carry: Carry) -> bool:
    """Whether ``carry`` names an input axis (a carry of Free factors alone says nothing)."""
    return any(not isinstance(b, Free) for b in carry)


def carry_size(carry: Carry, x_shape) -> int:
    """The number of positions ``carry`` spans (its factors' sizes multiplied)."""
    size = 1
    for b in carry:
        size *= b.size if isinstance(b, Free) else x_shape[b]
    return size


@dataclass
class Flow:
    """What is known about one tensor of the graph: its carries and whether they are exact."""

    shape: tuple[int, ...]
    carries: AxisMap
    exact: bool = True


def to_axis(value: int, ndim: int) -> int:
    """An axis (or an index) from the C++ side as a non-negative one: negative values count
    back from ``ndim``, and come as large unsigned numbers."""
    value = int(value)
    if value >= _WRAP // 2:
        value -= _WRAP
    return value + ndim if value < 0 else value


def to_axes(value, ndim: int) -> list[int]:
    """Axes (None or empty: all of them) as non-negative axes."""
    if value is None:
        return list(range(ndim))
    if isinstance(value, int):
        return [to_axis(value, ndim)]
    dims = [to_axis(v, ndim) for v in value]
    return dims or list(range(ndim))


def base_name(node) -> str:
    """The node's type name without ``Backward<n>``: the key of the rule tables."""
    return _base_name(type(node))


@functools.lru_cache(maxsize=1024)
def _base_name(kind: type) -> str:
    """:func:`base_name` of a node type (each type's name read once)."""
    return re.sub(r"Backward\d*$", "", kind.__name__)


def all_exact(inputs) -> bool:
    """Whether every input that depends on x is exact."""
    return all(f.exact for f in inputs if f is not None)


def meet(out_shape, contributions: list[AxisMap], exact: bool) -> list[Flow]:
    """An output axis keeps a carry only if every input that depends on x agrees on it."""
    if not contributions:
        return [Flow(out_shape, {}, exact)]
    carries = dict(contributions[0])
    for other in contributions[1:]:
        carries = {a: c for a, c in carries.items() if other.get(a) == c}
    return [Flow(out_shape, carries, exact)]


def broadcast(flow: Flow, out_shape) -> AxisMap:
    """Carries of an input broadcast to ``out_shape`` (right-aligned, size-1 axes expand)."""
    shift = len(out_shape) - len(flow.shape)
    return {a + shift: c for a, c in flow.carries.items()
            if 0 <= a + shift < len(out_shape) and flow.shape[a] == out_shape[a + shift]}


def drop_axes(flow: Flow, dropped: set[int], keep_dims: bool) -> AxisMap:
    """Carries after removing (or keeping as size 1) the axes ``dropped``."""
    carries = {}
    for a, c in flow.carries.items():
        if a in dropped:
            continue
        carries[a if keep_dims else a - sum(1 for d in dropped if d < a)] = c
    return carries
