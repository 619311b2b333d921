"""The derivatives display as document nodes: what a result says, before it is spelled.

For each result: the shapes; per input a headline naming the paired axes and how they are
known ("row i of y uses row i of x only (proved for every x)"); the gradient argument v in
words; the tutorial's short backward loop; the derivatives as ``lhs = matrix`` with the cell's
own names; the notes. ``jacobian=True`` (``%jacobian``) shows the full m × n Jacobian instead
of v, the loop and the derivatives.
"""
from __future__ import annotations

import math
from dataclasses import replace

import torch

from . import notation
from .graph_facts import one_function
from ..core.pairing import proved_for_every
from ..core.errors import UNREACHED
from .codegen import display_loop, expression, loop_names, output_symbol
from .document import Code, CodeBlock, Formula, Math, Paragraph, Section, Text, paragraph
from .findings import has_sensitivity, sensitivity_formula, shared_verdict, structure_findings
from ..core.dependency import Kind
from .indices import index_formula
from .budget import fit_of, remembered
from .matrix import (HDOTS, Block, column_blocks, layout_beside, multi_index, reserve,
                     summary_indices, tensor_block)
from .numbers import noise_floor, plural, resolution
from .options import FULL_MATRIX_ENTRIES
from .sparse import sparse_blocks, sparse_of

SMALL_V = 12  # v_0 is drawn for outputs of at most this many entries


def derivatives_sections(result, options, jacobian: bool = False, explained: bool = False,
                         freed: tuple[str, ...] = (), coached: bool = False
                         ) -> tuple[Section, ...]:
    """The whole display of ``result``: shapes, then per group of inputs, then the notes
    (``explained``: v is described by the explanation above, so not here again; ``freed``:
    the lines the code beneath starts with, the cell's backward having freed the graph;
    ``coached``: the coaching above shows the corrected loop, v in it: neither again)."""
    sections = [Section((shapes(result),))]
    fit, shown = fit_of(options), shown_inputs(result, options)
    loops = 0 if jacobian else sum(  # code blocks shown with a backward on the same graph:
        any(n in shown and not result.inputs[n].unused and sparse_of(result, n) is None
            for n in every) for every in point_groups(result)) + sum(  # a group's loop,
        n in shown and sparse_of(result, n) is not None for n in result.inputs)  # colours'

    for every in point_groups(result):
        group = [n for n in every if n in shown]
        sections.extend(Section(tuple(sparse_blocks(result, n, options, explained, jacobian,
                                                    freed)))
                        for n in group if sparse_of(result, n) is not None)  # compressed passes
        group = [n for n in group if sparse_of(result, n) is None]
        if not group:
            continue
        blocks: list = []
        if len(group) > 1 and not jacobian and all(result.inputs[n].unused for n in group):
            sections.append(Section((unused_headline(result, group),)))  # one line, however
            continue  # many: the screen goes to the numbers of the inputs the output uses
        shared = shared_headline(result, group) if not jacobian else None  # (those shown)
        if shared is not None:
            blocks.append(shared)
        for name in group:
            if shared is None:
                blocks.append(headline(result, name))
            blocks.extend(structure_findings(result, name, options))
            indexed = None if explained or not fit.extras else index_formula(result, name)
            if indexed is not None:  # (with --explain, J is explained above)
                blocks.append(indexed)
            if jacobian:
                blocks.extend(jacobian_formulas(result, name, options))
        if not jacobian and not all(result.inputs[n].unused for n in group):
            used = [n for n in group if not result.inputs[n].unused]
            if not coached:  # (else the coaching above shows the corrected loop, v in it)
                blocks.extend(_v_and_loop(result, used, options, explained, freed, loops > 1))
            for name in used:
                blocks.extend(derivative_formulas(result, name, options))
                summary = sensitivity_formula(result, name, options) if fit.sensitivity \
                    else None
                if summary is not None:
                    blocks.append(summary)
        sections.append(Section(tuple(blocks)))
    if len(shown) < len(result.inputs):
        sections.append(Section((not_shown(result, shown),)))
    if not fit.sensitivity and not jacobian and any(
            has_sensitivity(result, n, options) for n in shown):
        sections.append(Section((paragraph(
            "Not shown, to fit one screen: the table of sensitivities (",
            Code("%config VJPMagics.height = 1300"), " gives an output two screens)."),)))
    notes = remembered(options, "notes", lambda: note_paragraphs(result))
    if notes:
        sections.append(Section(notes))
    return tuple(sections)


def _v_and_loop(result, used, options, explained: bool, freed, retain: bool) -> list:
    """v in words (unless explained above) and the loop of backward calls; on a screen too
    short for them, one line pointing to ``r.code`` (the budget's last level)."""
    if not fit_of(options).loop:
        return [paragraph("v and its backward loop: left out to fit one screen (",
                          Code("print(_.code)"), ").")]
    said = [] if explained else list(gradient_argument(result, used[0], options))
    return said + [CodeBlock(display_loop(result, used, first=freed, retain=retain))]


def point_groups(result) -> list[list[str]]:
    """The inputs, grouped by the output axes that are points for them (one loop per group);
    the inputs the output does not use last, one group: their zeros after the numbers."""
    groups: dict[tuple[int, ...] | None, list[str]] = {}
    for name, item in result.inputs.items():
        key = None if item.unused else tuple(sorted(item.pairing.out_axes))
        groups.setdefault(key, []).append(name)
    unused = groups.pop(None, None)
    return list(groups.values()) + ([unused] if unused else [])


def shown_inputs(result, options) -> list[str]:
    """The inputs whose derivatives are shown: all, or where the height budget asks
    (:mod:`.budget`), those that do not depend on an input, those a finding blames
    (:func:`blamed_inputs`) and the first and last of the rest."""
    fit = fit_of(options)
    used = [n for n, item in result.inputs.items() if not item.unused]
    if fit.inputs is None or len(used) <= fit.inputs:
        return list(result.inputs)
    blamed = [n for n in used if n in blamed_inputs(result)]  # what the findings name: kept
    order = list(dict.fromkeys([*blamed, used[0], used[-1]]))  # then the first and the last
    kept = set(order[:max(fit.inputs, len(blamed))])
    return [n for n, item in result.inputs.items() if item.unused or n in kept]


def blamed_inputs(result) -> set[str]:
    """The inputs a finding stored on the result singles out: ``--gradcheck``'s failing
    entries, a backward that ignores its incoming gradient, derivatives wrong in the cell's
    dtype; ``--check``'s wrong answers. A screen too short for every input keeps these (the
    reader is told about them; their numbers are the evidence)."""
    found: set[str] = set()
    report = getattr(result, "gradcheck", None)
    if report is not None and report.ok is False:
        found |= set(report.failed or {})  # (each name there disagreed)
        found |= set(report.unscaled or ()) | set(getattr(report, "cell_failed", ()) or ())
    check = getattr(result, "check", None)
    for verdict in (check,) if hasattr(check, "correct") else check or ():
        if not getattr(verdict, "correct", True) and getattr(verdict, "name", None):
            found.add(verdict.name)
    return found & set(result.inputs)


def not_shown(result, shown: list[str]) -> Paragraph:
    """The inputs left out to fit one screen, counted and named, and where their derivatives
    are: one input's ``r.derivatives['w']``, several's ``r.derivatives[name]`` with the first
    as the example (each its own key; ``r = _`` right after the cell)."""
    left = [n for n in result.inputs if n not in shown]
    spans: list = [Text(f"Not shown, to fit one screen: {len(left)} more "
                        f"input{'s' if len(left) > 1 else ''}, ")]
    named = left if len(left) <= 3 else [left[0], None, left[-1]]  # first, …, last
    for k, name in enumerate(named):
        if name is None:
            spans.append(Text(", …"))
            continue
        dims = notation.dims(result.inputs[name].shape)
        joiner = ", " if k and named[k - 1] is None else _joiner(k, len(named))
        spans += [Text(joiner), notation.prose_name(name), Text(f" ({dims})")]
    if len(left) == 1:
        where = [Text(", in "), Code(f"r.derivatives[{left[0]!r}]")]
    else:
        where = [Text(", each in "), Code("r.derivatives[name]"), Text(", as "),
                 Code(f"r.derivatives[{left[0]!r}]")]
        if notation.spelled(left[0]) != left[0]:
            where += [Text(" for "), Code(notation.spelled(left[0]))]
    return Paragraph((*spans, *where, Text(" ("), Code("r = _"), Text(" after the cell).")))


# -- shapes ---------------------------------------------------------------------------------
def shapes(result) -> Paragraph:
    """``From x (3 × 2) to y (3), torch.float64.`` (each dtype named when they differ)."""
    tensors = list(result.inputs.items())  # (the records: shapes as the analysis saw them)
    dtypes = {t.dtype for _, t in tensors} | {result.output.dtype}
    one = len(dtypes) == 1

    def described(name, tensor):
        what = notation.dims(tensor.shape) + (
            "" if one else f", {notation.dtype_text(tensor.dtype)}")
        return [notation.prose_name(name), Text(f" ({what})")]

    spans: list = [Text("From ")]
    for k, (name, tensor) in enumerate(tensors):
        if k:
            spans.append(Text(" and " if k == len(tensors) - 1 else ", "))
        spans += described(name, tensor)
    y = output_symbol(result)
    spans += [Text(" to ")] + described(y, result.output)[:1]
    if y != result.output_name:
        spans += [Text(" = "), Code(result.output_name)]
    spans += described(y, result.output)[1:]
    spans.append(Text(f", {notation.dtype_text(result.output.dtype)}." if one else "."))
    return Paragraph(tuple(spans))


# -- the headline: what the function is, which axes are points, how that is known -----------
def where(identifier: str, shape, axes: dict[int, str]) -> list:
    """``row i of y``, ``entry i of x``, ``column i of x``, ``entry (i, j) of y``,
    ``y[i, :, j]``."""
    name = notation.prose_name(identifier)
    dim = len(shape)
    if dim <= 2 and len(axes) == dim:
        index = ", ".join(axes[a] for a in range(dim))
        return [Text("entry "), Math(f"({index})" if dim > 1 else index,
                                    f"({index})" if dim > 1 else index), Text(" of "), name]
    if dim == 2 and len(axes) == 1:
        (axis, letter), = axes.items()
        return [Text("row " if axis == 0 else "column "), Math(letter, letter), Text(" of "), name]
    index = ", ".join(axes.get(a, ":") for a in range(dim))
    return [Code(f"{expression(identifier)}[{index}]")]


def _what(result, name: str) -> list:
    """What the function is, as spans: the tutorial's F and x^(i) for one input at points."""
    item = result.inputs[name]
    count = math.prod(result.component_shape(name))
    y, x = notation.prose_name(output_symbol(result)), notation.prose_name(name)
    if result.full:
        return [Text("The full Jacobian (--full: no points looked for)")]
    if not item.has_points:
        if result.output.numel() == 1:
            one = " is a scalar" if result.output.dim() == 0 else " has one entry"
            return [y, Text(one + ", so backward needs no gradient argument (v = 1, the "
                            "default)")]
        if item.per_point_numel() == 1:
            return [y, Text(f" has {count:,} entries, each a function of the one variable "), x]
        few = _nonzeros_a_row(result, name)
        if few is not None:  # the values show it at this x, whatever the line beneath says
            return [y, Text(f" has {count:,} entries, each with at most "
                            f"{plural(few, 'nonzero derivative')} at this "), x,
                    Text(f" (of {item.numel():,}): one gradient each, the rows of the "
                         "Jacobian" + _whole_when_small(result, name))]
        if _some_row_not_full(result, name):  # (causal, masked: the line beneath says which)
            return [y, Text(f" has {count:,} entries, each using some entries of "), x,
                    Text(": one gradient each, the rows of the Jacobian")]
        return [y, Text(f" has {count:,} entries, each may use every entry of "), x,
                Text(": one gradient each, the rows of the Jacobian")]
    points = plural(item.point_count, "point")
    if len(result.inputs) > 1:
        what = "one value" if count == 1 else plural(count, "component")
        return [Text(f"{what} at each of {points}")]
    y, x = notation.math_name(output_symbol(result)), notation.math_name(name)  # (x_: mono)
    f, capital = notation.letters()
    big = Math(f"{y.tex} = {capital}({x.tex})", f"{y.plain} = {capital}({x.plain})")
    if item.evidence != "proved" or not one_function(result, name):  # the graph proves the
        # pairing at most, not one f: each point may have its own (x ** w, where(mask, ...))
        what = "" if count == 1 else f" ({count:,} components each)"
        return [big, Text(f" acts on {points}{what} "), notation.point(name),
                Text(" one by one")]
    spans = [Text("one function "), _m(f)] if item.per_point_numel() == 1 else \
        [Text("one scalar function "), _m(f)]
    if count > 1:
        spans = [Text(f"{count:,} functions "), _m(f"{f}_k")]
    return [big, Text(" applies "), *spans, Text(f" at {points} "), notation.point(name)]


def _whole_when_small(result, name: str) -> str:
    """Why rows this sparse still take one backward each: a Jacobian of at most
    ``SPARSE_MIN_ENTRIES`` entries is computed whole (docs/api.md), where the output is large
    enough for the coloured passes (``SPARSE_MIN_OUTPUT``); else nothing."""
    from ..core.compressed import SPARSE_MIN_ENTRIES, SPARSE_MIN_OUTPUT

    m, n = result.output.numel(), result.inputs[name].numel()
    if m < SPARSE_MIN_OUTPUT or m * n > SPARSE_MIN_ENTRIES:
        return ""
    side = math.isqrt(SPARSE_MIN_ENTRIES)
    most = f"{side} × {side}" if side * side == SPARSE_MIN_ENTRIES else \
        f"{SPARSE_MIN_ENTRIES:,}"
    return (f" (a Jacobian of at most {most} entries is computed whole; a larger "
            "one this sparse takes one backward per colour of its pattern, where that pays)")


def _nonzeros_a_row(result, name: str) -> int | None:
    """The most nonzero derivatives one entry of the output has, where that is at most half
    the input's entries (a full Jacobian whose rows are sparse at this x: a reordering, a
    stride, a stencil); else None ("each may use every entry")."""
    item = result.inputs[name]
    d, n = item.derivatives, item.numel()
    if d.layout != torch.strided or n < 2 or d.numel() != result.output.numel() * n:
        return None
    most = int((d.reshape(-1, n) != 0).sum(1).max()) if d.numel() else 0
    return most if 2 * most <= n else None


def _some_row_not_full(result, name: str) -> bool:
    """Whether the line beneath says the output reads only some entries along a shared axis
    (a cumsum's causal s ≤ t, a masked attention's band): then not "each may use every
    entry"."""
    verdict = shared_verdict(result, name)
    return verdict is not None and verdict.kind != Kind.DENSE


def _m(tex: str) -> Math:
    """A little maths in a sentence (``v``, ``k``, ``f_k``): the same in both spellings."""
    return Math(tex, tex)


def headline(result, name: str) -> Paragraph:
    """The structure in one sentence, with the paired axes and the evidence."""
    item = result.inputs[name]
    lead = [Text("With respect to "), notation.prose_name(name), Text(": ")] \
        if len(result.inputs) > 1 else []
    y = output_symbol(result)
    if item.unused:
        return Paragraph(tuple(lead + unreached(result, [name], [notation.prose_name(name)])))
    spans = lead + _what(result, name)
    pairs = [(a, b) for a, b in item.pairing if item.shape[b] > 1]
    if item.has_points and not result.full:
        letters = notation.point_letters(len(pairs))
        out_axes = {a: letter for (a, _), letter in zip(pairs, letters)}
        in_axes = {b: letter for (_, b), letter in zip(pairs, letters)}
        given = ", ".join(item.conditional_on)  # index values the proof read (may come from x)
        given = f" that gives the same indices ({given})" if given else ""
        evidence = ([Text(" only (proved for every "), notation.prose_name(name),
                     Text(given + as_computed(result, name) + ").")]
                    if proved_for_every(result, name) else
                    [Text(" only (checked at this "), notation.prose_name(name),
                     Text(" only" + as_computed(result, name) + ").")])
        spans += [Text(": ")] + where(y, result.output.shape, out_axes) + [Text(" uses ")]
        spans += where(name, item.shape, in_axes) + evidence
    else:
        spans.append(Text(as_computed(result, name, " (") + "."))
    return Paragraph(tuple(spans))


def unused_headline(result, names: list[str]) -> Paragraph:
    """One sentence for every input the output does not use: ``loss does not depend on
    extra.weight or extra.bias: every derivative is 0.`` (the first two, …, the last of
    more than three)."""
    named = names if len(names) <= 3 else [names[0], names[1], None, names[-1]]
    spans: list = []
    for k, name in enumerate(named):
        if name is None:
            spans.append(Text(f", … ({len(names) - 3:,} more)"))
            continue
        last = k == len(named) - 1
        spans += [Text("" if k == 0 else " or " if last else ", "), notation.prose_name(name)]
    return Paragraph(tuple(unreached(result, names, spans)))


def unreached(result, names: list[str], named: list, what: str = "derivative") -> list:
    """"y does not depend on x: every derivative is 0." (``named``: the spans naming
    ``names``), or where a cut (``r.cuts``) took one of them off the graph (the formula may
    use it: never called independent), that the graph as computed does not reach them."""
    y = notation.prose_name(output_symbol(result))
    if any(n in cut.inputs for cut in getattr(result, "cuts", ()) for n in names):
        return [Text(UNREACHED[0].capitalize()), y, Text(UNREACHED[1]), *named,
                Text(f" (the cut above): every {what} shown is 0, not the formula's.")]
    return [y, Text(" does not depend on "), *named, Text(f": every {what} is 0.")]


def as_computed(result, name: str, opening: str = ", ") -> str:
    """Where a cut (``r.cuts``, :mod:`vjp_magic.run.cuts`) changes ``name``'s derivatives,
    what is proved is the graph as computed, not the formula the cell spells: ", of the
    graph as computed" (``opening`` " (": a parenthesis of its own); else nothing."""
    if not any(name in cut.inputs for cut in getattr(result, "cuts", ())):
        return ""
    return f"{opening}of the graph as computed{')' if opening.endswith('(') else ''}"


def shared_headline(result, group: list[str]) -> Paragraph | None:
    """One sentence for several inputs with no points (a model's parameters): the output's
    entries, each a gradient of its own (per sample where the output is one value per
    sample); None where the inputs need a sentence each."""
    items = [result.inputs[n] for n in group]
    if len(group) > 1 and result.output.numel() == 1 and not result.full \
            and not any(i.unused for i in items):  # a scalar: v = 1 for all of them, said once
        return Paragraph((*_what(result, group[0]), Text(".")))
    if (len(group) < 2 or result.full or result.output.numel() < 2
            or any(i.unused or i.has_points or i.per_point_numel() < 2 for i in items)):
        return None
    y = output_symbol(result)
    spans: list = [notation.prose_name(y),
                   Text(f" has {result.output.numel():,} entries, each may use every entry of ")]
    for k, name in enumerate(group):
        spans += [Text(_joiner(k, len(group))), notation.prose_name(name)]
    return Paragraph(tuple(spans + [Text(": one gradient each, the rows of the Jacobian "
                                         "(the per-sample gradients, when the entries are "
                                         "per-sample losses).")]))


def _joiner(k: int, count: int) -> str:
    return "" if k == 0 else (" and " if k == count - 1 else ", ")


# -- the gradient argument v ----------------------------------------------------------------
def gradient_argument(result, name: str, options) -> list:
    """v in words (never a bare count); v_0 as a small matrix where its pattern is not obvious."""
    item = result.inputs[name]
    y = output_symbol(result)
    count = math.prod(result.component_shape(name))
    if result.output.numel() == 1:  # (--full: the headline says no more than that)
        return [] if not result.full else [paragraph(
            notation.prose_name(y), " is a scalar" if result.output.dim() == 0 else
            " has one entry", ", so backward needs no gradient argument (v = 1, the "
            "default).")]
    if count == 1:  # the code writes torch.ones_like(y), binding no name: the tutorial's v
        return [paragraph(notation.math_name(notation.gradient_vector(result, name)),
                          " is all ones, shaped like ", notation.prose_name(y),
                          ": one backward gives the derivatives at all "
                          f"{plural(item.point_count, 'point')} at once.")]
    points = item.has_points and not result.full
    _, v, loop = loop_names(result, item.pairing.out_axes)  # as the loop beneath spells them
    letters = loop.letters
    k = ", ".join(letters) if len(letters) == 1 else f"({', '.join(letters)})"
    words = paragraph(f"One backward per component, {count:,} in all: ", notation.math_name(v),
                      " is 1 on component ", _m(k), " (at every point)" if points else "",
                      " and 0 elsewhere. ", *component_link(result, name, loop, options))
    if not shows_v0(result, name, options):
        return [words]
    v0 = result.gradients[name][0]
    return [words, formula(notation.indexed(v, str(options.index_base)), tensor_block(v0),
                           options, v0.dtype, v0.shape)]


def component_link(result, name: str, loop, options) -> tuple:
    """The maths' first component as the code indexes it, said once: ``f_1 is y[0]`` (the
    tutorial's f_1, or y_1 where the display writes ∂y_1/∂x)."""
    parts = ["0" if part.strip() != ":" else ":" for part in loop.index.split(",")]
    first = (", " if ":" in parts else ",").join(parts)  # y[0,0] as the labels, y[:, 0]
    y = output_symbol(result)
    sub = notation.counted([0] * len(result.component_shape(name)), options.index_base)
    if not _uses_f(result, name):
        y_tex = notation.name_tex(y)
        y_tex = y_tex if len(y_tex) == 1 else "{" + y_tex + "}"
        f = Math(f"{y_tex}_{{{sub}}}", f"{notation.math_name(y).plain}_{sub}")
    else:  # the component function f_1 is the output's entry; its gradient ∇f_1 is not
        g = notation.letters()[0]
        f = Math(f"{g}_{{{sub}}}", f"{g}_{sub}")
    return notation.link(f, notation.tensor_entry(y, first), options.index_base)


def shows_v0(result, name: str, options) -> bool:
    """Whether the display shows v_0 as a matrix: where one-hot-with-ones-along-the-points is
    a pattern worth seeing, the output small (a few lines) and the only input."""
    item = result.inputs[name]
    return (item.has_points and not result.full and len(result.gradients[name]) > 1
            and result.output.numel() <= SMALL_V and len(result.inputs) == 1
            and fit_of(options).extras)


# -- the derivatives ------------------------------------------------------------------------
def _shape_suffix(shape) -> Math:
    """``∈ ℝ^{3×2}``: the shape, so ``[1.]`` and ``[[1.]]`` never read alike."""
    dims = notation.dims_math(shape)
    return Math(rf"\;\in \mathbb{{R}}^{{{dims.tex}}}", f"∈ R^{dims.plain.replace(' ', '')}")


def _whole(matrix, shape) -> bool:
    """Whether the matrix shows the tensor's shape by itself: 2-d, nothing left out, and no
    axis of size 1 (a 1 × n matrix would read like a vector)."""
    dots = {r"\cdots", r"\vdots", r"\ddots"}
    return (len(shape) == 2 and min(shape) > 1 and len(matrix.rows) == shape[0]
            and not any(e.tex in dots for row in matrix.rows for e in row))


def formula(lhs: Math, block: Block, options, dtype, shape=None, caption=()) -> Formula:
    """``lhs = matrix``, narrowed so the line fits ``options.width``; the tensor's ``shape``
    follows as ``∈ ℝ^{m×n}`` where the matrix alone would not show it (1-d, summarised), or
    beneath it where beside it would cost columns (as for every matrix of its shape in the
    output, :func:`.matrix.layout_beside`)."""
    lhs, block = notation.left_side(lhs), notation.left_labels(block)  # (a long name: a letter)
    shown = shape is not None and len(shape) > 0 and not block.scalar
    suffix = _shape_suffix(shape) if shown else None
    matrix, beside = layout_beside(block, options, dtype, lhs, suffix,
                                   lambda m: _whole(m, shape))
    caption = tuple(caption) + _width_cut(block, matrix, options)
    if suffix is None or matrix.scalar or _whole(matrix, shape):
        return Formula(lhs, matrix, None, tuple(caption))
    if beside:
        return Formula(lhs, matrix, suffix, tuple(caption))
    dims = notation.dims_math(shape)  # no room beside the matrix: the shape goes beneath it
    shape_words = (Text("shape "), Math(dims.tex, dims.plain))
    return Formula(lhs, matrix, None, shape_words + ((Text("; "), *caption) if caption else ()))


def _width_cut(block: Block, matrix, options) -> tuple:
    """Where the width took entries a summary by count keeps, of a vector --full-matrix
    shows whole: said, and how to see them (a cut of the budget says what it left out; a
    taller matrix's columns cut show their ⋯ in every row, and a line each would cost the
    height budget the matrices of the others)."""
    if (options.full_matrix or block.scalar or matrix.scalar or len(matrix.rows) != 1
            or block.nrows * block.ncols > FULL_MATRIX_ENTRIES):
        return ()
    kept = sum(c is not None for c in summary_indices(block.ncols, options.threshold,
                                                      options.edgeitems))
    shown = sum(e != HDOTS for e in matrix.rows[0])
    if shown >= kept:
        return ()
    return (Text(f"{kept - shown} of {block.ncols} entries left out to fit the width ("),
            Code("--full-matrix"), Text(" shows every entry)."))


def matrix_formulas(lhs: Math, block: Block, options, dtype, shape=None,
                    caption=()) -> list[Formula]:
    """:func:`formula`; with ``--full-matrix`` (``options.full_matrix``) and at most
    :data:`~.options.FULL_MATRIX_ENTRIES` entries, every entry instead: where wider than the
    line, in column blocks stacked vertically, each captioned "columns 1–6 of 12" (the later
    ones under an invisible ``lhs``, so their ``=`` line up)."""
    if not options.full_matrix or block.scalar or block.nrows * block.ncols > FULL_MATRIX_ENTRIES:
        return [formula(lhs, block, options, dtype, shape, caption)]
    lhs, block = notation.left_side(lhs), notation.left_labels(block)  # (as formula's)
    parts = column_blocks(block, options, dtype, reserved=reserve(lhs))
    if len(parts) == 1:
        return [Formula(lhs, parts[0][1], None, tuple(caption))]
    blank = Math(rf"\phantom{{{lhs.tex}}}", " " * len(lhs.plain))
    return [Formula(lhs if k == 0 else blank, matrix, None,
                    (Text((f"columns {cols.start + 1}–{cols.stop}" if len(cols) > 1
                           else f"column {cols.start + 1}") + f" of {block.ncols}"
                          + ("." if k < len(parts) - 1 or not caption else "; ")), )
                    + (tuple(caption) if k == len(parts) - 1 else ()))
            for k, (cols, matrix) in enumerate(parts)]


def _uses_f(result, name: str) -> bool:
    """The tutorial's f / F notation (one input, at points, one f the graph proves); else the
    cell's ∂y/∂x."""
    item = result.inputs[name]
    return (item.has_points and not result.full and len(result.inputs) == 1
            and one_function(result, name))


def _component_labels(result, name: str, comp, base: int = 1):
    """Each component's label: the tutorial's f_k where one f is proved, else the slice of
    the output it is, as the code indexes it (``y[:, 0]`` where axis 0 holds the points,
    ``y[0,1]`` where there are none)."""
    if _uses_f(result, name):
        return notation.component_label(comp, result.inputs[name].per_point_numel() > 1, base)
    points = set(result.inputs[name].pairing.out_axes)
    y = output_symbol(result)
    if not points:
        return notation.entry_label(y, comp)

    def label(flat: int):
        index = iter(multi_index(flat, tuple(comp)))
        parts = [":" if a in points else str(next(index)) for a in range(result.output.dim())]
        return notation.tensor_entry(y, ", ".join(parts))

    return label


def derivative_formulas(result, name: str, options) -> list[Formula]:
    """``lhs = matrix`` for ``r.derivatives[name]`` (shape: components + the input's shape)."""
    item = result.inputs[name]
    d = item.derivatives
    comp, in_shape = result.component_shape(name), tuple(item.shape)
    lhs = notation.derivative_lhs(result, name)
    if d.dim() == 0:
        block = Block(lambda r, c: d.reshape(1, 1), 1, 1, d.device, scalar=True)
    elif len(comp) >= 1 and len(in_shape) >= 2:
        return _per_component(result, name, options)
    elif len(comp) == 1 or (len(comp) >= 2 and len(in_shape) == 1):
        rows, cols = math.prod(comp), (in_shape[0] if in_shape else 1)
        flat = d.reshape(rows, cols)
        block = tensor_block(flat, row_label=_component_labels(result, name, comp,
                                                               options.index_base))
        # each row judged on its own; each entry on its own where it is one point's own
        # derivative (nothing of another point sums into it)
        near = None if _alone(result, name) else _row_noise(flat)
        block = replace(block, alone=True,
                        near_zero=None if near is None else lambda r, c: near[r[:, None], c])
    elif d.dim() <= 2:  # a gradient shaped like x, or a matrix-valued function of one variable
        block = tensor_block(d)
    else:
        lead = tuple(d.shape[:-1])
        block = tensor_block(d, row_label=notation.slice_label(lead))
    block = replace(block, alone=block.alone or _alone(result, name))
    return matrix_formulas(lhs, block, options, d.dtype, d.shape)


def _row_noise(rows: torch.Tensor) -> torch.Tensor | None:
    """Of each row (one component's gradient: a backward of its own, nothing of another row
    sums into it), the non-zero entries within the dtype's noise of its own largest finite
    entry: they read ≈0, never 0; none is judged against another row's (a mean's 1/3 beside a
    row of 10^6), nor against an infinite one (which would make every entry ≈0)."""
    if not rows.is_floating_point() or rows.numel() == 0:
        return None
    finite = torch.where(rows.isfinite(), rows.abs(), 0)  # an inf is no scale: ∞ is shown
    floor = noise_floor(finite.amax(dim=1, keepdim=True), resolution(rows.dtype))
    return (rows.abs() <= floor) & (rows != 0)


def _alone(result, name: str) -> bool:
    """Whether every derivative shown is one point's own of a scalar function of one
    variable (nothing else sums into it): none then reads 0 beside a larger one."""
    item = result.inputs[name]
    return bool(item.has_points) and not result.full and item.per_point_numel() == 1


def _per_component(result, name: str, options) -> list[Formula]:
    """One matrix per component (each shaped like the input), a few when there are many."""
    item = result.inputs[name]
    comp, in_shape = result.component_shape(name), tuple(item.shape)
    count = math.prod(comp)
    flat = item.derivatives.reshape((count,) + in_shape)
    rows, cols = math.prod(in_shape[:-1]), in_shape[-1]
    labels = _component_labels(result, name, comp, options.index_base)
    formulas = []
    shown = component_indices(count, fit_of(options).components)
    for k in shown:
        if k is None:
            formulas.append(more_components(name, count - len(shown) + 1))
            continue
        row_label = notation.slice_label(in_shape[:-1]) if len(in_shape) > 2 else None
        block = replace(tensor_block(flat[k].reshape(rows, cols), row_label=row_label),
                        alone=_alone(result, name))
        formulas += matrix_formulas(_component_lhs(result, name, labels(k), comp, k,
                                                   options.index_base), block,
                                    options, flat.dtype, in_shape)
    return formulas


def component_indices(count: int, shown: int) -> list[int | None]:
    """The components drawn: all of at most ``shown``, else the first, ⋮ and the last (the
    first and ⋮ only when ``shown`` is 1)."""
    if shown <= 1 and count > 1:
        return [0, None]
    return summary_indices(count, shown, 1)


def more_components(name: str, hidden: int) -> Paragraph:
    """⋮ for the components not drawn, counted, with where they are."""
    return Paragraph((Math(r"\vdots", "⋮"), Text(f" {hidden:,} more component"
                                                  f"{'s' if hidden > 1 else ''}, all in "),
                      Code(f"r.derivatives[{name!r}]"), Text(".")))


def _component_lhs(result, name: str, label, comp, k: int, base: int = 1) -> Math:
    """``∇f_1(x^{(i)})`` in the tutorial's notation, else ``∂y_1/∂x`` (the tutorial's y_1,
    counted from ``base``)."""
    if _uses_f(result, name):
        at = notation.point(name)
        return Math(f"{label.tex}\\big({at.tex}\\big)", f"{label.plain}({at.plain})")
    index = notation.counted(multi_index(k, comp), base)
    return notation.partial(output_symbol(result), name, out_index=index)


def jacobian_block(result, name: str) -> Block:
    """The flattened m × n Jacobian, labelled where shapes are not plain vectors (entries
    between different points are exactly 0: ``r.jacobian_block``)."""
    item = result.inputs[name]
    out_shape, in_shape = tuple(result.output.shape), tuple(item.shape)
    m, n = result.output.numel(), item.numel()
    labelled = len(out_shape) >= 2 or len(in_shape) >= 2

    row_label = notation.entry_label(output_symbol(result), out_shape) \
        if labelled and out_shape else None
    col_label = notation.entry_label(name, in_shape) if labelled and in_shape else None
    return Block(lambda rows, cols: result.jacobian_block(name, rows, cols), m, n,
                 item.derivatives.device, row_label=row_label,
                 col_label=col_label, scalar=(m == 1 and n == 1))


def jacobian_formula(result, name: str, options) -> Formula:
    """``J_f(x) = [...]  (m × n)``: rows y entries, columns x entries, both flattened."""
    block = jacobian_block(result, name)
    return formula(notation.jacobian_lhs(result, name), block, options,
                   result.inputs[name].derivatives.dtype,
                   caption=_jacobian_caption(result, name, block))  # m × n: the caption


def _jacobian_caption(result, name: str, block: Block) -> list:
    return [Text(f"m × n = {block.nrows:,} × {block.ncols:,}: a row per entry of "),
            notation.prose_name(output_symbol(result)), Text(", a column per entry of "),
            notation.prose_name(name), Text(" (both flattened row-major).")]


def jacobian_formulas(result, name: str, options) -> list[Formula]:
    """:func:`jacobian_formula`, or with ``--full-matrix`` every entry in column blocks."""
    if not options.full_matrix:
        return [jacobian_formula(result, name, options)]
    block = jacobian_block(result, name)
    return matrix_formulas(notation.jacobian_lhs(result, name), block, options,
                           result.inputs[name].derivatives.dtype,
                           caption=_jacobian_caption(result, name, block))


# -- notes ----------------------------------------------------------------------------------
def output_note(result) -> Paragraph | None:
    """When f itself is NaN or infinite somewhere (log at a negative point), say so; where it
    is only infinite and every derivative finite (x**2 at 1e300, x + a mask of -inf), the
    derivatives shown are f' (f'' under %hessian) all the same. The cell's names are maths, as
    in every other sentence."""
    y = result.output
    if not (y.is_floating_point() or y.is_complex()):
        return None
    finite = torch.isfinite(y)
    if bool(finite.all()):
        return None
    nan = int(torch.isnan(y).sum())
    inf = y.numel() - int(finite.sum()) - nan
    if y.numel() == 1:
        at = "NaN" if nan else "infinite"
    else:
        at = " and ".join(p for p in [f"NaN at {nan:,}" if nan else "",
                                      f"infinite at {inf:,}" if inf else ""] if p)
        at += f" of its {y.numel():,} entries"
    g = notation.letters()[0]
    primes = "'" * result.order
    f, f1 = Math(g, g), Math(f"{g}{primes}", f"{g}{primes}")
    lead = (notation.prose_name(output_symbol(result)), f" itself is {at}")
    if not nan and _finite_derivatives(result):
        return paragraph(*lead, ", with finite derivatives there (an overflow of "
                         f"{notation.dtype_text(y.dtype)}'s range, or an infinite constant "
                         "such as a mask): the derivatives shown are ", f1, " all the same.")
    past = " or its value is past the dtype's range" if inf else ""
    return paragraph(*lead, ": ", f, " is not defined there (log or sqrt of a negative number, "
                     f"a division by zero, ...){past}, so the derivatives shown at those "
                     "entries are what the formula for ", f1, " gives, not a derivative of ",
                     f, ".")


def _finite_derivatives(result) -> bool:
    """Whether every input's derivatives are held densely and all finite."""
    items = [item for item in result.inputs.values() if not item.unused]
    return bool(items) and all(item.derivatives.layout == torch.strided
                               and bool(torch.isfinite(item.derivatives).all())
                               for item in items)


def note_paragraphs(result) -> tuple[Paragraph, ...]:
    """The notes, a name of the cell a note marks (```x``` in its markup) set as every other
    sentence sets it (maths for a name, code for an expression: ``notation.prose_name``)."""
    own = output_note(result)
    names = {result.output_name, *result.inputs}
    return ((own,) if own is not None else ()) + tuple(
        Paragraph(tuple(notation.prose_name(s.text) if isinstance(s, Code) and s.text in names
                        else s for s in paragraph(n).spans)) for n in result.notes)
