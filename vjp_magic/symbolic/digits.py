"""The numbers inside a formula: the shortest decimal that gives back the same number in the
dtype the computation ran in (float32's 0.6213, not 0.621299982070923), spelled as every other
number is (:mod:`vjp_magic.render.numbers`: positional, or ``m × 10^e`` outside its range).

SymPy keeps its own exact values (the crosscheck evaluates those); only the spelling is
shortened, and never below what tells the dtype's numbers apart.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..render.document import Entry
from ..render.numbers import alone, choose_format

_NUMPY = {torch.float64: float, torch.float32: np.float32, torch.float16: np.float16}
MAX_DIGITS = 17  # a float64 always round-trips at 17 significant digits


def _rounder(dtype: torch.dtype):
    """``value`` rounded to ``dtype`` (float64 for a non-floating dtype)."""
    if not dtype.is_floating_point:
        return float
    cast = _NUMPY.get(dtype)
    if cast is not None:
        return lambda v: float(cast(v))
    return lambda v: torch.tensor(v, dtype=dtype).item()  # bfloat16 and the float8s


def round_trip_digits(value: float, dtype: torch.dtype) -> int:
    """The fewest significant digits whose decimal rounds to the same ``dtype`` number as
    ``value`` (a value past the dtype's range: as a float64)."""
    rounded = _rounder(dtype)
    with np.errstate(over="ignore"):
        target = rounded(value)
    if not math.isfinite(target):
        rounded, target = float, value
    for digits in range(1, MAX_DIGITS):
        with np.errstate(over="ignore"):
            if rounded(float(f"{value:.{digits}g}")) == target:
                return digits
    return MAX_DIGITS


def spelled(value: float, dtype: torch.dtype) -> Entry:
    """``value`` in its shortest decimal for ``dtype``, as render spells one number."""
    digits = round_trip_digits(value, dtype)
    return alone(choose_format([value], digits)).spell(value)


def display_dtype(result) -> torch.dtype:
    """The dtype a result's formulas are spelled in: the widest floating dtype of its output and
    inputs (never fewer digits than any of them resolves)."""
    dtypes = [result.output.dtype] + [i.dtype for i in result.inputs.values()]
    widest = None
    for d in dtypes:
        if d.is_floating_point and not d.is_complex:
            widest = d if widest is None else torch.promote_types(widest, d)
    return widest or torch.float64
