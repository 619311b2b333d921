"""Colourings of a sparsity pattern, so that one pass per colour gives every nonzero
(Curtis, Powell and Reid 1974; Gebremedhin, Manne and Pothen, "What color is your
Jacobian?", SIAM Review 2005).

- :func:`colour_rows`: output entries of one colour read disjoint inputs (one backward pass
  with v = 1 on a colour's rows returns all of their rows of the Jacobian).
- :func:`colour_columns`: inputs of one colour are read by disjoint outputs (one forward-mode
  pass per colour), the row colouring of the transpose.
- :func:`colour_symmetric` and :func:`recover_symmetric`: a symmetric Hessian from one
  Hessian-vector product per colour, read off directly (each H[i, j] from the column of j's
  colour in row i, or of i's colour in row j).

How rows are coloured, in order:

0. A pattern proved from offset terms (:class:`.pattern.Lattice`) lists every difference of
   two rows that share a column: (a·o) mod p with p its lower bound and a·δ ≢ 0 (mod p) for
   each listed δ is valid by that alone and optimal (:func:`proved_lattice`), with no pass
   over the pattern. Otherwise:
1. A lattice (stencils, shift-invariant patterns): colour (Σ_j a_j·idx_j) mod p over the
   output's multi-index (without ``shape``: a grid guessed from a square pattern's offsets,
   i ± k giving k columns, then the flat index), p from the lower bound (the
   most rows reading one column) upward, small coefficients a. Candidates are screened on the
   row differences that conflict near a few interior rows, then the chosen one is verified on
   the whole pattern with one ``bincount`` over (column, colour): O(nnz), no loop per row.
   It is optimal on stencils: i mod 3 on a tridiagonal pattern, (a + 2b) mod 5 on the 2-D
   5-point stencil (any k × k grid), (a + 2b + 3c) mod 7 on the 3-D 7-point one.
1b. Rows that wrap around (x.roll: a circulant band, a torus stencil), where no lattice
   with the lower bound's p holds across the seam (:func:`wrapped_colourings`): a proved
   lattice's smallest p past its bound (its differences across the seam included), a
   circulant band cut into blocks of q and q + 1 rows (optimal: 6 on the cyclic 5-point
   band at 502), the bulk's lattice with the seam's rows coloured again greedily; each
   checked on the pattern, and kept only where it beats greedy (or meets a lower bound).
2. Otherwise greedy: natural order (a Python loop over rows with one colour bitmask per
   column, no conflict graph: ~0.4 µs a nonzero; it cannot be vectorised without changing
   the result, and the vectorised schemes tried — Jones–Plassmann, Culberson's iterated
   greedy — gave more colours), plus greedy in a smallest-last order found in rounds in
   numpy (:func:`peeling_order`, any size), and largest-first, smallest-last and DSATUR on
   a conflict graph small enough to walk in Python; the fewest colours wins, so never more
   than natural greedy, and the search stops at the lower bound.

No library: networkx is not a dependency and colours a graph it must first be given edge by
edge in Python; SciPy has no colouring; the Julia/JAX ones (SparseMatrixColorings, asdex)
are not Python packages. numpy does the vectorised parts.
"""
from __future__ import annotations

import functools
import heapq
import itertools
import math

import numpy as np
import torch

# At most this many row pairs sharing a column (the conflict graph before deduplication).
MAX_PAIRS = 50_000_000
# The conflict graph is built for smallest-last and DSATUR up to this many row pairs.
SMALL_PAIRS = 100_000
# Lattice colourings tried: moduli p up to lower bound + this, coefficient vectors per p.
LATTICE_SPAN = 8
LATTICE_CANDIDATES = 4096
LATTICE_VERIFIED = 4  # full verifications at most
SAMPLE_ROWS = 8  # rows whose conflicts screen the lattice candidates


def colour_count(colours: np.ndarray) -> int:
    return int(colours.max()) + 1 if len(colours) else 0


def _rows_of(crow: np.ndarray) -> np.ndarray:
    return np.repeat(np.arange(len(crow) - 1, dtype=np.int64), np.diff(crow))


def valid_rows(crow, col, n: int, colours: np.ndarray) -> bool:
    """Whether no two rows of one colour read one column (O(nnz), vectorised)."""
    crow, col = np.asarray(crow, np.int64), np.asarray(col, np.int64)
    if len(col) == 0:
        return True
    k = colour_count(colours)
    keys = col * k
    keys += np.repeat(colours, np.diff(crow))
    if n * k <= 4 * len(col) + 1_000_000:
        return int(np.bincount(keys, minlength=1).max()) <= 1
    keys.sort()
    return not bool((keys[1:] == keys[:-1]).any())


def colour_rows(crow, col, n: int, max_pairs: int = MAX_PAIRS, *,
                shape=None, lattice=None) -> np.ndarray | None:
    """int64 colours 0..k-1 for the m rows of the CSR pattern (``crow``, ``col``, n columns):
    rows sharing a column differ. None when the conflict graph would hold more than
    ``max_pairs`` row pairs (a dense column: colouring would not pay).

    ``shape=(out_shape, in_shape)``: the output's shape, whose multi-index the lattice
    colouring uses (the flat index otherwise). ``lattice``: the pattern's proved conflicts
    (:class:`.pattern.Lattice`), which may give an optimal lattice colouring without
    reading the pattern (:func:`proved_lattice`). See the module docstring for the method.
    """
    if lattice is not None:
        proved = proved_lattice(lattice)
        if proved is not None:
            return flat_numbered(proved)
    crow, col = np.asarray(crow, np.int64), np.asarray(col, np.int64)
    m = len(crow) - 1
    counts = np.bincount(col, minlength=n).astype(np.int64)
    if int((counts ** 2).sum()) > max_pairs:
        return None
    bound = int(counts.max()) if len(col) else 0
    if bound <= 1:  # no two rows share a column: one colour
        return np.zeros(m, dtype=np.int64)
    shapes = _out_shape(shape, m, *((crow, col) if n == m else ()))
    found = _lattice(crow, col, n, bound, shapes)
    if found is not None and colour_count(found) <= bound:
        return flat_numbered(found)  # the lower bound: optimal
    wrapped, floor = wrapped_colourings(crow, col, n, lattice, bound, shapes)
    modular = np.arange(len(crow) - 1, dtype=np.int64) % max(floor, 1)  # r mod p: a formula
    optimal = [flat_numbered(colours) for colours in [modular, *wrapped]
               if colour_count(colours) <= floor and valid_rows(crow, col, n, colours)]
    if optimal:  # a lower bound met; r mod p first, where one is (code writes it as such)
        return min(optimal, key=lambda colours: not _modular(colours))
    best = greedy = greedy_rows(crow, col, n, counts)
    for colours in [found] + wrapped:  # each checked on the whole pattern
        if colours is not None and colour_count(colours) < colour_count(best) \
                and valid_rows(crow, col, n, colours):
            best = colours
    return best if best is greedy else flat_numbered(best)


def _modular(colours: np.ndarray) -> bool:
    """Whether ``colours`` are r mod p of the flat row index r (p their count)."""
    return bool(np.array_equal(colours, np.arange(len(colours)) % max(colour_count(colours), 1)))


def flat_numbered(colours: np.ndarray, count: int | None = None) -> np.ndarray:
    """``colours`` renumbered r mod ``count`` (r the flat row index) where their classes are
    those of r mod count but numbered otherwise (a lattice's (a·o) mod p on a grid whose
    strides make it (a_last·r) mod p): the same classes, colour c now the display's
    "entries c, c + p, …" and r.gradients[name][c]; else as they are."""
    count = colour_count(colours) if count is None else count
    m = len(colours)
    if count < 2 or m < count:
        return colours
    head = colours[:count]
    if len(np.unique(head)) != count or int(head.max()) != count - 1 \
            or np.array_equal(head, np.arange(count)):
        return colours
    whole = m - m % count
    if not (np.array_equal(colours[:whole].reshape(-1, count), np.broadcast_to(
            head, (whole // count, count))) and np.array_equal(colours[whole:],
                                                              head[:m - whole])):
        return colours
    number = np.empty(count, dtype=np.int64)
    number[head] = np.arange(count)
    return number[colours]


def _out_shape(shape, m: int, crow=None, col=None) -> tuple[tuple[int, ...], ...]:
    """The multi-index shapes to try: the output's (when given and it has m entries), else
    a grid guessed from a square pattern's offsets (a 5-point stencil on a k × k grid reads
    i ± k: try (m / k, k)), then the flat one."""
    shapes = []
    if shape is not None:
        out = tuple(int(s) for s in shape[0])
        if int(np.prod(out, dtype=np.int64)) == m and len(out) > 1:
            shapes.append(tuple(s for s in out if s != 1) or (m,))
    if not shapes and crow is not None and m > 1:  # a flat output may hide a grid (reshape)
        shapes.extend(_guessed_grids(crow, col, m))
    shapes.append((m,))
    return tuple(dict.fromkeys(shapes))


def _guessed_grids(crow, col, m: int) -> list[tuple[int, ...]]:
    """Grids whose row lengths are the middle row's offsets (|column - row| > 1)."""
    middle = m // 2
    offsets = np.unique(np.abs(col[crow[middle]:crow[middle + 1]] - middle))
    widths = [int(w) for w in offsets if 1 < w < m and m % w == 0]
    grids = []
    if widths:
        grids.append((m // widths[-1], widths[-1]))
    if len(widths) >= 2 and widths[-1] % widths[0] == 0:
        grids.append((m // widths[-1], widths[-1] // widths[0], widths[0]))
    return grids[::-1]


# -- 1. lattice colourings ---------------------------------------------------------------------
def _lattice(crow, col, n: int, bound: int, shapes) -> np.ndarray | None:
    """The first verified lattice colouring (smallest p first, then each shape), or None."""
    tried = 0
    deltas: dict = {}  # the conflict offsets of each shape, found when first needed
    for p in range(bound, bound + LATTICE_SPAN + 1):
        for out in (s for s in shapes if len(s) <= 4):
            if out not in deltas:
                deltas[out] = _conflict_deltas(crow, col, out)
            for coeffs in _screened(deltas[out], p, len(out)):
                colours = _lattice_colours(out, coeffs, p)
                tried += 1
                if valid_rows(crow, col, n, colours):
                    return colours
                if tried >= LATTICE_VERIFIED:
                    return None
    return None


def _conflict_deltas(crow, col, out: tuple[int, ...]) -> np.ndarray:
    """Multi-index differences r' - r of the rows r' that share a column with a few interior
    rows r (the centre of the output, and points around it): (count × ndim)."""
    centre = np.array([s // 2 for s in out])
    rng = np.random.default_rng(0)
    picks = [centre] + [np.array([rng.integers(s // 4, s - s // 4) if s >= 4 else s // 2
                                  for s in out]) for _ in range(SAMPLE_ROWS - 1)]
    samples = np.unique(np.ravel_multi_index(np.array(picks).T, out))
    cols = np.concatenate([col[crow[r]:crow[r + 1]] for r in samples])
    touching = np.flatnonzero(np.isin(col, cols, kind="table"))
    other = np.searchsorted(crow, touching, side="right") - 1
    shared = col[touching]
    deltas = []
    for r in samples:
        mine = np.isin(shared, col[crow[r]:crow[r + 1]])
        near = np.unique(other[mine])
        deltas.append(np.stack(np.unravel_index(near, out), 1) -
                      np.array(np.unravel_index(r, out))[None])
    found = np.unique(np.concatenate(deltas), axis=0)
    return found[(found != 0).any(1)]


def _screened(deltas: np.ndarray, p: int, ndim: int):
    """Coefficient vectors a (the last ones small first) with a·δ ≠ 0 mod p for every δ
    (remembered for the last few differences asked: a stencil's, call after call)."""
    deltas = np.asarray(deltas, dtype=np.int64).reshape(-1, ndim)
    return _screened_for(deltas.tobytes(), len(deltas), p, ndim)


@functools.lru_cache(maxsize=64)
def _screened_for(key: bytes, count: int, p: int, ndim: int) -> tuple:
    deltas = np.frombuffer(key, dtype=np.int64).reshape(count, ndim)
    return tuple(_screen(deltas, p, ndim))


def _screen(deltas: np.ndarray, p: int, ndim: int):
    ranges = [range(p)] * (ndim - 1) + [range(1, p)]
    candidates = np.array(list(itertools.islice(itertools.product(*ranges),
                                                LATTICE_CANDIDATES)), dtype=np.int64)
    if len(candidates) == 0:
        return []
    candidates = candidates[np.argsort(np.abs(candidates).sum(1), kind="stable")]
    if len(deltas):
        ok = ((candidates @ deltas.T) % p != 0).all(1)
        candidates = candidates[ok]
    return [tuple(c) for c in candidates[:LATTICE_VERIFIED]]


def proved_lattice(lattice) -> np.ndarray | None:
    """The lattice colouring (a·o) mod p of the rows' multi-indices o in ``lattice.grid``
    with p = ``lattice.bound`` colours, where some coefficients a give a·δ ≢ 0 (mod p) for
    every conflict difference δ in ``lattice.deltas``: rows o1 ≠ o2 sharing a column differ
    by such a δ, so their colours differ; valid by that argument alone (nothing verified on
    the pattern), and optimal (``bound`` rows read one column). None where no a passes."""
    found = periodic_lattice(lattice)
    return None if found is None else found[0]


def periodic_lattice(lattice) -> tuple[np.ndarray, int] | None:
    """:func:`proved_lattice`'s colours and their period along the flat row index (the
    colour of row r is that of row r mod the period), 0 where they are not periodic so:
    (a·o) mod p is (a_last·r) mod p, period p, where a_k ≡ a_last·stride_k (mod p) on every
    axis k longer than 1 (r = Σ stride_k·o_k), then numbered r mod p
    (:func:`flat_numbered`); one colour has period 1."""
    grid, deltas, p = lattice.grid, lattice.deltas, lattice.bound
    if len(deltas) == 0:  # no two rows share a column
        return np.zeros(int(np.prod(grid, dtype=np.int64)), dtype=np.int64), 1
    if p < 2 or len(grid) > 4 or len(deltas) > MAX_DELTAS:
        return None
    for coeffs in _screened(deltas, p, len(grid)):
        strides = [math.prod(grid[k + 1:]) for k in range(len(grid))]
        flat = all(size == 1 or (a - coeffs[-1] * stride) % p == 0
                   for a, size, stride in zip(coeffs, grid, strides))
        colours = _lattice_colours(grid, coeffs, p)
        return (flat_numbered(colours, p), p) if flat else (colours, 0)
    return None


def row_colouring(crow, col, n: int, *, shape=None, lattice=None) -> tuple[np.ndarray | None,
                                                                           int]:
    """:func:`colour_rows`'s colours (``crow``, ``col``: numpy arrays, read only where the
    lattice does not decide) and their period along the flat row index where it is known
    by construction (:func:`periodic_lattice`), else 0."""
    if lattice is not None:
        found = periodic_lattice(lattice)
        if found is not None:
            return found
    return colour_rows(crow, col, n, shape=shape, lattice=lattice), 0


MAX_DELTAS = 20_000  # conflict differences screened at once (candidates × deltas products)


def _lattice_colours(out: tuple[int, ...], coeffs, p: int) -> np.ndarray:
    """(Σ a_k·o_k) mod p over the row-major multi-indices of ``out``, colours no index
    reaches dropped; axis by axis, as row copies of a (p × size) table (no O(m) modulo)."""
    colours, used = None, {0}  # colours of the axes so far (flat); the values they take
    for size, a in zip(out, coeffs):
        step = _periodic((np.arange(p, dtype=np.int64) * a) % p, size)
        if colours is None:
            colours = step
        elif colours.size >= p:
            table = (np.arange(p, dtype=np.int64)[:, None] + step[None, :]) % p
            colours = table[colours].reshape(-1)
        else:
            colours = ((colours[:, None] + step[None, :]) % p).reshape(-1)
        used = {(u + v) % p for u in used for v in step[:p].tolist()}
    if colours is None:  # no axes: one row
        colours = np.zeros(1, dtype=np.int64)
    if len(used) == p:
        return colours
    keep = np.zeros(p, dtype=bool)
    keep[sorted(used)] = True
    return (np.cumsum(keep) - 1)[colours]  # unused colours dropped


def _periodic(period: np.ndarray, size: int) -> np.ndarray:
    """``period`` repeated to ``size`` entries, by doubling copies (np.tile copies a row of
    p entries at a time: 3 to 5 times slower at 10⁵); the large copies by torch into
    numpy's memory (split over torch's threads)."""
    out = np.empty(size, dtype=period.dtype)
    filled, shared = min(len(period), size), torch.from_numpy(out)
    out[:filled] = period[:filled]
    while 0 < filled < size:
        step = min(filled, size - filled)
        if step < PARALLEL_COPY:
            out[filled:filled + step] = out[:step]
        else:
            shared[filled:filled + step].copy_(shared[:step])
        filled += step
    return out


PARALLEL_COPY = 1 << 16  # copies this large go to torch (its grain: 32,768 entries a thread)


# -- 1b. wrap-around patterns (x.roll: a circulant band, a torus stencil) ---------------------
def wrapped_colourings(crow, col, n: int, lattice, bound: int,
                       shapes) -> tuple[list[np.ndarray], int]:
    """Candidate colourings where rows wrap around, so that no lattice colouring with
    ``bound`` colours holds across the seam (i mod 5 on a cycle of 502), and a lower bound
    on any colouring (``bound``, or more where the candidates say why). Candidates, each to
    be checked on the pattern (:func:`valid_rows`) by the caller:

    - a proved :class:`.pattern.Lattice` (its ``deltas`` list the differences across the
      seam too): (a·o) mod p for the smallest p > bound whose a passes them all, valid by
      that argument ((i + 2j) mod 8 on a 16 × 16 torus);
    - the lattice colouring of the bulk (screened on the differences that do not wrap)
      with the rows conflicting across the seam coloured again greedily (:func:`repaired`);
    - a 1-D circulant pattern (:func:`cycle_blocks`): blocks of q and q + 1 rows coloured
      by their position in the block, optimal where the conflicts are every distance up to K.

    Of those meeting the bound, the caller takes r mod p where one is (blocks of 4 on a cycle
    of 200), else the first in this order: i mod 3 with one entry at the seam of a cycle of
    1,000 reads "entries 0, 3, 6, …", where its blocks would read "0, 4, 7, …".
    """
    found, floor = [], bound
    if lattice is not None:
        beyond = _beyond_bound(lattice)
        if beyond is not None:
            found.append(beyond)
    grid = lattice.grid if lattice is not None else shapes[0]
    local = _local_deltas(crow, col, grid, lattice)
    for coeffs in _screened(local, bound, len(grid))[:1]:
        mixed = repaired(crow, col, n, _lattice_colours(grid, coeffs, bound))
        found.extend([] if mixed is None else [mixed])
    blocks = cycle_blocks(crow, col, n)  # last: where it ties, a lattice reads better
    if blocks is not None:
        found.append(blocks[0])
        floor = max(floor, blocks[1])
    return found, floor


def _beyond_bound(lattice) -> np.ndarray | None:
    """(a·o) mod p with the fewest colours p > ``lattice.bound`` for which some a gives
    a·δ ≢ 0 (mod p) on every listed difference δ (valid by that alone, not optimal)."""
    grid, deltas = lattice.grid, lattice.deltas
    if len(grid) > 4 or len(deltas) > MAX_DELTAS or len(deltas) == 0:
        return None
    for p in range(max(lattice.bound, 1) + 1, lattice.bound + LATTICE_SPAN + 1):
        for coeffs in _screened(deltas, p, len(grid))[:1]:
            return _lattice_colours(grid, coeffs, p)
    return None


def _local_deltas(crow, col, grid, lattice) -> np.ndarray:
    """The conflict differences that do not wrap: a proved lattice's with |δ_k| at most a
    third of each axis, else those seen near a few interior rows."""
    if lattice is None:
        return _conflict_deltas(crow, col, tuple(grid))
    size = np.array(grid, dtype=np.int64).reshape(1, -1)
    deltas = np.asarray(lattice.deltas, dtype=np.int64).reshape(-1, len(grid))
    return deltas[(3 * np.abs(deltas) <= size).all(1)]


def circulant_offsets(crow, col, n: int) -> np.ndarray | None:
    """The offsets (column - row) mod n that every row of a square pattern reads (sorted),
    where every row reads the same ones: a circulant pattern (a band that wraps around);
    else None. O(nnz)."""
    crow, col = np.asarray(crow, np.int64), np.asarray(col, np.int64)
    m = len(crow) - 1
    width = int(crow[1] - crow[0]) if m else 0
    if m != n or m < 2 or width == 0 or len(col) != m * width:
        return None
    offsets = np.sort(((col - _rows_of(crow)) % n).reshape(m, width), axis=1)
    return offsets[0] if bool((offsets == offsets[:1]).all()) else None


def cycle_blocks(crow, col, n: int) -> tuple[np.ndarray, int] | None:
    """For a circulant pattern whose rows r, r' conflict only within cyclic distance K: the
    m rows cut into B = m // (K + 1) blocks of q or q + 1 consecutive rows, each row
    coloured by its position in its block, and the lower bound ⌈m / B⌉ where every distance
    1..K conflicts (K + 1 rows pairwise in conflict, so a colour holds at most B rows);
    else (a partial band) the bound 0. Two rows of one colour lie at least q ≥ K + 1
    apart both ways round: valid. None where the pattern is not circulant or B < 2."""
    offsets = circulant_offsets(crow, col, n)
    if offsets is None:
        return None
    m = n
    shared = np.unique((offsets[:, None] - offsets[None, :]) % m)
    distance = np.minimum(shared, m - shared)
    distance = np.unique(distance[distance > 0])
    if len(distance) == 0:
        return None
    reach = int(distance[-1])
    blocks = m // (reach + 1)
    if blocks < 2:
        return None
    q, longer = divmod(m, blocks)
    sizes = np.full(blocks, q, dtype=np.int64)
    sizes[:longer] += 1
    starts = np.repeat(np.cumsum(sizes) - sizes, sizes)
    colours = np.arange(m, dtype=np.int64) - starts
    full = len(distance) == reach  # every distance 1..reach conflicts
    return colours, (-(-m // blocks) if full else 0)


def repaired(crow, col, n: int, colours: np.ndarray) -> np.ndarray | None:
    """``colours`` where they hold, the rest coloured greedily: of the rows of one colour
    reading one column, all but the first lose their colour; then each such row, in order,
    takes the lowest colour that no row sharing a column has (valid by construction). None
    where more than :data:`MOST_REPAIRED` rows (or an eighth) would be coloured again."""
    colours = np.array(colours, dtype=np.int64)
    k = colour_count(colours)
    rows = _rows_of(crow)
    keys = col * k + colours[rows]
    order = np.argsort(keys, kind="stable")  # rows ascending within a key
    repeat = np.zeros(len(keys), dtype=bool)
    repeat[order[1:]] = keys[order[1:]] == keys[order[:-1]]
    redo = np.unique(rows[repeat])
    if len(redo) > min(MOST_REPAIRED, len(colours) // 8):
        return None
    colours[redo] = -1
    readers = np.concatenate([[0], np.cumsum(np.bincount(col, minlength=n))])
    by_col = rows[order]  # the rows reading each column: keys sort by column first
    for row in redo.tolist():
        spans = [by_col[readers[c]:readers[c + 1]] for c in col[crow[row]:crow[row + 1]]]
        used = set(colours[np.concatenate(spans)].tolist())
        free = 0
        while free in used:
            free += 1
        colours[row] = free
    return colours


MOST_REPAIRED = 20_000  # rows coloured again one by one (~10 µs each)


# -- 2. greedy colourings ----------------------------------------------------------------------
def greedy_rows(crow, col, n: int, counts=None, orders: bool = True) -> np.ndarray:
    """The fewest colours among greedy in natural order and, with ``orders``, the orders of
    :func:`_orders` (cheapest first); it stops where a count meets the lower bound (the
    most rows reading one column)."""
    crow, col = np.asarray(crow, np.int64), np.asarray(col, np.int64)
    counts = np.bincount(col, minlength=n) if counts is None else counts
    lower = int(counts.max()) if len(col) else 0
    best = natural_greedy(crow, col, n)
    if not orders or colour_count(best) <= lower:
        return best
    for colours in _orders(crow, col, n, counts):
        if colour_count(colours) < colour_count(best):
            best = colours
        if colour_count(best) <= lower:
            break
    return best


def _orders(crow, col, n: int, counts):
    """Greedy colourings in other orders, as asked: smallest-last by rounds
    (:func:`peeling_order`, vectorised: any size); then on a conflict graph of at most
    :data:`SMALL_PAIRS` row pairs (built in numpy, walked in Python) largest-first,
    smallest-last and DSATUR (~1 s at 4·10⁵ pairs, for one colour at most on the tried
    patterns: past it the vectorised order alone)."""
    yield natural_greedy(crow, col, n, peeling_order(crow, col, n, counts))
    if int((counts.astype(np.int64) ** 2).sum()) > SMALL_PAIRS:
        return
    adjacency = conflict_graph(crow, col, n)
    degree = np.diff(adjacency[0])
    yield natural_greedy(crow, col, n, np.argsort(-degree, kind="stable"))
    yield natural_greedy(crow, col, n, smallest_last(adjacency))
    yield dsatur(adjacency)


def peeling_order(crow, col, n: int, counts, most_rounds: int = 64) -> np.ndarray:
    """A smallest-last order found in rounds, in numpy: each round removes every row whose
    degree (the rows left sharing one of its columns, counted per column: an upper bound)
    is at most k, the largest least degree met so far. Greedy in the reverse order then
    meets at most k coloured rows at each row: at most k + 1 colours, k no more than the
    degeneracy (of that multigraph). Rows left after ``most_rounds`` rounds come first."""
    m = len(crow) - 1
    live = np.asarray(counts, np.int64).copy()  # rows left reading each column
    removed = np.full(m, most_rounds, dtype=np.int64)
    ids, rows, cols = np.arange(m), _rows_of(crow), np.asarray(col, np.int64)  # rows left
    least = 0
    for round_ in range(most_rounds):
        if len(ids) == 0:
            break
        local = np.searchsorted(ids, rows)
        degree = np.bincount(local, weights=live[cols] - 1, minlength=len(ids))
        least = max(least, int(degree.min()))
        drop = degree <= least
        removed[ids[drop]] = round_
        gone = drop[local]
        live -= np.bincount(cols[gone], minlength=n)
        ids, rows, cols = ids[~drop], rows[~gone], cols[~gone]
    return np.argsort(-removed, kind="stable")


def natural_greedy(crow, col, n: int, order=None) -> np.ndarray:
    """Greedy in ``order`` (natural by default) without building the conflict graph: each
    column keeps the colours of the rows read so far that read it, as a bitmask; a row takes
    the lowest colour free in all of its columns' masks, then adds itself to them."""
    m = len(crow) - 1
    masks = [0] * n
    colours = [0] * m
    starts, columns = np.asarray(crow).tolist(), np.asarray(col).tolist()
    for row in (range(m) if order is None else np.asarray(order).tolist()):
        cols = columns[starts[row]:starts[row + 1]]
        used = 0
        for c in cols:
            used |= masks[c]
        bit = ~used & (used + 1)  # the lowest free colour, as a bit
        colours[row] = bit.bit_length() - 1
        for c in cols:
            masks[c] |= bit
    return np.asarray(colours, dtype=np.int64)


def conflict_graph(crow, col, n: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR adjacency (offsets, neighbours) of the rows: an edge where two rows share a column."""
    m = len(crow) - 1
    rows = _rows_of(crow)
    order = np.argsort(col, kind="stable")
    by_col = rows[order]
    starts = np.concatenate([[0], np.cumsum(np.bincount(col, minlength=n))])
    size = np.diff(starts)[col[order]]
    first = starts[col[order]]
    a = np.repeat(by_col, size)
    offsets = np.arange(len(a)) - np.repeat(np.cumsum(size) - size, size)
    b = by_col[np.repeat(first, size) + offsets]
    keys = np.unique(a[a != b] * m + b[a != b])
    src, dst = keys // m, keys % m
    return np.concatenate([[0], np.cumsum(np.bincount(src, minlength=m))]), dst


def smallest_last(adjacency) -> np.ndarray:
    """Matula–Beck smallest-last order (bucket queue): remove a vertex of least remaining
    degree, repeatedly; colour in the reverse of the removal order."""
    offsets, neighbours = adjacency[0].tolist(), adjacency[1].tolist()
    m = len(offsets) - 1
    degree = [offsets[v + 1] - offsets[v] for v in range(m)]
    buckets: dict[int, set] = {}
    for v, d in enumerate(degree):
        buckets.setdefault(d, set()).add(v)
    removed, order, low = [False] * m, [], 0
    for _ in range(m):
        while not buckets.get(low):
            low += 1
        v = buckets[low].pop()
        removed[v] = True
        order.append(v)
        for w in neighbours[offsets[v]:offsets[v + 1]]:
            if not removed[w]:
                buckets[degree[w]].discard(w)
                degree[w] -= 1
                buckets.setdefault(degree[w], set()).add(w)
        low = max(low - 1, 0)
    return np.asarray(order[::-1], dtype=np.int64)


def dsatur(adjacency) -> np.ndarray:
    """Brélaz's DSATUR: colour next the vertex seeing the most distinct colours (ties: the
    highest degree), with the lowest colour free; a lazy heap of (saturation, degree)."""
    offsets, neighbours = adjacency[0].tolist(), adjacency[1].tolist()
    m = len(offsets) - 1
    seen: list[set] = [set() for _ in range(m)]
    colours = [-1] * m
    heap = [(0, -(offsets[v + 1] - offsets[v]), v) for v in range(m)]
    heapq.heapify(heap)
    while heap:
        sat, deg, v = heapq.heappop(heap)
        if colours[v] >= 0 or -sat != len(seen[v]):
            continue
        c = 0
        while c in seen[v]:
            c += 1
        colours[v] = c
        for w in neighbours[offsets[v]:offsets[v + 1]]:
            if colours[w] < 0 and c not in seen[w]:
                seen[w].add(c)
                heapq.heappush(heap, (-len(seen[w]), -(offsets[w + 1] - offsets[w]), w))
    return np.asarray(colours, dtype=np.int64)


# -- column colourings -------------------------------------------------------------------------
def transposed(crow, col, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The CSR arrays of the transpose (n rows), columns sorted within each row."""
    crow, col = np.asarray(crow, np.int64), np.asarray(col, np.int64)
    rows = _rows_of(crow)
    order = np.argsort(col, kind="stable")
    return np.concatenate([[0], np.cumsum(np.bincount(col, minlength=n))]), rows[order]


def colour_columns(crow, col, n: int, max_pairs: int = MAX_PAIRS, *,
                   shape=None) -> np.ndarray | None:
    """int64 colours for the n columns: columns of one colour are never read by one row, so
    one forward-mode pass (JVP) per colour gives every nonzero. None as :func:`colour_rows`.
    ``shape=(out_shape, in_shape)``: the lattice then uses the input's multi-index."""
    m = len(crow) - 1
    tcrow, tcol = transposed(crow, col, n)
    swapped = None if shape is None else (shape[1], shape[0])
    return colour_rows(tcrow, tcol, m, max_pairs, shape=swapped)


# -- symmetric colourings (Hessians) -----------------------------------------------------------
# Star colouring in Python is tried up to this Σ degree² (its cost); larger patterns take the
# distance-2 colouring alone (lattice or greedy: no loop per row on a stencil).
SMALL_STAR = 2_000_000
SMALL_ALWAYS = 2_000  # ... and always tried up to this n (else only past 3 colours)


def symmetrised(crow, col, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The CSR arrays of P ∪ Pᵀ ∪ diagonal (n × n), columns sorted within each row; P's own
    arrays when it is already so (the common case: a Hessian's pattern)."""
    crow, col = np.asarray(crow, np.int64), np.asarray(col, np.int64)
    rows = _rows_of(crow)
    keys = rows * n + col
    mirrored = np.sort(col * n + rows)
    diag = np.arange(n, dtype=np.int64) * (n + 1)
    if len(keys) == len(mirrored) and np.array_equal(keys, mirrored) and len(keys) and \
            bool((keys[1:] > keys[:-1]).all()):
        at = np.minimum(np.searchsorted(keys, diag), len(keys) - 1)
        if bool((keys[at] == diag).all()):
            return crow, col
    keys = np.sort(np.concatenate([keys, mirrored, diag]))
    keys = keys[np.concatenate([[True], keys[1:] != keys[:-1]])]
    src, dst = keys // n, keys % n
    return np.concatenate([[0], np.cumsum(np.bincount(src, minlength=n))]), dst


def colour_symmetric(crow, col, n: int, max_pairs: int = MAX_PAIRS, *, shape=None,
                     symmetric: bool = False) -> np.ndarray | None:
    """int64 colours for the n rows/columns of a symmetric pattern (made symmetric, with its
    diagonal, first) such that every nonzero can be read directly from one Hessian-vector
    product per colour (:func:`recover_symmetric`). The fewer-coloured valid one of a
    distance-2 colouring (no two entries within distance 2 share a colour: the row colouring
    of the pattern with its diagonal) and a star colouring (Gebremedhin, Manne and Pothen
    2005, Algorithm 4.1: a distance-1 colouring with no two-coloured path on four vertices).
    None when neither is available (a dense row, and too large for the star colouring).
    ``shape``: x's shape, for the lattice of the distance-2 colouring; ``symmetric``: the
    pattern is already :func:`symmetrised`."""
    scrow, scol = (crow, col) if symmetric else symmetrised(crow, col, n)
    found = []
    d2 = colour_rows(scrow, scol, n, max_pairs,
                     shape=None if shape is None else (shape, shape))
    if d2 is not None:
        found.append(d2)
    degree = np.diff(scrow)
    worth = d2 is None or colour_count(d2) > 3 or n <= SMALL_ALWAYS
    if worth and int((degree ** 2).sum()) <= SMALL_STAR:
        star = star_colouring(scrow, scol)
        if recoverable(scrow, scol, star):
            found.append(star)
    return min(found, key=colour_count) if found else None


def star_colouring(crow, col) -> np.ndarray:
    """Greedy star colouring in natural order (GMP 2005, Algorithm 4.1) of the adjacency
    graph of a symmetric pattern (the diagonal ignored). ``tally[x][c]``: how many coloured
    neighbours of x have colour c (the algorithm's innermost loop, kept as counts)."""
    offsets, columns = np.asarray(crow).tolist(), np.asarray(col).tolist()
    n = len(offsets) - 1
    adj = [[w for w in columns[offsets[v]:offsets[v + 1]] if w != v] for v in range(n)]
    colours = [-1] * n
    tally: list[dict] = [{} for _ in range(n)]
    for v in range(n):
        forbidden = set()
        for w in adj[v]:
            fw = colours[w]
            if fw >= 0:
                forbidden.add(fw)
            for x in adj[w]:
                fx = colours[x]
                if x == v or fx < 0:
                    continue
                if fw < 0 or tally[x].get(fw, 0) >= 2:  # x has another neighbour of w's colour
                    forbidden.add(fx)
        c = 0
        while c in forbidden:
            c += 1
        colours[v] = c
        for w in adj[v]:
            tally[w][c] = tally[w].get(c, 0) + 1
    return np.asarray(colours, dtype=np.int64)


def _unique_in_row(crow, col, colours) -> np.ndarray:
    """Per nonzero (i, j): whether j is the only column of row i with j's colour."""
    k = max(colour_count(colours), 1)
    keys = np.repeat(np.arange(len(crow) - 1, dtype=np.int64) * k, np.diff(crow))
    keys += colours[col]
    if (len(crow) - 1) * k <= 4 * len(col) + 1_000_000:
        return np.bincount(keys)[keys] == 1
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    alone = np.ones(len(keys), dtype=bool)
    same = ordered[1:] == ordered[:-1]
    alone[order[1:][same]] = False
    alone[order[:-1][same]] = False
    return alone


def recoverable(crow, col, colours) -> bool:
    """Whether every nonzero (i, j) of the symmetric pattern can be read directly: j alone
    of its colour in row i, or i alone of its colour in row j."""
    crow, col = np.asarray(crow, np.int64), np.asarray(col, np.int64)
    n = len(crow) - 1
    if len(col) == 0:
        return True
    rows = _rows_of(crow)
    alone = _unique_in_row(crow, col, colours)
    keys = rows * n + col  # ascending (CSR with sorted columns)
    mirror = np.searchsorted(keys, col * n + rows)
    mirror = np.minimum(mirror, len(keys) - 1)
    present = keys[mirror] == col * n + rows
    return bool((alone | (present & alone[mirror])).all())


def recover_symmetric(crow, col, colours, compressed):
    """The CSR values (in ``col``'s order) of a symmetric matrix H from its products with the
    colour indicators: ``compressed[c]`` = H·v_c (a torch tensor or array, colours × n), v_c
    = 1 on the entries of colour c. H[i, j] = (H·v_{colour j})[i] when j is the only column
    of its colour in row i, else (H·v_{colour i})[j]."""
    crow_np, col_np = np.asarray(crow, np.int64), np.asarray(col, np.int64)
    colours_np = np.asarray(colours, np.int64)
    alone = torch.from_numpy(_unique_in_row(crow_np, col_np, colours_np))
    rows = torch.from_numpy(_rows_of(crow_np))
    cols, c = torch.from_numpy(col_np), torch.from_numpy(colours_np)
    compressed = torch.as_tensor(compressed)
    device = compressed.device
    direct = compressed[c[cols].to(device), rows.to(device)]
    mirrored = compressed[c[rows].to(device), cols.to(device)]
    return torch.where(alone.to(device), direct, mirrored)
