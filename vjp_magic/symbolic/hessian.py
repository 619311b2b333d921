"""``%hessian --symbolic``: second-derivative formulas from SymPy, checked against the numbers.

:func:`derive_hessian` replays the record exactly as :func:`~.report.derive` does (the inputs
replaced by symbols, one generic point's symbols at every point), differentiates each entry of
the output twice by one point's variables, evaluates the formula at every point in float64
and compares it with the :class:`~vjp_magic.core.hessian.HessianResult`'s per-point Hessians.
It returns a :class:`~.report.SymbolicReport`; nothing here fails the cell.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import sympy

from ..render.document import Math, Section, paragraph
from ..render.notation import math_name
from .check import _evaluate, _values, compare
from .deadline import spend
from .display import _blocks, _Printer, check_line, opening_blocks
from .errors import Unavailable
from .formulas import Formula
from .layout import as_matrix, at_points
from .report import SymbolicReport, reported
from .report import _derive as derive_formulas


@dataclass
class _AsFirst:
    """A HessianResult seen as the replay sees a first-derivative result (same points)."""

    output: object
    output_name: str
    inputs: dict
    full: bool = False


def derive_hessian(h, *, record, namespace, output_source: str | None = None) -> SymbolicReport:
    """Formulas for ``h``'s second derivatives, checked at every point (see the module).

    ``record``, ``namespace`` and ``output_source`` as for :func:`~.report.derive`; the record
    is released afterwards. ``formulas[name]``: one point's Hessian as SymPy (a scalar f″, a
    column of f_k″, an m × m matrix, or a tuple of them, one per component).
    """
    view, symbol_tex = _AsFirst(h.output, h.output_name, h.inputs), {}
    return reported(
        view, record, lambda: _derive(view, record, namespace, output_source, symbol_tex),
        lambda function, formulas: hessian_symbolic_sections(view, function, formulas,
                                                             symbol_tex))


def _derive(view, record, namespace, output_source, symbol_tex):
    """(f at a generic point or None, each input's second-derivative formula)."""
    return derive_formulas(view, record, namespace, output_source, False, symbol_tex,
                           lambda name, output, symbols: second_formula(view, name, output,
                                                                        symbols))


def _twice(y: np.ndarray, variables: np.ndarray) -> np.ndarray:
    """Each entry of ``y`` differentiated by every pair of variables: y.shape + 2 × vars."""
    second = np.empty(y.shape + variables.shape + variables.shape, dtype=object)
    for iy in np.ndindex(*y.shape):
        for ij in np.ndindex(*variables.shape):
            first = sympy.diff(y[iy], variables[ij])
            for ik in np.ndindex(*variables.shape):
                spend()
                second[iy + ij + ik] = sympy.diff(first, variables[ik])
    return second


def second_formula(view, name: str, output: np.ndarray, symbols: dict) -> Formula:
    """One formula for every point (else :class:`Unavailable`), checked at every point."""
    pairs = list(view.inputs[name].pairing)
    order = [a for a, _ in pairs]
    points = at_points(output, {a: a for a in order}, order)
    if not len(points):
        raise Unavailable(f"{name} has no points to differentiate at")
    variables = at_points(symbols[name], dict(pairs), order)[0, ...]
    cache: dict[tuple, np.ndarray] = {}
    for point in range(len(points)):
        key = tuple(points[point, ...].reshape(-1))
        if key not in cache:
            cache[key] = _twice(points[point, ...], variables)
    derivatives = list(cache.values())
    first = derivatives[0]
    if any(not all(a == b for a, b in zip(first.reshape(-1), d.reshape(-1)))
           for d in derivatives[1:]):
        raise Unavailable(f"the second derivative with respect to {name} differs from point "
                          "to point (per-point constants), so there is no one formula")
    component, per_point = points.shape[1:], variables.shape
    made = Formula(name, _layout(first, component, per_point), len(points),
                   same_function=len(cache) == 1)
    compared = _check(view, name, first, (len(points), component, per_point), symbols)
    made.check, made.mismatches, made.worst, made.undefined, made.undefined_side = compared
    return made


def _layout(array: np.ndarray, component, per_point):
    """A scalar f″; a column of f_k″; an m × m Hessian; or one Hessian per component."""
    count, m = math.prod(component), math.prod(per_point)
    if count == 1 and m == 1:
        return sympy.sympify(array.reshape(-1)[0])
    if m == 1:
        return as_matrix(array, (count, 1))
    blocks = array.reshape((count, m, m))
    matrices = tuple(as_matrix(block, (m, m)) for block in blocks)
    return matrices[0] if count == 1 else matrices


def _check(view, name: str, formula: np.ndarray, sizes: tuple, symbols: dict):
    """The formula at every point against the per-point Hessians (points first)."""
    points, component, per_point = sizes
    shape = (points,) + tuple(component) + tuple(per_point) + tuple(per_point)
    got = _evaluate(formula, _values(view, name, points, symbols, False), shape)
    item = view.inputs[name]
    k = len(component)
    axis_map = {a: k + b for a, b in item.pairing}
    order = [a for a, _ in item.pairing]
    numbers = item.derivatives.detach().to("cpu").double().numpy()
    expected = at_points(numbers, axis_map, order).reshape(shape)
    return compare(got, expected, points, item.derivatives.dtype)


def _lhs(view, name: str, component: int | None) -> Math:
    """f″(x), ∇²f(x), ∇²f_k(x); ∂²y/∂x² for several inputs."""
    x = math_name(name)
    item = view.inputs[name]
    if len(view.inputs) > 1:
        y = math_name(view.output_name)
        return Math(rf"\frac{{\partial^2 {y.tex}}}{{\partial {x.tex}^2}}",
                    f"∂²{y.plain}/∂{x.plain}²")
    sub = "" if component is None else f"_{{{component}}}"
    if math.prod(s for b, s in enumerate(item.tensor.shape)
                 if b not in set(item.pairing.in_axes)) == 1:
        return Math(f"f''({x.tex})", f"f″({x.plain})") if component is None else \
            Math(f"f_k''({x.tex})", f"f_k″({x.plain})")
    plain_sub = "" if component is None else f"_{component}"
    return Math(rf"\nabla^2 f{sub}({x.tex})", f"∇²f{plain_sub}({x.plain})")


def hessian_symbolic_sections(view, function, formulas: dict,
                              symbol_tex: dict) -> tuple[Section, ...]:
    """The heading, f, each input's second-derivative formula(s) and their check."""
    started = time.monotonic()
    printer = _Printer(symbol_tex)
    blocks = opening_blocks(list(view.inputs), function, formulas, printer, started)
    for name, formula in formulas.items():
        values = formula.derivative
        if isinstance(values, tuple):
            for k, value in enumerate(values):
                blocks += _blocks(_lhs(view, name, k), value, printer, started)
        else:
            component = 0 if isinstance(values, sympy.MatrixBase) and values.cols == 1 \
                and values.rows > 1 else None
            blocks += _blocks(_lhs(view, name, component), values, printer, started)
        blocks.append(paragraph(check_line(formula)))
    return (Section(tuple(blocks)),)
