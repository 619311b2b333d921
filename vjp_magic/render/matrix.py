"""Matrices laid out to fit: summarised by count and by a width budget, one number format each.

Only the entries shown ever leave the device (:func:`fetch_block`), so laying out a derivative
of 10⁶ entries costs what laying out one of 50 does.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .document import Entry, Math, Matrix
from .numbers import NumberFormat, alone, choose_format, resolution, significant_digits
from .options import RenderOptions
from .typeset import BRACKETS, COLUMN_GAP, text_width

ELLIPSIS = None  # marks an elided run of rows or columns in an index list
HDOTS = Entry(r"\cdots", "...")
VDOTS = Entry(r"\vdots", ":")
DDOTS = Entry(r"\ddots", "...")
BLANK = Entry("", "")
# Widths are counted characters, estimated as MathJax / KaTeX set them (render/typeset.py).
LHS_RESERVE = 12  # characters a display line spends outside the matrix: "f'(x^(i)) = "
MIN_DIGITS = 3  # the width budget takes digits away down to this, before columns

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


def _edges(indices: list[int | None], edge: int) -> list[int | None]:
    """The same summary with ``edge`` items at each end (a subset of ``indices``)."""
    shown = [i for i in indices if i is not None]
    if len(shown) <= 2 * edge + 1 and ELLIPSIS not in indices:
        return indices
    return shown[:edge] + [ELLIPSIS] + shown[-edge:]


@dataclass
class _Grid:
    """The fetched entries, addressed by (row index, column index)."""

    values: dict[tuple[int, int], float]

    def format(self, rows, cols, digits, eps) -> NumberFormat:
        return choose_format((self.values[r, c] for r in rows if r is not None
                              for c in cols if c is not None), digits, eps)


def _matrix(block: Block, grid: _Grid, rows, cols, fmt: NumberFormat) -> Matrix:
    body = []
    for r in rows:
        if r is None:
            body.append(tuple(DDOTS if c is None else VDOTS for c in cols))
        else:
            body.append(tuple(HDOTS if c is None else fmt.spell(grid.values[r, c]) for c in cols))
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
    total = sum(max(text_width(e.plain) for e in col) for col in columns)
    total += COLUMN_GAP * max(0, len(columns) - 1) + BRACKETS
    if matrix.row_labels is not None:
        total += max((text_width(e.plain) for e in matrix.row_labels), default=0) + COLUMN_GAP
    if matrix.factor is not None:
        total += text_width(f"10^{matrix.factor} × ")
    return total


def reserve(lhs: Math, suffix: Math | None = None) -> float:
    """Counted characters of a display line outside its matrix: ``lhs = `` and the suffix."""
    return text_width(lhs.plain + " = ") + (text_width(suffix.plain) + 1 if suffix else 0)


def layout(block: Block, options: RenderOptions, dtype: torch.dtype, *,
           reserved: int = LHS_RESERVE) -> Matrix:
    """The block summarised by count (threshold, edge items) and by ``options.width``.

    ``reserved``: characters the line spends outside the matrix (:func:`reserve`). While the
    line is too wide, digits go first (down to :data:`MIN_DIGITS`), then columns (fewer at each
    edge, down to one); each step chooses the number format again from the entries shown.
    """
    digits, eps = significant_digits(dtype, options.precision), resolution(dtype)
    rows = summary_indices(block.nrows, options.threshold, options.edgeitems)
    cols = summary_indices(block.ncols, options.threshold, options.edgeitems)
    values = fetch_block(block.get_block, rows, cols, block.device)
    shown_rows = [r for r in rows if r is not None]
    shown_cols = [c for c in cols if c is not None]
    grid = _Grid({(r, c): v for r, row in zip(shown_rows, values)
                  for c, v in zip(shown_cols, row)})
    if block.scalar:
        fmt = alone(grid.format(rows, cols, digits, eps))
        return _matrix(block, grid, rows, cols, fmt)
    budget = options.width - reserved
    edge = (len(shown_cols) + 1) // 2
    while True:
        matrix = _matrix(block, grid, rows, cols, grid.format(rows, cols, digits, eps))
        if width(matrix) <= budget or (edge <= 1 and digits <= MIN_DIGITS):
            return matrix
        if digits > MIN_DIGITS:  # a digit less costs less than a column hidden
            digits -= 1
        else:
            edge -= 1
            cols = _edges(cols, edge)
