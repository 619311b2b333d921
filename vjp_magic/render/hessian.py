"""The second-derivatives display as document nodes (the body of a
:class:`~vjp_magic.render.view.View` of order 2).

Per input: a headline in words ("f″ at each of the 5 points of x", "the 3 × 3 Hessian of s
with respect to x, symmetric"), then the second derivatives as ``lhs = matrix`` with the
cell's names (∂²y_i/∂x_i², ∂²s/∂x_i∂x_j, ∇²f(x^{(1)}), the maths counted from
``options.index_base``, 1 as the tutorial does): one row per component when each
point has one entry, else one m × m Hessian per component and point (a few when there are
many), each summarised to the width budget like the first derivatives.
"""
from __future__ import annotations

import math
from dataclasses import replace

import torch

from . import notation
from .codegen import output_symbol
from .budget import fit_of, remembered
from .document import Code, Entry, Formula, Math, Paragraph, Section, Text, paragraph
from .graph_facts import one_function
from ..core.pairing import proved_for_every
from .hessian_blocks import blocks_headline, blocks_where
from .hessian_sparse import sparse_hessian_blocks
from .matrix import Block, multi_index, tensor_block
from .numbers import plural
from .sections import (as_computed, component_indices, formula, not_shown, note_paragraphs,
                       shapes, shown_inputs, unreached)
from .sparse import hessian_paragraph

SHOWN_BLOCKS = 3  # Hessians shown when there are many (first, ⋮, last)
_LETTERS = "ijlmn"


def hessian_sections(h, options) -> tuple[Section, ...]:
    """The whole display of a :class:`~vjp_magic.core.hessian.HessianResult`."""
    sections = [Section((shapes(h),))]
    shown = shown_inputs(h, options)  # all, or the first and last where the height asks
    for name, item in h.inputs.items():
        if name not in shown:
            continue
        blocks: list = [headline(h, name)]
        if not (item.unused or item.constant):
            blocks.extend(hessian_formulas(h, name, options))
        if getattr(item, "sparse", None) is not None and item.sparse.count:
            blocks.append(remembered(options, ("hessian pattern", name),  # once per fit
                                     lambda n=name: hessian_paragraph(h, n)))
            blocks.extend(sparse_hessian_blocks(h, name, options))  # values, where, code
        if getattr(item, "sparse_blocks", None) is not None:
            blocks.append(blocks_where(name))
        sections.append(Section(tuple(blocks)))
    if len(shown) < len(h.inputs):
        sections.append(Section((not_shown(h, shown),)))
    notes = [p for p in note_paragraphs(h) if p.spans]  # names set as every sentence does
    if len(h.inputs) > 1:
        names = [notation.prose_name(n) for n in h.inputs]
        y = notation.prose_name(output_symbol(h))
        notes.insert(0, paragraph("One Hessian per input: the mixed second derivatives of ", y,
                                  " with respect to two different inputs (", names[0], " and ",
                                  names[1], ", ..." if len(names) > 2 else "",
                                  ") are not computed."))
    if notes:
        sections.append(Section(tuple(notes)))
    return tuple(sections)


# -- the headline ---------------------------------------------------------------------------
def _m(tex: str, plain_text: str | None = None) -> Math:
    return Math(tex, tex if plain_text is None else plain_text)


def _evidence(item, name: str, result) -> list:
    computed = as_computed(result, name)
    given = ", ".join(getattr(item, "conditional_on", ()))
    if proved_for_every(result, name) and given:  # saved indices / masks that may come from x
        return [Text(" (proved for every "), notation.prose_name(name),
                Text(f" that gives the same indices and masks ({given}){computed})")]
    if proved_for_every(result, name):
        return [Text(" (proved for every "), notation.prose_name(name), Text(computed + ")")]
    return [Text(" (checked at this "), notation.prose_name(name), Text(f" only{computed})")]


def _square(m: int) -> str:
    return f"{m:,} × {m:,}"


def headline(h, name: str) -> Paragraph:
    """What the second derivatives are, in one sentence, with the evidence."""
    item = h.inputs[name]
    y, x = notation.prose_name(output_symbol(h)), notation.prose_name(name)
    lead = [Text("With respect to "), x, Text(": ")] if len(h.inputs) > 1 else []
    if item.unused:
        return Paragraph(tuple(lead + unreached(h, [name], [x], "second derivative")))
    if item.constant:
        return paragraph(*lead, "Every second derivative is 0 at this ", x, ": the first "
                         "derivatives of ", y, " have no graph back to ", x, ", so ", y,
                         " is linear in ", x, " near it (or piecewise linear, as clamp, relu "
                         "or where make it: its first derivatives then jump where the pieces "
                         "meet).")
    blocks = getattr(item, "sparse_blocks", None)
    d = item.derivatives if blocks is None else blocks.values
    if d.layout == torch.strided and d.numel() and not bool(d.any()):  # relu's: zeros here
        return paragraph(*lead, "Every second derivative is 0 at this ", x, "; at another ",
                         x, " they may not be, unless ", y, " is linear or piecewise linear "
                         "in ", x, " (as relu, clamp or where make it).")
    if blocks is not None:  # a vector output's, sparse
        return blocks_headline(h, name, _evidence(item, name, h))
    count = math.prod(h.component_shape(name))
    m = math.prod(item.per_point_shape)
    points = plural(item.point_count, "point")
    if m == 1 and item.has_points and not one_function(h, name):  # the pairing, no one f
        of = [y] if count == 1 else [Text(f"each of the {count:,} components of "), y]
        spans = [Text("The second derivative of ")] + of + [Text(f" at each of the {points} of "),
                                                            x]
    elif m == 1 and item.has_points:
        g = notation.letters()[0]
        f = [_m(f"{g}''", f"{g}″")] if count == 1 else [_m(f"{g}_k''", f"{g}_k″"), Text(
            f" for each of the {count:,} components")]
        spans = f + [Text(f" at each of the {points} of "), x]
    elif m == 1:
        of = [y] if count == 1 else [Text(f"each of the {count:,} entries of "), y]
        spans = [Text("The second derivative of ")] + of + [Text(" with respect to "), x]
    else:
        of = [y] if count == 1 else [Text(f"each of the {count:,} components of "), y]
        spans = [Text(f"The {_square(m)} Hessian of ")] + of + [Text(" with respect to "), x]
        if item.has_points:
            spans += [Text(f", one at each of the {points}")]
        if not _checked_only(h, name):
            spans += [Text(", symmetric" if item.symmetric else ", not symmetric (see below)")]
        if diagonal(h, name):
            spans += [Text(", diagonal")]
    if lead and isinstance(spans[0], Text):
        spans[0] = Text(spans[0].text[:1].lower() + spans[0].text[1:])
    checked = [Text(", symmetric at this "), x, Text(" (checked, not proved: a custom "
                                                      "backward)")] \
        if m > 1 and _checked_only(h, name) else []
    return Paragraph(tuple(lead + spans + _evidence(item, name, h) + checked + [Text(".")]
                           + _band_at_this_x(h, name)))


def _checked_only(h, name: str) -> bool:
    """Whether the Hessian's symmetry is checked at this x, not proved: through a custom
    backward (:func:`..core.hessian._judged`), unless it is diagonal (proved so)."""
    item = h.inputs[name]
    return item.symmetric and bool(item.unverified) and not diagonal(h, name)


_BANDS = {0: "diagonal", 1: "tridiagonal", 2: "pentadiagonal"}


def _band_at_this_x(h, name: str) -> list:
    """`` At this x it is tridiagonal: …``: the band one dense Hessian's nonzeros keep to
    (read off its values, so at this x; where the graph proves no such structure), as the
    compressed path names a proved one at a larger size; nothing where the band is not
    narrow (at least two diagonals of zeros beside it) or the headline says diagonal."""
    item = h.inputs[name]
    m = item.numel()
    if (item.has_points or item.sparse is not None or math.prod(h.component_shape(name)) != 1
            or m < 3 or diagonal(h, name) or item.derivatives.layout != torch.strided):
        return []
    rows, cols = (item.derivatives.reshape(m, m) != 0).nonzero(as_tuple=True)
    width = int((rows - cols).abs().max()) if rows.numel() else 0
    if m < 2 * width + 3:
        return []
    kind = _BANDS.get(width, f"banded ({2 * width + 1} diagonals)")
    where = [Text("on the diagonal.")] if width == 0 else [
        Text("where "), Math(rf"\lvert i - j \rvert \le {width}", f"|i − j| ≤ {width}"), Text(".")]
    return [Text(" At this "), notation.prose_name(name),
            Text(f" it is {kind}: its nonzero entries lie "), *where]


def diagonal(h, name: str) -> bool:
    """Whether each first derivative depends on its own entry of x only (within a point)."""
    item = h.inputs[name]
    k = len(h.component_shape(name))
    points = set(item.pairing.in_axes)
    rest = [b for b in range(item.dim()) if b not in points]
    return bool(rest) and all((k + b, b) in set(item.structure) for b in rest)


# -- the formulas ---------------------------------------------------------------------------
def second_partial(output: str, input_: str, out_index: str, j: str, k: str | None) -> Math:
    """``∂²y_i/∂x_i²`` (``k`` None) or ``∂²s/∂x_i∂x_j`` with the cell's names."""
    y, y_plain = notation.atom(output)
    x, x_plain = notation.atom(input_)
    y_sub, y_sub_plain = (f"_{{{out_index}}}", f"_{out_index}") if out_index else ("", "")
    if k is None:
        return Math(rf"\frac{{\partial^2 {y}{y_sub}}}{{\partial {x}_{{{j}}}^2}}",
                    f"∂²{y_plain}{y_sub_plain}/∂{x_plain}_{j}²")
    return Math(rf"\frac{{\partial^2 {y}{y_sub}}}{{\partial {x}_{{{j}}}\,\partial {x}_{{{k}}}}}",
                f"∂²{y_plain}{y_sub_plain}/∂{x_plain}_{j}∂{x_plain}_{k}")


def _index(h, name: str, component: str | None, point_letters: dict[int, str]) -> str:
    """The output's index: point axes by letter, component axes by ``component``."""
    out_ndim = h.output.dim()
    if out_ndim == 0:
        return ""
    item = h.inputs[name]
    comp = [a for a in range(out_ndim) if a not in set(item.pairing.out_axes)]
    parts = {a: point_letters[b] for a, b in item.pairing}
    values = component.split(",") if component else []
    parts.update(zip(comp, values))
    return ",".join(parts.get(a, "k") for a in range(out_ndim))


def hessian_formulas(h, name: str, options) -> list[Formula]:
    """The second derivatives of one input: rows per component, or Hessian matrices."""
    item = h.inputs[name]
    if getattr(item, "sparse", None) is not None or \
            getattr(item, "sparse_blocks", None) is not None:  # in words, never densified
        return []
    if math.prod(item.per_point_shape) == 1:
        return [_scalar_per_point(h, name, options)]
    return _per_point_matrices(h, name, options)


def _scalar_per_point(h, name: str, options) -> Formula:
    """f″ at every point: shaped like x (one component), or one row per component."""
    item = h.inputs[name]
    d, comp = item.derivatives, h.component_shape(name)
    letters = {b: _LETTERS[i % len(_LETTERS)] for i, b in enumerate(range(item.dim()))}
    x_index = ",".join(letters[b] for b in range(item.dim()))
    count = math.prod(comp)
    if count == 1:
        block = tensor_block(d) if d.dim() <= 2 else tensor_block(
            d, row_label=notation.slice_label(tuple(d.shape[:-1])))
        # at points each entry is one point's own f″ (nothing of another point sums into
        # it): none reads ≈0 beside a larger one, as the first derivatives' (sections._alone)
        block = replace(block, alone=bool(item.has_points))
        zeros = notation.counted([0] * len(comp), options.index_base)
        lhs = second_partial(output_symbol(h), name, _index(h, name, zeros, letters),
                             x_index, None) if item.has_points else _straight(h, name)
        return formula(lhs, block, options, d.dtype, d.shape)

    f = notation.letters()[0]

    def label(k: int) -> Entry:
        sub = notation.counted(multi_index(k, comp), options.index_base)
        return Entry(f"{f}_{{{sub}}}''", f"{f}_{sub}″")

    block = replace(tensor_block(d.reshape(count, -1), row_label=label),
                    alone=bool(item.has_points))  # each a point's own, as above
    index = _index(h, name, None, letters)
    lhs = second_partial(output_symbol(h), name, index, x_index, None) if item.has_points \
        else _straight(h, name, index)
    return formula(lhs, block, options, d.dtype, d.shape)


def _straight(h, name: str, index: str = "") -> Math:
    """``d²y/dx²`` (``d²y_k/dx²``): one variable."""
    (y, y_plain), (x, x_plain) = notation.atom(output_symbol(h)), notation.atom(name)
    sub, sub_plain = (f"_{{{index}}}", f"_{index}") if index else ("", "")
    return Math(rf"\frac{{d^2 {y}{sub}}}{{d {x}^2}}", f"d²{y_plain}{sub_plain}/d{x_plain}²")


def _block_lhs(h, name: str, c: int, p: int, base: int = 1) -> Math:
    """``∂²s/∂x_i∂x_j`` at one point; ``∇²f(x^{(p)})`` (``∇²f_c``) at many points, counted
    from ``base`` (``∂²y_1/∂x_i∂x_j``: the tutorial's y_1)."""
    item = h.inputs[name]
    comp = h.component_shape(name)
    count = math.prod(comp)
    if item.has_points:
        sub = notation.counted(multi_index(c, comp), base)
        f = notation.letters()[0]
        f_tex, f_plain = (rf"\nabla^2 {f}", f"∇²{f}") if count == 1 else \
            (rf"\nabla^2 {f}_{{{sub}}}", f"∇²{f}_{sub}")
        at = notation.point(name, str(p + base))
        return Math(rf"{f_tex}\big({at.tex}\big)", f"{f_plain}({at.plain})")
    index = notation.counted(multi_index(c, comp), base) if count > 1 else ""
    return second_partial(output_symbol(h), name, index, "i", "j")


def _more_hessians(name: str, hidden: int) -> Paragraph:
    """⋮ for the Hessians not drawn, counted, with where they are."""
    return Paragraph((Math(r"\vdots", "⋮"), Text(f" {hidden:,} more Hessian"
                                                  f"{'s' if hidden > 1 else ''}, all in "),
                      Code(f"r.derivatives[{name!r}]"), Text(".")))


def _per_point_matrices(h, name: str, options) -> list:
    """One m × m Hessian per component and point; first, ⋮, last when there are many (the
    first and ⋮ only where the height budget asks, :mod:`.budget`; a long name is one letter
    in the maths, :func:`.notation.stand_in`)."""
    item = h.inputs[name]
    count = math.prod(h.component_shape(name))
    blocks = item.blocks(count)
    total, m = count * item.point_count, blocks.shape[-1]
    pp = item.per_point_shape
    label = notation.entry_label(name, pp) if len(pp) >= 2 else None
    caption = [Text(f"{_square(m)}: a row and a column per entry of "),
               notation.prose_name(name) if not item.has_points else Text("one point"),
               Text(" (flattened row-major).") if len(pp) >= 2 else Text(".")]
    formulas: list = []
    shown = component_indices(total, min(SHOWN_BLOCKS, fit_of(options).components))
    for flat in shown:
        if flat is None:
            formulas.append(_more_hessians(name, total - len(shown) + 1))
            continue
        c, p = divmod(flat, item.point_count)
        matrix = blocks[c, p]
        block = Block(lambda r, k, t=matrix: t[r[:, None], k[None, :]], m, m, matrix.device,
                      row_label=label, col_label=label)
        formulas.append(formula(_block_lhs(h, name, c, p, options.index_base), block,
                                options, matrix.dtype,
                                caption=caption if flat == 0 else ()))
    return formulas
