"""How wide a SymPy formula comes out when MathJax sets it, in the display budget's characters.

The budget (:data:`~vjp_magic.render.options.DISPLAY_WIDTH`) counts ≈ 10 px per character
at JupyterLab's maths size; the glyphs' widths are render's one calibration
(:mod:`vjp_magic.render.typeset`), and the estimate follows the LaTeX layout SymPy prints: a
fraction is as wide as its wider part, an exponent or subscript is set at 70 %, a square root
adds its sign, a matrix is its widest entry per column plus the column gaps. It errs on the
wide side: a formula judged too wide is shown entry by entry, or not typeset. The budget is
the display's (``RenderOptions.width``: ``--width``, ``%config VJPMagics.width``); a number is
as wide as :mod:`.digits` spells it in the result's dtype.
"""
from __future__ import annotations

import sympy
import torch

from ..render.options import DISPLAY_WIDTH
from ..render.typeset import BRACKETS, COLUMN_GAP, SCRIPT_SCALE, characters, text_width
from .digits import spelled

LETTER = text_width("x")  # an italic letter
DIGIT = text_width("0")
SCRIPT = SCRIPT_SCALE  # an exponent or subscript is set at 70 % of its base size ...
SCRIPT_SPACE = characters(0.3125)  # ... plus the space after it
# "+", "=" with the space around it (measured in Chromium's KaTeX: about 1/8 em a side)
OPERATOR = text_width("+") + characters(2 * 0.125)
UNARY = text_width("-")  # a leading minus sign
FRACTION = characters(0.5)  # the padding of a fraction bar
PARENS = text_width("()")  # \left( … \right)
SQRT = characters(0.875)  # the radical sign
_NAMES = {"sigmoid": 1, "Heaviside": 1, "exp": 1}  # σ, θ, e: one letter wide


def fits(used: float, budget: float = DISPLAY_WIDTH) -> bool:
    """Whether a line whose parts add up to ``used`` fits ``budget`` counted characters (the
    estimate runs ≈ 15 % under widths measured for fractions of sums, so it is taken 15 %
    wider)."""
    return 1.15 * used <= budget


def _symbol(symbol: sympy.Symbol) -> float:
    """``x``, ``x_1``, ``x_{1,2}``, ``w_in[1,2]``: the head full size, the rest as a subscript."""
    head, _, rest = symbol.name.partition("_")
    rest = rest.replace("{", "").replace("}", "").replace("[", ",").replace("]", "")
    return LETTER * max(len(head), 1) + (SCRIPT_SPACE + SCRIPT * text_width(rest) if rest
                                         else 0.0)


def _number(value, dtype) -> float:
    sign = UNARY if value < 0 else 0.0
    if isinstance(value, sympy.Rational) and value.q != 1:
        return max(text_width(str(abs(value.p))), text_width(str(value.q))) + FRACTION + sign
    if isinstance(value, sympy.Float) and abs(float(value)) < float("inf"):
        return text_width(spelled(abs(float(value)), dtype).plain.replace("e", "×10")) + sign
    return text_width(str(abs(value))) + sign


def _script(expr, dtype) -> float:
    return SCRIPT * width(expr, dtype) + SCRIPT_SPACE


def _power(base, exponent, dtype) -> float:
    if exponent == sympy.Rational(1, 2):
        return width(base, dtype) + SQRT
    if exponent.is_number and exponent.is_negative:
        return max(DIGIT, _power(base, -exponent, dtype)) + FRACTION  # \frac{1}{base^k}
    grouped = isinstance(base, (sympy.Add, sympy.Mul, sympy.Pow))
    inner = width(base, dtype) + (PARENS if grouped else 0)
    return inner + (0 if exponent == 1 else _script(exponent, dtype))


def _product(expr: sympy.Mul, dtype) -> float:
    numerator, denominator = sympy.fraction(expr)
    if denominator != 1:
        sign = UNARY if expr.could_extract_minus_sign() else 0.0
        return max(width(-numerator if sign else numerator, dtype),
                   width(denominator, dtype)) + FRACTION + sign
    parts = expr.args
    return sum(width(a, dtype) + (PARENS if isinstance(a, sympy.Add) else 0) for a in parts) \
        + 0.3 * (len(parts) - 1)


def _function(expr, dtype) -> float:
    name = type(expr).__name__
    letters = _NAMES.get(name, len(name))
    return LETTER * letters + 0.2 + PARENS + sum(width(a, dtype) for a in expr.args) \
        + OPERATOR * (len(expr.args) - 1)


def width(expr, dtype: torch.dtype = torch.float64) -> float:
    """Estimated width of ``expr`` (a SymPy expression or Matrix) as typeset, its numbers as
    :mod:`.digits` spells them in ``dtype``."""
    if isinstance(expr, sympy.MatrixBase):
        columns = [max((width(expr[i, j], dtype) for i in range(expr.rows)), default=0.0)
                   for j in range(expr.cols)]
        return sum(columns) + COLUMN_GAP * max(len(columns) - 1, 0) + BRACKETS
    expr = sympy.sympify(expr)
    if isinstance(expr, sympy.Symbol):
        return _symbol(expr)
    if expr.is_Number:
        return _number(expr, dtype)
    if isinstance(expr, sympy.Add):
        return sum(width(a, dtype) for a in expr.args) + OPERATOR * (len(expr.args) - 1)
    if isinstance(expr, sympy.Mul):
        return _product(expr, dtype)
    if isinstance(expr, sympy.Pow):
        return _power(*expr.args, dtype)
    if isinstance(expr, sympy.exp):
        return LETTER + _script(expr.args[0], dtype)
    if isinstance(expr, sympy.Function) or expr.args:
        return _function(expr, dtype)
    return LETTER * len(str(expr))
