"""The pass guard: a ``sys.setprofile`` profiler policing the Python a pass of the analysis runs.

:func:`reentrant_guard` stops a custom Function's backward that re-enters autograd (enters
``enable_grad``, calls a module, ``torch.autograd.grad`` / ``backward``, the engine or a
``torch.func`` transform) with the usage error before that starts; :func:`pass_guard` arms it,
strict, for every pass of the analysis (moved here from :mod:`.reentrant`, which judges graphs
by reading them).

Whose code a strict pass may run is decided by what is called inside the engine's C
``run_backward``, never by who calls it. Outside a region (below) a Python frame entered there
runs only if its code is

- vjp_magic's (the analysis's own node hooks), or PyTorch's (its hook machinery, saved-tensor
  hooks, subclass dispatch, decomposition kernels: the engine's own Python), or
- the standard library's, called by such Python (PyTorch's hook machinery calling
  ``functools``, ``typing``, ``enum``): never as the engine's first call, since the engine
  calls the standard library only as a hook the user registered (``h.register_hook(q.put)``,
  a ``functools.singledispatch`` or ``contextlib`` wrapper): that stops the pass unrun; nor
  as the callable PyTorch's hook machinery holds and calls as the engine would (a module
  backward hook ``m.register_full_backward_pre_hook(q.put)``, a multi-grad hook), while its
  calls of the standard library by name (``typing.cast``) run.

Every other frame is the user's (their file, another package's) and stops the pass before its
first line runs, however it was reached (through the standard library, through PyTorch's
module-hook machinery). Regions are the code whose callees are the user's by design or the
interpreter's, not a hook's:

- a custom Function's backward (``BackwardCFunction.apply``, ``apply_boxed``): the user's code
  by design (a compiled model's AOT backward too), run
  and policed for re-entry; a non-reentrant checkpoint's recomputation (its ``unpack_hook``);
- an import a pass starts (the import system's finders, the module's body);
- a warning, shown from C (which makes ``warnings.WarningMessage`` and calls
  ``warnings._showwarnmsg``: the user's ``showwarning``, a notebook's stream; anomaly mode's
  forward traceback is one) or from PyTorch's Python, and a record PyTorch's Python logs
  (``logging.Logger.handle``: the handlers), as a plain run shows them;
- what the interpreter runs at a free or a collection, wherever it falls: a ``__del__``
  taking ``self`` only (its object's own finaliser: a hook named so is called with ``g``),
  a weakref callback, a ``gc.callbacks`` entry, a signal handler, an ``sys.unraisablehook``
  — each told by the arguments it is called with, which no hook of the graph (always called
  with gradients) is. A plain run runs them too, at its own frees; they are no code run for
  the analysis, and refusing them would stop a pass at random.

Code compiled from a string (``<string>``) is its maker's: an ``eval`` running now its
caller's (PyTorch's, in a nested tensor's dispatch), a function made so its module's, when
its globals are that module's namespace (``exec(src, {'__name__': 'torch...'})`` is not).
A hook written in C (a builtin: ``list.append``) makes no Python frame and is not seen; a
PyTorch function registered as a hook (``functools.partial(torch.nn.init.zeros_)``) counts as
PyTorch's. The profiler it sets is the thread's for the C call only (:func:`guarded`:
``torch.autograd.grad``'s Python on the way in makes no event), the one before (None, a Python
function, cProfile's C profiler) put back however the pass ends; an object that is no function
is never installed in its place (the profiler would call it at the next event).
"""
from __future__ import annotations

import functools
import inspect
import logging
import os
import signal
import sys
import sysconfig
import threading
import types
import warnings
import weakref
from typing import NamedTuple

import torch

from .backward_writes import check as check_writes
from .errors import AFTER_YOUR_CODE, VJPUsageError, where_advice
from .origin import PACKAGE_DIR, TORCH_DIR, torchs

_CHECKPOINT_FILE = "checkpoint.py"


def _code(function) -> types.CodeType | None:
    return getattr(getattr(function, "__func__", function), "__code__", None)


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
    replay: str | None = None  # how the user, where they are, has a replay made (advice)


_ARMED = _Armed()


def armed_advice(fix: str) -> str:
    """:func:`~.errors.where_advice` for the graph armed last (:func:`pass_guard`'s)."""
    return where_advice(fix, _ARMED.custom, _ARMED.replay)


class _GuardedEngine:
    """Autograd's engine for one :func:`guarded` call: each pass handed to it on the calling
    thread runs under the call's :func:`pass_guard`, set for the engine's C call only (the
    Python on the way in, ``torch.autograd.grad``'s checks, makes no profile event); a pass
    inside one (a custom backward's, policed by it), another thread's, or any after the call
    (``guard`` None: a copy of it left by threads swapping out of order) go straight on."""

    __slots__ = ("engine", "guard", "owner")

    def __init__(self, engine, guard) -> None:
        self.engine, self.guard, self.owner = engine, guard, threading.get_ident()

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def run_backward(self, *args, **kwargs):
        guard = self.guard
        if guard is None or guard.active or threading.get_ident() != self.owner:
            return self.engine.run_backward(*args, **kwargs)
        return guard.run_backward(self.engine, args, kwargs)


_SWAPPING = threading.Lock()


def guarded(function, *args, **kwargs):
    """``function(*args, **kwargs)`` (``torch.autograd.grad``) with each pass it hands to
    autograd's engine run under one :func:`pass_guard`, armed when the pass starts in the
    engine's C call and put away when that returns: as strict as the guard around the whole
    call, for a few profile events where ``autograd.grad``'s Python made some 80. The engine
    object is swapped for the call (:class:`_GuardedEngine`) and put back, whatever happens."""
    engine = _GuardedEngine(None, pass_guard())
    with _SWAPPING:
        engine.engine = _ENGINE_OWNER._execution_engine
        _ENGINE_OWNER._execution_engine = engine
    try:
        return function(*args, **kwargs)
    finally:
        engine.guard = None
        with _SWAPPING:
            if _ENGINE_OWNER._execution_engine is engine:
                _ENGINE_OWNER._execution_engine = _live(engine.engine)


def _live(engine):
    """``engine`` past the copies of :class:`_GuardedEngine` whose call is over."""
    while isinstance(engine, _GuardedEngine) and engine.guard is None:
        engine = engine.engine
    return engine


def pass_guard():
    """:func:`reentrant_guard` for every pass of the analysis, strict: the user's Python that
    autograd's engine would run inside its ``run_backward`` (the C call that runs the pass) —
    a tensor hook, node pre/post hook, module backward hook, multi-grad or saved-tensor unpack
    hook, or the user's code behind a standard library's callable registered as one (only
    the user's own graph, where no replay stands for it, carries one) — stops the pass with
    the usage error as it enters it, before its first line runs (:func:`foreign_message`;
    whose code is which: the module docstring). A user's custom Function's backward runs as
    ever, policed for re-entry; so do an import, a warning shown and what the interpreter runs
    at a free. Python that PyTorch's Python calls on the way to the engine (a
    ``__torch_function__``, a wrapper of the engine) is no hook. The user's unpack hooks on
    the graph :func:`refuse_reentrant` judged last get their own words
    (:func:`hooked_message`). A hook written in C (a builtin) is not seen."""
    guard = reentrant_guard()
    guard.hooks, guard.strict = _ARMED.hooks, True
    return guard


class _Guard:
    """The profiler of :func:`reentrant_guard`: it polices the code running under a custom
    Function's backward (``BackwardCFunction.apply``, ``apply_boxed``) only, not a
    non-reentrant checkpoint's recomputation (its unpack hook) nor the analysis's own calls."""

    def __init__(self, on_this_thread: bool = False) -> None:
        self.tripped: str | None = None
        self.hooks: frozenset = frozenset()  # the unpack hooks' code that stops a pass
        self.strict = False  # the user's code the engine calls (a hook) stops a pass
        self.active = False  # entered (its profiler the thread's), not yet left
        self._running: list = []  # the frames calling the engine's run_backward (C) now
        self._on_this_thread = on_this_thread and _THREADS_SETTABLE
        self._threads = None  # multithreaded backward, to restore (CUDA's run on this thread)
        # (frame, policed, grad mode at its start) of the backwards and unpack hooks running
        self._frames: list = []
        self._was_enabled = True
        self._previous = None
        # the profile object while it is installed, held here too (a profiler that raises is
        # dropped by the interpreter); None otherwise: a bound method held by its own object is
        # a cycle, each pass's guard then garbage for the collector (some 4 us a pass)
        self._profiler = None

    def __enter__(self) -> _Guard:
        if self._on_this_thread:
            self._threads = torch._C._is_multithreading_enabled()
            torch._C._set_multithreading_enabled(False)
        self._previous = sys.getprofile()
        self._profiler = self._watch
        sys.setprofile(self._profiler)
        self.active = True
        return self

    def __exit__(self, kind, error, trace) -> None:
        self.active = False
        _restore_profile(self._previous)
        self._profiler = None
        if self._threads is not None:
            torch._C._set_multithreading_enabled(self._threads)
        if self.tripped is not None and kind is None:  # the backward swallowed the error
            raise VJPUsageError(_messages().function_message(self.tripped))
        if kind is None or issubclass(kind, RuntimeError):
            check_writes()  # what a user's backward wrote in place: put back, and refused
        refusal = users_error(error) if self.strict and error is not None else None
        if refusal is not None:
            raise refusal from None

    def run_backward(self, engine, args, kwargs):
        """``engine.run_backward(*args, **kwargs)`` under this guard: ``with self:`` inlined,
        so that the profiler sees the engine's call and three events more, not six."""
        threads = None
        if self._on_this_thread:
            threads = torch._C._is_multithreading_enabled()
            torch._C._set_multithreading_enabled(False)
        previous, profiler = sys.getprofile(), self._watch  # (held for the pass: no cycle)
        sys.setprofile(profiler)
        self.active = True
        try:
            result = engine.run_backward(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - re-raised, or the refusal for it
            if isinstance(error, RuntimeError):
                check_writes()  # a write by the user's backward: its own words, not autograd's
            refusal = users_error(error) if self.strict else None
            if refusal is None:
                raise
            raise refusal from None
        finally:
            self.active = False
            if previous is None or callable(previous):
                sys.setprofile(previous)
            else:
                _restore_profile(previous)
            if threads is not None:
                torch._C._set_multithreading_enabled(threads)
        if self.tripped is not None:  # the backward swallowed the error
            raise VJPUsageError(_messages().function_message(self.tripped))
        check_writes()  # what a user's backward wrote in place: put back, and refused
        return result

    def _watch(self, frame, event, arg) -> None:
        if event == "call":
            # (outside the engine and any backward: PyTorch's Python on its way in, passed
            # at once, save a custom Function's backward called directly, as the probe does)
            if self._running or self._frames or frame.f_code in _APPLIES:
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
            raise VJPUsageError(_messages().hooked_message(
                _ARMED.output_name, checkpointed, _ARMED.custom, _ARMED.replay))
        if code in _APPLIES:
            self._frames.append((frame, True, torch.is_grad_enabled()))
        elif code.co_name == "unpack_hook" and code.co_filename.endswith(_CHECKPOINT_FILE):
            self._frames.append((frame, False, True))
        elif code in watched.calls and self._frames and self._frames[-1][1]:
            self._trip()
        elif code.co_filename in _SERVICES:  # (an import, a warning: their callees no hook)
            self._frames.append((frame, False, True))
        elif self.strict and self._running and not self._frames:
            self._strict(frame, code)

    def _strict(self, frame, code) -> None:
        """Lets ``frame``, entered inside the engine's ``run_backward`` outside any region, run
        (the module docstring's rule), or stops the pass before its first line: the user's."""
        kind = _KINDS.get(code.co_filename)
        if kind is None:
            kind = _KINDS[code.co_filename] = _kind(code.co_filename)
        direct = frame.f_back is self._running[-1]  # the engine's first call, from C
        if kind is _GENERATED:
            kind = _generated(frame, direct)
        if kind is _MACHINERY:
            return
        if kind is _STANDARD and not direct and not _dispatched(frame):
            if code is _LOG_HANDLE:  # (a record PyTorch's Python logs: its handlers run)
                self._frames.append((frame, False, True))
            return
        if _interpreters(frame, code):  # a finalizer, a gc callback, a signal handler
            self._frames.append((frame, False, True))
            return
        raise VJPUsageError(foreign_message(_named(frame, kind), _ARMED.output_name))

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


def stopped_call(error: BaseException):
    """The code of the call the engine made (a hook, from C) in which the guard raised
    ``error``, from its traceback: the frame :meth:`_Guard.run_backward` called into; None
    where there is none."""
    tb = error.__traceback__
    while tb is not None:
        back = tb.tb_frame.f_back
        if back is not None and back.f_code is _RUN_BACKWARD:
            return tb.tb_frame.f_code
        tb = tb.tb_next
    return None


_RUN_BACKWARD = _Guard.run_backward.__code__


def users_error(error: BaseException) -> VJPUsageError | None:
    """The refusal for ``error`` where a user's custom Function's backward raised it when a
    pass of the analysis called it (its frame below the engine's ``BackwardCFunction.apply``
    in the traceback); None for any other error: one not raised in a backward, a usage
    error, running out of memory, or one of autograd's own (a second pass through a freed
    graph, an in-place change: judged where they are), nor torch's own Function refusing a
    double backward (torch.compile's ``CompiledFunctionBackward``: the paths that take a
    double backward as a shortcut take the one that needs none)."""
    from .torch_api import no_double_backward, torch_error  # (it imports this module)
    if not isinstance(error, Exception) or isinstance(error, VJPUsageError) \
            or torch_error(error) is not None or "out of memory" in str(error):
        return None
    frame, tb = None, error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code in _APPLIES and tb.tb_next is not None:
            frame = tb.tb_frame
        tb = tb.tb_next
    if frame is None:
        return None
    cls = getattr(frame.f_locals.get("self"), "_forward_cls", None)
    if no_double_backward(error) and str(getattr(cls, "__module__", "")).startswith("torch."):
        return None
    name = getattr(cls, "__name__", None) or "a custom autograd.Function"
    return VJPUsageError(raised_message(name, error, frame.f_locals.get("args", ())))


def raised_message(name: str, error: BaseException, gradients) -> str:
    """The usage error for a user's backward (of Function ``name``) that raised ``error``
    when the analysis called it with ``gradients``."""
    tensors = [g for g in gradients if isinstance(g, torch.Tensor)]
    shapes = ", ".join(str(tuple(g.shape)) for g in tensors) or "none"
    try:
        zeros = any(bool((g == 0).any()) for g in tensors if g.numel() and not g.is_sparse)
    except Exception:  # noqa: BLE001 - a gradient that cannot be read here: not said
        zeros = False
    held = " (holding zeros)" if zeros else ""
    return (f"{name}'s backward raised {type(error).__name__}({str(error)!r}) when vjp_magic "
            f"called it with gradients of shape {shapes}{held}: a plain run of the cell calls "
            f"no backward, vjp_magic calls it in each of its passes, with gradients of its own. "
            f"The cell ran as it would without %%vjp, and no derivative "
            f"is shown. Make {name}'s backward accept any gradient, then run it again.")


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


# What the engine calls for a custom Function's backward: apply, or apply_boxed (a Function
# with boxed_grads_call: a compiled model's AOT backward), each the user's backward by design
_APPLIES = frozenset(_code(getattr(torch.autograd.function.BackwardCFunction, name, None))
                     for name in ("apply", "apply_boxed")) - {None}
_ENGINE_OWNER = torch.autograd.Variable  # its _execution_engine: what grad and backward call
_ENGINE_TYPE = type(_ENGINE_OWNER._execution_engine)  # torch._C._EngineBase
_THREADS_SETTABLE = hasattr(torch._C, "_set_multithreading_enabled")


def _runs_a_pass(arg) -> bool:
    """Whether the builtin of a ``c_call`` (``c_return``, ``c_exception``) event is the
    engine's own ``run_backward``: the C call inside which the engine calls hooks and custom
    backwards, not a Python wrapper of the engine that PyTorch's Python calls on its way in
    (the tests' pass counter, run/guard's)."""
    return type(getattr(arg, "__self__", None)) is _ENGINE_TYPE \
        and getattr(arg, "__name__", "") == "run_backward"


# Whose code a frame runs, by its file: PyTorch's or vjp_magic's (each folder with its
# separator: site-packages/torch is no prefix of torchvision's files), the standard library's
# (frozen modules too; an installed package under it, in site-packages, is not), the user's.
_MACHINERY, _STANDARD, _USERS = "machinery", "standard", "users"
_GENERATED = "generated"  # compiled from a string ("<string>"): its maker's, see _generated
_OURS = (TORCH_DIR, PACKAGE_DIR)  # (origin.py)
_STDLIB = tuple(dict.fromkeys(os.path.realpath(sysconfig.get_paths()[k]) + os.sep
                              for k in ("stdlib", "platstdlib")))
_KINDS: dict = {}  # file name -> its kind (a pass asks for each file once)


def _kind(filename: str) -> str:
    """Whose code of ``filename`` is: :data:`_MACHINERY`, :data:`_STANDARD` or :data:`_USERS`."""
    if filename.startswith(_OURS):
        return _MACHINERY
    if filename.startswith("<") and not filename.startswith("<frozen "):
        return _GENERATED
    if "-packages" + os.sep in filename:  # (site-packages sits inside the standard library's)
        return _USERS
    if filename.startswith("<frozen ") or filename.startswith(_STDLIB) \
            or os.path.realpath(filename).startswith(_STDLIB):
        return _STANDARD
    return _USERS


# The interpreter's services, whose callees are no hook: an import a pass starts (the import
# system's finders, the module's body), a warning (C makes its WarningMessage and calls
# _showwarnmsg: the user's showwarning, a notebook's stream, as a plain run shows it)
_SERVICES = frozenset({"<frozen importlib._bootstrap>", "<frozen importlib._bootstrap_external>",
                       _code(warnings.WarningMessage.__init__).co_filename})
_LOG_HANDLE = _code(logging.Logger.handle)
_SIGNAL_FRAME = (types.FrameType, type(None))


def _generated(frame, direct: bool) -> str:
    """Whose code compiled from a string is: an ``exec``/``eval`` running now (a ``<module>``
    body: PyTorch's ``eval`` of a type's name in a nested tensor's dispatch) is its caller's,
    unless the engine is that caller; a function made so (a dataclass's method, a hook
    ``exec``'d in a REPL) is its module's, named by its globals (``__main__``, or none known:
    the user's), a namedtuple's ``__new__`` the standard library's."""
    caller = frame.f_back
    if frame.f_code.co_name == "<module>" and not direct and caller is not None:
        filename = caller.f_code.co_filename
    else:
        name = frame.f_globals.get("__name__")
        if isinstance(name, str) and name.startswith("namedtuple_") \
                and frame.f_globals.get("_tuple_new") is tuple.__new__ \
                and frame.f_globals.get("__builtins__") == {}:
            return _STANDARD  # (collections.namedtuple's __new__: a tuple made, nothing more)
        module = sys.modules.get(name) if isinstance(name, str) and name != "__main__" else None
        # (only globals that ARE the module's namespace make it the module's: exec(src,
        # {'__name__': 'torch.nn.functional'}) claims a name, it is no module's code)
        mine = module is not None and getattr(module, "__dict__", None) is frame.f_globals
        filename = getattr(module, "__file__", None) if mine else None
    kind = _kind(filename) if isinstance(filename, str) else _USERS
    return _USERS if kind is _GENERATED else kind


def _dispatched(frame) -> bool:
    """Whether ``frame`` (the standard library's) is a hook PyTorch's hook machinery calls as
    the engine would: its caller is PyTorch's Python holding the callable it entered (a local
    of that frame, or an attribute of its ``self``: a module backward hook's ``user_hooks``,
    a multi-grad hook's ``fn``, a ``_WrappedHook``'s ``hook``; a ``functools.partial`` of it
    too): ``m.register_full_backward_pre_hook(q.put)``, ``register_multi_grad_hook(ts,
    logger.warning)``. PyTorch's Python calling the standard library by name (``typing.cast``,
    ``warnings.warn``) is no hook."""
    caller = frame.f_back
    if caller is None or not torchs(caller.f_code.co_filename):
        return False
    return frame.f_code in _held(caller)


def _held(frame) -> set:
    """The code of the callables ``frame`` holds: its locals', its ``self``'s attributes',
    one level into a list, tuple or dict of them."""
    values = list(frame.f_locals.values())
    owner = frame.f_locals.get("self")
    attributes = getattr(owner, "__dict__", None)
    if isinstance(attributes, dict):
        values += list(attributes.values())
    found: set = set()
    for value in values:
        if isinstance(value, dict):
            items = list(value.values())
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            items = [value]
        for item in items:
            _codes(item, found)
    return found


def _codes(value, found: set) -> None:
    """Adds the code ``value`` runs when called (a function's, a bound method's, its class's
    ``__call__``), through ``functools.partial``'s."""
    for _ in range(8):
        try:
            code = _code(value)
            call = _code(type(value).__call__) if callable(value) else None
        except Exception:  # noqa: BLE001 - a user's object whose __getattr__ raises
            return
        for each in (code, call):
            if isinstance(each, types.CodeType):
                found.add(each)
        if not isinstance(value, functools.partial):
            return
        value = value.func


def _arguments(frame, code) -> list:
    """The positional arguments ``frame`` was called with (``self`` first, ``*args`` too)."""
    values = frame.f_locals
    found = [values.get(name) for name in code.co_varnames[:code.co_argcount]]
    if code.co_flags & inspect.CO_VARARGS:
        found += list(values.get(code.co_varnames[code.co_argcount + code.co_kwonlyargcount],
                                 ()))
    return found


def _gradients(value) -> bool:
    return isinstance(value, torch.Tensor) or isinstance(value, (tuple, list)) and any(
        isinstance(v, torch.Tensor) for v in value)


_RESUMABLE = inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR


def resumed(frame, code) -> bool:
    """Whether ``frame`` is a generator's (or coroutine's) resumed, not started: it stands at
    a ``yield`` in its body, past its first line. The engine never resumes one (a generator
    function called as a hook makes an object and runs no line), so outside a region this is
    a generator closed at a free, as the interpreter does (its ``finally``: a plain run's)."""
    return bool(code.co_flags & _RESUMABLE) and frame.f_lineno != code.co_firstlineno


def _interpreters(frame, code) -> bool:
    """Whether ``frame`` is a call the interpreter makes at a free or a collection, told by
    its arguments: a ``__del__`` taking ``self`` only, a weakref callback (its weakref), a
    ``gc.callbacks`` entry ("start"/"stop" and the counts), a signal handler (the signal and
    a frame), ``sys.unraisablehook``'s (its record); none with a gradient, which every hook
    of the graph is called with (its positional arguments, keyword ones never); or a
    generator resumed to be closed (:func:`resumed`)."""
    if resumed(frame, code):
        return True
    args = _arguments(frame, code)
    if code.co_name == "__del__":  # (its object's own finaliser: a hook so named gets g)
        return len(args) == 1 and not code.co_flags & inspect.CO_VARARGS \
            and _code(getattr(type(args[0]), "__del__", None)) is code
    if not args or any(_gradients(a) for a in args):
        return False
    last = args[-1]
    if isinstance(last, weakref.ReferenceType) or type(last).__name__ == "UnraisableHookArgs":
        return True
    if len(args) < 2:
        return False
    first = args[-2]
    return (first in ("start", "stop") and isinstance(last, dict) and "generation" in last) \
        or (type(first) is int or isinstance(first, signal.Signals)) \
        and isinstance(last, _SIGNAL_FRAME)


def _named(frame, kind: str) -> types.CodeType:
    """The code to name in the refusal: the user's function that a standard library's
    wrapper (a decorator's, ``singledispatch``'s) holds, where it holds one; else the frame's."""
    if kind is _STANDARD:
        for value in frame.f_locals.values():
            code = _code(value)
            if isinstance(code, types.CodeType) and _kind(code.co_filename) is _USERS:
                return code
    return frame.f_code


def foreign_message(code: types.CodeType, output_name: str = "the output") -> str:
    """The usage error for a pass that would call the user's hook (``code``) on their graph."""
    name = getattr(code, "co_qualname", code.co_name)
    where = f"{os.path.basename(code.co_filename)}:{code.co_firstlineno}"
    return (f"{output_name} is differentiated on its own graph, and each backward pass "
            f"through it would call your hook {name} ({where}); {AFTER_YOUR_CODE}, so the "
            f"pass stopped before it started. {armed_advice('remove the hook')}.")


class _Watched(NamedTuple):
    calls: frozenset


@functools.lru_cache(maxsize=1)
def _watched() -> _Watched:
    """The code objects of the calls the guard stops in a custom backward."""
    functions = [torch.nn.Module.__call__, torch.nn.Module._call_impl,
                 getattr(torch.nn.Module, "_wrapped_call_impl", None), *_entry_points()]
    functions = [getattr(f, "__func__", f) for f in functions]
    calls = frozenset(f.__code__ for f in functions if isinstance(f, types.FunctionType))
    return _Watched(calls)


__all__ = ["armed_advice", "foreign_message", "guarded", "pass_guard", "raised_message",
           "reentrant_guard", "stopped_call", "users_error"]
