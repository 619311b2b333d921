"""The vocabulary every index-map rule is written in: :class:`Edge` (one forward input of one
node, as a rule sees it) and :class:`IndexMap` (which entries of that input each output entry
reads), built on index grids (``numpy`` int64 arrays of flat row-major input indices)."""
from __future__ import annotations

import math
import re
from typing import NamedTuple

import numpy as np
import torch

from ..axisrules import base_name

NONE = -1  # a table entry that reads nothing (padding, a masked entry, another cat part)
_WRAP = 2**64  # negative ints come back from the C++ side as large unsigned numbers


class Unproved(Exception):
    """A node (or one of its inputs) the rules cannot map exactly: nothing is proved."""


class Edge(NamedTuple):
    """Forward input ``i`` of ``node`` seen from its forward output ``k``."""

    node: object
    i: int
    k: int
    in_shapes: list  # per forward input: its shape, or None for a constant (no edge)
    out_shapes: list  # per forward output
    budget: int = 2**62  # bytes a table may take
    reads: list | None = None  # where :meth:`selection` records the saved selections read

    @property
    def in_shape(self) -> tuple[int, ...]:
        return self.in_shapes[self.i]

    @property
    def out_shape(self) -> tuple[int, ...]:
        return self.out_shapes[self.k]

    @property
    def name(self) -> str:
        return base_name(self.node)

    def afford(self, entries: int) -> None:
        """Refuse (:class:`Unproved`) a table of ``entries`` indices over the budget, before
        it is built."""
        if entries * 8 > self.budget:
            raise Unproved("an index table over the memory budget")

    def saved(self, attribute: str):
        """``node._saved_<attribute>``; a missing one is :class:`Unproved`."""
        try:
            return getattr(self.node, "_saved_" + attribute)
        except (AttributeError, RuntimeError) as error:
            raise Unproved(f"{type(self.node).__name__} has no {attribute}") from error

    def selection(self, attribute: str):
        """A saved index, mask or condition whose VALUES the rule reads (:meth:`saved`), its
        op recorded in ``reads``: those values may have been computed from x itself
        (``x.argsort()``, ``x > 0``), so what the rule proves holds for this graph's
        selections only (:attr:`..pattern.Pattern.conditional_on`)."""
        value = self.saved(attribute)
        if self.reads is not None:
            self.reads.append(selection_name(self.name))
        return value


_NAMES = {"Index": "indexing", "MaxPool2DWithIndices": "max_pool2d",
          "MaxPool3DWithIndices": "max_pool3d", "MaxUnpool2D": "max_unpool2d",
          "MaxUnpool3D": "max_unpool3d", "GridSampler2D": "grid_sample",
          "GridSampler3D": "grid_sample"}


def selection_name(node_name: str) -> str:
    """The op a saved selection belongs to, as the user wrote it: ``IndexSelect`` →
    ``index_select``, ``Index`` → ``indexing``."""
    return _NAMES.get(node_name) or re.sub(r"(?<!^)(?=[A-Z])", "_", node_name).lower()


class IndexMap(NamedTuple):
    """``table[j]``: the flat input entries output entry ``j`` reads (``(out numel, k)``,
    :data:`NONE` padded); ``injective``: no input entry is read twice (k = 1 only)."""

    table: np.ndarray
    injective: bool = False

    @property
    def partial(self) -> bool:
        return bool((self.table < 0).any())


def grid(shape) -> np.ndarray:
    """The flat row-major index of every entry of a tensor of ``shape``."""
    return np.arange(math.prod(shape), dtype=np.int64).reshape(tuple(shape))


def to_int(value) -> int:
    """An int from the C++ side, negative where it came as a large unsigned number."""
    value = int(value)
    return value - _WRAP if value >= _WRAP // 2 else value


def to_axis(value, ndim: int) -> int:
    axis = to_int(value)
    axis = axis + ndim if axis < 0 else axis
    if not 0 <= axis < max(ndim, 1):
        raise Unproved(f"axis {value} of a {ndim}-d tensor")
    return axis


def to_axes(values, ndim: int) -> list[int]:
    """Axes (None or empty: all of them) as non-negative axes."""
    if values is None:
        return list(range(ndim))
    if isinstance(values, int):
        return [to_axis(values, ndim)]
    return [to_axis(v, ndim) for v in values] or list(range(ndim))


def moved(table, out_shape, injective: bool = True) -> IndexMap:
    """An :class:`IndexMap` of one read per entry from a replayed grid, which must have the
    node's output shape (a mismatch means a parameter was misread: nothing is proved)."""
    table = np.asarray(table.numpy() if isinstance(table, torch.Tensor) else table)
    if tuple(table.shape) != tuple(out_shape):
        raise Unproved(f"replayed shape {tuple(table.shape)}, expected {tuple(out_shape)}")
    return IndexMap(np.ascontiguousarray(table, dtype=np.int64).reshape(-1, 1), injective)


def replayed(op, edge: Edge, injective: bool = False) -> IndexMap:
    """The map of a data-moving op replayed in torch on the input's index grid."""
    with torch.no_grad():
        table = op(torch.from_numpy(grid(edge.in_shape)))
    return moved(table, edge.out_shape, injective)


def broadcast(in_shape, out_shape) -> IndexMap | None:
    """Each output entry reads the input entry broadcasting lines up with it (None: the
    identity, same shape)."""
    if tuple(in_shape) == tuple(out_shape):
        return None
    try:
        table = np.broadcast_to(grid(in_shape), tuple(out_shape))
    except ValueError as error:
        raise Unproved(f"{in_shape} does not broadcast to {out_shape}") from error
    return moved(table, out_shape, injective=False)


def along(table: np.ndarray, edge: Edge) -> IndexMap:
    """An :class:`IndexMap` of several reads per entry of the edge's output, ``table`` (…, k)
    in output order (a broadcast view: it is built only within the budget)."""
    out_numel = math.prod(edge.out_shape)
    edge.afford(table.size)
    table = np.ascontiguousarray(table, dtype=np.int64)
    if table.size % max(out_numel, 1) or (out_numel == 0 and table.size):
        raise Unproved("reads do not line up with the output")
    width = table.size // out_numel if out_numel else 0
    return IndexMap(table.reshape(out_numel, width), injective=False)
