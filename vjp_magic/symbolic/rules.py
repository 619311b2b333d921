"""The op rules on values: arithmetic, elementwise functions, activations, reductions,
products, softmax and ``where``. (Views, reshapes, joins, indexing and casts are in
:mod:`.rules_shape`.) Each rule takes the op's arguments, symbolic or plain, and returns a
:class:`~.tensor.SymTensor`; a new rule is one function registered with :func:`rule`."""
from __future__ import annotations

import math

import numpy as np
import sympy
import torch

from .arrays import (add_all, as_array, axes_of, fill, map_entries, mul_all, number, reduce,
                     scalar_array, wrap)
from .deadline import spend
from .errors import Unsupported
from .functions import relu, sigmoid
from .registry import RULES, rule
from .tensor import SymTensor


def _binary(function):
    def apply_binary(input, other):
        a, b = np.broadcast_arrays(as_array(input), as_array(other))
        spend(a.size)
        values = (function(p, q) for p, q in zip(a.reshape(-1), b.reshape(-1)))
        return wrap(fill(a.shape, values), input, other)
    return apply_binary


_mul = _binary(lambda p, q: p * q)
_pow = _binary(lambda p, q: p ** q)


@rule("add")
def _add(input, other, *, alpha=1):
    other = other if alpha == 1 else _mul(other, alpha)
    return _binary(lambda p, q: p + q)(input, other)


@rule("sub")
def _sub(input, other, *, alpha=1):
    other = other if alpha == 1 else _mul(other, alpha)
    return _binary(lambda p, q: p - q)(input, other)


@rule("rsub")
def _rsub(input, other, *, alpha=1):
    return _sub(other, input, alpha=alpha)


@rule("mul")
def _mul_rule(input, other):
    return _mul(input, other)


@rule("div")
def _div(input, other, *, rounding_mode=None):
    if rounding_mode is not None:
        raise Unsupported(f"division with rounding_mode={rounding_mode!r}")
    return _binary(lambda p, q: p / q)(input, other)


@rule("pow")
def _pow_rule(input, exponent):
    return _pow(input, exponent)


def _unary(function):
    def apply_unary(input):
        return wrap(map_entries(function, as_array(input)), input, 1.0)
    return apply_unary


_ELEMENTWISE = {
    "neg": lambda v: -v, "positive": lambda v: v, "abs": sympy.Abs, "exp": sympy.exp,
    "exp2": lambda v: 2 ** v, "expm1": lambda v: sympy.exp(v) - 1, "log": sympy.log,
    "log2": lambda v: sympy.log(v, 2), "log10": lambda v: sympy.log(v, 10),
    "log1p": lambda v: sympy.log(1 + v), "sqrt": sympy.sqrt, "rsqrt": lambda v: 1 / sympy.sqrt(v),
    "square": lambda v: v ** 2, "reciprocal": lambda v: 1 / v, "sin": sympy.sin,
    "cos": sympy.cos, "tan": sympy.tan, "asin": sympy.asin, "acos": sympy.acos,
    "atan": sympy.atan, "sinh": sympy.sinh, "cosh": sympy.cosh, "tanh": sympy.tanh,
    "asinh": sympy.asinh, "acosh": sympy.acosh, "atanh": sympy.atanh, "sigmoid": sigmoid,
    "erf": sympy.erf,
}
for _name, _function in _ELEMENTWISE.items():
    RULES[_name] = _unary(_function)


@rule("relu")
def _relu(input, inplace=False):
    return _unary(relu)(input)


@rule("silu")
def _silu(input, inplace=False):
    return _unary(lambda v: v * sigmoid(v))(input)


@rule("gelu")
def _gelu(input, approximate="none"):
    if approximate != "none":
        raise Unsupported(f"gelu(approximate={approximate!r})")
    return _unary(lambda v: v / 2 * (1 + sympy.erf(v / sympy.sqrt(2))))(input)


@rule("softplus")
def _softplus(input, beta=1, threshold=20):
    beta = number(beta)
    return _unary(lambda v: sympy.log(1 + sympy.exp(beta * v)) / beta)(input)


@rule("sum")
def _sum(input, dim=None, keepdim=False, *, dtype=None):
    return wrap(reduce(as_array(input), dim, keepdim, add_all), input, dtype=dtype)


@rule("mean")
def _mean(input, dim=None, keepdim=False, *, dtype=None):
    array = as_array(input)
    count = math.prod(array.shape[a] for a in axes_of(dim, array.ndim)) if array.ndim else 1
    summed = reduce(array, dim, keepdim, add_all)
    return wrap(map_entries(lambda v: v / count, summed), input, 1.0, dtype=dtype)


@rule("prod")
def _prod(input, dim=None, keepdim=False, *, dtype=None):
    return wrap(reduce(as_array(input), dim, keepdim, mul_all), input, dtype=dtype)


@rule("norm")
def _norm(input, p="fro", dim=None, keepdim=False, dtype=None):
    if p not in ("fro", 2, 2.0, None):
        raise Unsupported(f"norm with p={p!r}")
    squares = reduce(map_entries(lambda v: v ** 2, as_array(input)), dim, keepdim, add_all)
    return wrap(map_entries(sympy.sqrt, squares), input, 1.0, dtype=dtype)


@rule("matmul")
def _matmul(input, other):
    a, b = as_array(input), as_array(other)
    if a.ndim == 0 or b.ndim == 0:
        raise Unsupported("matmul of a 0-d tensor", "is not defined")
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    batch = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
    m, k, n = a2.shape[-2], a2.shape[-1], b2.shape[-1]
    spend(math.prod(batch) * m * k * n)
    a3 = np.broadcast_to(a2, batch + (m, k)).reshape(-1, m, k)
    b3 = np.broadcast_to(b2, batch + (k, n)).reshape(-1, k, n)
    values = (sympy.Add(*(a3[t, i, j] * b3[t, j, c] for j in range(k)))
              for t in range(a3.shape[0]) for i in range(m) for c in range(n))
    out = fill(batch + (m, n), values)
    if a.ndim == 1:
        out = out[..., 0, :]
    if b.ndim == 1:
        out = out[..., 0]
    return wrap(np.asarray(out, dtype=object) if out.ndim else scalar_array(out[()]), input, other)


@rule("linear")
def _linear(input, weight, bias=None):
    out = _matmul(input, wrap(as_array(weight).T, weight))
    return out if bias is None else _add(out, bias)


@rule("outer")
def _outer(input, vec2):
    a, b = as_array(input), as_array(vec2)
    return _mul(wrap(a[:, None], input), wrap(b[None, :], vec2))


@rule("softmax", "log_softmax")
def _softmax(input, dim=None, _stacklevel=3, dtype=None, *, log=False):
    array = as_array(input)
    if dim is None:
        raise Unsupported("softmax without dim")
    axis = dim % max(array.ndim, 1)
    exps = map_entries(sympy.exp, array)
    totals = reduce(exps, axis, True, add_all) if array.ndim else exps
    a, t = np.broadcast_arrays(array, totals)
    e = np.broadcast_to(exps, a.shape)
    if log:
        values = (p - sympy.log(s) for p, s in zip(a.reshape(-1), t.reshape(-1)))
    else:
        values = (p / s for p, s in zip(e.reshape(-1), t.reshape(-1)))
    return wrap(fill(a.shape, values), input, 1.0, dtype=dtype)


RULES["log_softmax"] = lambda input, dim=None, _stacklevel=3, dtype=None: _softmax(
    input, dim, _stacklevel, dtype, log=True)


@rule("where")
def _where(condition, input, other):
    if isinstance(condition, SymTensor):
        raise Unsupported("torch.where on a symbolic condition")
    mask = np.asarray(torch.as_tensor(condition).detach().cpu().numpy(), dtype=bool)
    c, a, b = np.broadcast_arrays(mask, as_array(input), as_array(other))
    return wrap(np.where(c, a, b), input, other)
