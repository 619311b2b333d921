"""The pass guard: a ``sys.setprofile`` profiler policing the Python a pass of the analysis runs.

:func:`reentrant_guard` stops a custom Function's backward that re-enters autograd (enters
``enable_grad``, calls a module, ``torch.autograd.grad`` / ``backward``, the engine or a
``torch.func`` transform) with the usage error before that starts; :func:`pass_guard` arms it,
strict, for every pass of the analysis: Python of the user's that the engine calls from inside
its ``run_backward`` C call (a hook of any kind) stops the pass before its first line runs
(moved here from :mod:`.reentrant`, which judges graphs by reading them).

The profiler it sets is the thread's for the pass only: the one before (None, a Python
function, cProfile's C profiler) is put back however the pass ends, and an object that is no
function is never installed in its place (the profiler would call it at the next event). Its
cost: one Python call per profile event; PyTorch's Python on the way to the engine is passed
at once (about 80 events, some 20-40 us, for a pass through ``torch.autograd.grad``; 7 for
:func:`.derivatives._grad`'s direct engine call).
"""
from __future__ import annotations

import functools
import os
import sys
import sysconfig
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


def pass_guard():
    """:func:`reentrant_guard` for every pass of the analysis, strict: Python that autograd's
    engine calls from inside its ``run_backward`` (the C call that runs the pass) and that is
    neither PyTorch's, the standard library's nor vjp_magic's (the user's tensor hook, node
    pre/post hook, module backward hook, post-accumulate or multi-grad hook, saved-tensor
    unpack hook: only the user's own graph, where no replay stands for it, carries one) stops
    the pass with the usage error as it enters it, before its first line runs
    (:func:`foreign_message`). A user's custom Function's backward runs as ever, policed for
    re-entry, and so does the code an import started in a pass runs; Python that PyTorch's
    Python calls on the way to the engine (a ``__torch_function__``, a wrapper of the engine)
    is no hook. The user's unpack hooks on the graph :func:`refuse_reentrant` judged last get
    their own words (:func:`hooked_message`). A hook written in C (a builtin) is not seen."""
    guard = reentrant_guard()
    guard.hooks, guard.strict = _ARMED.hooks, True
    return guard


class _Guard:
    """The profiler of :func:`reentrant_guard`: it polices the code running under a custom
    Function's backward (``BackwardCFunction.apply``) only, not a non-reentrant checkpoint's
    recomputation (its unpack hook) nor the analysis's own calls."""

    def __init__(self, on_this_thread: bool = False) -> None:
        self.tripped: str | None = None
        self.hooks: frozenset = frozenset()  # the unpack hooks' code that stops a pass
        self.strict = False  # the user's code the engine calls (a hook) stops a pass
        self._running: list = []  # the frames calling the engine's run_backward (C) now
        self._on_this_thread = on_this_thread and hasattr(torch._C, "_set_multithreading_enabled")
        self._threads = None  # multithreaded backward, to restore (CUDA's run on this thread)
        # (frame, policed, grad mode at its start) of the backwards and unpack hooks running
        self._frames: list = []
        self._was_enabled = True
        self._previous = None
        self._profiler = self._watch  # (held here too: the profile object outlives any pass)

    def __enter__(self) -> _Guard:
        if self._on_this_thread:
            self._threads = torch._C._is_multithreading_enabled()
            torch._C._set_multithreading_enabled(False)
        self._previous = sys.getprofile()
        sys.setprofile(self._profiler)
        return self

    def __exit__(self, kind, error, trace) -> None:
        _restore_profile(self._previous)
        if self._threads is not None:
            torch._C._set_multithreading_enabled(self._threads)
        if self.tripped is not None and kind is None:  # the backward swallowed the error
            raise VJPUsageError(_messages().function_message(self.tripped))

    def _watch(self, frame, event, arg) -> None:
        if event == "call":
            # (outside the engine and any backward: PyTorch's Python on its way in, passed
            # at once, save a custom Function's backward called directly, as the probe does)
            if self._running or self._frames or frame.f_code is _APPLY:
                self._call(frame)
        elif event == "return":
            if self._frames and self._frames[-1][0] is frame:
                self._frames.pop()
        elif type(getattr(arg, "__self__", None)) is _ENGINE_TYPE and _runs_a_pass(arg):
            # (c_call, c_return, c_exception of the engine's C call)
            if self._frames and self._frames[-1][1] and event == "c_call":
                self._trip()  # a custom backward calling the engine
            if event == "c_call":
                self._running.append(frame)
            elif self._running:
                self._running.pop()
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
        elif code is _IMPORTING:  # (an import in a pass: the finders' code is no hook)
            self._frames.append((frame, False, True))
        elif self.strict and self._running and not self._frames \
                and not code.co_filename.startswith(_OURS) and _foreign(code.co_filename) \
                and _called_by_us(frame.f_back, self._running[-1]):
            raise VJPUsageError(foreign_message(code, _ARMED.output_name))

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

    def _trip(self) -> None:
        frame = next(f for f, policed, _ in reversed(self._frames) if policed)
        cls = getattr(frame.f_locals.get("self"), "_forward_cls", None)
        self.tripped = getattr(cls, "__name__", "a custom autograd.Function")
        raise VJPUsageError(_messages().function_message(self.tripped))


def _restore_profile(previous) -> None:
    """``sys.setprofile(previous)``; a C-level profiler (cProfile's ``Profile``, which
    ``sys.getprofile`` returns but ``sys.setprofile`` cannot take back: it is no function)
    enabled again instead, with the options it was made with (%prun, cProfile.run); any other
    object that is no function is not installed (None instead)."""
    if previous is None or callable(previous):
        sys.setprofile(previous)
    else:  # (never installed as a function: one the profiler would call at the next event)
        sys.setprofile(None)
        if callable(getattr(previous, "enable", None)):
            previous.enable()


def _enabling(frame) -> bool:
    """Whether the ``torch._C._set_grad_enabled`` that ``frame`` calls turns grad mode on."""
    code = frame.f_code
    if code is torch.enable_grad.__enter__.__code__:
        return True
    if code is torch.set_grad_enabled.__init__.__code__:
        return bool(frame.f_locals.get("mode"))
    return False


_APPLY = torch.autograd.function.BackwardCFunction.apply.__code__
_ENGINE_TYPE = type(torch.autograd.Variable._execution_engine)  # torch._C._EngineBase


def _runs_a_pass(arg) -> bool:
    """Whether the builtin of a ``c_call`` (``c_return``, ``c_exception``) event is the
    engine's own ``run_backward``: the C call inside which the engine calls hooks and custom
    backwards, not a Python wrapper of the engine that PyTorch's Python calls on its way in
    (the tests' pass counter, run/guard's)."""
    return type(getattr(arg, "__self__", None)) is _ENGINE_TYPE \
        and getattr(arg, "__name__", "") == "run_backward"


_TORCH_DIR = os.path.dirname(torch.__file__)
# Code a strict pass may enter: PyTorch's, vjp_magic's, the frozen standard modules'
# (each folder with its separator: site-packages/torch is no prefix of torchvision's files)
_OURS = (_TORCH_DIR + os.sep,
         os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep, "<frozen ")
# An import a pass starts (the import system's finders and the module's body are no hook)
_IMPORTING = getattr(getattr(sys.modules.get("_frozen_importlib"), "_find_and_load", None),
                     "__code__", None)
_STDLIB = tuple(dict.fromkeys(os.path.realpath(sysconfig.get_paths()[k]) + os.sep
                              for k in ("stdlib", "platstdlib")))
# The standard library's Python a hook may be wrapped in (a decorator's wrapper): passed through
_TRANSPARENT = tuple(os.sep + name for name in ("functools.py", "contextlib.py"))


def _foreign(filename: str) -> bool:
    """Whether code of ``filename`` is the user's: not the standard library's (an installed
    package's, under site-packages, is the user's too)."""
    return not (filename.startswith(_STDLIB) or os.path.realpath(filename).startswith(
        _STDLIB)) or "-packages" + os.sep in filename


def _called_by_us(caller, engine_caller) -> bool:
    """Whether the user's code entered from ``caller`` (a frame, or None) is called as a hook:
    by the engine (``caller`` is ``engine_caller``, the frame that called its C
    ``run_backward``: PyTorch's, vjp_magic's or a wrapper of the engine) or by PyTorch's Python
    around a hook (a module's backward hooks, a multi-grad hook), through the standard
    library's decorator wrappers; not by the standard library itself (a warning shown in a
    pass writing to a notebook's output stream, a log record)."""
    while caller is not None and caller is not engine_caller \
            and caller.f_code.co_filename.endswith(_TRANSPARENT):
        caller = caller.f_back
    return caller is None or caller is engine_caller or caller.f_code.co_filename.startswith(
        _OURS)


def foreign_message(code: types.CodeType, output_name: str = "the output") -> str:
    """The usage error for a pass that would call the user's hook (``code``) on their graph."""
    name = getattr(code, "co_qualname", code.co_name)
    where = f"{os.path.basename(code.co_filename)}:{code.co_firstlineno}"
    return (f"{output_name} is differentiated on its own graph (nothing vjp_magic recorded "
            f"stands for it), and each backward pass through it would call your hook {name} "
            f"({where}); vjp_magic runs none of your code after it ran, so the pass stopped "
            "before it started. Pass a function computing it, so it is recorded and a replay "
            "without hooks differentiated (vjp_magic.differentiate(lambda: f(x), x), or a "
            "%%vjp cell), or remove the hook.")


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


__all__ = ["foreign_message", "pass_guard", "reentrant_guard"]
