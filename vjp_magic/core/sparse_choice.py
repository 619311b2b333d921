"""The compressed path's part in one analysis (:func:`vjp_magic.differentiate`): which inputs
get a sparse Jacobian from compressed passes (:mod:`.compressed`) instead of the full one, and a
reader of J's rows off it for the row proposal."""
from __future__ import annotations

import contextlib

import torch

from .candidates import Candidate
from .colouring import colour_rows
from .column_passes import kept_by_columns
from .compressed import (OVER_BUDGET, PAYS_FRACTION, POINTS_DENSE_ENTRIES, SPARSE_MIN_ENTRIES,
                         SPARSE_MIN_OUTPUT, TOO_DENSE, Attempt, SparseJacobian, attempt,
                         sparse_need)
from .errors import VJPUsageError
from .indexmaps import proved_pattern
from .pairing import Evidence, Pairing
from .pattern import most_per_row
from .probes import Probes
from .result import SparseDerivatives
from .sparse_layout import csr_matrix, csr_rows, dense_to_csr, identity_pattern
from .structure import row_major_strides


class SparseChoice:
    """The compressed path's part in one analysis (:func:`vjp_magic.differentiate`).

    An input whose accepted structure has no points (the full Jacobian), or whose points' dense
    blocks would be over the budget (:meth:`past_points`), is computed by compressed passes
    instead, as a sparse COO tensor (``output.shape + input.shape``), when
    the output has at least ``SPARSE_MIN_OUTPUT`` entries (not with ``full``), its pattern
    is colourable in at most ``PAYS_FRACTION`` of the output entries and the check passes.
    ``taken``: name → :class:`SparseJacobian` of those so computed; ``notes``: a sentence
    per input whose pattern was found but did not pay, on the path that would have paid most.
    """

    def __init__(self, output, output_name: str, budget: int, probes: Probes, full: bool):
        self.output, self.output_name, self.budget = output, output_name, budget
        self.probes = probes
        self.enabled = not full and output.numel() >= SPARSE_MIN_OUTPUT
        self.taken: dict[str, SparseJacobian] = {}
        self.notes: list[str] = []
        self._tried: set[str] = set()
        self._early: dict[str, Attempt] = {}  # name → an attempt made before take
        self._patterns: dict = {}  # name → its proved pattern (or None), made once
        self.over: dict[str, Attempt] = {}  # name → a sparse Jacobian over the budget
        self.unpaid: dict[str, str] = {}  # name → why no sparse Jacobian (the notes' reason)

    @contextlib.contextmanager
    def on_refusal(self):
        """Around the analysis: a memory refusal also says what a sparse Jacobian over the
        budget would have needed (its ``dependency``, where it has one, kept)."""
        try:
            yield
        except VJPUsageError as error:
            if not self.over and not self.unpaid:
                raise
            sizes = "; ".join([f"with respect to {name}, {sparse_need(found)}"
                               for name, found in self.over.items()]
                              + [f"with respect to {name}, none: {why}"
                                 for name, why in self.unpaid.items()])
            refusal = VJPUsageError(f"{error} As a sparse Jacobian: {sizes}.")
            refusal.__dict__.update(error.__dict__)
            raise refusal from None

    def _worth(self, tensor) -> bool:
        """Whether to try: not for a Jacobian of at most SPARSE_MIN_ENTRIES entries (shown
        whole), nor for an input of fewer than SPARSE_MIN_OUTPUT entries whose full Jacobian
        fits the budget (a few forward passes give it; colours could not pay)."""
        entries = self.output.numel() * tensor.numel()
        small = entries <= SPARSE_MIN_ENTRIES or (
            tensor.numel() < SPARSE_MIN_OUTPUT
            and entries * self.output.element_size() <= self.budget)
        return self.enabled and not small

    @property
    def max_colours(self) -> int:
        return int(self.output.numel() * PAYS_FRACTION)

    def take(self, named, group, candidates, position, accepted) -> list[str]:
        """Large path, at a candidate with no points for every input of ``group``: those the
        compressed passes compute go into ``accepted``; the rest are returned (for the full
        Jacobian). An input is tried once."""
        return self._accepting(named, group, accepted,
                               lambda name: candidates[name][position[name]])

    def past_points(self, named, group, accepted) -> list[str]:
        """Large path, at a candidate with points whose derivatives (one dense block per point)
        would be over the budget: each input of ``group`` whose compressed Jacobian pays goes
        into ``accepted``, as the full Jacobian with no points (the pattern coloured whole:
        colours within a point, each probe vector across every point, since points never
        share an entry); the rest are returned, for the refusal, which then names the sparse
        Jacobian's nonzeros and bytes where it was over the budget too (:meth:`on_refusal`)."""
        return self._accepting(named, group, accepted, lambda name: Candidate(Pairing(), True))

    def at_points(self, named, group, candidates, position, count: int, accepted) -> list[str]:
        """Large path, at a candidate with points of ``count`` components each: each input
        of ``group`` whose dense blocks would hold over ``POINTS_DENSE_ENTRIES`` entries, whose
        proved pattern lies on the candidate's points (so the pairing holds wherever the
        pattern does) and colours in at most ``PAYS_FRACTION`` of ``count`` passes goes into
        ``accepted`` with its points kept: the values from the colours, the derivatives the
        component shape + input shape as for any point structure (sparse COO). The rest are
        returned, for one VJP per component (nothing spent on them but the pattern's proof
        and colouring: no pattern is observed, the points' passes would cost less)."""
        rest, most = [], int(count * PAYS_FRACTION)
        for name in group:
            tensor, pairing = named[name], candidates[name][position[name]].pairing
            found = self._coloured_points(name, tensor, pairing, count, most)
            if found is None:
                rest.append(name)
                continue
            self._tried.add(name)
            accepted[name] = (Candidate(pairing, True),
                              self._taken(name, tensor, found, tuple(pairing.out_axes)))
        return rest

    def _coloured_points(self, name, tensor, pairing, count: int, most: int):
        """:meth:`at_points`'s :class:`SparseJacobian` for one input, or None."""
        shapes = (tuple(self.output.shape), tuple(tensor.shape))
        if most < 2 or count * tensor.numel() <= POINTS_DENSE_ENTRIES or \
                not self._worth(tensor) or name in self._tried or \
                not any(tensor.shape[b] > 1 for b in pairing.in_axes):
            return None  # (a few components: their passes cost no more than colours would)
        pattern = self._proved(name, tensor)
        if pattern is None or off_points(pattern.crow, pattern.col, None, *shapes, pairing):
            return None
        found = self._early.get(name)  # made already (with a higher cap): its colours
        if found is None:
            found = self._attempt(name, tensor, pattern, most)
        if found.sparse is None or found.sparse.count > most:
            return None
        self._early.pop(name, None)
        return found.sparse

    def _accepting(self, named, group, accepted, candidate) -> list[str]:
        """The inputs of ``group`` the compressed passes compute go into ``accepted`` at
        ``candidate(name)``; the rest are returned."""
        rest = []
        for name in group:
            derivatives = self._computed(name, named[name])
            if derivatives is None:
                rest.append(name)
            else:
                accepted[name] = (candidate(name), derivatives)
        return rest

    def row_reader(self, name: str, tensor: torch.Tensor):
        """Large path, after ``name``'s likeliest pairing (with points) was rejected and when
        its last candidate has none: where the graph proves its pattern, the compressed
        Jacobian now (kept for :meth:`take`), and a reader of its rows for the row proposal
        (:func:`.candidates.row_proposal`), which then spends no backward pass per row; None
        otherwise. Its rows are J's rows: the probe check accepted it."""
        found = self._early_attempt(name, tensor)
        return None if found is None or found.sparse is None else \
            _RowReader(found.sparse.matrix, tensor.shape)

    def refuting(self, name: str, tensor: torch.Tensor, pairing) -> _RowReader | None:
        """Large path, for ``name``'s current pairing (with points) when its last candidate has
        none: a reader of J's rows (:meth:`row_reader`) where the compressed Jacobian has a
        finite nonzero off the pairing's points, which rejects the pairing with no pass of
        its own (J's values are exact and checked); None where it cannot say (no proved
        pattern, one that lies on the points: the pairing may hold; no checked Jacobian).
        The proved pattern holds every nonzero of J, so the passes run only where it has an
        entry off the points."""
        if not self._worth(tensor) or name in self._tried:
            return None
        pattern = self._proved(name, tensor)
        shapes = (tuple(self.output.shape), tuple(tensor.shape))
        if pattern is None or not off_points(pattern.crow, pattern.col, None, *shapes, pairing):
            return None
        reader = self.row_reader(name, tensor)  # checked: every value finite (a NaN or ∞ fails)
        if reader is None or not off_points(reader.crow, reader.col, reader.values, *shapes,
                                            pairing):
            return None
        return reader

    def _proved(self, name: str, tensor: torch.Tensor):
        """The proved pattern of d output / d ``name`` (:func:`.indexmaps.proved_pattern`),
        made once per analysis."""
        if name not in self._patterns:
            self._patterns[name] = proved_pattern(self.output, tensor, self.budget)
        return self._patterns[name]

    def proved_made(self, name: str):
        """The proved pattern of d output / d ``name`` where this analysis has made it
        already (the couplings check then walks no graph again), else None."""
        return self._patterns.get(name)

    def _early_attempt(self, name: str, tensor: torch.Tensor) -> Attempt | None:
        """The compressed attempt for ``name`` made before :meth:`take` (once, kept for it),
        on the proved pattern; None where it is not worth it or none is proved."""
        if not self._worth(tensor) or name in self._tried:
            return None
        if name not in self._early:
            pattern = self._proved(name, tensor)
            if pattern is None:
                return None
            self._early[name] = self._attempt(name, tensor, pattern)
        return self._early[name]

    def _attempt(self, name: str, tensor: torch.Tensor, pattern=None,
                 max_colours: int | None = None) -> Attempt:
        """:func:`.compressed.attempt` checked against the analysis's probe 0 where it serves
        more (computed already, or shared by several inputs), else against a probe of its
        own (drawn at a third of the cost: probe 0 may never be needed); ``max_colours``:
        :attr:`max_colours` unless given."""
        shared = self.probes.seconds is not None or len(self.probes.named) > 1
        known = (self.probes.vector(), self.probes.vjp(name)) if shared else None
        return attempt(self.output, tensor, self.budget, self.probes.seed,
                       self.max_colours if max_colours is None else max_colours, known, pattern)

    def _computed(self, name: str, tensor: torch.Tensor) -> torch.Tensor | None:
        if not self._worth(tensor) or name in self._tried:
            return None
        self._tried.add(name)
        found = self._early.pop(name) if name in self._early else \
            self._attempt(name, tensor, self._proved(name, tensor))
        if found.nbytes:  # over the budget: the full Jacobian is refused too (on_refusal)
            self.over[name] = found
        if found.sparse is None:
            if found.why not in (TOO_DENSE, OVER_BUDGET):
                self.unpaid[name] = found.why if not found.nnz else \
                    f"its pattern of {found.nnz:,} nonzeros was found but rejected: {found.why}"
                self.notes.append(f"No sparsity pattern paid off for {name}: {found.why}; "
                                  "the full Jacobian was computed instead.")
            return None
        return self._taken(name, tensor, found.sparse)

    def _taken(self, name, tensor, sparse: SparseJacobian,
               point_out_axes: tuple = ()) -> SparseDerivatives:
        """The derivatives of ``sparse``, made a COO tensor when the result's are read
        (without ``point_out_axes``: a point structure's)."""
        self.taken[name] = sparse
        return SparseDerivatives(sparse.matrix, tuple(self.output.shape), tuple(tensor.shape),
                                 point_out_axes)

    def after_exact(self, accepted: dict, named: dict) -> dict:
        """Small path: each accepted full Jacobian (no points) whose pattern's colouring pays
        is kept in its sparse form; its pattern is read off it (no further pass)."""
        if not self.enabled:
            return accepted
        for name, (candidate, derivatives) in accepted.items():
            tensor = named[name]
            if self._worth(tensor) and not any(tensor.shape[b] > 1
                                               for b in candidate.pairing.in_axes):
                sparse = self._from_dense(derivatives.reshape(self.output.numel(), -1), name,
                                          tensor)
                if sparse is not None:
                    accepted[name] = (candidate, self._taken(name, tensor, sparse))
        return accepted

    def _from_dense(self, flat: torch.Tensor, name: str, tensor) -> SparseJacobian | None:
        """The full Jacobian ``flat`` (m × n) in sparse form: on the pattern the graph proves
        (no pass; where J has no nonzero off it), else on its own nonzeros (OBSERVED, found
        by the m passes that computed it); None where the colouring does not pay."""
        m, n = flat.shape
        if m and int(torch.count_nonzero(flat[0])) > most_per_row(n):
            return None  # one row too dense already (the check below, 40x cheaper)
        nonzero = flat != 0
        # too dense, or a column whose rows all take different colours: no pattern that holds
        # these nonzeros pays (a proved one holds at least them), so none is proved
        if int(nonzero.sum(1).max()) > most_per_row(n):
            return None
        proved = self._proved(name, tensor)
        if int(nonzero.sum(0).max()) > self.max_colours:  # a dense column: by columns, if any,
            if not bool(flat.isfinite().all()) or proved is None:  # not 0·NaN (the exact path
                return None  # fills it from forward mode), nor after m passes found it (G27-4)
            return kept_by_columns(dense_to_csr(flat), self.output.shape, tensor.shape,
                                   Evidence.OBSERVED, m, max_colours=self.max_colours)
        if proved is not None:
            on = torch.zeros_like(nonzero)
            on[csr_rows(proved.crow), proved.col] = True
            proved = None if bool((nonzero & ~on).any()) else proved
        if proved is not None:
            crow, col = proved.crow.to(flat.device), proved.col.to(flat.device)
            matrix = csr_matrix(crow, col, flat[csr_rows(crow), col], (m, n))
        else:
            matrix = dense_to_csr(flat)
        colours = colour_rows(matrix.crow_indices().cpu().numpy(),
                              matrix.col_indices().cpu().numpy(), n,
                              shape=(tuple(self.output.shape), tuple(tensor.shape)),
                              lattice=None if proved is None else proved.lattice)
        count = int(colours.max()) + 1 if colours is not None and len(colours) else 0
        if colours is None or count > self.max_colours:
            return None
        if proved is not None:
            return SparseJacobian(matrix, torch.from_numpy(colours), count, Evidence.PROVED, 0,
                                  conditional_on=proved.conditional_on)
        self.notes.append(unproved_note(name, m))
        return None


def unproved_note(name: str, m: int) -> str:
    """Why a Jacobian whose colouring would pay is shown whole: its pattern, not proved by
    the graph's rules, was read off the one backward per output entry that computed every
    derivative (colours would cost those passes and more: G27-4)."""
    return (f"No sparsity pattern paid off for {name}: the graph's rules do not prove its "
            f"pattern, so it was read off the one backward per output entry ({m:,}) that gave "
            "every derivative; colouring it then would add passes, not save them.")


class _RowReader:
    """Row ``flat`` of the CSR ``matrix``, dense and shaped like the input (``shape``), or
    (:meth:`nonzero`) only its nonzeros' multi-indices, as ``row.nonzero()`` gives them,
    read off the row's own entries (no dense row of x.numel() entries to fill and scan)."""

    def __init__(self, matrix: torch.Tensor, shape):
        self.crow, self.col = matrix.crow_indices(), matrix.col_indices()
        self.values, self.n, self.shape = matrix.values(), matrix.shape[1], tuple(shape)

    def _entries(self, flat: int):
        start, stop = int(self.crow[flat]), int(self.crow[flat + 1])
        return self.col[start:stop], self.values[start:stop]

    def __call__(self, flat: int) -> torch.Tensor:
        col, values = self._entries(flat)
        row = self.values.new_zeros(self.n)
        row[col] = values
        return row.reshape(self.shape)

    def nonzero(self, flat: int) -> torch.Tensor:
        col, values = self._entries(flat)
        col = col[values != 0].long()  # columns ascending: row-major order, as nonzero()
        if len(self.shape) == 1:
            return col[:, None]
        if not self.shape:
            return col.new_zeros(col.numel(), 0)
        return torch.stack(torch.unravel_index(col, self.shape), 1)


def off_points(crow, col, values, out_shape, in_shape, pairing) -> bool:
    """Whether the 2-D CSR (``crow``, ``col``; with ``values``, only its finite nonzeros) has an
    entry off the points of ``pairing``: an output and an input index that differ on a paired
    axis. Rows are read in blocks growing fourfold (such an entry usually lies in the first),
    each side's paired indices unravelled from the flat ones."""
    if tuple(out_shape) == tuple(in_shape) and identity_pattern(crow, col):
        return False  # entry (i, i) alone: one index on both sides, on every point
    m, start, size = crow.numel() - 1, 0, 256
    pairs = [(a, b) for a, b in pairing]
    out_strides, in_strides = row_major_strides(out_shape), row_major_strides(in_shape)
    while start < m and pairs:
        stop = min(m, start + size)
        begin, end = int(crow[start]), int(crow[stop])
        if end > begin:
            rows = csr_rows(crow[start:stop + 1] - begin).to(col.device) + start
            cols = col[begin:end].long()
            off = torch.zeros(end - begin, dtype=torch.bool, device=col.device)
            for a, b in pairs:  # index along a differs from index along b
                off |= _index(rows, out_strides[a], out_shape, a) != \
                    _index(cols, in_strides[b], in_shape, b)
            if values is not None:
                held = values[begin:end]
                off &= (held != 0) & held.isfinite()
            if bool(off.any()):
                return True
        start, size = stop, size * 4
    return False


def _index(flat: torch.Tensor, stride: int, shape, axis: int) -> torch.Tensor:
    """The index along ``axis`` of each flat (row-major) index of a tensor of ``shape``."""
    index = flat if stride == 1 else torch.div(flat, stride, rounding_mode="floor")
    return index if axis == 0 else index % shape[axis]
