"""The walk: from the output's node down to x, every tensor on the way gets the relation
"output entry → the entries of this tensor it reads", each node's rule composed onto the
relation of its output, relations joined where branches meet."""
from __future__ import annotations

import math

import numpy as np
import torch

from .. import capabilities
from ..axisrules import base_name
from ..capabilities import out_shapes
from ..pattern import Pattern, lattice_of, most_per_row
from ..pairing import Evidence
from ..tagging import postorder
from . import copies, offsets
from .maps import Edge, Unproved
from .offsets import Offsets
from .relation import Meter, Relation, compose, deduplicated, empty, identity, union
from .rules import RULES, SHIFTS, VIEWS

X = "x"  # the key of the relation that reaches x itself


def proved_pattern(output: torch.Tensor, x: torch.Tensor, budget: int,
                   dense: bool = False) -> Pattern | None:
    """The sparsity pattern of d output / d x (flat, row-major) proved from the autograd graph,
    for every value of x (no backward pass: ``probes`` is 0), or None: a node on the way has no
    rule (a custom ``autograd.Function``, an op not covered, an attribute this PyTorch does
    not show), the index maps exceed ``budget`` bytes, or a row reads more than
    :func:`..pattern.most_per_row` entries of x (dense: colouring would not pay; ``dense``:
    any number, for a caller that holds the dense Jacobian already)."""
    if output.is_complex() or x.is_complex() or output.layout != torch.strided \
            or x.layout != torch.strided or capabilities.graph_shapes_limitation() is not None:
        return None
    m, n = output.numel(), x.numel()
    meter = Meter(budget)  # the walk's bytes, and the saved selections its rules read
    if output is x:
        relation = identity(m)
    elif output.grad_fn is None:
        relation = empty(m, n)
    else:
        try:
            relation = _walk(output, x, meter)
        except (Unproved, AttributeError, RuntimeError, TypeError, ValueError, IndexError):
            # an attribute missing or not as the rules expect it: claim nothing
            return None
    try:
        diagonals = offsets.diagonal_csr(relation, Meter(budget)) \
            if isinstance(relation, Offsets) else None  # row r reads r + fixed offsets
        if diagonals is not None:
            crow, cols, most, diagonals = diagonals
        else:
            crow, cols, most = _rows(relation, Meter(budget), m)
    except Unproved:
        return None
    if most > most_per_row(n) and not dense:
        return None
    lattice = lattice_of(relation.out_shape, relation.shape, relation.terms) \
        if isinstance(relation, Offsets) else None  # columns flat in relation.shape's order
    return Pattern(torch.from_numpy(crow), torch.from_numpy(cols), (m, n), 0, Evidence.PROVED,
                   lattice, diagonals, meter.conditional_on)


def proved_band(output: torch.Tensor, x: torch.Tensor, axis: int):
    """(rows, columns), row-major and each once: which indices of ``output`` along ``axis``
    may read which of x along the same axis, for every value of x, where every node from the
    output down to x is shift-like (convolutions of stride 1, pads, slices, cat, elementwise
    maps: :mod:`.offsets`), read off the terms without building the flat pattern
    (O(terms × m), whatever the other axes hold: channels, a batch); None where some node is
    not shift-like (its index arrays are not built either), a view changed the tensor's
    shape, or the two differ in rank. The index maps claim every entry an op reads (a zero
    there at this x is still claimed), never fewer."""
    if output.grad_fn is None or output.is_complex() or x.is_complex() \
            or output.layout != torch.strided or x.layout != torch.strided \
            or output.dim() != x.dim() or capabilities.graph_shapes_limitation() is not None:
        return None
    meter = Meter(0)
    meter.terms_only = True  # a node that is not shift-like: Unproved, no index arrays
    try:
        relation = _walk(output, x, meter)
    except (Unproved, AttributeError, RuntimeError, TypeError, ValueError, IndexError):
        return None
    if not isinstance(relation, Offsets) or relation.viewed is not None \
            or relation.out_shape != tuple(output.shape) or relation.shape != tuple(x.shape):
        return None  # (a view of the identity is said in the view's shape: rows of x)
    n = x.shape[axis]
    keys = [torch.zeros(0, dtype=torch.long)]
    for term in relation.terms:  # rows lo..hi along the axis read row + d
        rows = torch.arange(term.lo[axis], term.hi[axis])
        cols = rows + term.d[axis]
        inside = (cols >= 0) & (cols < n)
        keys.append(rows[inside] * n + cols[inside])
    keys = torch.unique(torch.cat(keys))  # sorted: row-major
    return keys // n, keys % n


def _rows(relation, meter: Meter, m: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(crow, columns, the most entries in a row) of the relation that reaches x: built from
    the terms while the graph stayed shift-like, else from the index arrays."""
    if isinstance(relation, Offsets):
        return offsets.csr(relation, meter)
    relation = deduplicated(relation)
    counts = np.bincount(relation.rows, minlength=m)
    crow = np.zeros(m + 1, dtype=np.int64)
    np.cumsum(counts, out=crow[1:])
    return crow, relation.cols, int(counts.max()) if counts.size else 0


def _walk(output: torch.Tensor, x: torch.Tensor, meter: Meter) -> Relation:
    try:
        return _walked(output, x, meter)
    finally:
        copies.forget()  # no graph kept alive by the replies kept for a CopySlices node


def _walked(output: torch.Tensor, x: torch.Tensor, meter: Meter) -> Relation:
    order = postorder(output.grad_fn)
    reach = _reaching(order, x)
    n = x.numel()
    if id(output.grad_fn) not in reach:
        return empty(output.numel(), n)
    pending: dict = {(id(output.grad_fn), output.output_nr): [offsets.identity(output.shape)]}
    for node in reversed(order):
        if id(node) not in reach:
            continue
        shapes = out_shapes(node)
        slots = {}
        for k in range(len(shapes)):
            parts = pending.pop((id(node), k), [])
            for part in parts:
                meter.remove(part)
            if parts:
                slots[k] = _joined(parts, meter)
        if slots:
            _through(node, shapes, slots, x, reach, pending, meter)
    return _joined(pending.get(X, [empty(output.numel(), n)]), meter)


def _joined(parts: list, meter: Meter):
    """The union of the relations reaching one tensor: terms while they all are, else index
    arrays."""
    if len(parts) == 1:
        return parts[0]
    if all(isinstance(p, Offsets) for p in parts):
        try:
            return offsets.union(parts)
        except offsets.NotTerms:
            pass
    return union([_general(p, meter) for p in parts])


def _general(relation, meter: Meter) -> Relation:
    if getattr(meter, "terms_only", False) and isinstance(relation, Offsets):
        raise Unproved("not shift-like: index arrays needed")
    return offsets.general(relation, meter) if isinstance(relation, Offsets) else relation


def _through(node, shapes, slots: dict, x, reach: set, pending: dict, meter: Meter) -> None:
    """Compose each output slot's relation with ``node``'s rule onto each input reaching x."""
    rule = RULES.get(base_name(node))
    if rule is None or isinstance(node, torch.autograd.function.BackwardCFunction):
        raise Unproved(f"no index-map rule for {type(node).__name__}")
    edges = node.next_functions
    in_shapes = [_shape(p, j) for p, j in edges]
    for i, (producer, j) in enumerate(edges):
        if producer is None:
            continue
        if _is_x(producer, j, x):
            target = X
        elif id(producer) in reach:
            target = (id(producer), j)
        else:
            continue
        if in_shapes[i] is None:
            raise Unproved(f"the input of {type(node).__name__} comes from a custom function")
        width = math.prod(in_shapes[i])
        for k, relation in slots.items():
            edge = Edge(node, i, k, in_shapes, shapes, meter.budget, meter.reads)
            composed = _shifted(relation, edge)
            if composed is None:
                slots[k] = relation = _general(relation, meter)
                composed = compose(relation, rule(edge), width, meter)
            meter.add(composed)
            pending.setdefault(target, []).append(composed)


def _shifted(relation, edge: Edge) -> Offsets | None:
    """The terms through a shift-like node; None where the index arrays must take over."""
    shift = SHIFTS.get(edge.name)
    if not isinstance(relation, Offsets) or shift is None:
        return None
    if tuple(edge.out_shape) != relation.tensor_shape:
        raise Unproved("an index map does not fit the tensor it starts from")
    if edge.name in VIEWS:
        return offsets.view(relation, edge.in_shape)
    if relation.viewed is not None:
        return None
    pieces = shift(edge)
    if pieces is None:
        return None
    try:
        return offsets.through(relation, pieces, edge.in_shape)
    except offsets.NotTerms:
        return None


def _shape(producer, index: int):
    """The shape of the tensor an edge carries; None for a constant, or a custom function's
    output (whose node is not read)."""
    if producer is None or isinstance(producer, torch.autograd.function.BackwardCFunction):
        return None
    if type(producer).__name__ == "AccumulateGrad":
        return tuple(producer.variable.shape)
    return out_shapes(producer)[index]


def _is_x(producer, index: int, x: torch.Tensor) -> bool:
    if x.grad_fn is not None:
        return producer is x.grad_fn and index == x.output_nr
    return getattr(producer, "variable", None) is x


def _reaching(order: list, x: torch.Tensor) -> set[int]:
    """The nodes from which x is reached (x's own node excluded: below it all is constant)."""
    reach: set[int] = set()
    for node in order:
        if node is x.grad_fn:
            continue
        if any(p is not None and (_is_x(p, j, x) or id(p) in reach)
               for p, j in node.next_functions):
            reach.add(id(node))
    return reach
