"""Decoding a dependency pattern from set probes (:class:`.grouptest.SetProber`) at a cost
set by its structure, not by the size of the axis.

- :func:`sample_rows`: a few output indices probed one by one (both ends and a spread): their
  rows are exact, and say whether the pattern is wide (a dense or triangular mixing).
- :func:`decoded`: bit-coded sets (bit b of i, and its complement) name every input index
  read by one output index, and every one read by its own index and one other (the bits
  where both halves answer are where the other index differs); a band is decoded from one set
  per colour (output indices whose bands cannot overlap share a colour, so a reached input
  index has one reader in the set); halving resolves what is left.

Every decoded pattern is then checked, input index by input index, with fresh values
(:func:`.grouptest.probed_pattern`): the decoding's guesses are never trusted.
"""
from __future__ import annotations

import functools

import torch

from .probes import probe_generator

WIDE = 1 / 8  # a pattern is wide when its sampled rows read more than this share of the input
FEW = 16  # open input indices halved directly
MAX_BAND = 64  # widest band decoded by colours (diagonals)


def sample_rows(m: int, seed: int, spread: int = 4, drawn: int = 2) -> torch.Tensor:
    """Output indices probed one by one: the first and last three, a spread, a few drawn."""
    generator = probe_generator(seed, "dependency-rows")
    picked = torch.cat([torch.arange(3), m - 1 - torch.arange(3),
                        torch.linspace(0, m - 1, spread).round().long(),
                        torch.randint(0, max(m, 1), (drawn,), generator=generator)])
    return torch.unique(picked.clamp(0, max(m - 1, 0)))


def wide(rows: torch.Tensor, n: int) -> bool:
    """Whether the sampled rows read more than :data:`WIDE` of the input indices, on average."""
    return bool(rows.float().sum(1).mean() > max(n * WIDE, 1))


# -- a pattern decoded exactly -----------------------------------------------------------------
def decoded(prober, sample: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(m × n) bool from bit-coded sets, then a band by colours, an index and one other, or
    halving, for the input indices several output indices read."""
    m, n = prober.output.shape[prober.a], rows.shape[1]
    bits = (m - 1).bit_length()
    if bits == 0:
        return prober.hits(torch.ones(1, 1, dtype=torch.bool))
    answers = prober.hits(bit_sets(m, bits)).reshape(2, bits, n)
    single, row, empty = spelled(answers[0], answers[1])
    single &= row < m
    pattern = torch.zeros(m, n, dtype=torch.bool)
    pattern[sample] = rows
    columns = single.nonzero().flatten()
    pattern[row[columns], columns] = True
    open_ = (~single & ~empty).nonzero().flatten()
    if open_.numel() > FEW:
        band = banded(prober, pattern, m, n)
        if band is not None:
            return band
    if open_.numel() and int(rows.sum(1).max()) <= 2:  # its own and one other, each
        open_ = _own_and_one(pattern, answers, open_, m)
    if open_.numel():
        pattern[:, open_] = halving(prober, m, open_)
    return pattern


def bit_sets(width: int, bits: int) -> torch.Tensor:
    """(2·bits × width) bool: row b holds the indices whose bit b is 1, row bits + b those
    whose bit b is 0 (every index lies on exactly one side of each bit)."""
    index = torch.arange(width)
    on = ((index[None, :] >> torch.arange(bits)[:, None]) & 1).bool()
    return torch.cat([on, ~on])


def spelled(on: torch.Tensor, off: torch.Tensor):
    """What the answers of :func:`bit_sets` say, read as zero or non-zero only ((…, bits, n)
    bool each: where the set of a bit's 1 side, and of its 0 side, reached input index j):
    (single, row, empty), each (…, n). One reader answers on exactly one side of every bit,
    and its sides spell its index (``row``); two readers differ in some bit, and both sides
    answer there, however small one's derivative beside the other's (no value is compared:
    only an exact cancellation among the readers on one side can hide one); ``empty``: no
    reader. Neither single nor empty: several readers."""
    single = (on ^ off).all(-2)
    place = torch.arange(on.shape[-2])[:, None]
    row = (on.long() << place).sum(-2)
    return single, row, ~(on | off).any(-2)


def weight_code(width: int) -> tuple[int, int]:
    """(length L, weight w): the fewest sets L with C(L, w) ≥ ``width`` words of weight
    w = L // 2 (about log₂ width + ½·log₂ log₂ width + 1, against 2·log₂ width for both sides of
    every bit). No word of one weight covers another (a Sperner family), so for any two
    indices i ≠ j some set holds i and not j (a completely separating family)."""
    length = 1
    while _binomial(length, max(1, length // 2)) < max(width, 1):
        length += 1
    return length, max(1, length // 2)


def _binomial(n: int, k: int) -> int:
    from math import comb
    return comb(n, k) if 0 <= k <= n else 0


def weight_sets(width: int, length: int, weight: int) -> torch.Tensor:
    """(length × width) bool: column i is the i-th word of ``weight`` ones over ``length``
    bits in colex order (the combinatorial number system: i = Σ C(c_k, k) over its ones
    c_1 < … < c_w), so row b holds the indices whose word has a 1 at b. Kept for the next
    call (the same sizes, call after call): not to be changed."""
    return _weight_sets(int(width), int(length), int(weight))


@functools.lru_cache(maxsize=8)
def _weight_sets(width: int, length: int, weight: int) -> torch.Tensor:
    table = _binomials(length, weight)  # [c, k] = C(c, k)
    rank = torch.arange(width, dtype=torch.int64)
    sets = torch.zeros(length, width, dtype=torch.bool)
    for k in range(weight, 0, -1):  # the largest c with C(c, k) ≤ rank, from the top one
        c = torch.searchsorted(table[:, k].contiguous(), rank, right=True) - 1
        sets[c, torch.arange(width)] = True
        rank = rank - table[c, k]
    return sets


def _binomials(length: int, weight: int) -> torch.Tensor:
    return torch.tensor([[_binomial(c, k) for k in range(weight + 1)] for c in range(length)],
                        dtype=torch.int64)


def weighed(hit: torch.Tensor, weight: int):
    """What the answers of :func:`weight_sets` say, read as zero or non-zero only ((…, L, n)
    bool: where each set reached input index j): (single, index, empty), each (…, n). One
    reader answers on exactly the ``weight`` sets of its word, whose rank is its index
    (``index``); several distinct words of one weight answer on more sets than any one (no
    value compared: two readers whose words differ in d places pass for one only where d
    sets holding both cancel exactly to 0); ``empty``: no reader."""
    length = hit.shape[-2]
    count = hit.sum(-2)
    ones_so_far = hit.long().cumsum(-2)  # k of each 1: the ones at or below its bit
    table = _binomials(length, weight).to(hit.device)
    place = torch.arange(length, device=hit.device).reshape(length, 1)
    term = table[place.expand_as(ones_so_far), ones_so_far.clamp(max=weight)]
    index = (term * hit).sum(-2)
    return count == weight, index, count == 0


def _own_and_one(pattern, answers, open_, m: int) -> torch.Tensor:
    """Input indices j read by output index j and one other r: r's bits are j's, flipped where
    both a bit's set and its complement answer. Writes them; returns the indices left open."""
    bits = answers.shape[1]
    cols = open_[open_ < m]
    place = torch.arange(bits)[:, None]
    own = ((cols[None, :] >> place) & 1).bool()
    on, off = answers[0][:, cols], answers[1][:, cols]
    both = on & off
    other = ((own ^ both).long() << place).sum(0)
    fits = torch.where(own, on, off).all(0) & both.any(0) & (other < m)
    cols, other = cols[fits], other[fits]
    pattern[cols, cols] = True
    pattern[other, cols] = True
    done = torch.zeros(pattern.shape[1], dtype=torch.bool)
    done[cols] = True
    return open_[~done[open_]]


def centres(m: int, n: int) -> torch.Tensor:
    """(m,) the input index each output index's band is centred on: i where m = n, else
    ⌊i·n/m⌋ (a strided convolution's output i reads about x[2i], an upsampling's x[i/2])."""
    index = torch.arange(m)
    return index if m == n else index * n // max(m, 1)


def band_offsets(known: torch.Tensor, m: int, n: int):
    """(lo, hi, circular): the offsets j − centre(i) of the known dependences
    (:func:`centres`), one wider each way (taken modulo n, nearest 0, for a square pattern:
    a band may wrap around)."""
    r, c = known.nonzero(as_tuple=True)
    offsets = c - centres(m, n)[r]
    circular = m == n
    if circular:
        offsets = (offsets + n // 2) % n - n // 2
    if not offsets.numel():
        return 0, 0, circular
    return int(offsets.min()) - 1, int(offsets.max()) + 1, circular


def banded(prober, known: torch.Tensor, m: int, n: int) -> torch.Tensor | None:
    """The pattern within the band of :func:`band_offsets` about each output index's centre,
    from one set per colour; None when the band is too wide, takes too many colours, or some
    set reaches an input index outside its rows' bands."""
    lo, hi, circular = band_offsets(known, m, n)
    width = hi - lo + 1
    if width > MAX_BAND:
        return None
    colour = _colours(m, n, width, circular)
    if colour is None:
        return None
    count = int(colour.max()) + 1
    sets = colour[None, :] == torch.arange(count)[:, None]
    reached = prober.hits(sets)  # colours × n
    cols = centres(m, n)[:, None] + torch.arange(lo, hi + 1)[None, :]  # m × width
    valid = (cols >= 0) & (cols < n)
    cols = cols % n if circular else cols.clamp(0, n - 1)
    valid = valid | circular
    covered = torch.zeros(count, n, dtype=torch.bool)
    covered[colour[:, None].expand_as(cols)[valid], cols[valid]] = True
    if bool((reached & ~covered).any()):
        return None
    pattern = torch.zeros(m, n, dtype=torch.bool)
    hit = reached[colour[:, None].expand_as(cols), cols] & valid
    rows = torch.arange(m)[:, None].expand_as(cols)
    pattern[rows[hit], cols[hit]] = True
    return pattern


def _colours(m: int, n: int, width: int, circular: bool) -> torch.Tensor | None:
    """i mod q for the fewest q whose rows of one colour have centres at least ``width``
    apart (q = width where m = n); on a circle, the indices past the last whole block get
    colours of their own (so that two indices of one colour are ``width`` apart around the
    circle). None where that takes more than a quarter of the output indices."""
    index, centre = torch.arange(m), centres(m, n)
    q = width
    if m != n:  # the fewest rows apart whose centres always differ by width or more
        q = max(1, width * m // max(n, 1))
        while q < m and int((centre[q:] - centre[:-q]).min()) < width:
            q += 1
    if 4 * q > m:
        return None
    colour = index % q
    if circular:
        whole = (m // q) * q
        colour[whole:] = q + index[whole:] - whole
    return colour


# -- checking a decoded pattern -------------------------------------------------------------
MAX_COLOURS = 64


def colour_sets(pattern: torch.Tensor, nonzeros=None) -> torch.Tensor:
    """(colours × m) sets: output indices greedily coloured so that two of one colour read no
    common input index; none when that takes more than :data:`MAX_COLOURS` colours.
    ``nonzeros``: the pattern's ``nonzero(as_tuple=True)``, where already known."""
    m, n = pattern.shape
    empty = torch.zeros(0, m, dtype=torch.bool)
    r, c = pattern.nonzero(as_tuple=True) if nonzeros is None else nonzeros
    if n == 0 or len(r) > 2**20:
        return empty
    degree = torch.bincount(r, minlength=m)
    if int(degree.max()) * 4 > n:
        return empty
    modular = _modular_colours(r, c, m, n)
    if modular is not None:
        return modular
    shared = torch.bincount(c, minlength=n)[c] > 1  # entries on an input index read twice
    alone = torch.bincount(r[shared], minlength=m) == 0  # reads no shared input index
    reads = torch.split(c, degree.tolist())
    used: dict[int, set] = {}
    colour = [0] * m
    for i in (~alone).nonzero().flatten().tolist():
        columns = reads[i].tolist()
        taken = set().union(*(used.get(j, ()) for j in columns)) if columns else set()
        k = next(k for k in range(len(taken) + 1) if k not in taken)
        if k >= MAX_COLOURS:
            return empty
        colour[i] = k
        for j in columns:
            used.setdefault(j, set()).add(k)
    colour_ = torch.tensor(colour)
    return colour_[None, :] == torch.arange(int(colour_.max()) + 1)[:, None]


def row_colours(r: torch.Tensor, c: torch.Tensor, m: int, n: int) -> torch.Tensor:
    """:func:`colour_sets` of the (m × n) pattern whose nonzeros are ``r``, ``c`` (no dense
    pattern made)."""
    return colour_sets(torch.empty(m, n, dtype=torch.bool, device="meta"), (r, c))


HEAVY = 32  # an input index read by more output indices is read exactly (forward mode)
MAX_HEAVY = 64  # at most this many such input indices, or output indices reading many


def check_colours(pattern: torch.Tensor, r, c):
    """For checking the pattern (its nonzeros ``r``, ``c``): ((m,) long colour per output
    index, (n,) bool heavy input indices) such that two output indices of one colour read no
    common input index other than a heavy one (read by over :data:`HEAVY`: those are read
    exactly instead); an output index reading over a quarter of the input gets a colour of
    its own. None where that
    takes more than :data:`MAX_COLOURS` colours, or too many heavy indices."""
    m, n = pattern.shape
    heavy = torch.bincount(c, minlength=n) > HEAVY
    hubs = torch.bincount(r[~heavy[c]], minlength=m) * 4 > n
    if int(heavy.sum()) > MAX_HEAVY or int(hubs.sum()) > MAX_HEAVY:
        return None
    if heavy.any() or hubs.any():
        keep = ~heavy[c] & ~hubs[r]
        sets = colour_sets(pattern & ~heavy[None, :] & ~hubs[:, None], (r[keep], c[keep]))
    else:
        sets = colour_sets(pattern, (r, c))
    if not len(sets):
        return None
    colour = sets.to(torch.uint8).argmax(0)
    colour[hubs] = int(colour.max()) + 1 + torch.arange(int(hubs.sum()))
    return colour, heavy


def _modular_colours(r, c, m: int, n: int) -> torch.Tensor | None:
    """Colour i mod q for the smallest q (up to :data:`MAX_COLOURS`) under which no input
    index has two readers of one colour (a band, blocks, a leak: no Python loop over rows)."""
    for q in range(1, MAX_COLOURS + 1):
        key = c * q + r % q
        if torch.unique(key).numel() == key.numel():
            colour = torch.arange(m) % q
            return colour[None, :] == torch.arange(q)[:, None]
        if q >= 8 and key.numel() > 4 * n:  # wide columns: the greedy colouring
            return None
    return None


# -- halving ----------------------------------------------------------------------------------
def halving(prober, m: int, columns: torch.Tensor, owner=None, most: int | None = None):
    """The rows of ``columns`` (each read by several output indices): halve the blocks of
    output indices that some column reaches, a level per batched call, or probe each row of
    the blocks still open when the blocks keep branching (a triangle, a band). ``owner``
    (each column's rows as a (start, end) pair of (len(columns),) tensors): only the
    readers outside them are found (each block's set, for the columns of one owner, with
    that owner's rows left out: :func:`_owner_answers`), and None once over ``most``
    blocks are open (too many readers to find this way)."""
    size = 1 << (m - 1).bit_length()
    active = torch.ones(1, len(columns), dtype=torch.bool)  # block × column
    previous = 1
    while size > 1:
        live = active.any(1).nonzero().flatten()
        if most is not None and len(live) > most:
            return None
        rows_left = int((((live + 1) * size).clamp(max=m) - live * size).sum())
        levels = size.bit_length() - 1
        growth = len(live) / previous if owner is None else 1.0
        # (with owners, the readers found are read again, firm: a row read costs two vectors)
        if 2 * len(live) * sum(growth ** step for step in range(levels)) \
                >= rows_left * (1 if owner is None else 2):
            return _rows_of_blocks(prober, m, live, size, columns, owner)
        size //= 2
        children = torch.stack([2 * live, 2 * live + 1], 1).flatten()
        children = children[children * size < m]
        if owner is None:
            answers = prober.hits(_blocks(children, size, m))[:, columns]
        else:
            answers = _owner_answers(prober, children, size, m, columns, owner,
                                     active[children // 2])
        active_next = torch.zeros((-(-m // size)), len(columns), dtype=torch.bool)
        active_next[children] = answers & active[children // 2]
        active, previous = active_next, len(live)
    if owner is not None:
        active = active[:m] & ~_owned(m, owner)
    return active[:m]


def _owner_answers(prober, children, size: int, m: int, columns, owner, open_):
    """(children × columns) bool: which columns each child block's rows reach from outside
    the column's own rows: one set per child block and owner (the block's rows, the owner's
    left out) where some column of that owner is still open in the block."""
    pairs, group = torch.stack(owner, 1).unique(dim=0, return_inverse=True)
    wanted = torch.zeros(len(children), len(pairs), dtype=torch.bool)
    wanted.index_put_((torch.arange(len(children))[:, None].expand_as(open_)[open_],
                       group[None, :].expand_as(open_)[open_]), torch.tensor(True))
    child, which = wanted.nonzero(as_tuple=True)
    answers = torch.zeros(len(children), len(columns), dtype=torch.bool)
    if not len(child):
        return answers
    index = torch.arange(m)
    sets = _blocks(children[child], size, m) & ~(
        (index[None, :] >= pairs[which, :1]) & (index[None, :] < pairs[which, 1:]))
    reached = prober.hits(sets)[:, columns]  # (pairs wanted × columns)
    mine = which[:, None] == group[None, :]  # the set for the column's own owner
    answers.index_put_((child[:, None].expand_as(mine)[mine],
                        torch.arange(len(columns))[None, :].expand_as(mine)[mine]),
                       reached[mine])
    return answers


def _owned(m: int, owner) -> torch.Tensor:
    """(m × columns) bool: the rows each column's ``owner`` range holds."""
    index = torch.arange(m)[:, None]
    return (index >= owner[0][None, :]) & (index < owner[1][None, :])


def _blocks(blocks: torch.Tensor, size: int, m: int) -> torch.Tensor:
    """(k × m) sets: output indices ``blocks * size ..`` of each block."""
    index = torch.arange(m)
    return (index[None, :] // size) == blocks[:, None]


def _rows_of_blocks(prober, m, live, size, columns, owner=None) -> torch.Tensor:
    """One probe per output index of the live blocks (none of a column's own rows)."""
    rows = (live[:, None] * size + torch.arange(size)[None, :]).flatten()
    rows = rows[rows < m]
    if owner is not None:  # rows every column owns say nothing
        rows = rows[~_owned(m, owner)[rows].all(1)]
    pattern = torch.zeros(m, len(columns), dtype=torch.bool)
    pattern[rows] = prober.row_hits(rows)[:, columns]
    return pattern & ~_owned(m, owner) if owner is not None else pattern
