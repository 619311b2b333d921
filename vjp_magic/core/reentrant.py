"""Graphs whose backward would run the user's code again: refused before any pass.

A node of the graph is *reentrant* when its backward runs a forward again and calls autograd
itself: ``torch.utils.checkpoint(..., use_reentrant=True)`` (``CheckpointFunctionBackward``
re-runs the checkpointed block, its module hooks included, and calls
``torch.autograd.backward``), or a custom ``autograd.Function`` whose backward enters
``enable_grad``, calls a module, ``torch.autograd.grad`` / ``backward``, the engine or a
``torch.func`` transform. Every pass of the analysis through such a node would run the user's
Python again and fire their hooks. :func:`refuse_reentrant` raises the short usage error
before any pass: a checkpoint by its node type; a custom Function whose backward (or a plain
function it calls, a few levels down) names one of those entry points through its globals
(``torch.autograd.grad``, ``ag.grad``, ``grad`` imported by name), else by calling its
backward once on zero gradients under :func:`reentrant_guard`, which stops it before any of
those entry points starts (``ctx.fn(...)``, ``getattr``, a method, ``functools.partial``, a
module). An ordinary custom backward (``2 * x * g``) is left alone.
"""
from __future__ import annotations

import contextlib
import dis
import functools
import sys
import threading
import types
from typing import NamedTuple

import torch

from .errors import VJPUsageError
from .tagging import walk_nodes

_DEPTH = 3  # how far the plain functions a backward calls are read


def reentrant_nodes(output) -> tuple[str, ...]:
    """The names of the reentrant nodes on ``output``'s graph (none for a non-tensor or a
    tensor without history). A custom Function not judged by its code has its backward called
    once on zeros, stopped before it could re-enter autograd; no node hook fires."""
    return _judged(output)[0]


def _judged(output) -> tuple[tuple[str, ...], bool]:
    """The reentrant nodes' names, and whether the graph holds a user's custom Function."""
    if not isinstance(output, torch.Tensor) or output.grad_fn is None:
        return (), False
    nodes = [node for node in walk_nodes([output.grad_fn])
             if isinstance(node, torch.autograd.function.BackwardCFunction)]
    custom = any(not _pytorch_own(getattr(node, "_forward_cls", type)) for node in nodes)
    return tuple(dict.fromkeys(node.name() for node in nodes if _is_reentrant(node))), custom


def refuse_reentrant(output, output_name: str = "the output") -> None:
    """A :class:`VJPUsageError` where ``output``'s graph holds a reentrant node, before any
    pass on it: no forward runs again, no hook fires, no state changes."""
    found, _ARMED.custom = _judged(output)
    if not found:
        return
    if any(name == "CheckpointFunctionBackward" for name in found):
        raise VJPUsageError(checkpoint_message(output_name))
    raise VJPUsageError(function_message(found[0].removesuffix("Backward"), output_name))


def checkpoint_message(output_name: str) -> str:
    """The usage error for a reentrant ``torch.utils.checkpoint`` on the way."""
    return (f"{output_name} was computed through torch.utils.checkpoint with "
            "use_reentrant=True, which torch.autograd.grad (what vjp_magic differentiates "
            "with) does not support: pass use_reentrant=False to checkpoint.")


def function_message(function: str, output_name: str = "the output") -> str:
    """The usage error for a custom Function whose backward re-enters autograd."""
    return (f"{output_name} was computed through {function}, a custom autograd.Function whose "
            "backward calls autograd itself on a graph it rebuilds (as torch.utils.checkpoint "
            "with use_reentrant=True does), so each of vjp_magic's passes would run that code "
            "again: compute its backward from saved tensors without autograd, or checkpoint "
            "with use_reentrant=False.")


def _is_reentrant(node) -> bool:
    if not isinstance(node, torch.autograd.function.BackwardCFunction):
        return False
    cls = getattr(node, "_forward_cls", None)
    if not isinstance(cls, type):
        return False
    module = sys.modules.get("torch.utils.checkpoint")  # (not imported: none on any graph)
    checkpoint = getattr(module, "CheckpointFunction", None)
    if checkpoint is not None and issubclass(cls, checkpoint):
        return True
    if _pytorch_own(cls):  # (a module's hooks)
        return False
    if any(_calls_autograd(getattr(cls, name, None), _DEPTH, set())
           for name in ("backward", "vjp")):
        return True
    return _probe(node)


def _pytorch_own(cls: type) -> bool:
    """Whether a custom Function class is PyTorch's own, not the user's."""
    return (cls.__module__ or "").startswith("torch.")


def _probe(node) -> bool:
    """Whether ``node``'s backward, called once on zero gradients without grad mode, is
    stopped by :func:`reentrant_guard` (any other error: left to the passes)."""
    metadata = getattr(node, "_input_metadata", None)  # (older PyTorch: the passes' guard)
    if metadata is None or any(m.is_nested_tensor for m in metadata):
        return False
    zeros = [torch.zeros(tuple(m.shape), dtype=m.dtype, device=m.device) for m in metadata]
    guard = _Guard()
    try:
        with torch.no_grad(), guard:
            node.apply(*zeros)
    except Exception:  # noqa: BLE001 - the user's backward, on zeros: the passes judge it
        pass
    return guard.tripped is not None


def _calls_autograd(function, depth: int, seen: set) -> bool:
    """Whether ``function`` (unwrapped; PyTorch's own ``Function`` defaults excluded), or a
    plain function it reaches through its globals, names an autograd entry point: a chain
    ``a.b.c`` of its bytecode that starts at a global and resolves to one (however aliased)."""
    function = getattr(function, "__func__", function)
    while hasattr(function, "__wrapped__"):  # @once_differentiable, functools.wraps
        function = function.__wrapped__
    code = getattr(function, "__code__", None)
    if not isinstance(code, types.CodeType) or id(code) in seen \
            or getattr(function, "__module__", "") == "torch.autograd.function":
        return False
    seen.add(id(code))
    targets = _entry_points()
    for found in _globals_read(code, getattr(function, "__globals__", {})):
        if any(found is target for target in targets):
            return True
        if depth > 0 and isinstance(found, types.FunctionType) \
                and not (getattr(found, "__module__", "") or "").startswith("torch") \
                and _calls_autograd(found, depth - 1, seen):
            return True
    return False


def _globals_read(code: types.CodeType, scope: dict) -> list:
    """The objects ``code`` (and the code defined in it) reaches by a global name followed by
    attributes of modules and classes (``torch.autograd.grad``, ``ag.grad``, ``helper``),
    resolved now (the names are read once per code object)."""
    found = []
    for chain in _chains(code):
        current = scope.get(chain[0], _MISSING)
        for depth, name in enumerate(chain):
            if depth and isinstance(current, (types.ModuleType, type)):
                current = getattr(current, name, _MISSING)
            elif depth:
                break
            if current is _MISSING:
                break
            found.append(current)
    return found


@functools.lru_cache(maxsize=1024)
def _chains(code: types.CodeType) -> tuple[tuple[str, ...], ...]:
    """The chains of names ``global.attr.attr`` that ``code`` and the code in it load."""
    chains, stack = [], [code]
    while stack:
        now = stack.pop()
        stack.extend(c for c in now.co_consts if isinstance(c, types.CodeType))
        chain: list[str] = []
        for ins in dis.get_instructions(now):
            if ins.opname in ("LOAD_ATTR", "LOAD_METHOD") and chain:
                chain.append(ins.argval)
                continue
            chains.append(tuple(chain))
            chain = [ins.argval] if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME") else []
        chains.append(tuple(chain))
    return tuple(dict.fromkeys(c for c in chains if c))


_MISSING = object()
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
    custom = False  # the graph refuse_reentrant judged last holds a user's custom Function


_ARMED = _Armed()
_UNGUARDED = contextlib.nullcontext()


def pass_guard():
    """:func:`reentrant_guard` for a pass of the analysis where the graph
    :func:`refuse_reentrant` judged last (its entry point's) holds a user's custom Function
    (one whose backward escaped the check on zeros, say reentrant only on some gradients);
    nothing otherwise (no cost)."""
    return reentrant_guard() if _ARMED.custom else _UNGUARDED


class _Guard:
    """The profiler of :func:`reentrant_guard`: it polices the code running under a custom
    Function's backward (``BackwardCFunction.apply``) only, not a non-reentrant checkpoint's
    recomputation (its unpack hook) nor the analysis's own calls."""

    def __init__(self, on_this_thread: bool = False) -> None:
        self.tripped: str | None = None
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
            raise VJPUsageError(function_message(self.tripped))

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
        raise VJPUsageError(function_message(self.tripped))


_CHECKPOINT_FILE = "checkpoint.py"


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


__all__ = ["checkpoint_message", "function_message", "pass_guard", "reentrant_guard",
           "reentrant_nodes", "refuse_reentrant"]
