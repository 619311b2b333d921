"""Dependency patterns: which entries along an output axis read which entries along an input
axis, and a verdict on the pattern's shape.

``pattern[i, j]`` is True when some entry of the output with index ``i`` along ``out_axis``
has a non-zero derivative with respect to some entry of the input with index ``j`` along
``in_axis`` (exact zeros only: the structure at the evaluated point). Two ways to get it:

- :func:`from_result`: exact, from a result's structured derivatives (no graph needed);
- :func:`probe_pattern` (and :func:`dependency`): from a live graph, without the Jacobian, by
  batched random probes vᵀJ supported on sets of output indices (the group test of
  :mod:`.grouptest`), drawn from a seed kept on the answer; where the graph proves the axes
  paired, only the diagonal is probed, and where its index maps bound what each index may
  read (a stack of stride-1 convolutions: :func:`.indexmaps.walk.proved_band`), one probe
  per colour of that band, checked.

:func:`verdict` names the smallest band of diagonals that holds every dependence (a
:class:`Kind`); :func:`verdict_on_refusal` makes a memory refusal say where a structure broke.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import math

import torch

from . import axisflow, memory, structure, validation
from .compressed import compressed_jacobian
from .couplings import csr_inside, outside_entries
from .errors import VJPUsageError, operand
from .grouptest import OverTime, diagonal_hits, probed_pattern, proved_hits
from .indexmaps.walk import proved_band
from .pairing import Evidence, proved_for_every
from .probes import new_seed
from .quiet import guarded_reads, quiet_autograd
from .reentrant import refuse_on_its_graph
from .retained import keeps_retained_grads
from .sparse_exact import without_false_nan
from .sparse_layout import csr_matrix, csr_rows
from .textenum import TextEnum
from .torch_api import graph_usage_error
from .validation import refuse_unanalysable


class Kind(TextEnum):
    """The smallest description holding every dependence (see :func:`verdict`)."""

    INDEPENDENT = "independent"
    LOWER_TRIANGULAR = "lower-triangular"
    UPPER_TRIANGULAR = "upper-triangular"
    BAND = "band"
    BLOCK_DIAGONAL = "block-diagonal"
    BLOCK_LOWER_TRIANGULAR = "block-lower-triangular"
    PERIODIC_BAND = "band with wrap-around"
    SPARSE = "sparse"
    DENSE = "dense"


KINDS = tuple(Kind)
# kinds that allow a few dependences outside their structure (Dependency.exceptions)
EXCEPTING = (Kind.BLOCK_DIAGONAL, Kind.BLOCK_LOWER_TRIANGULAR, Kind.PERIODIC_BAND, Kind.SPARSE)


@guarded_reads
@dataclass(frozen=True)
class Dependency:
    """The pattern of dependences between two axes, and its verdict.

    ``kind``: a :class:`Kind` (equal to its word, ``"band"``); ``witness``: the first
    dependence (row-major) that the nearest simpler kind forbids, as (output index, input
    index), None for "independent" (the first exception where the kind has some: a
    crossing between blocks, see :meth:`exceptions`);
    ``offsets``: lowest and highest j − i over the dependences, for a band or a triangle (a
    band with wrap-around: modulo n, nearest 0, of all but its exceptions; sparse: the band
    all but a few fill, if any); ``blocks``: the block sizes of a block-diagonal pattern
    (sparse: blocks that a few dependences cross, four or more, most of them not joined at
    their edges as a band's are: sparse graphs in a batch); ``nonzeros``: (most,
    mean) input indices an output index reads, for a sparse one; ``note``: a caveat, in words
    (float32 underflow; a pattern bounded, not resolved entry by entry; probed entries left
    out as rounding, the first named); ``complete``: False
    when ``pattern`` holds the band (or the blocks) the verdict implies beyond the output
    indices probed one by one (a wide mixing at a large size; the witness is still a
    dependence shown, and the note says how many diagonals past the band were not checked);
    ``pattern``: bool, (output axis size × input axis size), dense where it fits the memory
    budget, else a sparse CSR bool tensor of the dependences (:func:`dependency` past the
    budget: the methods and the verdict read either); ``evidence``: an
    :class:`.pairing.Evidence`: "proved" (from the graph: a pairing's own axes, or a proved
    sparse pattern's entries, zeros at this x included; :func:`dependency`: nothing read
    outside the pairing or the band the graph bounds, the entries inside read by probes at
    this x), "observed" (read off a result's
    values at this x: a derivative that happens to be 0 there is not a dependence) or
    "probed" (random probes);
    "proved" and the probes alike read autograd's graph: a value computed from x that reaches
    the output outside it (``x.mean(0).detach()``, ``.item()``, ``no_grad``) is no
    dependence here; ``r.dependency`` names such a cut in the note (from the cell's record,
    evidence then "observed"), :func:`dependency`, with no record, cannot see it;
    ``seed``: the seed the probes were drawn from (``dependency(..., seed=d.seed)`` again);
    ``conditional_on``: where "proved" rests on index, mask or condition tensors the graph
    saved (``gather``, ``where``, max pooling: :attr:`.pattern.Pattern.conditional_on`), their
    ops: the pattern holds for every x that gives the same ones (the note says so);
    ``stride`` and ``field``: for a sparse pattern of stride s ≥ 2 (a strided convolution or
    pooling: output index i reads input indices s·i + lo .. s·i + hi, its receptive field,
    at every length), s and (lo, hi); else None. ``transposed``: the field's transpose
    (upsampling by s, a transposed convolution of stride s: input index j is read by output
    indices s·j + lo .. s·j + hi).
    """

    kind: Kind
    witness: tuple[int, int] | None
    offsets: tuple[int, int] | None
    pattern: torch.Tensor = field(repr=False, compare=False)
    out_axis: int = 0
    in_axis: int = 0
    evidence: Evidence = Evidence.PROBED
    seed: int | None = field(default=None, compare=False)
    blocks: tuple[int, ...] | None = None
    nonzeros: tuple[int, float] | None = None
    note: str | None = field(default=None, compare=False)
    complete: bool = True
    conditional_on: tuple[str, ...] = ()
    stride: int | None = None
    field: tuple[int, int] | None = None
    transposed: bool = False

    def describe(self, output_name: str = "y", input_name: str = "x") -> str:
        """The witness as indexing: ``y[1] ← x[0]`` (``y[:, 2] ← x[:, 3]`` on axis 1)."""
        if self.witness is None:
            return (f"{_index(output_name, self.out_axis, 'i')} ← "
                    f"{_index(input_name, self.in_axis, 'i')} only")
        i, j = self.witness
        return f"{_index(output_name, self.out_axis, i)} ← {_index(input_name, self.in_axis, j)}"

    def summary(self, exceptions: bool = True) -> str:
        """``band, offsets −1..0`` (the kind, its offsets, blocks or nonzeros per row, and
        how many exceptions unless ``exceptions`` is False; the note, if any, in
        brackets)."""
        text = str(self.kind)
        if self.offsets is not None:
            lo, hi = (str(o).replace("-", "−") for o in self.offsets)
            wrap = f" modulo {self.pattern.shape[1]:,}" if self.kind == Kind.PERIODIC_BAND else ""
            text = (f"{text}: band {lo}..{hi}" if self.kind == Kind.SPARSE else
                    f"{text}, offsets {lo}..{hi}{wrap}")
        elif self.blocks is not None:
            text = f"{text}, {_blocks_words(self.blocks)}"
        elif self.stride is not None:
            text = (f"{text}, stride {self.stride}: "
                    f"{_field_words(self.stride, self.field, self.transposed)}")
        count = len(self.exceptions()) if exceptions and self.kind in EXCEPTING else 0
        if count:
            text = f"{text} with {count:,} exception{'' if count == 1 else 's'}"
        if self.nonzeros is not None:
            text = f"{text}, at most {self.nonzeros[0]:,} per row (mean {self.nonzeros[1]:.3g})"
        return text if self.note is None else f"{text} ({self.note})"

    def leaking(self) -> list[int]:
        """The output indices that read an input index other than their own (``pattern[i, j]``
        with j ≠ i): where the structure "index i reads index i only" breaks, in order."""
        if self.pattern.layout == torch.sparse_csr:
            r, c = entries(self.pattern)
            return torch.unique(r[r != c]).tolist()
        pattern = self.pattern.to(torch.bool)
        m, n = pattern.shape
        own = torch.eye(m, n, dtype=torch.bool, device=pattern.device)
        return (pattern & ~own).any(1).nonzero().flatten().tolist()

    def reads(self, i: int) -> list[int]:
        """The input indices other than ``i`` that output index ``i`` reads."""
        if self.pattern.layout == torch.sparse_csr:
            crow = self.pattern.crow_indices()
            cols = self.pattern.col_indices()[int(crow[i]):int(crow[i + 1])].cpu()
            return cols[cols != i].tolist()
        row = self.pattern[i].to(torch.bool).clone()
        if i < row.numel():
            row[i] = False
        return row.nonzero().flatten().tolist()

    def fills_band(self) -> bool:
        """Whether every dependence the verdict's band allows is there, so that the kind
        describes every output index (a leak from one row is a band −1..0 it does not fill)."""
        if self.kind == Kind.SPARSE:
            return False
        r, c = entries(self.pattern)
        return bool(self._allowed(r, c).all()) and len(r) == self._region_size()

    def band_reads(self) -> tuple[bool, tuple[int, ...]]:
        """Of the dependences the kind's ``offsets`` allow (a band, with wrap-around: modulo
        n, nearest 0; a triangle; a sparse pattern's band): whether they fill it (each output
        index reads every input index within it, as far as the edges allow), and the offsets
        j − i they hold, sorted. The band is their hull: it may have gaps (0 and 3 only)."""
        r, c = entries(self.pattern)
        inside = self._allowed(r, c)
        offset = (c - r)[inside]
        if self.kind == Kind.PERIODIC_BAND:
            n = self.pattern.shape[1]
            offset = (offset + n // 2) % n - n // 2
        return int(inside.sum()) == self._region_size(), tuple(torch.unique(offset).tolist())

    def exceptions(self) -> list[tuple[int, int]]:
        """The dependences ``(i, j)`` (row-major) outside the structure the kind names, a
        few at most: crossings between blocks, a later index read inside a block of a
        block-lower-triangular pattern, reads outside a band with wrap-around or outside the
        band ``offsets`` of a sparse pattern (a band with a leak). Empty where the kind
        holds every dependence (a band, a triangle, dense, independent)."""
        if self.kind == Kind.SPARSE and self.offsets is None and self.blocks is None:
            return []
        r, c = entries(self.pattern)
        outside = ~self._allowed(r, c)
        return list(zip(r[outside].tolist(), c[outside].tolist()))

    def _allowed(self, r: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Whether the kind allows each entry (r, c) (a sparse pattern: its band
        ``offsets``), without building the (m × n) region."""
        m, n = self.pattern.shape
        offset = c - r
        if self.kind == Kind.INDEPENDENT:
            return offset == 0
        if self.kind in (Kind.BLOCK_DIAGONAL, Kind.BLOCK_LOWER_TRIANGULAR) \
                or (self.kind == Kind.SPARSE and self.blocks is not None):
            block = _block_index(self.blocks, max(m, n))
            same = block[r] == block[c]
            return same & (offset <= 0) if self.kind == Kind.BLOCK_LOWER_TRIANGULAR else same
        if self.offsets is None:  # dense
            return torch.ones_like(offset, dtype=torch.bool)
        if self.kind == Kind.PERIODIC_BAND:
            offset = (offset + n // 2) % n - n // 2
        return (offset >= self.offsets[0]) & (offset <= self.offsets[1])

    def _region_size(self) -> int:
        """How many entries the kind allows."""
        m, n = self.pattern.shape
        if self.kind == Kind.INDEPENDENT:
            return min(m, n)
        if self.kind in (Kind.BLOCK_DIAGONAL, Kind.BLOCK_LOWER_TRIANGULAR):
            sizes = torch.tensor(self.blocks)
            inside = sizes * (sizes + 1) // 2 if self.kind == Kind.BLOCK_LOWER_TRIANGULAR \
                else sizes**2
            return int(inside.sum()) + max(0, min(m, n) - int(sizes.sum()))
        if self.offsets is None:  # dense
            return m * n
        if self.kind == Kind.PERIODIC_BAND:
            return n * (self.offsets[1] - self.offsets[0] + 1)
        return _band_size(m, n, *self.offsets)


def entries(pattern: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, columns) of the dependences of a dense bool pattern or a sparse CSR one, on the
    CPU, row-major."""
    if pattern.layout == torch.sparse_csr:
        rows = csr_rows(pattern.crow_indices().cpu())
        cols, held = pattern.col_indices().cpu(), pattern.values().cpu().to(torch.bool)
        return (rows, cols) if bool(held.all()) else (rows[held], cols[held])
    return pattern.to(torch.bool).cpu().nonzero(as_tuple=True)


def sparse_pattern(rows: torch.Tensor, cols: torch.Tensor, m: int, n: int) -> torch.Tensor:
    """The (m × n) bool sparse CSR pattern of the dependences (rows, cols), given row-major
    and each once."""
    crow = torch.zeros(m + 1, dtype=torch.long)
    crow[1:] = torch.bincount(rows, minlength=m).cumsum(0)
    return csr_matrix(crow, cols, torch.ones(cols.numel(), dtype=torch.bool), (m, n))


def _index(name: str, axis: int, index) -> str:
    return f"{name}[{':, ' * axis}{index}]"


LISTED_BLOCKS = 6  # unequal blocks up to this many are said with each size


def _field_words(stride: int, field: tuple[int, int], transposed: bool = False) -> str:
    """``index i reads 2i − 1..2i + 1`` (a receptive field of stride 2); transposed
    (upsampling by 2): ``input index j is read by output indices 2j..2j + 1``."""
    letter = "j" if transposed else "i"
    lo, hi = (f"{stride}{letter}" + (f" {'+' if k > 0 else '−'} {abs(k)}" if k else "")
              for k in field)
    if transposed:
        return f"input index j is read by output indices {lo}..{hi}"
    return f"index i reads {lo}..{hi}"


def _blocks_words(blocks: tuple[int, ...]) -> str:
    """``512 blocks of 8``, ``4 blocks of 100, 300, 156, 468`` or ``37 blocks of 1 to
    512``."""
    return f"{len(blocks):,} blocks of {_sizes_words(blocks)}"


def _sizes_words(blocks: tuple[int, ...]) -> str:
    """The blocks' sizes: one, each in order where they differ and are few, else the range."""
    lo, hi = min(blocks), max(blocks)
    if lo == hi:
        return f"{lo:,}"
    if len(blocks) <= LISTED_BLOCKS:
        return ", ".join(f"{size:,}" for size in blocks)
    return f"{lo:,} to {hi:,}"


def _block_index(blocks: tuple[int, ...], size: int) -> torch.Tensor:
    """The block of each index (indices past the blocks: a block each)."""
    ends = torch.tensor(blocks).cumsum(0)
    index = torch.searchsorted(ends, torch.arange(size), right=True)
    return torch.where(torch.arange(size) < int(ends[-1]), index, len(blocks) + torch.arange(size))


# -- the verdict ----------------------------------------------------------------------------
class Verdict(NamedTuple):
    """A pattern's kind, witness and offsets, and the block sizes or nonzeros per row."""

    kind: Kind
    witness: tuple[int, int] | None
    offsets: tuple[int, int] | None
    blocks: tuple[int, ...] | None = None
    nonzeros: tuple[int, float] | None = None
    stride: int | None = None
    field: tuple[int, int] | None = None
    transposed: bool = False


def verdict(pattern: torch.Tensor) -> tuple[Kind, tuple[int, int] | None, tuple[int, int] | None]:
    """``(kind, witness, offsets)`` of an (m × n) boolean pattern.

    With lo..hi the offsets j − i of the dependences, the band kinds name the smallest band of
    diagonals holding them all, by the corners it reaches (the lower one, (m−1, 0), is
    offset −(m−1); the upper one, (0, n−1), offset n−1):

    - "independent": only i == j (or nothing at all);
    - "dense": both corners;
    - "lower-triangular": the lower corner and hi ≤ 0 (causal: y[t] reads x[s], s ≤ t, back
      to the first); "upper-triangular" mirrors it;
    - "band" otherwise (a leak y[1] ← x[0] alone is the band −1..0, not "causal"; a mask that
      also lets t see t + 1 is the band −(m−1)..1).

    A band or "dense" gives way to a smaller description (:func:`full_verdict`): blocks along
    the diagonal ("block-diagonal", a batch of graphs; "block-lower-triangular", packed causal
    sequences), a band modulo n ("band with
    wrap-around", a periodic stencil), or "sparse" (a gather, a permutation, mixup).

    The witness is the first dependence (row-major) the nearest simpler kind forbids: for a
    triangle or a band reaching no corner, the first off the diagonal; for a band reaching the
    lower corner, or dense, the first above it (j > i); for a band reaching the upper corner,
    the first below it. Offsets are given for triangles and bands.
    """
    return full_verdict(pattern)[:3]


def full_verdict(pattern: torch.Tensor) -> Verdict:
    """:func:`verdict`, with the block sizes (block-diagonal) or the most and mean input
    indices per output index (sparse). Of the band, the blocks, the band modulo n, a band
    with a few exceptions (said as sparse, its band as offsets) and the nonzeros themselves,
    the kind allowing the fewest entries wins (a band on a tie; sparse with no band only
    where every other allows more than :data:`SPARSE_RATIO` times the nonzeros), save that
    blocks beat a band their dependences leave unfilled (a batch of sparse graphs), and that
    a receptive field of stride s ≥ 2 (:func:`_strided_verdict`: sparse) comes first, at
    every length."""
    m, n = pattern.shape
    if pattern.layout == torch.sparse_csr:  # listed already
        r, c = entries(pattern)
        count = len(r)
    else:
        pattern = pattern.to(torch.bool).cpu()
        count = int(torch.count_nonzero(pattern))
        if count > ENTRIES:  # too many to list: row by row (a band, a triangle or dense)
            return _wide_verdict(pattern)
        r, c = pattern.nonzero(as_tuple=True)  # row-major
    if bool((r == c).all()):
        return Verdict(Kind.INDEPENDENT, None, None)
    lo, hi = int((c - r).min()), int((c - r).max())
    strided = _strided_verdict(m, n, r, c) or _upsampled_verdict(m, n, r, c)
    if strided is not None and strided[0] < _band_size(m, n, lo, hi) \
            and strided[0] <= SPARSE_RATIO * count:
        return strided[1]
    band = _band_verdict(m, n, lo, hi, lambda where: _first(r, c, where(r, c)))
    if band.kind not in (Kind.BAND, Kind.DENSE) or count > m * n // 2:
        return band
    options = [(_band_size(m, n, lo, hi), band)]
    blocks = _block_verdict(m, n, r, c)
    for other in (blocks, _periodic_verdict(m, n, r, c), _excepted_band(m, n, r, c)):
        if other is not None:
            options.append(other)
    size, best = min(options, key=lambda option: option[0])
    if blocks is not None and size > count and best.kind in _BANDS \
            and blocks[0] <= SPARSE_RATIO * count and _empty_at_cuts(m, n, r, c, lo, hi, blocks):
        size, best = blocks  # a band its dependences leave empty at the blocks' cuts
    if size > SPARSE_RATIO * count:
        best = _sparse_verdict(m, n, r, c, None if blocks is None else blocks[1].blocks)
    return best


SPARSE_RATIO = 4  # "sparse" where every structured kind allows over 4× the nonzeros
_BANDS = (Kind.BAND, Kind.PERIODIC_BAND, Kind.SPARSE)  # (sparse here: a band with a leak)


def few(count: int) -> int:
    """How many dependences outside a structure are "a few" (exceptions the kind allows, as a
    leak between blocks): 6 (six leaks beside a band of 64 rows are still its exceptions),
    or one in 64 of the ``count`` dependences if that is more."""
    return max(6, count // 64)


def _sparse_verdict(m: int, n: int, r, c, blocks=None) -> Verdict:
    """"sparse": the most and mean input indices per output index; the witness is the
    first dependence off the diagonal, or, with the ``blocks`` all but a few dependences
    stay inside (sparse graphs in a batch), the first crossing between them."""
    degree = torch.bincount(r, minlength=m)
    witness = None
    if blocks is not None:
        block = _block_index(blocks, max(m, n))
        witness = _first(r, c, block[r] != block[c])
        blocks = blocks if witness is not None and _separated(n, r, c, blocks) else None
    return Verdict(Kind.SPARSE, witness if blocks else _first(r, c, r != c), None, blocks,
                   (int(degree.max()), float(degree.float().mean())))


def _separated(n: int, r, c, blocks) -> bool:
    """Whether four blocks or more are separated: fewer than half the cuts between them
    have a dependence joining the two indices either side (a batch of graphs; a band
    joins them at every cut)."""
    starts = torch.tensor(blocks).cumsum(0)[:-1]
    near = ((c - r).abs() == 1) & torch.isin(torch.maximum(r, c), starts)
    joined = torch.unique(torch.maximum(r, c)[near]).numel()
    return len(blocks) >= 4 and 2 * joined < len(starts)


def _empty_at_cuts(m: int, n: int, r, c, lo: int, hi: int, blocks) -> bool:
    """Whether the band lo..hi is mostly empty where it crosses the blocks' cuts: its
    entries there at least twice the dependences that cross (a batch of sparse graphs and
    a leak). A band filled across a cut (a recurrence whose far reads underflow: a ragged
    edge, not a cut) is not split into blocks whose crossings are its own reads."""
    sizes = blocks[1].blocks
    inside = sum(_band_size(size, size, lo, hi) for size in sizes)
    block = _block_index(sizes, max(m, n))
    crossing = int((block[r] != block[c]).sum())
    return 2 * crossing <= _band_size(m, n, lo, hi) - inside


def _crossings(n: int, r, c) -> torch.Tensor:
    """Dependences across the cut before index k, for k = 1..n−1."""
    low, high = torch.minimum(r, c), torch.maximum(r, c)
    crossing = torch.zeros(n + 1, dtype=torch.long)
    crossing.index_add_(0, low + 1, torch.ones_like(low))
    crossing.index_add_(0, high + 1, -torch.ones_like(high))
    return crossing.cumsum(0)[1:n]


def _excepted_band(m: int, n: int, r, c):
    """(entries allowed, Verdict) for a band that all but a few dependences fill (a band
    with a leak: :func:`_bulk`), said as "sparse" with the band as ``offsets`` and the first
    dependence outside it as the witness ("band" promises every dependence within its
    offsets); None where there is no such band."""
    bulk = _bulk(r, c, m, n)
    if bulk is None:
        return None
    (lo, hi), outside = bulk
    degree = torch.bincount(r, minlength=m)
    return _band_size(m, n, lo, hi) + int(outside.sum()), Verdict(
        Kind.SPARSE, _first(r, c, outside), (lo, hi), None,
        (int(degree.max()), float(degree.float().mean())))


def _bulk(r, c, m: int, n: int, period: int | None = None):
    """((lo, hi), the dependences outside) for the band of offsets (modulo ``period``,
    nearest 0, where given) that holds all but a few dependences, or None. The band is the
    run of diagonals at least half full holding the most dependences; it must be full, the
    diagonal on either side of it at most 1/16 full (a ragged edge, as float32 underflow
    leaves, is no leak), reach no corner, and not be the diagonal alone; 1 to :func:`few`
    dependences outside it."""
    offset = c - r
    if period is not None:
        offset = (offset + period // 2) % period - period // 2
        first, lengths = -(period // 2), torch.full((period,), period)
    else:
        first = -(m - 1)
        k = torch.arange(-(m - 1), n)
        lengths = torch.minimum(torch.full_like(k, m), n - k) - (-k).clamp(min=0)
    counts = torch.bincount(offset - first, minlength=len(lengths))
    half = (2 * counts >= lengths) & (counts > 0)
    if not bool(half.any()):
        return None
    run = torch.cumsum(torch.cat([half[:1], half[1:] & ~half[:-1]]).long(), 0) * half
    held = torch.zeros(int(run.max()) + 1, dtype=torch.long).index_add_(0, run, counts)
    held[0] = -1
    where = (run == int(held.argmax())).nonzero().flatten()
    a, b = int(where[0]), int(where[-1])
    lo, hi = a + first, b + first
    size = len(lengths)
    sides = [(a - 1) % size, (b + 1) % size] if period is not None else \
        [k for k in (a - 1, b + 1) if 0 <= k < size]
    outside = (offset < lo) | (offset > hi)
    if (lo, hi) == (0, 0) or len(sides) < 2 \
            or bool((counts[sides] > (lengths[sides] // 16).clamp(min=1)).any()) \
            or not torch.equal(counts[a:b + 1], lengths[a:b + 1]) \
            or not 0 < int(outside.sum()) <= few(len(r)):
        return None
    return (lo, hi), outside


ENTRIES = 2**22  # patterns with more dependences are judged row by row (no list of them)


def _first(r, c, where) -> tuple[int, int] | None:
    """The first listed dependence where ``where`` holds."""
    at = where.nonzero().flatten()
    return (int(r[at[0]]), int(c[at[0]])) if at.numel() else None


def _wide_verdict(pattern) -> Verdict:
    """The band verdict of a pattern with many dependences, from each row's first and last."""
    m, n = pattern.shape
    rows = pattern.any(1)
    first = torch.where(rows, pattern.to(torch.uint8).argmax(1), n)
    last = torch.where(rows, n - 1 - pattern.flip(1).to(torch.uint8).argmax(1), -1)
    index = torch.arange(m)
    lo, hi = int((first - index)[rows].min()), int((last - index)[rows].max())
    finders = {"_above": lambda: _first_above(pattern, last),
               "_below": lambda: _first_below(pattern, first),
               "_off": lambda: _off_diagonal(pattern)}
    return _band_verdict(m, n, lo, hi, lambda where: finders[where.__name__]())


def _above(r, c):
    return c > r


def _below(r, c):
    return c < r


def _off(r, c):
    return c != r


def _band_verdict(m: int, n: int, lo: int, hi: int, first) -> Verdict:
    """The band kinds; ``first(_above | _below | _off)``: the first dependence so placed."""
    low, high = lo == -(m - 1), hi == n - 1
    if low and high:
        return Verdict(Kind.DENSE, first(_above) or first(_off), None)
    if low and hi <= 0:
        kind, witness = Kind.LOWER_TRIANGULAR, first(_off)
    elif high and lo >= 0:
        kind, witness = Kind.UPPER_TRIANGULAR, first(_off)
    else:
        kind = Kind.BAND
        witness = first(_above) if low else first(_below) if high else first(_off)
    return Verdict(kind, witness or first(_off), (lo, hi))


def _first_above(pattern, last):
    rows = (last > torch.arange(len(last))).nonzero().flatten()
    if not rows.numel():
        return None
    i = int(rows[0])
    return i, i + 1 + int(pattern[i, i + 1:].to(torch.uint8).argmax())


def _first_below(pattern, first):
    rows = (first < torch.arange(len(first))).nonzero().flatten()
    return (int(rows[0]), int(first[rows[0]])) if rows.numel() else None


def _off_diagonal(pattern):
    """The first dependence (row-major) off the diagonal."""
    m, n = pattern.shape
    own = torch.zeros(m, dtype=torch.bool)
    own[:min(m, n)] = pattern.diagonal()
    rows = (pattern.sum(1) > own.long()).nonzero().flatten()
    if not rows.numel():
        return None
    i = int(rows[0])
    row = pattern[i].clone()
    if i < n:
        row[i] = False
    return i, int(row.to(torch.uint8).argmax())


def _band_size(m: int, n: int, lo: int, hi: int, stride: int = 1) -> int:
    """Entries of an (m × n) matrix with lo ≤ j − stride·i ≤ hi."""
    if stride != 1:
        start = torch.arange(m) * stride
        return int(((start + hi).clamp(max=n - 1) - (start + lo).clamp(min=0) + 1)
                   .clamp(min=0).sum())
    offsets = torch.arange(lo, hi + 1)
    length = (torch.minimum(torch.full_like(offsets, m), n - offsets) - (-offsets).clamp(min=0))
    return int(length.clamp(min=0).sum())


def _strided_verdict(m: int, n: int, r, c):
    """(entries allowed, Verdict) for a sparse pattern of stride s ≥ 2 (a strided
    convolution or pooling: output index i reads input indices s·i + lo .. s·i + hi, its
    receptive field ``field``, whatever the length); the witness is the first dependence off
    j = s·i. The stride is the slope of the rows' mean input index (rounded, ± 1 if that
    allows fewer entries); None where m ≥ n or the slope is under 2."""
    count = torch.bincount(r, minlength=m)
    rows = (count > 0).nonzero().flatten()
    if m >= n or rows.numel() < 2:
        return None
    centre = torch.zeros(m, dtype=torch.float64).index_add_(0, r, c.double()) / count
    first, last = int(rows[0]), int(rows[-1])
    slope = round(float(centre[last] - centre[first]) / (last - first))
    if slope < 2:
        return None
    options = []
    for stride in range(max(2, slope - 1), slope + 2):
        offset = c - stride * r
        lo, hi = int(offset.min()), int(offset.max())
        options.append((_band_size(m, n, lo, hi, stride), stride, (lo, hi)))
    size, stride, offsets = min(options)
    witness = _first(r, c, c != stride * r) or _first(r, c, c != r)
    degree = torch.bincount(r, minlength=m)
    return size, Verdict(Kind.SPARSE, witness, None, None,
                         (int(degree.max()), float(degree.float().mean())), stride, offsets)


def _upsampled_verdict(m: int, n: int, r, c):
    """(entries allowed, Verdict) for the transpose of a receptive field of stride s ≥ 2
    (upsampling by s, a transposed convolution of stride s: input index j is read by output
    indices s·j + lo .. s·j + hi, whatever the length; ``transposed``): the strided verdict
    of the transposed pattern. None where m ≤ n or it is none."""
    if m <= n:
        return None
    order = torch.argsort(c * m + r)  # the transpose's nonzeros, row-major
    found = _strided_verdict(n, m, c[order], r[order])
    if found is None:
        return None
    size, flipped = found
    witness = None if flipped.witness is None else flipped.witness[::-1]
    degree = torch.bincount(r, minlength=m)
    return size, flipped._replace(witness=witness, transposed=True, nonzeros=(
        int(degree.max()), float(degree.float().mean())))


def _block_verdict(m: int, n: int, r, c):
    """(entries allowed, Verdict) for blocks along the diagonal (lower-triangular blocks where
    no dependence inside a block reads a later index: packed causal sequences), split at the
    cuts crossed by at most ``fewest + t`` dependences for the t (up to the crossings
    allowed) that allows the fewest entries, the fewest exceptions on a tie: a leak between
    two blocks raises the count at the cuts it spans by one, so it neither merges them nor
    hides. A block may be one index that reads and is read by no other (an isolated node, a
    one-token sequence) where most indices lie in blocks of two or more (:func:`_blocks_at`).
    Blocks split at every cut no dependence crosses come first (the exact reading: a sparse
    graph is not cut apart to count its edges as exceptions). A few crossings at most: the
    witness is the first; None where there are no such blocks."""
    if m != n or m < 4:
        return None
    crossing = _crossings(n, r, c)  # dependences across the cut before index k = 1..n−1
    fewest, most = int(crossing.min()), few(len(r))
    levels = torch.unique(crossing[crossing <= fewest + most])[:8].tolist()
    free = set((crossing == 0).nonzero().flatten().add(1).tolist())
    cut_sets = {}  # in level order: each level's cuts as they are, then less inner runs
    for level in levels:  # (each with the cuts nothing crosses, if it merged across one)
        cuts = (crossing <= level).nonzero().flatten() + 1
        for kept in (cuts.tolist(), _ends_of_runs(cuts, n).tolist()):
            cut_sets[tuple(kept)] = cut_sets[tuple(sorted(free.union(kept)))] = None
    options = [(free <= set(cuts),) + option for cuts in cut_sets
               for option in [_blocks_at(n, r, c, torch.tensor(cuts, dtype=torch.long), most)]
               if option is not None]  # first: blocks split wherever nothing crosses
    if not options:
        return None
    _, size, _, best = min(options, key=lambda option: (not option[0],) + option[1:3])
    return size, best


def _ends_of_runs(cuts: torch.Tensor, n: int) -> torch.Tensor:
    """The cuts (in 1..n−1) less those inside a run of consecutive ones, the ends 0 and n
    counted: a short block (a causal one of 3 is crossed by 2 inside) cut at every index
    where leaks raise the level between blocks to its own count is one block, from the
    run's first cut to its last."""
    bounds = torch.cat([torch.tensor([0]), cuts, torch.tensor([n])])
    inner = torch.zeros_like(bounds, dtype=torch.bool)
    inner[1:-1] = (bounds[1:-1] - bounds[:-2] == 1) & (bounds[2:] - bounds[1:-1] == 1)
    inner[1:-1] |= (bounds[1:-1] == 1) | (bounds[1:-1] == n - 1)  # no block of one at an end
    return bounds[1:-1][~inner[1:-1]]


def _blocks_at(n: int, r, c, cuts, most: int):
    """(entries allowed, exceptions, Verdict) for the blocks between ``cuts``, or None (more
    than ``most`` dependences crossing; a single block; a block of one index that reads or
    is read by another, a piece of a sparse group, not a group; blocks of one beside fewer
    than two larger blocks, or holding half the indices or more: a diagonal with a few
    leaks, not blocks; a block of two or more indices none of which reads another there,
    as a run of cuts made one block can be: its indices are blocks of one, and the
    pattern no block's). Lower-triangular blocks where
    that allows fewer entries, counting as exceptions the dependences inside a block on a
    later index (a future leak inside one packed causal sequence) with the crossings: at
    most ``most`` in all, in at most half the blocks (a later index read in every block is
    the blocks' own structure, as a ring's closing edge: block-diagonal); the witness is the
    first exception."""
    bounds = torch.cat([torch.tensor([0]), cuts, torch.tensor([n])])
    sizes = bounds.diff()
    ones = bounds[:-1][sizes == 1]
    if len(sizes) < 2 or int(sizes.min()) < 1 or 2 * len(ones) >= n \
            or (len(ones) and int((sizes > 1).sum()) < 2) \
            or (len(ones) and _touched(n, r, c, ones)):
        return None
    row_block = torch.searchsorted(cuts, r, right=True)
    across = row_block != torch.searchsorted(cuts, c, right=True)
    crossings = int(across.sum())
    if crossings > most or int((sizes > 1).sum()) > torch.unique(
            row_block[~across & (r != c)]).numel():
        return None  # (a block of two or more holding the diagonal alone: no block)
    blocks = tuple(sizes.tolist())
    diagonal = int((sizes**2).sum()) + crossings, crossings, Verdict(
        Kind.BLOCK_DIAGONAL, _first(r, c, across) or _first(r, c, r != c), None, blocks)
    later = ~across & (c > r)  # inside a block, on a later index
    held = torch.unique(torch.searchsorted(cuts, r[later], right=True)).numel()
    triangles = int((sizes * (sizes + 1) // 2).sum())
    if not bool((~across & (c < r)).any()) or crossings + int(later.sum()) > most \
            or 2 * held > len(sizes) or (bool(later.any()) and int(
                (~across & (c <= r)).sum()) < triangles) or _filled(sizes, row_block[~across]):
        return diagonal  # (later reads are exceptions only to full causal triangles)
    exceptions = crossings + int(later.sum())
    lower = triangles + exceptions, exceptions, Verdict(
        Kind.BLOCK_LOWER_TRIANGULAR, _first(r, c, across | later) or _first(r, c, r != c),
        None, blocks)
    return lower if lower[0] < diagonal[0] else diagonal


def _filled(sizes: torch.Tensor, rows_block: torch.Tensor) -> bool:
    """Whether a block of two or more holds every entry of its square (a graph's two nodes
    reading each other): its later reads are the block's own, which the block-diagonal kind
    holds exactly, not leaks from a causal triangle."""
    held = torch.bincount(rows_block, minlength=len(sizes))
    return bool(((sizes > 1) & (held == sizes**2)).any())


def _touched(n: int, r, c, indices) -> bool:
    """Whether some dependence off the diagonal reads or is read by one of ``indices``
    (a mask, not torch.isin: 0.5 s on the 262,144 dependences of 64 blocks of 64)."""
    mark = torch.zeros(n, dtype=torch.bool)
    mark[indices] = True
    off = r != c
    return bool(mark[r[off]].any() or mark[c[off]].any())


def _periodic_verdict(m: int, n: int, r, c):
    """(entries allowed, Verdict) for a band of offsets modulo n (nearest 0) that wraps
    around; None where none wraps or the band is as wide as the matrix. A few dependences
    outside the band (:func:`_bulk`) are exceptions, the first the witness; the band is
    then the one the others follow."""
    if m != n or n < 3:
        return None
    plain = c - r
    offset = (plain + n // 2) % n - n // 2
    wraps = offset != plain
    lo, hi = int(offset.min()), int(offset.max())
    bulk = _bulk(r, c, m, n, period=n)
    if bulk is not None and (n * (bulk[0][1] - bulk[0][0] + 1) + int(bulk[1].sum())
                             < n * (hi - lo + 1)):
        (lo, hi), outside = bulk
        wraps = wraps & ~outside
        if not bool(wraps.any()):
            return None
        return n * (hi - lo + 1) + int(outside.sum()), Verdict(
            Kind.PERIODIC_BAND, _first(r, c, outside), (lo, hi))
    if not bool(wraps.any()) or hi - lo + 1 >= n:
        return None
    inside = (~wraps & (plain != 0)).nonzero().flatten()  # a plain neighbour, not the wrap
    pick = inside[0] if inside.numel() else wraps.nonzero().flatten()[0]
    witness = (int(r[pick]), int(c[pick]))
    return n * (hi - lo + 1), Verdict(Kind.PERIODIC_BAND, witness, (lo, hi))


def _dependency(pattern, out_axis, in_axis, evidence, seed=None, note=None,
                complete=True) -> Dependency:
    found = full_verdict(pattern)
    return Dependency(found.kind, found.witness, found.offsets, pattern, out_axis, in_axis,
                      evidence, seed, found.blocks, found.nonzeros, note, complete,
                      stride=found.stride, field=found.field, transposed=found.transposed)


def _axis(axis, ndim: int, what: str) -> int:
    """``axis`` of a tensor of ``ndim`` axes, counted from 0; a usage error that says what to
    give where there is no such axis (none at all in a 0-d tensor)."""
    if ndim == 0:
        raise VJPUsageError(f"The {what} is a scalar: it has no axis whose indices could read "
                            "(or be read by) the other's. Give a tensor with an axis, or take its "
                            "derivatives with vjp_magic.differentiate.")
    if not isinstance(axis, int) or isinstance(axis, bool) or not -ndim <= axis < ndim:
        axes = "0 (or -1)" if ndim == 1 else f"0 to {ndim - 1} (or -{ndim} to -1)"
        raise VJPUsageError(f"No axis {axis!r} in the {what}: give an axis from {axes}.")
    return axis % ndim


def _refuse_empty(output: torch.Tensor, x: torch.Tensor) -> None:
    """An empty output or input has no indices to compare: a usage error saying so."""
    for role, tensor in (("output", output), ("input", x)):
        if tensor.numel() == 0:
            raise VJPUsageError(f"The {role} is empty (shape {tuple(tensor.shape)}): it has no "
                                "entries, so no index reads another. Give it at least one "
                                "entry.")


# -- exact, from a result -------------------------------------------------------------------
def from_result(result, name: str, out_axis: int, in_axis: int) -> Dependency:
    """The exact pattern, read off ``result.inputs[name]`` (pairing and derivatives)."""
    item = result.inputs[name]
    out_shape, in_shape = tuple(result.output.shape), tuple(item.shape)
    a = _axis(out_axis, len(out_shape), f"output ({len(out_shape)}-d)")
    b = _axis(in_axis, len(in_shape), f"input {name} ({len(in_shape)}-d)")
    m, n = out_shape[a], in_shape[b]
    budget = result.memory_budget or memory.resolve_budget(None, result.output.device)
    memory.refuse_if_over(m * n, budget, f"The dependency pattern ({m:,} × {n:,})",
                          advice="Take a smaller slice")
    paired = item.pairing.out_to_in()
    components = [c for c in range(len(out_shape)) if c not in paired]
    k = len(components)
    if a not in paired:  # a component axis: its index is D's
        first, second = components.index(a), k + b
    elif paired[a] == b:  # the same points: dependences on the diagonal only
        first = second = k + b
    else:  # y's index along a is x's index along the axis paired with a
        first, second = k + paired[a], k + b
    derivatives, sparse = item.derivatives, item.sparse
    # what the graph proves for every x: a proved sparse pattern's entries (its zeros at this
    # x included), or the pairing's own diagonal; any other pattern (a steered cell's too) is
    # read off values at this x
    structural = sparse is not None and proved_for_every(result, name, sparse.evidence)
    if derivatives.layout == torch.strided:
        pattern = _plane(derivatives != 0, first, second)
    else:
        pattern = _sparse_plane(derivatives, first, second, zeros=structural)
    proved = structural or (proved_for_every(result, name) and paired.get(a) == b)
    dep = _dependency(pattern.cpu(), a, b, Evidence.PROVED if proved else Evidence.OBSERVED,
                      getattr(result, "seed", None))
    given = tuple(getattr(sparse, "conditional_on", ()) or ()) if structural else \
        tuple(getattr(item, "conditional_on", ())) if proved else ()
    dep = _given(dep, given)
    with validation.spelled_for({name: item.tensor}):  # as its own module spelled it
        if not item.unused and not _any_entry(pattern):  # every derivative 0 at this x
            dep = _all_zero_note(dep, derivatives.dtype, name)
        dep = _with_underflow_note(dep, derivatives.dtype, _smallest(derivatives), name)
    return _through_cuts(dep, result, name)


def _any_entry(pattern: torch.Tensor) -> bool:
    return bool(pattern.values().any()) if pattern.layout == torch.sparse_csr \
        else bool(pattern.any())


def _smallest(derivatives: torch.Tensor) -> float:
    """The smallest non-zero |derivative| (inf if none)."""
    values = derivatives.coalesce().values() if derivatives.is_sparse else derivatives
    values = values.detach().abs()
    values = values[(values > 0) & torch.isfinite(values)]
    return float(values.min()) if values.numel() else float("inf")


def _sparse_plane(derivatives: torch.Tensor, first: int, second: int,
                  zeros: bool = False) -> torch.Tensor:
    """:func:`_plane` of a sparse (COO) tensor's non-zero entries (``zeros``: of all its
    stored entries, those 0 at this x included)."""
    d = derivatives.to_sparse_coo().coalesce()
    at = d.indices() if zeros else d.indices()[:, d.values() != 0]
    m, n = d.shape[first], d.shape[second]
    pattern = torch.zeros(m, n, dtype=torch.bool)
    if first == second:
        pattern[at[first], at[first]] = True
    else:
        pattern[at[first], at[second]] = True
    return pattern


def _plane(nonzero: torch.Tensor, first: int, second: int) -> torch.Tensor:
    """Any non-zero, reduced onto the (first, second) axes (the same axis twice: a diagonal)."""
    if first == second:
        keep = [d for d in range(nonzero.dim()) if d != first]
        line = nonzero.permute(first, *keep).reshape(nonzero.shape[first], -1).any(1)
        return torch.diag(line)
    keep = [d for d in range(nonzero.dim()) if d not in (first, second)]
    m, n = nonzero.shape[first], nonzero.shape[second]
    return nonzero.permute(first, second, *keep).reshape(m, n, -1).any(2)


# -- from a live graph, by probes -----------------------------------------------------------
def probe_pattern(output: torch.Tensor, x: torch.Tensor, out_axis: int, in_axis: int,
                  budget: int | float | None = None, max_seconds: float | None = None,
                  seed: int | None = None) -> Dependency:
    """The pattern from a live graph, without the Jacobian (``budget``: bytes, a fraction of
    free memory, or the default): the group test of :func:`.grouptest.probed_pattern`. Where
    the graph proves the two axes paired (axisflow), dependences off the diagonal are ruled out
    ("proved"). ``seed``: the probes' seed (a fresh one unless given)."""
    a = _axis(out_axis, output.dim(), f"output ({output.dim()}-d)")
    b = _axis(in_axis, x.dim(), f"input ({x.dim()}-d)")
    _refuse_empty(output, x)
    budget = memory.resolve_budget(budget, output.device)
    m, n = output.shape[a], x.shape[b]
    dense = 2 * m * n <= budget  # else held sparsely: not within max_seconds (a refusal's)
    if not dense and max_seconds is not None:
        _refuse(m, n, budget)
    seed = new_seed() if seed is None else validation.checked_seed(seed)
    proof = axisflow.prove(output, x)
    paired = m == n > 1 and tuple(proof.carries.get(a, ())) == (b,)
    if paired:  # y's index i along a reads x's index i along b only, for every x
        diagonal = diagonal_hits(output, x, a, b, budget, seed)
        own = diagonal.cpu().nonzero().flatten()
        pattern = torch.diag(diagonal) if dense else sparse_pattern(own, own, m, n)
        dep = _given(_dependency(pattern, a, b, Evidence.PROVED, seed), proof.conditional_on)
        return _with_zeros_note(dep, (torch.arange(m), torch.arange(m)), output.dtype)
    if not dense:
        return _held_sparsely(output, x, a, b, budget, seed)
    allowed = proved_band(output, x, a) if a == b else None
    found = None if allowed is None else \
        proved_hits(output, x, a, b, budget, seed, allowed, max_seconds)
    if found is not None:  # the graph bounds what each index may read: a probe per colour
        dep = _dependency(found.pattern, a, b, Evidence.PROVED, seed,
                          _rounded_note(found.rounded, output.dtype, a, b)
                          if found.rounded else None)
        dep = _with_zeros_note(dep, allowed, output.dtype)
        return _with_underflow_note(dep, output.dtype, found.smallest)
    found = probed_pattern(output, x, a, b, budget, seed, max_seconds, proof.workspace)
    note = _bounded_note(found, m) if not found.complete else None
    if found.rounded:
        rounded = _rounded_note(found.rounded, output.dtype, a, b)
        note = rounded if note is None else f"{note}; {rounded}"
    dep = _dependency(found.pattern, a, b, Evidence.PROBED, seed, note, found.complete)
    if not found.complete:
        dep = _shown_witness(dep, found.exact_rows, found.exact_columns)
    elif allowed is not None:  # a bound too wide to colour: the probes read it entry by entry
        dep = _with_zeros_note(dep, allowed, output.dtype)
    elif not found.pattern.any():  # nothing at all: every derivative is 0 at this x
        dep = _all_zero_note(dep, output.dtype)
    return _with_underflow_note(dep, output.dtype, found.smallest)


def _refuse(m: int, n: int, budget: int, why: str = "") -> None:
    memory.refuse_if_over(2 * m * n, budget, f"The dependency pattern ({m:,} × {n:,}){why}",
                          advice="Take a smaller slice")


def _held_sparsely(output, x, a: int, b: int, budget: int, seed: int) -> Dependency:
    """The pattern where its dense form (m × n bools, twice while probed) is over the budget:
    the Jacobian's nonzeros at this x by one backward per colour of its flat pattern (proved
    from the graph, else observed, and checked: :func:`.compressed.compressed_jacobian`),
    projected onto the two axes and held as a sparse CSR bool tensor. Refused as the dense
    one is where no flat pattern pays (a row reading over 1/8 of x: dense), or its
    dependences do not fit the budget either."""
    m, n = output.shape[a], x.shape[b]
    sparse = compressed_jacobian(output, x, budget, seed)
    if sparse is None:
        _refuse(m, n, budget, ", with no sparse pattern of the Jacobian to hold it,")
    matrix = without_false_nan(output, x, sparse.matrix, budget)
    note = None
    if sparse.evidence is Evidence.OBSERVED:  # a coupling under the probes' resolution?
        verdict = outside_entries(output, x, csr_inside(matrix), seed=seed)
        if verdict.coupled:
            _refuse(m, n, budget, ", with a coupling its sparse pattern missed,")
        note = None if verdict.checked else OBSERVED_NOTE
    values = matrix.values().cpu()
    held = values != 0  # NaN counts: both readings non-finite (without_false_nan)
    rows, cols = csr_rows(matrix.crow_indices().cpu())[held], matrix.col_indices().cpu()[held]
    keys = rows // math.prod(output.shape[a + 1:]) % m * n + cols // math.prod(x.shape[b + 1:]) % n
    if not bool((keys[1:] > keys[:-1]).all()):  # one axis each: row-major already
        keys = torch.unique(keys)  # sorted: row-major
    if keys.numel() * 24 > budget:  # the indices, and the verdict's (rows, cols)
        _refuse(m, n, budget, f", with {keys.numel():,} dependences,")
    dep = _dependency(sparse_pattern(keys // n, keys % n, m, n), a, b, Evidence.PROBED, seed,
                      note)
    if keys.numel() == 0:  # nothing at all: every derivative is 0 at this x
        dep = _all_zero_note(dep, output.dtype)
    finite = values[held].abs()
    finite = finite[torch.isfinite(finite)]
    return _with_underflow_note(dep, output.dtype,
                                float(finite.min()) if finite.numel() else float("inf"))


OBSERVED_NOTE = ("observed at this x with grouped probes: a derivative under their "
                 "resolution may read 0")


ROUNDED_NOTE = ("{count} probed entr{ies} left out as {dtype} rounding (the first: {first}): "
                "{its} value did not scale with the probe as a derivative's does; a dependence "
                "that small cannot be told from rounding in {dtype}{advice}")


def _rounded_note(rounded, dtype: torch.dtype, a: int, b: int) -> str:
    """Says which non-zero answers were read as rounding (:func:`.grouptest.firm`) and left
    out of the pattern: not shown as dependences, not silently dropped either."""
    i, j = rounded[0]
    first = f"{_index('y', a, i)} ← {_index('x', b, j)}"
    name = str(dtype).replace("torch.", "")
    advice = "" if dtype == torch.float64 else ": check in float64 with x.double()"
    count = len(rounded)
    return ROUNDED_NOTE.format(count=f"{count:,}", ies="y" if count == 1 else "ies",
                               dtype=name, first=first, its="its" if count == 1 else "their",
                               advice=advice)


def _bounded_note(found, m: int) -> str:
    """Says how a wide pattern was bounded rather than resolved entry by entry, and what
    was not checked."""
    if found.blocks:
        return _blocks_note(found, m)
    if not found.cuts and found.margin == 0 and not len(found.exact_columns):
        return (f"{found.rows} of the {m:,} output indices probed one by one and they reach "
                "both corners, so it is dense whatever the others read; the other rows of "
                ".pattern are the band this implies, not resolved one by one")
    read = len(found.exact_columns)
    columns = (f", {read} input ind{'ex' if read == 1 else 'ices'} past the band read "
               "exactly" if read else "")
    margin = (f"; a dependence on those rows up to {found.margin} diagonals past the band "
              "is not ruled out" if found.margin else "")
    return (f"{found.rows} of the {m:,} output indices probed one by one, {found.cuts} prefix "
            f"and suffix sets bound the others{columns}; the other rows of .pattern are the "
            f"band this implies, not resolved one by one{margin}")


def _blocks_note(found, m: int) -> str:
    """Says how blocks were bounded rather than resolved entry by entry."""
    read = len(found.exact_columns)
    columns = (f", {read} input ind{'ex' if read == 1 else 'ices'} read across blocks or "
               "later in a block read exactly" if read else "")
    cuts = f", {found.cuts} cut sets find later reads inside a block" if found.cuts else ""
    margin = (f"; a read of a later index up to {found.margin} ahead in its own block, on "
              "those rows, is not ruled out" if found.margin else "")
    crossers = (f", and the {found.crossers:,} that read across blocks, found by sets of rows"
                if found.crossers else "")
    return (f"{found.rows} of the {m:,} output indices probed one by one{crossers}; sets of whole "
            f"blocks of {_sizes_words(found.blocks)} show no other read across blocks{cuts}"
            f"{columns}; "
            "the other rows of .pattern are the blocks' structure this implies, not resolved "
            f"one by one{margin}")


def _shown_witness(dep: Dependency, rows, columns) -> Dependency:
    """A bounded pattern's witness, as a dependence shown (on a row or column read exactly),
    never one its band implies: the first shown one the kind's simpler structure forbids
    (else the first shown off the diagonal)."""
    if dep.witness is None:
        return dep
    pattern = dep.pattern
    shown = torch.zeros_like(pattern, dtype=torch.bool)
    shown[rows] = pattern[rows]
    shown[:, columns] = pattern[:, columns]
    if shown[dep.witness]:
        return dep
    r, c = shown.nonzero(as_tuple=True)
    m, n = pattern.shape
    if dep.kind in EXCEPTING and (dep.offsets is not None or dep.blocks is not None):
        first = [~dep._allowed(r, c)]
    elif dep.kind == Kind.DENSE or (dep.kind == Kind.BAND and dep.offsets[0] == -(m - 1)):
        first = [c > r]
    elif dep.kind == Kind.BAND and dep.offsets[1] == n - 1:
        first = [c < r]
    else:
        first = []
    witness = next((w for w in (_first(r, c, where) for where in first + [c != r]) if w),
                   None)
    return replace(dep, witness=witness)


CONDITIONAL_NOTE = ("proved given the indices and masks the graph saved ({}): for every x "
                    "that gives the same ones")


def _given(dep: Dependency, given: tuple[str, ...]) -> Dependency:
    """``dep``, proved given the saved selections of ops ``given`` (none: as it is)."""
    return replace(dep, conditional_on=given, note=CONDITIONAL_NOTE.format(", ".join(given))) \
        if given else dep


UNDERFLOW_NOTE = "zeros may be {dtype} underflow: check in float64 with {name}.double()"
UNDERFLOW_MARGIN = 2.0**10  # a derivative this close to the dtype's smallest normal


def _with_underflow_note(dep: Dependency, dtype: torch.dtype, smallest: float,
                         name: str = "x") -> Dependency:
    """A verdict with zeros (any kind but dense) in a low-precision dtype whose probes met
    derivatives within :data:`UNDERFLOW_MARGIN` of the smallest normal number, or below its
    square root (a product of two such factors, h = 1e-30·h + x[t] two steps back, is 0): its
    zeros may be underflow, whatever the kind they make (a faint coupling lost leaves an
    "independent" or block-diagonal verdict as well as a band). ``name``: the input's, as the
    cell writes it (``x``: dependency's argument)."""
    if dep.kind is Kind.DENSE or not dtype.is_floating_point or torch.finfo(dtype).bits > 32:
        return dep
    tiny = torch.finfo(dtype).tiny
    if smallest > max(tiny * UNDERFLOW_MARGIN, tiny ** 0.5):
        return dep
    return _noted(dep, UNDERFLOW_NOTE.format(dtype=str(dtype).replace("torch.", ""),
                                             name=_spelled(name)))


ALL_ZERO_NOTE = ("every derivative is 0 at this {x}, though the output is computed from {x}: "
                 "{zero}")
HIDDEN_NOTE = ("the graph lets {reads}, offset {offset}, which reads 0 at every index at "
               "this x: {zero}")


def _all_zero_note(dep: Dependency, dtype: torch.dtype, name: str = "x") -> Dependency:
    """``dep`` noted that every derivative reads 0 at this ``name``, though computed from it."""
    return _noted(dep, ALL_ZERO_NOTE.format(x=name, zero=_zero_words(dtype, name)))


def _zero_words(dtype: torch.dtype, name: str = "x") -> str:
    """Why a derivative the graph allows can read 0, in words true of every cause: a product
    with 0 or terms that cancel (0 at every x) as well as a saturated or switched-off unit
    (0 at this x only), and in a low-precision dtype rounding."""
    words = (f"a product with 0 or terms that cancel give 0 at every {name}, a saturated or "
             f"switched-off unit at this {name} only")
    if dtype.is_floating_point and torch.finfo(dtype).bits <= 32:
        words += (f"; {str(dtype).replace('torch.', '')} also rounds small ones to 0: check "
                  f"in float64 with {_spelled(name)}.double()")
    return words


def _with_zeros_note(dep: Dependency, allowed, dtype: torch.dtype) -> Dependency:
    """``dep`` with a note where a whole diagonal the graph allows (``allowed``: the (rows,
    columns) it lets read, row-major) has no dependence at this x: the graph proves a bound
    of the pattern, and a verdict smaller than the bound (independent where a roll leaks,
    shut by a gate x > 1 at this x) holds at this x only, so it is "observed", not "proved"
    (a missing diagonal of the index's own entries leaves the kind proved)."""
    rows, columns = (torch.as_tensor(t).cpu() for t in allowed)
    if rows.numel() == 0:
        return dep
    offsets = columns - rows
    r, c = entries(dep.pattern) if dep.pattern.layout == torch.sparse_csr \
        else dep.pattern.nonzero(as_tuple=True)
    missing = ~torch.isin(offsets, torch.unique(c - r))
    if bool((offsets[missing] != 0).any()) and dep.evidence == Evidence.PROVED:
        dep = replace(dep, evidence=Evidence.OBSERVED)
    if r.numel() == 0:
        return _all_zero_note(dep, dtype)
    if not bool(missing.any()):
        return dep
    nearest = torch.where(missing, offsets.abs(), offsets.abs().max() + 1)  # nearest 0 first
    first = int(torch.argmin(nearest))  # the first row of that offset: row-major
    i, j = int(rows[first]), int(columns[first])
    reads = f"{_index('y', dep.out_axis, i)} read {_index('x', dep.in_axis, j)}"
    offset = f"{j - i:+d}".replace("-", "−")
    return _noted(dep, HIDDEN_NOTE.format(reads=reads, offset=offset, zero=_zero_words(dtype)))


CUT_NOTE = ("the graph is cut: {cut}{more} This verdict covers derivatives only: values "
            "read through a cut may make an index depend on others where it shows none")


def _through_cuts(dep: Dependency, result, name: str) -> Dependency:
    """``dep`` (read off ``result``) where the record shows a value computed from input
    ``name`` that reaches the output outside the graph (``r.cuts``, :mod:`vjp_magic.run.cuts`:
    ``x.mean(0).detach()``, ``.item()``, ``no_grad``): noted with the first cut and its line,
    and no longer "proved" (the graph's derivatives miss what is read through it)."""
    cuts = [cut for cut in getattr(result, "cuts", ()) if name in cut.inputs]
    if not cuts or dep.kind == Kind.DENSE:  # dense: nothing a cut could add
        return dep
    more = f" {len(cuts) - 1} more cut{'s' * (len(cuts) > 2)} too." if len(cuts) > 1 else ""
    evidence = Evidence.OBSERVED if dep.evidence == Evidence.PROVED else dep.evidence
    return _noted(replace(dep, evidence=evidence),
                  CUT_NOTE.format(cut=cuts[0].sentence(tail=False), more=more))


def _noted(dep: Dependency, note: str) -> Dependency:
    return replace(dep, note=note if dep.note is None else f"{dep.note}; {note}")


def _spelled(name: str) -> str:
    """The input as code that ``.double()`` may follow: ``xq``, ``mlp[0].weight``; a name
    that is no Python (``0.weight``, from a module given from Python) as ``x``."""
    spelled = operand(validation.parameter_expression(name))
    try:
        compile(spelled, "<name>", "eval")
    except SyntaxError:
        return "x"
    return spelled


# -- a memory refusal that says where the structure broke ------------------------------------
REFUSAL_SECONDS = 5.0  # a refusal waits at most about this long for its verdict
# ... and holds at most this much for its pattern (m × n bools, twice while probed): a 40,000-
# entry softmax's 1.6 GB pattern took 15 s to judge after its probes, and past this size the
# refusal says what to do without the verdict
REFUSAL_PATTERN_BYTES = 2**27


@contextmanager
def verdict_on_refusal(context, named: dict, point_out=()):
    """Around the analysis's memory refusal: when a larger pairing was rejected (or, with
    none tried, the shapes propose one), re-raise it saying where the structure breaks, with
    the :class:`Dependency` as ``error.dependency``. ``context`` has ``output``,
    ``output_name``, ``rejected`` (name → pairings), ``budget`` and ``probes`` (its
    ``seed``); ``named``: the inputs
    refused; ``point_out``: the output axes already taken as points."""
    try:
        yield
    except VJPUsageError as error:
        found = _refusal_dependency(context, named, point_out)
        if found is None:
            raise
        name, dep = found
        y = context.output_name
        refusal = VJPUsageError(
            f"{error} {y} is not independent of {name} along axis {dep.out_axis}: "
            f"{dep.describe(y, name)} (pattern: {dep.summary()}).")
        refusal.dependency = dep
        raise refusal from None


def _refusal_dependency(context, named, point_out):
    """(name, the first non-independent pattern) over the suspect axis pairs, or None."""
    for name, x in named.items():
        rejected = list(context.rejected.get(name, ()))[:1]
        proposed = rejected or structure.candidate_pairings(context.output.shape, x.shape, 1)[:1]
        pairs = [(a, b) for a, b in (proposed[0] if proposed else ())
                 if a not in point_out and x.shape[b] > 1][:2]
        for a, b in pairs:
            try:
                dep = probe_pattern(context.output, x, a, b,
                                    min(context.budget, REFUSAL_PATTERN_BYTES), REFUSAL_SECONDS,
                                    seed=context.probes.seed)
            except (OverTime, VJPUsageError):  # too long to wait for, or too large
                return None
            if dep.kind != Kind.INDEPENDENT:
                return name, dep
    return None


def _identity(x: torch.Tensor, out_axis: int, in_axis: int, budget, seed) -> Dependency:
    """The pattern of y = x itself (as :func:`vjp_magic.sparse_jacobian` gives I): along one
    axis index i reads index i only; along two axes every pair meets in some entry."""
    a = _axis(out_axis, x.dim(), f"output ({x.dim()}-d)")
    b = _axis(in_axis, x.dim(), f"input ({x.dim()}-d)")
    _refuse_empty(x, x)
    m, n = x.shape[a], x.shape[b]
    budget = memory.resolve_budget(budget, x.device)
    seed = new_seed() if seed is None else validation.checked_seed(seed)
    if a == b and 2 * m * n > budget:  # the diagonal, held sparsely
        own = torch.arange(m)
        return _dependency(sparse_pattern(own, own, m, n), a, b, Evidence.PROVED, seed)
    _refuse(m, n, budget)
    pattern = torch.eye(m, dtype=torch.bool) if a == b else torch.ones(m, n, dtype=torch.bool)
    return _dependency(pattern, a, b, Evidence.PROVED, seed)


def _check_tensors(output, x) -> None:
    """``dependency``'s two tensors: real, with values, the output computed from x."""
    if not isinstance(output, torch.Tensor) or not isinstance(x, torch.Tensor):
        raise VJPUsageError("dependency(output, x, out_axis, in_axis) takes two tensors.")
    refuse_unanalysable("The output", output)
    refuse_unanalysable("The input", x)
    if output.is_complex() or x.is_complex():
        raise VJPUsageError("dependency reads real tensors, and this one is complex: call it "
                            "on output.real and output.imag (or x.real, x.imag) separately.")
    for role, tensor in (("output", output), ("input", x)):
        if not tensor.is_floating_point():
            raise VJPUsageError(f"The {role} has dtype {tensor.dtype}: integer and bool tensors "
                                "have no derivatives. Create the input as floats with "
                                "requires_grad=True and compute a floating output from it.")
    if (output.grad_fn is None and output is not x) or not x.requires_grad:
        raise VJPUsageError("The output must be computed from x with autograd on: make x "
                            "with requires_grad=True and compute the output outside no_grad.")


@quiet_autograd(default_device=True)  # the user's global modes: not for us
@keeps_retained_grads  # a retain_grad tensor's .grad as a plain run leaves it
def dependency(output: torch.Tensor, x: torch.Tensor, out_axis: int = 0, in_axis: int = 0,
               memory_budget: int | float | None = None, seed: int | None = None) -> Dependency:
    """Which indices of ``output`` along ``out_axis`` read which of ``x`` along ``in_axis``,
    with a verdict, from the live autograd graph without computing the Jacobian.

    Batched random probes vᵀJ supported on sets of output indices (a group test), every input
    index checked with fresh probes (the columns that fail are read exactly); a NaN or ±inf
    in a probe is never read as a dependence, nor is a non-zero that does not scale when the
    probe is rescaled (rounding: a sum of terms that cancel in mathematics, as a softmax
    shifted by the batch's max; left out, and ``.note`` says how many and names the first).
    Where the graph proves the two axes paired, only the diagonal is probed; where it bounds
    what each index may read (shift-like ops: convolutions of stride 1, pads, slices,
    elementwise maps), only that band, a probe or two per colour (``.evidence`` "proved": of
    the graph, where a value read through ``.detach()`` or ``.item()`` is in no derivative;
    ``r.dependency`` names such cuts). ``x.grad`` is never changed; a complex output is
    refused (call it on ``.real``, ``.imag``); ``r.dependency`` reads the same off a result.

    Args:
        output (Tensor): computed from ``x`` with autograd on.
        x (Tensor): a tensor with ``requires_grad=True``.
        out_axis, in_axis (int): the axes compared. Default: 0 and 0.
        memory_budget (int or float, optional): what the pattern (m × n bools) may take: a
            fraction (< 1) of free memory, or bytes. Past it, the pattern is held sparsely
            (the Jacobian's nonzeros by compressed passes, as ``sparse_jacobian``): a
            ``torch.sparse_csr`` bool ``.pattern``, the same verdict; refused where the
            Jacobian has no sparse pattern.
        seed (int, optional): the probes' seed. Default: a fresh one, kept as ``.seed``.

    Returns:
        Dependency: ``.pattern``, bool (m × n): ``[i, j]`` is True when an output entry
        with index i along ``out_axis`` has a non-zero derivative with respect to an entry
        of x with index j along ``in_axis``; ``.kind``, the smallest description holding
        every dependence but a few exceptions (``.exceptions()``): ``"independent"``,
        ``"lower-triangular"`` (causal), ``"upper-triangular"``, ``"band"``,
        ``"block-diagonal"`` (``.blocks``), ``"block-lower-triangular"`` (packed causal
        sequences, ``.blocks``), ``"band with wrap-around"``, ``"sparse"`` (``.nonzeros``;
        a band with a leak: its band as ``.offsets``) or ``"dense"``;
        ``.witness``, the first dependence ``(i, j)`` the nearest simpler kind forbids (the
        first exception); ``.offsets``, the lowest and highest ``j - i`` (bands and
        triangles; modulo n with wrap-around); ``.note`` (float32 underflow; a pattern
        bounded, ``.complete`` False); ``.evidence``; ``.describe("y", "x")``.

    Example::

        >>> x = torch.randn(5, 3, requires_grad=True)
        >>> d = vjp_magic.dependency(torch.cumsum(x, 0), x)   # y[t] reads x[s], s <= t
        >>> d.kind, d.witness, d.offsets, d.describe("y", "x")
        ('lower-triangular', (1, 0), (-4, 0), 'y[1] ← x[0]')
    """
    _check_tensors(output, x)
    if output is x:  # the identity: no graph, no pass
        return _identity(x, out_axis, in_axis, memory_budget, seed)
    refuse_on_its_graph(output)  # a backward running the user's code again: before any pass
    try:
        return probe_pattern(output, x, out_axis, in_axis, memory_budget, seed=seed)
    except RuntimeError as error:
        usage = graph_usage_error(error)
        if usage is None:
            raise
        raise usage from None
