"""Pictures of a Jacobian's nonzero pattern: block-diagonal by points, banded, dense.

The pattern comes from the structure, never from the full Jacobian: every entry of
``r.inputs[name].derivatives`` (shape ``component_shape + x.shape``) is exactly one entry of the
flattened m × n Jacobian (its row: the component and the point; its column: the input entry),
and every other entry is 0. The picture has at most ``max_cells`` × ``max_cells`` cells; a cell
is dark when any entry it covers is nonzero (row ``r`` of the Jacobian lies in cell row
``r * R // m``). With many points only the first few are pictured ("first K of N points").

Drawn with matplotlib (the ``[plot]`` extra), imported here lazily: an explicit Agg
``Figure``, never pyplot's global state. Without matplotlib a :class:`Picture` carries a note.
"""
from __future__ import annotations

import io
import math
import struct
from dataclasses import dataclass

import torch

from ..core.structure import row_major_strides
from . import notation
from .codegen import expression, output_symbol

MAX_CELLS = 256  # cells along each side of a picture
MIN_POINTS = 16  # pictured at least, of many (pooled when their entries outnumber the cells)
BOUNDARY_POINTS = 12  # point boundaries are drawn for at most this many points
CHUNK = 1 << 22  # derivative entries read at a time
WIDTH, MAX_HEIGHT, DPI = 5.2, 4.6, 100  # at most 520 × 460 px: fits a 1024 × 768 screen
# beside JupyterLab's file browser; a wide Jacobian gets a lower picture
DARK = "#1f4e8c"
MISSING = ("No picture: matplotlib is not installed "
           "(pip install 'vjp_magic[plot]' to draw the Jacobian's nonzero pattern).")


@dataclass(frozen=True)
class Picture:
    """A PNG with its alt text (``png`` is None when it could not be drawn: ``alt`` says why).

    Displays as an ordinary image output (JupyterLab, VS Code, nbconvert HTML and LaTeX); its
    ``width`` / ``height`` go along as metadata so clients show it at its own size.
    """

    png: bytes | None
    alt: str
    width: int = 0
    height: int = 0

    def _repr_png_(self) -> bytes | None:
        return self.png  # the size goes along with the mimebundle's metadata

    def _repr_mimebundle_(self, include=None, exclude=None):
        if self.png is None:
            return {"text/plain": self.alt}
        return ({"image/png": self.png, "text/plain": self.alt},
                {"image/png": {"width": self.width, "height": self.height, "alt": self.alt}})

    def __repr__(self) -> str:
        return self.alt


@dataclass(frozen=True)
class Pattern:
    """The cells of a picture and what they cover: the first ``points`` of ``total_points``
    points (``rows`` × ``cols`` Jacobian entries of tensors shaped ``out_shape``, ``in_shape``)."""

    cells: torch.Tensor  # bool, R × C
    rows: int
    cols: int
    out_shape: tuple[int, ...]
    in_shape: tuple[int, ...]
    points: int
    total_points: int
    word: str  # block-diagonal, diagonal, banded, dense, ...


# -- the pattern ----------------------------------------------------------------------------
def _pairs(item) -> list[tuple[int, int]]:
    """The point pairs that matter (size > 1), by output axis."""
    return sorted((a, b) for a, b in item.pairing if item.shape[b] > 1)


def _box(item, out_shape, budget: int) -> dict[int, int]:
    """Input axis → points kept along it: the first ``budget`` points in the output's
    row-major order, as a box (inner point axes whole while they fit)."""
    keep: dict[int, int] = {}
    for _, b in reversed(_pairs(item)):
        size = item.shape[b]
        keep[b] = max(1, min(size, budget))
        budget = max(1, budget // size)
    return keep


def _pictured(result, name: str, max_cells: int):
    """The derivatives of the pictured points, with the pictured shapes and point counts."""
    item = result.inputs[name]
    d = item.derivatives
    out_shape, in_shape = list(result.output.shape), list(item.shape)
    total = item.point_count if _pairs(item) and not result.full else 1
    comp, per_point = math.prod(result.component_shape(name)), item.per_point_numel()
    if total == 1 or (comp * total <= max_cells and per_point * total <= max_cells):
        return d, tuple(out_shape), tuple(in_shape), total, total
    cells = max_cells // 4  # a few points, each seen: a cell is at least a few pixels
    target = max(cells // max(comp, per_point), MIN_POINTS)
    ncomp = d.dim() - len(in_shape)
    for b, kept in _box(item, out_shape, target).items():
        d = d.narrow(ncomp + b, 0, kept)
        in_shape[b] = kept
        out_shape[{q: p for p, q in item.pairing}[b]] = kept
    shown = math.prod(in_shape[b] for _, b in _pairs(item))
    return d, tuple(out_shape), tuple(in_shape), shown, total


def _rows_cols(index, ncomp: int, pairing, out_shape, in_shape):
    """Jacobian row and column of derivative entries (their multi-indices, one tensor an axis)."""
    comp_idx, in_idx = index[:ncomp], index[ncomp:]
    to_in = dict(pairing)
    comps = iter(comp_idx)
    row = torch.zeros_like(index[0]) if index else torch.zeros(1, dtype=torch.long)
    for a, stride in enumerate(row_major_strides(out_shape)):
        row = row + (in_idx[to_in[a]] if a in to_in else next(comps)) * stride
    col = torch.zeros_like(row)
    for b, stride in enumerate(row_major_strides(in_shape)):
        col = col + in_idx[b] * stride
    return row, col


def _scatter(d, pairing, out_shape, in_shape, max_cells: int):
    """Cells, nonzero count and the band: the least and most of col − row and of
    (col·m − row·n) / m (diagonal offsets, plain and scaled to a non-square Jacobian),
    reading ``d`` in chunks."""
    m, n = math.prod(out_shape), math.prod(in_shape)
    nrows, ncols = min(m, max_cells), min(n, max_cells)
    cells = torch.zeros(nrows * ncols, dtype=torch.bool)
    flat = d.detach().reshape(-1)
    ncomp = d.dim() - len(in_shape)
    count, band = 0, torch.tensor([[m * n, -m * n], [m * n, -m * n]], dtype=torch.float64)
    for start in range(0, flat.numel(), CHUNK):
        where = torch.nonzero(flat[start:start + CHUNK] != 0).squeeze(1).cpu() + start
        if not where.numel():
            continue
        index = torch.unravel_index(where, tuple(d.shape)) if d.dim() else ()
        row, col = _rows_cols(list(index), ncomp, pairing, out_shape, in_shape)
        cells[(row * nrows // m) * ncols + col * ncols // n] = True
        count += where.numel()
        for k, offset in enumerate([col - row, (col * m - row * n) / m]):
            band[k] = torch.stack([torch.minimum(band[k, 0], offset.min()),
                                   torch.maximum(band[k, 1], offset.max())])
    return cells.reshape(nrows, ncols), count, band


def pattern(result, name: str | None = None, max_cells: int = MAX_CELLS) -> Pattern:
    """The nonzero pattern of ∂output/∂input ``name`` at a bounded resolution."""
    name = result.input_name(name)
    item = result.inputs[name]
    d, out_shape, in_shape, points, total = _pictured(result, name, max_cells)
    pairing = () if result.full else tuple(item.pairing)
    cells, count, band = _scatter(d, pairing, out_shape, in_shape, max_cells)
    word = _word(result, name, count, band, math.prod(out_shape), math.prod(in_shape))
    return Pattern(cells, math.prod(out_shape), math.prod(in_shape), out_shape, in_shape,
                   points, total, word)


def _layout(item, out_shape) -> str:
    """Where the point axes are (size-1 axes aside): ``leading`` in both tensors (the points
    are contiguous blocks), ``trailing``, ``permuted`` (their order differs) or ``mixed``."""
    pairs = _pairs(item)
    outs = [a for a, size in enumerate(out_shape) if size > 1]
    ins = [b for b, size in enumerate(item.shape) if size > 1]
    pa, pb, k = [a for a, _ in pairs], [b for _, b in pairs], len(pairs)
    if pb != sorted(pb):
        return "permuted"
    if outs[:k] == pa and ins[:k] == pb:
        return "leading"
    return "trailing" if outs[-k:] == pa and ins[-k:] == pb else "mixed"


def _word(result, name: str, count: int, band, m: int, n: int) -> str:
    """The structure in a word: from the pairing where there are points, else from the
    nonzeros (dense, diagonal, banded, sparse)."""
    item = result.inputs[name]
    if count == 0:
        return "all zero"
    if _pairs(item) and not result.full:
        one = math.prod(result.component_shape(name)) == 1 and item.per_point_numel() == 1
        where = _layout(item, result.output.shape)
        if where == "leading":
            return "diagonal" if one else "block-diagonal"
        if one:
            return "permuted diagonal"
        return "diagonal blocks" if where == "trailing" else "interleaved blocks"
    if count == m * n:
        return "dense"
    if m == n and bool((band[0] == 0).all()):
        return "diagonal"
    if min(m, n) > 2 and float((band[:, 1] - band[:, 0]).min()) + 1 <= n / 2:
        return "banded"
    return "sparse"


# -- the picture ----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Texts:
    title: str
    rows: str
    cols: str
    alt: str
    steps: tuple[int, int] | None  # rows and columns per point, where boundaries are drawn


def _letters(result, name: str, p: Pattern) -> tuple[list[str], list[str], list[str]]:
    """Index letters of the output's and the input's axes (i, j: points; k, l: components;
    a, b: entries within a point; 0: an axis of size 1), and their legend."""
    item = result.inputs[name]
    pairs = {} if result.full else dict(_pairs(item))
    points, comps, entries = iter("ijpqrs"), iter("klmnuv"), iter("abcdeg")
    out, inn = [], [""] * len(p.in_shape)
    for a, size in enumerate(p.out_shape):
        letter = next(points, "*") if a in pairs else ("0" if size == 1 else next(comps, "*"))
        out.append(letter)
        if a in pairs:
            inn[pairs[a]] = letter
    inn = [letter or ("0" if size == 1 else next(entries, "*"))
           for letter, size in zip(inn, p.in_shape)]
    y, x = output_symbol(result), notation.spelled(name)
    if not pairs:
        return out, inn, []
    roles = [("ijpqrs", out, "point"), ("klmnuv", out, f"component of {y}"),
             ("abcdeg", inn, f"entry of {x}")]
    legend = [f"{', '.join(c for c in letters if c in kind)}: {role}"
              for kind, letters, role in roles if any(c in kind for c in letters)]
    return out, inn, legend


def _texts(result, name: str, p: Pattern) -> _Texts:
    y, x = output_symbol(result), notation.spelled(name)  # net[0].weight, as the cell has it
    out, inn, legend = _letters(result, name, p)
    points = f", {p.total_points:,} points" if p.total_points > 1 else ""
    title = f"nonzero pattern of ∂{y}/∂{x}: {p.word}{points}"
    lines = [f"first {p.points:,} of {p.total_points:,} points"] if p.points < p.total_points \
        else []
    nrows, ncols = p.cells.shape
    if (nrows, ncols) != (p.rows, p.cols):
        lines.append(f"a cell: up to {-(-p.rows // nrows):,} × {-(-p.cols // ncols):,} entries")
    index = lambda letters: f"[{', '.join(letters)}]" if letters else ""  # noqa: E731
    rows = f"rows: {expression(y)}{index(out)}, row-major"
    cols = f"columns: {expression(x)}{index(inn)}, row-major"
    if legend:
        cols += "\n" + " · ".join(legend)
    m, n = math.prod(result.output.shape), result.inputs[name].numel()
    alt = (f"Nonzero pattern of the {m:,} × {n:,} Jacobian ∂{y}/∂{x} ({p.word}{points}"
           + "".join(f"; {line}" for line in lines) + f"). Dark cells are nonzero; rows are "
           f"the entries of {y}, columns those of {x}, both flattened row-major.")
    steps = None
    if p.word == "block-diagonal" and 1 < p.points <= BOUNDARY_POINTS:
        steps = (p.rows // p.points, p.cols // p.points)
    return _Texts("\n".join([title] + lines), rows, cols, alt, steps)


def _escaped(text: str) -> str:
    return text.replace("$", r"\$")  # matplotlib reads $…$ as mathtext


def _draw(p: Pattern, texts: _Texts) -> tuple[bytes, tuple[int, int]]:
    """The PNG: an explicit Agg figure, freed when drawn."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    aspect = min(max(p.rows / p.cols, 0.25), 1.0)
    lines = texts.title.count("\n") + texts.cols.count("\n")
    fig = Figure(figsize=_size(aspect, lines), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(p.cells.numpy(), cmap=ListedColormap(["white", DARK]), vmin=0, vmax=1,
              interpolation="nearest", extent=(0, p.cols, p.rows, 0), aspect="auto")
    ax.set_box_aspect(aspect)
    if texts.steps is not None:
        for k in range(1, p.points):
            ax.axhline(k * texts.steps[0], color="#c8c8c8", linewidth=0.5)
            ax.axvline(k * texts.steps[1], color="#c8c8c8", linewidth=0.5)
    ax.set_title(_escaped(texts.title), fontsize=10)
    ax.set_ylabel(_escaped(texts.rows), fontsize=9)
    ax.set_xlabel(_escaped(texts.cols), fontsize=9)
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(MaxNLocator(nbins=5, integer=True))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{int(v):,}"))
    ax.tick_params(labelsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    fig.clear()
    png = buffer.getvalue()
    return png, struct.unpack(">II", png[16:24])  # the IHDR chunk's width and height


def _size(aspect: float, lines: int) -> tuple[float, float]:
    """Figure inches: the axes about 4.2 in wide, ``aspect`` high, plus the title's and the
    labels' lines."""
    return WIDTH, min(max(1.4 + 4.2 * aspect + 0.18 * lines, 2.4), MAX_HEIGHT)


def pattern_picture(result, name: str | None = None, *, max_cells: int = MAX_CELLS) -> Picture:
    """A PNG of the nonzero pattern of ∂output/∂``name`` (the flattened m × n Jacobian), built
    from the point structure; a :class:`Picture` with only a note when matplotlib is missing."""
    name = result.input_name(name)
    if getattr(result.inputs[name], "sparse", None) is not None:  # beside its colours
        from .sparse_picture import sparse_picture
        return sparse_picture(result, name)
    try:
        import matplotlib  # noqa: F401  (the [plot] extra)
    except ImportError:
        return Picture(None, MISSING)
    p = pattern(result, name, max_cells)
    if p.rows == 0 or p.cols == 0:
        return Picture(None, f"No picture: the Jacobian of {output_symbol(result)} with "
                             f"respect to {name} has no entries.")
    texts = _texts(result, name, p)
    png, (width, height) = _draw(p, texts)
    return Picture(png, texts.alt, width, height)


def pictures(result, names=None) -> list[Picture]:
    """One picture per input (``names``: a name or a list of them; default all inputs)."""
    if isinstance(names, str):
        names = [names]
    return [pattern_picture(result, name) for name in (names or list(result.inputs))]


def wants_picture(result, name: str | None, options) -> bool:
    """Whether the Jacobian is too large to show in full (its rows or columns beyond
    ``options.threshold``), so a picture should show its pattern instead."""
    item = result.inputs[result.input_name(name)]
    if item.unused:
        return False
    return max(result.output.numel(), item.numel()) > options.threshold
