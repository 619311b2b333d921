"""``--picture`` for a Jacobian computed by compressed passes: its nonzero pattern, each row
coloured by its backward pass, beside the compressed matrix (one row a colour: vᵀJ for the v
of that colour, count × n), where every nonzero of the pattern lands in its colour's row.

Both are read off the CSR index arrays (never densified), one cell an entry, whatever the
size: the first :data:`WINDOW` rows at the columns they read, and the compressed matrix at
those columns. A result computed by columns (forward-mode passes) colours each nonzero by its
column's colour, and its compressed matrix is J·U (those rows × count): column c is J·u for
the u of colour c.
Drawn with matplotlib (the ``[plot]`` extra) as :mod:`.picture` draws, imported lazily.
"""
from __future__ import annotations

import io
import struct

import torch

from .codegen import output_symbol
from .picture import DPI, MISSING, WIDTH, Picture, _escaped
from .sparse import by_columns, kind_name, kind_words, layout_of, sparse_of

PALETTE = ("#1f4e8c", "#d1495b", "#edae49", "#00798c", "#66a182", "#8d96a3", "#6a4c93",
           "#e07a5f", "#3d405b", "#81b29a")  # colour c is PALETTE[c % 10]


WINDOW = 40  # rows pictured, from the first: each nonzero a cell of its own
MAX_COLUMNS = 160  # columns pictured at most


def coloured_cells(sparse, rows: int = WINDOW) -> tuple[torch.Tensor, torch.Tensor]:
    """(pattern, compressed), int cells, 0 empty, c + 1 where a nonzero of colour c lies:
    the first ``rows`` rows of the Jacobian at the columns they read (from 0, at most
    :data:`MAX_COLUMNS`), and the count × those columns compressed matrix (every nonzero in
    those columns, in its row's colour), one cell an entry. By columns: the pattern in its
    columns' colours, and the compressed matrix those rows × count (each nonzero of them in
    its column's colour's column)."""
    matrix = sparse.matrix
    crow, col = matrix.crow_indices().cpu(), matrix.col_indices().cpu()
    m, n = matrix.shape
    count = max(sparse.count, 1)
    shown = min(m, rows)
    stop = int(crow[shown])
    width = max(1, min(n, MAX_COLUMNS, int(col[:stop].max()) + 1 if stop else 1))
    colours = sparse.colours.cpu().reshape(-1)
    pattern = torch.zeros(shown, width, dtype=torch.long)
    first = torch.repeat_interleave(torch.arange(shown), crow[:shown + 1].diff())
    inside = col[:stop] < width
    pattern[first[inside], col[:stop][inside]] = colours[first[inside]] + 1
    if by_columns(sparse):  # each nonzero in its column's colour; J·U, rows × count
        rows, cols = first[inside], col[:stop][inside]
        pattern[rows, cols] = colours[cols] + 1
        compressed = torch.zeros(shown, count, dtype=torch.long)
        compressed[rows, colours[cols]] = colours[cols] + 1
        return pattern, compressed
    within = (col < width).nonzero().squeeze(1)
    owner = torch.searchsorted(crow, within, right=True) - 1  # the row of each nonzero
    compressed = torch.zeros(count, width, dtype=torch.long)
    compressed[colours[owner], col[within]] = colours[owner] + 1
    return pattern, compressed


def _texts(result, name: str, pattern: torch.Tensor) -> tuple[str, str, str]:
    sparse = sparse_of(result, name)
    found = layout_of(sparse, result.output.shape, result.inputs[name].shape)
    y, k = output_symbol(result), sparse.count
    m, n = sparse.matrix.shape
    rows, cols = pattern.shape
    part = f"rows 0–{rows - 1} of {m:,}, columns 0–{cols - 1} of {n:,}" \
        if (rows, cols) != (m, n) else f"{m:,} × {n:,}"
    left = f"∂{y}/∂{name}: {kind_name(found)}\n{part}"
    words = kind_words(found, n)
    beyond = int(sparse.matrix.col_indices()[:int(sparse.matrix.crow_indices()[rows])]
                 .ge(cols).sum()) if cols < n else 0
    if beyond:  # a wrap-around or a wide row: said, as the window cannot show it
        hidden = (f"{beyond:,} nonzero{'s lie' if beyond != 1 else ' lies'} in columns past "
                  f"{cols - 1:,}, not drawn")
        left, part = f"{left}\n{hidden}", f"{part}; {hidden}"
    if by_columns(sparse):
        right = f"{k} forward-mode pass{'es' if k != 1 else ''}:\ncolumn c: J·u, u of colour c"
        alt = (f"Nonzero pattern of the {m:,} × {n:,} Jacobian ∂{y}/∂{name} ({words}; "
               f"{part}), each nonzero coloured by its column's forward-mode pass, beside the "
               f"compressed {m:,} × {k} matrix: column c is J·u for the u that is 1 on the "
               f"entries of {name} of colour c; each of its nonzeros comes from exactly one "
               "column of the Jacobian.")
        return left, right, alt
    right = f"{k} backward pass{'es' if k != 1 else ''}:\nrow c is vᵀJ, v of colour c"
    alt = (f"Nonzero pattern of the {m:,} × {n:,} Jacobian ∂{y}/∂{name} ({words}; "
           f"{part}), each nonzero coloured by its row's backward pass, beside the compressed "
           f"{k} × {n:,} matrix: row c is vᵀJ for the v that is 1 on the entries of {y} of "
           f"colour c; each of its nonzeros comes from exactly one row of the Jacobian.")
    return left, right, alt


def _draw(pattern: torch.Tensor, compressed: torch.Tensor, count: int, texts,
          columns: bool = False):
    """The PNG: two panels of one explicit Agg figure, freed when drawn."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    colours = ["white"] + [PALETTE[c % len(PALETTE)] for c in range(count)]
    cmap = ListedColormap(colours)
    fig = Figure(figsize=(WIDTH, 3.4), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, width_ratios=[3, 2])
    for ax, cells, title in ((left, pattern, texts[0]), (right, compressed, texts[1])):
        ax.imshow(cells.numpy(), cmap=cmap, vmin=0, vmax=count, interpolation="nearest",
                  aspect="auto")
        ax.set_title(_escaped(title), fontsize=9)
        ax.set_xlabel(_escaped("entry of the input (flat)"), fontsize=8)
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(MaxNLocator(nbins=4, integer=True))
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{int(v):,}"))
        ax.tick_params(labelsize=7)
    left.set_ylabel(_escaped("entry of the output (flat)"), fontsize=8)
    if columns:  # J·U: the output's entries down, a column per colour
        right.set_ylabel(_escaped("entry of the output (flat)"), fontsize=8)
        right.set_xlabel("colour c", fontsize=8)
        if count <= 12:
            right.set_xticks(range(count))
    else:
        right.set_ylabel("colour c", fontsize=8)
        if count <= 12:
            right.set_yticks(range(count))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    fig.clear()
    png = buffer.getvalue()
    return png, struct.unpack(">II", png[16:24])


def sparse_picture(result, name: str) -> Picture:
    """The pattern beside its compressed matrix, as a :class:`~.picture.Picture`."""
    try:
        import matplotlib  # noqa: F401  (the [plot] extra)
    except ImportError:
        return Picture(None, MISSING)
    sparse = sparse_of(result, name)
    if sparse.matrix.shape[0] == 0 or sparse.matrix.shape[1] == 0:
        return Picture(None, f"No picture: the Jacobian of {output_symbol(result)} with "
                             f"respect to {name} has no entries.")
    pattern, compressed = coloured_cells(sparse)
    texts = _texts(result, name, pattern)
    png, (width, height) = _draw(pattern, compressed, max(sparse.count, 1), texts,
                                 by_columns(sparse))
    return Picture(png, texts[2], width, height)
