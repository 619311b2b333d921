"""SymPy differentiates the replayed output: one formula per input, for one generic point."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sympy

from .check import check
from .deadline import spend
from .errors import Unavailable
from .layout import at_points, layout, point_axes


@dataclass
class Formula:
    """The symbolic derivative for one input, and how it compared with autograd."""

    name: str
    derivative: object  # SymPy expression or Matrix, laid out like one point's derivatives
    points: int
    same_function: bool = True  # f itself (not only its derivative) is the same at every point
    check: bool | None = None
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


def _differentiate(y: np.ndarray, variables: np.ndarray) -> np.ndarray:
    """Every entry of ``y`` differentiated by every variable: shape y.shape + variables.shape."""
    derivative = np.empty(y.shape + variables.shape, dtype=object)
    for iy in np.ndindex(*y.shape):
        for ix in np.ndindex(*variables.shape):
            spend()
            derivative[iy + ix] = sympy.diff(y[iy], variables[ix])
    return derivative


def formula(result, name: str, output: np.ndarray, symbols: dict, jacobian: bool) -> Formula:
    """Differentiate at every point (once per distinct f there); one formula must fit all.
    The formula is then checked against autograd's numbers at every point."""
    pairs = point_axes(result, name, jacobian)
    order = [a for a, _ in pairs]
    points = at_points(output, {a: a for a in order}, order)
    variables = at_points(symbols[name], dict(pairs), order)[0, ...] if len(points) else None
    cache: dict[tuple, np.ndarray] = {}
    first = None
    for point in range(len(points)):
        y = points[point, ...]
        key = tuple(y.reshape(-1))
        derivative = cache.get(key)
        if derivative is None:
            derivative = cache[key] = _differentiate(y, variables)
        if first is None:
            first = derivative
        elif derivative is not first and not all(
                a == b for a, b in zip(first.reshape(-1), derivative.reshape(-1))):
            raise Unavailable(f"the derivative with respect to {name} differs from point to "
                              "point (per-point constants), so there is no one formula")
    if first is None:
        raise Unavailable(f"{name} has no points to differentiate at")
    component, per_point = points.shape[1:], variables.shape
    made = Formula(name, layout(first, component, per_point, jacobian=jacobian), len(points),
                   same_function=len(cache) == 1)
    compared = check(result, name, first, (len(points), component, per_point), symbols, jacobian)
    made.check, made.mismatches, made.worst = compared[:3]
    made.undefined, made.undefined_side = compared[3:]
    return made
