"""Blocks along the axis (a batch of groups, packed sequences) decoded from set probes at a
cost set by the block size and the number of blocks, not the number of rows.

The sampled rows (read one by one) propose blocks of one size s: each reads an interval
that is its whole block (dense) or its block's start up to itself (lower-triangular).
Then:

- :func:`crossings`: bit-coded sets of whole blocks (block b's rows where bit t of b is 1,
  and where it is 0: 2·⌈log₂ K⌉ sets for K blocks) reach input indices outside their own
  blocks exactly where some row reads across blocks (for blocks b ≠ b' some set holds b and
  not b'): those input indices are read exactly by the caller;
- :func:`within`: one set per local index k (row k of every block): blocks read disjoint
  input indices, so each answer at j is row (block of j, k)'s own, exactly (s sets);
- :func:`later_reads`: where s sets cost too much, the lower-triangular blocks are bounded:
  sets of the rows below a local cut c in every block must reach nothing at or past c in
  any block (a row reading a later index of its own sequence).
"""
from __future__ import annotations

import math

import torch

from .setdecode import bit_sets

CROSSED = 64  # at most this many input indices read across blocks, read exactly (forward),
# or output indices reading across blocks (bounded blocks: found by halving, read one by one)
CROSSED_BLOCKS = 8  # ... of at most this many blocks whose indices are read across
EXACT_SIZE = 16  # blocks up to this size are read row by row exactly (2 vectors a local index)


def proposed(sample: torch.Tensor, rows: torch.Tensor, m: int, n: int):
    """(block size s, lower-triangular) that the sampled rows ``rows`` (len(sample) × n)
    read exactly, or None: square, at least two blocks of two or more, every sampled row an
    interval starting at its block's first index and ending at its block's last (dense) or
    at itself (lower-triangular)."""
    if m != n or m < 4 or not len(sample):
        return None
    count = rows.sum(1)
    if bool((count == 0).any()):
        return None
    first = rows.to(torch.uint8).argmax(1)
    last = n - 1 - rows.flip(1).to(torch.uint8).argmax(1)
    if not torch.equal(last - first + 1, count):  # not an interval
        return None
    lower = bool((last == sample).all())
    ends = [] if lower else (last + 1).tolist()
    size = math.gcd(m, *first.tolist(), *ends)
    if size < 2 or size >= m:
        return None
    start = sample // size * size
    end = sample if lower else start + size - 1
    if not (torch.equal(first, start) and torch.equal(last, end)):
        return None
    return size, lower


def block_sets(sets: torch.Tensor, size: int, m: int) -> torch.Tensor:
    """(k × blocks) sets of blocks → (k × m) sets of their rows."""
    return sets[:, torch.arange(m) // size]


def crossings(prober, size: int, m: int, n: int) -> torch.Tensor | None:
    """(n,) bool: the input indices some row of another block reads (by bit-coded sets of
    whole blocks); None where a plain backward of the first set disagrees with the batched
    one (a batching rule gone wrong)."""
    blocks = m // size
    sets = bit_sets(blocks, max((blocks - 1).bit_length(), 1))
    rows = block_sets(sets, size, m)
    reached = prober.hits(rows)
    plain = prober.hits(rows[:1], batched=False)
    known = ~prober.unknown
    if not torch.equal(plain[:, known], reached[:1, known]):
        return None
    claimed = block_sets(sets, size, n)
    return (reached & ~claimed).any(0)


def local_rows(size: int, n: int, lanes: torch.Tensor) -> torch.Tensor:
    """(len(lanes) × n) long: the row at local index lanes[k] of input index j's block."""
    return (torch.arange(n) // size * size)[None, :] + lanes[:, None]


def within(prober, size: int, m: int, n: int) -> torch.Tensor:
    """(m × n) bool: every row read exactly, by one set per local index (row k of every
    block), answers that do not scale with a rescaled probe left out as rounding. Exact
    where no row reads across blocks (:func:`crossings`; those input indices are read
    again)."""
    lanes = torch.arange(size)
    sets = (torch.arange(m) % size)[None, :] == lanes[:, None]
    hit, rounded = prober.firm_hits(sets)
    rows, cols = local_rows(size, n, lanes), torch.arange(n)[None, :].expand(size, n)
    pattern = torch.zeros(m, n, dtype=torch.bool)
    pattern[rows[hit], cols[hit]] = True
    for row, column in zip(rows[rounded].tolist(), cols[rounded].tolist()):
        prober.rounded[(row, column)] = None
    return pattern


def claimed(size: int, m: int, lower: bool) -> torch.Tensor:
    """(m × m) bool: the blocks, dense or lower-triangular."""
    index = torch.arange(m)
    same = (index[:, None] // size) == (index[None, :] // size)
    return same & (index[None, :] <= index[:, None]) if lower else same


def later_reads(prober, size: int, m: int, n: int, count: int):
    """((n,) bool input indices some row reads at a later local index of its own block, the
    cut spacing g): sets of the rows below local cut c (every g) in all blocks reach only
    local indices below c where the blocks are lower-triangular; a later read at least g
    indices ahead is always found, a nearer one on a row not read is not ruled out."""
    gap = max(1, -(-size // (count + 1)))
    cuts = torch.arange(gap, size, gap)
    local = torch.arange(m) % size
    sets = local[None, :] < cuts[:, None]
    reached = prober.hits(sets) if len(cuts) else torch.zeros(0, n, dtype=torch.bool)
    beyond = (torch.arange(n) % size)[None, :] >= cuts[:, None]
    return (reached & beyond).any(0), gap, len(cuts)
