"""Re-applying one recorded torch call to symbolic values: which rule a call is (in-place
calls included: ``add_``, ``+=``, ``y[i] = v``), and its new value."""
from __future__ import annotations

import numpy as np
import torch

from ..run.record import FunctionApply
from ..run.steps import DETACHING, function_name
from .arrays import as_array, wrap
from .errors import Unsupported
from .registry import ALIASES, apply, op_name, qualified, unreflect
from .tensor import SymTensor

_INPLACE_DUNDERS = {"__iadd__", "__isub__", "__imul__", "__itruediv__", "__ipow__",
                    "__imatmul__"}
_IDENTITY = {"requires_grad_", "retain_grad"}


def call_name(func) -> tuple[str, str]:
    """(rule name, name as the user knows it) of a recorded call; property reads
    (``x.T``, ``x.data``) are named after the property."""
    if isinstance(func, FunctionApply):  # a custom autograd.Function: no formula to derive
        return func.__name__, f"the custom autograd.Function {func.function.__name__}"
    if getattr(func, "__name__", None) in ("__get__", "__set__"):
        prop = function_name(func)
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


def replay_call(func, args, kwargs):
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
        name, args = unreflect(name, args)
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
