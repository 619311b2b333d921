"""The sparsity pattern of a Hessian proved from the FIRST-order graph, where the scalar is a
sum of terms: y = Σ_i t_i (a ``sum`` or ``mean`` of a tensor t, scaled by constants, added to
others) gives H = Σ_i ∇²t_i, and t_i reads only the entries S_i of x that row i of t's proved
Jacobian pattern names (:mod:`.walk`: the rules never miss an entry read), so ∇²t_i lives on
S_i × S_i and the pattern of H is the union of those squares (with the diagonal), for every x.
Shift-like terms (:mod:`.offsets`) give it in O(terms²): t's reads ``o + d_a`` and ``o + d_b``
pair row ``o + d_a`` with offset ``d_b - d_a``; other relations pair each row's columns.
Nothing is run: no backward pass, no walk of the double-backward graph."""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from ..axisrules import base_name
from ..pairing import Evidence
from ..pattern import Pattern, most_per_row
from ..tagging import postorder
from . import offsets
from .maps import Unproved
from .offsets import Offsets, Term
from .relation import ENTRY_BYTES, Meter
from .walk import _is_x, _reaching, _rows, _shape, _walk

MAX_TERMS = 64  # summed branches walked one by one: more, and the general path is cheaper
MAX_PAIRS = 50_000_000  # (a, b) pairs read by one term, summed over terms: past it, unproved
# Scalar nodes whose value is a constant-weighted sum of their inputs that reach x.
_SUMS = {"Sum", "Mean"}
_LINEAR = {"Add", "Sub"}
_SCALED = {"Mul", "Div"}  # linear in the one input that reaches x (the numerator for Div)
_PASSING = {"Neg", "Clone", "View", "Reshape", "ReshapeAlias", "Squeeze", "Unsqueeze",
            "Expand", "Alias", "ToCopy"}


class SummedPattern(NamedTuple):
    """The proved pattern of H (symmetric, its whole diagonal present); ``offsets``: the flat
    column offsets every row's columns are drawn from (row j reads j + d), where the terms
    were shift-like, else None."""

    pattern: Pattern
    offsets: np.ndarray | None


class _Start(NamedTuple):
    """A tensor on the graph known by its node and slot (what :func:`.walk._walk` reads)."""

    grad_fn: object
    output_nr: int
    shape: tuple[int, ...]

    def numel(self) -> int:
        return math.prod(self.shape)


def summed_hessian_pattern(output: torch.Tensor, x: torch.Tensor,
                           budget: int) -> SummedPattern | None:
    """The pattern of ∂²output/∂x² (n × n, flat row-major) for a scalar ``output`` that sums
    terms (module docstring), proved for every x; None where the graph is not so, a node has
    no rule, the pairs exceed ``budget`` bytes, or a row is too dense to colour."""
    if output.numel() != 1 or output.grad_fn is None or output.is_complex() \
            or x.is_complex() or x.layout != torch.strided:
        return None
    n = x.numel()
    meter = Meter(budget)
    try:
        starts = _summed_terms(output, x)
        if starts is None:
            return None
        relations = [offsets.identity(tuple(x.shape)) if s is None else _walk(s, x, meter)
                     for s in starts]
        relations = [r for r in relations if not _one_entry_each(r)] or relations[:1]
        found = _from_offsets(relations, meter) if all(
            isinstance(r, Offsets) for r in relations) else None
        if found is None:
            sizes = [n if s is None else s.numel() for s in starts]
            found = (_from_rows(relations, sizes, meter, n), None)
    except (Unproved, AttributeError, RuntimeError, TypeError, ValueError, IndexError):
        return None
    (crow, cols, most), flat = found
    if most > most_per_row(n):
        return None
    pattern = Pattern(torch.from_numpy(crow), torch.from_numpy(cols), (n, n), 0,
                      Evidence.PROVED, conditional_on=meter.conditional_on)
    return SummedPattern(pattern, flat)


def depends(tensor: torch.Tensor, x: torch.Tensor) -> bool:
    """Whether the graph of ``tensor`` reaches x (a gradient that does not: f is linear)."""
    node = tensor.grad_fn
    if node is None:
        return False
    return (_is_x(node, tensor.output_nr, x) if x.grad_fn is not None else False) or \
        id(node) in _reaching(postorder(node), x)


def _summed_terms(output: torch.Tensor, x: torch.Tensor) -> list | None:
    """The tensors whose entries y sums (``_Start``s; None in the list for x itself), from
    the output down through sums, means, additions and constant factors; a scalar branch
    that is none of these is a term of one entry. None: more than :data:`MAX_TERMS`."""
    reach = _reaching(postorder(output.grad_fn), x)

    def reaches(edge) -> bool:
        producer, j = edge
        return producer is not None and (_is_x(producer, j, x) or id(producer) in reach)

    starts, stack, seen = [], [(output.grad_fn, output.output_nr)], set()
    while stack:
        edge = stack.pop()
        if (id(edge[0]), edge[1]) in seen or not reaches(edge):
            continue
        seen.add((id(edge[0]), edge[1]))
        producer, j = edge
        name = "" if _is_x(producer, j, x) else base_name(producer)
        inputs = [e for e in producer.next_functions if reaches(e)] if name else []
        if name in _SUMS and len(inputs) == 1:
            starts.append(_term(inputs[0], x))
        elif name in _LINEAR or (name in _PASSING and len(inputs) == 1):
            stack.extend(inputs)
        elif name in _SCALED and len(inputs) == 1 and \
                (name == "Mul" or producer.next_functions[0] == inputs[0]):
            stack.extend(inputs)
        else:
            starts.append(_term(edge, x))
        if len(starts) > MAX_TERMS:
            return None
    return starts


def _term(edge, x: torch.Tensor) -> _Start | None:
    producer, j = edge
    if _is_x(producer, j, x):
        return None
    shape = _shape(producer, j)
    if shape is None:
        raise Unproved("a summed term comes from a custom function")
    return _Start(producer, j, tuple(shape))


def _one_entry_each(relation) -> bool:
    """Whether every entry of the term reads one entry of x (one offset): its Hessians lie on
    the diagonal, which the pattern holds anyway."""
    return isinstance(relation, Offsets) and relation.viewed is None and \
        len({t.d for t in relation.terms}) <= 1


def _from_offsets(relations: list, meter: Meter):
    """((crow, columns, most per row), flat offsets) of ∪ S_i × S_i from shift-like terms,
    in the coordinates the terms reach x in; None where they differ or are too many."""
    shape = relations[0].shape
    if any(r.shape != shape for r in relations):
        return None
    pairs = list(offsets.identity(shape).terms)  # the diagonal, whole
    for relation in relations:
        for a in relation.terms:
            for b in relation.terms:
                lo = tuple(max(p, q) for p, q in zip(a.lo, b.lo))
                hi = tuple(min(p, q) for p, q in zip(a.hi, b.hi))
                if all(h > low for low, h in zip(lo, hi)):
                    pairs.append(Term(tuple(q - p for p, q in zip(a.d, b.d)),
                                      tuple(p + d for p, d in zip(lo, a.d)),
                                      tuple(p + d for p, d in zip(hi, a.d))))
        if len(pairs) > 8 * offsets.MAX_TERMS:
            return None
    try:
        hessian = offsets.union([Offsets(shape, shape, tuple(pairs))])
    except offsets.NotTerms:
        return None
    strides = [math.prod(shape[a + 1:]) for a in range(len(shape))]
    flat = np.array(sorted({sum(d * s for d, s in zip(t.d, strides)) for t in hessian.terms}),
                    dtype=np.int64)
    return offsets.csr(hessian, meter), flat


def _from_rows(relations: list, sizes: list[int], meter: Meter, n: int):
    """(crow, columns, most per row) of ∪ S_i × S_i and the diagonal from index arrays: every
    pair of columns within a row of each term's pattern, sorted once."""
    keys = [np.arange(n, dtype=np.int64) * (n + 1)]
    for relation, m in zip(relations, sizes):
        crow, cols, _ = _rows(relation, meter, m)
        counts = np.diff(crow)
        if counts.size and int(counts.max()) > most_per_row(n):
            raise Unproved("a term reads too much of x: its Hessian is dense")
        total = int((counts * counts).sum())
        if total > MAX_PAIRS:
            raise Unproved("too many pairs of entries read by one term")
        meter.check((total + sum(k.size for k in keys)) * ENTRY_BYTES)
        keys.append(_row_pairs(crow, cols, counts, total, n))
    merged = np.concatenate(keys)
    merged.sort()
    merged = merged[np.concatenate([[True], merged[1:] != merged[:-1]])]
    rows = merged // n
    crow = np.zeros(n + 1, dtype=np.int64)
    per_row = np.bincount(rows, minlength=n)
    np.cumsum(per_row, out=crow[1:])
    return crow, merged - rows * n, int(per_row.max()) if n else 0


def _row_pairs(crow, cols, counts, total: int, n: int) -> np.ndarray:
    """Keys a·n + b of every (a, b) with a and b in one row's columns."""
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    times = np.repeat(counts, counts)  # each nonzero once per column of its row
    first = np.repeat(np.arange(cols.size, dtype=np.int64), times)
    row_start = np.repeat(np.repeat(crow[:-1], counts), times)
    within = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(times) - times, times)
    return cols[first] * n + cols[row_start + within]
