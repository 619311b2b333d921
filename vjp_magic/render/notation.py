"""Names as mathematics: the cell's own names, in TeX and plain text, chosen once.

``math_name("w_hidden")`` is :math:`w_{\\mathrm{hidden}}`; an expression (``x.T @ w``) is set
in monospace, a module's parameter as valid Python (``mlp[0].weight``, never
``mlp.0.weight``) in every spelling. The left-hand sides of the derivative formulas follow
the tutorial's notation (F for the map at many points, :math:`x^{(i)}`, :math:`f'(x^{(i)})`,
:math:`\\nabla f`, :math:`J_F`) and carry the cell's own names (∂s_i/∂a_j for an output ``s``
and input ``a``).

Two numberings, each in its place: the maths counts components and points from
``base`` (``RenderOptions.index_base``: 1, the tutorial's f_1′, v_1, x^{(1)}; or 0), the code
and the labels that name a tensor's entries count as Python does (``y[0]``, ``v[0] = 1``);
:func:`link` says once how they meet ("f_1 is y[0]").
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import fields, is_dataclass, replace

from ..core.validation import parameter_expression
from .codegen import APPLIED, CELL_NAMES, expression, fresh, identifiers, loop_names, output_symbol
from .document import Code, Entry, Formula, Math, Text
from .graph_facts import one_function
from .latex import greek_macro
from .matrix import lhs_width
from .matrix import multi_index as unravel

_MONO_ESCAPES = {
    "\\": r"\backslash{}", "{": r"\{", "}": r"\}", "_": r"\_", "#": r"\#", "%": r"\%",
    "&": r"\&", "$": r"\$", "^": r"\hat{}", "~": r"\sim{}", "<": r"\lt{}", ">": r"\gt{}",
    # spaces as wide as a monospace character; punctuation without math spacing
    " ": r"\phantom{0}", "=": "{=}", ",": "{,}", "-": "{-}", "+": "{+}", ":": "{:}", "*": "{*}",
    ".": "{.}", ";": "{;}", "!": "{!}", "|": r"\vert{}", "'": r"\text{'}", '"': r'\text{"}',
    "…": r"{\ldots}",  # (the middle of a name shortened to fit: render/parameters.py)
}


def mono(text: str) -> str:
    """Source text in monospace, math-mode safe (no \\verb, KaTeX and MathJax alike; a Greek
    letter as its macro, as KaTeX's strict mode wants; another letter outside ASCII as text)."""
    return r"\mathtt{" + "".join(_MONO_ESCAPES.get(ch) or _greek(ch) or _unicode(ch)
                                 for ch in text) + "}"


def _unicode(ch: str) -> str:
    """Any other character outside ASCII (é, ŷ) as text: KaTeX warns on an accented letter in
    maths ("Accented Unicode text character used in math mode")."""
    return ch if ch.isascii() else r"\text{" + ch + "}"


def _greek(ch: str) -> str | None:
    """A Greek letter inside a longer name, braced so that no letter after it joins the macro."""
    macro = greek_macro(ch)
    return None if macro is None else "{" + macro + "}"


def _word(text: str) -> str | None:
    """A name part: one letter in italics, longer ASCII words upright, Greek as macros."""
    if len(text) == 1 and greek_macro(text):
        return greek_macro(text)
    if not re.fullmatch(r"[A-Za-z0-9]+", text):
        return None
    return text if len(text) == 1 or text.isdigit() else r"\mathrm{" + text + "}"


def name_tex(identifier: str) -> str:
    """``x``, ``x_{1}``, ``w_{\\mathrm{hidden}}``, ``\\mathrm{xs}``, ``\\alpha``; anything else
    (expressions, attribute names, odd underscores) in monospace."""
    if identifier.isidentifier():
        head, _, tail = identifier.partition("_")
        head_tex = _word(head) if head else None
        if head_tex is not None and "_" not in identifier:
            return head_tex
        tail_tex = _word(tail) if tail else None
        if head_tex is not None and tail_tex is not None:
            return f"{head_tex}_{{{tail_tex}}}"
        if head_tex is not None and re.fullmatch(r"[A-Za-z0-9]+(_[A-Za-z0-9]+)+", tail):
            return f"{head_tex}_{{\\mathrm{{{tail.replace('_', chr(92) + '_')}}}}}"
    return mono(spelled(identifier))


# The name as valid Python, the same in every spelling: a module's parameter as
# ``named_parameters()`` names it, ``mlp.0.weight``, is ``mlp[0].weight``; others unchanged.
spelled = parameter_expression


def math_name(identifier: str) -> Math:
    """A name of the cell as maths (plain text: the name as the cell spells it, valid
    Python)."""
    return Math(name_tex(identifier), spelled(identifier))


def prose_name(identifier: str) -> Math | Code:
    """A name of the cell inside a sentence: maths for a name (``x``, ``w_{1}``), copyable code
    for an expression (``layer.weight``, ``mlp[0].weight``, ``x.T @ w``)."""
    tex = name_tex(identifier)
    return Code(spelled(identifier)) if tex.startswith(r"\mathtt") else Math(tex, identifier)


def _atom(identifier: str) -> tuple[str, str]:
    """The name as something a subscript or superscript can follow, both spellings."""
    tex = name_tex(identifier)
    if not re.fullmatch(r"[A-Za-z]|\\[A-Za-z]+", tex):
        tex = "{" + tex + "}"
    plain = expression(identifier)
    return tex, plain


atom = _atom  # (the second derivatives' formulas set their names as these do)


# -- stand-ins: one letter for a long name on a formula's left side -------------------------
# A name of the cell set wider than this many counted characters (render/typeset.py) would
# take the width budget's share of a matrix on a formula's left side (∂y/∂<name> = [...]):
# within :func:`stand_ins`, a formula's line (its left side and its matrix's labels,
# :func:`left_side`) writes it as one letter, which :func:`introduced` says beneath its first
# use. The prose keeps every name; so do mlp[0].weight and model.lin.weight (13.4).
LONG_NAME = 14.0
# Letters the displays give a meaning of their own: the function's (f, g, h, q, s), the
# gradient argument v, indices (i, j, k, l, m, n), a parameter p, d of dy/dx, e, o (read as
# 0), J_F, the Hessian's H, ℝ, ^T; capitals alike.
_RESERVED = frozenset("defghijklmnopqsvDEFGHIJKLMNOPQRSTV")
_STANDBY = "wuzbcatry"  # after the name's own initials, last part first
_STAND_INS: ContextVar[dict | None] = ContextVar("vjp_magic_stand_ins", default=None)


@contextmanager
def stand_ins(names: Iterable[str], times: int = 1):
    """Build a display of ``names`` (the output's and the inputs') within: on a formula's
    line a long one (:data:`LONG_NAME`; ``times``: how often the widest left side writes it,
    2 in a Hessian's ∂²y/∂x_i∂x_j) is one letter, the same in every formula of the display."""
    long = [n for n in dict.fromkeys(names)
            if lhs_width(Math(name_tex(n), expression(n))) * times > LONG_NAME]
    token = _STAND_INS.set({"long": sorted(long, key=len, reverse=True), "letters": {}})
    try:
        yield
    finally:
        _STAND_INS.reset(token)


def left_side(maths: Math) -> Math:
    """``maths`` (a formula's left side, a label of its matrix) with each long name in it
    (:func:`stand_ins`) written as its letter (a lower-case letter of the name's own parts,
    last first, that neither the cell nor the display uses: ``w`` for
    ``classifier.parametrizations.weight.original1``); as it is outside :func:`stand_ins`."""
    registry = _STAND_INS.get()
    if registry is None or maths is None:
        return maths
    tex, plain = maths.tex, maths.plain
    for name in registry["long"]:
        letter = _letter(registry, name) if name_tex(name) in tex else None
        if letter is None:
            continue
        tex = tex.replace(name_tex(name), _stand_in_tex(letter))
        for spelling in sorted({expression(name), spelled(name), name}, key=len, reverse=True):
            plain = re.sub(rf"(?<![A-Za-z0-9.]){re.escape(spelling)}(?![A-Za-z0-9])", letter,
                           plain)  # (x_j, D_x: a subscript follows, or the name is one)
    return maths if tex == maths.tex else type(maths)(tex, plain)


def left_labels(block):
    """``block`` (:class:`.matrix.Block`) with its row and column labels as
    :func:`left_side` writes them."""
    registry = _STAND_INS.get()
    if registry is None or not registry["long"]:
        return block

    def relabelled(label):
        return None if label is None else (lambda flat: left_side(label(flat)))

    return replace(block, row_label=relabelled(block.row_label),
                   col_label=relabelled(block.col_label))


def _letter(registry: dict, identifier: str) -> str | None:
    given = registry["letters"]
    if identifier not in given:
        initials = [word[0].lower() for word in re.findall(r"[A-Za-z]+", spelled(identifier))]
        taken = set(CELL_NAMES.get()) | set(letters()) | {c for c in given.values() if c}
        given[identifier] = next(
            (c for c in [*reversed(initials), *_STANDBY]
             if c not in _RESERVED and c not in taken and c.upper() not in taken), None)
    return given[identifier]


def _stand_in_tex(letter: str) -> str:
    """A stand-in letter in TeX: ``\\mathit{w}`` (set as a plain w; how :func:`introduced`
    finds it again)."""
    return rf"\mathit{{{letter}}}"


def introduced(sections: Iterable) -> tuple:
    """``sections`` with what each stand-in letter stands for said beneath the first formula
    that writes it, at the end of its caption: "… w is `classifier…original1`." """
    registry = _STAND_INS.get()
    standing = {letter: name for name, letter in (registry or {"letters": {}})["letters"].items()
                if letter}
    if not standing:
        return tuple(sections)
    said: set = set()
    out = []
    for section in sections:
        blocks = []
        for block in section.blocks:
            texts = " ".join(_texts(block)) if isinstance(block, Formula) else ""
            new = [c for c in standing if c not in said and _stand_in_tex(c) in texts]
            said.update(new)
            blocks.append(replace(block, caption=_where(block.caption, new, standing))
                          if new else block)
        out.append(replace(section, blocks=tuple(blocks)))
    return tuple(out)


def _where(caption: tuple, new: list[str], standing: dict) -> tuple:
    """``caption`` and "w is `classifier…original1`." (after "; " where it ends mid-sentence)."""
    last = caption[-1] if caption else None
    ended = not caption or isinstance(last, Text) and last.text.rstrip().endswith(".")
    spans: list = [Text(" " if caption and ended else "; " if caption else "")]
    for k, c in enumerate(new):
        spans += [Text("" if k == 0 else " and " if k == len(new) - 1 else ", "),
                  Math(_stand_in_tex(c), c), Text(" is "), prose_name(standing[c])]
    return (*caption, *spans, Text("."))


def _texts(node):
    """Every TeX spelling of maths inside a document node."""
    if isinstance(node, Math):
        yield node.tex
    elif isinstance(node, (tuple, list)):
        for child in node:
            yield from _texts(child)
    elif is_dataclass(node):
        for f in fields(node):
            yield from _texts(getattr(node, f.name))


# -- shapes and types -----------------------------------------------------------------------
def dims(shape: Sequence[int]) -> str:
    """``3 × 2``, ``5``, ``1 × 1``; a scalar (shape ``()``) is ``scalar``."""
    return " × ".join(f"{n:,}" for n in shape) if len(shape) else "scalar"


def dims_math(shape: Sequence[int]) -> Math:
    """:func:`dims` as maths: the same words in every format (a 0-d shape is ``scalar``,
    never ``1``, which reads as shape ``(1,)``)."""
    return Math(r" \times ".join(f"{n:,}".replace(",", "{,}") for n in shape)
                or r"\mathrm{scalar}", dims(shape))


def dtype_text(dtype) -> str:
    return str(dtype)  # torch.float64: the name the cell would write


# -- labels (R's Block labels: index → Entry) -----------------------------------------------
def counted(index: Sequence[int], base: int = 1) -> str:
    """A maths subscript counted from ``base``: ``(0, 2)`` → ``1,3`` (base 1)."""
    return ",".join(str(i + base) for i in index)


def tensor_entry(identifier: str, index: Sequence[int] | str) -> Math:
    """One entry of a tensor as the code indexes it, in every spelling: ``y[0,1]``,
    ``y[:, 0]`` (``index`` a string as written)."""
    tex, plain = _atom(identifier)
    sub = index if isinstance(index, str) else ",".join(str(i) for i in index)
    return Math(f"{tex}[{sub.replace(':', '{:}')}]", f"{plain}[{sub}]")


def entry_label(identifier: str, shape: Sequence[int]) -> Callable[[int], Entry]:
    """Row/column labels of a flattened tensor, Python's indices in every spelling:
    ``y[0,1]``."""
    def label(flat: int) -> Entry:
        return tensor_entry(identifier, unravel(flat, shape))

    return label


_LETTERS = "fghqs"  # the generic function's letter: the tutorial's f, else the first free
# (not p, u, v, w: the displays use them for a parameter, a colour's vector and v itself)


def free_letter(candidates: str, taken) -> str | None:
    """The first of ``candidates`` of which ``taken`` holds neither the letter nor its
    capital; None where it holds them all."""
    return next((c for c in candidates if c not in taken and c.upper() not in taken), None)


def letters() -> tuple[str, str]:
    """The letters of the function at one point and of the map at many (the tutorial's f
    and F): the first pair of which neither the cell nor the result's own names bind (with
    ``f = torch.sin(x)`` bound, f' would read as the derivative of that tensor), f and F
    where they bind them all; the notebook's own one-letter function where the output
    applies it (``y = f(x)`` with ``def f``: its f′ is the student's f′)."""
    small = APPLIED.get() or free_letter(_LETTERS, CELL_NAMES.get()) or "f"
    return small, small.upper()


def component_label(shape: Sequence[int], gradient: bool,
                    base: int = 1) -> Callable[[int], Entry]:
    """Rows of a derivative matrix, one per component, counted from ``base``: ``f_1'`` or
    ``\\nabla f_{1,2}``."""

    f = letters()[0]

    def label(flat: int) -> Entry:
        sub = counted(unravel(flat, shape), base)
        if gradient:
            return Entry(rf"\nabla {f}_{{{sub}}}", f"grad {f}_{sub}")
        return Entry(f"{f}_{{{sub}}}'", f"{f}_{sub}'")

    return label


def link(maths: Math, code: Math | Code, base: int = 1) -> tuple:
    """How the maths meets the code, said once: ``Counted from 1 as the tutorial does, from 0
    in the code: f_1 is y[0].`` (``base`` 0: ``Counted from 0 as in the code: f_0 is
    y[0].``)."""
    lead = ("Counted from 1 as the tutorial does, from 0 in the code: " if base == 1 else
            f"Counted from {base} as in the code: " if base == 0 else
            f"Counted from {base}, from 0 in the code: ")
    return (Text(lead), maths, Text(" is "), code, Text("."))


def slice_label(lead_shape: Sequence[int]) -> Callable[[int], Entry]:
    """Rows of a tensor cut into a matrix: ``[0, 1, :]`` (an index, set as maths)."""

    def label(flat: int) -> Entry:
        index = ", ".join(str(i) for i in unravel(flat, lead_shape))
        return Entry(f"[{index}, {{:}}]", f"[{index}, :]")

    return label


# -- the gradient argument v ----------------------------------------------------------------
def gradient_vector(result, name: str) -> str:
    """The name of the gradient argument for input ``name``, the same in the maths, the prose
    and the code beneath: the one-hot vector as the loop binds it (``v``; ``v2`` where the
    cell binds ``v``), else the tutorial's ``v`` — ``v2`` only where the output or an input is
    named ``v`` (its entries are ``v_1``, …: one name, one thing)."""
    item = result.inputs[name]
    if math.prod(result.component_shape(name)) > 1 and result.output.numel() > 1:
        return loop_names(result, item.pairing.out_axes)[1]
    return fresh("v", identifiers([result.output_name, *result.inputs]))


def indexed(identifier: str, sub: str, sup: tuple[str, str] | None = None) -> Math:
    """``v_k``, ``v_{1}^⊤`` (``sup``: TeX and plain text) with the name as the maths sets it
    (``v2_k``: a longer name set upright)."""
    tex, plain = _atom(identifier)
    top_tex, top_plain = sup if sup else ("", "")
    sub_tex = sub if len(sub) == 1 else f"{{{sub}}}"  # (v_1 as the tutorial writes it)
    return Math(f"{tex}_{sub_tex}{'^' + top_tex if top_tex else ''}",
                f"{plain}_{sub}{'^' + top_plain if top_plain else ''}")


# -- left-hand sides ------------------------------------------------------------------------
def point_letters(count: int) -> list[str]:
    """The letters of ``count`` point axes, as every display names them (i; or i, j, l, …)."""
    return ["i"] if count == 1 else ["i", "j", "l", "m", "n", "p"][:count]


def point(identifier: str, letter: str = "i") -> Math:
    """The tutorial's i-th sample point: ``x^{(i)}``."""
    tex, plain = _atom(identifier)
    return Math(f"{tex}^{{({letter})}}", f"{plain}^({letter})")


def partial(output: str, input_: str, out_index: str = "", in_index: str = "",
            straight: bool = False) -> Math:
    """``∂y_i/∂x_j`` with the cell's names (``straight``: ``dy/dx`` for one variable)."""
    y, y_plain = _atom(output)
    x, x_plain = _atom(input_)
    d = "d" if straight else r"\partial "
    d_plain = "d" if straight else "∂"
    y_sub = f"_{{{out_index}}}" if out_index else ""
    x_sub = f"_{{{in_index}}}" if in_index else ""
    return Math(rf"\frac{{{d}{y}{y_sub}}}{{{d}{x}{x_sub}}}",
                f"{d_plain}{y_plain}{'_' + out_index if out_index else ''}/"
                f"{d_plain}{x_plain}{'_' + in_index if in_index else ''}")


def derivative_lhs(result, name: str) -> Math:
    """What the derivative matrix is, for one input, in the tutorial's notation.

    At many points (F applies f at each point ``x^{(i)}``): ``f'(x^{(i)})`` for a scalar per
    point, ``∇f(x^{(i)})`` for a gradient per point; components get ``f_k'`` row labels.
    At one point: ``dy/dx``, ``∂y/∂x`` (gradient shaped like x), ``∂y_i/∂x_j`` (Jacobian).
    Several inputs, or points the graph does not prove one f at: ∂ with the cell's names.
    """
    item = result.inputs[name]
    comp = math.prod(result.component_shape(name))
    scalar_in = item.per_point_numel() == 1
    if item.has_points and not result.full and len(result.inputs) == 1 \
            and one_function(result, name):  # (else each point may have its own f: ∂y/∂x)
        at, g = point(name), letters()[0]
        f = f"{g}'" if scalar_in else rf"\nabla {g}"
        f_plain = f"{g}'" if scalar_in else f"grad {g}"
        if comp > 1:
            f, f_plain = (f"{g}_k'", f"{g}_k'") if scalar_in else \
                (rf"\nabla {g}_k", f"grad {g}_k")
        return Math(f"{f}\\big({at.tex}\\big)", f"{f_plain}({at.plain})")
    if item.numel() == 1:  # one variable: dy/dx (a column when y has several entries)
        return partial(output_symbol(result), name, straight=len(result.inputs) == 1)
    if comp == 1 or item.has_points:
        return partial(output_symbol(result), name)
    return partial(output_symbol(result), name, "i", "j")


def jacobian_lhs(result, name: str) -> Math:
    """The full Jacobian: ``J_F(x)`` at many points, ``J_f(x)`` at one, or ∂y/∂x (several)."""
    item = result.inputs[name]
    if len(result.inputs) > 1:
        return partial(output_symbol(result), name, "i", "j")
    small, capital = letters()
    big = capital if item.has_points and not result.full else small
    x_plain = _atom(name)[1]
    return Math(f"J_{big}({name_tex(name)})", f"J_{big}({x_plain})")
