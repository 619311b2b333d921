"""The pass guard: a ``sys.setprofile`` profiler policing the Python a pass of the analysis runs.

:func:`reentrant_guard` stops a custom Function's backward that re-enters autograd (enters
``enable_grad``, calls a module, ``torch.autograd.grad`` / ``backward``, the engine or a
``torch.func`` transform) with the usage error before that starts; :func:`pass_guard` arms it
for a pass of the analysis on the graph :func:`.reentrant.refuse_reentrant` judged last (moved
here from :mod:`.reentrant`, which judges graphs by reading them).
"""
from __future__ import annotations

import contextlib
import functools
import sys
import threading
import types
from typing import NamedTuple

import torch

from .errors import VJPUsageError

_CHECKPOINT_FILE = "checkpoint.py"


def _messages():
    """:mod:`.reentrant`, for its usage errors (imported when one is raised: it imports this
    module)."""
    from . import reentrant
    return reentrant


_FUNC_TRANSFORMS = ("vjp", "grad", "grad_and_value", "jacrev", "jacfwd", "hessian", "jvp",
                    "linearize")
_FUNCTIONAL = ("jacobian", "hessian", "vjp", "jvp", "hvp", "vhp")


@functools.lru_cache(maxsize=1)
def _entry_points() -> tuple:
    """autograd's entry points a backward may name: ``grad``, ``backward``, ``enable_grad``,
    ``torch.autograd.functional``'s and ``torch.func``'s transforms."""
    found = [torch.autograd.grad, torch.autograd.backward, torch.Tensor.backward,
             torch.enable_grad, torch.autograd.enable_grad]
    func = getattr(torch, "func", None)
    found += [getattr(func, name) for name in _FUNC_TRANSFORMS if hasattr(func, name)]
    functional = getattr(torch.autograd, "functional", None)
    found += [getattr(functional, name) for name in _FUNCTIONAL if hasattr(functional, name)]
    return tuple(found)


def reentrant_guard() -> _Guard:
    """A context manager for a pass on a graph with a custom Function: any such backward that
    enters ``enable_grad`` (in a pass without ``create_graph``: grad mode off), calls a
    module, ``torch.autograd.grad`` / ``backward``, the engine or a ``torch.func`` transform
    is stopped with the usage error before that starts (a ``sys.setprofile`` on this thread,
    the backward run on it; the previous one restored)."""
    return _Guard(on_this_thread=True)


class _Armed(threading.local):
    # the graph refuse_reentrant judged last: whether it holds a user's custom Function, the
    # code of the user's unpack hooks its saved tensors carry, and the output's name
    custom = False
    hooks: frozenset = frozenset()
    output_name = "the output"


_ARMED = _Armed()
_UNGUARDED = contextlib.nullcontext()


def pass_guard():
    """:func:`reentrant_guard` for a pass of the analysis where the graph
    :func:`refuse_reentrant` judged last (its entry point's) holds a user's custom Function
    (one whose backward escaped the check on zeros, say reentrant only on some gradients), or
    saved tensors the user's code unpacks (a non-reentrant checkpoint, their
    ``saved_tensors_hooks``: a pass on the user's own graph, where no replay stands for it, is
    stopped with the usage error as it enters the first, before it runs); nothing otherwise
    (no cost)."""
    if not (_ARMED.custom or _ARMED.hooks):
        return _UNGUARDED
    guard = reentrant_guard()
    guard.hooks = _ARMED.hooks
    return guard


class _Guard:
    """The profiler of :func:`reentrant_guard`: it polices the code running under a custom
    Function's backward (``BackwardCFunction.apply``) only, not a non-reentrant checkpoint's
    recomputation (its unpack hook) nor the analysis's own calls."""

    def __init__(self, on_this_thread: bool = False) -> None:
        self.tripped: str | None = None
        self.hooks: frozenset = frozenset()  # the unpack hooks' code that stops a pass
        self._on_this_thread = on_this_thread and hasattr(torch._C, "_set_multithreading_enabled")
        self._threads = None  # multithreaded backward, to restore (CUDA's run on this thread)
        # (frame, policed, grad mode at its start) of the backwards and unpack hooks running
        self._frames: list = []
        self._was_enabled = True
        self._previous = None

    def __enter__(self) -> _Guard:
        if self._on_this_thread:
            self._threads = torch._C._is_multithreading_enabled()
            torch._C._set_multithreading_enabled(False)
        self._previous = sys.getprofile()
        sys.setprofile(self._watch)
        return self

    def __exit__(self, kind, error, trace) -> None:
        _restore_profile(self._previous)
        if self._threads is not None:
            torch._C._set_multithreading_enabled(self._threads)
        if self.tripped is not None and kind is None:  # the backward swallowed the error
            raise VJPUsageError(_messages().function_message(self.tripped))

    def _watch(self, frame, event, arg) -> None:
        if event == "call":
            self._call(frame)
        elif event == "return":
            if self._frames and self._frames[-1][0] is frame:
                self._frames.pop()
        elif event in ("c_call", "c_return") and self._frames and self._frames[-1][1]:
            self._c_call(frame, event, arg, self._frames[-1][2])

    def _call(self, frame) -> None:
        code, watched = frame.f_code, _watched()
        if code in self.hooks:
            checkpointed = code.co_filename.endswith(_CHECKPOINT_FILE)
            raise VJPUsageError(_messages().hooked_message(_ARMED.output_name, checkpointed))
        if code is watched.apply:
            self._frames.append((frame, True, torch.is_grad_enabled()))
        elif code.co_name == "unpack_hook" and code.co_filename.endswith(_CHECKPOINT_FILE):
            self._frames.append((frame, False, True))
        elif code in watched.calls and self._frames and self._frames[-1][1]:
            self._trip()

    def _c_call(self, frame, event, arg, graphed: bool) -> None:
        """``graphed``: the backward runs in a ``create_graph`` pass (grad mode on already),
        where switching grad mode on (leaving a ``no_grad``, ``once_differentiable``) is none
        of a re-entry; a module, autograd or the engine still is."""
        if arg is torch._C._set_grad_enabled:
            if graphed:
                return
            if event == "c_return":
                if not self._was_enabled and torch.is_grad_enabled():
                    torch._C._set_grad_enabled(False)
                    self._trip()
            elif _enabling(frame):
                self._trip()
            else:
                self._was_enabled = torch.is_grad_enabled()
        elif event == "c_call" and getattr(arg, "__name__", "") == "run_backward" \
                and getattr(arg, "__self__", None) is _engine():
            self._trip()

    def _trip(self) -> None:
        frame = next(f for f, policed, _ in reversed(self._frames) if policed)
        cls = getattr(frame.f_locals.get("self"), "_forward_cls", None)
        self.tripped = getattr(cls, "__name__", "a custom autograd.Function")
        raise VJPUsageError(_messages().function_message(self.tripped))


def _restore_profile(previous) -> None:
    """``sys.setprofile(previous)``; a C-level profiler (cProfile's ``Profile``, which
    ``sys.getprofile`` returns but ``sys.setprofile`` cannot take back: it is no function)
    enabled again instead, with the options it was made with (%prun, cProfile.run)."""
    if previous is not None and not callable(previous) and callable(
            getattr(previous, "enable", None)):
        sys.setprofile(None)
        previous.enable()
    else:
        sys.setprofile(previous)


def _enabling(frame) -> bool:
    """Whether the ``torch._C._set_grad_enabled`` that ``frame`` calls turns grad mode on."""
    code = frame.f_code
    if code is torch.enable_grad.__enter__.__code__:
        return True
    if code is torch.set_grad_enabled.__init__.__code__:
        return bool(frame.f_locals.get("mode"))
    return False


def _engine():
    return torch.autograd.Variable._execution_engine


class _Watched(NamedTuple):
    apply: types.CodeType
    calls: frozenset


@functools.lru_cache(maxsize=1)
def _watched() -> _Watched:
    """The code objects the guard knows: ``BackwardCFunction.apply`` and the calls it stops."""
    functions = [torch.nn.Module.__call__, torch.nn.Module._call_impl,
                 getattr(torch.nn.Module, "_wrapped_call_impl", None), *_entry_points()]
    functions = [getattr(f, "__func__", f) for f in functions]
    calls = frozenset(f.__code__ for f in functions if isinstance(f, types.FunctionType))
    return _Watched(torch.autograd.function.BackwardCFunction.apply.__code__, calls)


__all__ = ["pass_guard", "reentrant_guard"]
