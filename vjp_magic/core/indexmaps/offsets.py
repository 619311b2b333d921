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
import torch

from .maps import Unproved
from .relation import ENTRY_BYTES, Meter, Relation

MAX_TERMS = 512  # more terms than this: the index arrays are cheaper


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
    """A relation from the output (``out_shape``) to a tensor as terms over its multi-index
    in ``shape``; ``viewed``: the tensor's own shape where a view (same flat order) made it
    another one (no further piece applies then: only its flat indices)."""

    out_shape: tuple[int, ...]
    shape: tuple[int, ...]
    terms: tuple[Term, ...]
    viewed: tuple[int, ...] | None = None

    @property
    def tensor_shape(self) -> tuple[int, ...]:
        return self.shape if self.viewed is None else self.viewed

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
    if len(relation.terms) * len(pieces) > 8 * MAX_TERMS:
        raise NotTerms
    terms = []
    for term in relation.terms:
        for piece in pieces:
            lo = tuple(max(a, b - d) for a, b, d in zip(term.lo, piece.lo, term.d))
            hi = tuple(min(a, b - d) for a, b, d in zip(term.hi, piece.hi, term.d))
            if all(h > low for low, h in zip(lo, hi)):
                terms.append(Term(tuple(d + e for d, e in zip(term.d, piece.e)), lo, hi))
    return _capped(Offsets(relation.out_shape, tuple(int(s) for s in in_shape), _merged(terms)))


def view(relation: Offsets, in_shape) -> Offsets:
    """Through a view (reshape, squeeze, …: the same flat order) onto ``in_shape``."""
    in_shape = tuple(int(s) for s in in_shape)
    if math.prod(in_shape) != relation.width:
        raise Unproved("a view that changes the number of entries")
    if relation.viewed is None and relation.out_shape == relation.shape \
            and relation.terms == identity(relation.shape).terms:
        return identity(in_shape)  # rows read in the view's shape: the same flat order
    return relation._replace(viewed=None if in_shape == relation.shape else in_shape)


def union(parts: list[Offsets]) -> Offsets:
    """Every part's terms (a term reached twice counts once)."""
    first = parts[0]
    if any(p.shape != first.shape or p.out_shape != first.out_shape
           or p.viewed != first.viewed for p in parts):
        raise NotTerms  # in other coordinates: the index arrays join them
    return _capped(first._replace(terms=_merged([t for p in parts for t in p.terms])))


def _merged(terms) -> tuple[Term, ...]:
    """The same terms, fewer: each offset's boxes without those inside another, and boxes
    that differ along one axis only, overlapping or touching there, made one."""
    if len(terms) > 8 * MAX_TERMS:
        raise NotTerms
    boxes: dict[tuple, list] = {}
    for term in dict.fromkeys(terms):
        boxes.setdefault(term.d, []).append((term.lo, term.hi))
    return tuple(Term(d, lo, hi) for d, group in boxes.items() for lo, hi in _fewer(group))


def _fewer(boxes: list) -> list:
    done: list = []
    while boxes:
        box = boxes.pop()
        for k, other in enumerate(done + boxes):
            joined = _joined_box(box, other)
            if joined is not None:
                (done if k < len(done) else boxes).remove(other)
                boxes.append(joined)
                break
        else:
            done.append(box)
    return done


def _joined_box(a, b):
    """One box covering exactly ``a`` and ``b``, or None."""
    (alo, ahi), (blo, bhi) = a, b
    if all(x <= y for x, y in zip(alo, blo)) and all(x >= y for x, y in zip(ahi, bhi)):
        return a
    if all(x >= y for x, y in zip(alo, blo)) and all(x <= y for x, y in zip(ahi, bhi)):
        return b
    differ = [t for t in range(len(alo)) if (alo[t], ahi[t]) != (blo[t], bhi[t])]
    if len(differ) != 1:
        return None
    t = differ[0]
    if max(alo[t], blo[t]) > min(ahi[t], bhi[t]):
        return None
    lo, hi = list(alo), list(ahi)
    lo[t], hi[t] = min(alo[t], blo[t]), max(ahi[t], bhi[t])
    return tuple(lo), tuple(hi)


def _capped(relation: Offsets) -> Offsets:
    if len(relation.terms) > MAX_TERMS:
        raise NotTerms
    return relation


class NotTerms(Exception):
    """More terms than :data:`MAX_TERMS`, or parts in other coordinates: convert to index
    arrays."""


def csr(relation: Offsets, meter: Meter) -> tuple[np.ndarray, np.ndarray, int]:
    """(crow, columns, the most entries in a row) of the relation, rows in order and each
    row's columns sorted, without a sort: the distinct offsets in flat order, and runs of rows
    that hold the same offsets written whole."""
    out, shape = relation.out_shape, relation.shape
    m = math.prod(out)
    strides = np.array([math.prod(shape[a + 1:]) for a in range(len(shape))], dtype=np.int64)
    keys: dict[int, list[Term]] = {}
    for term in relation.terms:
        keys.setdefault(int(np.dot(term.d, strides)) if shape else 0, []).append(term)
    order = np.array(sorted(keys), dtype=np.int64)
    meter.check(m * (order.size + 2) * ENTRY_BYTES)
    base = np.arange(m, dtype=np.int64) if shape == out else _base(out, strides)
    crow = np.zeros(m + 1, dtype=np.int64)
    if order.size == 1 and len(keys[int(order[0])]) == 1 and _full(keys[int(order[0])][0], out):
        crow[1:] = np.arange(1, m + 1)
        return crow, base + order[0], 1
    if order.size == 0 or order.size > 63:
        return _by_masks(keys, order, out, base, crow)
    signature = _signatures(keys, order, out, m)
    bounds = np.concatenate([[0], np.flatnonzero(signature[1:] != signature[:-1]) + 1, [m]])
    lengths, held = np.diff(bounds), _popcount(signature[bounds[:-1]], order.size)
    first = np.concatenate([[0], np.cumsum(held * lengths)])  # crow where each run starts
    cols = np.empty(int(first[-1]), dtype=np.int64)
    long = lengths >= LONG_RUN
    chosen = np.flatnonzero(long)
    held_by: dict[int, list[int]] = {}  # signature → its offsets
    for r0, r1, c, at, value in zip(bounds[chosen].tolist(), bounds[chosen + 1].tolist(),
                                    held[chosen].tolist(), first[chosen].tolist(),
                                    signature[bounds[chosen]].tolist()):
        crow[r0 + 1:r1 + 1] = np.arange(at + c, at + c * (r1 - r0) + 1, c) if c else at
        block = cols[at:at + c * (r1 - r0)].reshape(r1 - r0, c)
        if value not in held_by:
            held_by[value] = order[_bits(value, order.size)].tolist()
        for k, key in enumerate(held_by[value]):
            np.add(base[r0:r1], key, out=block[:, k])  # one offset at a time: long loops
    _short_runs(signature, order, base, crow, cols, (bounds, lengths, held, first, ~long))
    return crow, cols, int(held.max()) if m else 0


def diagonal_csr(relation: Offsets, meter: Meter):
    """(crow, columns, the most entries in a row, :class:`..pattern.Diagonals`) of a relation
    whose row r reads r + a few fixed flat offsets (the output and the tensor alike past
    their first axis, so the tensor's flat index of row o is r), or None (not so, more than
    :data:`MOST_DIAGONALS` offsets, or more than a quarter of the diagonals' entries off the
    pattern: :func:`csr` then). The columns are the (m × K) array r + keys[k] with the
    missing positions deleted: no per-row work beyond one pass."""
    from ..pattern import Diagonals, deleted  # the pattern module builds on the index maps

    out, shape = relation.out_shape, relation.shape
    if not out or len(out) != len(shape) or tuple(out[1:]) != tuple(shape[1:]):
        return None
    strides = [math.prod(shape[a + 1:]) for a in range(len(shape))]
    keys: dict[int, list[Term]] = {}
    for term in relation.terms:
        keys.setdefault(sum(d * s for d, s in zip(term.d, strides)), []).append(term)
    order = np.array(sorted(keys), dtype=np.int64)
    m, k = math.prod(out), order.size
    if k == 0 or k > MOST_DIAGONALS or m == 0:
        return None
    meter.check(m * (k + 2) * ENTRY_BYTES)
    missing = _missing(keys, order, out, m)
    if missing is None:
        return None
    rows, counts = np.unique(missing // k, return_counts=True)
    most = k - int(counts.min()) if len(rows) == m and m else k
    crow = _diagonal_crow(rows, counts, m, k)
    cols = deleted(diagonal_columns(order, m), missing)
    return crow, cols, most, Diagonals(order, missing, most)


def diagonal_columns(keys: np.ndarray, m: int) -> np.ndarray:
    """r + keys[k] for r < m, row-major (m·K, int64), by doubling: rows [L, 2L) are rows
    [0, L) plus L, one contiguous add each (numpy's broadcast add over a short last axis,
    or one add per strided column, is 2 to 6 times slower); the large adds by torch into
    numpy's memory (as fast on one thread, split over the threads torch has; its own fresh
    memory costs more)."""
    cols = np.empty((m, keys.size), dtype=np.int64)
    if m:
        cols[0] = keys
    filled, shared = 1, torch.from_numpy(cols)
    while filled < m:
        step = min(filled, m - filled)
        if step * keys.size < PARALLEL_ENTRIES:
            np.add(cols[:step], filled, out=cols[filled:filled + step])
        else:
            torch.add(shared[:step], filled, out=shared[filled:filled + step])
        filled += step
    return cols.reshape(-1)


PARALLEL_ENTRIES = 1 << 16  # adds this large go to torch (its grain: 32,768 entries a thread)


MOST_DIAGONALS = 64


def _missing(keys: dict, order: np.ndarray, out, m: int) -> np.ndarray | None:
    """The ascending positions r·K + k of the rows r outside every box of offset
    ``order[k]``; None where they are more than a quarter of m·K."""
    k, parts, count = order.size, [], 0
    for index, key in enumerate(order.tolist()):
        terms = keys[key]
        if len(terms) == 1:
            rows = _outside(terms[0], out)
        else:
            has = np.zeros(out, dtype=bool)
            for term in terms:
                has[tuple(slice(a, b) for a, b in zip(term.lo, term.hi))] = True
            rows = np.flatnonzero(~has.reshape(-1))
        count += len(rows)
        if count * 4 > m * k:
            return None
        parts.append(rows * k + index)
    return np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)


def _outside(term: Term, out) -> np.ndarray:
    """The flat row indices outside the term's box: for each axis a, the rows inside the box
    on the axes before a and outside it on a (disjoint slabs), each a product of ranges."""
    strides = [math.prod(out[a + 1:]) for a in range(len(out))]
    slabs = []
    for a in range(len(out)):
        outside = np.concatenate([np.arange(0, term.lo[a]), np.arange(term.hi[a], out[a])])
        if outside.size == 0:
            continue
        ranges = [np.arange(term.lo[b], term.hi[b]) for b in range(a)] + [outside] + \
            [np.arange(out[b]) for b in range(a + 1, len(out))]
        flat = np.zeros((1,) * len(out), dtype=np.int64)
        for b, values in enumerate(ranges):
            shape = [1] * len(out)
            shape[b] = values.size
            flat = flat + (values.astype(np.int64) * strides[b]).reshape(shape)
        slabs.append(flat.reshape(-1))
    return np.concatenate(slabs) if slabs else np.zeros(0, dtype=np.int64)


def _diagonal_crow(rows: np.ndarray, counts: np.ndarray, m: int, k: int) -> np.ndarray:
    """crow of the diagonals' pattern: (r + 1)·K less the missing entries in rows ≤ r
    (``rows``: those with some missing, ascending; ``counts``: how many each)."""
    crow = np.empty(m + 1, dtype=np.int64)
    if len(rows) <= 2:  # a 1-D stencil (its first and last rows): one arange per stretch
        at, less = 0, 0
        for row, count in [*zip(rows.tolist(), counts.tolist()), (m, 0)]:
            torch.arange(at * k - less, (row + 1) * k - less, k,
                         out=torch.from_numpy(crow[at:row + 1]))
            at, less = row + 1, less + count
        return crow
    torch.arange(0, (m + 1) * k, k, out=torch.from_numpy(crow))
    correction = np.zeros(m + 1, dtype=np.int64)
    correction[rows + 1] = counts
    np.cumsum(correction, out=correction)
    crow -= correction
    return crow


def _short_runs(signature, order, base, crow, cols, runs) -> None:
    """crow and columns of the rows in short runs, all rows of one signature at once."""
    bounds, lengths, held, first, short = runs
    run = np.repeat(np.flatnonzero(short), lengths[short])
    rows = np.flatnonzero(np.repeat(short, lengths))
    starts = first[run] + (rows - bounds[run]) * held[run]  # crow at each of these rows
    crow[rows + 1] = starts + held[run]
    values = signature[rows]
    for value in np.unique(values).tolist():
        chosen = values == value
        offsets = order[_bits(value, order.size)]
        at = starts[chosen][:, None] + np.arange(offsets.size)[None, :]
        cols[at] = base[rows[chosen]][:, None] + offsets[None, :]


LONG_RUN = 32  # rows holding the same offsets written as one block


def _bits(value: int, k: int) -> np.ndarray:
    return np.array([(value >> b) & 1 for b in range(k)], dtype=bool)


def _signatures(keys: dict, order: np.ndarray, out, m: int) -> np.ndarray:
    """Per output entry, bit k set where offset ``order[k]`` holds it (in some term's box):
    one pass over each box (overlapping boxes of one offset set the same bit)."""
    signature = np.zeros(m, dtype=np.uint8 if order.size <= 8 else np.uint64)
    view = signature.reshape(out) if out else signature
    for k, key in enumerate(order.tolist()):
        bit = signature.dtype.type(1 << k)
        for term in keys[key]:
            view[tuple(slice(a, b) for a, b in zip(term.lo, term.hi))] |= bit
    return signature


_POPCOUNT = np.array([bin(v).count("1") for v in range(256)], dtype=np.int64)


def _popcount(signature: np.ndarray, k: int) -> np.ndarray:
    if signature.dtype == np.uint8:
        return _POPCOUNT[signature]
    counts = np.zeros(signature.size, dtype=np.int64)
    for b in range(k):
        counts += ((signature >> np.uint64(b)) & np.uint64(1)).astype(np.int64)
    return counts


def _by_masks(keys: dict, order: np.ndarray, out, base: np.ndarray,
              crow: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """The same from one mask per offset (no offsets, or more than a signature holds)."""
    m = base.size
    masks = np.zeros((m, order.size), dtype=bool)
    for k, key in enumerate(order.tolist()):
        view = masks[:, k].reshape(out) if out else masks[:, k]
        for term in keys[key]:
            view[tuple(slice(a, b) for a, b in zip(term.lo, term.hi))] = True
    counts = masks.sum(axis=1, dtype=np.int64)
    np.cumsum(counts, out=crow[1:])
    cols = (base[:, None] + order[None, :])[masks]
    return crow, cols, int(counts.max()) if m else 0


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
    crow, cols, _ = csr(relation, meter)
    rows = np.repeat(np.arange(crow.size - 1, dtype=np.int64), np.diff(crow))
    return Relation(rows, cols, relation.width)
