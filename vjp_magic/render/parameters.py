"""A small display for big models: one table of the inputs instead of every input's matrices.

A result with many inputs (more than :data:`MANY_INPUTS`, typically a module's parameter
tensors) shows one table within the height budget (:mod:`.budget`): per tensor its name as
the cell would write it (``mlp[0].weight``), its shape, the norm of its derivatives (over all
their entries), their largest |entry| and where it is; then the matrices of the few with the
largest norms (:data:`MATRICES`, fewer where the budget asks, but the largest's always: the
table's rows give way to its edges and the largest first; a tensor with a matrix per component
shows its Jacobian, a row per component); and where every tensor's derivatives are
(``r.derivatives[name]``). With more than :data:`TABLE_ROWS` tensors the table keeps those at
its edges and the largest ones, a ⋮ row for each gap (the lead line counts them all).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

import torch

from . import notation
from .budget import fit_of, remembered
from .codegen import output_symbol
from .document import Code, Entry, Formula, Math, Matrix, Paragraph, Section, Text
from .matrix import MIN_DIGITS, VDOTS, entry_width, multi_index, reserve, width
from .numbers import alone, choose_format, significant_digits
from .typeset import mono_width
from .sections import derivative_formulas, formula, jacobian_block, note_paragraphs

MANY_INPUTS = 6  # more inputs than this: the table
TABLE_ROWS = 20  # every tensor has its row up to this many
EDGE_ROWS = 4  # else the first and last this many, and the largest norms
MATRICES = 3  # the derivatives shown in full: those with the largest norms
NAMED = 8  # matrices the budget left out: named up to this many, else counted
SHORTENED = 2  # a table's names shortened to fit its width, at most (else columns go)
MIN_LABEL = 16  # characters a shortened name keeps, at least
OUTLIER = 1.5  # times the median name's length, at least, for a name to be shortened


@dataclass(frozen=True)
class Row:
    """One input's line of the table: ``norm`` of its derivatives (every entry), ``largest``
    |entry| and its index ``at`` in ``r.derivatives[name]``."""

    name: str
    shape: tuple
    norm: float
    largest: float
    at: tuple


def wants_table(result, options) -> bool:
    """Whether ``result`` shows the table: first derivatives with more than
    :data:`MANY_INPUTS` inputs used (fewer are shown as before, the budget naming those it
    leaves out), none a sparse Jacobian (shown by :mod:`.sparse`)."""
    items = result.inputs.values()
    return (result.order == 1 and sum(not item.unused for item in items) > MANY_INPUTS
            and all(getattr(item, "sparse", None) is None for item in items))


def parameter_rows(result) -> list[Row]:
    """Every input's :class:`Row`, in the result's order."""
    rows = []
    for name, item in result.inputs.items():
        d = item.derivatives.detach()
        if d.numel() == 0:
            rows.append(Row(name, tuple(item.shape), 0.0, 0.0, ()))
            continue
        k, largest = _largest(d.reshape(-1))
        norm = float(torch.linalg.vector_norm(d))  # in its dtype: no copy as large
        rows.append(Row(name, tuple(item.shape), norm, largest,
                        tuple(multi_index(k, tuple(d.shape))) if d.dim() else ()))
    return rows


def _largest(flat: torch.Tensor) -> tuple[int, float]:
    """The flat index of the first largest |entry| and that |entry|, without an ``abs`` copy
    as large as the derivatives (a module's, megabytes): their least and greatest entries in
    one pass, then the first index of the one with the larger magnitude (of both, the first,
    where they tie); NaN or ±inf as ``abs().argmax()`` reads them."""
    lo = hi = math.nan
    if flat.dtype in (torch.float32, torch.float64):
        lo, hi = (float(v) for v in torch.aminmax(flat))
    if not (math.isfinite(lo) and math.isfinite(hi)):  # (and other dtypes)
        magnitudes = flat.abs()
        k = int(magnitudes.argmax())
        return k, float(magnitudes[k])
    if hi > -lo:
        return int(flat.max(0).indices), hi
    if hi < -lo:
        return int(flat.min(0).indices), -lo
    return min(int(flat.max(0).indices), int(flat.min(0).indices)), hi


def parameter_sections(result, options) -> tuple[Section, ...]:
    """The table's display: the shapes and where everything is, the table, the largest
    tensors' matrices (as many as the budget's level allows), the notes."""
    rows = remembered(options, "parameter rows", lambda: parameter_rows(result))
    fit = fit_of(options)
    largest = largest_tensors(result, MATRICES, rows)
    shown = largest[:_matrices(fit)]
    kept = _kept(_shown(rows, _edge(fit)))  # the table's rows, as _table shows them
    cut = len(rows) - kept if kept < _kept(_shown(rows)) else 0  # said where the budget cut
    left = _left_out([r.name for r in rows if r.name not in shown], shown,
                     len(shown) < len(largest), cut)
    blocks: list = [_lead(result, rows, left), _table(result, rows, options)]
    for name in shown:
        blocks.extend(tensor_formulas(result, name, options))
    notes = remembered(options, "notes", lambda: note_paragraphs(result))
    return (Section(tuple(blocks)),) + ((Section(notes),) if notes else ())


def shown_tensors(result, options) -> list[str]:
    """The tensors whose matrices the table's display shows at ``options``' budget level."""
    rows = remembered(options, "parameter rows", lambda: parameter_rows(result))
    return largest_tensors(result, MATRICES, rows)[:_matrices(fit_of(options))]


def tensor_formulas(result, name: str, options) -> list:
    """One tensor's matrix beneath the table: its derivatives as the few-inputs display
    shows them, but one matrix where that would be a matrix per component (a weight's
    per-sample gradients): the Jacobian, a row per component, a column per entry."""
    comp, shape = result.component_shape(name), result.inputs[name].shape
    if not (len(comp) >= 1 and len(shape) >= 2):
        return derivative_formulas(result, name, options)
    block = replace(jacobian_block(result, name), col_label=None)  # (labels: half the columns)
    return [formula(notation.jacobian_lhs(result, name), block, options,
                    result.inputs[name].derivatives.dtype, (block.nrows, block.ncols),
                    (Text("j: the entries of "), notation.prose_name(name),
                     Text(", flattened row-major.")))]


def largest_tensors(result, count: int = MATRICES, rows: list[Row] | None = None) -> list[str]:
    """The ``count`` inputs whose derivatives have the largest norms (none of norm 0)."""
    rows = parameter_rows(result) if rows is None else rows
    return [r.name for r in sorted(rows, key=lambda r: -r.norm)
            if r.norm > 0 and not result.inputs[r.name].unused][:count]


def _matrices(fit) -> int:
    """How many tensors' matrices the budget's level shows: all :data:`MATRICES` while every
    input would be shown, then 2, then 1 (no extras; the last resorts keep the largest's)."""
    if fit.inputs is None:
        return MATRICES
    return 2 if fit.inputs == 2 and fit.extras else 1


def _edge(fit) -> int | None:
    """The table's rows at each edge where the budget asks for fewer (None: as many as
    :func:`_shown` keeps): at the three last resorts (:mod:`.budget`), :data:`EDGE_ROWS`,
    half as many, then ``fit.rows``: the rows give way before the largest tensor's matrix
    (the loop the last of them leaves out is no part of the table's display)."""
    if fit.inputs != 1:
        return None
    if fit.components > 1:
        return EDGE_ROWS
    return EDGE_ROWS // 2 if fit.loop else fit.rows


def _left_out(others: list[str], shown: list[str], cut: bool, rows: int) -> list:
    """What the budget left out of the table's display, as spans: where it ``cut`` the
    matrices, every tensor's but the ``shown`` ones' (the ``others``: named up to
    :data:`NAMED`, else counted; the rule that chose the shown said), ``rows`` of the
    table's rows (every row not shown, whichever rule left it out: the count and the
    table's ⋮ rows read the same :func:`_shown`)."""
    parts: list = []
    if cut and others:
        parts.append(Text(f"the {'matrices' if len(others) > 1 else 'matrix'} of "))
        if len(others) > NAMED:
            parts.append(Text(f"{len(others)} tensors"))
        for k, name in enumerate(others if len(others) <= NAMED else ()):
            if k:
                parts.append(Text(" and " if k == len(others) - 1 else ", "))
            parts.append(notation.prose_name(name))
        if shown:
            parts.append(Text(" (the largest norm's is shown)" if len(shown) == 1 else
                              f" (those of the {len(shown)} largest norms are shown)"))
    if rows:
        parts += [Text(f"{' and ' if parts else ''}{rows} of the table's rows ("),
                  Math(r"\vdots", "⋮"), Text(")")]
    return parts


def _lead(result, rows: list[Row], left: list) -> Paragraph:
    """``From 20 tensors (1,241 entries) to y (scalar), torch.float32; each one's derivatives
    in r.derivatives[name] (r.derivatives['mlp.0.weight'] for mlp[0].weight; r = _ after
    the cell).`` Where the budget ``left`` out something (:func:`_left_out`), ``… torch.float32.
    Not shown, to fit one screen: their matrices; each in r.derivatives[name] (…).``: one
    sentence, no line more than a table of every tensor leaves."""
    entries = sum(result.inputs[r.name].numel() for r in rows)
    y = output_symbol(result)
    first = rows[0].name
    where = [Text(". Not shown, to fit one screen: "), *left, Text("; each in ")] if left \
        else [Text("; each one's derivatives in ")]
    spans = [Text(f"From {len(rows)} tensors ({entries:,} "
                  f"{'entry' if entries == 1 else 'entries'}) to "), notation.prose_name(y),
             Text(f" ({notation.dims(result.output.shape)}), "
                  f"{notation.dtype_text(result.output.dtype)}"), *where,
             Code("r.derivatives[name]"), Text(" ("), Code(f"r.derivatives[{first!r}]")]
    if notation.spelled(first) != first:
        spans += [Text(" for "), Code(notation.spelled(first))]
    return Paragraph((*spans, Text("; "), Code("r = _"), Text(" after the cell).")))


def _table(result, rows: list[Row], options) -> Formula:
    """Name, shape, norm, largest |entry| and where, counted from ``index_base`` as the
    header says (the row labels are code, from 0): one row per tensor (over
    :data:`TABLE_ROWS` tensors, the edges and the largest, a ⋮ row for each gap). Where the
    line ``∂y/∂p = table`` is wider than ``options.width``: short headers (said beneath),
    fewer digits (down to :data:`~.matrix.MIN_DIGITS`), then a few long names shortened
    (:func:`_shortened`, each said beneath in full) before the last columns go (said
    beneath), and before the shape goes the names' shared start (``mlp``), once above them
    (the names as the cell writes them while they fit); where no layout fits, the shape
    stays, the shared start above, and every name wider than the line is cut (:func:`_capped`)."""
    digits = significant_digits(result.output.dtype, options.precision)
    shown = _shown(rows, _edge(fit_of(options)))
    y = output_symbol(result)
    lhs = notation.partial(y, "p")
    header = _header(y, options.index_base)

    def table(lines, labels, kept, prefix="") -> Matrix:
        corner = Entry(notation.mono(prefix), prefix) if prefix else None
        return Matrix(tuple(tuple(line[k] for k in kept) for line in lines), tuple(labels),
                      tuple(header[k] for k in kept), corner=corner)

    def wide(lines, labels, kept=(0, 1, 2, 3), prefix="") -> bool:  # lhs = table
        return reserve(lhs) + width(table(lines, labels, kept, prefix)) > options.width

    lines, labels = _lines(rows, shown, digits, options.index_base)
    caption: tuple = ()
    if wide(lines, labels):  # short headers, said beneath
        header = header[:2] + (Entry(r"\max", "max"), Entry(r"\mathrm{at}", "at"))
        caption = (Text(f"max: the largest |∂{y}/∂p|; at: where it is, counted from "
                        f"{options.index_base}."),)
    for fewer in range(digits - 1, min(digits, MIN_DIGITS) - 1, -1):  # then fewer digits
        if not wide(lines, labels):
            break
        digits = fewer
        lines, labels = _lines(rows, shown, digits, options.index_base)
    names = [notation.spelled(rows[k].name) if k is not None else None for k in shown]
    for kept, shared in _LAYOUTS:  # then long names, the last columns, the shared start
        prefix = _shared_start([name for name in names if name]) if shared else ""
        lines, labels = _lines(rows, shown, digits, options.index_base, prefix)
        short = {} if not wide(lines, labels, kept, prefix) else _shortened(
            labels, lambda ls: wide(lines, ls, kept, prefix))  # noqa: B023 (called at once)
        if short or not wide(lines, labels, kept, prefix):
            break
    labels = [short.get(k, label) for k, label in enumerate(labels)]
    if wide(lines, labels, kept, prefix):  # no layout fits: the shape stays, no name overflows
        kept, prefix = _LAYOUTS[-2]
        prefix = _shared_start([name for name in names if name])
        lines, labels = _lines(rows, shown, digits, options.index_base, prefix)
        short = _capped(labels, options.width)
        labels = [short.get(k, label) for k, label in enumerate(labels)]
    if kept != _COLUMNS[0]:
        # (where to find them, r.derivatives[name], the lead line says: one line, not two)
        caption = (Text(f"Left out to fit the width: {_LEFT_OUT[kept]}."),)
    caption += _shortened_said(short, labels, names, " " if caption else "")
    return Formula(lhs, table(lines, labels, kept, prefix), None, caption)


def _header(y: str, base: int) -> tuple:
    """The table's column headers, in full."""
    return (Entry(r"\mathrm{shape}", "shape"),
            Entry(rf"\lVert\partial {notation.name_tex(y)}/\partial p\rVert", f"‖∂{y}/∂p‖"),
            Entry(rf"\max|\partial {notation.name_tex(y)}/\partial p|", f"max |∂{y}/∂p|"),
            Entry(rf"\mathrm{{at\ (from\ {base})}}", f"at (from {base})"))  # labels: from 0


def _shortened(labels: list, too_wide) -> dict:
    """Row index -> its label shortened (:func:`shorten`): the longest labels cut to the
    greatest length at which the table is no longer ``too_wide``; {} where that takes more
    than :data:`SHORTENED` labels, one not :data:`OUTLIER` times as long as the median
    label, a length under :data:`MIN_LABEL`, a name that cannot be cut so, or makes two
    labels alike (then the table drops columns, or shows fewer rows, as before)."""
    plains = {k: label.plain for k, label in enumerate(labels) if label != VDOTS}
    lengths = sorted(map(len, plains.values()))
    typical = lengths[len(lengths) // 2]
    for limit in range(lengths[-1] - 1, MIN_LABEL - 1, -1):
        cut = [k for k, plain in plains.items() if len(plain) > limit]
        if len(cut) > SHORTENED or any(len(plains[k]) < OUTLIER * typical for k in cut):
            return {}
        short = {k: shorten(plains[k], limit) for k in cut}
        if None in short.values() or len(set({**plains, **short}.values())) < len(plains):
            return {}
        entries = {k: Entry(notation.mono(text), text) for k, text in short.items()}
        if not too_wide([entries.get(k, label) for k, label in enumerate(labels)]):
            return entries
    return {}


def _capped(labels: list, budget: float) -> dict:
    """Row index -> its label shortened (:func:`shorten`) to the most characters under the
    width ``budget`` alone, for each label wider than that (a deep model's names, every one
    long: no column dropped makes the table fit, and none of its names is a column wider
    than the line), attributes first (:func:`shorten`), else characters (:func:`_middle`);
    {} where two labels would be alike."""
    short = {}
    for k, label in enumerate(labels):
        if label == VDOTS or _label_width(label) < budget:
            continue
        for limit in range(len(label.plain) - 1, MIN_LABEL - 1, -1):
            text = shorten(label.plain, limit) or _middle(label.plain, limit)
            entry = Entry(notation.mono(text), text)
            if entry is not None and _label_width(entry) < budget:
                short[k] = entry
                break
        else:
            return {}
    plains = [short.get(k, label).plain for k, label in enumerate(labels) if label != VDOTS]
    return short if len(set(plains)) == len(plains) else {}


def _middle(name: str, limit: int) -> str:
    """``name`` in ``limit`` characters, its middle characters as … (a name of one long
    attribute, ``a_rather…number_0.weight``): a third from its start, the rest from its
    end (the index and the attribute that tell rows apart)."""
    tail = (limit - 1) * 2 // 3
    return name[:limit - 1 - tail] + "…" + name[len(name) - tail:]


def _label_width(label: Entry) -> float:
    """Counted characters of a row label: a ``\\mathtt`` name at the typewriter width."""
    return mono_width(label.plain) if r"\mathtt" in label.tex else entry_width(label)


def shorten(name: str, limit: int) -> str | None:
    """``name`` in at most ``limit`` characters, one run of its middle attributes as …
    (``net.proj…weight.original1``): its first and last parts and every index (``[3]``)
    kept, as many characters as fit; None where none fits."""
    if len(name) <= limit:
        return name
    parts = _PARTS.findall(name)
    best = None
    for i in range(1, len(parts) - 1):
        for j in range(i + 1, len(parts)):  # without parts[i:j]
            if not parts[j - 1].startswith("."):
                break
            text = "".join(parts[:i]) + "…" + "".join(parts[j:]).removeprefix(".")
            if len(text) <= limit and (best is None or len(text) > len(best)):
                best = text
    return best


_PARTS = re.compile(r"\.[^.\[]*|\[[^\]]*\]|[^.\[]+")  # attributes, indices ([...] whole)


def _shortened_said(short: dict, labels: list, names: list, lead: str) -> tuple:
    """The caption's words for the names :func:`_shortened` cut: each in full."""
    spans: list = []
    for k in sorted(short):
        spans += [Text("; " if spans else f"{lead}Shortened to fit the width: "),
                  Code(labels[k].plain), Text(" is "), Code(names[k])]
    return tuple(spans + [Text(".")]) if spans else ()


def _shared_start(names: list[str]) -> str:
    """The start every name spells alike up to an attribute or an index (``mlp`` of
    ``mlp[0].weight`` and ``mlp[2].bias``; ``text_encoder.layers`` of its layers'
    parameters), each name going on past it; "" where there is none."""
    spelled = [notation.spelled(name) for name in names]
    if len(spelled) < 2:
        return ""
    common = spelled[0]
    for name in spelled[1:]:
        while not name.startswith(common):
            common = common[:-1]
    cut = len(common)
    while cut and not all(len(name) > cut and name[cut] in ".[" for name in spelled):
        cut -= 1
    return common[:cut]


def _lines(rows: list[Row], shown: list, digits: int, base: int,
           prefix: str = "") -> tuple[list, list]:
    """The table's rows (shape, norm, largest, where) and labels, numbers to ``digits``;
    each label without ``prefix`` (its shared start, written above them)."""
    kept = [rows[k] for k in shown if k is not None]
    norms = alone(choose_format([r.norm for r in kept], digits))
    largest = alone(choose_format([r.largest for r in kept], digits))
    lines, labels = [], []
    for k in shown:
        if k is None:
            lines.append((VDOTS, VDOTS, VDOTS, VDOTS))
            labels.append(VDOTS)
            continue
        row = rows[k]
        at = notation.counted(row.at, base)
        at = f"({at})" if len(row.at) > 1 else at or "-"
        lines.append((notation.dims_math(row.shape), norms.spell(row.norm),
                      largest.spell(row.largest), Entry(at, at)))
        rest = notation.spelled(row.name)[len(prefix):]
        labels.append(Entry(notation.mono(rest), rest) if prefix else
                      notation.math_name(row.name))
    return lines, labels


_COLUMNS = ((0, 1, 2, 3), (0, 1, 2), (0, 1), (1,))  # the columns kept, fewer by fewer
# the layouts tried in turn: the columns kept, and whether the names' shared start is above
_LAYOUTS = tuple((kept, False) for kept in _COLUMNS[:-1]) + ((_COLUMNS[-2], True),
                                                             (_COLUMNS[-1], True))
_LEFT_OUT = {(0, 1, 2): "where each largest |entry| is",
             (0, 1): "each tensor's largest |entry| and where it is",
             (1,): "each tensor's shape, largest |entry| and where it is"}


def _kept(shown: list[int | None]) -> int:
    """How many rows :func:`_shown` keeps (its None gaps are no rows)."""
    return sum(k is not None for k in shown)


def _shown(rows: list[Row], edge: int | None = None) -> list[int | None]:
    """The rows kept (None: a gap): all up to :data:`TABLE_ROWS`, else the edges and the
    largest norms, in order; where the height budget asks for ``edge`` rows at each edge of
    a summarised matrix (:mod:`.budget`), that many at each edge and the largest."""
    limit = TABLE_ROWS if edge is None else 2 * edge + MATRICES
    edge = EDGE_ROWS if edge is None else min(edge, EDGE_ROWS)
    if len(rows) <= limit:
        return list(range(len(rows)))
    top = sorted(range(len(rows)), key=lambda k: -rows[k].norm)[:MATRICES]
    keep = sorted(set(range(edge)) | set(range(len(rows) - edge, len(rows))) | set(top))
    shown: list[int | None] = []
    for k in keep:
        if shown and shown[-1] is not None and k > shown[-1] + 1:
            shown.append(None)
        shown.append(k)
    return shown


__all__ = ["Row", "largest_tensors", "parameter_rows", "parameter_sections", "shown_tensors",
           "tensor_formulas", "wants_table"]
