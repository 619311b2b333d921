"""The crosscheck: a formula evaluated at every point in float64, compared with autograd.

:func:`crosscheck` does it for one input's first derivatives (``%%vjp``, ``%jacobian``) or
second derivatives (``%hessian``): the same points, one more per-point axis block.
"""
from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import numpy as np
import sympy
import torch

from ..core.tolerances import tolerances
from .functions import NUMPY_FUNCTIONS
from .layout import at_points, partners, point_axes


class Comparison(NamedTuple):
    """How the formula's values compare with autograd's, point by point."""

    agree: bool  # no point where both give numbers that differ
    mismatches: int  # points where they differ
    worst: float  # largest finite difference there (nan if none)
    undefined: int  # other points where one side is nan/±inf and the other a number
    undefined_side: str  # "formula", "autograd" or "either"


def float64(tensor: torch.Tensor) -> np.ndarray:
    """``tensor``'s values as a float64 NumPy array (on the CPU, detached)."""
    return tensor.detach().to("cpu", torch.float64).numpy()


def point_values(result, name: str, points: int, symbols: dict, jacobian: bool) -> dict:
    """Each symbol's value: generic symbols one value per point, the others one value."""
    order = [a for a, _ in point_axes(result, name, jacobian)]
    values = {}
    for m, axis_map in partners(result, name, jacobian).items():
        by_point = at_points(float64(result.inputs[m].tensor), axis_map, order)
        generic = at_points(symbols[m], axis_map, order)[0, ...].reshape(-1)
        for i, s in enumerate(generic):
            values[s] = by_point.reshape(points, -1)[:, i]
    for m, other in result.inputs.items():
        for s, v in zip(symbols[m].reshape(-1), float64(other.tensor).reshape(-1)):
            values.setdefault(s, v)
    return values


def evaluate(derivative: np.ndarray, values: dict, shape: tuple) -> np.ndarray:
    """The entries of ``derivative`` at every point (nan where complex), shaped ``shape``."""
    entries = list(derivative.reshape(-1))
    arguments = sorted(set().union(*(sympy.sympify(e).free_symbols for e in entries)), key=str)
    missing = [s for s in arguments if s not in values]
    if missing:  # cannot happen for formulas built from the input symbols
        raise AssertionError(f"no values for {missing}")
    function = sympy.lambdify(arguments, entries, modules=[NUMPY_FUNCTIONS, "numpy"],
                              dummify=True)
    points = shape[0]
    with np.errstate(all="ignore"), warnings.catch_warnings():  # log(0), sqrt(0) …: inf/nan
        warnings.simplefilter("ignore", RuntimeWarning)
        evaluated = function(*(values[s] for s in arguments))
        got = np.stack([np.broadcast_to(np.asarray(v), (points,)) for v in evaluated], axis=-1) \
            if entries else np.zeros((points, 0))
        if np.iscomplexobj(got):
            got = np.where(np.abs(got.imag) > 0, np.nan, got.real)
        return got.astype(np.float64).reshape(shape)


def crosscheck(result, name: str, derivative: np.ndarray, sizes: tuple, symbols: dict,
               jacobian: bool) -> Comparison:
    """Evaluate one point's ``derivative`` at every point and compare with autograd's numbers.

    ``sizes`` is (points, component, per_point); the entries of ``derivative`` run over the
    component axes, then the per-point axes once per order of ``result`` (twice for a
    :class:`~vjp_magic.core.hessian.HessianResult`). ``jacobian``: against the full Jacobian.
    """
    points, component, per_point = sizes
    shape = (points,) + tuple(component) + tuple(per_point) * result.order
    got = evaluate(derivative, point_values(result, name, points, symbols, jacobian), shape)
    item = result.inputs[name]
    if jacobian:
        expected = float64(result.jacobian(name)).reshape(shape)
    else:
        pairs = point_axes(result, name, jacobian)
        axis_map = {a: len(component) + b for a, b in pairs}
        expected = at_points(float64(item.derivatives), axis_map, [a for a, _ in pairs])
        expected = expected.reshape(shape)
    return compare(got, expected, points, item.derivatives.dtype)


def compare(got: np.ndarray, expected: np.ndarray, points: int,
            dtype: torch.dtype) -> Comparison:
    """Compare the formula's values ``got`` with autograd's ``expected``, both shaped
    (points, ...).

    Close means within ``rtol`` relative or ``atol`` absolute, with ``atol = rtol`` times the
    largest finite derivative (plus the dtype's epsilon as a floor): in float32, derivatives
    that underflow next to much larger ones (sigmoid'(20) is 0 there, 2e-9 in float64) agree.
    Where both are not finite (log'(0), sqrt'(0)) they agree unless they are infinities of
    opposite signs. Where only one side is finite the formula is undefined there (the norm's
    gradient at 0: 0/0 in the formula, 0 by torch's convention): such a point is counted as
    undefined, not as a disagreement.
    """
    rtol = tolerances(dtype).symbolic
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else 0.0
    with np.errstate(all="ignore"):
        finite = np.isfinite(got) & np.isfinite(expected)
        magnitudes = np.abs(expected[np.isfinite(expected)])
        scale = float(magnitudes.max()) if magnitudes.size else 0.0
        atol = rtol * scale + eps
        difference = np.where(finite, np.abs(got - expected), np.inf)
        close = finite & (difference <= atol + rtol * np.abs(expected))
        odd = ~np.isfinite(got) & ~np.isfinite(expected)
        opposite = np.isinf(got) & np.isinf(expected) & (np.sign(got) != np.sign(expected))
        close |= odd & ~opposite
        formula_side = ~np.isfinite(got) & np.isfinite(expected)
        autograd_side = np.isfinite(got) & ~np.isfinite(expected)
    one_sided = (formula_side | autograd_side).reshape(points, -1)
    bad = (~close.reshape(points, -1) & ~one_sided).any(axis=1)
    undefined = one_sided.any(axis=1) & ~bad
    on_formula = bool(formula_side.reshape(points, -1)[undefined].any())
    on_autograd = bool(autograd_side.reshape(points, -1)[undefined].any())
    worst = difference[finite & ~close]
    return Comparison(not bool(bad.any()), int(bad.sum()),
                      float(worst.max()) if worst.size else math.nan, int(undefined.sum()),
                      "either" if on_formula and on_autograd else
                      "autograd" if on_autograd else "formula")
