"""ONE rule table, keyed by op name, that every route to a symbolic op reaches.

Operators (``x**2``, ``2 - x``, ``x @ A``), methods (``x.sum(1)``), torch functions (via
``SymTensor.__torch_function__``) and the recorded calls that :mod:`.calls` re-applies all end
in :func:`apply`. The rules themselves live in :mod:`.rules` and :mod:`.rules_shape`; a new op
rule goes there, registered with :func:`rule`. Ops outside the table raise
:class:`~.errors.Unsupported`, naming the op.
"""
from __future__ import annotations

import inspect

from .deadline import OutOfTime, spend
from .errors import RuleBug, Unsupported

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
_SIGNATURES: dict = {}


def rule(*names):
    """Decorator: register a function as the rule of the ops ``names``."""
    def register(function):
        for name in names:
            RULES[name] = function
        return function
    return register


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


def unreflect(name: str, args):
    """``Tensor.__radd__(t, 2)`` is ``add(2, t)``: the rule name and arguments in order."""
    reflected = ALIASES.get(name[1:], name[1:])
    if name.startswith("r") and name not in RULES and reflected in RULES and len(args) == 2:
        return reflected, (args[1], args[0])
    return name, args


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
