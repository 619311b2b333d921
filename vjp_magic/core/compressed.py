"""Compressed passes: one backward per colour of the observed pattern, decompressed into a
torch sparse CSR Jacobian, then checked by independent random probes.

v = 1 on the output entries of one colour (:mod:`.colouring`) gives vᵀJ whose entry j is
J[i, j] for the one row i of that colour that reads j (:mod:`.pattern`). The passes are
batched as the component VJPs are, each vectorised batch checked
(:func:`.checked_batches.checked_batch`). The result is then
checked as a structure is (:mod:`.probes`): full random probes v (the run's seed, the count
of :func:`.probes.probe_plan`), vᵀJ from autograd (the first from a plain backward) against
vᵀ·J_sparse, each input entry judged against |v|ᵀ|J_sparse| times the probe tolerance. A
coupling the pattern missed shows there, and the result is refused (None): the caller falls
back to the exact path, never to a wrong sparse matrix.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from .colouring import colour_count, row_colouring
from .column_passes import (computed_by_columns, dense_columns, observed_columns)
from .couplings import csr_inside, outside_entries
from .checked_batches import checked_batch
from .derivatives import chunk_size, plain_vjp
from .errors import ObservedPatternWarning, VJPUsageError
from .memory import gb, resolve_budget
from .pairing import Evidence
from .indexmaps import proved_pattern
from .pattern import Diagonals, Pattern, observed_pattern
from .probes import new_seed
from .quiet import quiet_autograd
from .reentrant import refuse_on_its_graph
from .retained import keeps_retained_grads
from .sparse_check import checked, rows_checked
from .sparse_exact import exact_csr, without_false_nan
from .sparse_layout import csr_matrix, fresh
from .torch_api import graph_usage_error
from .validation import checked_seed, refuse_unanalysable


@dataclass(frozen=True)
class SparseJacobian:
    """A Jacobian computed by compressed passes.

    ``matrix``: 2-D sparse CSR (output.numel() × x.numel()), row-major flattening;
    ``colours``: int64 (output.numel(),), the colour of each flat output entry (entries of
    one colour read disjoint entries of x); ``count``: the number of colours, i.e. backward
    passes for the values; ``evidence``: PROVED (the pattern follows from the graph's rules)
    or OBSERVED (found by probes at this x); ``pattern_passes``: backward passes spent finding
    the pattern (0 when proved); ``mode``: "rows" (one backward per colour of the output's
    entries) or "columns" (``colours`` then has one per flat input entry, and ``count``
    forward-mode passes J·u gave the values: :mod:`.column_passes`); ``conditional_on``: the
    ops whose saved indices, masks or conditions a PROVED pattern read (empty: it holds for
    every x; else for every x that gives the same ones, :attr:`.pattern.Pattern.conditional_on`);
    ``cover``: by columns, a colouring of the output's entries (rows of one colour read
    disjoint entries of x) for ``r.gradients``, made without a pass (None by rows: ``colours``).
    """

    matrix: torch.Tensor
    colours: torch.Tensor
    count: int
    evidence: Evidence
    pattern_passes: int
    mode: str = "rows"
    conditional_on: tuple[str, ...] = ()
    cover: torch.Tensor | None = None

    @property
    def output_colours(self) -> torch.Tensor:
        """The colour of each flat output entry: the ``gradient`` vectors' (rows of one
        colour read disjoint entries of x), whichever mode computed the values."""
        return self.colours if self.cover is None else self.cover

    @property
    def nnz(self) -> int:
        return int(self.matrix.col_indices().numel())


# The compressed path in :func:`vjp_magic.differentiate`: tried for an input whose structure has
# no points once the output has SPARSE_MIN_OUTPUT entries and the Jacobian more than
# SPARSE_MIN_ENTRIES (a smaller one is shown whole, as the tutorial's examples are: every
# entry fits the display), and used when its colours number at most a PAYS_FRACTION of the
# output entries (fewer passes than one per entry by that factor at least).
SPARSE_MIN_OUTPUT = 32
SPARSE_MIN_ENTRIES = 64 * 64
PAYS_FRACTION = 1 / 4
# A candidate with points whose dense blocks (components × input entries) hold more entries
# than this takes its values from the colours of its proved pattern where they number at most
# PAYS_FRACTION of its components, its points kept (a batch of 64 stencils of 1,000 entries:
# 3 passes, not 1,000 components and 256 MB of blocks); smaller ones are computed one
# component per pass, as the tutorial shows them.
POINTS_DENSE_ENTRIES = 1 << 22
# Up to this many colours (or probes), plain backward passes one after another: on CPU they
# beat one vectorised backward of the same vectors (vmap over autograd.grad) many times over.
LOOP_PASSES = 64


class Attempt(NamedTuple):
    """What :func:`attempt` found: the result, or why there is none (``why``) and, for a
    pattern over the memory budget, its nonzero count and bytes (for a pattern a probe
    rejected, its count alone)."""

    sparse: SparseJacobian | None
    why: str = ""
    nnz: int = 0
    nbytes: int = 0


def compressed_jacobian(output: torch.Tensor, x: torch.Tensor, budget: int,
                        seed: int) -> SparseJacobian | None:
    """d output / d x by one backward per colour of its pattern (:class:`SparseJacobian`), or
    None: no pattern that pays, over the budget, or the check disagreed."""
    return attempt(output, x, budget, seed).sparse


def attempt(output: torch.Tensor, x: torch.Tensor, budget: int, seed: int,
            max_colours: int | None = None, known=None, pattern=None) -> Attempt:
    """:func:`compressed_jacobian`, saying why where it gives none. ``max_colours``: more
    colours than this do not pay (no passes are spent on the values then); ``known``: see
    :func:`checked`; ``pattern``: the proved one, where it is known already."""
    probes = None if max_colours is None else max(max_colours, MIN_PATTERN_PROBES)
    why = TOO_DENSE
    if pattern is None:
        pattern, why = _pattern(output, x, budget, seed, probes)
    if pattern is None:
        return Attempt(None, why)
    nbytes = _csr_bytes(pattern, x)
    if nbytes > budget:
        return Attempt(None, OVER_BUDGET, pattern.nnz, nbytes)
    colours, period = row_colouring(pattern.crow.numpy(), pattern.col.numpy(),
                                    pattern.shape[1], lattice=pattern.lattice,
                                    shape=(tuple(output.shape), tuple(x.shape)))
    count = None if colours is None else colour_count(colours[:period or len(colours)])
    by_columns = computed_by_columns(output, x, pattern, count, budget, seed, max_colours,
                                     known, colours)
    if by_columns is not None:  # fewer forward-mode passes than backward ones
        return Attempt(by_columns)
    if colours is None:
        return Attempt(None, "some entry of the input is read by too many output entries")
    colours = torch.from_numpy(colours)
    if max_colours is not None and count > max_colours:
        return Attempt(None, f"its colouring needs {count:,} backward passes for "
                             f"{output.numel():,} output entries")
    passes = colour_passes(output, x, pattern, colours, budget, count, period)
    jacobian = csr_matrix(pattern.crow, pattern.col, passes.held.cpu(),
                          pattern.shape).to(x.device)
    proved = pattern.evidence is Evidence.PROVED
    if not (checked(output, x, jacobian, seed, known, passes, draws=1 if proved else None,
                    proved=proved, rows_follow=not proved)
            and (proved or rows_checked(output, x, jacobian, seed))):
        return Attempt(None, UNCONFIRMED, pattern.nnz)  # its count, for a refusal
    return Attempt(SparseJacobian(jacobian, colours, count, pattern.evidence, pattern.probes,
                                  conditional_on=pattern.conditional_on))


TOO_DENSE = "a row of the Jacobian reads too many entries"
# What a failed check shows: a disagreement beyond the measured rounding, not a found coupling.
UNCONFIRMED = ("a random probe could not confirm the values from its backward passes within "
               "their rounding (the pattern may miss a coupling)")
OVER_BUDGET = "over the memory budget"


def _pattern(output, x, budget: int, seed: int,
             max_probes: int | None) -> tuple[Pattern | None, str]:
    """:func:`.pattern.find_pattern`'s pattern (the proved one, else the observed one), with
    two guards before observing: a few rows of J (one-hot backward passes, at rows drawn from
    the seed) reading more than :func:`.pattern.most_per_row` entries say "dense" at once,
    where the grouped probes would double their groups up to m passes first (softmax at
    2·10⁵: minutes, gigabytes); and ``max_probes`` caps those probes (a pattern that costs
    more passes than the colouring may save does not pay). With why there is none: one
    true sentence (:data:`TOO_DENSE` where the rows read say so, else the probes' limit)."""
    proved = proved_pattern(output, x, budget)
    if proved is not None:
        return proved, ""
    dense = dense_columns(output, x, seed)  # a few one-hot rows: a dense row, a dense column
    if dense is None:
        return None, TOO_DENSE
    unfound = ("the graph's rules do not prove its pattern, and grouped probes did not find it "
               f"within the {max_probes or output.numel():,} backward passes colouring could "
               "pay for")
    if len(dense):  # the row probes would give up after up to m/4 passes: observe by columns
        return observed_columns(output, x, budget, seed, max_probes), unfound
    return observed_pattern(output, x, budget, seed, max_probes), unfound


MIN_PATTERN_PROBES = 48  # grouped probes allowed to observe a pattern, at least


def _csr_bytes(pattern: Pattern, x: torch.Tensor) -> int:
    return pattern.nnz * (8 + x.element_size()) + 8 * (pattern.shape[0] + 1)


class DiagonalPasses(NamedTuple):
    """The passes read off per diagonal: ``table`` (m × K, 0 off the pattern), the
    :class:`.pattern.Diagonals`, and the CSR parts read off them (``held``, the values)."""

    table: torch.Tensor
    diagonals: Diagonals
    held: torch.Tensor
    crow: torch.Tensor
    col: torch.Tensor


class Passes:
    """The compressed passes of one colouring: ``values`` (count × n), vᵀJ for v = 1 on
    each colour's output entries (stacked when first read where they were kept apart:
    :func:`periodic_values`); for each nonzero of the pattern (CSR order) ``at``, its flat
    index into them (built when first read where the pattern is held as diagonals), and
    ``held``, its value there; ``crow``: the pattern's. ``diagonals``, for a pattern held
    as diagonals: :class:`DiagonalPasses`, which the check reads while the matrix it judges
    is the one read off them (:func:`.sparse_check.checked`)."""

    def __init__(self, values, at, held, crow, diagonals=None, locate=None):
        self._values, self._at, self.held, self.crow = values, at, held, crow
        self.diagonals, self._locate = diagonals, locate

    @property
    def values(self) -> torch.Tensor:
        if isinstance(self._values, list):
            self._values = torch.stack(self._values)
        return self._values

    @property
    def at(self) -> torch.Tensor:
        if self._at is None:
            self._at = self._locate()
        return self._at

    def _replace(self, **changes) -> Passes:
        fields = dict(values=self._values, at=self._at, held=self.held, crow=self.crow,
                      diagonals=self.diagonals, locate=self._locate)
        fields.update(changes)
        return Passes(**fields)


def colour_passes(output, x, pattern: Pattern, colours: torch.Tensor, budget: int,
                  count: int | None = None, period: int = 0) -> Passes:
    """One VJP per colour; each nonzero J[i, j] is entry j of the pass of i's colour: read
    off per diagonal where the pattern is held so (:func:`diagonal_values`: no index array
    at all; by windows of each pass where the colours repeat with ``period`` along the flat
    rows and the diagonals are evenly spaced: :func:`periodic_values`), else at its flat
    index c_i·n + j (:func:`_flat_at`). ``count``: the number of colours, where known."""
    flat = output.reshape(-1)
    if count is None:
        count = int(colours.max()) + 1 if colours.numel() else 0
    diagonals = pattern.diagonals
    if diagonals is not None and periodic_fits(diagonals, flat.numel(), x.numel(), period,
                                               count):
        values = _periodic_passes(flat, x, colours[:period], count)
        table = periodic_values(values, diagonals, colours, period, flat.numel(), x.numel())
    else:
        values = _passes(flat, x, colours.to(flat.device), count, budget)
        table = None if diagonals is None else \
            diagonal_values(values, diagonals, colours, flat.numel())

    def locate():
        return _flat_at(torch.stack(values) if isinstance(values, list) else values, pattern,
                        colours)

    if table is not None:
        held = diagonals.deleted(table.reshape(-1))
        return Passes(values, None, held, pattern.crow,
                      DiagonalPasses(table, diagonals, held, pattern.crow, pattern.col), locate)
    at = locate()
    return Passes(values, at, torch.index_select(values.reshape(-1), 0, at), pattern.crow)


def _flat_at(values: torch.Tensor, pattern: Pattern, colours: torch.Tensor) -> torch.Tensor:
    """Each nonzero's flat index c_i·n + j into the passes: c_i·n on the m rows, repeated
    along them, plus j (one array of nnz entries in all; each fresh one costs its page
    faults)."""
    count, n = values.shape
    small = count * n < 2**31  # int32 indices: half the bytes
    at = np.repeat((colours.cpu().numpy() * n).astype(np.int32 if small else np.int64),
                   np.diff(pattern.crow.numpy()))
    np.add(at, pattern.col.numpy(), out=at, casting="unsafe")
    return torch.from_numpy(at).to(values.device)


def diagonal_values(values: torch.Tensor, diagonals, colours: torch.Tensor,
                    m: int) -> torch.Tensor:
    """(m × K): J[r, r + keys[k]] at [r, k], 0 where the pattern has no such entry. Row r's
    entries are in the pass of its colour c_r, at r + keys[k]: per diagonal one gather along
    the colours (index c_r) from the passes shifted by keys[k]."""
    n = values.shape[1]
    table = fresh((m, len(diagonals.keys)), values.dtype, values.device)
    index = colours.to(values.device).reshape(1, -1)
    for k, key in enumerate(diagonals.keys.tolist()):
        lo, hi = diagonals.rows(k, m, n)  # rows outside: missing, so zeroed below
        if hi > lo:  # straight into the strided column: 1.4x a copy after
            torch.gather(values[:, lo + key:hi + key], 0, index[:, lo:hi],
                         out=table[lo:hi, k].unsqueeze(0))
    if len(diagonals.missing):
        table.reshape(-1).index_fill_(0, torch.from_numpy(diagonals.missing).to(values.device),
                                      0)
    return table


def _passes(flat, x, colours: torch.Tensor, count: int, budget: int) -> torch.Tensor:
    """(count × x.numel()): vᵀJ for v = 1 on the output entries of each colour."""
    on_cpu = colours.device.type == "cpu" and flat.dtype in _NUMPY_FLOATS
    if on_cpu:  # numpy's == and a cast: about 5x torch's on the CPU; one buffer for all:
        chosen = np.empty(flat.numel(), dtype=bool)  # each pass is over before the next
        buffer = np.empty(flat.numel(), dtype=_NUMPY_FLOATS[flat.dtype])

    def vector(c):
        if on_cpu:
            np.copyto(buffer, np.equal(colours.numpy(), c, out=chosen))
            return torch.from_numpy(buffer)
        return (colours == c).to(flat.dtype)

    if count <= LOOP_PASSES:
        stacked = fresh((count, x.numel()), x.dtype, x.device)
        for c in range(count):
            stacked[c] = plain_vjp(flat, [x], vector(c))[0].detach().reshape(-1)
        return stacked
    passes = []
    limit = chunk_size(flat, [x], budget)
    for start in range(0, count, limit):
        ids = torch.arange(start, min(count, start + limit), device=flat.device)
        v = (colours[None, :] == ids[:, None]).to(flat.dtype)
        (g,) = checked_batch(flat, [x], v)
        passes.append(g.detach().reshape(len(ids), -1))
    return torch.cat(passes)


def _periodic_passes(flat, x, residues: torch.Tensor, count: int) -> list[torch.Tensor]:
    """vᵀJ for v = 1 on the output entries of each colour, the colours repeating with period
    p = len(``residues``) along the flat output (entry r has colour residues[r mod p]): one
    vector, each colour's entries set to 1 by strided fills and back to 0 after its pass
    (no comparison over the colours, no cast), each pass kept as its own tensor (a pass
    that is the vector itself, as an identity's is, copied before the vector changes)."""
    p, v = len(residues), fresh(flat.numel(), flat.dtype, flat.device)
    v.zero_()
    chosen = [[s for s in range(p) if int(residues[s]) == c] for c in range(count)]
    passes = []
    for c in range(count):
        for s in chosen[c]:
            v[s::p] = 1
        (g,) = plain_vjp(flat, [x], v)
        g = g.detach().reshape(-1).contiguous()
        if g.untyped_storage().data_ptr() == v.untyped_storage().data_ptr():
            g = g.clone()
        passes.append(g)
        for s in chosen[c]:
            v[s::p] = 0
    return passes


def periodic_fits(diagonals, m: int, n: int, period: int, count: int) -> bool:
    """Whether :func:`periodic_values` reads this pattern's passes: colours repeating with
    ``period`` along the flat rows (up to :data:`LOOP_PASSES` of them), diagonals evenly
    spaced (keys[k] = keys[0] + k·d, d > 0: a 1-D stencil's), and at most 1/64 of the rows
    with a window leaving the columns."""
    keys = diagonals.keys.tolist()
    spacing = keys[1] - keys[0] if len(keys) > 1 else 1
    lo, hi = max(0, -keys[0]), min(m, n - keys[-1])
    return period > 0 and 0 < count <= LOOP_PASSES and spacing > 0 and hi > lo and \
        all(b - a == spacing for a, b in zip(keys, keys[1:])) and 64 * (m - (hi - lo)) <= m


def periodic_values(passes: list, diagonals, colours: torch.Tensor, period: int, m: int,
                    n: int) -> torch.Tensor:
    """:func:`diagonal_values` where :func:`periodic_fits`: the table rows r ≡ s (mod p)
    are windows of the pass of their colour (row r's K entries at r + keys[0] + k·d), so
    one strided copy per residue s fills them; the rows whose window leaves the columns by
    a few index copies (:func:`_edge_values`)."""
    keys = diagonals.keys.tolist()
    spacing = keys[1] - keys[0] if len(keys) > 1 else 1
    lo, hi = max(0, -keys[0]), min(m, n - keys[-1])  # rows whose whole window is inside
    table = fresh((m, len(keys)), passes[0].dtype, passes[0].device)
    for s in range(period):
        first = lo + (s - lo) % period  # the first row ≥ lo of residue s
        if first < hi:
            source = passes[int(colours[first])]
            rows = table[first:hi:period]
            rows.copy_(source.as_strided(rows.shape, (period, spacing),
                                         source.storage_offset() + first + keys[0]))
    _edge_values(table, passes, colours, torch.cat([torch.arange(0, lo), torch.arange(hi, m)]),
                 keys, n)
    if len(diagonals.missing):
        table.reshape(-1).index_fill_(0, torch.from_numpy(diagonals.missing).to(table.device),
                                      0)
    return table


def _edge_values(table, passes, colours: torch.Tensor, rows: torch.Tensor, keys, n: int):
    """Table rows ``rows`` (a few) read off the passes by index: entry k of row r from the
    pass of r's colour at column r + keys[k], where that column exists (others are missing
    from the pattern, zeroed by the caller)."""
    colour = colours[rows]
    for k, key in enumerate(keys):
        inside = (rows + key >= 0) & (rows + key < n)
        for c in torch.unique(colour[inside]).tolist():
            chosen = rows[inside & (colour == c)]
            table[chosen.to(table.device), k] = passes[c][(chosen + key).to(table.device)]


_NUMPY_FLOATS = {torch.float16: np.float16, torch.float32: np.float32,
                 torch.float64: np.float64}


OBSERVED_WARNING = (
    "sparse_jacobian: the sparsity pattern of this {m:,} x {n:,} Jacobian was observed at this "
    "x by grouped probes (an operation the graph rules cannot read, e.g. a custom "
    "autograd.Function), not proved, and the entries outside it could not be checked: over 64 "
    "rows and columns to compute exactly, and no second observation with fresh values (a row "
    "or column reading over 1/8 of the other side, or a NaN or ±inf answer). A derivative "
    "below the float resolution of a much larger one in its row and column may read 0 there. "
    "float64 resolves ratios about 10^9 times smaller; vjp_magic.differentiate(output, x, "
    "full=True) and torch.func.jacrev give every entry.")


# the warning points at the caller's line: past this function, keeps_retained_grads' wrapper
# and quiet_autograd's (contextlib's ContextDecorator.inner)
_CALLER = 4


@quiet_autograd(default_device=True)  # the user's global modes: not for us
@keeps_retained_grads  # a retain_grad tensor's .grad as a plain run leaves it
def sparse_jacobian(output: torch.Tensor, x: torch.Tensor,
                    memory_budget: int | float | None = None,
                    seed: int | None = None) -> torch.Tensor:
    """d output / d x as a 2-D sparse CSR tensor of shape (output.numel(), x.numel()),
    flattened row-major, from the live autograd graph.

    The sparsity pattern is observed at this x with grouped probes, its rows coloured so that
    rows of one colour read disjoint entries of x, and one backward pass per colour gives
    every nonzero; the result is checked with independent random probes. Where no pattern
    pays (a row reads more than 1/8 of x), or the check disagrees (a coupling the probes
    could not see, e.g. a custom ``autograd.Function``), the exact Jacobian (one backward
    per output entry) is computed instead and returned in the same layout. So it is where an
    observed pattern misses a nonzero (its entries outside are checked: :mod:`.couplings`;
    ObservedPatternWarning where they cannot be), and where the result holds NaN (reverse mode's
    0·NaN, filled from forward mode as ``differentiate`` does: :mod:`.sparse_exact`). The
    memory budget counts nonzeros on the sparse path, the dense size on the exact one.
    Complex tensors are refused. ``x.grad`` is never changed.
    """
    if not isinstance(output, torch.Tensor) or not isinstance(x, torch.Tensor):
        raise VJPUsageError("sparse_jacobian(output, x) takes two tensors.")
    refuse_unanalysable("The output", output)
    refuse_unanalysable("The input", x)
    if output.is_complex() or x.is_complex():
        raise VJPUsageError("sparse_jacobian differentiates real tensors, and the output or x is "
                            "complex: take its real and imaginary parts separately "
                            "(output.real, output.imag).")
    budget = resolve_budget(memory_budget, x.device)  # a wrong type: a usage error, here
    seed = checked_seed(seed)
    if output is x and x.requires_grad:  # the identity map: J = I
        n = x.numel()
        return csr_matrix(torch.arange(n + 1), torch.arange(n), torch.ones(n, dtype=x.dtype),
                    (n, n)).to(x.device)
    if output.grad_fn is None or not x.requires_grad:
        raise VJPUsageError("The output must be computed from x with autograd on: make x "
                            "with requires_grad=True and compute the output outside no_grad.")
    refuse_on_its_graph(output)  # a backward running the user's code again: before any pass
    try:
        seed = new_seed() if seed is None else seed
        found = attempt(output, x, budget, seed)
        sparse = found.sparse
        if sparse is None:
            _refuse_if_sparse_over(found, output, x, budget)
            return exact_csr(output, x, budget, rejected(found))
        if sparse.evidence is Evidence.OBSERVED:  # under the probes' resolution?
            verdict = outside_entries(output, x, csr_inside(sparse.matrix), seed=seed)
            if verdict.coupled:
                return exact_csr(output, x, budget,
                                 rejected(Attempt(None, COUPLED, sparse.nnz)))
            if not verdict.checked:
                warnings.warn(OBSERVED_WARNING.format(m=output.numel(), n=x.numel()),
                              ObservedPatternWarning, stacklevel=_CALLER)
        return without_false_nan(output, x, sparse.matrix, budget)
    except RuntimeError as error:
        usage = graph_usage_error(error)
        if usage is None:
            raise
        raise usage from None


COUPLED = "a derivative outside it is not zero"


def rejected(found: Attempt) -> str:
    """Why no sparse Jacobian was taken, as a refusal begins it: a pattern a check rejected
    (:data:`UNCONFIRMED`, :data:`COUPLED`) with its nonzero count ('A sparsity pattern of 400
    nonzeros was found but rejected (…)'), else that none paid off."""
    if found.why not in (UNCONFIRMED, COUPLED) or not found.nnz:
        return "No sparsity pattern paid off"
    return f"A sparsity pattern of {found.nnz:,} nonzeros was found but rejected: {found.why}"


def sparse_need(found: Attempt) -> str:
    """What a sparse Jacobian over the memory budget would need, as every refusal says it:
    '200,000 nonzeros that would need 3.2 MB'."""
    return f"{found.nnz:,} nonzeros that would need {gb(found.nbytes)}"


def _refuse_if_sparse_over(found: Attempt, output: torch.Tensor, x: torch.Tensor,
                           budget: int) -> None:
    """A pattern that pays but whose sparse Jacobian is over the budget, where the dense one
    is too: refused with the nonzero count and what it would need."""
    dense = output.numel() * x.numel() * x.element_size()
    if found.why != OVER_BUDGET or dense <= budget:
        return
    raise VJPUsageError(
        f"The sparse Jacobian of the output with respect to x has {sparse_need(found)}, over "
        f"the memory budget of {gb(budget)} (the dense {output.numel():,} × {x.numel():,} one: "
        f"{gb(dense)}). Raise memory_budget (in bytes: memory_budget={_above(found.nbytes)}), "
        "or take a smaller slice of the output.")


def _above(nbytes: int) -> str:
    """A round number of bytes at least ``nbytes``, as Python reads it: '4e6' for 3.2 MB."""
    exponent = max(len(str(int(nbytes))) - 1, 0)
    lead = -(-int(nbytes) // 10 ** exponent)  # rounded up
    if lead == 10:
        lead, exponent = 1, exponent + 1
    return f"{lead}e{exponent}"
