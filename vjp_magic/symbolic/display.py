"""The symbolic display as document nodes: a heading, the formulas with the cell's own names,
what each was crosschecked against; or one line saying why there are none. First and second
derivatives alike (:func:`lhs`, :func:`second_lhs` name them).

Each formula is its own display, typeset under a size and time cap, far below MathJax's and
KaTeX's limits, only if :func:`~vjp_magic.render.latex.tex_problems` finds nothing, and only
as wide as the screen (:mod:`.width`; a small matrix too wide is shown entry by entry).
"""
from __future__ import annotations

import math
import time

import sympy
from sympy.printing.latex import LatexPrinter

from ..render.document import Formula, Math, Section, paragraph
from ..render.latex import tex_problems
from ..render.matrix import multi_index
from ..render.notation import counted, dims, jacobian_lhs, math_name, partial
from .width import LETTER, OPERATOR, fits, width

RENDER_SECONDS = 2.0  # for turning the formulas into LaTeX
MAX_SHOWN = 6  # rows and columns of a formula shown
MAX_DISPLAY_CHARS = 3500  # one $$ display, far below MathJax's and KaTeX's limits
MAX_NODES = 1500  # SymPy expression-tree nodes of one formula typeset
MAX_APART = 9  # entries of a matrix too wide for one line, shown one display each


class Printer(LatexPrinter):
    """SymPy's LaTeX, with Heaviside(x, 0) written θ(x) (its value at 0 is torch's, 0), and the
    input symbols as :func:`~.symbols.entry_tex` writes them."""

    def __init__(self, symbol_tex: dict | None = None):
        super().__init__()
        self._symbol_tex = symbol_tex or {}

    def _print_Symbol(self, expr, style="plain"):
        tex = self._symbol_tex.get(expr)
        return tex if tex is not None else super()._print_Symbol(expr, style)

    def _print_Heaviside(self, expr, exp=None):
        tex = r"\theta\left(" + self._print(expr.args[0]) + r"\right)"
        return tex if exp is None else f"{tex}^{{{exp}}}"

    def ordered_terms(self, value) -> list:
        """The terms of the sum ``value`` in the order this printer writes them."""
        return self._as_ordered_terms(value)


def too_big(value) -> str | None:
    """Why ``value`` is not typeset: over 6 × 6 entries or too many nodes; else None."""
    if isinstance(value, sympy.MatrixBase) and (value.rows > MAX_SHOWN or value.cols > MAX_SHOWN):
        return (f"symbolic form too large ({dims(value.shape)}; shown up to "
                f"{dims((MAX_SHOWN, MAX_SHOWN))})")
    nodes = 0
    for _ in sympy.preorder_traversal(value):
        nodes += 1
        if nodes > MAX_NODES:
            return "symbolic form too large to display"
    return None


def _plain(value) -> str:
    if isinstance(value, sympy.MatrixBase):
        return sympy.sstr(value.tolist())
    return sympy.sstr(value)


_UNDEFINED = {
    "formula": "the formula gives nan or inf where autograd gives a number (torch's value there)",
    "autograd": "autograd gives nan or inf where the formula gives a number",
    "either": "one side gives nan or inf where the other gives a number",
}


def heading(formulas: dict) -> str:
    points = {f.points for f in formulas.values()}
    if points == {1}:
        return "Symbolic (SymPy):"
    if len(points) == 1:
        return f"Symbolic (SymPy), at any one of the {points.pop():,} points:"
    return "Symbolic (SymPy), at a generic point:"


def crosscheck_line(formula) -> str:
    """What the formula's values at every point said, compared with autograd's numbers
    (``formula``: a :class:`~.formulas.SymbolicDerivative`)."""
    n, k = formula.points, formula.undefined
    where = "at the point" if n == 1 else f"at all {n:,} points"
    if formula.crosscheck is None:
        return "not checked against autograd"
    if formula.crosscheck and not k:
        return f"agrees with autograd {where}"
    undefined = _UNDEFINED[formula.undefined_side]
    if formula.crosscheck:
        if k == n:
            return f"the formula is undefined {where}: {undefined}"
        return (f"agrees with autograd at {n - k:,} of {n:,} points; undefined at the "
                f"other {k:,}: {undefined}")
    worst = f" (largest difference {formula.worst:.3g})" if math.isfinite(formula.worst) \
        else ""
    more = f"; undefined at {k:,} more: {undefined}" if k else ""
    return (f"warning: the formula for {formula.name} disagrees with autograd at "
            f"{formula.mismatches:,} of {n:,} points{worst}{more}")


def lhs(result, name: str, jacobian: bool, base: int = 1) -> Math:
    """What a formula is, at one generic point: f'(x), ∇f(x), J_f(x) for one input; ∂y/∂x for
    several inputs or ``--full``; for ``%jacobian`` the Jacobian as the numbers beside it name
    it (J_F(x) at many points). At many points a matrix per point is the tutorial's stack of
    gradients, [∇f_1(x); ∇f_2(x)], as the numbers name its rows (never J_f beside J_F)."""
    x = math_name(name)
    if len(result.inputs) > 1 or result.full:
        return partial(result.output_name, name)
    if jacobian:
        return jacobian_lhs(result, name)
    if result.inputs[name].per_point_numel() == 1:
        return Math(f"f'({x.tex})", f"f'({x.plain})")
    comp = result.component_shape(name)
    if math.prod(comp) == 1:
        return Math(rf"\nabla f({x.tex})", f"grad f({x.plain})")
    if result.inputs[name].has_points:
        return _gradients(comp, x, base)
    return Math(f"J_f({x.tex})", f"J_f({x.plain})")


def _partials(result, name: str, jacobian: bool, base: int):
    """Where the formula is the stack of gradients (:func:`_gradients`), each entry's name
    ``(i, j) → ∂f_1/∂x_2`` (x's entries as the symbols name them); else None."""
    item = result.inputs[name]
    comp = result.component_shape(name)
    if (result.order != 1 or jacobian or len(result.inputs) > 1 or result.full
            or not item.has_points or item.per_point_numel() == 1 or math.prod(comp) == 1):
        return None
    paired = set(item.pairing.in_axes)
    per_point = [n for b, n in enumerate(item.tensor.shape) if b not in paired and n != 1]
    x = math_name(name)
    x_tex = x.tex if len(x.tex) == 1 else "{" + x.tex + "}"

    def named(i: int, j: int) -> Math:
        f = counted(multi_index(i, comp), base)
        at = counted(multi_index(j, per_point), base) if per_point else ""
        at_plain = at if "," not in at else "{" + at + "}"
        return Math(rf"\frac{{\partial f_{{{f}}}}}{{\partial {x_tex}_{{{at}}}}}",
                    f"∂f_{f}/∂{x.plain}_{at_plain}")

    return named


def _gradients(comp, x: Math, base: int) -> Math:
    """``[∇f_1(x); ∇f_2(x)]`` (``[∇f_1(x); ⋮; ∇f_m(x)]`` past two): the tutorial's J_f
    by its rows, counted from ``base``."""
    count = math.prod(comp)
    subs = [counted(multi_index(k, comp), base) for k in ([0, 1] if count == 2 else
                                                            [0, count - 1])]
    rows = [(rf"\nabla f_{{{k}}}({x.tex})", f"grad f_{k}({x.plain})") for k in subs]
    if count > 2:
        rows.insert(1, (r"\vdots", "…"))
    return Math(r"\begin{bmatrix}" + r" \\ ".join(t for t, _ in rows) + r"\end{bmatrix}",
                "[" + "; ".join(p for _, p in rows) + "]")


def _entries(left: Math, value, printer: Printer, base: int = 1,
             named=None) -> list | None:
    """A matrix too wide for one line, as one display per entry: ``[f'(x)]_{1,2} = …``
    (``named(i, j)``: each entry's own name, ``∂f_1/∂x_2``); None when it has too many
    entries or one of them is too wide by itself."""
    if not isinstance(value, sympy.MatrixBase) or len(value) > MAX_APART:
        return None
    blocks = []
    for i in range(value.rows):
        for j in range(value.cols):
            index = f"{i + base},{j + base}" if value.rows > 1 and value.cols > 1 else \
                str(max(i, j) + base)
            entry = named(i, j) if named is not None else \
                Math(f"\\left[{left.tex}\\right]_{{{index}}}", f"[{left.plain}][{index}]")
            block = _one(entry, value[i, j], printer)
            if block is None:
                return None
            blocks.append(block)
    return blocks


def _lines(left: Math, value, printer: Printer) -> str | None:
    """A sum too wide for one line, broken before a ``+`` or ``-`` into lines that fit, as
    the TeX of one ``array`` display; None when one term alone is too wide."""
    if not isinstance(value, sympy.Add):
        return None
    lines, current, used = [], [], LETTER * len(left.plain) + OPERATOR
    for term in printer.ordered_terms(value):
        spent = width(term) + OPERATOR
        if current and not fits(used + spent):
            lines.append(current)
            current, used = [], 2 * OPERATOR  # continuation lines start indented
        if not fits(used + spent):
            return None
        current.append(printer.doprint(term))
        used += spent
    lines.append(current)
    text = [" ".join(t if t.startswith("-") or i == 0 and n == 0 else "+ " + t
                     for i, t in enumerate(line)) for n, line in enumerate(lines)]
    rows = [f"{left.tex} = {text[0]}"] + [f"\\qquad {t}" for t in text[1:]]
    return "\\begin{array}{l}" + " \\\\ ".join(rows) + "\\end{array}"


def _one(left: Math, value, printer: Printer):
    """``left = value`` as one display if it fits the width (a sum may take several lines)
    and typesets safely; else None."""
    if fits(width(value) + LETTER * len(left.plain) + OPERATOR):
        tex = f"{left.tex} = {printer.doprint(value)}"
    else:
        tex = _lines(left, value, printer)
    if tex is None or len(tex) > MAX_DISPLAY_CHARS - 200 or tex_problems(tex):
        return None
    return Formula(Math(tex, f"{left.plain} = {_plain(value)}"))


def formula_blocks(left: Math, value, printer: Printer, started: float,
                   base: int = 1, named=None) -> list:
    """``left = value`` as one display, entry by entry where it is too wide, or a line
    saying why it is not typeset."""
    why = too_big(value)
    if why is None and time.monotonic() - started > RENDER_SECONDS:
        why = "symbolic form too large (it took too long to typeset)"
    if why is None:
        whole = _one(left, value, printer)
        if whole is not None:
            return [whole]
        apart = _entries(left, value, printer, base, named)
        if apart is not None:
            return apart
        body = printer.doprint(value)
        if len(body) > MAX_DISPLAY_CHARS - 200:
            why = "symbolic form too large to display"
        elif tex_problems(body):
            why = "symbolic form not typeset (it needs TeX that notebooks do not all accept)"
        else:
            why = "symbolic form too wide for the screen (the result's .symbolic holds it)"
    return [paragraph(left, f": {why}")]


def second_lhs(result, name: str, component: int | None, base: int = 1) -> Math:
    """f″(x), ∇²f(x), ∇²f_1(x) (components counted from ``base``); ∂²y/∂x² for several
    inputs."""
    x = math_name(name)
    if len(result.inputs) > 1:
        y = math_name(result.output_name)
        return Math(rf"\frac{{\partial^2 {y.tex}}}{{\partial {x.tex}^2}}",
                    f"∂²{y.plain}/∂{x.plain}²")
    if math.prod(result.inputs[name].per_point_shape) == 1:
        return Math(f"f''({x.tex})", f"f″({x.plain})") if component is None else \
            Math(f"f_k''({x.tex})", f"f_k″({x.plain})")
    k = None if component is None else component + base
    sub, plain_sub = ("", "") if k is None else (f"_{{{k}}}", f"_{k}")
    return Math(rf"\nabla^2 f{sub}({x.tex})", f"∇²f{plain_sub}({x.plain})")


def equations(result, name: str, value, jacobian: bool,
              base: int = 1) -> list[tuple[Math, object]]:
    """(left side, value) of each display of one input's derivative ``value``: one for a
    first derivative; for a second, one per output component where it is a tuple."""
    if result.order == 1:
        return [(lhs(result, name, jacobian, base), value)]
    if isinstance(value, tuple):
        return [(second_lhs(result, name, k, base), v) for k, v in enumerate(value)]
    column = isinstance(value, sympy.MatrixBase) and value.cols == 1 and value.rows > 1
    return [(second_lhs(result, name, 0 if column else None, base), value)]


def symbolic_sections(result, function, formulas: dict, symbol_tex: dict,
                      jacobian: bool, base: int = 1) -> tuple[Section, ...]:
    """The formulas (``function`` is f at a generic point, or None) and their crosschecks;
    entries and components counted from ``base``."""
    started = time.monotonic()
    printer = Printer(symbol_tex)
    blocks = opening_blocks(list(result.inputs), function, formulas, printer, started, base)
    for name, formula in formulas.items():
        named = _partials(result, name, jacobian, base)
        for left, value in equations(result, name, formula.derivative, jacobian, base):
            blocks += formula_blocks(left, value, printer, started, base, named)
        blocks.append(paragraph(crosscheck_line(formula)))
    return (Section(tuple(blocks)),)


def opening_blocks(names, function, formulas: dict, printer, started: float,
                   base: int = 1) -> list:
    """The heading, then f at a generic point (``function``, or None) of the inputs
    ``names``: how every symbolic display begins."""
    blocks = [paragraph(heading(formulas), strong=True)]
    if function is not None:
        args = [math_name(n) for n in names]
        left = Math(f"f({', '.join(a.tex for a in args)})",
                    f"f({', '.join(a.plain for a in args)})")
        blocks += formula_blocks(left, function, printer, started, base)
    return blocks


def cut_note_sections(cuts) -> tuple[Section, ...]:
    """Above the formulas of a cut graph (:mod:`vjp_magic.run.cuts`): they are those of the
    graph as computed, as SymPy replays it, not of the formula the cell spells."""
    spans: list = ["These formulas are of the graph as computed, not of the formula the cell "
                   "spells:"]
    for cut in cuts:
        spans += [" ", cut.sentence(tail=False)]
    return (Section((paragraph(*spans),)),)


def note_sections(note: str) -> tuple[Section, ...]:
    """Why there are no formulas, as one line."""
    return (Section((paragraph(note),)),)
