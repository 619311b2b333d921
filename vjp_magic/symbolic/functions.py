"""SymPy functions with torch's conventions, and their NumPy spellings for evaluating formulas."""
from __future__ import annotations

import math

import numpy as np
import sympy


class relu(sympy.Function):
    """max(x, 0); its derivative is Heaviside(x, 0), as torch's is (0 at x = 0)."""

    def fdiff(self, argindex=1):
        return sympy.Heaviside(self.args[0], 0)

    @classmethod
    def eval(cls, arg):
        if arg.is_Number:
            return sympy.Max(arg, 0)
        if arg.is_nonnegative:
            return arg
        if arg.is_nonpositive:
            return sympy.S.Zero

    def _latex(self, printer, exp=None):
        tex = r"\operatorname{relu}\left(" + printer._print(self.args[0]) + r"\right)"
        return tex if exp is None else f"{tex}^{{{exp}}}"


class sigmoid(sympy.Function):
    """1 / (1 + exp(-x)), with derivative sigma(x)(1 - sigma(x))."""

    def fdiff(self, argindex=1):
        return self * (1 - self)

    @classmethod
    def eval(cls, arg):
        if arg.is_Number:
            return 1 / (1 + sympy.exp(-arg))

    def _latex(self, printer, exp=None):
        tex = r"\sigma\left(" + printer._print(self.args[0]) + r"\right)"
        return tex if exp is None else f"{tex}^{{{exp}}}"


NUMPY_FUNCTIONS = {
    "relu": lambda a: np.maximum(a, 0.0),
    "sigmoid": lambda a: 1.0 / (1.0 + np.exp(-a)),
    "erf": np.vectorize(math.erf, otypes=[float]),  # NumPy has none (SciPy is not required)
}
