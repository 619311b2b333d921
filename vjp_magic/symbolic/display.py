"""The symbolic display as document nodes: a heading, the formulas with the cell's own names,
what each was crosschecked against; or one line saying why there are none. First and second
derivatives alike (:func:`lhs`, :func:`second_lhs` name them).

Each formula is its own display, typeset under a size and time cap, far below MathJax's and
KaTeX's limits, only if :func:`~vjp_magic.render.latex.tex_problems` finds nothing, and only
as wide as the display's width (``RenderOptions.width``, :mod:`.width`; a small matrix too wide
is shown entry by entry); its numbers as short as the result's dtype allows (:mod:`.digits`);
its text/plain wrapped at the plain rendering's width. The whole fits its share of the height
budget (:func:`symbolic_sections`): entries shown apart are summarised, then f(x) left out.
"""
from __future__ import annotations

import math
import textwrap
import time
from dataclasses import dataclass, field

import sympy
import torch
from sympy.printing.latex import LatexPrinter
from sympy.printing.str import StrPrinter

from ..render.budget import block_height
from ..render.document import Formula, Math, Section, paragraph
from ..render.latex import tex_problems
from ..render.matrix import multi_index
from ..render.notation import counted, dims, jacobian_lhs, letters, math_name, partial
from ..render.options import RenderOptions
from ..render.plain import WRAP
from ..render.view import least_height
from .digits import display_dtype, spelled
from .width import LETTER, OPERATOR, fits, width

RENDER_SECONDS = 2.0  # for turning the formulas into LaTeX
MAX_SHOWN = 6  # rows and columns of a formula shown
MAX_DISPLAY_CHARS = 3500  # one $$ display, far below MathJax's and KaTeX's limits
MAX_NODES = 1500  # SymPy expression-tree nodes of one formula typeset
MAX_APART = 9  # entries of a matrix too wide for one line, shown one display each
# The formulas' share of the height budget: what the derivatives beneath them leave to the
# sections around them (render/budget.spent's share), so that the whole output fits.
HEIGHT_SHARE = 0.5
# How much is shown, tried in turn until the display fits its share of the height: entries
# shown apart (first ones, then the last; the rest counted), whether f(x) is shown, and the
# components of a vector's Hessians (None: all; 1: the first, the rest counted).
# Last, each formula named only (0: r.symbolic holds it).
LEVELS = ((MAX_APART, True, None), (3, True, None), (3, False, None), (1, False, None),
          (1, False, 1), (0, False, 1))


def _float(value) -> float | None:
    number = float(value)
    return number if math.isfinite(number) else None


class Printer(LatexPrinter):
    """SymPy's LaTeX, with Heaviside(x, 0) written θ(x) (its value at 0 is torch's, 0), the
    input symbols as :func:`~.symbols.entry_tex` writes them, and numbers as short as ``dtype``
    allows (:func:`~.digits.spelled`)."""

    def __init__(self, symbol_tex: dict | None = None, dtype: torch.dtype = torch.float64):
        super().__init__()
        self._symbol_tex = symbol_tex or {}
        self._dtype = dtype

    def _print_Symbol(self, expr, style="plain"):
        tex = self._symbol_tex.get(expr)
        return tex if tex is not None else super()._print_Symbol(expr, style)

    def _print_Float(self, expr):
        number = _float(expr)
        return super()._print_Float(expr) if number is None else spelled(number,
                                                                           self._dtype).tex

    def _print_Heaviside(self, expr, exp=None):
        tex = r"\theta\left(" + self._print(expr.args[0]) + r"\right)"
        return tex if exp is None else f"{tex}^{{{exp}}}"

    def ordered_terms(self, value) -> list:
        """The terms of the sum ``value`` in the order this printer writes them."""
        return self._as_ordered_terms(value)


class PlainPrinter(StrPrinter):
    """SymPy's text, numbers as short as ``dtype`` allows."""

    def __init__(self, dtype: torch.dtype = torch.float64):
        super().__init__()
        self._dtype = dtype

    def _print_Float(self, expr):
        number = _float(expr)
        return super()._print_Float(expr) if number is None else spelled(number,
                                                                           self._dtype).plain


@dataclass
class Typesetter:
    """How one result's formulas are typeset: the printers (numbers in ``dtype``), the width
    budget in counted characters, entries counted from ``base``, the clock for
    :data:`RENDER_SECONDS`, and how many entries of a matrix too wide go apart."""

    symbol_tex: dict = field(default_factory=dict)
    dtype: torch.dtype = torch.float64
    width: int = RenderOptions.width
    base: int = 1
    apart: int = MAX_APART
    started: float = field(default_factory=time.monotonic)
    shown: dict = field(default_factory=dict)  # each display typeset once, whatever the level

    def __post_init__(self):
        self.printer = Printer(self.symbol_tex, self.dtype)
        self.plain_printer = PlainPrinter(self.dtype)

    def fits(self, used: float) -> bool:
        return fits(used, self.width)

    def measure(self, expr) -> float:
        return width(expr, self.dtype)

    def plain(self, left: str, value) -> str:
        """``left = value`` as text, wrapped at the plain rendering's width: a matrix a row a
        line, a line too long broken at its spaces (before or after a + or -)."""
        lead = f"{left} = "
        if isinstance(value, sympy.MatrixBase):
            rows = ["[" + ", ".join(self.plain_printer.doprint(e) for e in row) + "]"
                    for row in value.tolist()]
            one = lead + "[" + ", ".join(rows) + "]"
            if len(one) <= WRAP or not rows:
                return one
            indent = " " * (len(lead) + 1)
            lines = [("[" if k == 0 else " ") + row + ("]" if k == len(rows) - 1 else ",")
                     for k, row in enumerate(rows)]
            return "\n".join(_fill(lead + lines[0] if k == 0 else " " * len(lead) + line,
                                    indent + "  ") for k, line in enumerate(lines))
        return _fill(lead + self.plain_printer.doprint(value), " " * min(len(lead), 24))


def _fill(text: str, indent: str) -> str:
    return textwrap.fill(text, WRAP, subsequent_indent=indent, break_long_words=False,
                         break_on_hyphens=False)


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
    f = letters()[0]
    if result.inputs[name].per_point_numel() == 1:
        return Math(f"{f}'({x.tex})", f"{f}'({x.plain})")
    comp = result.component_shape(name)
    if math.prod(comp) == 1:
        return Math(rf"\nabla {f}({x.tex})", f"grad {f}({x.plain})")
    if result.inputs[name].has_points:
        return _gradients(comp, x, base)
    return Math(f"J_{f}({x.tex})", f"J_{f}({x.plain})")


def _partials(result, name: str, jacobian: bool, base: int):
    """Where the formula is the stack of gradients (:func:`_gradients`), each entry's name
    ``(i, j) → ∂f_1/∂x_2`` (x's entries as the symbols name them); else None."""
    item = result.inputs[name]
    comp = result.component_shape(name)
    if (result.order != 1 or jacobian or len(result.inputs) > 1 or result.full
            or not item.has_points or item.per_point_numel() == 1 or math.prod(comp) == 1):
        return None
    paired = set(item.pairing.in_axes)
    per_point = [n for b, n in enumerate(item.shape) if b not in paired and n != 1]
    x = math_name(name)
    x_tex = x.tex if len(x.tex) == 1 else "{" + x.tex + "}"
    g = letters()[0]

    def named(i: int, j: int) -> Math:
        f = counted(multi_index(i, comp), base)
        at = counted(multi_index(j, per_point), base) if per_point else ""
        at_plain = at if "," not in at else "{" + at + "}"
        return Math(rf"\frac{{\partial {g}_{{{f}}}}}{{\partial {x_tex}_{{{at}}}}}",
                    f"∂{g}_{f}/∂{x.plain}_{at_plain}")

    return named


def _gradients(comp, x: Math, base: int) -> Math:
    """``[∇f_1(x); ∇f_2(x)]`` (``[∇f_1(x); ⋮; ∇f_m(x)]`` past two): the tutorial's J_f
    by its rows, counted from ``base``."""
    count = math.prod(comp)
    subs = [counted(multi_index(k, comp), base) for k in ([0, 1] if count == 2 else
                                                            [0, count - 1])]
    f = letters()[0]
    rows = [(rf"\nabla {f}_{{{k}}}({x.tex})", f"grad {f}_{k}({x.plain})") for k in subs]
    if count > 2:
        rows.insert(1, (r"\vdots", "…"))
    return Math(r"\begin{bmatrix}" + r" \\ ".join(t for t, _ in rows) + r"\end{bmatrix}",
                "[" + "; ".join(p for _, p in rows) + "]")


def _entries(left: Math, value, ts: Typesetter, named=None, holder: str = "") -> list | None:
    """A matrix too wide for one line, as one display per entry: ``[f'(x)]_{1,2} = …``
    (``named(i, j)``: each entry's own name, ``∂f_1/∂x_2``), the first ``ts.apart - 1`` and
    the last where there are more (the rest counted, ``holder`` saying where they are); None
    when it has too many entries or one of them is too wide by itself."""
    if not isinstance(value, sympy.MatrixBase) or len(value) > MAX_APART:
        return None
    cells = [(i, j) for i in range(value.rows) for j in range(value.cols)]
    shown = cells if len(cells) <= ts.apart else \
        cells[:max(ts.apart - 1, 1)] + (cells[-1:] if ts.apart > 1 else [])
    blocks = []
    for i, j in shown:
        index = f"{i + ts.base},{j + ts.base}" if value.rows > 1 and value.cols > 1 else \
            str(max(i, j) + ts.base)
        entry = named(i, j) if named is not None else \
            Math(f"\\left[{left.tex}\\right]_{{{index}}}", f"[{left.plain}][{index}]")
        block = _one(entry, value[i, j], ts)
        if block is None:
            return None
        blocks.append(block)
    left_out = len(cells) - len(shown)
    if left_out:
        more = f" {left_out} more {'entry' if left_out == 1 else 'entries'} not shown{holder}"
        blocks.insert(len(blocks) - (ts.apart > 1), paragraph(Math(r"\vdots", "⋮"), more))
    return blocks


def _lines(left: Math, value, ts: Typesetter) -> str | None:
    """A sum too wide for one line, broken before a ``+`` or ``-`` into lines that fit, as
    the TeX of one ``array`` display; None when one term alone is too wide."""
    if not isinstance(value, sympy.Add):
        return None
    lines, current, used = [], [], LETTER * len(left.plain) + OPERATOR
    for term in ts.printer.ordered_terms(value):
        spent = ts.measure(term) + OPERATOR
        if current and not ts.fits(used + spent):
            lines.append(current)
            current, used = [], 2 * OPERATOR  # continuation lines start indented
        if not ts.fits(used + spent):
            return None
        current.append(ts.printer.doprint(term))
        used += spent
    lines.append(current)
    text = [" ".join(t if t.startswith("-") or i == 0 and n == 0 else "+ " + t
                     for i, t in enumerate(line)) for n, line in enumerate(lines)]
    rows = [f"{left.tex} = {text[0]}"] + [f"\\qquad {t}" for t in text[1:]]
    return "\\begin{array}{l}" + " \\\\ ".join(rows) + "\\end{array}"


def _one(left: Math, value, ts: Typesetter):
    """``left = value`` as one display if it fits the width (a sum may take several lines)
    and typesets safely; else None."""
    key = (left, id(value))  # a Matrix is not hashable; the memo keeps value alive
    if key not in ts.shown:
        ts.shown[key] = (value, _typeset(left, value, ts))
    return ts.shown[key][1]


def _typeset(left: Math, value, ts: Typesetter):
    if ts.fits(ts.measure(value) + LETTER * len(left.plain) + OPERATOR):
        tex = f"{left.tex} = {ts.printer.doprint(value)}"
    else:
        tex = _lines(left, value, ts)
    if tex is None or len(tex) > MAX_DISPLAY_CHARS - 200 or tex_problems(tex):
        return None
    return Formula(Math(tex, ts.plain(left.plain, value)))


def formula_blocks(left: Math, value, ts: Typesetter, named=None, holder: str = "") -> list:
    """``left = value`` as one display, entry by entry where it is too wide, or a line
    saying why it is not typeset."""
    why = too_big(value)
    if why is None and not ts.apart:
        why = "too tall for one screen (the result's .symbolic holds it; --full-matrix shows it)"
    if why is None and time.monotonic() - ts.started > RENDER_SECONDS:
        why = "symbolic form too large (it took too long to typeset)"
    if why is None:
        whole = _one(left, value, ts)
        if whole is not None:
            return [whole]
        apart = _entries(left, value, ts, named, holder)
        if apart is not None:
            return apart
        body = ts.printer.doprint(value)
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
    f = letters()[0]
    if math.prod(result.inputs[name].per_point_shape) == 1:
        return Math(f"{f}''({x.tex})", f"{f}″({x.plain})") if component is None else \
            Math(f"{f}_k''({x.tex})", f"{f}_k″({x.plain})")
    k = None if component is None else component + base
    sub, plain_sub = ("", "") if k is None else (f"_{{{k}}}", f"_{k}")
    return Math(rf"\nabla^2 {f}{sub}({x.tex})", f"∇²{f}{plain_sub}({x.plain})")


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
                      jacobian: bool, options: RenderOptions, fit: bool = True
                      ) -> tuple[Section, ...]:
    """The formulas (``function`` is f at a generic point, or None) and their crosschecks, as
    wide as ``options.width`` and, where ``fit``, at the first of :data:`LEVELS` that fits
    :data:`HEIGHT_SHARE` of ``options.height``, or what the derivatives beneath leave of it
    (:func:`~vjp_magic.render.view.least_height`) where they need more, formulas named only
    never for that alone (``--full-matrix``: everything); entries and components counted
    from ``options.index_base``."""
    fit = fit and not options.full_matrix
    share = options.height * HEIGHT_SHARE if fit else math.inf
    room = min(share, options.height - least_height(result, options, jacobian)) if fit \
        else share  # what the derivatives beneath leave, where they need more than the rest
    ts = Typesetter(symbol_tex, display_dtype(result), options.width, options.index_base)
    blocks: list = []
    levels = LEVELS if fit else LEVELS[:1]
    for k, (apart, with_function, components) in enumerate(levels):
        ts.apart = apart
        blocks = opening_blocks(list(result.inputs), function if with_function else None,
                                formulas, ts)
        if function is not None and not with_function:
            blocks.append(paragraph(function_of(list(result.inputs)), " is left out to fit "
                                    "one screen (--full-matrix shows it)"))
        for name, formula in formulas.items():
            named = _partials(result, name, jacobian, ts.base)
            holder = f" (r.symbolic[{name!r}] holds every entry)"
            shown = equations(result, name, formula.derivative, jacobian, ts.base)
            left_out = len(shown) - (components or len(shown))
            for left, value in shown[:components]:
                blocks += formula_blocks(left, value, ts, named, holder)
            if left_out > 0:
                blocks.append(paragraph(Math(r"\vdots", "⋮"), f" {left_out} more components "
                                        f"not shown (r.symbolic[{name!r}] holds each)"))
            blocks.append(paragraph(crosscheck_line(formula)))
        px = sum(map(block_height, blocks))
        named_only = k + 1 < len(levels) and levels[k + 1][0] == 0
        if px <= room or px <= share and named_only:  # the formulas stay where they fit
            break  # their share: the derivatives beneath then take a little more than theirs
    return (Section(tuple(blocks)),)


def opening_blocks(names, function, formulas: dict, ts: Typesetter) -> list:
    """The heading, then f at a generic point (``function``, or None) of the inputs
    ``names``: how every symbolic display begins."""
    blocks = [paragraph(heading(formulas), strong=True)]
    if function is not None:
        blocks += formula_blocks(function_of(names), function, ts)
    return blocks


def function_of(names) -> Math:
    """``f(x, w)``: the function of the inputs ``names``, as the formulas name it."""
    args = [math_name(n) for n in names]
    f = letters()[0]
    return Math(f"{f}({', '.join(a.tex for a in args)})",
                f"{f}({', '.join(a.plain for a in args)})")


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
