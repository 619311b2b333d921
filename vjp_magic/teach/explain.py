"""``--explain``: the tutorial's steps for this cell, above the derivatives.

1. the function and its shapes (m and n, flattened row-major);
2. the Jacobian J with its structure (zero between different points);
3. the gradient argument(s) v, as the rows of one matrix V;
4. vᵀJ is the derivatives shown below (their numbers are not repeated here); where the
   cell's own backward sent a general v (v = ∇ℓ(y)), the tutorial's special case with this
   cell's v, J and vᵀJ = ∇(ℓ∘f)(x).

The maths counts from ``options.index_base`` (1, as the tutorial does), the labels of J as the
code does (``x[0,0]``); step 1 says how they meet (``x_{1,1} is x[0,0]``), as ``--symbolic``
names the entries.
"""
from __future__ import annotations

import math
from contextvars import ContextVar

import torch

from ..render import notation
from ..render.codegen import output_symbol
from ..core.pairing import proved_for_every
from ..core.marked import Marked, marked
from ..core.validation import sentence_name
from ..render.document import (Code, Entry, Math, Paragraph, Section, Text, paragraph,
                               prose)
from ..render.matrix import Block
from ..render.numbers import plural
from ..render.parameters import MANY_INPUTS, largest_tensors
from ..render.sections import formula, jacobian_block, shows_v0
from .backward_notes import chain_rule_blocks, upstream_seed

SHOWN_GRADIENTS = 4  # rows of V shown (first two, last two) when there are more
# set (features.explain) while --symbolic shows SymPy's names x_{1,1} in the same display
SYMPY_NAMES: ContextVar[bool] = ContextVar("SYMPY_NAMES", default=False)


def explain_sections(result, options, log=None) -> tuple[Section, ...]:
    """One section: step 1 once, steps 2–4 for each input the output depends on; then the
    chain rule with the numbers of the cell's own backward with a general v (``log``)."""
    used = [name for name, item in result.inputs.items() if not item.unused]
    if len(used) > MANY_INPUTS:  # a module's parameters: the steps once, as the table is one
        return (Section(tuple(_many_inputs(result, used, options, log)), title="Explained"),)
    blocks: list = [_function(result, options.index_base)]
    for name in used:
        if len(used) > 1:  # steps 2-4 again: for which input, and J named for it
            blocks.append(paragraph(Text("With respect to "), notation.prose_name(name),
                                    Text(":"), strong=True))
        blocks += _jacobian(result, name, options, several=len(used) > 1)
        blocks += _gradient_argument(result, name, options)
        blocks.append(_product(result, name))
    blocks += _chain_rule(result, log, options)
    # the numbered steps say what they are; several inputs repeat steps 2-4 under a lead each
    return (Section(tuple(blocks), title="Explained" if len(result.inputs) > 1 else None),)


def _many_inputs(result, used: list[str], options, log) -> list:
    """Step 1 for all the tensors at once (a few named, the rest counted), steps 2–4 for the
    one with the largest derivatives (the others' are alike: their rows of the table; its J
    is the matrix of its derivatives below), and the chain rule for it alone: within one
    screen however many tensors there are."""
    y = output_symbol(result)
    name = (largest_tensors(result, 1) or used)[-1]
    n = sum(result.inputs[k].numel() for k in used)
    shown = [notation.prose_name(k) for k in (used[:2] + used[-1:])]
    y_math, count = notation.math_name(y), len(used)
    g = notation.letters()[0]
    f = Math(rf"{y_math.tex} = {g}(p_1, \dots, p_{{{count}}})",
             f"{y_math.plain} = {g}(p_1, …, p_{count})")
    head = _step(1, Text("The function "), f, Text(f" of {count} tensors p: "), shown[0],
                 Text(", "), shown[1], Text(", …, "), shown[2],
                 Text(f". Flattened row-major, they have n = {plural(n, 'entry')} in all, "),
                 notation.prose_name(y), Text(f" has m = {result.output.numel():,}."))
    lead = paragraph(Text("Steps 2–4 are alike for every tensor p; here for "),
                     notation.prose_name(name), Text(", whose derivatives are the largest "
                                                     "(each other one's: its row of the "
                                                     "table below and "),
                     Code("r.derivatives[name]"), Text("):"), strong=True)
    return [head, lead, *_jacobian(result, name, options, several=True)[:1],  # J: below
            *_gradient_argument(result, name, options), _product(result, name),
            *_chain_rule(result, log, options, only=name)]


def _step(number: int, *spans) -> Paragraph:
    return paragraph(f"{number}. ", *spans)


def _chain_rule(result, log, options, only: str | None = None) -> list:
    """The tutorial's special case with this cell's numbers: v = ∇ℓ(y) sent by the cell's own
    backward, J and vᵀJ = ∇(ℓ∘f)(x) (for the input ``only``, where given)."""
    seed, names = upstream_seed(result, log) if log is not None else (None, [])
    if seed is None or seed.tensor is not result.output:
        return []
    names = names if only is None else [k for k in names if k == only]
    y = notation.prose_name(output_symbol(result))
    head = paragraph("The cell's own backward sent a v that is not one-hot: for v = ",
                     Math(r"\nabla\ell(y)", "∇ℓ(y)"), ", the gradient of a loss at ", y,
                     ", the tutorial's special case ",
                     Math(r"v^\top J = \nabla(\ell\circ f)(x)", "vᵀJ = ∇(ℓ∘f)(x)"),
                     ", with this cell's numbers:")
    return [head, *chain_rule_blocks(result, seed.gradient, names, options, jacobian=False)]


def _first_entry(name: str, shape, base: int) -> tuple:
    """``x_{1,1} is x[0,0]``: the first entry in the maths and in the code; nothing for one
    entry. Plain text reads ``x_1,1`` as the numbers' labels do, ``x_{1,1}`` only beside
    ``--symbolic`` (:data:`SYMPY_NAMES`), whose SymPy symbols print so."""
    axes = [a for a, n in enumerate(shape) if n != 1]
    if not axes:
        return ()
    sub = notation.counted([0] * len(axes), base)
    x = notation.math_name(name)
    tex = x.tex if len(x.tex) == 1 else "{" + x.tex + "}"
    braced = SYMPY_NAMES.get() and len(axes) > 1  # as SymPy prints x_{1,1} beside it
    maths = Math(f"{tex}_{{{sub}}}", f"{x.plain}_{{{sub}}}" if braced else f"{x.plain}_{sub}")
    return notation.link(maths, notation.tensor_entry(name, [0] * len(shape)), base)


def _function(result, base: int = 1) -> Paragraph:
    y = output_symbol(result)
    m = result.output.numel()
    names = [notation.math_name(n) for n in [y, *result.inputs]]  # parts of one formula
    args = ", ".join(n.tex for n in names[1:]), ", ".join(n.plain for n in names[1:])
    item = next(iter(result.inputs.values()))
    small, capital = notation.letters()
    f = capital if len(result.inputs) == 1 and item.has_points and not result.full else small
    spans: list = [Text("The function "), Math(f"{names[0].tex} = {f}({args[0]})",
                                               f"{names[0].plain} = {f}({args[1]})"),
                   Text(". Flattened row-major, ")]
    for name, item in result.inputs.items():
        spans += [notation.prose_name(name),
                  Text(f" has {_n(result, name)} = {plural(item.numel(), 'entry')}, ")]
    spans += [notation.prose_name(y), Text(f" has m = {m:,}. ")]
    first = next(iter(result.inputs))
    return _step(1, *spans, *_first_entry(first, result.inputs[first].shape, base))


def _n(result, name: str) -> str:
    """The symbol of ``name``'s number of entries: n, or one per input where there are
    several (n_a, n_b; n_1, n_2 for names that are no identifiers): one symbol, one value."""
    if len(result.inputs) == 1:
        return "n"
    if all(k.isidentifier() for k in result.inputs):
        return f"n_{name}"
    return f"n_{list(result.inputs).index(name) + 1}"


def _structure(result, name: str) -> Marked:
    """What J's structure is, a marked sentence (the input named as the display spells it)."""
    return marked(_structure_text(result, name, sentence_name(name)))


def _structure_text(result, name: str, shown: str) -> str:
    item = result.inputs[name]
    y = output_symbol(result)
    if result.full or not item.has_points:
        if result.output.numel() == 1:
            return f"{y} is a single number: J has one row, the gradient shown below."
        if result.full:  # no points were looked for: J may have any structure
            return (f"--full: no points looked for, so J is taken whole: one backward per "
                    f"row of J (one entry of {y}).")
        return (f"J is not block-diagonal (no entries of {y} are points of their own): the "
                f"plain way is one backward per row of J (one entry of {y}); rows that read "
                f"no entry of {shown} in common could share one.")
    known = ("The autograd graph proves it" if proved_for_every(result, name) else
             f"The autograd graph shows it at this {shown} only" if item.evidence == "proved"
             else f"Random probes show it at this {shown} only")
    per_point = item.per_point_numel()
    shape = "diagonal" if per_point == 1 and math.prod(result.component_shape(name)) == 1 \
        else "block-diagonal"
    ordered = "" if shape == "diagonal" and item.dim() <= 1 and \
        result.output.dim() <= 1 else " once the entries are ordered by point (shown here " \
        "in row-major order)"
    return f"{known}: J is zero between different points, so J is {shape}{ordered}."


def _jacobian(result, name: str, options, several: bool = False) -> list:
    """Step 2: J and its structure; with several inputs J is named for its input (J_a, J_b:
    one name per matrix in one output)."""
    item = result.inputs[name]
    m, n = result.output.numel(), item.numel()
    entry = notation.partial(output_symbol(result), name, "i", "j")
    small, capital = notation.letters()
    big = capital if item.has_points and not result.full else small
    label = Math(f"J_{{{notation.name_tex(name)}}}", f"J_{notation.math_name(name).plain}") \
        if several else Math(f"J_{big}", f"J_{big}")
    head = _step(2, Text("The Jacobian "), label,
                 Text(f", m × {'n' if several else _n(result, name)} = {m:,} × {n:,}: row "),
                 Math("i", "i"),
                 Text(", column "), Math("j", "j"), Text(" holds "), entry,
                 Text(". "), *prose(_structure(result, name)))
    if m == 1:  # J is the gradient itself: the matrix below
        return [head]
    block = jacobian_block(result, name)
    return [head, formula(label, block, options, item.derivatives.dtype)]


def _gradient_argument(result, name: str, options) -> list:
    item = result.inputs[name]
    y = notation.prose_name(output_symbol(result))
    count = len(result.gradients[name])
    v = notation.gradient_vector(result, name)  # v; v2 where the cell names a tensor v
    v_tex, v_plain = notation.math_name(v).tex, notation.math_name(v).plain
    vj = _vj(v)  # vᵀJ
    if result.output.numel() == 1 and not result.full:
        return [_step(3, Text("The gradient argument: "), y, Text(" is a scalar, so "),
                      Math(f"{v_tex} = 1", f"{v_plain} = 1"), Text(" (the default) and "),
                      Math(vj.tex + " = J", vj.plain + " = J"), Text("."))]
    if count == 1:
        return [_step(3, Text("The gradient argument "), notation.math_name(v),
                      Text(", shaped like "), y, Text(", is all ones: "), vj,
                      Text(" adds up each column of J, whose only non-zero entries belong to "
                           f"its own point, so it lists the derivatives at all "
                           f"{plural(item.point_count, 'point')} at once."))]
    words = _step(3, Text("One gradient argument per component, "
                          f"{plural(count, 'backward call')}: "),
                  notation.indexed(v, "k"), Text(" is one-hot on component "), Math("k", "k"),
                  Text(" (ones along the points)" if item.has_points and not result.full
                       else ""), Text(", so "), _vj(v, "k"),
                  Text(" is the gradient of component "), Math("k", "k"), Text(" alone."))
    if shows_v0(result, name, options):
        return [words]  # v_1, shaped like the output, is shown below
    return [words, formula(Math("V", "V"), _gradient_rows(result, name, options.index_base),
                           options, result.output.dtype)]


def _vj(v: str, sub: str | None = None) -> Math:
    """``vᵀJ`` (``v_kᵀJ`` with ``sub``) with the gradient argument's name ``v``."""
    if sub:
        lead = notation.indexed(v, sub, (r"\top", "T"))
    else:
        atom = notation.math_name(v)
        tex = atom.tex if len(atom.tex) == 1 else "{" + atom.tex + "}"
        lead = Math(tex + r"^\top", atom.plain + "^T")
    return Math(lead.tex + " J", lead.plain + " J")


def _gradient_rows(result, name: str, base: int = 1) -> Block:
    """V: the gradient arguments flattened, one per row (v_1ᵀ, v_2ᵀ, …, counted from
    ``base``; ``v`` as :func:`.notation.gradient_vector` names it), made on demand."""
    grads = result.gradients[name]
    m = result.output.numel()
    v = notation.gradient_vector(result, name)

    def entries(rows, cols):
        return torch.stack([grads[int(r)].reshape(-1)[cols] for r in rows])

    def label(k: int) -> Entry:
        row = notation.indexed(v, str(k + base), (r"\top", "T"))
        return Entry(row.tex, row.plain)

    return Block(entries, len(grads), m, result.output.device, row_label=label)


def _product(result, name: str) -> Paragraph:
    item = result.inputs[name]
    x = notation.prose_name(name)
    shape = notation.dims(item.shape)
    v = notation.gradient_vector(result, name)
    if len(result.gradients[name]) == 1:
        return _step(4, _vj(v), Text(", reshaped to the shape of "), x,
                     Text(f" ({shape}), is the derivative shown below."))
    return _step(4, Math(r"V J", "V J"), Text(": row "), Math("k", "k"), Text(", "),
                 _vj(v, "k"), Text(", reshaped to the shape of "), x,
                 Text(f" ({shape}), is component "), Math("k", "k"),
                 Text(" of the derivatives shown below."))
