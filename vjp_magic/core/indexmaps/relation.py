"""Relations from the output's flat entries to one tensor's flat entries (COO index arrays,
``numpy`` int64, rows never decreasing), composed with index maps and joined where branches
meet, all O(nnz) but for one sort where duplicates may appear."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .maps import IndexMap, Unproved

ENTRY_BYTES = 16  # a row and a column index


class Relation(NamedTuple):
    """Output entry ``rows[t]`` reads entry ``cols[t]`` of a tensor of ``width`` entries.
    ``clean``: no pair twice; ``ordered``: pairs sorted by (row, column)."""

    rows: np.ndarray
    cols: np.ndarray
    width: int
    clean: bool = True
    ordered: bool = True

    @property
    def nnz(self) -> int:
        return int(self.cols.size)


def identity(m: int) -> Relation:
    entries = np.arange(m, dtype=np.int64)
    return Relation(entries, entries, m)


def empty(m: int, width: int) -> Relation:
    none = np.zeros(0, dtype=np.int64)
    return Relation(none, none, width)


class Meter:
    """The bytes of index arrays alive at once, refused past ``budget``; ``reads``: the ops
    whose saved selections the rules read on the way (:meth:`.maps.Edge.selection`)."""

    def __init__(self, budget: int):
        self.budget, self.live = budget, 0
        self.reads: list[str] = []

    @property
    def conditional_on(self) -> tuple[str, ...]:
        """The ops whose saved selections were read, each once, in the order met."""
        return tuple(dict.fromkeys(self.reads))

    def check(self, nbytes: int) -> None:
        if self.live + nbytes > self.budget:
            raise Unproved("the index maps exceed the memory budget")

    def add(self, relation: Relation) -> None:
        self.live += relation.nnz * ENTRY_BYTES

    def remove(self, relation: Relation) -> None:
        self.live -= relation.nnz * ENTRY_BYTES


def compose(relation: Relation, index_map: IndexMap | None, width: int,
            meter: Meter) -> Relation:
    """What each output entry reads of the input that ``index_map`` maps into (``width``
    entries), through the tensor ``relation`` ends at. None: the identity."""
    if index_map is None:
        return relation
    table = index_map.table
    if table.shape[0] != relation.width:
        raise Unproved("an index map does not fit the tensor it starts from")
    reads = table.shape[1]
    meter.check(relation.nnz * reads * ENTRY_BYTES + table.nbytes)
    new = table[relation.cols]  # (nnz, reads)
    if reads == 1:
        new = new[:, 0]
        if index_map.partial:
            keep = new >= 0
            rows, cols = relation.rows[keep], new[keep]
        else:
            rows, cols = relation.rows, new
    else:
        keep = new >= 0
        rows = np.broadcast_to(relation.rows[:, None], new.shape)[keep]
        cols = new[keep]
    clean = relation.clean and reads == 1 and index_map.injective
    result = Relation(rows, cols, width, clean, False)
    return result if clean else deduplicated(result)


def union(parts: list[Relation]) -> Relation:
    """The pairs of every part (the same relation reached twice counts once)."""
    distinct = list({id(p): p for p in parts}.values())
    if len(distinct) == 1:
        return distinct[0]
    rows = np.concatenate([p.rows for p in distinct])
    cols = np.concatenate([p.cols for p in distinct])
    return deduplicated(Relation(rows, cols, distinct[0].width, False, False))


def deduplicated(relation: Relation) -> Relation:
    """Each pair once, sorted by (row, column): one stable sort of the pairs' keys (fast on
    the sorted runs that shifts and concatenations leave)."""
    if relation.clean and relation.ordered:
        return relation
    shift = max(relation.width - 1, 1).bit_length()  # keys (row << shift) | column
    if relation.nnz and int(relation.rows[-1] if relation.ordered else relation.rows.max()) \
            >= 2**(62 - shift):
        raise Unproved("too many entries to index")
    keys = relation.rows << shift
    keys |= relation.cols
    keys.sort(kind="stable")
    if keys.size:
        first = np.empty(keys.size, dtype=bool)
        first[0] = True
        np.not_equal(keys[1:], keys[:-1], out=first[1:])
        keys = keys[first]
    cols = keys & ((1 << shift) - 1)
    keys >>= shift
    return Relation(keys, cols, relation.width, True, True)
