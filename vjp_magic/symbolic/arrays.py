"""Operands as numpy object arrays of SymPy expressions: the building blocks of every rule.

Plain tensors stay plain until they meet a symbolic one; then their values become SymPy
numbers (integral floats as Integers, short exact fractions as Rationals).
"""
from __future__ import annotations

import math
import time
from fractions import Fraction

import numpy as np
import sympy
import torch

from .deadline import OutOfTime, ends_at, spend
from .errors import Unsupported
from .tensor import SymTensor


def number(value, dtype: torch.dtype | None = None):
    """A number as SymPy: 2.0 -> 2, 0.25 -> 1/4, 0.1 -> 1/10 (denominators <= 100), pi -> Float."""
    if isinstance(value, sympy.Basic):
        return value
    if isinstance(value, (bool, np.bool_, int, np.integer)):
        return sympy.Integer(int(value))
    if isinstance(value, complex):
        raise Unsupported("a complex number", "is not supported (real tensors only)")
    value = float(value)
    if not math.isfinite(value):
        return sympy.nan if math.isnan(value) else (sympy.oo if value > 0 else -sympy.oo)
    if value.is_integer():
        return sympy.Integer(int(value))
    fraction = Fraction(value).limit_denominator(100)
    narrow = np.float32 if dtype in (torch.float32, torch.float16, torch.bfloat16) else float
    if narrow(fraction.numerator / fraction.denominator) == narrow(value):
        return sympy.Rational(fraction.numerator, fraction.denominator)
    return sympy.Float(value)


def scalar_array(expr) -> np.ndarray:
    out = np.empty((), dtype=object)
    out[()] = expr
    return out


def fill(shape, values) -> np.ndarray:
    """An object array from an iterable of entries (the time budget is checked per entry)."""
    out = np.empty(shape, dtype=object)
    flat = out.reshape(-1)
    limit = ends_at()
    for i, v in enumerate(values):
        flat[i] = v
        if time.monotonic() > limit:
            raise OutOfTime
    return out


def as_array(value) -> np.ndarray:
    """Any operand as an object array of SymPy expressions."""
    if isinstance(value, SymTensor):
        return value.array
    if isinstance(value, torch.Tensor):
        if value.is_complex():
            raise Unsupported("a complex tensor", "is not supported (real tensors only)")
        spend(value.numel())
        data = value.detach().cpu()
        return fill(tuple(data.shape), (number(v, data.dtype) for v in data.reshape(-1).tolist()))
    if isinstance(value, np.ndarray):
        return fill(value.shape, (number(v) for v in value.reshape(-1).tolist())) \
            if value.dtype != object else value
    if isinstance(value, (list, tuple)):
        parts = [as_array(v) for v in value]
        if not parts:
            return np.empty((0,), dtype=object)
        return np.stack(parts)
    return scalar_array(number(value))


def dtype_of(*values) -> torch.dtype:
    """torch's promotion of the operands' dtypes (Python floats make integer results float)."""
    dtypes = [v.dtype for v in values if isinstance(v, (SymTensor, torch.Tensor))]
    result = None
    for d in dtypes:
        result = d if result is None else torch.promote_types(result, d)
    if result is None or (not result.is_floating_point
                          and any(isinstance(v, float) for v in values)):
        return torch.get_default_dtype()
    return result


def wrap(array: np.ndarray, *operands, dtype=None) -> SymTensor:
    return SymTensor(array, dtype or dtype_of(*operands))


def map_entries(function, array: np.ndarray) -> np.ndarray:
    spend(array.size)
    return fill(array.shape, (function(v) for v in array.reshape(-1)))


def shape_arg(shape) -> tuple:
    if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)):
        shape = tuple(shape[0])
    if any(not isinstance(n, (int, np.integer)) for n in shape):
        raise Unsupported("a shape given as tensors", "is not supported")
    return tuple(int(n) for n in shape)


def axes_of(dim, ndim) -> tuple[int, ...]:
    if dim is None:
        return tuple(range(ndim))
    if isinstance(dim, (int, np.integer)):
        dim = (dim,)
    return tuple(sorted(int(d) % max(ndim, 1) for d in dim))


def reduce(array: np.ndarray, dim, keepdim: bool, combine) -> np.ndarray:
    axes = axes_of(dim, array.ndim)
    if array.ndim == 0:
        return array
    spend(array.size)
    keep = [a for a in range(array.ndim) if a not in axes]
    moved = np.transpose(array, keep + list(axes))
    rows = moved.reshape(tuple(array.shape[a] for a in keep) + (-1,))
    out = fill(rows.shape[:-1], (combine(*row) for row in rows.reshape(-1, rows.shape[-1])))
    if keepdim:
        out = out.reshape(tuple(1 if a in axes else n for a, n in enumerate(array.shape)))
    return out


def add_all(*terms):
    return sympy.Add(*terms)


def mul_all(*terms):
    return sympy.Mul(*terms)
