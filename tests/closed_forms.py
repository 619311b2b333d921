"""What the symbolic tests compare against: SymPy symbols, mathematical equality (``same``),
the plain display folded to one line, and a cell run once as the magic runs it (graphs kept,
torch calls recorded)."""
from __future__ import annotations

import sympy
import torch

from vjp_magic.render import plain
from vjp_magic.render.document import Document
from vjp_magic.run.guard import keep_graphs
from vjp_magic.run.record import recording

x, x1, x2, x3, x4 = (sympy.Symbol(n, real=True) for n in ("x", "x_1", "x_2", "x_3", "x_4"))


def same(actual, expected) -> bool:
    """Mathematically equal (SymPy simplify), scalars and matrices alike; a 1 × 1 matrix
    equals its entry."""
    if isinstance(expected, list):
        expected = sympy.Matrix(expected)
    if isinstance(actual, sympy.MatrixBase) and actual.shape == (1, 1) \
            and not isinstance(expected, sympy.MatrixBase):
        actual = actual[0]
    if isinstance(expected, sympy.MatrixBase):
        if not isinstance(actual, sympy.MatrixBase) or actual.shape != expected.shape:
            return False
        return all(sympy.simplify(a - b) == 0 for a, b in zip(actual, expected))
    return not isinstance(actual, sympy.MatrixBase) and sympy.simplify(actual - expected) == 0


def shown(result) -> str:
    """The result's plain display, whitespace folded (a renderer may wrap lines)."""
    return " ".join(repr(result).split())


def words(report) -> str:
    """The report's sections as plain text, whitespace folded."""
    return " ".join(plain.render(Document(report.sections())).split())


def run_recorded(body: str, ns: dict | None = None):
    """Run ``body`` once, as the magic does: graphs kept, torch calls recorded."""
    ns = {"torch": torch, "print": lambda *a, **k: None} if ns is None else ns
    with keep_graphs(), recording() as record:
        exec(body, ns)  # noqa: S102
    return ns, record
