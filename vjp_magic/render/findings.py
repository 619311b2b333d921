"""What the derivatives say to a practitioner, as document nodes: where a structure breaks,
the shape of a full Jacobian along a shared axis, and per-feature sensitivities at many points.

- a rejected pairing: "The rows of y are not independent of the rows of x: y[1] ← x[0] ...";
- a full Jacobian whose output and input share an axis: one line with the verdict (causal,
  a band and its offsets, dense, independent);
- many points: per feature (component × entry of a point) the mean |∂y/∂x| over the points
  and the largest, with the point where it is.

Everything is read off the result (:func:`vjp_magic.core.dependency.from_result`): no backward.
"""
from __future__ import annotations

import math
import re
from dataclasses import replace

import torch

from ..core import structure
from ..core.dependency import EXCEPTING, Dependency, Kind, from_result
from ..core.errors import VJPUsageError
from . import notation
from .budget import remembered
from .codegen import output_symbol
from .document import Entry, Formula, Math, Matrix, Paragraph, Text
from .matrix import VDOTS, Block, layout, multi_index, reserve, row_indices, summary_indices
from .numbers import alone, choose_format, plural, significant_digits


# -- where the structure breaks -------------------------------------------------------------
def structure_findings(result, name: str, options=None) -> list[Paragraph]:
    """A rejected pairing's break, else (full Jacobian) the verdict along a shared axis ("dense"
    too, with its witness, for a Jacobian shown in full beneath: "each may use every entry"
    does not say that rows read other rows — a BatchNorm in training mode, attention without a
    mask — and a practitioner hunting the leak needs its witness named)."""
    item = result.inputs[name]
    if item.unused:
        return []
    broken = _broken(result, name)
    if broken is not None:
        return [_break_line(result, name, broken), *leak_formulas(result, name, broken, options)]
    verdict = shared_verdict(result, name)
    if verdict is None:
        return []
    return [_verdict_line(result, name, verdict), *leak_formulas(result, name, verdict, options)]


def shared_verdict(result, name: str) -> Dependency | None:
    """How the output reads ``name`` along the axes they share, the most telling of them
    (:data:`_PREFERENCE`), for a full Jacobian (None: points, a scalar, no shared axis).
    Along axes of unequal sizes (finite differences, a stencil without padding) only a
    verdict in offsets from y[t] ← x[t] counts (:data:`_BY_OFFSET`): "dense" is what the
    headline says anyway, and "other entries than x[t]" means nothing for a stride."""
    item = result.inputs[name]
    if item.unused or item.has_points or result.output.dim() == 0:
        return None
    pairs, equal = _shared_axes(result, name)
    verdicts = [d for d in (_read(result, name, a, b) for a, b in pairs)
                if d is not None and (equal or d.kind in _BY_OFFSET)]
    verdicts.sort(key=lambda dep: _PREFERENCE[dep.kind])
    return verdicts[0] if verdicts else None


# Which shared axis the line speaks of: the most telling verdict (a conv's band along its
# positions, not the dense mixing of its channels).
_PREFERENCE = {Kind.LOWER_TRIANGULAR: 0, Kind.UPPER_TRIANGULAR: 0, Kind.BAND: 0,
               Kind.BLOCK_DIAGONAL: 0, Kind.BLOCK_LOWER_TRIANGULAR: 0,
               Kind.PERIODIC_BAND: 0, Kind.SPARSE: 0,
               Kind.INDEPENDENT: 1, Kind.DENSE: 2}


_BY_OFFSET = {Kind.LOWER_TRIANGULAR, Kind.UPPER_TRIANGULAR, Kind.BAND, Kind.PERIODIC_BAND,
              Kind.INDEPENDENT}  # the verdicts said as y[t] ← x[t ± k]


def _broken(result, name: str) -> Dependency | None:
    """The first pair of the best rejected pairing (not kept) whose pattern is not diagonal."""
    item = result.inputs[name]
    if not item.rejected:
        return None
    kept = set(item.pairing.out_axes)
    for a, b in item.rejected[0]:
        if a not in kept and item.shape[b] > 1:
            found = _read(result, name, a, b)
            if found is not None and found.kind != Kind.INDEPENDENT:
                return found
    return None


def _read(result, name: str, a: int, b: int) -> Dependency | None:
    """The pattern, or None when it would not fit the memory budget (the display goes on)."""
    try:
        return from_result(result, name, a, b)
    except VJPUsageError:
        return None


def _shared_axes(result, name: str) -> tuple[list[tuple[int, int]], bool]:
    """The output and input axes the shapes would pair first (equal sizes over 1), and True;
    else, where both have as many axes, those in order whose sizes differ by a quarter at
    most (y[t] and x[t] on one line: ``x[1:] - x[:-1]``, a convolution without padding; not
    a stride, nor the tutorial's two sums of x's four entries, whose zero derivative at
    x[0] = 0 would read as a triangle), and False."""
    out, shape = tuple(result.output.shape), tuple(result.inputs[name].shape)
    proposals = structure.candidate_pairings(out, shape, 1)
    pairs = [(a, b) for a, b in (proposals[0] if proposals else ()) if shape[b] > 1]
    if pairs or len(out) != len(shape):
        return pairs, True
    return [(a, a) for a, (m, n) in enumerate(zip(out, shape))
            if m > 1 and n > 1 and 4 * abs(m - n) <= max(m, n)], False


def _axis_word(shape, axis: int, plural_: bool = True) -> str:
    """``rows``, ``columns``, ``entries`` or ``entries along axis 2``."""
    if len(shape) == 1:
        return "entries" if plural_ else "entry"
    if len(shape) == 2:
        return ("rows" if plural_ else "row") if axis == 0 else (
            "columns" if plural_ else "column")
    return f"entries along axis {axis}" if plural_ else f"index along axis {axis}"


def _at_index(shape, axis: int, index: int) -> str:
    """``row 1``, ``column 1``, ``entry 1`` or ``index 1 along axis 2``."""
    word = _axis_word(shape, axis, False)
    return f"{word} {index}" if len(shape) <= 2 else f"index {index} along axis {axis}"


def _the_axis(shape, axis: int) -> str:
    """``the rows``, ``the entries`` or ``axis 2`` (of a tensor of three or more axes)."""
    return f"axis {axis}" if len(shape) > 2 else f"the {_axis_word(shape, axis)}"


def _indexed(identifier: str, axis: int, index: str) -> Math:
    """``y[1]`` or ``y[:, t]`` as maths."""
    lead = ":, " * axis
    tex_lead = r":,\, " * axis
    tex = f"{notation.name_tex(identifier)}[{tex_lead}{index}]"
    return Math(tex, f"{identifier}[{lead}{index}]")


def _witness(dep: Dependency, y: str, x: str) -> tuple:
    """``y[1] ← x[0]`` as spans: two formulas and an arrow between them, so a line can break
    there (inline maths never breaks, and long indices would stick out at 1024 px)."""
    i, j = dep.witness
    return (_indexed(y, dep.out_axis, str(i)), Text(" ← "), _indexed(x, dep.in_axis, str(j)))


# -- a leak: a few output indices that read other input indices ------------------------------
LEAK_NAMED = 3  # output indices named in a leak's sentence (more: the band is described)
LEAK_SHOWN = 2  # of them, the matrices shown first, beneath the sentence
READS_NAMED = 3  # input indices named per leaking output index


def few_leaks(dep: Dependency) -> list[int] | None:
    """The output indices that read input indices other than their own, where they are few
    (at most :data:`LEAK_NAMED`) and the verdict's band would say every index does; else
    None."""
    if dep.kind == Kind.INDEPENDENT or dep.pattern.shape[0] != dep.pattern.shape[1] \
            or dep.fills_band():
        return None
    rows = dep.leaking()  # a few, and fewer than half the indices ("only y[0], y[1], y[2]"
    # of three rows would say every row leaks as if it were an exception)
    return rows if 0 < len(rows) <= LEAK_NAMED and 2 * len(rows) < len(dep.pattern) else None


def _reads(dep: Dependency, y: str, x: str, i: int) -> list:
    """``y[5] ← x[6], x[7]`` as spans: what output index i reads besides its own."""
    reads = dep.reads(i)
    spans: list = [_indexed(y, dep.out_axis, str(i)), Text(" ← ")]
    for k, j in enumerate(reads[:READS_NAMED]):
        spans += [Text(", ")] if k else []
        spans.append(_indexed(x, dep.in_axis, str(j)))
    if len(reads) > READS_NAMED:
        spans.append(Text(f" and {len(reads) - READS_NAMED} more"))
    return spans


def _only(dep: Dependency, y: str, x: str, rows: list[int], in_shape) -> list:
    """``only y[1] reads another row of x: `` (``only y[1] and y[5] read other rows of
    x: ``) as spans."""
    names: list = []
    for k, i in enumerate(rows):
        names += [Text(_joiner(k, len(rows)))] if k else []
        names.append(_indexed(y, dep.out_axis, str(i)))
    one = len(rows) == 1 and len(dep.reads(rows[0])) == 1
    word = _axis_word(in_shape, dep.in_axis, not one)
    verb = "reads another" if one else ("reads other" if len(rows) == 1 else "read other")
    return [Text("only "), *names, Text(f" {verb} {word} of "), notation.prose_name(x),
            Text(": ")]


def _leak_spans(dep: Dependency, y: str, x: str, rows: list[int], in_shape,
                first_note=()) -> list:
    """``only y[1] and y[5] read other rows of x: y[1] ← x[0] (note); y[5] ← x[7]``."""
    spans = _only(dep, y, x, rows, in_shape)
    for k, i in enumerate(rows):
        spans += ([Text("; ")] if k else []) + _reads(dep, y, x, i)
        spans += list(first_note) if k == 0 else []
    return spans


def _joiner(k: int, count: int) -> str:
    return "" if k == 0 else (" and " if k == count - 1 else ", ")


def leak_formulas(result, name: str, dep: Dependency, options=None) -> list[Formula]:
    """The matrices of a leak, first: ∂y[i]/∂x[j] for the first :data:`LEAK_SHOWN` output
    indices i that read another input index j (rows: the entries of y[i], columns: those
    of x[j]), read off the result (none where there is no leak of a few)."""
    rows = few_leaks(dep)
    if rows is None:
        return []
    from .options import RenderOptions

    # the leaks are the point: their matrices keep every row, whatever the height budget
    options = replace(options, fit=None) if options is not None else RenderOptions()
    y = output_symbol(result)
    item = result.inputs[name]
    formulas = []
    for i in rows[:LEAK_SHOWN]:
        j = dep.reads(i)[0]
        yi, xj = _indexed(y, dep.out_axis, str(i)), _indexed(name, dep.in_axis, str(j))
        lhs = notation.left_side(Math(rf"\frac{{\partial {yi.tex}}}{{\partial {xj.tex}}}",
                                      f"∂{yi.plain}/∂{xj.plain}"))
        block = _leak_block(result, name, dep, i, j)
        matrix = layout(block, options, item.derivatives.dtype, reserved=reserve(lhs))
        caption = () if block.scalar else (
            Text("rows: the entries of "), yi, Text("; columns: those of "), xj, Text("."))
        formulas.append(Formula(lhs, matrix, None, caption))
    return formulas


def _leak_block(result, name: str, dep: Dependency, i: int, j: int) -> Block:
    """The Jacobian's block of y's entries with index i along the output axis by x's with
    index j along the input axis (entries fetched as shown, :meth:`jacobian_block`)."""
    item = result.inputs[name]
    device = item.derivatives.device
    out_shape, in_shape = tuple(result.output.shape), tuple(item.shape)
    rows = torch.arange(result.output.numel(), device=device).reshape(out_shape) \
        .select(dep.out_axis, i).reshape(-1)
    cols = torch.arange(item.numel(), device=device).reshape(in_shape) \
        .select(dep.in_axis, j).reshape(-1)
    scalar = rows.numel() == 1 and cols.numel() == 1 and len(out_shape) + len(in_shape) == 2
    return Block(lambda r, c: result.jacobian_block(name, rows[r], cols[c]), rows.numel(),
                 cols.numel(), device, scalar=scalar)


def _break_line(result, name: str, dep: Dependency) -> Paragraph:
    """"The rows of y are not independent of the rows of x: y[1] ← x[0] (row 1 of y reads
    row 0 of x); the derivatives below are the full Jacobian." """
    item = result.inputs[name]
    y = output_symbol(result)
    out_shape, in_shape = tuple(result.output.shape), tuple(item.shape)
    yn, xn = notation.prose_name(y), notation.prose_name(name)
    i, j = dep.witness
    kept = [b for b in item.pairing.in_axes if in_shape[b] > 1]
    rest = ([Text("; the derivatives below take only the "
                  f"{' and '.join(_axis_word(in_shape, b) for b in kept)} of "), xn,
             Text(" as points.")] if kept else
            [Text("; the derivatives below are the full Jacobian.")])
    leaks = few_leaks(dep)
    if leaks is not None:  # which: "only y[1] reads another row of x: y[1] ← x[0] (…)"
        i, j = leaks[0], dep.reads(leaks[0])[0]
    note = [Text(f" ({_at_index(out_shape, dep.out_axis, i)} of "), yn,
            Text(f" reads {_at_index(in_shape, dep.in_axis, j)} of "), xn,
            *([] if leaks is not None else _kind_spans(dep, y, name)), Text(")")]
    witness = [*_witness(dep, y, name), *note] if leaks is None else \
        _leak_spans(dep, y, name, leaks, in_shape, note)
    return Paragraph((
        Text(f"The {_axis_word(out_shape, dep.out_axis)} of "), yn,
        Text(f" are not independent of the {_axis_word(in_shape, dep.in_axis)} of "), xn,
        Text(": "), *witness, *([Text(f" ({dep.note})")] if dep.note else []), *rest))


def _kind_spans(dep: Dependency, y: str, x: str) -> list:
    """``; the pattern is a band, offsets −1..0: y[t] reads x[s] for t − 1 ≤ s ≤ t`` (the
    verdict's kind in words, as the dense path states it: its offsets, blocks, nonzeros per
    row or exceptions), so that one witness is not taken for the only leaking index."""
    summary = dep.summary().removesuffix(f" ({dep.note})")  # the note follows on its own
    spans: list = [Text(f"; the pattern is {_article(dep)}{summary}")]
    bounded = dep.kind in (Kind.LOWER_TRIANGULAR, Kind.UPPER_TRIANGULAR) or (
        dep.kind in (Kind.BAND, Kind.PERIODIC_BAND) and dep.offsets is not None)
    if bounded and not (dep.kind in EXCEPTING and dep.exceptions()):
        spans += [Text(": "), _indexed(y, dep.out_axis, "t"), Text(" reads "),
                  *_band_reads(dep, x)]
    return spans


def _article(dep: Dependency) -> str:
    """``a `` before a kind that is a noun (a band, a band with wrap-around), none before an
    adjective (sparse, block-diagonal)."""
    return "a " if dep.kind in (Kind.PERIODIC_BAND, Kind.BAND) else ""


def _shift(offset: int) -> tuple[str, str]:
    """``t - 3``, ``t``, ``t + 1`` (TeX, plain)."""
    if offset == 0:
        return "t", "t"
    sign = "+" if offset > 0 else "-"
    return f"t {sign} {abs(offset)}", f"t {'+' if offset > 0 else '−'} {abs(offset)}"


def _verdict_line(result, name: str, dep: Dependency) -> Paragraph:
    """One line: how y[t] reads x[s] along the shared axis, and the kind; where a few
    indices break "y[t] reads x[t] only", those, by name ("only y[1] reads x[0]")."""
    y = output_symbol(result)
    yt, xs = _indexed(y, dep.out_axis, "t"), _indexed(name, dep.in_axis, "s")
    out_shape, in_shape = tuple(result.output.shape), tuple(result.inputs[name].shape)
    along = [Text(f"Along {_the_axis(out_shape, dep.out_axis)} of "), notation.prose_name(y),
             Text(f" and {_the_axis(in_shape, dep.in_axis)} of "), notation.prose_name(name)]
    leaks = few_leaks(dep)
    if leaks is not None:
        return Paragraph((*along, Text(", "), *_leak_spans(dep, y, name, leaks, in_shape),
                          Text("; every other "), yt, Text(" reads "),
                          _indexed(name, dep.in_axis, "t"), Text(" only.")))
    lead = [*along, Text(": "), yt, Text(" reads ")]
    if dep.kind == Kind.INDEPENDENT:
        return Paragraph((*lead, _indexed(name, dep.in_axis, "t"),
                          Text(" only (independent).")))
    some = [] if dep.fills_band() else [Text(
        f"; {len(dep.leaking())} of the {out_shape[dep.out_axis]:,} "
        f"{_axis_word(out_shape, dep.out_axis)} of "), notation.prose_name(y),
        Text(f" read other {_axis_word(in_shape, dep.in_axis)} of "),
        notation.prose_name(name)]
    note = [Text(f"; {dep.note}")] if dep.note else []
    exceptions = dep.exceptions() if dep.kind in EXCEPTING else []
    if exceptions and dep.offsets is not None:  # a band the bulk follows, and a few others
        return Paragraph((*lead, *_band_reads(dep, name), Text(", "),
                          *_exception_spans(dep, y, name, exceptions),
                          Text(f" ({dep.summary(exceptions=False)}).")))
    if dep.kind == Kind.DENSE:
        return Paragraph((*lead, xs, Text(" after "), Math("t", "t"),
                          Text(" as well as before ("), *_witness(dep, y, name),
                          Text("): dense"), *some, *note, Text(".")))
    if exceptions:  # blocks, and a few dependences outside them
        return Paragraph((*lead, Text(f"a few {_axis_word(in_shape, dep.in_axis)} of "),
                          notation.prose_name(name),
                          Text(f" ({dep.summary(exceptions=False)}), "),
                          *_exception_spans(dep, y, name, exceptions), Text(".")))
    if dep.kind in (Kind.BLOCK_DIAGONAL, Kind.BLOCK_LOWER_TRIANGULAR, Kind.SPARSE):
        return Paragraph((*lead, Text(f"a few {_axis_word(in_shape, dep.in_axis)} of "),
                          notation.prose_name(name), Text(f" ({dep.summary()}"), *some,
                          Text(", first "), *_witness(dep, y, name), Text(").")))
    if dep.kind == Kind.LOWER_TRIANGULAR:
        words = "causal: lower-triangular"
    elif dep.kind == Kind.UPPER_TRIANGULAR:
        words = "upper-triangular"
    else:
        summary = dep.summary().removesuffix(f" ({dep.note})")
        words = f"a {dep.kind}, offsets {summary.split('offsets ')[1]}"
    first = [Text(", first "), *_witness(dep, y, name)] if dep.witness else []
    reads = [xs, Text(" for "), _bound(dep), Text(" only")] if dep.band_reads()[0] else \
        _band_reads(dep, name)  # (not filled: the band is a bound, said as one)
    return Paragraph((*lead, *reads, Text(f" ({words}"), *some, *first, *note, Text(").")))


NAMED_OFFSETS = 3  # offsets of a band with gaps named one by one ("x[t] and x[t + 3] only")


def _band_reads(dep: Dependency, x: str) -> list:
    """What ``y[t] reads`` within the verdict's band or triangle, as spans: ``x[s] for t ≤ s ≤
    t + 3`` only where every index reads all of it (:meth:`Dependency.band_reads`); else
    the band is a bound, said as one, not as reads: the offsets read where a few with a gap
    (``x[t] and x[t + 3] only``), else ``no x[s] outside t ≤ s ≤ t + 3``."""
    filled, offsets = dep.band_reads()
    if filled:
        return [_indexed(x, dep.in_axis, "s"), Text(" for "), _bound(dep)]
    low, high = dep.offsets if dep.offsets is not None else (None, None)
    if dep.kind not in (Kind.LOWER_TRIANGULAR, Kind.UPPER_TRIANGULAR) and low is not None \
            and len(offsets) <= NAMED_OFFSETS and len(offsets) < high - low + 1:
        spans: list = []
        lead, tex_lead = ":, " * dep.in_axis, r":,\, " * dep.in_axis  # as _indexed spells it
        for k, offset in enumerate(offsets):
            spans += [Text(_joiner(k, len(offsets)))] if k else []
            tex, plain = _shift(offset)  # (TeX's minus, the plain text's −)
            spans.append(Math(f"{notation.name_tex(x)}[{tex_lead}{tex}]", f"{x}[{lead}{plain}]"))
        wrap = f", indices modulo {dep.pattern.shape[1]:,}" \
            if dep.kind == Kind.PERIODIC_BAND else ""
        return spans + [Text(f" only{wrap}")]
    return [Text("no "), _indexed(x, dep.in_axis, "s"), Text(" outside "), _bound(dep)]


def _bound(dep: Dependency) -> Math:
    """``s ≤ t`` (lower-triangular), ``s ≥ t`` (upper), ``t − 1 ≤ s ≤ t + 1`` (a band, of
    a sparse pattern's bulk too; ``modulo n`` with wrap-around)."""
    if dep.kind == Kind.LOWER_TRIANGULAR:
        return Math(r"s \le t", "s ≤ t")
    if dep.kind == Kind.UPPER_TRIANGULAR:
        return Math(r"s \ge t", "s ≥ t")
    (lo_tex, lo_plain), (hi_tex, hi_plain) = _shift(dep.offsets[0]), _shift(dep.offsets[1])
    if dep.kind == Kind.PERIODIC_BAND:
        n = dep.pattern.shape[1]
        return Math(f"{lo_tex} \\le s \\le {hi_tex} \\pmod{{{n}}}",
                    f"{lo_plain} ≤ s ≤ {hi_plain} (mod {n:,})")
    return Math(f"{lo_tex} \\le s \\le {hi_tex}", f"{lo_plain} ≤ s ≤ {hi_plain}")


def _exception_spans(dep: Dependency, y: str, x: str, exceptions: list) -> list:
    """``with one exception, a crossing between blocks: y[8] ← x[7]`` (``with 3 exceptions,
    the first …``): the dependences the structure forbids, named by the first (the
    witness)."""
    count = len(exceptions)
    what = _crossing(dep)
    head = "with one exception" if count == 1 else f"with {count:,} exceptions, the first"
    return [Text(f"{head}{', ' + what if what else ''}: "), *_witness(dep, y, x)]


def _crossing(dep: Dependency) -> str:
    """``a crossing between blocks`` where a block-diagonal verdict's witness is one (``a
    later index read inside a block`` where a block-lower-triangular one's is that)."""
    if dep.blocks is None or dep.witness is None:
        return ""
    ends = torch.tensor(dep.blocks).cumsum(0)
    i, j = (int(torch.searchsorted(ends, k, right=True)) for k in dep.witness)
    if i != j:
        return "a crossing between blocks"
    later = dep.kind == Kind.BLOCK_LOWER_TRIANGULAR and dep.witness[1] > dep.witness[0]
    return "a later index read inside a block" if later else ""


# -- sensitivities at many points -----------------------------------------------------------
def sensitivity(result, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per feature (component, then entry of a point; row-major): the mean |∂y/∂x| over the
    points, the largest, and the point where it is (flat, row-major over the paired input
    axes in the input's order)."""
    item = result.inputs[name]
    d = item.derivatives.detach().abs()
    k = len(result.component_shape(name))
    paired = sorted(k + b for b in item.pairing.in_axes)
    features = [a for a in range(d.dim()) if a not in paired]
    flat = d.permute(features + paired).reshape(
        math.prod(d.shape[a] for a in features), math.prod(d.shape[a] for a in paired))
    largest, where = flat.max(dim=1)
    return flat.mean(dim=1, dtype=torch.float64), largest, where


def has_sensitivity(result, name: str, options) -> bool:
    """Whether ``name`` gets a table of sensitivities: many points (more than ``threshold``)."""
    item = result.inputs[name]
    return not (result.full or item.unused or not item.has_points
                or item.point_count <= options.threshold)


def sensitivity_formula(result, name: str, options) -> Formula | None:
    """|∂y/∂x| over the points: mean, largest and where, one row per feature (a few
    rows, numpy-style, when there are many); None unless there are many points."""
    if not has_sensitivity(result, name, options):
        return None
    item = result.inputs[name]
    mean, largest, where = remembered(options, ("sensitivity", name),
                                      lambda: sensitivity(result, name))
    shown = _table_rows(mean, largest, options)
    digits = significant_digits(item.derivatives.dtype, options.precision)
    values = [float(t[f]) for f in shown if f is not None for t in (mean, largest)]
    fmt = alone(choose_format(values, digits))
    label = _feature_label(result, name, options.index_base)
    point_shape = [item.shape[b] for b in sorted(item.pairing.in_axes)]
    rows, labels = [], []
    for f in shown:
        if f is None:
            rows.append((VDOTS, VDOTS, VDOTS))
            labels.append(VDOTS)
            continue
        at = [i + options.index_base for i in multi_index(int(where[f]), point_shape)]
        at_text = str(at[0]) if len(at) == 1 else "(" + ", ".join(map(str, at)) + ")"
        at_entry = Entry(at_text, at_text) if largest[f] != 0 else \
            Entry(r"\text{all}", "all")  # 0 at every point: no one place
        rows.append((fmt.spell(float(mean[f])), fmt.spell(float(largest[f])), at_entry))
        labels.append(label(f))
    rows = _points_aligned(rows, columns=2)
    header = (Entry(r"\mathrm{mean}", "mean"), Entry(r"\max", "max"), Entry("i", "at i"))
    lhs = notation.partial(output_symbol(result), name)
    counted = (f"counted from {options.index_base}, from 0 in the code"
               if options.index_base != 0 else "counted from 0 as in the code")
    what = (f"the mean and the largest size per feature ({len(mean):,} in all)"
            if len(mean) > 1 else  # an elementwise map: one row, f' itself
            f"the mean and the largest size of {notation.letters()[0]}'")
    caption = (Text(f"Over the {plural(item.point_count, 'point')} "), notation.point(name),
               Text(f": {what}, and the point i where the largest is ({counted})."))
    return Formula(Math(rf"\left|{lhs.tex}\right|", f"|{lhs.plain}|"),
                   Matrix(tuple(rows), tuple(labels), header), None, caption)


def _points_aligned(rows: list, columns: int) -> list:
    """``rows`` with the plain spelling of their first ``columns`` entries padded on the
    right so that each column's decimal points line up (numpy's way: ``0.7619`` above
    ``0.09901`` starts where it does, a row reads ``[0.7619 3 9114]``); a column holding
    anything but fixed-point numbers (10^k, e, dots, ≈0) is left as it is."""
    rows = [list(row) for row in rows]
    for c in range(columns):
        cells = [row[c] for row in rows if row[c] is not VDOTS]
        if not cells or not all(re.fullmatch(r"-?\d+(\.\d+)?", e.plain) for e in cells):
            continue
        after = [len(e.plain.partition(".")[2]) if "." in e.plain else -1 for e in cells]
        most = max(after)
        if most < 0:
            continue
        for row in rows:
            e = row[c]
            if e is VDOTS:
                continue
            short = most - (len(e.plain.partition(".")[2]) if "." in e.plain else -1)
            row[c] = Entry(e.tex, e.plain + " " * short)
    return [tuple(row) for row in rows]


def _table_rows(mean, largest, options) -> list[int | None]:
    """The features the table shows: all of them up to ``threshold`` (a short table fits a
    screen: the height budget never cuts it, the whole table goes at its last levels, named
    as left out); past it, the edge rows (fewer where the budget asks), and always the
    features the table is read for: the most sensitive (the largest mean) and those exactly
    insensitive (largest size 0, at most ``edgeitems``), dots where features are left out."""
    count = len(mean)
    if count <= options.threshold:
        return list(range(count))
    edges = [f for f in row_indices(count, options) if f is not None]
    read_for = {int(mean.argmax())}
    read_for.update(int(f) for f in (largest == 0).nonzero().flatten()[:options.edgeitems])
    extra = read_for.difference(edges)
    if extra:  # (as many rows as a plain summary: fewer at the edges for those read for)
        each = max(1, len(edges) // 2 - math.ceil(len(extra) / 2))
        edges = [f for f in summary_indices(count, 0, each) if f is not None]
    kept = set(edges) | read_for
    shown: list[int | None] = []
    for f in sorted(kept):
        if shown and shown[-1] != f - 1:
            shown.append(None)
        shown.append(f)
    if shown[0] != 0:
        shown.insert(0, None)
    if shown[-1] != count - 1:
        shown.append(None)
    return shown


def _feature_label(result, name: str, base: int = 1):
    """Row labels: ``f'``, ``f_1'``, ``∂f/∂x_3``, ``∂f_1/∂x_1,3`` (component, entry; the
    maths counted from ``base`` in every spelling)."""
    item = result.inputs[name]
    comp = result.component_shape(name)
    paired = set(item.pairing.in_axes)
    entry = tuple(n for b, n in enumerate(item.shape) if b not in paired)
    x_tex, entries = notation.name_tex(name), math.prod(entry)
    x_tex = x_tex if len(x_tex) == 1 else "{" + x_tex + "}"
    f = notation.letters()[0]

    def label(flat: int) -> Entry:
        c, e = multi_index(flat, (math.prod(comp), entries))
        sub = notation.counted(multi_index(c, comp), base)
        f_tex, f_plain = (f"{f}_{{{sub}}}", f"{f}_{sub}") if comp else (f, f)
        if entries == 1:
            return Entry(f"{f_tex}'", f"{f_plain}'")
        at = notation.counted(multi_index(e, entry), base)
        x_plain = notation.math_name(name).plain
        return Entry(rf"\partial {f_tex}/\partial {x_tex}_{{{at}}}",
                     f"∂{f_plain}/∂{x_plain}_{at}")  # plain: x_1,3, no TeX braces

    return label
