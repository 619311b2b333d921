"""Matrices laid out to fit: summarised by count and by a width budget, one number format each.

Rows past ``threshold`` keep ``edgeitems`` at each end (fewer where the height budget asks,
:mod:`.budget`); columns past it too, and then as many of those as the width budget holds,
one at a time from the middle. Within one output, matrices of one shape are laid out alike
(:class:`Plan`): the same columns and digits, the shape beside or beneath all of them.
``--full-matrix`` shows a small matrix whole, in column blocks stacked vertically
(:func:`column_blocks`).

Only the entries shown ever leave the device (:func:`fetch_block`), so laying out a derivative
of 10⁶ entries costs what laying out one of 50 does.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .document import Entry, Math, Matrix
from .numbers import NEAR_ZERO, NumberFormat, alone, choose_format, resolution, significant_digits
from .options import FULL_MATRIX_ENTRIES, RenderOptions
from .typeset import BRACKETS, COLUMN_GAP, SCRIPT_SCALE, mono_width, text_width

ELLIPSIS = None  # marks an elided run of rows or columns in an index list
HDOTS = Entry(r"\cdots", "...")
VDOTS = Entry(r"\vdots", ":")
DDOTS = Entry(r"\ddots", "...")
BLANK = Entry("", "")
# Widths are counted characters, estimated as MathJax / KaTeX set them (render/typeset.py).
LHS_RESERVE = 12  # characters a display line spends outside the matrix: "f'(x^(i)) = "
MIN_DIGITS = 3  # the width budget takes digits away down to this, before columns
MIN_COLUMNS = 2  # the width budget keeps the first and the last column at least

Label = Callable[[int], Entry]


@dataclass
class Block:
    """One 2-D matrix to draw: ``get_block(rows, cols)`` gives the entries at two index tensors
    (shape ``(len(rows), len(cols))``); ``row_label`` / ``col_label`` name row i / column j."""

    get_block: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    nrows: int
    ncols: int
    device: torch.device | str = "cpu"
    row_label: Label | None = None
    col_label: Label | None = None
    scalar: bool = False
    # each entry stands alone (a point's own derivative of a scalar function: no other entry
    # sums into it), so none reads 0 for being small beside the largest (no noise floor)
    alone: bool = False
    # the entries within their own row's noise (each row a backward of its own), at two index
    # tensors as ``get_block``: they read ≈0 and do not choose the format
    near_zero: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None


def tensor_block(t: torch.Tensor, row_label: Label | None = None,
                 col_label: Label | None = None) -> Block:
    """A tensor as a matrix: 0-d a scalar, 1-d one row, k-d (all leading axes) × last axis."""
    if t.dim() == 0:
        return Block(lambda r, c: t.reshape(1, 1), 1, 1, t.device, scalar=True)
    cols = t.shape[-1]
    rows = t.numel() // cols if cols else 0
    flat = t.reshape(rows, cols)
    # gather the asked entries only (flat[r][:, c] would copy whole rows first)
    return Block(lambda r, c: flat[r[:, None], c[None, :]], rows, cols, t.device, row_label,
                 col_label)


def _noise(block: Block, dtype: torch.dtype) -> float:
    """The relative size below which an entry reads 0 beside the largest: the dtype's
    resolution, none for a block whose entries stand alone."""
    return 0.0 if block.alone else resolution(dtype)


def multi_index(flat: int, shape: Sequence[int]) -> tuple[int, ...]:
    """Row-major multi-index of ``flat`` within ``shape`` (``np.unravel_index``, as ints)."""
    return tuple(int(i) for i in np.unravel_index(flat, tuple(shape)))


def summary_indices(size: int, threshold: int, edgeitems: int) -> list[int | None]:
    """``[0, 1, 2, None, n-3, n-2, n-1]`` past ``threshold`` entries, else all indices."""
    if size <= threshold:
        return list(range(size))
    edge = max(1, min(edgeitems, size // 2))
    return list(range(edge)) + [ELLIPSIS] + list(range(size - edge, size))


def fetch_block(get_block, rows: Sequence[int | None], cols: Sequence[int | None],
                device) -> list[list[float]]:
    """Values of the shown rows and columns only (the only part copied to the CPU)."""
    row_index = torch.tensor([r for r in rows if r is not None], dtype=torch.long, device=device)
    col_index = torch.tensor([c for c in cols if c is not None], dtype=torch.long, device=device)
    if row_index.numel() == 0 or col_index.numel() == 0:
        return [[] for _ in row_index]
    return get_block(row_index, col_index).detach().to("cpu", torch.float64).tolist()


def keep_columns(indices: list[int | None], count: int) -> list[int | None]:
    """``count`` of the shown indices: the first ``ceil(count / 2)`` and the last
    ``floor(count / 2)``, dots between them where any are left out (a subset of ``indices``)."""
    shown = [i for i in indices if i is not None]
    if count >= len(shown):
        return indices
    head = (count + 1) // 2
    return shown[:head] + [ELLIPSIS] + shown[len(shown) - (count - head):]


COVER_COLUMNS = 4096  # up to this many columns, a row shown keeps one of its nonzeros


def covering(block: Block, rows: Sequence[int | None], shown: list[int | None],
             values: dict[tuple[int, int], float]) -> list[int | None]:
    """``shown`` (a summary of the block's columns), changed where a row shown would read
    all zeros while it has a nonzero among the columns left out (a block-diagonal J cut to
    its first and last columns: the middle point's rows): such a row gets its first nonzero
    column, in place of a column no row needs (nearest the middle), or beside them where
    every one is needed. Dots mark each run left out. ``values``: the entries of the rows
    shown at the columns shown (fetched already); only a row all zero there is fetched
    whole, and only up to :data:`COVER_COLUMNS` columns."""
    kept = [c for c in shown if c is not None]
    row_ids = [r for r in rows if r is not None]
    if len(kept) >= block.ncols or block.scalar or block.ncols > COVER_COLUMNS:
        return shown
    zero = [r for r in row_ids if all(values[r, c] == 0 for c in kept)]
    if not zero:
        return shown
    every = torch.arange(block.ncols, device=block.device)
    whole = block.get_block(torch.tensor(zero, dtype=torch.long, device=block.device), every)
    first = [int(nz[0]) for nz in (row.nonzero().reshape(-1) for row in whole.detach().cpu())
             if nz.numel()]
    added = sorted(set(first) - set(kept))
    if not added:
        return shown
    extra = fetch_block(block.get_block, row_ids, added, block.device)
    nonzero = {(r, c): values[r, c] != 0 for r in row_ids for c in kept}
    nonzero.update({(r, c): v != 0 for r, row in zip(row_ids, extra) for c, v in zip(added, row)})

    def covered(columns) -> set[int]:
        return {r for r in row_ids if any(nonzero[r, c] for c in columns)}

    chosen = list(kept)
    for c in added:
        chosen = sorted(chosen + [c])
        need = covered(chosen)
        centre = (len(chosen) - 1) / 2
        for d in sorted(chosen[1:-1], key=lambda d: abs(chosen.index(d) - centre)):
            if d in added:
                continue
            rest = [k for k in chosen if k != d]
            if covered(rest) >= need:  # no row loses its last nonzero shown
                chosen = rest
                break
    out: list[int | None] = []
    for k, c in enumerate(chosen):
        if k and c != chosen[k - 1] + 1:
            out.append(ELLIPSIS)
        out.append(c)
    return out


# -- one layout per shape within an output ---------------------------------------------------
@dataclass
class Decision:
    """How every matrix of one shape is laid out in one output."""

    columns: int  # shown columns (of the count summary's)
    digits: int
    beside: bool = True  # the tensor's shape beside the matrix (else beneath it)
    asked: int = 0  # the digits asked (the precision, capped by the dtype): more than
    # ``digits`` where the width cut them (:func:`cut_digits`)


@dataclass
class Plan:
    """The layout decisions of one output, made in two passes: ``collecting``, each matrix
    notes its own best layout; then every matrix of a shape takes the narrowest of them (the
    fewest columns and digits, the shape beneath if any put it there), and an output where
    any matrix is written in positional notation writes every matrix so where the magnitudes
    allow it (:func:`.numbers.choose_format`'s ``fixed_low``)."""

    collecting: bool = True
    decisions: dict = field(default_factory=dict)
    fixed: bool = False  # some matrix of the output is in positional notation
    other: bool = False  # some matrix of the output is not
    differs: bool = False  # some decision was narrowed: the second pass changes the output

    def note(self, key, decision: Decision, fixed: bool) -> None:
        self.fixed |= fixed
        self.other |= not fixed
        self.differs |= self.fixed and self.other
        old = self.decisions.get(key)
        if old is None:
            self.decisions[key] = decision
            return
        merged = Decision(min(old.columns, decision.columns), min(old.digits, decision.digits),
                          old.beside and decision.beside, max(old.asked, decision.asked))
        self.differs |= merged != old or merged != decision
        self.decisions[key] = merged

    def decided(self, key) -> Decision | None:
        return None if self.collecting else self.decisions.get(key)


def cut_digits(options: RenderOptions) -> tuple[int, int, bool] | None:
    """Where the width cut the digits of a matrix of this output (laid out with the options'
    :class:`Plan`): (the fewest digits shown, the most asked, whether every such matrix has
    at most :data:`.options.FULL_MATRIX_ENTRIES` entries, so ``--full-matrix`` shows them
    all); None where none was cut."""
    plan = plan_of(options)
    if plan is None or options.full_matrix:
        return None
    cut = [(key, d) for key, d in plan.decisions.items() if d.digits < d.asked]
    if not cut:
        return None
    return (min(d.digits for _, d in cut), max(d.asked for _, d in cut),
            all(rows * cols <= FULL_MATRIX_ENTRIES for (rows, cols), _ in cut))


def plan_of(options: RenderOptions) -> Plan | None:
    """The output's plan, carried by its options (:mod:`.budget`), or None."""
    fit = getattr(options, "fit", None)
    return getattr(fit, "plan", None)


def row_indices(nrows: int, options: RenderOptions) -> list[int | None]:
    """The rows shown: all up to ``threshold``, else ``edgeitems`` at each end; where the
    height budget asks for ``r`` rows at each edge (:mod:`.budget`), a matrix of more than
    ``2r + 1`` rows is summarised to them."""
    rows = edge_rows(options)
    threshold = options.threshold if rows == options.edgeitems else min(options.threshold,
                                                                          2 * rows + 1)
    return summary_indices(nrows, threshold, rows)


def edge_rows(options: RenderOptions) -> int:
    """Rows kept at each edge of a summarised matrix: ``edgeitems``, fewer where the height
    budget asks (:mod:`.budget`)."""
    fit = getattr(options, "fit", None)
    rows = getattr(fit, "rows", None)
    return options.edgeitems if rows is None else max(1, min(options.edgeitems, rows))


@dataclass
class _Grid:
    """The fetched entries, addressed by (row index, column index)."""

    values: dict[tuple[int, int], float]
    near: frozenset = frozenset()  # (row, column) of the entries that read ≈0 (Block.near_zero)

    def format(self, rows, cols, digits, eps, fixed_low=None) -> NumberFormat:
        return choose_format((0.0 if (r, c) in self.near else self.values[r, c]
                              for r in rows if r is not None
                              for c in cols if c is not None), digits, eps, fixed_low)

    def spell(self, fmt: NumberFormat, r: int, c: int) -> Entry:
        return NEAR_ZERO if (r, c) in self.near else fmt.spell(self.values[r, c])


def _matrix(block: Block, grid: _Grid, rows, cols, fmt: NumberFormat) -> Matrix:
    body = []
    for r in rows:
        if r is None:
            body.append(tuple(DDOTS if c is None else VDOTS for c in cols))
        else:
            body.append(tuple(HDOTS if c is None else grid.spell(fmt, r, c) for c in cols))
    row_labels = (tuple(VDOTS if r is None else block.row_label(r) for r in rows)
                  if block.row_label is not None else None)
    col_labels = (tuple(HDOTS if c is None else block.col_label(c) for c in cols)
                  if block.col_label is not None else None)
    return Matrix(tuple(body), row_labels, col_labels, fmt.factor, block.scalar)


def width(matrix: Matrix) -> float:
    """Counted characters the matrix takes on a display line, as MathJax or KaTeX set it."""
    columns = list(zip(*matrix.rows)) if matrix.rows else []
    if matrix.col_labels is not None:
        columns = [col + (label,) for col, label in zip(columns, matrix.col_labels)]
    total = sum(max(entry_width(e) for e in col) for col in columns)
    total += COLUMN_GAP * max(0, len(columns) - 1) + BRACKETS
    if matrix.row_labels is not None:
        labels = matrix.row_labels + ((matrix.corner,) if matrix.corner is not None else ())
        total += max((entry_width(e) for e in labels), default=0) + COLUMN_GAP
    if matrix.factor is not None:
        total += text_width(f"10^{matrix.factor} × ")
    return total


_SCRIPT = re.compile(r"[_^](\([^()]*\)|[\w,]+)")


def _scripted_width(plain: str) -> float:
    """``text_width`` with subscripts and superscripts (``_1``, ``^(i)``) at script size and
    ``grad`` as the ∇ it spells."""
    plain = plain.replace("grad ", "∇")
    scripts = [m.group(1) for m in _SCRIPT.finditer(plain)]
    base = _SCRIPT.sub("", plain)
    return text_width(base) + SCRIPT_SCALE * sum(text_width(s) for s in scripts)


def entry_width(entry: Entry) -> float:
    """Counted characters of one entry as typeset: ``m × 10^{e}`` (plain ``me-05``) as the
    mantissa, a times sign, 10 and a script exponent; else its plain spelling."""
    if "10^{" not in entry.tex or "e" not in entry.plain:
        return text_width(entry.plain)
    mantissa, _, exponent = entry.plain.partition("e")
    base = mantissa[:-1] + "10" if mantissa in ("1", "-1") else mantissa + " × 10"
    return text_width(base) + SCRIPT_SCALE * text_width(str(int(exponent)))


def lhs_width(lhs: Math) -> float:
    """Counted characters of a formula's left side: scripts at script size, a name set in
    monospace (``\\mathtt``) at its own width, and a fraction (``∂y_0/∂x``, TeX ``\\frac``) as
    wide as its wider part, set one over the other."""
    names = [_mono_text(body) for body in _MONO.findall(lhs.tex)]
    parts = lhs.plain.split("/") if r"\frac" in lhs.tex and lhs.plain.count("/") == 1 else [
        lhs.plain]
    return max(_scripted_width(part) + sum(mono_width(name) - text_width(name)
                                           for name in names if name in part)
               for part in parts)


_MONO = re.compile(r"\\mathtt\{((?:[^{}]|\{[^{}]*\})*)\}")
_MONO_CHARACTER = re.compile(r"\\text\{.\}|\\phantom\{0\}|\\[A-Za-z]+\{\}|\{\\[A-Za-z]+\}"
                             r"|\{.\}|\\.|.")


def _mono_text(body: str) -> str:
    """The characters a ``\\mathtt{…}`` body of :func:`.notation.mono` sets, one a character:
    its escapes (``{.}``, ``\\_``, ``\\phantom{0}``, a Greek macro) read back."""
    return "".join(c if len(c) == 1 else c[1] if c[0] in "{\\" and len(c) == 2 else
                   c[1:-1] if c.startswith("{") and len(c) == 3 else "x"
                   for c in _MONO_CHARACTER.findall(body))


def reserve(lhs: Math, suffix: Math | None = None) -> float:
    """Counted characters of a display line outside its matrix: ``lhs = `` and the suffix."""
    return lhs_width(lhs) + text_width(" = ") + (text_width(suffix.plain) + 1 if suffix else 0)


def _grid(block: Block, rows, cols) -> _Grid:
    values = fetch_block(block.get_block, rows, cols, block.device)
    shown_rows = [r for r in rows if r is not None]
    shown_cols = [c for c in cols if c is not None]
    near = fetch_block(block.near_zero, rows, cols, block.device) if block.near_zero else []
    return _Grid({(r, c): v for r, row in zip(shown_rows, values)
                  for c, v in zip(shown_cols, row)},
                 frozenset((r, c) for r, row in zip(shown_rows, near)
                           for c, v in zip(shown_cols, row) if v))


def _search(block: Block, options: RenderOptions, dtype: torch.dtype, reserved: float,
            fixed_low: int | None) -> tuple[Matrix, Decision, bool]:
    """The widest layout that fits: while the line is too wide, digits go first (down to
    :data:`MIN_DIGITS`), then columns, one at a time from the middle (down to
    :data:`MIN_COLUMNS`); each step chooses the number format again from the entries shown.
    Returns the matrix, its decision and whether it is in positional notation."""
    digits, eps = significant_digits(dtype, options.precision), _noise(block, dtype)
    asked = digits
    rows = row_indices(block.nrows, options)
    cols = summary_indices(block.ncols, options.threshold, options.edgeitems)
    grid = _grid(block, rows, cols)
    if block.scalar:
        fmt = alone(grid.format(rows, cols, digits, eps))
        return _matrix(block, grid, rows, cols, fmt), Decision(1, digits, asked=asked), True
    budget = options.width - reserved
    count = sum(c is not None for c in cols)
    while True:
        shown = covering(block, rows, keep_columns(cols, count), grid.values)
        if any(c is not None and c not in cols for c in shown):  # a row's nonzero, added
            grid = _grid(block, rows, sorted({c for c in (*cols, *shown) if c is not None}))
        fmt = grid.format(rows, shown, digits, eps, fixed_low)
        matrix = _matrix(block, grid, rows, shown, fmt)
        if width(matrix) <= budget or (count <= MIN_COLUMNS and digits <= MIN_DIGITS):
            return matrix, Decision(count, digits, asked=asked), \
                not fmt.scientific and fmt.factor is None
        if digits > MIN_DIGITS:  # a digit less costs less than a column hidden
            digits -= 1
        else:
            count -= 1


def _decided(block: Block, options: RenderOptions, dtype: torch.dtype, decision: Decision,
             fixed_low: int | None) -> Matrix:
    """The block laid out as its shape's decision says (the plan's second pass)."""
    digits, eps = significant_digits(dtype, options.precision), _noise(block, dtype)
    rows = row_indices(block.nrows, options)
    cols = keep_columns(summary_indices(block.ncols, options.threshold, options.edgeitems),
                        decision.columns)
    grid = _grid(block, rows, cols)
    covered = covering(block, rows, cols, grid.values)
    if covered != cols:  # a row's nonzero, added
        cols, grid = covered, _grid(block, rows, covered)
    fmt = grid.format(rows, cols, min(digits, decision.digits), eps, fixed_low)
    return _matrix(block, grid, rows, cols, alone(fmt) if block.scalar else fmt)


# Where an output has a matrix in positional notation, the others are written so too down to
# entries of 10^-7 (0.0000001234) rather than switching to m × 10^e (numbers.choose_format).
FIXED_LOW_BESIDE_FIXED = -7


def layout_beside(block: Block, options: RenderOptions, dtype: torch.dtype, lhs: Math,
                  suffix: Math | None = None,
                  shows_shape: Callable[[Matrix], bool] = lambda m: False
                  ) -> tuple[Matrix, bool]:
    """The block laid out on the line ``lhs = matrix``, and whether ``suffix`` (the tensor's
    shape, None: none to show) goes beside the matrix: where it costs no column and the matrix
    does not show the shape by itself (``shows_shape``). Matrices of one shape in one output
    are laid out alike (the options' :class:`Plan`)."""
    plan, key = plan_of(options), (block.nrows, block.ncols)
    fixed_low = FIXED_LOW_BESIDE_FIXED if plan is not None and plan.fixed else None
    decided = plan.decided(key) if plan is not None else None
    if decided is not None:
        return _decided(block, options, dtype, decided, fixed_low), decided.beside
    matrix, decision, fixed = _search(block, options, dtype, reserve(lhs), fixed_low)
    if suffix is not None and not shows_shape(matrix):
        wider = reserve(lhs, suffix)
        narrow, narrowed, narrow_fixed = _search(block, options, dtype, wider, fixed_low)
        decision.beside = (narrowed.columns == decision.columns
                           and width(narrow) + wider <= options.width)
        if decision.beside:
            matrix, decision, fixed = narrow, narrowed, narrow_fixed
    if plan is not None:
        plan.note(key, decision, fixed)
    return matrix, decision.beside


def layout(block: Block, options: RenderOptions, dtype: torch.dtype, *,
           reserved: float = LHS_RESERVE) -> Matrix:
    """The block summarised by count (threshold, edge items) and by ``options.width``
    (``reserved``: characters the line spends outside the matrix, :func:`reserve`), laid out
    as the other matrices of its shape in the output are (:func:`layout_beside`)."""
    plan, key = plan_of(options), (block.nrows, block.ncols)
    fixed_low = FIXED_LOW_BESIDE_FIXED if plan is not None and plan.fixed else None
    decided = plan.decided(key) if plan is not None else None
    if decided is not None:
        return _decided(block, options, dtype, decided, fixed_low)
    matrix, decision, fixed = _search(block, options, dtype, reserved, fixed_low)
    if plan is not None:
        plan.note(key, decision, fixed)
    return matrix


# -- --full-matrix: every entry, in column blocks ---------------------------------------------
def column_blocks(block: Block, options: RenderOptions, dtype: torch.dtype, *,
                  reserved: float = LHS_RESERVE) -> list[tuple[range, Matrix]]:
    """Every entry of ``block``: one matrix, or where it is wider than ``options.width``, the
    fewest column blocks of about equal width that fit (each with its row labels), in one
    number format: ``[(columns, matrix), ...]``."""
    digits, eps = significant_digits(dtype, options.precision), _noise(block, dtype)
    rows, cols = list(range(block.nrows)), list(range(block.ncols))
    grid = _grid(block, rows, cols)
    fmt = grid.format(rows, cols, digits, eps)
    if block.scalar:
        return [(range(1), _matrix(block, grid, rows, cols, alone(fmt)))]
    budget = options.width - reserved
    for count in range(1, block.ncols + 1):
        size = math.ceil(block.ncols / count)
        parts = [range(start, min(start + size, block.ncols))
                 for start in range(0, block.ncols, size)]
        matrices = [_matrix(block, grid, rows, list(part), fmt) for part in parts]
        if all(width(m) <= budget for m in matrices) or size == 1:
            return list(zip(parts, matrices))
    raise AssertionError("unreachable: one column per block always ends the search")
