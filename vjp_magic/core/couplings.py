"""Couplings the probes cannot see: a structure accepted by random probes only (OBSERVED),
checked against the entries the autograd graph allows outside it.

A probe compares vᵀJ with vᵀD entry by entry, relative to the magnitudes that sum into each
entry, so a derivative below the dtype's resolution relative to both its row and its column
(1 beside 10¹²·x on the diagonal, in float32) passes every probe. The graph's index maps
(:func:`.indexmaps.proved_pattern`) say which entries can be nonzero for every x; those
outside the accepted structure are few columns or rows in the cases that matter. Each of
them is computed exactly, once, and any nonzero there rejects the structure:

- a column J·e_j by forward mode (double backward: :func:`.column_passes.jvps`);
- a row e_iᵀJ by one one-hot backward pass.

With no proved pattern (a custom ``autograd.Function``, an op without a rule) every entry is
allowed: the columns or rows are all of them, computed when they number at most
:data:`MOST_PASSES`. Over that, points are checked by ~log₂ m sets read only off their own
points (:func:`_by_points`: 23 for 10⁶ points); where that sees a coupling (or cannot run),
every entry non-zero at this x is observed by sets read as zero or non-zero
(:func:`.pattern.observed_pattern`), which a small derivative beside a large one cannot hide
from. Only where no pattern can be
observed (a dense row or column, a NaN or ±inf answer) does the structure stand as the
probes found it, and :func:`unchecked_note` says what could hide.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from .column_passes import jvps, observed_columns
from .checked_batches import checked_batch
from .derivatives import chunk_size, plain_vjp
from .indexmaps import proved_pattern
from .pairing import Pairing
from .pattern import observed_pattern
from .probes import set_probe_values
from .setdecode import row_colours, weight_code, weight_sets
from .sparse_layout import csr_rows
from .tolerances import tolerances

MOST_PASSES = 64  # columns or rows computed exactly to check one structure, at most
CHECK_BUDGET = 2**28  # bytes for the batched probes of an observed check
PATTERN_BYTES = 512  # per output and input entry, for the index maps of the proved pattern

Inside = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (rows, cols) → bool mask


class Verdict(NamedTuple):
    """What :func:`outside_entries` found: ``coupled`` (a nonzero derivative outside the
    structure), ``checked`` (every entry the graph allows outside it is known: none, or
    computed), and ``passes`` (columns or rows computed)."""

    coupled: bool
    checked: bool
    passes: int = 0


def pairing_inside(out_shape, in_shape, pairing: Pairing) -> Inside:
    """(flat rows, flat columns) → whether each entry lies in the structure of ``pairing``:
    its output and input indices agree on every paired axis (one key per point and side,
    :func:`_point_key`)."""
    sizes = [int(in_shape[b]) for _, b in pairing]
    out_key = _point_key(out_shape, [a for a, _ in pairing], sizes)
    in_key = _point_key(in_shape, [b for _, b in pairing], sizes)

    def inside(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        return out_key(rows) == in_key(cols)
    inside.point_keys = (out_key, in_key)  # for :func:`_by_points`
    return inside


def _point_key(shape, axes: list[int], sizes: list[int]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Flat index → the number of its point (:func:`_point_keys`). Where ``axes`` are
    consecutive axes in order, each as long as its partner (an elementwise map, a batch
    axis), that is arithmetic on the flat index: the flat index itself, or one division
    or remainder; else one gather from a table of every flat index's key."""
    shape = [int(n) for n in shape]
    start = axes[0] if axes else 0
    if list(axes) == list(range(start, start + len(axes))) and \
            all(shape[a] == size for a, size in zip(axes, sizes)):
        inner = max(1, math.prod(shape[start + len(axes):]))
        span = math.prod(sizes)

        def key(flat: torch.Tensor) -> torch.Tensor:
            flat = flat if inner == 1 else torch.div(flat, inner, rounding_mode="floor")
            return flat if start == 0 else flat.remainder(span)  # no leading axes: below span
        return key
    table = _point_keys(shape, axes, sizes)

    def looked_up(flat: torch.Tensor) -> torch.Tensor:
        return torch.index_select(table.to(flat.device), 0, flat.reshape(-1)).reshape(flat.shape)
    return looked_up


def _point_keys(shape, axes: list[int], sizes: list[int]) -> torch.Tensor:
    """Per flat index of a tensor of ``shape``: the number of its point (the indices on
    ``axes``, mixed radix over ``sizes``), -1 where an index is past its partner's size."""
    keys = torch.zeros(tuple(int(n) for n in shape), dtype=torch.int64)
    step = 1
    for axis, size in zip(reversed(axes), reversed(sizes)):
        index = torch.arange(int(shape[axis]))
        index = torch.where(index < size, index * step, -(2**50))
        keys = keys + index.reshape([-1 if a == axis else 1 for a in range(len(shape))])
        step *= int(size)
    return keys.reshape(-1).clamp_(min=-1)


def csr_inside(matrix: torch.Tensor) -> Inside:
    """(flat rows, flat columns) → whether each entry is stored in the CSR ``matrix``."""
    n = matrix.shape[1]
    keys = csr_rows(matrix.crow_indices().cpu()) * n + matrix.col_indices().cpu()
    keys = torch.sort(keys).values

    def inside(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        wanted = (rows.cpu() * n + cols.cpu()).reshape(-1)
        at = torch.searchsorted(keys, wanted).clamp_(max=max(keys.numel() - 1, 0))
        found = keys[at] == wanted if keys.numel() else torch.zeros_like(wanted, dtype=torch.bool)
        return found.reshape(torch.broadcast_shapes(rows.shape, cols.shape)).to(rows.device)
    inside.matrix = matrix  # for :func:`_by_colours`
    return inside


def nonzero_outside(jacobian: torch.Tensor, out_ndim: int, pairing: Pairing) -> bool:
    """Whether the full ``jacobian`` (output shape + input shape) has a finite nonzero entry
    outside the structure of ``pairing`` (NaN from 0·NaN and ∞ are the probes' business)."""
    if not pairing or jacobian.numel() == 0:
        return False
    m = math.prod(jacobian.shape[:out_ndim])
    flat = jacobian.reshape(m, -1)
    inside = pairing_inside(jacobian.shape[:out_ndim], jacobian.shape[out_ndim:], pairing)
    rows = torch.arange(m, device=flat.device)[:, None]
    cols = torch.arange(flat.shape[1], device=flat.device)[None, :]
    found = (flat != 0) & flat.isfinite() & ~inside(rows, cols)
    return bool(found.any())


def outside_entries(output: torch.Tensor, x: torch.Tensor, inside: Inside, pattern=None,
                    most: int = MOST_PASSES, seed: int = 0) -> Verdict:
    """Whether d output / d x has a nonzero outside the structure ``inside`` says, among the
    entries the proved ``pattern`` allows (every entry where it is None): the fewer of their
    columns and rows computed exactly, up to ``most`` passes, else every non-zero entry at
    this x observed (:func:`_by_observing`; unchecked where it cannot be)."""
    m, n = output.numel(), x.numel()
    if pattern is None:
        rows, cols = torch.arange(m), torch.arange(n)
    else:
        all_rows, all_cols = _pattern_rows(pattern.crow, pattern.col.numel()), pattern.col
        outside = ~inside(all_rows, all_cols).cpu()
        if not bool(outside.any()):
            return Verdict(False, True)  # the graph allows nothing outside: proved
        rows, cols = torch.unique(all_rows[outside]), torch.unique(all_cols[outside])
    if cols.numel() <= rows.numel() and cols.numel() <= most:
        coupled = _by_columns(output, x, inside, cols)
        if coupled is not None:
            return Verdict(coupled, True, cols.numel())
    if rows.numel() <= most:
        return Verdict(_by_rows(output, x, inside, rows), True, rows.numel())
    return _by_observing(output, x, inside, seed)


def _by_observing(output, x, inside: Inside, seed: int) -> Verdict:
    """Points first: no coupling seen by :func:`_by_points` (~log₂ m sets) is checked. Else
    every entry non-zero at this x, observed by sets read as zero or non-zero
    (:func:`.pattern.observed_pattern`, with values drawn for this check: a derivative of 1
    beside 10¹² shows), against the structure; unchecked where no pattern can be observed (a
    row or column reading over 1/8 of the other side, a NaN or ±inf answer)."""
    keys, matrix = getattr(inside, "point_keys", None), getattr(inside, "matrix", None)
    clean = _by_points(output, x, *keys, seed) if keys is not None else \
        _by_colours(output, x, matrix, seed) if matrix is not None else None
    if clean is not None:
        return Verdict(False, True, clean)
    found = observed_pattern(output, x, CHECK_BUDGET, seed, purpose="couplings")
    if found is None:
        found = observed_columns(output, x, CHECK_BUDGET, seed)
    if found is None:
        return Verdict(False, False)
    rows = _pattern_rows(found.crow, found.nnz)
    return Verdict(not bool(inside(rows, found.col).all()), True, found.probes)


def _by_points(output, x, out_key, in_key, seed: int) -> int | None:
    """The sets it took (L) where no entry off the points is non-zero at this x; None where
    one is, or an answer is not finite, or an index lies past its partner's size.

    Each point p gets a word of w = L // 2 ones over L bits (:func:`.setdecode.weight_sets`,
    L the fewest with C(L, w) ≥ the points: 23 for 10⁶, 1 set less than half of both sides
    of every bit). Set b probes the output entries whose point's word has a 1 at b, with
    values drawn for this check, and is read only at the input entries whose point's word
    has a 0 there: no entry of their own point is in the set, so the diagonal cannot mask
    what is read, and any non-zero read is a coupling. For a coupling (i, j), points p ≠ q,
    the word of p is not inside that of q (one weight): at some b, i is in the set and j is
    read. So every entry a one-hot pass sees non-zero shows, read as zero or non-zero, unless
    the couplings of one input entry in one set cancel exactly."""
    flat = output.reshape(-1)
    m, n = flat.numel(), x.numel()
    rows = out_key(torch.arange(m, device=flat.device)).reshape(-1).cpu()
    cols = in_key(torch.arange(n, device=flat.device)).reshape(-1).cpu()
    if m == 0 or n == 0 or bool((rows < 0).any()) or bool((cols < 0).any()):
        return None
    points = int(max(int(rows.max()), int(cols.max()))) + 1
    length, weight = weight_code(max(points, 2))
    words = weight_sets(max(points, 2), length, weight).to(flat.device)  # L × points
    values = set_probe_values(flat, seed, "couplings-points")
    sets = words[:, :m] if _identity(rows, points) else words[:, rows.to(flat.device)]
    # one batched backward, L vectors (bool sets cast, then scaled: a third of the time of
    # a bool-by-float product at 10⁶ points)
    (g,) = checked_batch(flat, [x], sets.to(flat.dtype).mul_(values))
    mine = words[:, :n] if _identity(cols, points) else words[:, cols.to(flat.device)]
    # read off their own points: a non-zero (or NaN or ±inf) where ``mine`` is False is a
    # coupling, not clean (one comparison of two bool tensors: no masked copy of g)
    if bool((g.detach().reshape(length, -1).ne(0) > mine).any()):
        return None
    return length


def _identity(keys: torch.Tensor, points: int) -> bool:
    """Whether ``keys`` are 0, 1, …, their number - 1 (each entry its own point)."""
    return keys.numel() <= points and int(keys[0]) == 0 and \
        bool((keys.diff() == 1).all()) if keys.numel() else False


def _by_colours(output, x, matrix: torch.Tensor, seed: int) -> int | None:
    """:func:`_by_points` for any CSR structure S: the sets it took where no entry outside
    S is non-zero at this x; None where one is, an answer is not finite, or S's rows need
    over :data:`.setdecode.MAX_COLOURS` colours.

    S's rows are coloured so that two of one colour read no common input entry inside S
    (:func:`.setdecode.colour_sets`: 3 for a tridiagonal S). Within colour c, each row gets a
    word of w ones over L bits (its rank in c), and set (c, b) probes the rows of c whose
    word has a 1 at b. Input entry j has at most one reader inside S in colour c, r(j); the
    set is read at j only where r(j) is not in it (or there is none), so what is read holds
    entries outside S only. For an entry (i, j) outside S, i of colour c, i ≠ r(j): some b
    has i in the set and r(j) not (words of one weight). So every entry outside S that a
    one-hot pass sees non-zero shows, unless the outside entries of one input entry in one
    set cancel exactly (values drawn for this check)."""
    flat = output.reshape(-1)
    m, n = flat.numel(), x.numel()
    r, c = csr_rows(matrix.crow_indices().cpu()), matrix.col_indices().cpu()
    sets = row_colours(r, c, m, n)
    if m == 0 or not len(sets):
        return None
    colour = sets.to(torch.uint8).argmax(0)
    rank = (sets.cumsum(1) - 1).gather(0, colour[None, :])[0]
    length, weight = weight_code(max(int(sets.sum(1).max()), 2))
    words = weight_sets(max(int(sets.sum(1).max()), 2), length, weight)[:, rank]  # L × m
    values = set_probe_values(flat, seed, "couplings-colours")
    per = max(1, chunk_size(flat, [x], CHECK_BUDGET) // length)  # colours a batch
    for first in range(0, len(sets), per):
        chosen = torch.arange(first, min(len(sets), first + per))
        probes = (sets[chosen][:, None, :] & words[None]).reshape(-1, m)
        (g,) = checked_batch(flat, [x], probes.to(device=flat.device, dtype=flat.dtype) * values)
        blocked = torch.zeros(len(chosen), length, n, dtype=torch.bool)
        mine = (colour[r] >= first) & (colour[r] < first + len(chosen))
        rows, cols = r[mine], c[mine]
        for b in range(length):  # r(j) in set (colour, b): not read there
            held = words[b, rows]
            blocked[colour[rows[held]] - first, b, cols[held]] = True
        g = g.detach().reshape(len(chosen) * length, -1)
        if bool(g.masked_fill(blocked.reshape(-1, n).to(g.device), 0).ne(0).any()):
            return None  # a coupling, or NaN or ±inf: not clean
    return len(sets) * length


def _pattern_rows(crow: torch.Tensor, nnz: int) -> torch.Tensor:
    """The row of each entry of a CSR pattern: with one entry per row (a diagonal, any
    elementwise map) the rows themselves, with no expansion."""
    m = crow.numel() - 1
    if nnz == m:
        rows = torch.arange(m + 1, device=crow.device)
        if torch.equal(crow, rows):
            return rows[:m]
    return csr_rows(crow)


def _by_columns(output, x, inside: Inside, cols: torch.Tensor) -> bool | None:
    """Columns ``cols`` of J by forward mode, one pass each; None without double backward."""
    colours = torch.full((x.numel(),), -1, dtype=torch.int64)
    colours[cols] = torch.arange(cols.numel())
    columns = jvps(output, x, colours, 2**62)  # at most MOST_PASSES: a loop, no batch
    if columns is None:
        return None
    rows = torch.arange(output.numel(), device=columns.device)
    for k, j in enumerate(cols.tolist()):
        if _found(columns[k], inside(rows, torch.full_like(rows, j))):
            return True
    return False


def _by_rows(output, x, inside: Inside, rows: torch.Tensor) -> bool:
    """Rows ``rows`` of J by one one-hot backward each."""
    flat = output.reshape(-1)
    cols = torch.arange(x.numel(), device=x.device)
    for i in rows.tolist():
        v = torch.zeros_like(flat)
        v[i] = 1
        row = plain_vjp(flat, [x], v)[0].detach().reshape(-1)
        if _found(row, inside(torch.full_like(cols, i), cols)):
            return True
    return False


def _found(values: torch.Tensor, inside: torch.Tensor) -> bool:
    return bool(((values != 0) & values.isfinite() & ~inside.to(values.device)).any())


def confirmed(context, named: dict, unproved: dict, agreed: set) -> set:
    """Of the inputs whose structure the probes ``agreed`` on (``unproved``: name →
    (derivatives, pairing)), those with no nonzero derivative outside it where the graph
    allows one (:func:`outside_entries`); the others are rejected as a probe's disagreement
    would be. A structure nothing could check gets :func:`unchecked_note` (in
    ``context.sparse.notes``, which the result's notes take)."""
    kept = set()
    for name in agreed:
        derivatives, pairing = unproved[name]
        x = named[name]
        if not pairing:
            kept.add(name)
            continue
        sparse = getattr(context, "sparse", None)  # (its pattern, where made, is the same)
        pattern = (sparse.proved_made(name) if sparse is not None else None) or proved_pattern(
            context.output, x, min(context.budget, PATTERN_BYTES * (
                context.output.numel() + x.numel())))  # a check worth a few passes: no more
        inside = pairing_inside(context.output.shape, x.shape, pairing)
        verdict = outside_entries(context.output, x, inside, pattern,
                                  seed=getattr(getattr(context, "probes", None), "seed", 0))
        if verdict.coupled:
            continue
        kept.add(name)
        if not verdict.checked and getattr(context, "sparse", None) is not None:
            context.sparse.notes.append(unchecked_note(name, derivatives))
    return kept


def unchecked_note(name: str, derivatives: torch.Tensor) -> str:
    """The sentence for a structure the probes accepted that nothing else could check."""
    finite = derivatives[derivatives.isfinite()] if derivatives.numel() else derivatives
    largest = float(finite.abs().max()) if finite.numel() else 0.0
    bound = largest * tolerances(derivatives.dtype).probe
    kind = str(derivatives.dtype).replace("torch.", "")
    return (f"The points of {name} were checked by random probes only (no pattern could be "
            "observed to check the entries off them: a row or column reads over 1/8 of the "
            f"other side, or a probe was NaN or ±inf): a derivative below {kind} "
            f"resolution relative to its row and column (here up to {bound:.1e}) would not "
            "show; full=True (--full) computes every entry.")
