"""Shift-like relations kept as a few terms instead of index arrays: while the graph only pads,
slices, rolls, concatenates, splits and maps entries elementwise, output entry ``o`` (a
multi-index) reads entry ``o + d`` of the tensor for each term ``(d, lo, hi)`` whose box
``lo <= o < hi`` holds it. Composing a node maps each term through the node's *pieces*
(``q = p + e`` on a box of positions ``p``), O(terms) whatever the size; the index arrays of
:mod:`.relation` are built once, at x (or where a rule needs them), with every row's columns
already sorted (terms ordered by their flat offset)."""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .maps import Unproved
from .relation import ENTRY_BYTES, Meter, Relation

MAX_TERMS = 64  # more terms than this: the index arrays are cheaper


class Term(NamedTuple):
    """Output ``o`` reads tensor entry ``o + d`` where ``lo <= o < hi`` (per axis)."""

    d: tuple[int, ...]
    lo: tuple[int, ...]
    hi: tuple[int, ...]


class Piece(NamedTuple):
    """A node's map on a box of its output positions: position ``p`` reads input ``p + e``."""

    e: tuple[int, ...]
    lo: tuple[int, ...]
    hi: tuple[int, ...]


class Offsets(NamedTuple):
    """A relation from the output (``out_shape``) to a tensor of ``shape`` as terms."""

    out_shape: tuple[int, ...]
    shape: tuple[int, ...]
    terms: tuple[Term, ...]

    @property
    def width(self) -> int:
        return math.prod(self.shape)

    @property
    def nnz(self) -> int:  # what the meter counts: no index arrays are alive
        return 0


def identity(shape) -> Offsets:
    shape = tuple(int(s) for s in shape)
    zero = (0,) * len(shape)
    terms = (Term(zero, zero, shape),) if all(shape) else ()
    return Offsets(shape, shape, terms)


def whole(shape) -> Piece:
    """The identity as one piece."""
    zero = (0,) * len(shape)
    return Piece(zero, zero, tuple(shape))


def through(relation: Offsets, pieces: list[Piece], in_shape) -> Offsets:
    """The relation through a node whose pieces map the relation's tensor to one of
    ``in_shape``; each piece's box keeps ``p + e`` inside that input."""
    terms = []
    for term in relation.terms:
        for piece in pieces:
            lo = tuple(max(a, b - d) for a, b, d in zip(term.lo, piece.lo, term.d))
            hi = tuple(min(a, b - d) for a, b, d in zip(term.hi, piece.hi, term.d))
            if all(h > low for low, h in zip(lo, hi)):
                terms.append(Term(tuple(d + e for d, e in zip(term.d, piece.e)), lo, hi))
    return _capped(Offsets(relation.out_shape, tuple(int(s) for s in in_shape), tuple(terms)))


def union(parts: list[Offsets]) -> Offsets:
    """Every part's terms (a term reached twice counts once)."""
    first = parts[0]
    if any(p.shape != first.shape or p.out_shape != first.out_shape for p in parts):
        raise Unproved("branches meet at tensors of different shapes")
    terms = tuple(dict.fromkeys(t for p in parts for t in p.terms))
    return _capped(Offsets(first.out_shape, first.shape, terms))


def _capped(relation: Offsets) -> Offsets:
    if len(relation.terms) > MAX_TERMS:
        raise TooMany
    return relation


class TooMany(Exception):
    """More terms than :data:`MAX_TERMS`: convert to index arrays."""


def csr(relation: Offsets, meter: Meter) -> tuple[np.ndarray, np.ndarray]:
    """(per-row counts, columns) of the relation, rows in order and each row's columns sorted,
    without a sort: the distinct offsets in flat order, each with the mask of rows it holds."""
    out, shape = relation.out_shape, relation.shape
    m = math.prod(out)
    strides = np.array([math.prod(shape[a + 1:]) for a in range(len(shape))], dtype=np.int64)
    keys: dict[int, list[Term]] = {}
    for term in relation.terms:
        keys.setdefault(int(np.dot(term.d, strides)) if shape else 0, []).append(term)
    order = sorted(keys)
    meter.check(m * (len(order) + 1) * ENTRY_BYTES)
    if not order:
        return np.zeros(m, dtype=np.int64), np.zeros(0, dtype=np.int64)
    base = _base(out, strides)
    if len(order) == 1 and len(keys[order[0]]) == 1 and _full(keys[order[0]][0], out):
        return np.ones(m, dtype=np.int64), base + order[0]
    masks = np.zeros((m, len(order)), dtype=bool)
    for k, key in enumerate(order):
        view = masks[:, k].reshape(out) if out else masks[:, k]
        for term in keys[key]:
            view[tuple(slice(a, b) for a, b in zip(term.lo, term.hi))] = True
    cols = (base[:, None] + np.array(order, dtype=np.int64)[None, :])[masks]
    return masks.sum(axis=1, dtype=np.int64), cols


def _full(term: Term, out) -> bool:
    return all(a == 0 and b == s for a, b, s in zip(term.lo, term.hi, out))


def _base(out, strides: np.ndarray) -> np.ndarray:
    """The flat tensor index of each output multi-index (offset 0), output order."""
    base = np.zeros((1,) * len(out), dtype=np.int64)
    for a, size in enumerate(out):
        shape = [1] * len(out)
        shape[a] = size
        base = base + (np.arange(size, dtype=np.int64) * strides[a]).reshape(shape)
    return np.broadcast_to(base, out).reshape(-1)


def general(relation: Offsets, meter: Meter) -> Relation:
    """The same relation as index arrays (clean, ordered)."""
    counts, cols = csr(relation, meter)
    rows = np.repeat(np.arange(counts.size, dtype=np.int64), counts)
    return Relation(rows, cols, relation.width)
