"""Blocks along the axis (a batch of groups, packed sequences of equal or unequal lengths)
decoded from set probes at a cost set by the block sizes and the number of blocks, not the
number of rows. Blocks are given by their ``starts``: (K + 1,) long, 0 first and m last.

The sampled rows (read one by one) propose the blocks: each reads an interval that is its
whole block (dense) or its block's start up to itself (lower-triangular). Blocks of one size
follow from the sampled rows alone; blocks of unequal sizes are completed by reading, one by
one, the last row of each stretch of rows no read row has placed yet (:func:`walked`: about
one row per block). Then:

- :func:`crossings`: bit-coded sets of whole blocks (block b's rows where bit t of b is 1,
  and where it is 0: 2·⌈log₂ K⌉ sets for K blocks) reach input indices outside their own
  blocks exactly where some row reads across blocks (for blocks b ≠ b' some set holds b and
  not b'): those input indices are read exactly by the caller;
- :func:`within`: one set per local index k (row k of every block long enough): blocks read disjoint
  input indices, so each answer at j is row (block of j, k)'s own, exactly (the longest
  block's size in sets);
- :func:`later_reads`: where s sets cost too much, the lower-triangular blocks are bounded:
  sets of the rows below a local cut c in every block must reach nothing at or past c in
  any block (a row reading a later index of its own sequence).
"""
from __future__ import annotations

import math

import torch

from .setdecode import bit_sets

CROSSED = 64  # at most this many input indices read across blocks, read exactly (forward),
# or output indices reading across blocks (bounded blocks: found by sets, read one by one)
CROSSED_BLOCKS = 8  # ... of at most this many blocks whose indices are read across
EXACT_SIZE = 16  # blocks up to this size are read row by row exactly (2 vectors a local index)


WALKED_ROWS = 128  # rows read one by one to place unequal blocks, at most (a count)


def uniform(size: int, m: int) -> torch.Tensor:
    """The starts of blocks of ``size``."""
    return torch.arange(0, m + 1, size)


def sizes(starts: torch.Tensor) -> tuple[int, ...]:
    return tuple(starts.diff().tolist())


def block_of(starts: torch.Tensor, count: int) -> torch.Tensor:
    """(count,) long: the block of each index."""
    return torch.searchsorted(starts[1:], torch.arange(count), right=True)


def local(starts: torch.Tensor, count: int) -> torch.Tensor:
    """(count,) long: each index's place in its block."""
    return torch.arange(count) - starts[block_of(starts, count)]


def _intervals(sample: torch.Tensor, rows: torch.Tensor, n: int):
    """(first, last) input index each row reads, or None where some row reads nothing or
    not an interval."""
    count = rows.sum(1)
    if bool((count == 0).any()):
        return None
    first = rows.to(torch.uint8).argmax(1)
    last = n - 1 - rows.flip(1).to(torch.uint8).argmax(1)
    if not torch.equal(last - first + 1, count):  # not an interval
        return None
    return first, last


def proposed(sample: torch.Tensor, rows: torch.Tensor, m: int, n: int):
    """(starts of blocks of one size s, lower-triangular) that the sampled rows ``rows``
    (len(sample) × n) read exactly, or None: square, at least two blocks of two or more,
    every sampled row an interval starting at its block's first index and ending at its
    block's last (dense) or at itself (lower-triangular)."""
    if m != n or m < 4 or not len(sample):
        return None
    found = _intervals(sample, rows, n)
    if found is None:
        return None
    first, last = found
    lower = bool((last == sample).all())
    ends = [] if lower else (last + 1).tolist()
    size = math.gcd(m, *first.tolist(), *ends)
    if size < 2 or size >= m:
        return None
    start = sample // size * size
    end = sample if lower else start + size - 1
    if not (torch.equal(first, start) and torch.equal(last, end)):
        return None
    return uniform(size, m), lower


def walked(prober, sample: torch.Tensor, rows: torch.Tensor, m: int, n: int):
    """(starts of blocks of unequal sizes, lower-triangular, the rows read and what they
    read) that the sampled rows and rows read one by one place, or None (as
    :func:`proposed`; or past :data:`WALKED_ROWS` rows). A read row r reading [s, e] places
    rows s..r (lower-triangular) or s..e (dense) in one block starting at s; each stretch of
    rows not placed gets its last row read, until every row is placed: about one row per
    block, in rounds of one batched call."""
    if m != n or m < 4 or not len(sample):
        return None
    read_rows, read = sample, rows
    found = _intervals(read_rows, read, n)
    if found is None or m > WALKED_ROWS * float((found[1] - found[0] + 1).float().mean()):
        return None  # rows reading a few indices each: blocks too many to place one by one
    lower = bool((found[1] == read_rows).all())
    while True:
        block = _placed(read_rows, *found, m, lower)
        if block is None:
            return None
        open_ = (block < 0).nonzero().flatten()
        if not open_.numel():
            break
        ends = open_[torch.cat([open_[1:] - open_[:-1] != 1, torch.tensor([True])])]
        if len(read_rows) + len(ends) > WALKED_ROWS:
            return None
        hits = prober.row_hits(ends, firm=False)
        read_rows, read = torch.cat([read_rows, ends]), torch.cat([read, hits])
        found = _intervals(read_rows, read, n)
        if found is None or not lower and bool((found[1] < read_rows).any()):
            return None
    starts = torch.cat([(block.diff() != 0).nonzero().flatten() + 1, torch.tensor([0, m])])
    starts = starts.unique()
    if len(starts) < 3 or int((starts.diff() >= 2).sum()) < 2:
        return None
    return starts, lower, read_rows, read


def _placed(rows, first, last, m: int, lower: bool):
    """(m,) long: the block start each row is placed in (-1: not yet), or None where two
    read rows place a row in different blocks, or a row's read does not hold it."""
    if bool((first > rows).any()) or lower and not torch.equal(last, rows):
        return None
    block = torch.full((m,), -1, dtype=torch.long)
    order = torch.argsort(first)
    for row, start, end in zip(rows[order].tolist(), first[order].tolist(),
                               (rows if lower else last)[order].tolist()):
        if end < row:
            return None
        span = block[start:end + 1]
        if bool(((span >= 0) & (span != start)).any()):
            return None
        span[:] = start
    starts = block[block >= 0]
    if bool((starts[1:] < starts[:-1]).any()):  # a block inside another
        return None
    return block


def block_sets(sets: torch.Tensor, starts: torch.Tensor, m: int) -> torch.Tensor:
    """(k × blocks) sets of blocks → (k × m) sets of their rows."""
    return sets[:, block_of(starts, m)]


def crossings(prober, starts: torch.Tensor, m: int, n: int) -> torch.Tensor | None:
    """(n,) bool: the input indices some row of another block reads (by bit-coded sets of
    whole blocks); None where a plain backward of the first set disagrees with the batched
    one (a batching rule gone wrong)."""
    blocks = len(starts) - 1
    sets = bit_sets(blocks, max((blocks - 1).bit_length(), 1))
    rows = block_sets(sets, starts, m)
    reached = prober.hits(rows)
    plain = prober.hits(rows[:1], batched=False)
    known = ~prober.unknown
    if not torch.equal(plain[:, known], reached[:1, known]):
        return None
    claimed_ = block_sets(sets, starts, n)
    return (reached & ~claimed_).any(0)


def within(prober, starts: torch.Tensor, m: int, n: int) -> torch.Tensor:
    """(m × n) bool: every row read exactly, by one set per local index (row k of every
    block that long), answers that do not scale with a rescaled probe left out as rounding.
    Exact where no row reads across blocks (:func:`crossings`; those input indices are read
    again)."""
    lanes = torch.arange(max(sizes(starts)))
    sets = local(starts, m)[None, :] == lanes[:, None]
    hit, rounded = prober.firm_hits(sets)
    block = block_of(starts, n)
    rows = starts[block][None, :] + lanes[:, None]  # row k of input index j's block
    held = lanes[:, None] < starts.diff()[block][None, :]  # ... where that block has one
    hit, rounded = hit & held, rounded & held
    cols = torch.arange(n)[None, :].expand(len(lanes), n)
    pattern = torch.zeros(m, n, dtype=torch.bool)
    pattern[rows[hit], cols[hit]] = True
    for row, column in zip(rows[rounded].tolist(), cols[rounded].tolist()):
        prober.rounded[(row, column)] = None
    return pattern


def claimed(starts: torch.Tensor, m: int, lower: bool) -> torch.Tensor:
    """(m × m) bool: the blocks, dense or lower-triangular."""
    index, block = torch.arange(m), block_of(starts, m)
    same = block[:, None] == block[None, :]
    return same & (index[None, :] <= index[:, None]) if lower else same


def single_readers(prober, m: int, columns: torch.Tensor, owner) -> torch.Tensor | None:
    """(k,) long: the output indices reading ``columns`` from outside each column's own rows
    (``owner``: (start, end) tensors), where each column has one such reader: its index
    read off bit-coded sets of rows (row r in set t where bit t of r is 1, each column's own
    rows left out: ⌈log₂ m⌉ sets an owner), then that row read to confirm it. None where
    some column's code names a row that does not read it (several readers: the caller
    halves). A second reader whose bits the first's cover is not seen here: the caller's
    independent check (bit-coded sets of blocks renumbered, fresh values) finds its column."""
    bits = max((m - 1).bit_length(), 1)
    index = torch.arange(m)
    coded = ((index[None, :] >> torch.arange(bits)[:, None]) & 1).bool()
    pairs, group = torch.stack(owner, 1).unique(dim=0, return_inverse=True)
    owned = (index[None, :] >= pairs[:, :1]) & (index[None, :] < pairs[:, 1:])
    sets = (coded[None, :, :] & ~owned[:, None, :]).reshape(-1, m)
    reached = prober.hits(sets)[:, columns].reshape(len(pairs), bits, len(columns))
    code = reached[group, :, torch.arange(len(columns))]  # (columns × bits)
    rows = (code.long() << torch.arange(bits)).sum(1)
    if bool(prober.unknown.any()) or bool((rows >= m).any()) or bool(owned[group, rows.clamp(
            max=m - 1)].any()):
        return None
    readers, at = rows.unique(return_inverse=True)
    if len(readers) > CROSSED:
        return None
    read = prober.row_hits(readers, firm=False)
    if not bool(read[at, columns].all()):
        return None
    return readers


def later_reads(prober, starts: torch.Tensor, m: int, n: int, count: int):
    """((n,) bool input indices some row reads at a later local index of its own block, the
    cut spacing g): sets of the rows below local cut c (every g) in all blocks reach only
    local indices below c where the blocks are lower-triangular; a later read at least g
    indices ahead is always found, a nearer one on a row not read is not ruled out."""
    longest = max(sizes(starts))
    gap = max(1, -(-longest // (count + 1)))
    cuts = torch.arange(gap, longest, gap)
    sets = local(starts, m)[None, :] < cuts[:, None]
    reached = prober.hits(sets) if len(cuts) else torch.zeros(0, n, dtype=torch.bool)
    beyond = local(starts, n)[None, :] >= cuts[:, None]
    return (reached & beyond).any(0), gap, len(cuts)
