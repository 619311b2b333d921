"""Symbolic tensors for ``--symbolic``: a tensor-like type holding a numpy object array of SymPy
expressions, and ONE rule table, keyed by op name, that every route reaches.

Operators (``x**2``, ``2 - x``, ``x @ A``), methods (``x.sum(1)``), torch functions
(``torch.stack``, ``F.softmax``, via ``__torch_function__``) and the recorded calls that
:func:`replay` re-applies (in-place ones included) all end in :func:`apply`.
Plain tensors stay plain until they meet a symbolic one; then their values become SymPy
numbers (integral floats as Integers, short exact fractions as Rationals).
Ops outside the table raise :class:`Unsupported`, naming the op.
"""
from __future__ import annotations

import inspect
import math
import signal
import threading
import time
from fractions import Fraction

import numpy as np
import sympy
import torch


class Unsupported(Exception):
    """An op (or use of a symbolic tensor) the symbolic replay cannot follow."""

    def __init__(self, op: str, why: str = "is not supported"):
        super().__init__(f"{op} {why}")
        self.op = op


class UnsupportedAttribute(Unsupported, AttributeError):
    """An unknown attribute: also an AttributeError, so ``hasattr`` keeps working."""


class OutOfTime(BaseException):
    """The replay's time budget is spent (a BaseException: a cell's ``except`` won't hide it)."""


class RuleBug(BaseException):
    """A rule raised something other than :class:`Unsupported`: a bug in this module."""

    def __init__(self, op: str, error: BaseException):
        super().__init__(f"symbolic rule {op!r} failed: {type(error).__name__}: {error}")
        self.op = op
        self.error = error


# -- time budget ------------------------------------------------------------------------------
_SECONDS_PER_TERM = 2e-5  # a rough cost of one SymPy operation, to refuse hopeless ops early
_deadline: list[float] = [math.inf]


class deadline:
    """Context manager: ops raise :class:`OutOfTime` once ``seconds`` have passed.

    In the main thread (where Python runs signal handlers) a real-time timer also interrupts
    a long SymPy call in the middle; any handler or timer set before is put back on exit.
    Elsewhere, or when a timer is already running, the budget is checked between ops only.
    """

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._armed = False
        self._installed = False
        self._previous = None

    def _alarm(self, signum, frame):
        if self._armed:
            self._armed = False
            raise OutOfTime

    def __enter__(self):
        self._saved = _deadline[0]
        _deadline[0] = time.monotonic() + self.seconds
        self._installed = False
        if hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread():
            try:
                if signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0):
                    self._previous = signal.signal(signal.SIGALRM, self._alarm)
                    self._installed = self._armed = True
                    signal.setitimer(signal.ITIMER_REAL, max(self.seconds, 1e-3))
            except (ValueError, OSError):  # not allowed here: check between ops only
                self._armed = False
        return self

    def __exit__(self, *exc):
        self._armed = False  # a late alarm does nothing from here on
        if self._installed:
            self._installed = False
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM,
                          signal.SIG_DFL if self._previous is None else self._previous)
        _deadline[0] = self._saved
        return False


def spend(terms: int = 0) -> None:
    """Raise :class:`OutOfTime` if the budget is spent or ``terms`` operations cannot fit."""
    left = _deadline[0] - time.monotonic()
    if left <= 0 or terms * _SECONDS_PER_TERM > left:
        raise OutOfTime


# -- SymPy functions with torch's conventions ---------------------------------------------------
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


# -- numbers and arrays ---------------------------------------------------------------------------
def number(value, dtype: torch.dtype | None = None):
    """A number as SymPy: 2.0 -> 2, 0.25 -> 1/4, 0.1 -> 1/10 (denominators <= 100), pi -> Float."""
    if isinstance(value, sympy.Basic):
        return value
    if isinstance(value, (bool, np.bool_)):
        return sympy.Integer(int(value))
    if isinstance(value, (int, np.integer)):
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


def _fill(shape, values) -> np.ndarray:
    """An object array from an iterable of entries (the time budget is checked per entry)."""
    out = np.empty(shape, dtype=object)
    flat = out.reshape(-1)
    limit = _deadline[0]
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
        return _fill(tuple(data.shape), (number(v, data.dtype) for v in data.reshape(-1).tolist()))
    if isinstance(value, np.ndarray):
        return _fill(value.shape, (number(v) for v in value.reshape(-1).tolist())) \
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


def _map(function, array: np.ndarray) -> np.ndarray:
    spend(array.size)
    return _fill(array.shape, (function(v) for v in array.reshape(-1)))


def _shape_arg(shape) -> tuple:
    if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)):
        shape = tuple(shape[0])
    if any(not isinstance(n, (int, np.integer)) for n in shape):
        raise Unsupported("a shape given as tensors", "is not supported")
    return tuple(int(n) for n in shape)


def _dims(dim, ndim) -> tuple[int, ...]:
    if dim is None:
        return tuple(range(ndim))
    if isinstance(dim, (int, np.integer)):
        dim = (dim,)
    return tuple(sorted(int(d) % max(ndim, 1) for d in dim))


def _reduce(array: np.ndarray, dim, keepdim: bool, combine) -> np.ndarray:
    axes = _dims(dim, array.ndim)
    if array.ndim == 0:
        return array
    spend(array.size)
    keep = [a for a in range(array.ndim) if a not in axes]
    moved = np.transpose(array, keep + list(axes))
    rows = moved.reshape(tuple(array.shape[a] for a in keep) + (-1,))
    out = _fill(rows.shape[:-1], (combine(*row) for row in rows.reshape(-1, rows.shape[-1])))
    if keepdim:
        out = out.reshape(tuple(1 if a in axes else n for a, n in enumerate(array.shape)))
    return out


def _add_all(*terms):
    return sympy.Add(*terms)


def _mul_all(*terms):
    return sympy.Mul(*terms)


# -- the rule table -------------------------------------------------------------------------------
RULES: dict = {}
ALIASES = {
    "true_divide": "div", "divide": "div", "truediv": "div", "multiply": "mul",
    "subtract": "sub", "negative": "neg", "absolute": "abs", "expit": "sigmoid",
    "concat": "cat", "concatenate": "cat", "arcsin": "asin", "arccos": "acos",
    "arctan": "atan", "arcsinh": "asinh", "arccosh": "acosh", "arctanh": "atanh",
    "swapaxes": "transpose", "swapdims": "transpose", "ger": "outer", "bmm": "matmul",
    "mm": "matmul", "mv": "matmul", "dot": "matmul", "inner_dot": "matmul",
    "H": "T", "mH": "mT", "adjoint": "mT",
}


def rule(*names):
    def register(function):
        for name in names:
            RULES[name] = function
        return function
    return register


def _binary(function):
    def apply_binary(input, other):
        a, b = np.broadcast_arrays(as_array(input), as_array(other))
        spend(a.size)
        values = (function(p, q) for p, q in zip(a.reshape(-1), b.reshape(-1)))
        return wrap(_fill(a.shape, values), input, other)
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
        return wrap(_map(function, as_array(input)), input, 1.0)
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
    return wrap(_reduce(as_array(input), dim, keepdim, _add_all), input, dtype=dtype)


@rule("mean")
def _mean(input, dim=None, keepdim=False, *, dtype=None):
    array = as_array(input)
    count = math.prod(array.shape[a] for a in _dims(dim, array.ndim)) if array.ndim else 1
    summed = _reduce(array, dim, keepdim, _add_all)
    return wrap(_map(lambda v: v / count, summed), input, 1.0, dtype=dtype)


@rule("prod")
def _prod(input, dim=None, keepdim=False, *, dtype=None):
    return wrap(_reduce(as_array(input), dim, keepdim, _mul_all), input, dtype=dtype)


@rule("norm")
def _norm(input, p="fro", dim=None, keepdim=False, dtype=None):
    if p not in ("fro", 2, 2.0, None):
        raise Unsupported(f"norm with p={p!r}")
    squares = _reduce(_map(lambda v: v ** 2, as_array(input)), dim, keepdim, _add_all)
    return wrap(_map(sympy.sqrt, squares), input, 1.0, dtype=dtype)


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
    out = _fill(batch + (m, n), values)
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


def _join(tensors, dim, how):
    arrays = [as_array(t) for t in tensors]
    dtype = dtype_of(*tensors)
    if how == "stack":
        ndim = arrays[0].ndim + 1
        return SymTensor(np.stack(arrays, axis=dim % ndim), dtype)
    arrays = [a for a in arrays if a.shape != (0,)] or arrays
    return SymTensor(np.concatenate(arrays, axis=dim % arrays[0].ndim), dtype)


@rule("stack")
def _stack(tensors, dim=0):
    return _join(tensors, dim, "stack")


@rule("cat")
def _cat(tensors, dim=0):
    return _join(tensors, dim, "cat")


@rule("hstack")
def _hstack(tensors):
    arrays = [as_array(t) for t in tensors]
    return _join(tensors, 0 if arrays[0].ndim == 1 else 1, "cat")


@rule("vstack")
def _vstack(tensors):
    lifted = [wrap(np.atleast_2d(as_array(t)), t) for t in tensors]
    return _join(lifted, 0, "cat")


@rule("view", "reshape")
def _reshape(input, *shape):
    array = as_array(input)
    if len(shape) == 1 and isinstance(shape[0], torch.dtype):
        raise Unsupported("view(dtype)")
    return wrap(array.reshape(_shape_arg(shape)), input)


@rule("view_as", "reshape_as")
def _reshape_as(input, other):
    return wrap(as_array(input).reshape(tuple(other.shape)), input)


@rule("flatten")
def _flatten(input, start_dim=0, end_dim=-1):
    array = as_array(input)
    if array.ndim == 0:
        return wrap(array.reshape(1), input)
    start, end = start_dim % array.ndim, end_dim % array.ndim
    shape = array.shape[:start] + (-1,) + array.shape[end + 1:]
    return wrap(array.reshape(shape), input)


@rule("permute")
def _permute(input, *dims):
    return wrap(np.transpose(as_array(input), _shape_arg(dims)), input)


@rule("transpose")
def _transpose(input, dim0, dim1):
    return wrap(np.swapaxes(as_array(input), dim0, dim1), input)


@rule("t")
def _t(input):
    array = as_array(input)
    return wrap(array.T if array.ndim == 2 else array, input)


@rule("squeeze")
def _squeeze(input, dim=None):
    array = as_array(input)
    if dim is None:
        return wrap(array.reshape(tuple(n for n in array.shape if n != 1)), input)
    axes = [d for d in _dims(dim, array.ndim) if array.ndim and array.shape[d] == 1]
    return wrap(np.squeeze(array, axis=tuple(axes)) if axes else array, input)


@rule("unsqueeze")
def _unsqueeze(input, dim):
    array = as_array(input)
    return wrap(np.expand_dims(array, dim % (array.ndim + 1)), input)


@rule("expand", "broadcast_to")
def _expand(input, *sizes):
    array = as_array(input)
    sizes = _shape_arg(sizes)
    lead = len(sizes) - array.ndim
    target = tuple(array.shape[i - lead] if n == -1 else n for i, n in enumerate(sizes))
    return wrap(np.broadcast_to(array, target).copy(), input)


@rule("expand_as")
def _expand_as(input, other):
    return _expand(input, tuple(other.shape))


@rule("repeat")
def _repeat(input, *sizes):
    array = as_array(input)
    sizes = _shape_arg(sizes)
    array = array.reshape((1,) * (len(sizes) - array.ndim) + array.shape)
    return wrap(np.tile(array, sizes), input)


@rule("flip")
def _flip(input, *dims):
    array = as_array(input)
    dims = dims[0] if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else dims
    return wrap(np.flip(array, axis=_dims(dims, array.ndim)).copy(), input)


@rule("softmax", "log_softmax")
def _softmax(input, dim=None, _stacklevel=3, dtype=None, *, log=False):
    array = as_array(input)
    if dim is None:
        raise Unsupported("softmax without dim")
    axis = dim % max(array.ndim, 1)
    exps = _map(sympy.exp, array)
    totals = _reduce(exps, axis, True, _add_all) if array.ndim else exps
    a, t = np.broadcast_arrays(array, totals)
    e = np.broadcast_to(exps, a.shape)
    if log:
        values = (p - sympy.log(s) for p, s in zip(a.reshape(-1), t.reshape(-1)))
    else:
        values = (p / s for p, s in zip(e.reshape(-1), t.reshape(-1)))
    return wrap(_fill(a.shape, values), input, 1.0, dtype=dtype)


RULES["log_softmax"] = lambda input, dim=None, _stacklevel=3, dtype=None: _softmax(
    input, dim, _stacklevel, dtype, log=True)


@rule("where")
def _where(condition, input, other):
    if isinstance(condition, SymTensor):
        raise Unsupported("torch.where on a symbolic condition")
    mask = np.asarray(torch.as_tensor(condition).detach().cpu().numpy(), dtype=bool)
    c, a, b = np.broadcast_arrays(mask, as_array(input), as_array(other))
    return wrap(np.where(c, a, b), input, other)


@rule("clone", "contiguous")
def _clone(input, *args, **kwargs):
    return wrap(as_array(input).copy(), input)


for _cast, _dtype in (("float", torch.float32), ("double", torch.float64),
                      ("half", torch.float16), ("bfloat16", torch.bfloat16)):
    RULES[_cast] = (lambda d: lambda input, memory_format=None: wrap(
        as_array(input).copy(), dtype=d))(_dtype)


@rule("to", "type")
def _to(input, *args, **kwargs):
    dtype = kwargs.get("dtype")
    for a in args:
        if isinstance(a, torch.dtype):
            dtype = a
        elif isinstance(a, (SymTensor, torch.Tensor)):
            dtype = a.dtype
    if dtype is not None and not dtype.is_floating_point:
        raise Unsupported(f"casting to {dtype}", "is not supported (it has no derivative)")
    return wrap(as_array(input).copy(), input, dtype=dtype)


def _constant_like(fill):
    def like(input, *args, dtype=None, **kwargs):
        shape = tuple(input.shape)
        values = fill(shape, *args)
        return SymTensor(as_array(values), dtype or input.dtype)
    return like


RULES["zeros_like"] = _constant_like(lambda s: torch.zeros(s))
RULES["empty_like"] = RULES["zeros_like"]
RULES["ones_like"] = _constant_like(lambda s: torch.ones(s))
RULES["full_like"] = _constant_like(lambda s, value: torch.full(s, float(value)))
RULES["rand_like"] = _constant_like(lambda s: torch.rand(s, dtype=torch.float64))
RULES["randn_like"] = _constant_like(lambda s: torch.randn(s, dtype=torch.float64))


def _getitem(input, index):
    return wrap(_index(as_array(input), index), input)


RULES["getitem"] = _getitem


@rule("setitem")
def _setitem(input, index, value):
    """``input`` with ``input[index] = value`` done (a new tensor; ``input`` is unchanged)."""
    array = as_array(input).copy()
    values = as_array(value)
    spend(values.size)
    where = _numpy_index(index)
    target = array[where]
    if isinstance(target, np.ndarray):  # a slice: entries broadcast into it
        array[where] = np.broadcast_to(values, target.shape)
    else:  # one entry (y[0] = ...): store the expression itself, not a 0-d array
        if values.size != 1:
            raise RuleBug("setitem", ValueError(f"{values.size} values for one entry"))
        array[where] = values.reshape(-1)[0]
    return wrap(array, input)


@rule("unbind")
def _unbind(input, dim=0):
    array = as_array(input)
    return tuple(wrap(part, input) for part in np.moveaxis(array, dim % array.ndim, 0))


@rule("T")
def _big_t(input):
    return wrap(as_array(input).T, input)


@rule("mT")
def _m_t(input):
    return wrap(np.swapaxes(as_array(input), -1, -2), input)


def _numpy_index(index):
    if isinstance(index, tuple):
        return tuple(_numpy_index(i) for i in index)
    if isinstance(index, SymTensor):
        raise Unsupported("indexing with a symbolic tensor")
    if isinstance(index, torch.Tensor):
        return index.detach().cpu().numpy()
    if isinstance(index, list):
        return np.asarray(index)
    return index


def _index(array: np.ndarray, index) -> np.ndarray:
    picked = array[_numpy_index(index)]
    return picked if isinstance(picked, np.ndarray) else scalar_array(picked)


# -- dispatch --------------------------------------------------------------------------------------
_SIGNATURES: dict = {}
_INPLACE_KEEP = {"requires_grad_", "retain_grad"}


def op_name(func) -> str:
    """``torch.Tensor.__radd__`` -> ``radd``, ``torch.special.expit`` -> ``sigmoid``."""
    name = getattr(func, "__name__", None) or str(func)
    for prefix in ("special_", "linalg_"):
        name = name.removeprefix(prefix)
    if name.startswith("__") and name.endswith("__"):
        name = name[2:-2]
    return ALIASES.get(name, name)


def qualified(func) -> str:
    """The op as the user knows it: ``torch.sort``, ``Tensor.sort``, ``torch.nn.functional.x``."""
    name = getattr(func, "__name__", None) or str(func)
    module = getattr(func, "__module__", None) or ""
    qualname = getattr(func, "__qualname__", "") or ""
    if qualname.startswith(("TensorBase.", "Tensor.")) or module == "torch._tensor":
        return f"Tensor.{name}"
    if module.startswith("torch.nn.functional") or module == "torch._C._nn":
        return f"torch.nn.functional.{name}"
    if module == "torch._C._special":
        return f"torch.special.{name.removeprefix('special_')}"
    if module == "torch._C._linalg":
        return f"torch.linalg.{name.removeprefix('linalg_')}"
    return f"torch.{name}"


def apply(name: str, *args, display: str | None = None, **kwargs):
    """Run rule ``name``; unknown ops and unsupported argument lists raise :class:`Unsupported`."""
    spend()
    display = display or f"torch.{name}"
    rule_function = RULES.get(name)
    if rule_function is None:
        raise Unsupported(display)
    signature = _SIGNATURES.get(name)
    if signature is None:
        signature = _SIGNATURES[name] = inspect.signature(rule_function)
    try:
        signature.bind(*args, **kwargs)
    except TypeError:
        given = ", ".join(list(kwargs)) or f"{len(args)} arguments"
        raise Unsupported(display, f"with these arguments ({given}) is not supported") from None
    try:
        return rule_function(*args, **kwargs)
    except (Unsupported, OutOfTime, RuleBug):
        raise
    except Exception as error:  # the cell ran numerically, so the same call must work here
        raise RuleBug(name, error) from error


class SymTensor:
    """A tensor of SymPy expressions: enough of ``torch.Tensor`` for small teaching cells.

    ``backward`` does nothing and ``grad`` is None, so a cell's own ``y.backward(v)`` and
    ``x.grad`` checks run harmlessly; ``.data``, ``.item()``, ``detach`` and comparisons
    raise :class:`Unsupported` (they leave the symbolic world).
    """

    __array_ufunc__ = None  # numpy defers to our reflected operators
    __hash__ = object.__hash__

    def __init__(self, array: np.ndarray, dtype: torch.dtype, name: str | None = None):
        self.array = array
        self.dtype = dtype
        self.input_name = name  # set for the symbolic inputs: they must not change in place

    # -- what a tensor tells about itself
    @property
    def shape(self) -> torch.Size:
        return torch.Size(self.array.shape)

    def size(self, dim=None):
        return self.shape if dim is None else self.shape[dim]

    def dim(self) -> int:
        return self.array.ndim

    ndimension = dim

    @property
    def ndim(self) -> int:
        return self.array.ndim

    def numel(self) -> int:
        return self.array.size

    nelement = numel

    def __len__(self) -> int:
        if self.array.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.array.shape[0]

    def __iter__(self):
        if self.array.ndim == 0:
            raise TypeError("iteration over a 0-d tensor")
        return (self[i] for i in range(self.array.shape[0]))

    device = torch.device("cpu")
    requires_grad = True
    grad = None
    grad_fn = None
    is_cuda = False

    @property
    def is_leaf(self) -> bool:
        return self.input_name is not None

    def is_floating_point(self) -> bool:
        return self.dtype.is_floating_point

    @property
    def T(self):
        return apply("T", self, display="Tensor.T")

    @property
    def mT(self):
        return apply("mT", self, display="Tensor.mT")

    # -- autograd calls in a cell are no-ops here
    def backward(self, *args, **kwargs) -> None:
        return None

    def requires_grad_(self, requires_grad=True):
        return self

    def retain_grad(self) -> None:
        return None

    # -- leaving the symbolic world
    @property
    def data(self):
        raise Unsupported("Tensor.data", "is not supported (it detaches from the graph)")

    def detach(self):
        raise Unsupported("Tensor.detach", "is not supported (it detaches from the graph)")

    def _leave(self, what):
        raise Unsupported(what, "is not supported on a symbolic tensor")

    def item(self):
        self._leave("Tensor.item")

    def tolist(self):
        self._leave("Tensor.tolist")

    def numpy(self, *args, **kwargs):
        self._leave("Tensor.numpy")

    def __bool__(self):
        self._leave("bool() (an if or while on tensor values)")

    def __float__(self):
        self._leave("float()")

    def __int__(self):
        self._leave("int()")

    def __index__(self):
        self._leave("using a tensor as an index")

    def __format__(self, spec):
        if not spec:
            return repr(self)
        self._leave("formatting tensor values")

    def __repr__(self) -> str:
        return f"SymTensor(shape={tuple(self.shape)}, dtype={self.dtype})"

    # -- operators: every one goes through the rule table
    def __add__(self, other):
        return apply("add", self, other, display="+")

    def __radd__(self, other):
        return apply("add", other, self, display="+")

    def __sub__(self, other):
        return apply("sub", self, other, display="-")

    def __rsub__(self, other):
        return apply("sub", other, self, display="-")

    def __mul__(self, other):
        return apply("mul", self, other, display="*")

    def __rmul__(self, other):
        return apply("mul", other, self, display="*")

    def __truediv__(self, other):
        return apply("div", self, other, display="/")

    def __rtruediv__(self, other):
        return apply("div", other, self, display="/")

    def __pow__(self, other):
        return apply("pow", self, other, display="**")

    def __rpow__(self, other):
        return apply("pow", other, self, display="**")

    def __matmul__(self, other):
        return apply("matmul", self, other, display="@")

    def __rmatmul__(self, other):
        return apply("matmul", other, self, display="@")

    def __neg__(self):
        return apply("neg", self, display="unary -")

    def __pos__(self):
        return apply("positive", self, display="unary +")

    def __abs__(self):
        return apply("abs", self, display="abs()")

    def __floordiv__(self, other):
        raise Unsupported("// (floor division)", "has no derivative")

    __rfloordiv__ = __mod__ = __rmod__ = __floordiv__

    def _compare(self, other):
        raise Unsupported("comparisons (<, >, ==) of symbolic values")

    __lt__ = __le__ = __gt__ = __ge__ = __eq__ = __ne__ = _compare

    def __getitem__(self, index):
        return apply("getitem", self, index, display="indexing")

    def __setitem__(self, index, value):
        if self.input_name is not None:
            raise Unsupported(f"assigning into the input {self.input_name}")
        self.array = apply("setitem", self, index, value, display="indexed assignment").array

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        base = ALIASES.get(name, name)
        if base in RULES:
            return lambda *args, **kwargs: apply(base, self, *args, display=f"Tensor.{name}",
                                                 **kwargs)
        stem = ALIASES.get(name[:-1], name[:-1])
        if name.endswith("_") and stem in RULES:
            return lambda *args, **kwargs: self._in_place(stem, name, args, kwargs)
        if name == "zero_":
            return lambda: self._in_place("zeros_like", name, (), {})
        raise UnsupportedAttribute(f"Tensor.{name}")

    def _in_place(self, stem: str, name: str, args, kwargs):
        if self.input_name is not None:
            raise Unsupported(f"Tensor.{name} (in place) on the input {self.input_name}")
        result = apply(stem, self, *args, display=f"Tensor.{name}", **kwargs)
        self.array = np.broadcast_to(result.array, self.array.shape).copy()
        return self

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = op_name(func)
        display = qualified(func)
        if args and isinstance(args[0], torch.Tensor) and (
            name.startswith("i") and name[1:] in RULES or name == "setitem"
            or (name.endswith("_") and name not in _INPLACE_KEEP)
        ):
            raise Unsupported(f"writing symbolic values into a plain tensor ({display})")
        name, args = _unreflect(name, args)
        return apply(name, *args, display=display, **kwargs)


# -- replaying a recorded call ---------------------------------------------------------------------
DETACHING = {"detach", "detach_", "data"}  # their results leave the graph (see SymTensor.detach)
_INPLACE_DUNDERS = {"__iadd__", "__isub__", "__imul__", "__itruediv__", "__ipow__",
                    "__imatmul__"}
_IDENTITY = {"requires_grad_", "retain_grad"}


def _unreflect(name: str, args):
    """``Tensor.__radd__(t, 2)`` is ``add(2, t)``: the rule name and arguments in order."""
    reflected = ALIASES.get(name[1:], name[1:])
    if name.startswith("r") and name not in RULES and reflected in RULES and len(args) == 2:
        return reflected, (args[1], args[0])
    return name, args


def call_name(func) -> tuple[str, str]:
    """(rule name, name as the user knows it) of a recorded call; property reads
    (``x.T``, ``x.data``) are named after the property."""
    if getattr(func, "__name__", None) in ("__get__", "__set__"):
        prop = getattr(getattr(func, "__self__", None), "__name__", "?")
        return ALIASES.get(prop, prop), f"Tensor.{prop}"
    return op_name(func), qualified(func)


def in_place_stem(func) -> str | None:
    """The rule an in-place call applies (``add_`` and ``+=``: ``add``; ``y[i] = v``:
    ``setitem``), or None for a call that makes a new tensor."""
    raw = getattr(func, "__name__", "") or ""
    if raw == "__setitem__":
        return "setitem"
    if raw in _INPLACE_DUNDERS:
        return ALIASES.get(raw[3:-2], raw[3:-2])
    if raw.endswith("_") and not raw.endswith("__") and raw not in _IDENTITY:
        name = op_name(func)[:-1]
        return ALIASES.get(name, name)
    return None


def replay(func, args, kwargs):
    """Apply the rule of one recorded call to its arguments (symbolic values and constants in
    place of its tensors). An in-place call returns the new value of the tensor it wrote
    (``out=`` and ``inplace=True`` calls return the value computed)."""
    name, display = call_name(func)
    kwargs = {k: v for k, v in kwargs.items() if k != "out"}
    if name in DETACHING:
        raise Unsupported(display, "is not supported (it detaches from the graph)")
    if name in _IDENTITY:
        return args[0]
    stem = in_place_stem(func)
    if stem is None:
        name, args = _unreflect(name, args)
        return apply(name, *args, display=display, **kwargs)
    target, rest = args[0], args[1:]
    if stem == "zero":
        value = SymTensor(as_array(torch.zeros(tuple(target.shape))), target.dtype)
    elif stem == "fill":
        value = wrap(np.broadcast_to(as_array(rest[0]), tuple(target.shape)).copy(), target)
    elif stem == "copy":
        value = rest[0]
    else:
        value = apply(stem, target, *rest, display=display, **kwargs)
    array = np.broadcast_to(as_array(value), tuple(target.shape)).copy()
    return SymTensor(array, target.dtype)
