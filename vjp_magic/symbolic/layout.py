"""Where the points are, and one point's derivatives laid out as a SymPy scalar or matrix.

First derivatives (:func:`layout`) and second derivatives (:func:`hessian_layout`) alike: a
result's ``order`` says which it holds.
"""
from __future__ import annotations

import math

import numpy as np
import sympy


def point_axes(result, name: str, jacobian: bool) -> list[tuple[int, int]]:
    """(output axis, input axis) pairs whose shared index is the point; none for a Jacobian
    (``%jacobian``, ``--full``)."""
    if jacobian or result.full:
        return []
    return list(result.inputs[name].pairing)


def partners(result, name: str, jacobian: bool) -> dict[str, dict[int, int]]:
    """Inputs whose points run along the same output axes as ``name``'s: output → input axis."""
    axes = sorted(a for a, _ in point_axes(result, name, jacobian))
    return {m: dict(point_axes(result, m, jacobian)) for m in result.inputs
            if sorted(a for a, _ in point_axes(result, m, jacobian)) == axes}


def at_points(array: np.ndarray, axis_map: dict[int, int], order: list[int]) -> np.ndarray:
    """``array`` with its point axes first, flattened: shape (points,) + one point's shape."""
    moved = np.moveaxis(array, [axis_map[a] for a in order], list(range(len(order))))
    count = math.prod(moved.shape[:len(order)])
    return moved.reshape((count,) + moved.shape[len(order):])


def layout(array: np.ndarray, component, per_point, jacobian: bool):
    """One point's derivatives as SymPy: a scalar, a row (gradient), a column (f'), a matrix."""
    if jacobian:
        rows = math.prod(component)
        shape = (rows, max(array.size // max(rows, 1), 0))
        return as_matrix(array, shape)
    if not component and not per_point:
        return array[()]
    if not per_point:
        shape = (component[0], 1) if len(component) == 1 else (math.prod(component[:-1]),
                                                                component[-1])
    elif not component:
        shape = (1, per_point[0]) if len(per_point) == 1 else (math.prod(per_point[:-1]),
                                                               per_point[-1])
    else:
        shape = (math.prod(component), math.prod(per_point))
    return as_matrix(array, shape)


def as_matrix(array: np.ndarray, shape: tuple[int, int]):
    """A SymPy Matrix of ``array``'s entries in the given 2-D shape (from rows of entries)."""
    if not shape[0] or not shape[1]:
        return sympy.zeros(*shape)
    return sympy.Matrix([[sympy.sympify(v) for v in row]
                         for row in np.asarray(array, dtype=object).reshape(shape)])


def hessian_layout(array: np.ndarray, component, per_point):
    """One point's second derivatives as SymPy: a scalar f″; a column of f_k″; an m × m
    Hessian; or a tuple of them, one per output component."""
    count, m = math.prod(component), math.prod(per_point)
    if count == 1 and m == 1:
        return sympy.sympify(array.reshape(-1)[0])
    if m == 1:
        return as_matrix(array, (count, 1))
    matrices = tuple(as_matrix(block, (m, m)) for block in array.reshape((count, m, m)))
    return matrices[0] if count == 1 else matrices
