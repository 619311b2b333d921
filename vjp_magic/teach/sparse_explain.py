"""``--explain`` for a Jacobian computed by compressed passes: why one backward per colour
gives every nonzero, in the cell's names.

2. the Jacobian and its pattern: row i of J is the entry y[i], its nonzeros the entries of x
   that y[i] reads;
3. the colours: two entries of one colour read disjoint entries of x (the first two of the
   first colour, their entries of x listed), and an entry of x read by k entries of y makes
   k colours the fewest possible;
4. vᵀJ for the v of one colour: each of its entries is a sum over that colour's rows, of which
   at most one is nonzero, so it is exactly one derivative: nothing collides.

Computed by columns (forward-mode passes, ``sparse.mode == "columns"``): 3. the entries of x
are coloured so that no entry of y reads two of one colour (two of the first colour and the
entries of y reading each); 4. entry i of J·u is a sum over that colour's columns, of which
row i reads at most one.

Other inputs of the same result are explained as ``teach/explain.py`` explains them.
"""
from __future__ import annotations

import math

import torch

from ..render import notation
from ..render.codegen import output_symbol
from ..render.matrix import multi_index
from ..render.document import Math, Paragraph, Section, Text, paragraph
from ..render.numbers import plural
from ..render.sparse import (by_columns, code_names, entries_words, layout_of, pattern_paragraph,
                             sparse_of)
from .explain import (_chain_rule, _function, _gradient_argument, _jacobian, _product,
                      explain_sections)

LISTED = 5  # entries of x named for one row before "…"


def explained_sections(result, options, log=None) -> tuple[Section, ...]:
    """``--explain``: as :func:`.explain.explain_sections`, with the compressed passes'
    steps for each input whose Jacobian they computed."""
    used = [name for name, item in result.inputs.items() if not item.unused]
    if not any(sparse_of(result, name) is not None for name in used):
        return explain_sections(result, options, log=log)
    blocks: list = [_function(result, options.index_base)]
    for name in used:
        if len(used) > 1:
            blocks.append(paragraph(Text("With respect to "), notation.prose_name(name),
                                    Text(":"), strong=True))
        if sparse_of(result, name) is None:
            blocks += _jacobian(result, name, options, several=len(used) > 1)
            blocks += _gradient_argument(result, name, options)
            blocks.append(_product(result, name))
            continue
        blocks += sparse_steps(result, name)
    blocks += _chain_rule(result, log, options)
    return (Section(tuple(blocks), title="Explained" if len(result.inputs) > 1 else None),)


def sparse_steps(result, name: str) -> list[Paragraph]:
    """Steps 2-4 for an input computed by compressed passes."""
    if by_columns(sparse_of(result, name)):
        return [_pattern_step(result, name), _column_colour_step(result, name),
                _column_no_collision_step(result, name)]
    return [_pattern_step(result, name), _colour_step(result, name),
            _no_collision_step(result, name)]


def _reads(result, name: str, row: int) -> list[int]:
    """The flat entries of x that output entry ``row`` reads (its row of the pattern)."""
    matrix = sparse_of(result, name).matrix
    crow, col = matrix.crow_indices(), matrix.col_indices()
    return col[int(crow[row]):int(crow[row + 1])].tolist()


def _entry(identifier: str, flat: int, shape) -> Math:
    return notation.tensor_entry(identifier, multi_index(flat, tuple(shape))
                                 if len(shape) else [])


def _listed(identifier: str, flats: list[int], shape) -> list:
    spans: list = []
    for k, flat in enumerate(flats[:LISTED]):
        spans += [Text(", " if k else ""), _entry(identifier, flat, shape)]
    if len(flats) > LISTED:
        spans.append(Text(f", … ({len(flats)} entries)"))
    return spans or [Text("no entry")]


def _pattern_step(result, name: str) -> Paragraph:
    sparse = sparse_of(result, name)
    m, n = sparse.matrix.shape
    y = output_symbol(result)
    words = pattern_paragraph(result, name, lead=False)  # the explanation names the input
    return paragraph("2. The Jacobian ", Math("J", "J"), f", m × n = {m:,} × {n:,}: row ",
                     Math("i", "i"), " belongs to entry ", Math("i", "i"), " of ",
                     notation.prose_name(y), " (flattened), and it is nonzero only at the "
                     "entries of ", notation.prose_name(name), " that this entry reads. ",
                     *words.spans)


def _fewest(sparse) -> int:
    """The most entries of y that read one entry of x: a colouring needs that many."""
    col = sparse.matrix.col_indices()
    return int(torch.bincount(col).max()) if col.numel() else 0


def _colour_step(result, name: str) -> Paragraph:
    sparse = sparse_of(result, name)
    item = result.inputs[name]
    found = layout_of(sparse, result.output.shape, item.shape)
    y, out_shape, in_shape = output_symbol(result), result.output.shape, item.shape
    k, fewest = sparse.count, _fewest(sparse)
    spans: list = [Text("3. The entries of "), notation.prose_name(y),
                   Text(f" are given {k} colour{'s' if k != 1 else ''}, so that two entries "
                        "of one colour never read the same entry of "),
                   notation.prose_name(name), Text(". ")]
    first = found.first
    if len(first) >= 2:
        p, q = first[0], first[1]
        spans += [_entry(y, p, out_shape), Text(" reads "), *_listed(name, _reads(result, name,
                                                                                 p), in_shape),
                  Text("; "), _entry(y, q, out_shape), Text(", of the same colour, reads "),
                  *_listed(name, _reads(result, name, q), in_shape),
                  Text(f": rows {p} and {q} of "), Math("J", "J"),
                  Text(" read disjoint entries of "), notation.prose_name(name), Text(". ")]
    spans += [Text("An entry of "), notation.prose_name(name),
              Text(f" is read by up to {plural(fewest, 'entry')} of "),
              notation.prose_name(y),
              Text(f", which must all differ in colour: no colouring needs fewer than "
                   f"{plural(fewest, 'pass')}" + ("; this one is the fewest." if k == fewest else
                                f"; this one takes {k}."))]
    return Paragraph(tuple(spans))


def _no_collision_step(result, name: str) -> Paragraph:
    sparse = sparse_of(result, name)
    found = layout_of(sparse, result.output.shape, result.inputs[name].shape)
    first = found.first
    ones = " + ".join(f"e_{{{i}}}" for i in first[:2]) + r" + \dots"
    ones_plain = " + ".join(f"e{i}" for i in first[:2]) + " + …"
    v = code_names(result, name)[0]["v"]  # as the code beneath names it (v2 beside a v)
    tex = notation.name_tex(v)
    return paragraph(
        "4. For the ", notation.prose_name(v), " of one colour (",
        Math(f"{tex} = {ones}", f"{v} = {ones_plain}"), ", 1 on its entries and 0 elsewhere), "
        "entry ", Math("j", "j"), " of ", Math(rf"{tex}^\top J", f"{v}ᵀJ"),
        " is the sum of ", Math("J_{ij}", "J_ij"), " over the rows ", Math("i", "i"),
        " of that colour. At most one of those rows reads entry ", Math("j", "j"), " of ",
        notation.prose_name(name), ", so the sum has at most one nonzero term: it is exactly ",
        Math("J_{ij}", "J_ij"), " for that row, and nothing collides. One backward per colour, "
        f"{sparse.count} in all, gives every one of the "
        f"{entries_words(sparse, 'nonzeros', 'entries')} of ", Math("J", "J"),
        ", each read off at its row's colour.", *_at_every_point(result, name))


def _at_every_point(result, name: str) -> list:
    """Where the values of a point structure came from the colours (a large batch of
    stencils): why one v serves every point at once, against one pass per component."""
    item = result.inputs[name]
    if not item.has_points:
        return []
    count = math.prod(result.component_shape(name))
    return [f" The {item.point_count:,} points never share an entry of ",
            notation.prose_name(name), f" (each reads only its own), so one colouring serves "
            f"all of them at once: {plural(sparse_of(result, name).count, 'pass')} instead of "
            f"one per component ({count:,})."]


# -- computed by columns: one forward-mode pass per colour of x's entries ----------------------
def _read_by(result, name: str, flat: int) -> list[int]:
    """The flat entries of the output that read entry ``flat`` of x (its column of the
    pattern)."""
    matrix = sparse_of(result, name).matrix
    crow, col = matrix.crow_indices(), matrix.col_indices()
    at = (col == flat).nonzero().squeeze(1)
    return (torch.searchsorted(crow, at, right=True) - 1).tolist()


def _pair(sparse) -> list[int]:
    """The first two flat entries of x of the first colour that has two (fewer where none
    has): the first colour may be a dense column alone."""
    colours = sparse.colours.cpu().reshape(-1)
    counts = torch.bincount(colours, minlength=1)
    shared = (counts >= 2).nonzero().squeeze(1)
    colour = int(shared[0]) if shared.numel() else 0
    return (colours == colour).nonzero().squeeze(1)[:2].tolist()


def _column_colour_step(result, name: str) -> Paragraph:
    sparse = sparse_of(result, name)
    item = result.inputs[name]
    y, out_shape, in_shape = output_symbol(result), result.output.shape, item.shape
    crow = sparse.matrix.crow_indices()
    k, widest = sparse.count, int(crow.diff().max()) if crow.numel() > 1 else 0
    spans: list = [Text("3. The entries of "), notation.prose_name(name),
                   Text(f" are given {k} colour{'s' if k != 1 else ''}, so that no entry of "),
                   notation.prose_name(y), Text(" reads two entries of one colour. ")]
    first = _pair(sparse)
    if len(first) >= 2:
        p, q = first[0], first[1]
        spans += [_entry(name, p, in_shape), Text(" is read by "),
                  *_listed(y, _read_by(result, name, p), out_shape), Text("; "),
                  _entry(name, q, in_shape), Text(", of the same colour, by "),
                  *_listed(y, _read_by(result, name, q), out_shape),
                  Text(f": columns {p} and {q} of "), Math("J", "J"),
                  Text(" are nonzero in disjoint rows. ")]
    spans += [Text("An entry of "), notation.prose_name(y),
              Text(f" reads up to {plural(widest, 'entry')} of "), notation.prose_name(name),
              Text(f", which must all differ in colour: no colouring needs fewer than "
                   f"{plural(widest, 'pass')}" + ("; this one is the fewest." if k == widest else
                                f"; this one takes {k}.")),
              Text(f" Colouring the entries of {y} instead would take at least "
                   f"{plural(_fewest(sparse), 'backward pass')} (an entry of {name} is read "
                   "by that many).")]
    return Paragraph(tuple(spans))


def _column_no_collision_step(result, name: str) -> Paragraph:
    sparse = sparse_of(result, name)
    first = _pair(sparse)
    ones = " + ".join(f"e_{{{j}}}" for j in first[:2]) + r" + \dots"
    ones_plain = " + ".join(f"e{j}" for j in first[:2]) + " + …"
    names = code_names(result, name)[0]  # as the code beneath names them
    u, v, g = names["u"], names["v"], names["g"]
    ut, vt, gt = (notation.name_tex(n) for n in (u, v, g))
    ju = Math(f"J {ut}", f"J·{u}")
    return paragraph(
        "4. For the ", notation.prose_name(u), " of one colour (",
        Math(f"{ut} = {ones}", f"{u} = {ones_plain}"),
        ", 1 on its entries of ", notation.prose_name(name), " and 0 elsewhere), entry ",
        Math("i", "i"), " of ", ju, " is the sum of ", Math("J_{ij}", "J_ij"),
        " over the columns ", Math("j", "j"), " of that colour. Row ", Math("i", "i"),
        " reads at most one of those entries, so the sum has at most "
        "one nonzero term: it is exactly ", Math("J_{ij}", "J_ij"), " for that column, and "
        "nothing collides. Each ", ju, " is a forward-mode product, taken on "
        "the recorded graph by differentiating twice: ",
        Math(rf"{gt} = J^\top {vt}", f"{g} = Jᵀ{v}"), " is linear in ", notation.prose_name(v),
        ", so the vector-Jacobian product of ", notation.prose_name(g), " with ",
        notation.prose_name(u), " is ", ju,
        f". One per colour, {sparse.count} in all, gives every one of the "
        f"{entries_words(sparse, 'nonzeros', 'entries')} of ", Math("J", "J"),
        ", each read off at its column's colour.")
