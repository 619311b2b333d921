"""Column colouring: one forward-mode pass (a Jacobian-vector product J·u) per colour of the
input's entries, where that takes fewer passes than one backward per colour of the output's.

Entries of x of one colour are never read by one output entry, so u = 1 on them gives J·u
whose entry i is J[i, j] for the one j of that colour that row i reads: a dense column
(every output reads x[0], as in y = f(x) + x[0]) needs as many row colours as outputs but
only two column colours.

Forward mode on the graph already recorded (the user's code is not run again), by double
backward: g(v) = Jᵀv once with ``create_graph=True`` (v a zero tensor that requires grad;
g is linear in v), then J·u = the VJP of g against u, one per colour. A graph without
double backward (a custom ``autograd.Function`` marked ``once_differentiable``) gives none:
:func:`column_attempt` returns None and the rows stay. The result is checked as the rows'
are (:func:`.sparse_check.checked`, plus :func:`.sparse_check.rows_checked` for an OBSERVED
pattern): the check's plain backward passes do not use the double backward, so a custom
backward that drops the dependence on v (a numpy backward) shows there.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from .colouring import colour_columns, colour_count, colour_rows
from .checked_batches import checked_batch
from .derivatives import chunk_size, plain_vjp
from .pairing import Evidence
from .pattern import Pattern, csr_pattern, most_per_row, observed_pattern
from .probes import probe_generator
from .sparse_check import checked, rows_checked
from .sparse_layout import csr_matrix, csr_rows
from .textenum import TextEnum
from .torch_api import (DOUBLE_BACKWARD_ERRORS, guarded_grad, no_double_backward,
                        once_differentiable_node)

if TYPE_CHECKING:
    from .compressed import SparseJacobian

# One double-backward JVP costs about this many plain backward passes of the same map:
# measured on this 2-core CPU (float64, one thread, medians of 7, three noisy runs):
# sin(x)·x[0] at 10⁶ 0.3–0.5×, a 3-point stencil plus x³ at 10⁶ 0.3–0.7×, tanh(A x) at 10³
# 0.9–1.0×, cumsum(softplus) at 10⁵ 1.0–1.4×, two width-3 Conv1d at 10⁵ 3.1–6.2× (conv's
# double backward is a full convolution_backward); the g = Jᵀv pass with create_graph, once,
# costs 0.4–1.2 backward. 2 is the middle of that spread, on the side of the rows (the path
# that needs no double backward), so columns are used only where their colours times 2 are
# fewer than the rows'.
COST_RATIO = 2
# Up to this many colours, one pass after another (as the row passes, compressed.LOOP_PASSES).
LOOP_PASSES = 64


class Mode(TextEnum):
    """Which passes computed a :class:`.compressed.SparseJacobian` (its ``mode``)."""

    ROWS = "rows"  # one backward (vᵀJ) per colour of the output's entries
    COLUMNS = "columns"  # one forward-mode pass (J·u) per colour of the input's entries


def column_colours(pattern: Pattern, row_count: int | None, out_shape=None,
                   in_shape=None, max_colours: int | None = None) -> np.ndarray | None:
    """int64 colours for the input's entries (:func:`.colouring.colour_columns`) where column
    passes pay more than ``row_count`` row passes (None: rows refused), else None. Not
    coloured at all where they cannot pay: a row reading k entries needs k column colours."""
    widest = pattern.diagonals.most if pattern.diagonals is not None else \
        int(np.diff(pattern.crow.numpy()).max()) if pattern.shape[0] else 0
    if row_count is not None and widest * COST_RATIO >= row_count:
        return None
    shape = None if out_shape is None else (tuple(out_shape), tuple(in_shape))
    colours = peeled_colours(pattern.crow.numpy(), pattern.col.numpy(), pattern.shape[1],
                             shape)
    if colours is None:
        return None
    count = colour_count(colours)
    if max_colours is not None and count * COST_RATIO > max_colours:
        return None
    return colours if prefer_columns(row_count, count) else None


# A column read by more than this fraction of the rows (and MIN_DENSE rows) is dense: it takes
# a colour of its own, and the rest are coloured without it. A dense column is what makes
# columns pay, and it defeats the lattice colouring of the rest (x[0] shares a row with every
# entry: no (a·index) mod p fits it); greedy over its transpose would then loop over every
# nonzero in Python (a 3-point stencil plus x[0] at 10⁶ unknowns: 1.4 s, peeled 0.3–0.5 s;
# noisy).
DENSE_READERS = 1 / 16
MIN_DENSE = 32


def peeled_colours(crow: np.ndarray, col: np.ndarray, n: int, shape=None) -> np.ndarray | None:
    """:func:`.colouring.colour_columns` with the dense columns (at most :data:`MOST_DENSE`)
    peeled off first: colours 0..d-1 for them, one each, then the rest's colouring shifted
    by d. Valid: a row meets each dense colour once and the rest's colours apart."""
    m = len(crow) - 1
    counts = np.bincount(col, minlength=n)
    dense = np.flatnonzero(counts > max(MIN_DENSE, m * DENSE_READERS))
    if len(dense) == 0 or len(dense) > MOST_DENSE:
        return colour_columns(crow, col, n, shape=shape)
    keep = counts[col] <= max(MIN_DENSE, m * DENSE_READERS)
    rows = np.repeat(np.arange(m, dtype=np.int64), np.diff(crow))
    rest_crow = np.concatenate([[0], np.cumsum(np.bincount(rows[keep], minlength=m))])
    rest = colour_columns(rest_crow, col[keep], n, shape=shape)
    if rest is None:
        return None
    colours = rest + len(dense)
    colours[dense] = np.arange(len(dense))
    return colours


def prefer_columns(row_count: int | None, column_count: int | None) -> bool:
    """Whether ``column_count`` forward-mode passes beat ``row_count`` backward ones (None:
    that colouring was refused)."""
    if column_count is None:
        return False
    return row_count is None or column_count * COST_RATIO < row_count


def computed_by_columns(output: torch.Tensor, x: torch.Tensor, pattern: Pattern,
                        row_count: int | None, budget: int, seed: int,
                        max_colours: int | None = None, known=None,
                        row_colours: np.ndarray | None = None) -> SparseJacobian | None:
    """The Jacobian by columns where they pay (:func:`column_colours` against ``row_count``
    row colours, None: rows refused) and the passes and check succeed; None: keep the rows.
    ``row_colours``: the rows' colouring (None: refused), the result's ``cover``."""
    colours = column_colours(pattern, row_count, output.shape, x.shape, max_colours)
    if colours is None:
        return None
    cover = row_colours if row_colours is not None else np.arange(pattern.shape[0])
    return column_attempt(output, x, pattern, colours, budget, seed, known, cover)


def output_cover(pattern: Pattern) -> np.ndarray:
    """A colouring of the output's entries (rows of one colour read disjoint entries of x:
    :func:`.colouring.colour_rows`), one colour per entry where it refuses (a dense column:
    its readers share no colour). What ``r.gradients`` holds by columns; no pass made."""
    rows = colour_rows(pattern.crow.numpy(), pattern.col.numpy(), pattern.shape[1])
    return np.arange(pattern.shape[0], dtype=np.int64) if rows is None else rows


def column_attempt(output: torch.Tensor, x: torch.Tensor, pattern: Pattern,
                   colours: np.ndarray, budget: int, seed: int,
                   known=None, cover: np.ndarray | None = None) -> SparseJacobian | None:
    """d output / d x on ``pattern`` from one J·u per colour of ``colours`` (the input's
    entries), checked (:mod:`.sparse_check`); None where the graph has no double backward
    or the check disagrees. ``known``: as :func:`.sparse_check.checked`; ``cover``: the
    output's colours for ``r.gradients`` (None: :func:`output_cover`)."""
    from .compressed import SparseJacobian  # compressed imports this module: import when used

    colours = torch.from_numpy(np.asarray(colours, np.int64))
    jacobian = column_jacobian(output, x, pattern, colours, budget)
    if jacobian is None:
        return None
    proved = pattern.evidence is Evidence.PROVED
    if not (checked(output, x, jacobian, seed, known, draws=1 if proved else None,
                    proved=proved, rows_follow=not proved)
            and (proved or rows_checked(output, x, jacobian, seed))):
        return None
    count = int(colours.max()) + 1 if colours.numel() else 0
    cover = output_cover(pattern) if cover is None else cover
    return SparseJacobian(jacobian, colours, count, pattern.evidence, pattern.probes,
                          Mode.COLUMNS, pattern.conditional_on,
                          torch.from_numpy(np.asarray(cover, np.int64)))


def kept_by_columns(matrix: torch.Tensor, out_shape, in_shape, evidence, pattern_passes: int,
                    row_count: int | None = None,
                    max_colours: int | None = None) -> SparseJacobian | None:
    """A CSR Jacobian already computed whole (the small path's m passes) kept in sparse form
    by columns where :func:`column_colours` finds they pay (no pass is spent: the colours
    only say how it would be computed, for the display and ``r.tangents``; ``r.gradients``
    holds the one-hot rows that computed it), else None."""
    from .compressed import SparseJacobian  # compressed imports this module: import when used

    crow, col = matrix.crow_indices().cpu(), matrix.col_indices().cpu()
    pattern = Pattern(crow, col, tuple(matrix.shape), pattern_passes, evidence)
    colours = column_colours(pattern, row_count, out_shape, in_shape, max_colours)
    if colours is None:
        return None
    return SparseJacobian(matrix, torch.from_numpy(colours), colour_count(colours), evidence,
                          pattern_passes, Mode.COLUMNS,  # cover: the one-hot rows computed
                          cover=torch.arange(matrix.shape[0]))


def column_jacobian(output: torch.Tensor, x: torch.Tensor, pattern: Pattern,
                    colours: torch.Tensor, budget: int) -> torch.Tensor | None:
    """The CSR Jacobian on ``pattern``: J[i, j] = (J·u_c)[i], c the colour of j, u_c = 1 on
    the entries of x of colour c. Unchecked; None without double backward."""
    products = jvps(output, x, colours, budget)
    if products is None:
        return None
    m = pattern.shape[0]
    at = torch.index_select(colours, 0, pattern.col) * m + csr_rows(pattern.crow)
    values = torch.index_select(products.reshape(-1), 0, at.to(products.device))
    return csr_matrix(pattern.crow, pattern.col, values.cpu(), pattern.shape).to(x.device)


def tangents(x: torch.Tensor, colours: torch.Tensor, first: int, stop: int) -> torch.Tensor:
    """u_c for c in ``first:stop``, stacked, each shaped like x: 1 on the entries of colour c."""
    ids = torch.arange(first, stop, device=x.device)
    return (colours.to(x.device)[None, :] == ids[:, None]).to(x.dtype) \
        .reshape((stop - first,) + tuple(x.shape))


def observed_columns(output: torch.Tensor, x: torch.Tensor, budget: int, seed: int,
                     max_probes: int | None = None) -> Pattern | None:
    """The pattern of d output / d x at this x, observed by columns, where a dense column
    makes the row probes (:func:`.pattern.observed_pattern`) give up: a few sampled rows
    (one-hot VJPs) name the entries of x most of them read; each such column is read whole
    (one J·e_j), and the rest by the grouped probes of :func:`.pattern.observed_pattern` run
    on g = Jᵀv without those entries, against v (their VJPs are J·u: they group the entries
    of x). OBSERVED, (m × n) CSR; None as :func:`.pattern.observed_pattern`, where a sampled
    row reads too much (a dense row: no colouring pays), or without double backward."""
    flat = output.reshape(-1)
    m, n = flat.numel(), x.numel()
    dense = dense_columns(flat, x, seed)
    operator = transpose_operator(flat, x) if dense is not None else None
    if operator is None or operator[0] is None:
        return None
    g, v = operator
    keep = torch.ones(n, dtype=torch.bool)
    keep[dense] = False
    kept = keep.nonzero().squeeze(1)
    try:  # every pass below goes through the double backward
        found = observed_pattern(g.reshape(-1)[kept.to(g.device)], v, budget, seed,
                                 max_probes)
        if found is None:
            return None
        pairs = [(kept[torch.repeat_interleave(torch.arange(len(kept)), found.crow.diff())],
                  found.col)]  # (column of J, row of J) of each nonzero
        for j in dense.tolist():
            u = torch.zeros(n, dtype=g.dtype, device=g.device)
            u[j] = 1
            (column,) = guarded_grad(g.reshape(-1), v, u, retain_graph=True)
            read = column.detach().reshape(-1).ne(0).nonzero().squeeze(1).cpu()
            pairs.append((torch.full_like(read, j), read))
    except DOUBLE_BACKWARD_ERRORS as error:  # an op without double backward met on the way
        if not no_double_backward(error):
            raise
        return None
    cols, rows = (torch.cat(part) for part in zip(*pairs))
    return csr_pattern(rows.cpu(), cols.cpu(), (m, n), found.probes + len(dense))


SAMPLE_ROWS = 8  # one-hot rows read before observing
MOST_DENSE = 32  # dense columns read whole, at most


def dense_columns(output: torch.Tensor, x: torch.Tensor, seed: int) -> torch.Tensor | None:
    """The flat entries of x that at least half of :data:`SAMPLE_ROWS` sampled rows read (one
    one-hot backward each; at most :data:`MOST_DENSE`, most read first), or None where a
    sampled row reads more than :func:`.pattern.most_per_row` entries (a dense row). Where
    there is one, the row probes would spend up to their whole budget before giving up
    (m/4 passes: 7 s at 10⁴, 2 min at 10⁵): observe by columns instead."""
    flat = output.reshape(-1)
    m, n = flat.numel(), x.numel()
    rows = torch.randint(0, max(m, 1), (SAMPLE_ROWS,),
                         generator=probe_generator(seed, "column-rows"))
    hits = torch.zeros(n, dtype=torch.int64)
    for row in rows.tolist() if m else ():
        v = torch.zeros_like(flat)
        v[row] = 1
        read = plain_vjp(flat, [x], v)[0].reshape(-1).ne(0).cpu()
        if int(read.sum()) > most_per_row(n):
            return None
        hits += read
    dense = (hits * 2 >= SAMPLE_ROWS).nonzero().squeeze(1) if m else hits[:0]
    return dense[torch.argsort(hits[dense], descending=True, stable=True)][:MOST_DENSE]


def transpose_operator(flat: torch.Tensor, x: torch.Tensor):
    """(g, v): g = Jᵀv with ``create_graph=True``, v a zero tensor like ``flat`` that requires
    grad, so that the VJP of g with u is J·u; g None where it does not depend on v (J = 0);
    None where the graph has no double backward."""
    v = torch.zeros_like(flat, requires_grad=True)
    try:
        (g,) = guarded_grad(flat, x, v, retain_graph=True, create_graph=True,
                            allow_unused=True)
    except DOUBLE_BACKWARD_ERRORS as error:
        if not no_double_backward(error):
            raise
        return None
    if g is None or g.grad_fn is None:
        return None, v
    return None if refuses_double_backward(g) else (g, v)


def jvps(output: torch.Tensor, x: torch.Tensor, colours: torch.Tensor,
         budget: int) -> torch.Tensor | None:
    """(count × output.numel()): J·u_c for each colour c, by double backward; None where the
    graph has none."""
    flat = output.reshape(-1)
    count = int(colours.max()) + 1 if colours.numel() else 0
    operator = transpose_operator(flat, x)
    if operator is None:
        return None
    g, v = operator
    if g is None:  # Jᵀv does not depend on v: J = 0
        return flat.new_zeros(count, flat.numel()).detach()
    rows = []
    try:
        if count <= LOOP_PASSES:
            for c in range(count):
                (jv,) = guarded_grad(g, v, tangents(x, colours, c, c + 1)[0],
                                     retain_graph=True)
                rows.append(jv.detach().reshape(1, -1))
        else:
            limit = chunk_size(g, [v], budget)
            for first in range(0, count, limit):
                stop = min(count, first + limit)
                (jv,) = checked_batch(g, [v], tangents(x, colours, first, stop))
                rows.append(jv.detach().reshape(stop - first, -1))
    except DOUBLE_BACKWARD_ERRORS as error:  # once_differentiable, an op without double backward …
        if not no_double_backward(error):
            raise
        return None
    return torch.cat(rows) if rows else flat.new_zeros(0, flat.numel()).detach()


def refuses_double_backward(g: torch.Tensor) -> bool:
    """Whether the graph of ``g`` holds the node a ``once_differentiable`` backward leaves
    (its ``Error`` node is cut off from v, so autograd skips it without raising and J·u
    would silently lack that term)."""
    return once_differentiable_node(g.grad_fn) is not None
