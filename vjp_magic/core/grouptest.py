"""Group testing on a live graph: which indices along an output axis reach which indices along
an input axis, without the Jacobian.

:class:`SetProber` draws random vectors vᵀ supported on sets of output indices (values from
:func:`.probes.set_probe_values`, the run's seed) and reads where vᵀJ is non-zero;
:func:`probed_pattern` decodes the pattern from batched sets: bit-coded sets first (2·log₂ m
probes name every input index read by one output index), halving for the rest, a check with
fresh values, and one probe per output index if the check disagrees. A non-finite answer
(0·∞ where a zero entry of v meets an infinite derivative) is never read as a dependence:
those input indices are read again one output index at a time and, through double backward,
one input index at a time (forward mode; :func:`resolved_columns`).
"""
from __future__ import annotations

import time

import torch

from .derivatives import chunk_size, vjp_batch
from .probes import first_nonfinite, probe_generator, set_probe_values
from .torch_api import TorchError, autograd_grad, torch_error


def probed_pattern(output, x, a: int, b: int, budget: int, seed: int,
                   max_seconds: float | None = None, workspace: int = 0) -> torch.Tensor:
    """(m × n) bool: which indices of ``output`` along ``a`` reach which of ``x`` along
    ``b``, by set probes drawn from ``seed`` (raises :class:`OverTime` past ``max_seconds``)."""
    m, n = output.shape[a], x.shape[b]
    prober = SetProber(output, x, a, b, budget, seed, max_seconds, workspace=workspace)
    pattern = _group_test(prober, m, n)
    if not _confirmed(prober, pattern):
        pattern = prober.row_hits(torch.arange(m), batched=False)
    columns = prober.unknown.nonzero().flatten()
    if columns.numel():
        pattern[:, columns] = resolved_columns(prober, columns)
    return pattern


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

    def vectors(self, sets: torch.Tensor) -> torch.Tensor:
        """One random vector restricted to each set: every probe's answer holds on its own
        (a cancellation needs a relation among the values on the set, which has chance 0)."""
        on = sets.to(device=self.output.device, dtype=self.output.dtype)
        on = on.reshape((len(sets),) + tuple(-1 if d == self.a else 1
                                              for d in range(self.output.dim())))
        return self.values * on

    def answers(self, sets: torch.Tensor, batched: bool = True):
        """(k × n_out) sets → (k × n_in) bool twice: which input indices each set reaches
        (a finite non-zero), and where its answer was NaN or ±inf."""
        self._check_time(len(sets))
        hits, unknown = [], []
        for start in range(0, len(sets), self.limit):
            part = sets[start:start + self.limit]
            (g,) = vjp_batch(self.output, [self.x], self.vectors(part), batched=batched)
            hit, bad = _read(g, 1 + self.b)
            hits.append(hit)
            unknown.append(bad)
            self.count += len(part)
        return torch.cat(hits), torch.cat(unknown)

    def hits(self, sets: torch.Tensor, batched: bool = True) -> torch.Tensor:
        """(k × n_out) sets → (k × n_in) bool: which input indices each set reaches."""
        hit, unknown = self.answers(sets, batched)
        self.unknown |= unknown.any(0)
        return hit

    def row_hits(self, rows: torch.Tensor, batched: bool = True) -> torch.Tensor:
        """One probe per output index in ``rows``: (len(rows) × n_in)."""
        return self.hits(self.row_sets(rows), batched)

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


def _read(g: torch.Tensor, axis: int):
    """(k, …) answers → (k × size along ``axis``) bool twice: a finite non-zero anywhere on
    the slice, a NaN or ±inf anywhere on it."""
    g = g.detach().movedim(axis, 1)
    g = g.reshape(len(g), g.shape[1], -1)
    if first_nonfinite(g) is None:  # the common case: one sum says so
        hit = g.ne(0).any(2).cpu()
        return hit, torch.zeros_like(hit)
    bad = ~torch.isfinite(g)
    return (g.ne(0) & ~bad).any(2).cpu(), bad.any(2).cpu()


def resolved_columns(prober: SetProber, columns: torch.Tensor) -> torch.Tensor:
    """(m × len(columns)): the dependences at input indices where a probe answered NaN or
    ±inf. Each output index's row (reverse mode) and each of these columns (forward mode)
    are read: an entry is a dependence where either finds a finite non-zero, or where both
    are non-finite (nothing rules it out); a finite zero either way rules it out."""
    m = prober.output.shape[prober.a]
    hit, unknown = prober.answers(prober.row_sets(torch.arange(m)), batched=False)
    hit, unknown = hit[:, columns], unknown[:, columns]
    forward_hit, forward_unknown = _forward_answers(prober, columns)
    return hit | forward_hit | (unknown & forward_unknown)


def _forward_answers(prober: SetProber, columns: torch.Tensor):
    """(m × len(columns)) bool twice: which output indices J u reaches (a finite non-zero)
    and where it is non-finite, for tangents u of random values on x's slices ``columns``
    along b. J u is the VJP of g(v) = vᵀJ (double backward); where the graph has none, every
    entry is unknown."""
    out, x, m = prober.output, prober.x, prober.output.shape[prober.a]
    unknown = torch.ones(m, len(columns), dtype=torch.bool)
    values = set_probe_values(x, prober.seed, "dependency-tangents")
    shape = (1,) + tuple(-1 if d == prober.b else 1 for d in range(x.dim()))  # a slice along b
    try:
        v = torch.zeros_like(out, requires_grad=True)
        (g,) = autograd_grad([out], [x], [v], retain_graph=True, create_graph=True,
                             allow_unused=True, materialize_grads=True)
        if not g.requires_grad:  # vᵀJ does not depend on v: nothing reaches x
            return ~unknown, ~unknown
        hits, bad = [], []
        for start in range(0, len(columns), prober.limit):
            part = columns[start:start + prober.limit]
            on = torch.zeros(len(part), x.shape[prober.b], dtype=x.dtype, device=x.device)
            on[torch.arange(len(part)), part.to(x.device)] = 1
            (ju,) = vjp_batch(g, [v], values * on.reshape((len(part),) + shape[1:]))
            hit, nonfinite = _read(ju, 1 + prober.a)
            hits.append(hit)
            bad.append(nonfinite)
    except (RuntimeError, NotImplementedError) as error:
        if torch_error(error) is TorchError.SECOND_PASS:
            raise
        return ~unknown, unknown
    return torch.cat(hits).T, torch.cat(bad).T


# -- decoding the pattern from sets -------------------------------------------------------
def _group_test(prober: SetProber, m: int, n: int) -> torch.Tensor:
    """Bit b of i and its complement, for every bit: a column read by one output index i
    answers each pair once, spelling i; the rest (several indices) go to :func:`_halving`."""
    bits = (m - 1).bit_length()
    if bits == 0:
        return prober.hits(torch.ones(1, 1, dtype=torch.bool))
    index = torch.arange(m)
    on = torch.stack([(index >> bit) & 1 == 1 for bit in range(bits)])
    answers = prober.hits(torch.cat([on, ~on])).reshape(2, bits, n)
    one = (answers[0] ^ answers[1]).all(0)
    row = (answers[0].long() << torch.arange(bits)[:, None]).sum(0)
    single = one & (row < m)
    empty = ~(answers[0] | answers[1]).any(0)
    pattern = torch.zeros(m, n, dtype=torch.bool)
    columns = single.nonzero().flatten()
    pattern[row[columns], columns] = True
    open_ = (~single & ~empty).nonzero().flatten()
    if open_.numel():
        pattern[:, open_] = _halving(prober, m, open_)
    return pattern


def _halving(prober: SetProber, m: int, columns: torch.Tensor) -> torch.Tensor:
    """The rows of ``columns`` (each read by several output indices): halve the blocks of
    output indices that some column reaches, a level per batched call, or probe each row of
    the blocks still open when the blocks keep branching (a triangle, a band)."""
    size = 1 << (m - 1).bit_length()
    active = torch.ones(1, len(columns), dtype=torch.bool)  # block × column
    previous = 1
    while size > 1:
        live = active.any(1).nonzero().flatten()
        rows_left = int((((live + 1) * size).clamp(max=m) - live * size).sum())
        levels = size.bit_length() - 1
        growth = len(live) / previous
        if 2 * len(live) * sum(growth ** step for step in range(levels)) >= rows_left:
            return _rows_of_blocks(prober, m, live, size, columns)
        size //= 2
        children = torch.stack([2 * live, 2 * live + 1], 1).flatten()
        children = children[children * size < m]
        answers = prober.hits(_blocks(children, size, m))[:, columns]
        active_next = torch.zeros((-(-m // size)), len(columns), dtype=torch.bool)
        active_next[children] = answers & active[children // 2]
        active, previous = active_next, len(live)
    return active[:m]


def _blocks(blocks: torch.Tensor, size: int, m: int) -> torch.Tensor:
    """(k × m) sets: output indices ``block * size ..`` of each block."""
    index = torch.arange(m)
    return (index[None, :] // size) == blocks[:, None]


def _rows_of_blocks(prober, m, live, size, columns) -> torch.Tensor:
    """One probe per output index of the live blocks."""
    rows = (live[:, None] * size + torch.arange(size)[None, :]).flatten()
    rows = rows[rows < m]
    pattern = torch.zeros(m, len(columns), dtype=torch.bool)
    pattern[rows] = prober.row_hits(rows)[:, columns]
    return pattern


def _confirmed(prober: SetProber, pattern: torch.Tensor) -> bool:
    """The bit-coded sets again and two random halves, with fresh values, in one batched
    call, and the first half again from a plain backward: the input indices each set reaches
    must be those the pattern predicts (a dependence missed by a cancellation shows here),
    and the plain backward must agree with the batched one (a batching rule gone wrong)."""
    m = pattern.shape[0]
    bits = (m - 1).bit_length()
    index = torch.arange(m)
    on = torch.stack([(index >> bit) & 1 == 1 for bit in range(bits)]) if bits else \
        torch.ones(1, m, dtype=torch.bool)
    generator = probe_generator(prober.seed, "dependency-sets")
    sets = torch.cat([torch.rand(2, m, generator=generator) < 0.5, on, ~on])
    fresh = SetProber(prober.output, prober.x, prober.a, prober.b, prober.budget, prober.seed,
                    prober.max_seconds, stream=1, limit=prober.limit)
    fresh.began, fresh.count = prober.began, prober.count
    observed = fresh.hits(sets)
    plain = fresh.hits(sets[:1], batched=False)
    prober.unknown |= fresh.unknown
    known = ~prober.unknown  # the columns some probe answered NaN or ±inf are read again
    return torch.equal(observed[:, known], _reached(sets, pattern)[:, known]) \
        and torch.equal(plain[:, known], observed[:1, known])


def _reached(sets: torch.Tensor, pattern: torch.Tensor, rows: int = 256) -> torch.Tensor:
    """(k × m) sets, (m × n) pattern → (k × n): which input indices each set reaches."""
    rows_, cols = pattern.nonzero(as_tuple=True)
    if len(rows_) <= 16 * sum(pattern.shape):  # few dependences (a diagonal, leaks)
        counts = torch.zeros(len(sets), pattern.shape[1])
        return counts.index_add_(1, cols, sets[:, rows_].float()) > 0
    reached = torch.zeros(len(sets), pattern.shape[1], dtype=torch.bool)
    for start in range(0, pattern.shape[0], rows):
        part = pattern[start:start + rows]
        if part.any():
            reached |= (sets[:, start:start + rows].float() @ part.float()) > 0
    return reached
