"""Group testing on a live graph: which indices along an output axis reach which indices along
an input axis, without the Jacobian.

:class:`SetProber` draws random vectors vᵀ supported on sets of output indices (values from
:func:`.probes.set_probe_values`, the run's seed) and reads where vᵀJ is non-zero, in batched
calls sized to take about :data:`.derivatives.CHUNK_SECONDS` each (an interrupt is answered
between two). :func:`probed_pattern` decodes the pattern at a cost that grows with the
structure, not the size (:mod:`.setdecode`): a few output indices one by one; blocks they
propose decoded by sets of whole blocks and of each local index (:mod:`.blockdecode`); a dense or
triangular mixing too costly to resolve row by row is bounded from those rows, and prefix and
suffix sets find what lies past their band, read exactly (the pattern then not complete:
:func:`_bounded`); otherwise bit-coded sets (2·log₂ m probes name every input
index read by one output index, or by its own index and one other), a band decoded from one
set per colour, halving for what is left; then a check with fresh values (by zero or
non-zero only in float16 and bfloat16: :func:`_rank_sets`), and one probe per output index if
the check disagrees. A non-finite answer (0·∞ where a zero entry of v meets
an infinite derivative) is never read as a dependence: those input indices are read again
one output index at a time and, through double backward, one input index at a time (forward
mode; :func:`resolved_columns`). Nor is rounding: an answer read one output index or one input
index at a time is read again with the probe rescaled, and a non-zero that does not scale as a
derivative does (:func:`firm`) is left out, kept in :attr:`SetProber.rounded` for the note.
"""
from __future__ import annotations

import math
import time
from typing import NamedTuple

import torch

from . import blockdecode, setdecode
from .checked_batches import checked_batch
from .derivatives import CHUNK_SECONDS, Batching, chunk_size
from .indexmaps import proved_pattern
from .probes import probe_generator, set_probe_values
from .torch_api import TorchError, torch_error
from .vectorising import Payoff
from .torch_api import guarded_grad as autograd_grad  # every pass under pass_guard

# Resolve a wide (dense, triangular) pattern row by row when its probes touch at most this
# many entries (vectors × the output's and x's entries: work counted, not timed, so that the
# same input always takes the same path and gets the same verdict) ...
RESOLVE_ENTRIES = 2**22
RESOLVE_ROWS = 256  # ... or the axis has at most this many indices


class Probed(NamedTuple):
    """A probed pattern. ``complete``: every entry resolved; False for a wide mixing bounded
    from ``rows`` output indices probed one by one (the rest: the band they imply), where
    ``exact_rows`` and ``exact_columns`` are read exactly (their entries are dependences
    shown, the others' may be implied), and a dependence up to ``margin`` diagonals beyond
    the band, on a row not read, is not ruled out (``cuts``: the prefix and suffix sets)."""

    pattern: torch.Tensor
    complete: bool
    rows: int
    probes: int
    smallest: float  # the smallest non-zero |vᵀJ| seen (underflow shows as exact zeros)
    exact_rows: torch.Tensor | None = None
    exact_columns: torch.Tensor | None = None
    margin: int = 0
    cuts: int = 0
    rounded: tuple[tuple[int, int], ...] = ()  # entries left out as rounding (row-major)
    blocks: tuple[int, ...] = ()  # bounded by blocks of these sizes (no read crosses them)
    crossers: int = 0  # ... and this many output indices found reading across them


def probed_pattern(output, x, a: int, b: int, budget: int, seed: int,
                   max_seconds: float | None = None, workspace: int = 0) -> Probed:
    """(m × n) bool: which indices of ``output`` along ``a`` reach which of ``x`` along
    ``b``, by set probes drawn from ``seed`` (raises :class:`OverTime` past ``max_seconds``)."""
    m, n = output.shape[a], x.shape[b]
    prober = SetProber(output, x, a, b, budget, seed, max_seconds, workspace=workspace)
    sample = setdecode.sample_rows(m, seed)
    prober.track_smallest = output.dtype.is_floating_point and output.element_size() <= 4
    # one by one: their smallest answers are underflow's edge; read as they are (a rounding
    # among them fails the value check of :func:`_verified`, and its column is read again)
    rows = prober.row_hits(sample, firm=False)
    prober.track_smallest = False
    prober.sample, prober.sampled = sample, rows
    blocked = _blocked(prober, sample, rows)
    if blocked is not None:
        return blocked
    if setdecode.wide(rows, n):  # dense, triangular: row by row, or bounded
        if not _cheap(prober, m):
            return _bounded(prober, sample, rows)
        pattern = None
    else:
        pattern = _group_test(prober, m, n)
    if pattern is not None:
        pattern = _verified(prober, pattern)
    if pattern is None:
        pattern = prober.row_hits(torch.arange(m), batched=False)
    columns = prober.unknown.nonzero().flatten()
    if columns.numel():
        pattern[:, columns] = resolved_columns(prober, columns)
    return Probed(pattern, True, m, prober.count, prober.smallest,
                  rounded=prober.rounded_out(pattern))


def diagonal_hits(output, x, a: int, b: int, budget: int, seed: int) -> torch.Tensor:
    """(m,) bool: which output indices read their own input index, where the graph proves no
    other is read (one probe on every output index; non-finite answers read again; in float16
    and bfloat16, zeros again with fresh values, three times: a sum over a slice cancels
    exactly with a chance near 2⁻⁸)."""
    m = output.shape[a]
    prober = SetProber(output, x, a, b, budget, seed)
    hit = prober.firm_hits(torch.ones(1, m, dtype=torch.bool))[0][0]  # rounding: no read
    for stream in range(1, 4) if coarse_dtype(output.dtype) else ():  # a sum that cancelled?
        zero = ~hit & ~prober.unknown
        if not bool(zero.any()):
            break
        again = SetProber(output, x, a, b, budget, seed, stream=stream, limit=prober.limit)
        hit |= again.hits(zero[None])[0] & zero  # fresh values on the zeros alone
        prober.unknown |= again.unknown
    columns = prober.unknown.nonzero().flatten()
    if columns.numel():
        hit[columns] = resolved_columns(prober, columns)[columns, torch.arange(len(columns))]
    return hit


def proved_hits(output, x, a: int, b: int, budget: int, seed: int, allowed,
                max_seconds: float | None = None) -> Probed | None:
    """The pattern where the graph proves which entries may be read (``allowed``: their
    (rows, columns), row-major: :func:`.indexmaps.walk.proved_band`): the output indices
    coloured so that those of one colour may read no common input index, one probe per
    colour, each read again rescaled (:meth:`SetProber.firm_hits`: rounding is no
    dependence), and a check probe per colour with every output index's slice weighted at
    random (:func:`_value_check`: an answer that is not its one claimed reader's, as a rule
    that missed an entry would give); a few times the band's width in all, whatever the
    size. None (the group test instead) where the colours are too many, the dtype too
    coarse for the value check, or the check fails."""
    m, n = output.shape[a], x.shape[b]
    r, c = allowed
    width = int((c - r).max() - (c - r).min()) + 1 if len(r) else 1
    if width > setdecode.MAX_COLOURS or coarse_dtype(output.dtype):
        return None
    colour = torch.arange(m) % width  # rows width apart read disjoint offsets r + lo..hi
    sets = colour[None, :] == torch.arange(min(width, m))[:, None]
    prober = SetProber(output, x, a, b, budget, seed, max_seconds)
    prober.track_smallest = output.dtype.is_floating_point and output.element_size() <= 4
    hit, rounded = prober.firm_hits(sets)  # colours × n
    prober.track_smallest = False
    held = hit[colour[r], c]  # row r's colour reached c, which row r alone may read
    for entry in zip(r[rounded[colour[r], c]].tolist(), c[rounded[colour[r], c]].tolist()):
        prober.rounded[entry] = None
    fresh = SetProber(output, x, a, b, budget, seed, max_seconds, stream=1, limit=prober.limit)
    fresh.batching.methods, fresh.payoff = prober.batching.methods, prober.payoff
    beta = _weightings(colour, probe_generator(seed, "dependency-weights"))[:1]  # one: a check
    colours = sets.double()
    value, size, reached, bad = fresh.projections(torch.cat([colours, colours * beta]),
                                                  _features(fresh))
    known = ~(prober.unknown | bad.any(0))
    wrong = _value_check((r[held], c[held]), colour, beta, value, size, reached, output.dtype)
    if bool((wrong & known).any()):
        return None
    pattern = torch.zeros(m, n, dtype=torch.bool)
    pattern[r[held], c[held]] = True
    columns = (~known).nonzero().flatten()
    if columns.numel():  # a NaN or ±inf answered: read exactly, within what may be read
        prober.unknown |= ~known
        bound = torch.zeros(m, n, dtype=torch.bool)
        bound[r, c] = True
        pattern[:, columns] = resolved_columns(prober, columns) & bound[:, columns]
    return Probed(pattern, True, m, prober.count + fresh.count, prober.smallest,
                  rounded=prober.rounded_out(pattern))


def _cheap(prober, m: int) -> bool:
    """Whether one probe per output index is affordable (exact, even for a wide pattern)."""
    return m <= RESOLVE_ROWS or _affordable(prober, m)


def _affordable(prober, vectors: int) -> bool:
    """Whether ``vectors`` probes touch at most :data:`RESOLVE_ENTRIES` entries."""
    return vectors * (prober.output.numel() + prober.x.numel()) <= RESOLVE_ENTRIES


# -- blocks along the axis ------------------------------------------------------------------
def _blocked(prober, sample: torch.Tensor, rows: torch.Tensor) -> Probed | None:
    """Blocks that the sampled rows propose, of one size or, placed by reading about one row
    per block more, of unequal sizes (:mod:`.blockdecode`), or None: no read crosses them
    but at a few input indices; inside, every row read by one set per local index where
    that is cheap (complete: :func:`_blocks_read`), else the blocks' structure bounds the
    rows not read (:func:`_blocks_bounded`). Not in float16 and bfloat16, whose set sums
    cancel exactly with a chance near 2⁻⁸."""
    m, n = prober.output.shape[prober.a], rows.shape[1]
    if coarse_dtype(prober.output.dtype):  # sums there cancel by chance
        return None
    proposal = blockdecode.proposed(sample, rows, m, n)
    if proposal is None:
        proposal = blockdecode.walked(prober, sample, rows, m, n)
        if proposal is None:
            return None
        starts, lower, sample, rows = proposal
        order = torch.argsort(sample)
        sample, rows = sample[order], rows[order]
    else:
        starts, lower = proposal
    crossed = blockdecode.crossings(prober, starts, m, n)
    if crossed is None or bool(prober.unknown.any()):
        return None
    longest = max(blockdecode.sizes(starts))
    if longest <= blockdecode.EXACT_SIZE or _affordable(prober, 2 * longest):
        return _blocks_read(prober, starts, crossed)
    return _blocks_bounded(prober, sample, rows, starts, lower, crossed)


def _blocks_read(prober, starts, crossed: torch.Tensor) -> Probed | None:
    """Every row of the blocks read by one set per local index, the input indices
    read across blocks (``crossed``) read exactly (forward mode), or None past
    :data:`.blockdecode.CROSSED` of them."""
    m, n = prober.output.shape[prober.a], len(crossed)
    if int(crossed.sum()) > blockdecode.CROSSED:
        return None
    pattern = blockdecode.within(prober, starts, m, n)
    read = crossed.nonzero().flatten()
    if read.numel():
        pattern[:, read] = exact_columns(prober, read)
    columns = prober.unknown.nonzero().flatten()
    if columns.numel():
        pattern[:, columns] = resolved_columns(prober, columns)
    return Probed(pattern, True, m, prober.count, prober.smallest,
                  rounded=prober.rounded_out(pattern))


def _blocks_bounded(prober, sample, rows, starts, lower: bool, crossed) -> Probed | None:
    """The blocks' structure bounds the rows not read: the output indices that read across
    blocks found by sets of rows (:func:`_crossers`: a cost set by how many they are, not by the
    batch) and read one by one; lower-triangular blocks checked by cuts for later reads,
    whose input indices are read exactly (forward mode). Input indices read across blocks
    that the readers found do not explain (by the bit-coded sets, or random sets with
    fresh values: :func:`_unexplained`) are read exactly too. None past
    :data:`.blockdecode.CROSSED` readers or input indices to read exactly."""
    m, n = prober.output.shape[prober.a], rows.shape[1]
    crossers = _crossers(prober, starts, m, crossed)
    gap, cuts, later = 1, 0, torch.zeros(n, dtype=torch.bool)
    if crossers is not None and lower:
        later, gap, cuts = blockdecode.later_reads(prober, starts, m, n, CUTS)
    if crossers is None or int(later.sum()) > blockdecode.CROSSED \
            or bool(prober.unknown.any()):
        return None
    pattern = blockdecode.claimed(starts, m, lower)
    pattern[sample] = rows
    if len(crossers):
        pattern[crossers] = prober.row_hits(crossers)
    block = blockdecode.block_of(starts, n)
    explained = (pattern[crossers] & (block[crossers][:, None] != block[None, :])).any(0)
    missed = _unexplained(prober, starts, pattern, crossers)
    read = (later | missed | (crossed & ~explained)).nonzero().flatten()
    if len(read) > blockdecode.CROSSED or bool(prober.unknown.any()):
        return None
    if read.numel():
        pattern[:, read] = exact_columns(prober, read)
    shown = torch.cat([sample, crossers]).unique()
    return Probed(pattern, False, len(sample), prober.count, prober.smallest, shown, read,
                  gap - 1, cuts, blocks=blockdecode.sizes(starts), crossers=len(crossers))


def _unexplained(prober, starts, pattern: torch.Tensor, crossers) -> torch.Tensor:
    """(n,) bool: the input indices that bit-coded sets of whole blocks, the blocks numbered
    afresh at random, reach outside their blocks with fresh values (an independent check of
    :func:`.blockdecode.crossings`: any two blocks lie apart in some set, so every read
    across is seen), where no reader found among the sets' rows (``crossers``, their rows
    in ``pattern``) reads them."""
    m, n = pattern.shape
    blocks = len(starts) - 1
    generator = probe_generator(prober.seed, "dependency-block-check")
    order = torch.randperm(blocks, generator=generator)
    chosen = setdecode.bit_sets(blocks, max((blocks - 1).bit_length(), 1))[:, order]
    sets = blockdecode.block_sets(chosen, starts, m)
    fresh = SetProber(prober.output, prober.x, prober.a, prober.b, prober.budget, prober.seed,
                      prober.max_seconds, stream=1, limit=prober.limit)
    fresh.batching.methods, fresh.payoff = prober.batching.methods, prober.payoff
    reached = fresh.hits(sets)
    prober.unknown |= fresh.unknown
    prober.count += fresh.count
    explained = (sets[:, crossers].float() @ pattern[crossers].float()) > 0
    return (reached & ~blockdecode.block_sets(chosen, starts, n) & ~explained).any(0)


def _crossers(prober, starts, m: int, crossed: torch.Tensor) -> torch.Tensor | None:
    """(k,) long: the output indices reading some of ``crossed`` outside their own block
    (``starts``: :mod:`.blockdecode`): one reader each read off bit-coded sets
    (:func:`.blockdecode.single_readers`), else by halving with each input index's own block
    left out (:func:`.setdecode.halving`); None past :data:`.blockdecode.CROSSED` of them
    or of blocks whose indices are read across."""
    columns = crossed.nonzero().flatten()
    if not columns.numel():
        return columns
    block = blockdecode.block_of(starts, len(crossed))[columns]
    start = starts[block]
    if len(start.unique()) > blockdecode.CROSSED_BLOCKS:
        return None
    single = blockdecode.single_readers(prober, m, columns, (start, starts[block + 1]))
    if single is not None:
        return single
    found = setdecode.halving(prober, m, columns, (start, starts[block + 1]),
                              most=2 * (blockdecode.CROSSED + blockdecode.CROSSED_BLOCKS))
    if found is None or int(found.any(1).sum()) > blockdecode.CROSSED:
        return None
    return found.any(1).nonzero().flatten()


# -- a wide mixing, bounded --------------------------------------------------------------------
CUTS = 16  # prefix and suffix (or cut) sets of a bounded pattern, a count (never timed)
EXACT_COLUMNS = 16  # input indices a cut shows beyond the band, read exactly (the farthest)


def _bounded(prober, sample: torch.Tensor, rows: torch.Tensor) -> Probed:
    """A wide pattern too costly to resolve row by row: the band of offsets j − i the sampled
    rows read, the rows exact. A prefix set of output indices (below a cut k) reaching an
    input index past its band (c > k − 1 + hi), or a suffix set (from k) one before it, shows
    a dependence outside the band: the farthest such input indices are read exactly (forward
    mode), the band widened to hold the rest. Cuts every g indices find every dependence
    at least g − 1 diagonals past the band (the one of the largest offset lies below the next
    cut): nearer ones, on rows not read, are the pattern's ``margin``, not ruled out."""
    m, n = prober.output.shape[prober.a], rows.shape[1]
    r, c = rows.nonzero(as_tuple=True)
    offsets = c - sample[r]
    lo, hi = (int(offsets.min()), int(offsets.max())) if offsets.numel() else (0, 0)
    empty = torch.zeros(0, dtype=torch.long)
    if lo == -(m - 1) and hi == n - 1:  # both corners read: dense, whatever the rest
        pattern = torch.ones(m, n, dtype=torch.bool)
        pattern[sample] = rows
        return Probed(pattern, False, len(sample), prober.count, prober.smallest, sample, empty)
    prefixes, suffixes, gap = _cuts(m, n, lo, hi)
    index = torch.arange(m)
    sets = torch.cat([index[None, :] < prefixes[:, None], index[None, :] >= suffixes[:, None]])
    reached = prober.hits(sets) if len(sets) else torch.zeros(0, n, dtype=torch.bool)
    column = torch.arange(n)
    # how far past the band each reached input index lies, for the cut that says most
    past = torch.cat([column[None, :] - (prefixes[:, None] - 1) - hi,
                      suffixes[:, None] + lo - column[None, :]])
    past = torch.where(reached, past, 0).amax(0) if len(sets) else torch.zeros(n, dtype=torch.long)
    outside = (past > 0).nonzero().flatten()
    farthest = outside[torch.argsort(past[outside], descending=True, stable=True)]
    read, rest = farthest[:EXACT_COLUMNS].sort().values, farthest[EXACT_COLUMNS:]
    if rest.numel():  # widened to hold what the cuts reached past it
        hi_rest = torch.cat([column[None, :] - (prefixes[:, None] - 1), torch.full(
            (len(suffixes), n), hi)])
        lo_rest = torch.cat([torch.full((len(prefixes), n), lo),
                             column[None, :] - suffixes[:, None]])
        keep = reached & torch.isin(column, rest)[None, :]
        hi = max(hi, int(torch.where(keep, hi_rest, hi).max()))
        lo = min(lo, int(torch.where(keep, lo_rest, lo).min()))
    offset = torch.arange(n)[None, :] - torch.arange(m)[:, None]
    pattern = (offset >= lo) & (offset <= hi)
    pattern[sample] = rows
    if read.numel():
        pattern[:, read] = exact_columns(prober, read)
    return Probed(pattern, False, len(sample), prober.count, prober.smallest, sample, read,
                  gap - 1, len(sets))


def _cuts(m: int, n: int, lo: int, hi: int):
    """(prefix cuts, suffix cuts, spacing g): :data:`CUTS` cuts every g output indices, on
    the sides where a dependence can lie past the band (none after a band reaching the last
    input index: a triangle needs prefixes only); a cut whose set could show nothing is left
    out."""
    count = CUTS
    before, after = lo > -(m - 1), hi < n - 1
    sides = max(int(before) + int(after), 1)
    gap = max(1, -(-m // (count // sides + 1)))
    cuts = torch.arange(gap, m + 1, gap) if m > 1 else torch.zeros(0, dtype=torch.long)
    prefixes = torch.cat([cuts, torch.tensor([m])]).unique() if after else cuts[:0]
    prefixes = prefixes[prefixes - 1 + hi < n - 1]  # some input index past the band
    suffixes = torch.cat([torch.tensor([0]), cuts[cuts < m]]) if before else cuts[:0]
    suffixes = suffixes[suffixes + lo > 0]
    return prefixes, suffixes, gap


# -- the set prober ------------------------------------------------------------------------
class OverTime(Exception):
    """Probing would take longer than it was allowed."""


class SetProber:
    """Which input indices (along ``b``) sets of output indices (along ``a``) reach.

    A probe is a random vector of entries ±(1..2) on the set's slices of the output and 0
    elsewhere, drawn from ``seed`` (``stream``: an independent draw); vᵀJ is non-zero at an
    input index exactly when some output entry of the set has a non-zero derivative there
    (barring an exact cancellation: the final check). A non-finite answer says nothing: its
    input index goes to :attr:`unknown` and is not a hit.
    """

    def __init__(self, output, x, a, b, budget, seed: int, max_seconds=None, stream: int = 0,
                 limit=None, workspace: int = 0):
        self.output, self.x, self.a, self.b, self.budget = output, x, a, b, budget
        self.seed = seed
        # each probe of a batch holds its own copy of every gradient on the graph
        self.limit = limit or chunk_size(output, [x], budget, workspace)
        self.values = set_probe_values(output, seed, "dependency", stream)
        self.began, self.max_seconds, self.count = time.perf_counter(), max_seconds, 0
        self.unknown = torch.zeros(x.shape[b], dtype=torch.bool)
        self.step, self.seconds, self.smallest = 2, 0.0, float("inf")
        self.track_smallest = False  # the smallest |vᵀJ| (costs a pass over each answer)
        self.batching = Batching()  # every vectorised pass checked; one that fails: plain
        self.payoff = Payoff(())  # ... and vectorised only while that pays (:meth:`vjps`)
        self.rounded: dict[tuple[int, int], None] = {}  # (row, column) read as rounding
        self.left_out: torch.Tensor | None = None  # (m,) bool: output indices in no set

    def rounded_out(self, pattern: torch.Tensor) -> tuple[tuple[int, int], ...]:
        """The entries read as rounding (:func:`firm`) that ``pattern`` leaves out,
        row-major."""
        return tuple(sorted(e for e in self.rounded if not bool(pattern[e])))

    def note_rounded(self, rows: torch.Tensor, columns: torch.Tensor,
                     rounded: torch.Tensor) -> None:
        """Keeps the entries (rows[i], columns[j]) where ``rounded[i, j]``."""
        i, j = rounded.nonzero(as_tuple=True)
        for row, column in zip(rows[i].tolist(), columns[j].tolist()):
            self.rounded[(row, column)] = None

    def vectors(self, sets: torch.Tensor) -> torch.Tensor:
        """One random vector restricted to each set: every probe's answer holds on its own
        (a cancellation needs a relation among the values on the set, which has chance 0)."""
        if self.left_out is not None:  # rows read apart (hubs): in no set
            sets = sets & ~self.left_out
        on = sets.to(device=self.output.device, dtype=self.output.dtype)
        on = on.reshape((len(sets),) + tuple(-1 if d == self.a else 1
                                              for d in range(self.output.dim())))
        return self.values * on

    def answers(self, sets: torch.Tensor, batched: bool = True):
        """(k × n_out) sets → (k × n_in) bool twice: which input indices each set reaches
        (a finite non-zero), and where its answer was NaN or ±inf."""
        self._check_time(len(sets))
        if not len(sets):  # no set to ask about (no rows left): no answers
            empty = torch.zeros(0, self.x.shape[self.b], dtype=torch.bool)
            return empty, empty.clone()
        hits, unknown = [], []
        start = 0
        self.batching.new_set()  # other sets than the last round's: checked afresh
        while start < len(sets):  # calls of about CHUNK_SECONDS each: Ctrl-C gets through
            part = sets[start:start + max(1, min(self.limit, self.step))]
            began = time.perf_counter()
            g = self.vjps(self.vectors(part), batched)
            hit, bad = _read(g, 1 + self.b)
            if self.track_smallest:
                self.smallest = min(self.smallest, _smallest(g))
            elapsed = time.perf_counter() - began
            self.seconds += elapsed
            self.step = max(1, int(len(part) * CHUNK_SECONDS / max(elapsed, 1e-6)))
            hits.append(hit)
            unknown.append(bad)
            self.count += len(part)
            start += len(part)
        return torch.cat(hits), torch.cat(unknown)

    def projections(self, weights: torch.Tensor, u: torch.Tensor):
        """(k × n_out) float weights on output indices → the answers vᵀJ projected on the
        columns of ``u`` (weights over each input slice: k × n_in × u's columns), their
        magnitudes (|vᵀJ|·|u|, likewise), and (k × n_in) where they are non-zero and where
        non-finite."""
        self._check_time(len(weights))
        parts = []
        self.batching.new_set()  # other weights than the last round's: checked afresh
        for start in range(0, len(weights), max(1, min(self.limit, self.step))):
            part = weights[start:start + max(1, min(self.limit, self.step))]
            g = self.vjps(self.vectors(part))
            hit, bad = _read(g, 1 + self.b)
            g = g.detach().movedim(1 + self.b, 1).reshape(len(part), hit.shape[1], -1)
            g = torch.where(torch.isfinite(g), g, 0).to(u.dtype)
            parts.append((g @ u.to(g.device), g.abs() @ u.abs().to(g.device), hit, bad))
            self.count += len(part)
            self.unknown |= bad.any(0)
        return tuple(torch.cat([p[i].cpu() for p in parts]) for i in range(4))

    def vjps(self, v: torch.Tensor, batched: bool = True) -> torch.Tensor:
        """vᵀJ for each probe of ``v``, each vectorised batch checked
        (:func:`.checked_batches.checked_batch`): vectorised while that pays on this graph
        (:meth:`.vectorising.Payoff.pays`, as :class:`.derivatives.PaidBatches` judges it:
        a convolution's backward under ``vmap`` costs about 3× a plain pass per vector on a
        CPU), else (or ``batched`` False) plain passes. The first vector of the first batch
        is a plain pass, timed."""
        batched = batched and len(v) > 1 and bool(self.batching.methods)
        if batched and self.payoff.plain is None:
            began = time.process_time()
            (head,) = checked_batch(self.output, [self.x], v[:1], batched=False)
            self.payoff.timed(1, time.process_time() - began, False)
            return torch.cat([head, self.vjps(v[1:])])
        began = time.process_time()
        (g,) = checked_batch(self.output, [self.x], v, batched=batched, log=self.batching)
        if self.batching.vectorised and not self.payoff.pays(len(v),
                                                             time.process_time() - began):
            self.batching.methods.clear()  # plain passes were faster here: the rest are plain
        return g

    def hits(self, sets: torch.Tensor, batched: bool = True) -> torch.Tensor:
        """(k × n_out) sets → (k × n_in) bool: which input indices each set reaches."""
        hit, unknown = self.answers(sets, batched)
        self.unknown |= unknown.any(0)
        return hit

    def row_hits(self, rows: torch.Tensor, batched: bool = True,
                 firm: bool = True) -> torch.Tensor:
        """One probe per output index in ``rows``: (len(rows) × n_in), each answer read
        again with the probe rescaled unless ``firm`` is False (:func:`firm`): a non-zero that
        does not scale as a derivative does is rounding, not a dependence (kept in
        :attr:`rounded`)."""
        if not firm:
            return self.hits(self.row_sets(rows), batched)
        hit, rounded = self.firm_hits(self.row_sets(rows), batched)
        self.note_rounded(rows, torch.arange(hit.shape[1]), rounded)
        return hit

    def firm_hits(self, sets: torch.Tensor, batched: bool = True):
        """(k × n_out) sets → (k × n_in) bool twice: which input indices each set reaches, by
        answers that scale as derivatives do under a rescaled probe (:func:`firm`), and
        where a non-zero did not (rounding; none in float16 and bfloat16)."""
        if not len(sets) or not resolves_rounding(self.output.dtype) \
                or self.max_seconds is not None:  # a refusal's verdict, in a few seconds
            hit = self.hits(sets, batched)
            return hit, torch.zeros_like(hit)
        self._check_time(2 * len(sets))
        hits, unknown, rounding = [], [], []
        self.batching.new_set()
        for start in range(0, len(sets), max(1, min(self.limit, self.step))):
            part = sets[start:start + max(1, min(self.limit, self.step))]
            began = time.perf_counter()
            v = self.vectors(part)
            scale = rescaling(len(part), self.seed, start).to(v)
            g = self.vjps(v, batched)
            h = self.vjps(v * scale.reshape((-1,) + (1,) * (v.dim() - 1)), batched)
            if self.track_smallest:
                self.smallest = min(self.smallest, _smallest(g))
            self.seconds += time.perf_counter() - began
            self.count += 2 * len(part)
            hit, bad, rounded = firm(g, h, scale, 1 + self.b)
            hits.append(hit)
            unknown.append(bad)
            rounding.append(rounded)
        self.unknown |= torch.cat(unknown).any(0)
        return torch.cat(hits), torch.cat(rounding)

    def row_sets(self, rows: torch.Tensor) -> torch.Tensor:
        sets = torch.zeros(len(rows), self.output.shape[self.a], dtype=torch.bool)
        sets[torch.arange(len(rows)), rows] = True
        return sets

    def _check_time(self, more: int) -> None:
        if self.max_seconds is None or not self.count:
            return
        spent = time.perf_counter() - self.began
        if spent + more * spent / self.count > self.max_seconds:
            raise OverTime


def _smallest(g: torch.Tensor) -> float:
    """The smallest finite non-zero |entry| of ``g`` (inf if none)."""
    if not g.numel():
        return float("inf")
    g = g.detach().abs()  # NaN compares false (left out); inf is never the smallest
    return float(torch.where(g > 0, g, float("inf")).amin())


def _read(g: torch.Tensor, axis: int):
    """(k, …) answers → (k × size along ``axis``) bool twice: a finite non-zero anywhere on
    the slice, a NaN or ±inf anywhere on it."""
    g = g.detach().movedim(axis, 1)
    g = g.reshape(len(g), g.shape[1], -1)
    top = torch.linalg.vector_norm(g, float("inf"), dim=2)  # max |g|: NaN and ±inf carry
    if bool(torch.isfinite(top).all()):  # the common case: one pass says so
        hit = top.ne(0).cpu()
        return hit, torch.zeros_like(hit)
    bad = ~torch.isfinite(g)
    return (g.ne(0) & ~bad).any(2).cpu(), bad.any(2).cpu()


def rounding_tolerance(dtype: torch.dtype) -> float:
    """How far (relative) a rescaled probe's answer may lie from the rescaled first answer and
    still scale as a derivative does: √ε. vᵀJ is linear in v and its rounding error is
    ε-relative to the terms that sum into it, so a derivative at least √ε of its terms (a
    BatchNorm of two samples: 1e-4 of them) scales within √ε, while rounding (a sum of terms
    that cancel in mathematics) changes arbitrarily: it matches within √ε by chance only."""
    return torch.finfo(dtype).eps ** 0.5


def resolves_rounding(dtype: torch.dtype) -> bool:
    """Whether answers in ``dtype`` are told from rounding by a rescaled probe (float32,
    float64; float16 and bfloat16 are too coarse: their sums cancel exactly by chance, and
    are checked otherwise: :func:`coarse_dtype`)."""
    return dtype.is_floating_point and not coarse_dtype(dtype)


def rescaling(count: int, seed: int, draw: int) -> torch.Tensor:
    """(count,) float64 factors in 1.25..1.75 (never a power of 2, whose rescaling is exact
    in floating point and would rescale rounding too; a rounding error of one unit, rescaled
    into a binade's neighbour, is off by over 1/8), one per probe."""
    generator = probe_generator(seed, "dependency-rescaling", draw)
    return torch.rand(count, generator=generator, dtype=torch.float64) / 2 + 1.25


def firm(g: torch.Tensor, h: torch.Tensor, scale: torch.Tensor, axis: int):
    """(k, …) answers of k probes ``g`` and of the same probes times ``scale`` (k,), ``h`` →
    (k × size along ``axis``) bool three times: where a finite non-zero of ``g`` scales as a
    derivative does (|h − s·g| within :func:`rounding_tolerance` of |s·g|; or s·g past the
    dtype's largest; or |g| under the square root of its smallest normal, where a subnormal
    step on the way, e^−100 in float32, is off by percents: rounding of terms that cancel is
    ε of them, never that small, and the underflow note speaks of these), where an answer of
    ``g`` is NaN or ±inf, and where every non-zero of the slice fails to scale (rounding: the
    sum of terms that cancel, such as a shift-invariant softmax's dependence on the batch's
    max, changes arbitrarily, not in proportion)."""
    g = g.detach().movedim(axis, 1)
    g = g.reshape(len(g), g.shape[1], -1)
    h = h.detach().movedim(axis, 1).reshape(g.shape)
    s = scale.to(g.device, torch.float64).reshape(-1, 1, 1)
    bad = ~torch.isfinite(g)
    g64, h64 = torch.where(bad, 0, g).double(), h.double()
    tolerance = rounding_tolerance(g.dtype)
    small = torch.finfo(g.dtype).tiny ** 0.5  # near underflow: trusted, not judged
    scaled = (g64 != 0) & (~torch.isfinite(h64) | (g64.abs() <= small)
                           | ((h64 - s * g64).abs() <= tolerance * (s * g64).abs()))
    nonzero = (g64 != 0).any(2)
    hit, bad = scaled.any(2), bad.any(2)
    return hit.cpu(), bad.cpu(), (nonzero & ~hit & ~bad).cpu()


def resolved_columns(prober: SetProber, columns: torch.Tensor) -> torch.Tensor:
    """(m × len(columns)): the dependences at input indices where a probe answered NaN or
    ±inf. Each output index's row (reverse mode) and each of these columns (forward mode)
    are read: an entry is a dependence where either finds a finite non-zero, or where both
    are non-finite and the graph's index maps allow it (0·∞ in a row that never reads that
    index, at a zero of sqrt's input, is no dependence); a finite zero either way rules it
    out."""
    m = prober.output.shape[prober.a]
    hit, unknown = prober.answers(prober.row_sets(torch.arange(m)), batched=False)
    hit, unknown = hit[:, columns], unknown[:, columns]
    forward_hit, forward_unknown = _forward_answers(prober, columns)
    both = unknown & forward_unknown
    if bool(both.any()):
        both &= _allowed(prober, columns)
    return hit | forward_hit | both


def _allowed(prober: SetProber, columns: torch.Tensor) -> torch.Tensor:
    """(m × len(columns)) bool: the dependences the graph's index maps allow between the two
    axes (:func:`.indexmaps.proved_pattern`, projected onto them); all where none is proved."""
    output, x, a, b = prober.output, prober.x, prober.a, prober.b
    m = output.shape[a]
    proved = proved_pattern(output, x, prober.budget, dense=True)
    if proved is None:
        return torch.ones(m, len(columns), dtype=torch.bool)
    rows = torch.repeat_interleave(torch.arange(proved.shape[0]), proved.crow.diff().cpu())
    rows = rows // math.prod(output.shape[a + 1:]) % m
    cols = proved.col.cpu() // math.prod(x.shape[b + 1:]) % x.shape[b]
    allowed = torch.zeros(m, x.shape[b], dtype=torch.bool)
    allowed[rows, cols] = True
    return allowed[:, columns.cpu()]


def _forward_answers(prober: SetProber, columns: torch.Tensor):
    """(m × len(columns)) bool twice: which output indices J u reaches (a finite non-zero)
    and where it is non-finite, for tangents u of random values on x's slices ``columns``
    along b. J u is the VJP of g(v) = vᵀJ (double backward); where the graph has none, every
    entry is unknown. In float16 and bfloat16, slices of several entries take two draws of u
    (a sum over a slice cancels exactly with a chance near 2⁻⁸, not 0)."""
    out, x, m = prober.output, prober.x, prober.output.shape[prober.a]
    unknown = torch.ones(m, len(columns), dtype=torch.bool)
    draws = 2 if coarse_dtype(x.dtype) and x.numel() > x.shape[prober.b] else 1
    draws = [set_probe_values(x, prober.seed, "dependency-tangents", k) for k in range(draws)]
    shape = (1,) + tuple(-1 if d == prober.b else 1 for d in range(x.dim()))  # a slice along b
    try:
        v = torch.zeros_like(out, requires_grad=True)
        (g,) = autograd_grad([out], [x], [v], retain_graph=True, create_graph=True,
                             allow_unused=True, materialize_grads=True)
        if not g.requires_grad:  # vᵀJ does not depend on v: nothing reaches x
            return ~unknown, ~unknown
        hits, bad, log = [], [], Batching()
        rescale = resolves_rounding(out.dtype) and resolves_rounding(x.dtype) \
            and prober.max_seconds is None  # a refusal's verdict: as fast as before
        for start in range(0, len(columns), prober.limit):
            part = columns[start:start + prober.limit]
            on = torch.zeros(len(part), x.shape[prober.b], dtype=x.dtype, device=x.device)
            on[torch.arange(len(part)), part.to(x.device)] = 1
            on = on.reshape((len(part),) + shape[1:])
            answers = []
            for draw, values in enumerate(draws):
                (ju,) = checked_batch(g, [v], values * on, log=log)
                if not rescale:
                    answers.append(_read(ju, 1 + prober.a))
                    continue
                scale = rescaling(len(part), prober.seed, 2**20 + 64 * start + draw).to(x)
                factor = scale.reshape((-1,) + (1,) * x.dim())  # over `on`'s dims
                (again,) = checked_batch(g, [v], values * on * factor, log=log)
                hit, nonfinite, rounded = firm(ju, again, scale, 1 + prober.a)
                prober.note_rounded(torch.arange(m), part.cpu(), rounded.T)
                answers.append((hit, nonfinite))
            hits.append(torch.stack([hit for hit, _ in answers]).any(0))
            bad.append(torch.stack([nonfinite for _, nonfinite in answers]).any(0))
    except (RuntimeError, NotImplementedError) as error:
        if torch_error(error) is TorchError.SECOND_PASS:
            raise
        return ~unknown, unknown
    return torch.cat(hits).T, torch.cat(bad).T


# -- decoding the pattern from sets -------------------------------------------------------
def _group_test(prober: SetProber, m: int, n: int) -> torch.Tensor:
    """The pattern decoded from the sampled rows and set probes (:func:`.setdecode.decoded`)."""
    return setdecode.decoded(prober, prober.sample, prober.sampled)


def _verified(prober: SetProber, pattern: torch.Tensor,
              hubs_read: bool = False) -> torch.Tensor | None:
    """The decoded pattern, every input index (column) checked and the columns that fail read
    again exactly (:func:`exact_columns`); None where it cannot be checked (the caller then
    probes each output index). A decoding can lose a dependence behind another reader of its
    column (a band's colour i mod w aliases a distant leak onto a row of the band): zero or
    non-zero answers cannot tell, the answers' values do (:func:`_value_check`). Random sets
    (a half, a quarter, an eighth of the output indices) are checked too, and the first again
    from a plain backward, which must agree with the batched one (a batching rule gone
    wrong). All with fresh values, in one batched call."""
    r, c = pattern.nonzero(as_tuple=True)
    colour = setdecode.check_colours(pattern, r, c)
    if colour is None:
        return None
    colour, heavy = colour
    m = pattern.shape[0]
    generator = probe_generator(prober.seed, "dependency-sets")
    density = torch.tensor([0.5, 0.5, 0.25, 0.25, 0.125, 0.125], dtype=torch.float32)[:, None]
    sets = torch.rand(len(density), m, generator=generator, dtype=torch.float32) < density
    coarse = coarse_dtype(prober.output.dtype)
    if coarse:  # values too coarse to compare: sets that part any two of a colour instead
        sets = torch.cat([sets, _rank_sets(colour, generator)])
    fresh = SetProber(prober.output, prober.x, prober.a, prober.b, prober.budget, prober.seed,
                      prober.max_seconds, stream=1, limit=prober.limit)
    fresh.began, fresh.count, fresh.step = prober.began, prober.count, prober.step
    fresh.batching.methods, fresh.payoff = prober.batching.methods, prober.payoff  # learned
    try:
        answers = None if coarse else _value_answers(fresh, sets, colour)
        hit = fresh.hits(sets) if coarse else answers[2][:len(sets)]
        plain = fresh.hits(sets[:1], batched=False)
    finally:
        prober.unknown |= fresh.unknown
        prober.count, prober.seconds = fresh.count, prober.seconds + fresh.seconds
    known = ~prober.unknown  # the columns some probe answered NaN or ±inf are read again
    if not torch.equal(plain[:, known], hit[:1, known]):
        return None
    wrong = (hit != _reached(sets, pattern, (r, c))).any(0) | heavy
    light = ~heavy[c]
    if not coarse:
        wrong |= _value_check((r[light], c[light]), colour, answers[3],
                              *(a[len(sets):] for a in answers[:3]), fresh.output.dtype)
    columns = (wrong & known).nonzero().flatten()
    if columns.numel() > HUB_COLUMNS and not hubs_read:  # a few rows read them all?
        hubs = _hub_rows(prober, columns)
        if hubs.numel():  # read as rows (k × n), the rest checked again: never n × m
            _read_hubs(prober, pattern, hubs)
            return _verified(prober, pattern, hubs_read=True)
    if columns.numel():
        pattern[:, columns] = exact_columns(prober, columns)
    return pattern


HUB_COLUMNS = 64  # past this many input indices to read exactly, look for a few dense rows
HUB_SAMPLE = 8  # input indices read exactly to find them


def _read_hubs(prober: SetProber, pattern: torch.Tensor, hubs: torch.Tensor) -> None:
    """``pattern``'s rows ``hubs`` read exactly, the others decoded again from sets that
    leave the hubs out (their reads hid every other reader from the bit-coded sets)."""
    hub_rows = prober.row_hits(hubs, batched=False)
    left_out = torch.zeros(pattern.shape[0], dtype=torch.bool)
    left_out[hubs] = True
    prober.left_out = left_out
    try:
        rows = prober.sampled.clone()
        rows[left_out[prober.sample]] = False  # (the hubs' rows: set below)
        pattern[:] = setdecode.decoded(prober, prober.sample, rows)
    finally:
        prober.left_out = None
    pattern[hubs] = hub_rows


def _hub_rows(prober: SetProber, columns: torch.Tensor) -> torch.Tensor:
    """The output indices (at most :data:`~.setdecode.MAX_HEAVY`) that read most of
    ``columns``: a softmax over the batch, expert-choice routing. Read from
    :data:`HUB_SAMPLE` of them at random, exactly (forward mode); reading them as rows keeps
    the work and memory to k rows of n, where reading every column costs n columns of m."""
    generator = probe_generator(prober.seed, "dependency-hubs")
    sample = columns[torch.randperm(len(columns), generator=generator)[:HUB_SAMPLE]]
    hit, unknown = _forward_answers(prober, sample)
    hit = hit[:, ~unknown.any(0)]
    if hit.shape[1] < HUB_SAMPLE // 2:
        return torch.zeros(0, dtype=torch.long)
    hubs = (hit.sum(1) * 4 >= 3 * hit.shape[1]).nonzero().flatten()
    return hubs if len(hubs) <= setdecode.MAX_HEAVY else torch.zeros(0, dtype=torch.long)


def coarse_dtype(dtype: torch.dtype) -> bool:
    """Whether a dtype's values are too coarse for the value check (float16, bfloat16: its
    tolerance of 2⁸ ε is over 1/4 of the terms; probe sums cancel exactly with a chance of
    about 2⁻⁸ per pair, not 0)."""
    return dtype.is_floating_point and torch.finfo(dtype).eps > torch.finfo(torch.float32).eps


def _rank_sets(colour: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(k × m) sets for a check by zero or non-zero only: each colour, and each colour's
    members whose (random) rank in it has bit b set, and those with it clear. Output indices
    of one colour claim disjoint input indices (heavy ones aside), so at a claimed input index
    j a set is reached exactly when the claimed reader is in it; a hidden reader of the colour
    differs from the claimed one in some bit, and a set holding it and not the claimed one
    answers where none is claimed."""
    m = len(colour)
    if not m:
        return torch.zeros(0, 0, dtype=torch.bool)
    colour = colour.long()
    count = int(colour.max()) + 1
    order = torch.argsort(colour * m + torch.randperm(m, generator=generator))
    sizes = torch.bincount(colour, minlength=count)
    rank = torch.empty(m, dtype=torch.long)
    rank[order] = torch.arange(m) - (torch.cumsum(sizes, 0) - sizes)[colour[order]]
    member = colour[None, :] == torch.arange(count)[:, None]  # colours × m
    bits = torch.arange(max(int(sizes.max()) - 1, 0).bit_length())
    on = ((rank[None, :] >> bits[:, None]) & 1).bool()  # bits × m
    parts = [member, (member[:, None, :] & on[None]).reshape(-1, m),
             (member[:, None, :] & ~on[None]).reshape(-1, m)]
    return torch.cat(parts)


def _value_answers(fresh: SetProber, sets: torch.Tensor, colour: torch.Tensor):
    """:meth:`SetProber.projections` of ``sets``, one set per colour, and one set per colour
    again for each weighting of :func:`_weightings` (each output index's slice weighted by its
    βᵢ): (values, magnitudes, non-zeros, β as weightings × m)."""
    m = len(colour)
    beta = _weightings(colour, probe_generator(fresh.seed, "dependency-weights"))
    count = int(colour.max()) + 1 if m else 0
    colours = (colour[None, :] == torch.arange(count)[:, None]).double()
    weights = torch.cat([sets.double(), colours, *(colours * b[None, :] for b in beta)])
    value, size, hit, bad = fresh.projections(weights, _features(fresh))
    fresh.unknown |= bad.any(0)
    return value, size, hit, beta


FEATURES = 8  # an input slice of at most this many entries is compared entry by entry


def _features(fresh: SetProber) -> torch.Tensor:
    """(F × F') weights over each input slice's F entries: the identity where F is at most
    :data:`FEATURES` (each entry's residual is judged against the whole slice's terms: one
    random projection put a hidden term [a, −a] within δ of 0 with a chance of ~2δ), else
    F' = FEATURES random ones in 1..2."""
    features = fresh.x.numel() // max(fresh.x.shape[fresh.b], 1)
    if features <= FEATURES:
        return torch.eye(features, dtype=torch.float64)
    generator = probe_generator(fresh.seed, "dependency-features")
    return torch.rand(features, FEATURES, generator=generator, dtype=torch.float64) + 1


GRID = (-2.0, -1.0, 1.0, 2.0)  # a weighting per base-4 digit of a rank: any two differ by 1


def _weightings(colour: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(1 + d) × m weights βᵢ, each ±(1..2): one drawn at random (no relation among several
    hidden readers cancels in it), then one per base-4 digit of each output index's rank
    (random) among its colour, d ≥ log₄ of the largest colour, the digit's weight from
    :data:`GRID`: two members of one colour differ in some digit, so in some weighting by
    ≥ 1 (a guaranteed gap; random weights alone put two within 0.007 in one colour of 100
    with chance ~1/2, and the check then missed a term 100× its tolerance)."""
    m = len(colour)
    beta = torch.rand(m, generator=generator, dtype=torch.float64) + 1
    rows = [torch.where(torch.rand(m, generator=generator, dtype=torch.float32) < 0.5,
                        -beta, beta)]
    if m:
        key = colour.long() * m + torch.randperm(m, generator=generator)
        order = torch.argsort(key)
        sizes = torch.bincount(colour.long())
        rank = torch.empty(m, dtype=torch.long)
        rank[order] = torch.arange(m) - (torch.cumsum(sizes, 0) - sizes)[colour[order].long()]
        grid, place = torch.tensor(GRID, dtype=torch.float64), 1
        while place < int(sizes.max()):
            rows.append(grid[(rank // place) % len(GRID)])
            place *= len(GRID)
    return torch.stack(rows)


VALUE_TOLERANCE = 2.0**8  # units of the dtype's epsilon, relative to the colour's own terms
# A hidden term at least this many epsilons of the colour's terms is always caught (the grid
# weightings part any two members of a colour by at least 1)
RESOLUTION = VALUE_TOLERANCE


def _value_check(claims, colour, beta, value, size, hit, dtype) -> torch.Tensor:
    """(n,) bool: the input indices j where the pattern's claim fails, from probes per
    colour (output indices of a colour claim disjoint input indices, so each answer at j is
    the term tᵢ = vᵢᵀJᵢⱼ of the one claimed reader i of its colour, plus whatever hides
    there), the others with each slice weighted by βᵢ (a row of ``beta`` each): each must
    answer βᵢ·(the first). A colour with no claimed reader answering at j, or a claimed
    reader's colour answering exactly 0 (a phantom), fails exactly; a hidden reader h beside
    a claimed one i adds (β_h − β_i)·t_h (an entry of x's slice j each, :func:`_features`),
    which fails beyond :data:`VALUE_TOLERANCE` relative to that colour's own terms at j: in
    some weighting |β_h − β_i| ≥ 1, so any |t_h| over :data:`RESOLUTION` epsilons of them
    is caught. ``value``, ``size``,
    ``hit``: projections, magnitudes, non-zeros, the plain colours then each weighting's."""
    (count, n), (r, c) = (value.shape[0] // (1 + len(beta)), value.shape[1]), claims
    claimed = torch.zeros(count, n, dtype=torch.bool)
    claimed[colour[r], c] = True
    plain = value[:count]
    wrong = (hit.reshape(-1, count, n).any(0) & ~claimed).any(0)  # a reader, none claimed
    wrong[c[~hit[colour[r], c]]] = True  # a claimed reader whose colour answers 0
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else 0.0
    for k, b in enumerate(beta, start=1):
        coefficient = torch.zeros(count, n, 1, dtype=torch.float64)
        coefficient[colour[r], c] = b[r, None]
        weighted = value[k * count:(k + 1) * count]
        scale = size[k * count:(k + 1) * count] + coefficient.abs() * size[:count]
        scale = scale.sum(2, keepdim=True)  # the slice's terms, all its entries together
        off = (weighted - coefficient * plain).abs() > VALUE_TOLERANCE * eps * scale
        wrong |= (off.any(2) & claimed).any(0)
    return wrong


def exact_columns(prober: SetProber, columns: torch.Tensor) -> torch.Tensor:
    """(m × len(columns)): which output indices read each of ``columns``, exactly: forward
    mode (one tangent per column, through double backward) where it answers finite, halving
    of the output indices for the rest."""
    m = prober.output.shape[prober.a]
    hit, unknown = _forward_answers(prober, columns)
    open_ = unknown.any(0)
    if bool(open_.any()):
        hit[:, open_] = setdecode.halving(prober, m, columns[open_])
    return hit


def _reached(sets: torch.Tensor, pattern: torch.Tensor, nonzeros, rows: int = 256):
    """(k × m) sets, (m × n) pattern and its nonzeros → (k × n) bool: which input indices each
    set reaches."""
    rows_, cols = nonzeros
    if len(rows_) <= 16 * sum(pattern.shape):  # few dependences (a diagonal, leaks)
        counts = torch.zeros(len(sets), pattern.shape[1], dtype=torch.float32)  # not the
        return counts.index_add_(1, cols, sets[:, rows_].float()) > 0  # default dtype's
    reached = torch.zeros(len(sets), pattern.shape[1], dtype=torch.bool)
    for start in range(0, pattern.shape[0], rows):
        part = pattern[start:start + rows]
        if part.any():
            reached |= (sets[:, start:start + rows].float() @ part.float()) > 0
    return reached
