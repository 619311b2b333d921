"""SymPy differentiates the replayed output: one formula per input, for one generic point.

First and second derivatives alike (:func:`symbolic_derivative`, by the result's
``order``), through :func:`sympy.derive_by_array`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sympy

from .crosscheck import crosscheck
from .deadline import spend
from .errors import Unavailable
from .layout import at_points, hessian_layout, layout, point_axes


@dataclass
class SymbolicDerivative:
    """The symbolic derivative (first or second) for one input, and its crosscheck: how it
    compared with autograd's numbers."""

    name: str
    derivative: object  # SymPy expression or Matrix (a tuple of them: one Hessian per component)
    points: int
    same_function: bool = True  # f itself (not only its derivative) is the same at every point
    crosscheck: bool | None = None  # agrees with autograd at every point (None: not compared)
    mismatches: int = 0
    worst: float = 0.0
    undefined: int = 0  # points where one side is nan/±inf and the other a number
    undefined_side: str = "formula"  # which side is undefined there: formula, autograd, either


def function_at_a_point(result, name: str, output: np.ndarray, jacobian: bool):
    """f at the first of ``name``'s points, in generic symbols, laid out like the output there."""
    order = [a for a, _ in point_axes(result, name, jacobian)]
    points = at_points(output, {a: a for a in order}, order)
    if not len(points):
        return None
    return layout(points[0, ...], points.shape[1:], (), jacobian=False)


def differentiate(y: np.ndarray, variables: np.ndarray, times: int = 1) -> np.ndarray:
    """Every entry of ``y`` differentiated ``times`` times by every variable: shape
    ``y.shape + variables.shape * times`` (entry ``[i, j, k]`` is ∂²y_i/∂v_j∂v_k)."""
    for _ in range(times):
        shape = y.shape + variables.shape
        spend(y.size * variables.size)
        if not y.size or not variables.size:
            y = np.empty(shape, dtype=object)
            continue
        by = sympy.derive_by_array(_array(y), _array(variables))  # variables' axes first
        flat = np.empty(y.size * variables.size, dtype=object)
        flat[:] = [by] if not variables.ndim and not y.ndim else list(
            sympy.Array(by).reshape(flat.size))
        leading = flat.reshape(variables.shape + y.shape)
        y = np.transpose(leading, [*range(variables.ndim, len(shape)), *range(variables.ndim)])
    return y


def _array(values: np.ndarray):
    """An object array as SymPy: its one entry when 0-d, else an Array of the same shape."""
    return sympy.sympify(values[()]) if not values.ndim else sympy.Array(values.tolist())


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a is b or all(x == y for x, y in zip(a.reshape(-1), b.reshape(-1)))


def symbolic_derivative(result, name: str, output: np.ndarray, symbols: dict,
                        jacobian: bool) -> SymbolicDerivative:
    """Differentiate at every point (once per distinct f there); one formula must fit all.
    The formula is then crosschecked against autograd's numbers at every point."""
    times = result.order
    pairs = point_axes(result, name, jacobian)
    order = [a for a, _ in pairs]
    points = at_points(output, {a: a for a in order}, order)
    if not len(points):
        raise Unavailable(f"{name} has no points to differentiate at")
    variables = at_points(symbols[name], dict(pairs), order)[0, ...]
    cache: dict[tuple, np.ndarray] = {}
    for point in range(len(points)):
        key = tuple(points[point, ...].reshape(-1))
        if key not in cache:
            cache[key] = differentiate(points[point, ...], variables, times)
            if not _same(next(iter(cache.values())), cache[key]):
                which = "derivative" if times == 1 else "second derivative"
                raise Unavailable(f"the {which} with respect to {name} differs from point to "
                                  "point (per-point constants), so there is no one formula")
    first = next(iter(cache.values()))
    component, per_point = points.shape[1:], variables.shape
    laid_out = layout(first, component, per_point, jacobian=jacobian) if times == 1 \
        else hessian_layout(first, component, per_point)
    made = SymbolicDerivative(name, laid_out, len(points), same_function=len(cache) == 1)
    compared = crosscheck(result, name, first, (len(points), component, per_point), symbols,
                          jacobian)
    made.crosscheck, made.mismatches, made.worst = compared[:3]
    made.undefined, made.undefined_side = compared[3:]
    return made
