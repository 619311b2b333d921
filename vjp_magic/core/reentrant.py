"""Graphs whose backward would run the user's code again: refused before any pass.

A node of the graph is *reentrant* when its backward runs a forward again and calls autograd
itself: ``torch.utils.checkpoint(..., use_reentrant=True)`` (``CheckpointFunctionBackward``
re-runs the checkpointed block, its module hooks included, and calls
``torch.autograd.backward``), or a custom ``autograd.Function`` whose backward calls
``torch.autograd.grad`` / ``backward`` (or ``torch.func``) on a graph it rebuilds. Every pass
of the analysis through such a node would run the user's Python again, fire their hooks, and
miss the tensors the block reads but the graph does not show (its parameters get no
derivative from ``torch.autograd.grad``). :func:`refuse_reentrant` finds them by walking the
graph's nodes alone (no backward, no hook) and raises the short usage error. A custom
Function is judged by the names its backward's code (and the plain functions it calls, a few
levels down) reads; an ordinary custom backward (``2 * x * g``) is left alone.
"""
from __future__ import annotations

import sys
import types
import weakref

import torch

from .errors import VJPUsageError
from .tagging import walk_nodes

_DEPTH = 3  # how far the functions a backward calls are read
_SEEN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # Function class -> verdict


def reentrant_nodes(output) -> tuple[str, ...]:
    """The names of the reentrant nodes on ``output``'s graph (none for a non-tensor or a
    tensor without history)."""
    if not isinstance(output, torch.Tensor) or output.grad_fn is None:
        return ()
    return tuple(dict.fromkeys(node.name() for node in walk_nodes([output.grad_fn])
                               if _is_reentrant(node)))


def refuse_reentrant(output, output_name: str = "the output") -> None:
    """A :class:`VJPUsageError` where ``output``'s graph holds a reentrant node, before any
    pass on it: nothing is run, no hook fires, no state changes."""
    found = reentrant_nodes(output)
    if not found:
        return
    if any(name == "CheckpointFunctionBackward" for name in found):
        raise VJPUsageError(checkpoint_message(output_name))
    function = found[0].removesuffix("Backward")
    raise VJPUsageError(
        f"{output_name} was computed through {function}, a custom autograd.Function whose "
        "backward calls autograd itself on a graph it rebuilds (as torch.utils.checkpoint "
        "with use_reentrant=True does), so each of vjp_magic's passes would run that code "
        "again: compute its backward from saved tensors without autograd, or checkpoint "
        "with use_reentrant=False.")


def checkpoint_message(output_name: str) -> str:
    """The usage error for a reentrant ``torch.utils.checkpoint`` on the way."""
    return (f"{output_name} was computed through torch.utils.checkpoint with "
            "use_reentrant=True, which torch.autograd.grad (what vjp_magic differentiates "
            "with) does not support: pass use_reentrant=False to checkpoint.")


def _is_reentrant(node) -> bool:
    if not isinstance(node, torch.autograd.function.BackwardCFunction):
        return False
    cls = getattr(node, "_forward_cls", None)
    if not isinstance(cls, type):
        return False
    verdict = _SEEN.get(cls)
    if verdict is None:
        verdict = _SEEN[cls] = _function_is_reentrant(cls)
    return verdict


def _function_is_reentrant(cls: type) -> bool:
    module = sys.modules.get("torch.utils.checkpoint")  # (not imported: none on any graph)
    checkpoint = getattr(module, "CheckpointFunction", None)
    if checkpoint is not None and issubclass(cls, checkpoint):
        return True
    return any(_calls_autograd(getattr(cls, name, None), _DEPTH, set())
               for name in ("backward", "vjp"))


def _calls_autograd(function, depth: int, seen: set) -> bool:
    """Whether ``function`` (unwrapped; PyTorch's own ``Function`` defaults excluded), or a
    plain function it calls by a global name, calls autograd."""
    function = getattr(function, "__func__", function)
    while hasattr(function, "__wrapped__"):  # @once_differentiable, functools.wraps
        function = function.__wrapped__
    code = getattr(function, "__code__", None)
    if not isinstance(code, types.CodeType) or id(code) in seen \
            or getattr(function, "__module__", "") == "torch.autograd.function":
        return False
    seen.add(id(code))
    names = _names(code)
    if _reads_autograd(names, getattr(function, "__globals__", {})):
        return True
    if depth <= 0:
        return False
    scope = getattr(function, "__globals__", {})
    return any(_calls_autograd(scope[name], depth - 1, seen) for name in names
               if isinstance(scope.get(name), types.FunctionType)
               and not getattr(scope[name], "__module__", "").startswith("torch"))


def _names(code: types.CodeType) -> set[str]:
    """The global and attribute names ``code`` and the functions defined in it read."""
    names, stack = set(), [code]
    while stack:
        now = stack.pop()
        names.update(now.co_names)
        stack.extend(c for c in now.co_consts if isinstance(c, types.CodeType))
    return names


_AUTOGRAD_CALLS = {"grad", "backward", "vjp", "jacobian", "hessian"}


def _reads_autograd(names: set[str], scope: dict) -> bool:
    """``torch.autograd.grad(...)``, ``torch.autograd.backward``, ``y.backward()`` under
    ``enable_grad``, ``torch.func.vjp``, the engine itself; or such a function imported by
    name (``from torch.autograd import grad``)."""
    if names & {"run_backward", "_run_backward"}:  # the engine itself
        return True
    if ("autograd" in names or "func" in names) and names & _AUTOGRAD_CALLS:
        return True
    if "enable_grad" in names and "backward" in names:
        return True
    return any(any(scope.get(name) is target for target in _targets()) for name in names)


def _targets() -> tuple:
    """autograd's entry points, as a backward may have imported them by name."""
    found = [torch.autograd.grad, torch.autograd.backward, torch.Tensor.backward]
    func = getattr(torch, "func", None)
    found += [getattr(func, name) for name in ("vjp", "grad", "jacrev", "hessian")
              if hasattr(func, name)]
    return tuple(found)


__all__ = ["checkpoint_message", "reentrant_nodes", "refuse_reentrant"]
