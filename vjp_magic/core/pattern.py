"""The sparsity pattern of the Jacobian of an output with respect to one input, as CSR index
arrays: proved from the autograd graph where the index-map rules reach (:mod:`.indexmaps`),
else observed at this x with grouped probes (group testing over output entries):
:func:`find_pattern` says which (:attr:`Pattern.evidence`).

An *observed* pattern is not proved: a derivative that happens to be 0 here (x³ at 0), or a
coupling a probe cannot see, is missing from it. The compressed passes that use either
(:mod:`.compressed`) check their result with an independent random probe and give up where it
disagrees.

Output entries (flat, row-major) are split into k groups by index mod k, k = 1, 2, 3, 5, …;
each entry i of a group gets a word of w ones over L bits (its rank i // k in colex order,
:func:`.setdecode.weight_sets`; L the fewest with C(L, L // 2) ≥ m/k: 13 sets for 1,000
entries, 23 for 10⁶, where both sides of every bit took 20 and 40), and set b probes the
entries whose word has a 1 at b. An input entry read by one entry of a group answers
non-zero on exactly w sets, which spell that entry's index; two readers have distinct words
of one weight, neither inside the other, so their sets together are more than w: that input
entry waits for the next k (the others are known). Answers are read as zero or non-zero
only, never compared in value: a derivative of 1 beside 10¹² in its row and column is found
as a one-hot backward pass would find it. Only exact cancellations can mislead it: two
readers whose words differ in d places pass for one where d of the sets holding both
cancel exactly (with both sides of every bit, at twice the sets, two readers could not
pass for one); the values are drawn afresh per purpose (±(1..2), 2⁻²⁴ apart), and
:mod:`.couplings` checks an observed structure again with values of its own.
A NaN or ±inf answer says nothing: the pattern is refused (None).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
import torch

from .checked_batches import CheckedBatches as PaidBatches
from .derivatives import chunk_size
from .pairing import Evidence
from .probes import probe_generator, set_probe_values
from .setdecode import weighed, weight_code, weight_sets

# Refused when a row reads more than this fraction of the input: colouring would not pay.
DENSE_FRACTION = 1 / 8
MIN_PROBES = 512
MIN_ROW = 8  # ... or more than this many entries, on a small input


class Pattern(NamedTuple):
    """CSR index arrays (int64) of an (m × n) pattern, rows sorted, columns sorted per row."""

    crow: torch.Tensor
    col: torch.Tensor
    shape: tuple[int, int]
    probes: int  # backward passes spent finding it
    evidence: Evidence = Evidence.OBSERVED  # PROVED: from the graph, for every x
    lattice: Lattice | None = None  # proved shift-only patterns: their conflicts, exactly
    diagonals: Diagonals | None = None  # proved patterns whose row r reads r + fixed offsets
    # PROVED given the index / mask / condition tensors these ops saved (their values, which
    # may come from x: ``x.argsort()``, ``x > 0``): it holds for every x giving the same ones
    conditional_on: tuple[str, ...] = ()

    @property
    def nnz(self) -> int:
        return int(self.col.numel())


class Diagonals(NamedTuple):
    """A pattern held as a few diagonals (proved from offset terms): row r reads columns
    r + ``keys[k]`` (int64, ascending), except at the flat positions r·K + k listed in
    ``missing`` (int64, ascending; K = len(keys)). The CSR arrays are the (m × K) array of
    those columns, row-major, with the missing positions deleted, so values held per
    diagonal (m × K) become the CSR values the same way (:func:`deleted`). ``most``: the
    most nonzeros in a row."""

    keys: np.ndarray
    missing: np.ndarray
    most: int

    def rows(self, k: int, m: int, n: int) -> tuple[int, int]:
        """The rows r whose column r + keys[k] lies inside the n columns (a range)."""
        key = int(self.keys[k])
        return max(0, -key), max(max(0, -key), min(m, n - key))

    def deleted(self, full):
        """``full`` (m·K entries, a flat numpy array or torch tensor in the diagonal order)
        without the missing positions: a view where they lie at its two ends only."""
        return deleted(full, self.missing)


def deleted(full, missing: np.ndarray):
    """The flat array ``full`` without the entries at the ascending positions ``missing``: a
    slice where they are a prefix and a suffix only, else a boolean mask."""
    size = len(full)
    if len(missing) == 0:
        return full
    head = _prefix(missing)
    tail = _prefix(size - 1 - missing[::-1])
    if head + tail >= len(missing):
        return full[head:size - tail]
    keep = np.ones(size, dtype=bool)
    keep[missing] = False
    if isinstance(full, np.ndarray):
        return full[keep]
    if full.device.type == "cpu" and full.dtype in NUMPY_DTYPES:
        return torch.from_numpy(full.numpy()[keep])
    return full[torch.from_numpy(keep).to(full.device)]


#: torch dtypes whose tensors ``.numpy()`` takes (bfloat16 and the 8-bit floats it does not)
NUMPY_DTYPES = frozenset({torch.float64, torch.float32, torch.float16, torch.complex64,
                          torch.complex128, torch.int64, torch.int32, torch.int16, torch.int8,
                          torch.uint8, torch.bool})


def expanded(kept: torch.Tensor, missing: np.ndarray, size: int) -> torch.Tensor:
    """The inverse of :func:`deleted`: ``size`` entries, ``kept`` in order at the positions
    not in ``missing``, 0 at those."""
    full = kept.new_zeros(size)
    head, tail = _prefix(missing), _prefix(size - 1 - missing[::-1])
    if head + tail >= len(missing):
        full[head:size - tail] = kept
        return full
    keep = np.ones(size, dtype=bool)
    keep[missing] = False
    full[torch.from_numpy(keep).to(full.device)] = kept
    return full


def _prefix(ascending: np.ndarray) -> int:
    """How many of the ascending positions are 0, 1, 2, …, from the first."""
    if len(ascending) == 0 or ascending[0] != 0:
        return 0
    runs = np.flatnonzero(ascending != np.arange(len(ascending)))
    return int(runs[0]) if len(runs) else len(ascending)


class Lattice(NamedTuple):
    """What a pattern proved from offset terms (row multi-index ``o`` in ``grid`` reads the
    input entry ``o + d`` for each term whose box holds ``o``) says about its conflicts:
    two rows ``o1 ≠ o2`` read one input entry only if ``o1 - o2`` is one of ``deltas``
    (k × ndim, int64; every such difference is there, some perhaps never realised), and
    some input entry is read by ``bound`` rows (a lower bound on any row colouring)."""

    grid: tuple[int, ...]
    deltas: np.ndarray
    bound: int


def lattice_of(grid, shape, terms) -> Lattice | None:
    """The :class:`Lattice` of offset terms ``(d, lo, hi)`` from rows in ``grid`` to a tensor
    of ``shape`` (the same number of axes: entry ``o + d``, flat in ``shape``'s row-major
    order), or None where they are too many to list their differences. Rows ``o1 ∈ box_a``
    and ``o2 ∈ box_b`` read one entry when ``o1 + d_a = o2 + d_b``: the difference
    ``d_b - d_a`` is kept where the boxes' Minkowski difference holds it."""
    return _lattice_of(tuple(int(s) for s in grid), tuple(int(s) for s in shape),
                       tuple((tuple(t[0]), tuple(t[1]), tuple(t[2])) for t in terms))


@functools.lru_cache(maxsize=64)  # a stencil's, call after call (its arrays: not to be changed)
def _lattice_of(grid, shape, terms) -> Lattice | None:
    if not terms or len(terms) > MAX_LATTICE_TERMS or len(grid) != len(shape):
        none = np.zeros((0, len(grid)), np.int64)
        none.flags.writeable = False
        return None if terms else Lattice(tuple(grid), none, 0)
    d = np.array([t[0] for t in terms], dtype=np.int64).reshape(len(terms), len(grid))
    lo = np.array([t[1] for t in terms], dtype=np.int64).reshape(d.shape)
    hi = np.array([t[2] for t in terms], dtype=np.int64).reshape(d.shape) - 1  # inclusive
    size = np.array(shape, dtype=np.int64).reshape(1, -1)
    if bool(((lo + d < 0) | (hi + d >= size)).any()):  # o + d outside the tensor: flat
        return None  # indices could then meet without the multi-indices meeting: claim nothing
    delta = d[None, :, :] - d[:, None, :]  # [a, b] = d_b - d_a = o1 - o2
    fits = ((lo[:, None] - hi[None, :] <= delta) & (delta <= hi[:, None] - lo[None, :])).all(2)
    distinct = sorted(set(map(tuple, delta[fits & (delta != 0).any(2)].tolist())))
    deltas = np.array(distinct, dtype=np.int64).reshape(len(distinct), len(grid))  # 0-d too
    deltas.flags.writeable = False  # kept for later calls (the cache above)
    return Lattice(tuple(int(s) for s in grid), deltas, _bound(d, lo, hi, shape))


MAX_LATTICE_TERMS = 256


def _bound(d, lo, hi, shape) -> int:
    """The most rows reading one of a few input entries (the centre, quarter points): the
    distinct offsets ``d`` with ``c - d`` inside one of their boxes, for entry ``c``."""
    picks = np.array([[s // 2 for s in shape], [s // 4 for s in shape],
                      [s - 1 - s // 4 for s in shape]], dtype=np.int64).reshape(3, len(shape))
    best = 0
    for c in picks:
        row = c[None, :] - d
        inside = ((lo <= row) & (row <= hi)).all(1)
        best = max(best, len(set(map(tuple, d[inside].tolist()))))
    return best


def find_pattern(output: torch.Tensor, x: torch.Tensor, budget: int,
                 seed: int) -> Pattern | None:
    """The pattern of d output / d x: proved from the graph (``evidence`` PROVED, no backward
    pass) where the rules cover it, else :func:`observed_pattern` at this x (OBSERVED); None
    where neither gives one that pays."""
    from .indexmaps import proved_pattern  # the rules build Patterns: imported when needed

    proved = proved_pattern(output, x, budget)
    return proved if proved is not None else observed_pattern(output, x, budget, seed)


def observed_pattern(output: torch.Tensor, x: torch.Tensor, budget: int, seed: int,
                     max_probes: int | None = None,
                     purpose: str = "sparse-pattern",
                     skip: torch.Tensor | None = None) -> Pattern | None:
    """The pattern of d output / d x at this x (flat, row-major), or None: too dense (a row
    reads more than ``DENSE_FRACTION`` of x, and more than ``MIN_ROW`` entries), a
    non-finite probe, or more than ``max_probes`` backward passes (default: m, what one
    pass per row would take, or ``MIN_PROBES`` on a small output). Every entry whose
    derivative a one-hot backward pass would find non-zero is in it (answers are read as
    zero or non-zero only, :func:`.setdecode.weighed`), however small beside the others of
    its row and column; only an exact cancellation among one probe's readers could hide one.
    ``purpose``: names the draw of the probe values (a check observes with values of its own).
    ``skip``: (n,) bool, columns not read (a symmetric Hessian's dense columns, whose entries
    its dense rows give: :func:`.sparse_hessian.dense_rows`)."""
    flat = output.reshape(-1)
    m, n = flat.numel(), x.numel()
    if m == 0 or n == 0:  # no row or no column (every column dense, read otherwise)
        return Pattern(torch.zeros(m + 1, dtype=torch.int64), torch.zeros(0, dtype=torch.int64),
                       (m, n), 0)
    limit = max_probes if max_probes is not None else max(m, MIN_PROBES)
    found = torch.zeros(n, dtype=torch.bool) if skip is None else skip.clone()  # readers known
    passes = PaidBatches()  # vectorised while that pays on this graph
    first, spent = _first_groups(flat, x, seed, purpose, passes) if m >= 8 else (1, 0)
    rows, cols = [], []
    for groups in _group_counts(first):
        code = weight_code(-(-m // groups))
        if spent + groups * code[0] > limit or groups > 2 * most_per_row(n):
            if groups == first > 1:
                continue  # a guess that does not pay: the sequence from 1
            return None
        answers = _answers(flat, x, groups, code, (budget, seed, purpose), passes)
        spent += groups * code[0]
        if answers is None:
            return None
        group, col, within, collided = answers
        new = ~collided & ~found
        keep = new[col]
        rows.append(within[keep] * groups + group[keep])
        cols.append(col[keep])
        found |= new
        if bool(found.all()):
            break
    rows, cols = torch.cat(rows), torch.cat(cols)
    if rows.numel() > most_per_row(n) * max(m, 1):
        return None
    return csr_pattern(rows, cols, (m, n), spent)


def _group_counts(first: int = 1):
    """``first``, then k = 1, 2, 3, 5, 8, 13, … (but ``first``): consecutive ones coprime, so
    two readers i, i' of a column, in one group under k when k divides i - i', are parted by
    the next (powers of 2 left a difference of 32 together up to k = 64)."""
    if first > 1:
        yield first
    a, b = 1, 2
    while True:
        if a != first or first == 1:
            yield a
        a, b = b, a + b


MAX_FIRST = 64  # the most groups guessed from the sampled rows


def _first_groups(flat, x, seed: int, purpose: str,
                  passes: PaidBatches | None = None) -> tuple[int, int]:
    """(k, passes): the groups to try first, guessed from a few rows read exactly (one-hot
    passes in one batch, at a quarter, half, three quarters and one drawn row): the fewest k
    under which their offsets j − i are distinct modulo k, so a pattern that repeats them
    (a stencil, a band) has one reader per group at each input entry and is found in one
    round (the 5-point stencil on a 100-wide grid: k = 6, not 1 + 2 + 3 + 5 + 8 + 13 groups).
    Only which groups come first is guessed: what each round decodes is read as before.
    k = 1 where the offsets repeat under every k up to :data:`MAX_FIRST`."""
    m = flat.numel()
    drawn = torch.randint(0, m, (1,), generator=probe_generator(seed, purpose + "-rows"))
    picked = torch.unique(torch.cat([torch.tensor([m // 4, m // 2, 3 * m // 4]), drawn]))
    one_hot = torch.zeros(len(picked), m, dtype=flat.dtype, device=flat.device)
    one_hot[torch.arange(len(picked)), picked.to(flat.device)] = 1
    (g,) = (passes or PaidBatches())(flat, [x], one_hot)
    row, col = g.detach().reshape(len(picked), -1).ne(0).cpu().nonzero(as_tuple=True)
    offsets = torch.unique(col - picked[row])
    if offsets.numel() > MAX_FIRST:
        return 1, len(picked)
    apart = (offsets[:, None] - offsets[None, :]).abs().flatten()
    apart = apart[apart > 0]
    for k in range(max(1, offsets.numel()), MAX_FIRST + 1):
        if not bool((apart % k == 0).any()):
            return k, len(picked)
    return 1, len(picked)


def most_per_row(n: int) -> float:
    """The most entries of an input of ``n`` entries a row may read for colouring to pay."""
    return max(MIN_ROW, n * DENSE_FRACTION)


def _group_probes(values, first: int, stop: int, groups: int, code) -> torch.Tensor:
    """((stop - first) · L × m) probes: for each group g of ``first:stop`` (the entries whose
    index mod ``groups`` is g), ``values`` on the entries whose word (of ``code`` = (L, w),
    :func:`.setdecode.weight_sets`, by i // groups) has a 1 at each bit; 0 elsewhere."""
    m = values.numel()
    width = -(-m // groups)
    padded = values.new_zeros(width * groups)
    padded[:m] = values.reshape(-1)
    mine = padded.reshape(width, groups)[:, first:stop].t()  # groups × width
    spell = weight_sets(width, *code).to(device=values.device, dtype=values.dtype)
    length = code[0]
    probes = values.new_zeros(stop - first, length, width, groups)
    k = torch.arange(stop - first, device=values.device)
    probes[k, :, :, first + k] = spell[None] * mine[:, None, :]
    return probes.reshape(stop - first, length, -1)[..., :m].reshape(-1, m)


def _answers(flat, x, groups: int, code, run: tuple, passes: PaidBatches):
    """(group, col, within, collided): for each (group, input entry) the group reaches, its
    index and that of the one entry of the group reading it (i // groups; meaningful where
    the column did not collide), and (n,) bool: the input entries some group's entries read
    several of (:func:`.setdecode.weighed`). None if any answer is not finite. ``run``:
    (budget, seed, purpose); ``passes``: the batched backward, vectorised while it pays."""
    budget, seed, purpose = run
    values = set_probe_values(flat, seed, purpose, groups)
    length, weight = code
    per = max(1, chunk_size(flat, [x], budget) // length)  # groups a batch
    parts, collided = [], torch.zeros(x.numel(), dtype=torch.bool)
    for first in range(0, groups, per):
        stop = min(groups, first + per)
        (g,) = passes(flat, [x], _group_probes(values, first, stop, groups, code))
        g = g.detach().reshape(stop - first, length, -1)
        if not bool(torch.isfinite(g.sum())) and not bool(torch.isfinite(g).all()):
            return None
        single, row, empty = weighed(g.ne(0).cpu(), weight)
        single &= row * groups + torch.arange(first, stop)[:, None] < flat.numel()
        collided |= (~single & ~empty).any(0)
        group, col = (~empty).nonzero(as_tuple=True)
        parts.append((group + first, col, row[group, col]))
    group, col, within = (torch.cat(p) for p in zip(*parts))
    return group, col, within, collided


def csr_pattern(rows: torch.Tensor, cols: torch.Tensor, shape: tuple[int, int], probes: int,
                evidence: Evidence = Evidence.OBSERVED) -> Pattern:
    """The :class:`Pattern` of the entries (``rows[k]``, ``cols[k]``), in any order, repeats
    allowed: rows ascending, each row's columns ascending and distinct (torch's CSR
    invariants; a row found in several groups of probes comes in pieces). One stable sort of
    row·n + column: nearly sorted input (each group's rows in order) sorts in linear time."""
    m, n = shape
    keys = rows.to(torch.int64).numpy() * max(n, 1) + cols.to(torch.int64).numpy()
    keys = keys[np.argsort(keys, kind="stable")]
    if keys.size > 1:
        keys = keys[np.concatenate(([True], keys[1:] != keys[:-1]))]
    rows, cols = (torch.from_numpy(part) for part in np.divmod(keys, max(n, 1)))
    crow = torch.zeros(m + 1, dtype=torch.int64)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=m), 0)
    return Pattern(crow, cols, (m, n), probes, evidence)
