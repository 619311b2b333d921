"""How wide a SymPy formula comes out when MathJax sets it, in the display budget's characters.

The budget (:data:`~vjp_magic.render.options.DISPLAY_WIDTH`) counts ≈ 10 px per character
at JupyterLab's maths size; the estimate follows the LaTeX layout SymPy prints: a fraction is
as wide as its wider part, an exponent or subscript is set at about 70 %, a square root adds
its sign, a matrix is its widest entry per column plus the column gaps. It errs on the wide
side: a formula judged too wide is shown entry by entry, or not typeset.
"""
from __future__ import annotations

import sympy

from ..render.options import DISPLAY_WIDTH

LETTER = 0.85  # an italic letter (KaTeX, measured in Chromium, scaled to JupyterLab's size)
DIGIT = 0.9
SUBSCRIPT = 0.8  # a character of a subscript (x_{1,2}: the head, then 0.2 + 0.8 per character)
SCRIPT = 0.7  # an exponent is set at 70 % of its base size ...
SCRIPT_SPACE = 0.5  # ... plus the space after it
OPERATOR = 1.65  # "+", "=" with the spacing around it
UNARY = 0.9  # a leading minus sign
FRACTION = 0.8  # the padding of a fraction bar
PARENS = 1.1  # \left( … \right)
COLUMN_GAP = 1.6  # between the columns of a matrix (MathJax's 1 em)
BRACKETS = 1.0  # a matrix's [ ]
SQRT = 1.4  # the radical sign
_NAMES = {"sigmoid": 1, "Heaviside": 1, "exp": 1}  # σ, θ, e: one letter wide


def fits(used: float) -> bool:
    """Whether a line whose parts add up to ``used`` fits the display budget (the estimate
    runs ≈ 15 % under widths measured for fractions of sums, so it is taken 15 % wider)."""
    return 1.15 * used <= DISPLAY_WIDTH


def _symbol(symbol: sympy.Symbol) -> float:
    """``x``, ``x_1``, ``x_{1,2}``, ``w_in[1,2]``: the head full size, the rest as a subscript."""
    head, _, rest = symbol.name.partition("_")
    rest = rest.replace("{", "").replace("}", "").replace("[", ";").replace("]", "")
    return LETTER * max(len(head), 1) + (0.2 + SUBSCRIPT * len(rest) if rest else 0.0)


def _number(value) -> float:
    if isinstance(value, sympy.Rational) and value.q != 1:
        return max(len(str(abs(value.p))), len(str(value.q))) * DIGIT + FRACTION \
            + (UNARY if value.p < 0 else 0)
    return DIGIT * len(str(abs(value))) + (UNARY if value < 0 else 0)


def _script(expr) -> float:
    return SCRIPT * width(expr) + SCRIPT_SPACE


def _power(base, exponent) -> float:
    if exponent == sympy.Rational(1, 2):
        return width(base) + SQRT
    if exponent.is_number and exponent.is_negative:
        return max(DIGIT, _power(base, -exponent)) + FRACTION  # \frac{1}{base^k}
    inner = width(base) + (PARENS if isinstance(base, (sympy.Add, sympy.Mul, sympy.Pow)) else 0)
    return inner + (0 if exponent == 1 else _script(exponent))


def _product(expr: sympy.Mul) -> float:
    numerator, denominator = sympy.fraction(expr)
    if denominator != 1:
        sign = UNARY if expr.could_extract_minus_sign() else 0.0
        return max(width(-numerator if sign else numerator), width(denominator)) + FRACTION \
            + sign
    parts = expr.args
    return sum(width(a) + (PARENS if isinstance(a, sympy.Add) else 0) for a in parts) \
        + 0.3 * (len(parts) - 1)


def _function(expr) -> float:
    name = type(expr).__name__
    letters = _NAMES.get(name, len(name))
    return LETTER * letters + 0.2 + PARENS + sum(width(a) for a in expr.args) \
        + OPERATOR * (len(expr.args) - 1)


def width(expr) -> float:
    """Estimated width of ``expr`` (a SymPy expression or Matrix) as typeset."""
    if isinstance(expr, sympy.MatrixBase):
        columns = [max((width(expr[i, j]) for i in range(expr.rows)), default=0.0)
                   for j in range(expr.cols)]
        return sum(columns) + COLUMN_GAP * max(len(columns) - 1, 0) + BRACKETS
    expr = sympy.sympify(expr)
    if isinstance(expr, sympy.Symbol):
        return _symbol(expr)
    if expr.is_Number:
        return _number(expr)
    if isinstance(expr, sympy.Add):
        return sum(width(a) for a in expr.args) + OPERATOR * (len(expr.args) - 1)
    if isinstance(expr, sympy.Mul):
        return _product(expr)
    if isinstance(expr, sympy.Pow):
        return _power(*expr.args)
    if isinstance(expr, sympy.exp):
        return LETTER + _script(expr.args[0])
    if isinstance(expr, sympy.Function) or expr.args:
        return _function(expr)
    return LETTER * len(str(expr))
