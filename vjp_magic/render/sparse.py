"""The display of a Jacobian computed by compressed passes (issue 20): its pattern in words,
how it is known, the coloured gradient vectors as the code to write, the nonzero values.

An input whose result holds ``sparse`` (a :class:`~vjp_magic.core.compressed.SparseJacobian`:
the CSR ``matrix``, the row ``colours``, their ``count``, the ``evidence``) is shown by this
section instead of the one-hot loop and the dense derivatives. Everything is read off the
CSR index arrays in a few vectorised passes over the nonzeros (never densified), once per
result (:func:`layout_of`), and only the entries shown are looked up.

The pattern in words: where the output and the input have one shape, the offsets each entry
reads along each axis (``y[i] reads x[i-1], x[i], x[i+1]``: tridiagonal; five offsets in two
axes: the 5-point stencil), wrapping around where the indices do (``roll``); else a band of
the flat index, else "sparse" (the count of nonzeros then says "at most r a row"). The
colours are said in closed form (``torch.arange(y.numel()) % 3``, or ``(2i + j) mod 5`` on a
grid) only where that formula is exactly the colouring; otherwise the code
reads them from ``r.gradients[name]`` (by columns: ``r.tangents[name]``, :func:`vectors`).

A result computed by columns (``sparse.mode == "columns"``, :mod:`~vjp_magic.core.column_passes`)
has one colour per entry of the input: the words, the closed form and the code are then of
u, 1 on the input's entries of one colour, and of the forward-mode products J·u.
"""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch

from ..core.sparse_layout import csr_block
from . import notation
from .budget import fit_of, remembered
from .codegen import (backward_inputs, cleared_grads, expression, fresh, output_symbol,
                      result_check, taken_names)
from .codelines import CODE_WIDTH
from .findings import structure_findings
from ..core.pairing import proved_for_every
from .document import Code, CodeBlock, Entry, Formula, Math, Paragraph, Text, paragraph
from .matrix import Block

REACH = 4  # offsets along an axis spelled out up to this far (a stencil)
MAX_OFFSETS = 27  # at most this many offsets are spelled out in words
SAID = 6  # offsets named in a sentence before "…"
LONG_READS = 60  # characters of offsets spelled out before a run is said first, …, last
SAMPLE = 4096  # entries a candidate closed form of the colours is tried on first
MAX_FORMS = 64  # candidate closed forms tried on a grid
_CACHE: dict = {}  # ids of (matrix, colours) → (weakrefs to them, Layout)


def sparse_of(result, name: str):
    """The input's :class:`~vjp_magic.core.compressed.SparseJacobian`, or None."""
    item = result.inputs.get(name)
    return getattr(item, "sparse", None) if item is not None else None


def zeros_here(sparse) -> int:
    """How many entries of the pattern are exactly 0 at this x (a proved pattern holds every
    entry the graph allows; a derivative such as 3x² at x = 0 is one of them and 0 here)."""
    matrix = getattr(sparse, "matrix", None)
    if matrix is None:
        return 0
    values = matrix.values()
    return values.numel() - int(torch.count_nonzero(values))


def entries_words(sparse, nonzero: str = "nonzero derivatives",
                  noun: str = "derivatives") -> str:
    """The pattern's entries counted truly: "5,998 nonzero derivatives" (``nonzero``) where
    all are nonzero here, else "8,998 derivatives its pattern allows (7,498 nonzero here)"."""
    zeros = zeros_here(sparse)
    if not zeros:
        return f"{sparse.nnz:,} {nonzero}"
    return f"{sparse.nnz:,} {noun} its pattern allows ({sparse.nnz - zeros:,} nonzero here)"


def by_columns(sparse) -> bool:
    """Whether ``sparse`` was computed by forward-mode passes, one per colour of the input's
    entries (its ``colours`` are the input's), rather than one backward per output colour."""
    return str(getattr(sparse, "mode", "rows")) == "columns"


def vectors(sparse) -> str:
    """The result's field holding the coloured vectors the passes used: ``gradients`` (v,
    shaped like the output), or by columns ``tangents`` (u, shaped like the input)."""
    return "tangents" if by_columns(sparse) else "gradients"


@dataclass(frozen=True)
class Layout:
    """What the pattern is: ``kind`` (``diagonal``, ``tridiagonal``, ``band``,
    ``block-diagonal`` (flat b × b blocks, b from ``band``), ``5-point stencil``, ``stencil``,
    ``sparse``, ``all zero``); ``per_row`` / ``fewest``: the
    most and fewest nonzeros of a row; ``offsets``: the per-axis offsets rows read (a stencil;
    None otherwise), ``wraps`` per axis; ``edges``: every row reading fewer lies at an edge;
    ``band``: the least and most of col − row (flat); ``form``: the colours'
    closed form (:class:`Form`, over the input's entries for a result by columns; None:
    none), always checked on every entry. Everything is read off every nonzero."""

    kind: str
    per_row: int
    fewest: int
    offsets: tuple[tuple[int, ...], ...] | None
    wraps: tuple[bool, ...]
    edges: bool
    band: tuple[int, int] | None
    form: Form | None
    first: list  # the first few flat entries of colour 0 (of the input's, by columns)
    mostly: Mostly | None = None  # no stencil, but one but for a few rows (said so)
    blocks: tuple[int, ...] = ()  # block-diagonal: the sizes of its diagonal blocks, in order
    more: bool = False  # colour 0 has entries beyond ``first`` (said "…")


class Mostly(NamedTuple):
    """A pattern that is a stencil but for ``count`` rows (at most :data:`MAX_ODD_ROWS`):
    ``rest`` the :class:`Layout` of the other rows; ``odd`` (row, the far columns it reads)
    for the first few of them (flat indices)."""

    rest: Layout
    odd: tuple[tuple[int, tuple[int, ...]], ...]
    count: int


MAX_ODD_ROWS = 8  # rows a stencil may be said "except" for
ODD_SAID = 2  # of them named with what they read


def layout_of(sparse, out_shape, in_shape) -> Layout:
    """The :class:`Layout` of ``sparse`` (computed once per result)."""
    key = (id(sparse.matrix), id(sparse.colours))  # tensors (a NamedTuple has no weakref)
    cached = _CACHE.get(key)
    if cached is not None and cached[0]() is sparse.matrix and cached[1]() is sparse.colours:
        return cached[2]
    found = _analysed(sparse, tuple(out_shape), tuple(in_shape))
    for stale in [k for k, (mat, cols, _) in _CACHE.items() if mat() is None or cols() is None]:
        del _CACHE[stale]
    _CACHE[key] = (weakref.ref(sparse.matrix), weakref.ref(sparse.colours), found)
    return found


def _analysed(sparse, out_shape, in_shape) -> Layout:
    """Read off every nonzero of the pattern (vectorised: a few passes over the CSR index
    arrays), never a sample, so the words hold for every row."""
    matrix = sparse.matrix
    crow, col = matrix.crow_indices().cpu(), matrix.col_indices().cpu()
    m, n = matrix.shape
    counts = crow.diff()
    form = closed_form(sparse.colours.cpu().reshape(-1),
                       in_shape if by_columns(sparse) else out_shape, sparse.count)
    first, more = _first_of_colour(sparse.colours.cpu().reshape(-1))
    if col.numel() == 0:
        return Layout("all zero", 0, 0, None, (), True, None, form, first, more=more)
    per_row, fewest = int(counts.max()), int(counts.min())
    ids = torch.arange(m)
    rows = torch.repeat_interleave(ids, counts)
    every = col - rows  # a band need not be square (a moving window: m = n - 2)
    low, high = torch.aminmax(every)
    band, diff = (int(low), int(high)), (every if m == n else None)
    offsets, wraps = (_stencil(rows, col, out_shape, diff) if out_shape == in_shape and out_shape
                      else (None, ()))
    edges = offsets is not None and _short_at_edges(ids, counts, len(offsets), offsets, wraps,
                                                    out_shape)
    if offsets is not None and not edges:  # some row inside reads fewer: no stencil
        offsets, wraps = None, ()
    kind = _kind(offsets, band, per_row, n)
    blocks = _diagonal_blocks(rows, col, m) if offsets is None and m == n else ()
    if blocks:
        kind = "block-diagonal"
    mostly = None
    if offsets is None and out_shape == in_shape and out_shape:
        mostly = _mostly(rows, col, counts, out_shape, (band, form, first, more))
    return Layout(kind, per_row, fewest, offsets, wraps, edges, band, form, first, mostly,
                  blocks, more)


def _mostly(rows, col, counts, shape, rest) -> Mostly | None:
    """The stencil of every row but a few that read far (beyond :data:`REACH` along an axis,
    wrapped or not), where there are at most :data:`MAX_ODD_ROWS` of them; else None."""
    far = torch.zeros(col.numel(), dtype=torch.bool)
    for axis, size in enumerate(shape):
        stride = math.prod(shape[axis + 1:])
        d = torch.remainder(torch.div(col, stride, rounding_mode="floor"), size) - \
            torch.remainder(torch.div(rows, stride, rounding_mode="floor"), size)
        centred = torch.remainder(d + size // 2, size) - size // 2
        far |= (d.abs() > REACH) & (centred.abs() > REACH)
    odd = torch.unique(rows[far])
    if not 0 < odd.numel() <= MAX_ODD_ROWS:
        return None
    keep = ~torch.isin(rows, odd)
    offsets, wraps = _stencil(rows[keep], col[keep], shape)
    others = torch.ones(counts.numel(), dtype=torch.bool)
    others[odd] = False
    ids = torch.arange(counts.numel())[others]
    if offsets is None or not _short_at_edges(ids, counts[others], len(offsets), offsets, wraps,
                                              shape):
        return None
    band, form, first, more = rest
    short = counts[others]
    layout = Layout(_kind(offsets, band, int(short.max()), counts.numel()), int(short.max()),
                    int(short.min()), offsets, wraps, True, band, form, first, more=more)
    said = tuple((int(r), _beyond(int(r), col[rows == r], offsets, wraps, shape))
                 for r in odd[:ODD_SAID])
    return Mostly(layout, said, odd.numel())


def _beyond(row: int, cols: torch.Tensor, offsets, wraps, shape) -> tuple[int, ...]:
    """The columns ``row`` reads that the stencil (``offsets``, wrapping where ``wraps``)
    does not give it, ascending: what it "also reads", near or far (the first
    :data:`SAID` and one more, which the sentence shows as "…")."""
    at = notation.unravel(row, shape)
    given = set()
    for offset in offsets:
        point = [a + d for a, d in zip(at, offset)]
        point = [p % size if wrap else p for p, size, wrap in zip(point, shape, wraps)]
        if all(0 <= p < size for p, size in zip(point, shape)):
            given.add(sum(p * math.prod(shape[k + 1:]) for k, p in enumerate(point)))
    beyond = cols[~torch.isin(cols, torch.tensor(sorted(given), dtype=cols.dtype))]
    return tuple(beyond.sort().values[:SAID + 1].tolist())  # (more than SAID: "…")


def _first_of_colour(colours: torch.Tensor, shown: int = 3,
                     looked: int = 8) -> tuple[list[int], bool]:
    """(the first flat entries of colour 0 to list, whether it has more): ``shown`` of them,
    unless they are in step and the colour's first ``looked`` are not, when the list goes on
    to the first entry out of step ("0, 7, 14, 19, …": three in step and "…" would read as
    every 7th). The head is searched first: O(1) where it has them."""
    head = colours[:SAMPLE]
    found = (head == 0).nonzero().squeeze(1)[:looked + 1]
    if len(found) <= looked and colours.numel() > SAMPLE:
        found = (colours == 0).nonzero().squeeze(1)[:looked + 1]
    entries = found.tolist()
    steps = [b - a for a, b in zip(entries, entries[1:looked])]
    count = shown
    if len(set(steps[:shown - 1])) == 1 and len(set(steps)) > 1:
        count = next(k for k, step in enumerate(steps) if step != steps[0]) + 2
    return entries[:count], len(entries) > count


def _axis_offsets(rows, col, size: int, stride: int, first: bool, diff=None):
    """Offsets along one axis (col's index − row's), centred mod ``size`` where the indices
    wrap around; None when they reach beyond :data:`REACH` either way. ``diff``: col − row
    (flat), the offsets themselves on a 1-D shape."""
    def along(index):  # the index along this axis (no pass where it is the identity)
        index = index if stride == 1 else torch.div(index, stride, rounding_mode="floor")
        return index if first else torch.remainder(index, size)

    d = diff if diff is not None and first and stride == 1 else along(col) - along(rows)
    if _reach(d) <= REACH:
        return d, False
    centred = torch.remainder(d + size // 2, size) - size // 2
    if _reach(centred) <= REACH and size > 2 * REACH + 1:
        return centred, True
    return None, False


def _reach(d: torch.Tensor) -> int:
    low, high = torch.aminmax(d)
    return max(-int(low), int(high))


def _stencil(rows, col, shape, diff=None):
    """The per-axis offsets read (sorted tuples) and whether each axis wraps, or (None, ())."""
    strides = [math.prod(shape[k + 1:]) for k in range(len(shape))]
    width = 2 * REACH + 1
    if width ** len(shape) > 10 ** 6:
        return None, ()
    key, wraps = None, []
    for axis, (size, stride) in enumerate(zip(shape, strides)):
        d, wrapped = _axis_offsets(rows, col, size, stride, axis == 0, diff)
        if d is None:
            return None, ()
        key = d + REACH if key is None else key * width + (d + REACH)
        wraps.append(wrapped)
    found = torch.bincount(key, minlength=width ** len(shape)).nonzero().squeeze(1).tolist()
    if len(found) > MAX_OFFSETS:
        return None, ()
    offsets = []
    for k in found:
        digits = []
        for _ in shape:
            digits.append(k % width - REACH)
            k //= width
        offsets.append(tuple(reversed(digits)))
    return tuple(sorted(offsets)), tuple(wraps)


def _short_at_edges(ids, counts, full: int, offsets, wraps, shape) -> bool:
    """Whether every row (of ``ids``, reading ``counts`` entries) that reads fewer than
    ``full`` lies within reach of an edge along an axis that does not wrap."""
    short = ids[counts < full]
    if short.numel() == 0:
        return True
    index = torch.stack(torch.unravel_index(short, shape))
    near = torch.zeros(short.numel(), dtype=torch.bool)
    for axis, size in enumerate(shape):
        if wraps[axis]:
            continue
        low = -min(o[axis] for o in offsets)
        high = max(o[axis] for o in offsets)
        near |= (index[axis] < low) | (index[axis] >= size - high)
    return bool(near.all())


def _diagonal_blocks(rows, col, n: int) -> tuple[int, ...]:
    """The sizes of the finest square blocks on the diagonal that hold every nonzero (flat
    indices; equal or not: packed sequences of 3, 5 and 2), where there are two at least and
    one is larger than 1, and the blocks are no emptier than a quarter full (a transposed
    elementwise map's 1, 5,998, 1 holds one nonzero a row: no block, 'sparse' as
    r.dependency says): block-diagonal, as r.dependency says; else ()."""
    ids = torch.arange(n)
    reach = ids.clone().scatter_reduce_(0, rows, col, "amax")  # each row's last column
    ends = torch.cummax(reach, 0).values == ids  # a block ends where nothing reaches past
    stops = ends.nonzero().reshape(-1) + 1
    starts = torch.cat([stops.new_zeros(1), stops[:-1]])
    sizes = stops - starts
    if sizes.numel() < 2 or int(sizes.max()) < 2 or int((sizes**2).sum()) > 4 * col.numel():
        return ()
    first = torch.repeat_interleave(starts, sizes)  # each row's block's first index
    if bool((col < first[rows]).any()):  # a row reads before its block: not blocks
        return ()
    return tuple(sizes.tolist())


def _kind(offsets, band, per_row: int, n: int) -> str:
    if offsets is not None:
        zero = tuple(0 for _ in offsets[0])
        if offsets == (zero,):
            return "diagonal"
        if len(zero) == 1 and offsets == ((-1,), (0,), (1,)):
            return "tridiagonal"
        if len(zero) == 1 and [o[0] for o in offsets] == list(range(offsets[0][0],
                                                                   offsets[-1][0] + 1)):
            return "band"
        if offsets == ((-1, 0), (0, -1), (0, 0), (0, 1), (1, 0)):
            return "5-point stencil"
        return "stencil"
    if band is not None and band[1] - band[0] + 1 <= max(8, n // 8):
        return "band"
    return "sparse" if per_row > 0 else "all zero"


# -- the colours in closed form --------------------------------------------------------------
class Form(NamedTuple):
    """The colour classes are those of (a · index) mod count: ``coefficients`` a on the
    output's axes, or ``()`` for its flat index. The colours may be numbered otherwise (a
    permutation of 0..count-1): the vectors, one per class, are the same. ``period``: the
    flat index is taken mod this (0: mod count), and ``exceptions`` (flat entry, colour) are
    the few entries coloured otherwise (a wrap-around), numbered as the code numbers them."""

    coefficients: tuple[int, ...]
    period: int = 0
    exceptions: tuple[tuple[int, int], ...] = ()


MAX_EXCEPTIONS = 8  # entries a flat closed form may list as coloured otherwise (< its period)


def closed_form(colours: torch.Tensor, out_shape, count: int) -> Form | None:
    """The :class:`Form` whose classes are exactly the colours', or None: the flat index
    mod ``count``, else (on an output of 2 or 3 axes) coefficients whose last is 1, else the
    flat index mod a smaller period but for at most :data:`MAX_EXCEPTIONS` entries. Each
    candidate is tried on the first :data:`SAMPLE` entries first, then on every entry."""
    m = colours.numel()
    if count < 1 or m == 0:
        return None
    if _flat_classes(colours, count):
        return Form(())
    dims = len(out_shape)
    if dims in (2, 3) and count ** (dims - 1) <= MAX_FORMS:
        index = torch.stack(torch.unravel_index(torch.arange(m), tuple(out_shape)))
        for k in range(count ** (dims - 1)):
            coefficients = tuple((k // count ** p) % count for p in range(dims - 1)) + (1,)
            weights = torch.tensor(coefficients)[:, None]
            base = (index * weights).sum(0) % count
            if _same_classes(colours, base, count):
                return Form(_numbered_as(colours, base, coefficients, count))
    return _with_exceptions(colours, count)


def _numbered_as(colours: torch.Tensor, base: torch.Tensor, coefficients: tuple,
                 count: int) -> tuple[int, ...]:
    """``coefficients`` times k (mod ``count``) where the colours number the classes k·c (a
    unit k), so that class c of the form is the result's vector c (:func:`vectors`; a
    5-point stencil's colours 2c for (3i + j) mod 5 = c: (i + 2j) mod 5 is theirs); else as
    they are."""
    perm = _relabelling(colours, base, count)
    k = int(perm[1]) if perm is not None and count > 1 else 1
    if perm is None or math.gcd(k, count) != 1 or \
            not torch.equal(perm, torch.arange(count, dtype=perm.dtype) * k % count):
        return coefficients
    return tuple(a * k % count for a in coefficients)


def _with_exceptions(colours: torch.Tensor, count: int) -> Form | None:
    """colour = p[flat index mod a period] at all but a few entries (a cyclic stencil whose
    length the period does not divide), p one-to-one; the others listed, renumbered."""
    m = colours.numel()
    colours = colours.long()
    for period in range(2, min(count, 16)):
        base = torch.arange(m) % period
        table = torch.bincount(base * count + colours, minlength=period * count)
        perm = table.reshape(period, count).argmax(1)  # each class's usual colour
        if torch.unique(perm).numel() != period:
            continue
        odd = (perm[base] != colours).nonzero().reshape(-1)
        if odd.numel() == 0 or odd.numel() >= min(period, MAX_EXCEPTIONS + 1):
            continue
        number = torch.full((count,), -1, dtype=torch.long)
        number[perm] = torch.arange(period)
        rest = [c for c in range(count) if int(number[c]) < 0]
        number[torch.tensor(rest, dtype=torch.long)] = torch.arange(period, count)
        return Form((), period, tuple((int(e), int(number[colours[e]])) for e in odd))
    return None


def _relabelling(colours: torch.Tensor, base: torch.Tensor, count: int):
    """The permutation p with colours = p[base] on the first entries, or None."""
    head = min(SAMPLE, colours.numel())
    perm = torch.full((count,), -1, dtype=colours.dtype)
    perm[base[:head]] = colours[:head]
    if bool((perm < 0).any()) or torch.unique(perm).numel() != count:
        return None
    return perm if torch.equal(perm[base[:head]], colours[:head]) else None


def _flat_classes(colours: torch.Tensor, count: int) -> bool:
    """colour = p[flat index mod ``count``] at every entry, p a permutation (compared
    ``count`` entries at a time, no index tensor made)."""
    m = colours.numel()
    whole = m - m % count
    perm = _relabelling(colours, torch.arange(min(m, SAMPLE)) % count, count)
    if perm is None:
        return False
    return bool((colours[:whole].reshape(-1, count) == perm).all()) \
        and bool((colours[whole:] == perm[:m - whole]).all())


def _same_classes(colours: torch.Tensor, base: torch.Tensor, count: int) -> bool:
    perm = _relabelling(colours, base, count)
    return perm is not None and bool(torch.equal(perm[base], colours))


def display_colours(sparse, out_shape, in_shape) -> torch.Tensor:
    """The colour of each flat entry of the output (by columns: of the input) as the code
    beneath the cell numbers it (:func:`colour_lines`): its closed form, with its exceptions,
    else the result's own colours (the order of its vectors, :func:`vectors`)."""
    found = layout_of(sparse, out_shape, in_shape)
    form, colours = found.form, sparse.colours.reshape(-1).cpu().long()
    if form is None:
        return colours
    m = colours.numel()
    if not form.coefficients:
        numbered = torch.arange(m) % (form.period or sparse.count)
        for entry, colour in form.exceptions:
            numbered[entry] = colour
        return numbered
    shape = tuple(in_shape if by_columns(sparse) else out_shape)
    index = torch.stack(torch.unravel_index(torch.arange(m), shape))
    return (index * torch.tensor(form.coefficients)[:, None]).sum(0) % sparse.count


# -- words -----------------------------------------------------------------------------------
def _offset_index(letters, offset, sep: str = ", ", spaced: bool = False) -> str:
    """``i-1, j`` (``spaced``: ``i - 1, j``, as wide as TeX sets the binary minus)."""
    gap = " " if spaced else ""
    parts = []
    for letter, d in zip(letters, offset):
        parts.append(letter if d == 0 else f"{letter}{gap}{'+' if d > 0 else '-'}{gap}{abs(d)}")
    return sep.join(parts)


def reads_spans(result, name: str, found: Layout) -> list:
    """``y[i] reads x[i-1], x[i], x[i+1]`` (a stencil), as spans; [] otherwise. "…" stands
    only for offsets left out: between the ends of a run shortened to them, or after the
    first :data:`SAID` of many; wrap-around and edges are said per axis."""
    if found.offsets is None:
        return []
    y = output_symbol(result)
    letters = notation.point_letters(len(found.offsets[0]))
    spans: list = [notation.tensor_entry(y, ", ".join(letters)), Text(" reads ")]
    said = found.offsets if len(found.offsets) <= SAID + 1 else found.offsets[:SAID]
    spelled = sum(len(name) + len(_offset_index(letters, o)) + 4 for o in said)
    run = len(found.offsets) > 3 and (len(said) < len(found.offsets) or spelled > LONG_READS) \
        and _contiguous(found.offsets)  # first, …, last
    said = (found.offsets[0], found.offsets[-1]) if run else said
    for k, offset in enumerate(said):
        spans += [Text((", …, " if run else ", ") if k else ""),
                  notation.tensor_entry(name, _offset_index(letters, offset))]
    notes = _reads_notes(found, letters)
    if len(said) < len(found.offsets):
        spans.append(Text("" if run else ", …"))
        notes.insert(0, f"{len(found.offsets)} entries")
    return spans + ([Text(f" ({'; '.join(notes)})")] if notes else [])


def _reads_notes(found: Layout, letters) -> list[str]:
    """"indices wrap around" (along every axis the stencil moves on), else "j wraps around"
    for those that do, and "fewer at the edges" (in i: the axes that do not wrap) or "some
    read fewer" where rows read fewer than the stencil."""
    moving = [a for a in range(len(letters)) if len({o[a] for o in found.offsets}) > 1]
    wrapping = [letters[a] for a in moving if found.wraps[a]]
    edged = [letters[a] for a in moving if not found.wraps[a]]
    notes = []
    if wrapping:
        notes.append("indices wrap around" if not edged else
                     f"{' and '.join(wrapping)} {'wraps' if len(wrapping) == 1 else 'wrap'} "
                     "around")
    if found.fewest < len(found.offsets):
        along = f" in {' and '.join(edged)}" if wrapping and edged else ""
        notes.append(f"fewer at the edges{along}" if found.edges and edged else
                     "some read fewer")
    return notes


def _contiguous(offsets) -> bool:
    """Whether the offsets run along one axis without a gap (all others 0)."""
    moving = [a for a in range(len(offsets[0])) if len({o[a] for o in offsets}) > 1]
    if len(moving) != 1:
        return False
    steps = [o[moving[0]] for o in offsets]
    return steps == list(range(steps[0], steps[0] + len(steps)))


def kind_name(found: Layout) -> str:
    """The pattern's kind in one or two words: "tridiagonal", "cyclic tridiagonal" where
    it wraps around (a picture's title; :func:`kind_words` says more)."""
    if any(found.wraps) and found.kind in ("tridiagonal", "band"):
        return f"cyclic {found.kind}"
    return found.kind


def kind_words(found: Layout, n: int) -> str:
    """The pattern's kind in words for the display: blocks with their sizes, a band with
    its offsets, a stencil with its points."""
    cyclic = "cyclic " if any(found.wraps) else ""
    if found.kind == "tridiagonal":
        return kind_name(found)
    if found.kind == "block-diagonal":
        sizes = found.blocks
        if len(set(sizes)) == 1:
            return f"block-diagonal ({sizes[0]:,} × {sizes[0]:,} blocks on the diagonal, flattened)"
        shown = ", ".join(f"{b:,}" for b in sizes[:4]) + (", …" if len(sizes) > 4 else "")
        return f"block-diagonal ({len(sizes):,} square blocks of {shown} on the diagonal, " \
               "flattened)"
    if found.kind == "band" and found.offsets is None and found.band is not None:
        low, high = found.band
        return f"banded (col − row from {low} to {high}, flattened)"
    if found.kind == "band":
        low, high = found.offsets[0][0], found.offsets[-1][0]
        return f"{cyclic}banded ({low} to {high} about the diagonal)"
    if found.kind in ("stencil", "5-point stencil") and found.offsets is not None:
        count = len(found.offsets)
        return f"{'an' if str(count)[0] == '8' or count in (11, 18) else 'a'} {count}-point stencil"
    return found.kind  # ("sparse": how many a row at most follows the count of nonzeros)


def _mostly_spans(result, name: str, found: Layout) -> list:
    """", like a cyclic tridiagonal one but for 1 row: y[i] reads …, except y[50001], which
    also reads x[7]" (a :class:`Mostly` pattern; [] otherwise)."""
    mostly = found.mostly
    if mostly is None:
        return []
    y = output_symbol(result)
    out_shape, in_shape = tuple(result.output.shape), tuple(result.inputs[name].shape)
    rows = "row" if mostly.count == 1 else "rows"
    words = kind_words(mostly.rest, math.prod(in_shape))
    like = words if words.startswith(("a ", "an ")) else f"a {words} one"
    spans: list = [Text(f", like {like} but for {mostly.count} {rows}: ")]
    spans += reads_spans(result, name, mostly.rest)
    for k, (row, cols) in enumerate(mostly.odd):
        spans += [Text(", except " if k == 0 else "; "),
                  notation.tensor_entry(y, notation.unravel(row, out_shape)),
                  Text(", which also reads ")]
        for j, q in enumerate(cols[:SAID]):
            spans += [Text(", " if j else ""),
                      notation.tensor_entry(name, notation.unravel(q, in_shape))]
        spans.append(Text(", …" if len(cols) > SAID else ""))
    if mostly.count > len(mostly.odd):
        spans.append(Text(f", and {mostly.count - len(mostly.odd):,} more"))
    return spans


def evidence_words(result, name: str) -> list:
    """How the pattern is known: proved from the graph (every x: :func:`~vjp_magic.core.pairing.
    proved_for_every`), read off the graph this x took (the cell read x into Python), or
    observed at this x."""
    sparse = sparse_of(result, name)
    x = notation.prose_name(name)
    given = ", ".join(getattr(sparse, "conditional_on", ()))
    proved = proved_for_every(result, name, sparse.evidence)
    if proved and given:  # the saved selections may come from x
        return [Text(f"Proved from the autograd graph, given the indices and masks it saved "
                     f"({given}): the pattern holds for every "), x,
                Text(" that gives the same ones.")]
    if proved:
        return [Text("Proved from the autograd graph: the pattern holds for every "), x,
                Text(".")]
    if str(sparse.evidence) == "proved":  # steered: another x may take another graph
        return [Text("Read off the autograd graph this "), x,
                Text(" took: the pattern holds at this "), x, Text(" only (the cell read "), x,
                Text(" into Python, and another value may take another path).")]
    passes = getattr(sparse, "pattern_passes", 0)
    found = f" by {passes:,} grouped probe passes" if passes else ""
    return [Text("Observed at this "), x, Text(f"{found} and checked by random probes: a "
                                                 "derivative that happens to be 0 here is "
                                                 "not in it.")]


def pattern_paragraph(result, name: str, lead: bool = True) -> Paragraph:
    """The pattern in words, its nonzeros counted, and how it is known (``lead``: named for
    its input, where there are several)."""
    sparse = sparse_of(result, name)
    item = result.inputs[name]
    found = layout_of(sparse, result.output.shape, item.shape)
    y = output_symbol(result)
    lead = [Text("With respect to "), notation.prose_name(name), Text(": ")] \
        if lead and len(result.inputs) > 1 else []
    spans = lead + [Text("the Jacobian " if lead else "The Jacobian "), notation.partial(y, name),
                    Text(f" is {kind_words(found, item.numel())}")]
    reads = reads_spans(result, name, found)
    spans += ([Text(": ")] + reads if reads else []) + _mostly_spans(result, name, found)
    m, n = sparse.matrix.shape
    zeros = zeros_here(sparse)
    counted = f"{sparse.nnz:,} nonzeros of {m:,} × {n:,}" if not zeros else \
        f"{sparse.nnz:,} entries of {m:,} × {n:,} in the pattern " \
        f"({sparse.nnz - zeros:,} nonzero here)"
    spans.append(Text(f"; {counted}"
                      + f", at most {found.per_row:,} a row. "))
    return Paragraph(tuple(spans + evidence_words(result, name)))


def hessian_paragraph(h, name: str) -> Paragraph:
    """A sparse Hessian's pattern in the same words as a Jacobian's (:func:`kind_words`: a
    row and a column per entry of x), its nonzeros, the products and how it is known: "The
    Hessian is tridiagonal: 299,998 nonzeros from 3 Hessian-vector products (…)"."""
    sparse = sparse_of(h, name)
    shape = tuple(h.inputs[name].shape)
    found = layout_of(sparse, shape, shape)
    x = notation.prose_name(name)
    products = "product" if sparse.count == 1 else "products"
    given = ", ".join(getattr(sparse, "conditional_on", ()))
    if proved_for_every(h, name, sparse.evidence):
        how = [Text("the pattern proved from the graph for every "), x] + (
            [Text(f" that gives the same indices and masks it saved ({given})")] if given
            else [])
    elif str(sparse.evidence) == "proved":  # steered: the graph of this x only
        how = [Text("the pattern read off the graph at this "), x, Text(" only")]
    else:
        how = [Text("the pattern found at this "), x, Text(f" by {sparse.probes:,} probes")]
    return Paragraph(tuple(
        [Text(f"The Hessian is {kind_words(found, math.prod(shape))}: "
              f"{entries_words(sparse, 'nonzeros', 'entries')} from {sparse.count:,} "
              f"Hessian-vector {products} (")]
        + how + [Text("; the values checked with random probes"), Text(").")]))


def _form_text(form: Form, letters) -> str:
    """``2i + j + 3`` (the same in TeX and plain text)."""
    terms = [(f"{a}{letter}" if a != 1 else letter)
             for a, letter in zip(form.coefficients, letters) if a]
    return " + ".join(terms) or "0"


def colour_paragraph(result, name: str, options=None) -> Paragraph:
    """The coloured gradient vectors in words: what v (by columns: u) is for the first
    colour, and what the passes give (where the screen is short, :class:`.budget.Fit`'s
    ``extras`` off: without the pointer to every colour, which the code reads)."""
    sparse = sparse_of(result, name)
    found = layout_of(sparse, result.output.shape, result.inputs[name].shape)
    y, k = output_symbol(result), sparse.count
    columns = by_columns(sparse)
    coloured = name if columns else y  # whose entries carry the colours
    m = -(-(result.inputs[name].tensor if columns else result.output).numel() // max(k, 1))
    passes = "forward-mode pass" if columns else "backward pass"
    tail = Text(f": {k:,} {passes}{'es' if k != 1 else ''}{' (J·u)' if columns else ''} give"
                f"{'' if k != 1 else 's'} all {entries_words(sparse)}"
                + (f" (after {sparse.pattern_passes:,} to find the pattern)."
                   if getattr(sparse, "pattern_passes", 0) else "."))
    vector = code_names(result, name)[0]["u" if columns else "v"]  # as the code names it
    if k == 1 and not columns:  # one colour: the tutorial's v = ones
        return paragraph("Each entry of ", notation.prose_name(name), " is read by one entry of ",
                         notation.prose_name(y), " at most, so ", notation.prose_name(vector),
                         " is all ones, shaped like ", notation.prose_name(y), tail)
    lead = ["Entries of ", notation.prose_name(name), " of one colour are never read by one "
            "entry of ", notation.prose_name(y), ", so one forward-mode pass per colour: ",
            notation.prose_name(vector)] if columns else [
        "Entries of one colour read disjoint entries of ", notation.prose_name(name),
        ", so one backward per colour: ", notation.prose_name(vector)]
    if found.form is not None and found.form.coefficients:
        letters = notation.point_letters(len(found.form.coefficients))
        tex = plain = _form_text(found.form, letters)
        index = ", ".join(letters)
        return paragraph(*lead, " is 1 on the entries ", notation.tensor_entry(coloured, index),
                         " with ", Math(rf"({tex}) \bmod {k} = c", f"({plain}) mod {k} = c"),
                         " and 0 elsewhere", tail)
    form = found.form
    first = found.first if form is None or form.exceptions else \
        [c * (form.period or k) for c in range(min(3, m))]
    more = found.more if form is None or form.exceptions else len(first) > 2
    listed = ", ".join(f"{i:,}" for i in first) + (", …" if more else "")
    where = [] if form is not None and not form.exceptions or not fit_of(options).extras else [
        Text(" (the first colour; every colour is in "),
        Code(f"r.{vectors(sparse)}[{name!r}]"), Text(")")]
    entries = "entries" if len(first) > 1 else "entry"
    return paragraph(*lead, f" is 1 on {entries} {listed} of ", notation.prose_name(coloured),
                     *where, " and 0 elsewhere", tail)


# -- the code to write ------------------------------------------------------------------------
def code_names(result, name: str) -> tuple[dict, set]:
    """The names the code beneath the cell binds (``colour``, ``g``, ``c``, ``v``, ``vs``; by
    columns also ``u``, ``Ju``), each fresh against the cell's names, and ``y``: the same
    names the sentences use. Also the names taken, for any further helper."""
    taken = taken_names(result)
    y = output_symbol(result)
    taken.add(y)
    columns = by_columns(sparse_of(result, name))
    bases = ("colour", "g", "c", "u", "v", "Ju", "vs") if columns else \
        ("colour", "g", "c", "v", "vs")
    names = {base: fresh(base, taken) for base in bases}
    names["y"], names["seed"] = y, result.seed
    return names, taken


def colour_code(result, name: str, first: tuple[str, ...] = ()) -> str:
    """The coloured backward passes as the cell would write them: the colour of each entry
    of the output (in closed form where it is one), one backward per colour into the rows of
    ``g``; each nonzero J[i, j] is then ``g[colour[i], j]``. By columns: the forward-mode
    passes (:func:`_column_lines`). Pasted into the next cell it runs as it is (``first``:
    lines before it, the output computed again where the cell's backward freed its graph),
    and fills no other ``.grad`` (``inputs=[x]`` where one would be filled:
    :func:`.codegen.backward_inputs`)."""
    sparse = sparse_of(result, name)
    found = layout_of(sparse, result.output.shape, result.inputs[name].shape)
    names, taken = code_names(result, name)
    y = names["y"]
    lines = [*first] + ([] if y == result.output_name else [f"{y} = {result.output_name}"])
    x = expression(name)
    if by_columns(sparse):  # autograd.grad: no .grad, no retain_grad
        return _joined(lines + _column_lines(found.form, x, sparse.count, name, names, taken))
    if not result.inputs[name].is_leaf:
        lines.append(f"{x}.retain_grad()")
    colour, g, c, v = (names[base] for base in ("colour", "g", "c", "v"))
    k, listed = sparse.count, backward_inputs(result, [name], [x])  # (no other .grad filled)
    if k == 1:  # one colour: the tutorial's v = ones, one backward
        return _joined(lines + [
            cleared_grads([x]),
            f"{y}.backward(gradient=torch.ones_like({y}), retain_graph=True{listed})",
            f"{g} = {x}.grad.reshape(-1)  # v^T J, v = ones",
            f"# J[p, q] (flattened) is {g}[q] where nonzero"])
    lines += colour_lines(found.form, y, k, name, names, taken)
    call = f"    {y}.backward(gradient={v}, retain_graph=True{listed})"
    if len(call) > CODE_WIDTH:  # v by position rather than a call wrapped over two lines
        call = f"    {y}.backward({v}, retain_graph=True{listed})"
    lines += [f"{g} = {x}.new_zeros({k}, {x}.numel())  # row {c}: {v}^T J",
              cleared_grads([x]),
              f"for {c} in range({k}):",
              f"    {v} = ({colour} == {c}).reshape({y}.shape).to({y})",
              call,
              f"    {g}[{c}], {x}.grad = {x}.grad.reshape(-1), None  # read, cleared",
              f"# J[p, q] (flattened) is {g}[{colour}[p], q] where nonzero"]
    return _joined(lines)


def _joined(lines: list[str]) -> str:
    """The lines as source, a trailing comment dropped where it would make its line wider
    than a code block shows (:data:`.codelines.CODE_WIDTH`, long names)."""
    kept = [line.split("  # ")[0] if len(line) > CODE_WIDTH and "  # " in line else line
            for line in lines]
    return "\n".join(kept) + "\n"


def _column_lines(form, x: str, k: int, name: str, names: dict, taken: set) -> list[str]:
    """Forward mode on the recorded graph, as a cell writes it: g = Jᵀv with create_graph
    (v a zero tensor that requires grad), then J·u = the VJP of g against u, per colour."""
    colour, g, c, u, v, ju = (names[b] for b in ("colour", "g", "c", "u", "v", "Ju"))
    y = names["y"]
    return colour_lines(form, x, k, name, names, taken, "tangents") + [
        f"# forward mode: {g} = J^T {v} is linear in {v}, so its VJP with {u} is J {u}",
        f"{v} = torch.zeros_like({y}, requires_grad=True)",
        f"({g},) = torch.autograd.grad({y}, {x}, {v}, create_graph=True)",
        f"{ju} = []  # J u for each colour c",
        f"for {c} in range({k}):",
        f"    {u} = ({colour} == {c}).reshape({x}.shape).to({x})",
        f"    {ju} += torch.autograd.grad({g}, {v}, {u}, retain_graph=True)",
        f"{ju} = torch.stack({ju}).reshape({k}, -1)  # row c: J u",
        f"# J[p, q] (flattened) is {ju}[{colour}[q], p] where nonzero"]


def colour_lines(form, y: str, k: int, name: str, names: dict, taken: set,
                 field: str = "gradients") -> list[str]:
    """The colour of each entry of ``y`` (the input, by columns): in closed form, with its
    few exceptions, else read off the cell's result ``_`` (IPython's last output; its
    ``field``, :func:`vectors`), checked first by its seed (:func:`.codegen.result_check`;
    ``names["seed"]``) unless ``names["result"]`` names it (``r.code`` checks its own)."""
    colour = names["colour"]
    if form is not None and not form.coefficients:
        lines = [f"{colour} = torch.arange({y}.numel()) % {form.period or k}"]
        if form.exceptions:  # (a wrap-around's few entries, coloured apart)
            at = [e for e, _ in form.exceptions]
            to = [c for _, c in form.exceptions]
            lines.append(f"{colour}[{at[0]}] = {to[0]}" if len(at) == 1 else
                         f"{colour}[{at}] = torch.tensor({to})")
        return lines
    if form is not None:
        letters = [fresh(letter, taken) for letter in notation.point_letters(len(form[0]))]
        terms = " + ".join(f"{a} * {letter}" if a != 1 else letter
                           for a, letter in zip(form.coefficients, letters) if a)
        return [f"{', '.join(letters)} = torch.unravel_index("
                f"torch.arange({y}.numel()), {y}.shape)",
                f"{colour} = ({terms}) % {k}  # the colour of each entry"]
    vs, source = names["vs"], names.get("result", "_")
    check = [result_check("_", names["seed"])] if source == "_" else []  # (r.code checks its own)
    return check + [f"{vs} = {source}.{field}[{name!r}]  # {source}: the cell's result",
                    f"{colour} = torch.stack(list({vs})).argmax(0).reshape(-1)"]


# -- the nonzero values -----------------------------------------------------------------------
def _lookup(matrix, rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """J[rows[a], targets[a, b]] read off the CSR (0 where absent or ``targets`` < 0)."""
    crow, col, values = matrix.crow_indices(), matrix.col_indices(), matrix.values()
    out = values.new_zeros(len(rows), targets.shape[1])
    for a, r in enumerate(rows.tolist()):
        lo, hi = int(crow[r]), int(crow[r + 1])
        if hi == lo:
            continue
        cols, wanted = col[lo:hi], targets[a].to(col.device)
        at = torch.searchsorted(cols, wanted.clamp(min=0)).clamp(max=hi - lo - 1)
        hit = (cols[at] == wanted) & (wanted >= 0)
        out[a] = torch.where(hit, values[lo:hi][at], out.new_zeros(()))
    return out


def _neighbour_targets(rows, offsets, wraps, shape) -> torch.Tensor:
    """Flat index of x[row's index + offset] for each row and offset (-1 past an edge)."""
    index = torch.stack(torch.unravel_index(rows.cpu(), shape), 1)  # rows × axes
    shifted = index[:, None, :] + torch.tensor(offsets)[None]  # rows × offsets × axes
    sizes = torch.tensor(shape)
    wrapped = torch.tensor(wraps)
    shifted = torch.where(wrapped, torch.remainder(shifted, sizes), shifted)
    inside = ((shifted >= 0) & (shifted < sizes)).all(-1)
    strides = torch.tensor([math.prod(shape[k + 1:]) for k in range(len(shape))])
    flat = (shifted.clamp(min=0) * strides).sum(-1)
    return torch.where(inside, flat, torch.full_like(flat, -1))


def values_block(result, name: str) -> tuple[Block, list]:
    """The nonzero values as a matrix, with its caption: for a stencil a row per entry of the
    output and a column per offset (the diagonals); else the m × n Jacobian, looked up."""
    sparse = sparse_of(result, name)
    item = result.inputs[name]
    shape, out_shape = tuple(item.shape), tuple(result.output.shape)
    found = layout_of(sparse, out_shape, shape)
    matrix, y = sparse.matrix, output_symbol(result)
    m, n = matrix.shape
    rows_label = notation.entry_label(y, out_shape) if out_shape else None
    if found.offsets is not None:
        offsets, letters = found.offsets, notation.point_letters(len(shape))

        def diagonals(rows, cols):
            targets = _neighbour_targets(rows, [offsets[int(c)] for c in cols], found.wraps,
                                         shape)
            return _lookup(matrix, rows, targets)

        def column(c: int) -> Entry:  # plain counted as typeset: TeX spaces i − 1
            tex = notation.tensor_entry(name, _offset_index(letters, offsets[c], ",")).tex
            plain = notation.tensor_entry(name, _offset_index(letters, offsets[c], ", ", True))
            return type(plain)(tex, plain.plain)

        caption = [Text("The nonzeros: a row per entry of "), notation.prose_name(y),
                   Text(", a column per offset (0 past an edge).")]
        return Block(diagonals, m, len(offsets), matrix.device, rows_label, column), caption
    return _first_rows(result, name, sparse, rows_label)


FIRST_ROWS = 6  # rows of a pattern that is no stencil shown at the columns they read


def _first_rows(result, name: str, sparse, rows_label,
                rows: int = FIRST_ROWS) -> tuple[Block, list]:
    """The first ``rows`` rows of the Jacobian at the columns those rows read (every other
    entry of them is 0): a small dense matrix, however large the Jacobian."""
    matrix = sparse.matrix
    crow, col = matrix.crow_indices(), matrix.col_indices()
    m, n = matrix.shape
    shown = max(1, min(m, rows))
    cols = torch.unique(col[: int(crow[shown])]).cpu()
    if cols.numel() == 0:
        cols = torch.zeros(1, dtype=torch.long)
    shape = tuple(result.inputs[name].shape)
    x_label = notation.entry_label(name, shape) if shape else None

    def entries(r, c):
        return csr_block(matrix, r, cols[c.cpu()])  # the same columns in every row

    def column(k: int) -> Entry:
        return x_label(int(cols[k])) if x_label else Entry(notation.name_tex(name), name)

    caption = [Text(f"The first {shown:,} of {m:,} rows (flattened), at the entries of "),
               notation.prose_name(name),
               Text(f" they read; all {entries_words(sparse, 'nonzeros', 'entries')}: "),
               Code(f"r.jacobian({name!r}, layout=torch.sparse_csr)"), Text(".")]
    return Block(entries, shown, len(cols), matrix.device, rows_label, column), caption


def _rows_in_width(result, name: str, options, lhs: Math) -> tuple[Block, list]:
    """The first rows (:data:`FIRST_ROWS` at most) of a pattern that is no stencil (nor
    :func:`_strided`) whose columns all fit the line: a column the width cuts would leave a
    row it holds shown as zeros, which its derivatives are not."""
    from .matrix import HDOTS, layout, reserve

    sparse = sparse_of(result, name)
    out_shape = tuple(result.output.shape)
    label = notation.entry_label(output_symbol(result), out_shape) if out_shape else None
    probe = replace(options, fit=replace(fit_of(options), plan=None))  # (no plan noted)
    for rows in range(min(FIRST_ROWS, sparse.matrix.shape[0]), 1, -1):
        block, caption = _first_rows(result, name, sparse, label, rows)
        matrix = layout(notation.left_labels(block), probe, sparse.matrix.dtype,
                        reserved=reserve(lhs))  # (labelled as formula labels it)
        if all(entry != HDOTS for row in matrix.rows[:1] for entry in row):
            return block, caption
    return _first_rows(result, name, sparse, label, 1)


def _strided(result, name: str, sparse, rows_label) -> tuple[Block, list] | None:
    """Where every row i of the Jacobian (a 1-D output's entry i) reads the entries
    ``a·i + b_k`` of a 1-D input (the same offsets ``b_k``, one stride ``a`` > 1: y[i] reads
    x[3i], x[3i+1], x[3i+2]): its nonzeros as an m × (offsets) matrix, a column per offset,
    and the caption; else None."""
    matrix = sparse.matrix
    shape = tuple(result.inputs[name].shape)
    m, n = matrix.shape
    crow, col = matrix.crow_indices().cpu(), matrix.col_indices().cpu()
    if len(shape) != 1 or result.output.dim() != 1 or m < 2 or col.numel() == 0:
        return None
    per_row = int(crow[1] - crow[0])
    if per_row == 0 or col.numel() != m * per_row or bool((crow.diff() != per_row).any()):
        return None
    cols = col.reshape(m, per_row)
    stride = int(cols[1, 0] - cols[0, 0])
    if stride < 2:  # (a stride of 1 is a band: said as one)
        return None
    offsets = cols[0]
    expected = offsets[None, :] + stride * torch.arange(m)[:, None]
    if not bool((cols == expected).all()):
        return None
    values = matrix.values().reshape(m, per_row)
    letter = "i"

    def column(k: int) -> Entry:
        b = int(offsets[k])
        index = f"{stride}{letter}" + (f" + {b}" if b else "")
        return notation.tensor_entry(name, index)

    y = output_symbol(result)
    reads = ", ".join(column(k).plain for k in range(min(per_row, 3)))
    caption = [Text("The nonzeros: a row per entry of "), notation.prose_name(y),
               Text(", a column per entry of "), notation.prose_name(name),
               Text(f" it reads ({y}[{letter}] reads {reads}{', …' if per_row > 3 else ''}); "
                    "every other derivative is 0.")]
    block = Block(lambda r, c: values[r[:, None], c[None, :]], m, per_row, values.device,
                  rows_label, column)
    return block, caption


def value_formulas(result, name: str, options) -> list[Formula]:
    """The nonzero values summarised to fit the width and height budgets: a column per offset
    for a stencil or a strided pattern (every row shown with what it reads), else the first
    rows at the columns they read."""
    from .sections import formula  # the one way a matrix is laid out on its line

    sparse = sparse_of(result, name)
    y = output_symbol(result)
    stencil = layout_of(sparse, result.output.shape,
                        result.inputs[name].shape).offsets is not None
    out_shape = tuple(result.output.shape)
    strided = None if stencil else _strided(
        result, name, sparse, notation.entry_label(y, out_shape) if out_shape else None)
    by_offset = stencil or strided is not None  # a column per offset: ∂y/∂x, no j
    lhs = notation.left_side(notation.partial(y, name) if by_offset else  # (rows fit to it)
                             notation.partial(y, name, "i", "j"))
    block, caption = (values_block(result, name) if stencil else strided if by_offset else
                      _rows_in_width(result, name, options, lhs))
    fit = fit_of(options)
    if not by_offset and not fit.extras:  # a short screen: the pointer alone
        caption = [Text(f"{block.nrows:,} of {result.output.numel():,} rows; all in "),
                   Code(f"r.jacobian({name!r}, layout=torch.sparse_csr)"), Text(".")]
    elif by_offset and not fit.sensitivity:  # shorter still: the column labels say it
        caption = []
    return [formula(lhs, block, options, sparse_of(result, name).matrix.dtype, caption=caption)]


def sparse_blocks(result, name: str, options, explained: bool = False,
                  jacobian: bool = False, freed: tuple[str, ...] = ()) -> list:
    """The whole display of one input computed by compressed passes: its points (where it
    has them: the values from the colours), the pattern in words, v (unless ``--explain``
    says it above), the code, the nonzero values (``jacobian``, ``%jacobian``: then the
    m × n Jacobian itself, summarised, looked up in the CSR; at the last
    :data:`.budget.LEVELS`, where nothing else fits one screen: a pointer to them);
    ``freed``: the lines the code starts with, the cell's backward having freed the graph.
    On a short screen the code's comment lines go before the values do (it runs alike)."""
    blocks: list = [pattern_paragraph(result, name), *_findings(result, name, options)]
    if result.inputs[name].has_points:  # a large batch of stencils: its points first
        from .sections import headline

        blocks.insert(0, headline(result, name))
    if not explained:
        blocks.append(colour_paragraph(result, name, options))
    code = colour_code(result, name, freed)
    if not fit_of(options).extras:  # a short screen: its own comment lines go (not freed's)
        lines = code.splitlines(keepends=True)
        first = sum(line.count("\n") + 1 for line in freed)
        code = "".join(lines[:first] + [line for line in lines[first:]
                                         if not line.lstrip().startswith("#")])
    blocks.append(CodeBlock(code))
    if jacobian:
        from .sections import jacobian_formulas  # the full Jacobian, as %jacobian shows it

        return blocks + jacobian_formulas(result, name, options)
    if fit_of(options).components == 1:  # the last resort of a short screen: a pointer
        return blocks + [paragraph(f"Its {entries_words(sparse_of(result, name))} are in ",
                                   Code(f"r.jacobian({name!r}, layout=torch.sparse_csr)"),
                                   " (too tall to show here).")]
    return blocks + value_formulas(result, name, options)


SAID_IN_FULL = ("diagonal", "tridiagonal", "band", "5-point stencil")  # no finding adds to them


def _findings(result, name: str, options) -> list:
    """Where a pairing of axes was rejected and the words do not say all (a leak, a generic
    stencil or pattern): the findings' sentence on where it broke, without its "the
    derivatives below are the full Jacobian" (they are its nonzeros here)."""
    found = layout_of(sparse_of(result, name), result.output.shape,
                      result.inputs[name].shape)
    if not result.inputs[name].rejected or found.kind in SAID_IN_FULL or found.mostly:
        return []  # (a stencil but for a few rows: the words name them)
    said = []
    found = remembered(options, ("sparse findings", name),  # (once per fitting, not per level)
                       lambda: structure_findings(result, name, options))
    for block in found:
        last = block.spans[-1] if isinstance(block, Paragraph) and block.spans else None
        if isinstance(last, Text) and last.text.startswith("; the derivatives below are"):
            block = Paragraph(block.spans[:-1] + (Text("."),), block.strong)
        said.append(block)
    return said


# -- r.code ----------------------------------------------------------------------------------
def sparse_code(result) -> str | None:
    """``r.code`` where some input's Jacobian was computed by compressed passes (its coloured
    passes: :func:`~vjp_magic.render.sparse_code.coloured_lines`); None where none was."""
    if not any(sparse_of(result, name) is not None for name in result.inputs):
        return None
    from .codegen import reproducing_code  # (it writes each coloured input's passes)

    return reproducing_code(result)
