"""The op rules on shapes: joins, views and reshapes, permutations, broadcasting, copies and
casts, constants shaped like a tensor, indexing and indexed assignment."""
from __future__ import annotations

import numpy as np
import torch

from .arrays import as_array, axes_of, dtype_of, scalar_array, shape_arg, wrap
from .deadline import spend
from .errors import RuleBug, Unsupported
from .registry import RULES, rule
from .tensor import SymTensor


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
    return wrap(array.reshape(shape_arg(shape)), input)


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
    return wrap(np.transpose(as_array(input), shape_arg(dims)), input)


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
    axes = [d for d in axes_of(dim, array.ndim) if array.ndim and array.shape[d] == 1]
    return wrap(np.squeeze(array, axis=tuple(axes)) if axes else array, input)


@rule("unsqueeze")
def _unsqueeze(input, dim):
    array = as_array(input)
    return wrap(np.expand_dims(array, dim % (array.ndim + 1)), input)


@rule("expand", "broadcast_to")
def _expand(input, *sizes):
    array = as_array(input)
    sizes = shape_arg(sizes)
    lead = len(sizes) - array.ndim
    target = tuple(array.shape[i - lead] if n == -1 else n for i, n in enumerate(sizes))
    return wrap(np.broadcast_to(array, target).copy(), input)


@rule("expand_as")
def _expand_as(input, other):
    return _expand(input, tuple(other.shape))


@rule("repeat")
def _repeat(input, *sizes):
    array = as_array(input)
    sizes = shape_arg(sizes)
    array = array.reshape((1,) * (len(sizes) - array.ndim) + array.shape)
    return wrap(np.tile(array, sizes), input)


@rule("flip")
def _flip(input, *dims):
    array = as_array(input)
    dims = dims[0] if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else dims
    return wrap(np.flip(array, axis=axes_of(dims, array.ndim)).copy(), input)


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
# random values as constants, drawn from a private generator: the user's is not advanced
RULES["rand_like"] = _constant_like(lambda s: torch.rand(
    s, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
RULES["randn_like"] = _constant_like(lambda s: torch.randn(
    s, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))


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
