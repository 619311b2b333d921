"""Autograd's global modes the user set for their own code, off for the analysis' own work.

A notebook may leave ``torch.autograd.set_detect_anomaly(True)`` on (debugging NaNs) or enter
``torch.autograd.graph.saved_tensors_hooks`` / ``save_on_cpu`` around its cells. The cell runs
under them as it would without vjp_magic; the analysis' own replays and passes must not:
anomaly mode raises on a NaN that a probe's 0 times an infinite derivative makes (the
derivative shown is inf, as the cell's own backward gives it), and the user's pack/unpack
hooks would count, move or change the analysis' saved tensors. :func:`quiet_autograd` turns
both off and puts them back as they were, whatever happens inside. Likewise grad mode: called
inside ``torch.no_grad()`` / ``inference_mode()`` (or after ``torch.set_grad_enabled(False)``),
the analysis' own passes still build their graphs (a Hessian's ``create_graph`` pass read
all zeros without one). And autocast: called inside ``torch.autocast(...)`` on a float32
graph, the analysis' passes would run in bfloat16 (d(x @ M)/dx read 1 for 1.001).

Anomaly mode is one flag for the whole process (the others are per thread): analyses that
overlap in two threads share one saving of it, made by the first to enter and put back by
the last to leave.

A tensor subclass's ``__torch_function__`` is the user's code too (a logging tensor, a units
tensor): the cell ran it, the analysis does not (:func:`no_subclass_code`): inside
:func:`quiet_autograd` every torch call and property read on such a tensor runs torch's own
operation, as on a plain tensor. A ``__torch_dispatch__`` (a wrapper subclass: DTensor, a
quantised or logging tensor) runs below autograd, in every backward pass, and cannot be
turned off: :func:`user_subclass` names it, for the entry points to refuse.

The random generators: the analysis calls the user's custom Function backwards on the cell's
graph (every pass, probe, verification, gradcheck), and such a backward may draw random numbers
(a noisy straight-through estimator). :func:`generators_kept` saves every generator such code
can advance (torch's CPU generator, each CUDA device's where CUDA is initialised, Python's
``random`` and numpy's global ``RandomState``, the last by its bytes, :mod:`.numpy_rng`: each
is cheap to save) when the analysis starts,
after the user's code ran, and puts them back when it ends, error or not: after a call the
generators are as a plain run leaves them. (The replays' own ``fork_rng`` make each replay
draw what the cell drew; this keeps the whole analysis.)
"""
from __future__ import annotations

import contextlib
import functools
import random
import sys
import threading
import types

import torch
from torch.utils._device import DeviceContext, _device_constructors

from . import numpy_rng
from .backward_writes import writes_kept
from .modes import modes_aside
from .origin import called_by_us

_hooks = torch._C._autograd  # the stack saved_tensors_hooks pushes onto (no public reader)
# autocast's device types, each switched off where it is on (its state is per thread)
_AUTOCAST = ("cpu", "cuda", "xpu", "mps", "hpu")


class _Anomaly:
    """The process-wide anomaly flag, off while any analysis runs: saved by the first to
    enter, restored by the last to leave."""

    def __init__(self):
        self._lock, self._depth, self._saved = threading.Lock(), 0, (False, True)

    def enter(self) -> None:
        with self._lock:
            if self._depth == 0:
                self._saved = torch.is_anomaly_enabled(), torch.is_anomaly_check_nan_enabled()
            self._depth += 1
            torch.set_anomaly_enabled(False)

    def leave(self) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0:
                torch.set_anomaly_enabled(*self._saved)


_anomaly = _Anomaly()


def _autocast_on() -> list[str]:
    """The device types whose autocast is on (its state is per thread)."""
    found = []
    for device in _AUTOCAST:
        try:
            if torch.is_autocast_enabled(device):
                found.append(device)
        except (RuntimeError, TypeError):  # a device type this PyTorch does not know
            continue
    return found


# a subclass's own methods: the user's code (nn.Parameter's are torch's defaults, disabled)
_DEFAULT_FUNCTION = (torch.Tensor.__torch_function__.__func__,
                     torch._C._disabled_torch_function_impl)
_DEFAULT_DISPATCH = torch.Tensor.__torch_dispatch__


@contextlib.contextmanager
def no_subclass_code():
    """A context (or decorator) in which no tensor subclass's ``__torch_function__`` runs:
    calls and property reads on a subclass run torch's own operation (and give a plain
    tensor), as for ``torch.Tensor``. Modes (the recorder's) still run."""
    with torch._C.DisableTorchFunctionSubclass():
        yield


def user_subclass(tensor) -> str | None:
    """``"__torch_function__"`` or ``"__torch_dispatch__"`` where ``tensor``'s class is a
    subclass defining its own (the user's code, which an operation on it runs), the
    dispatch first; else None (a plain tensor, an ``nn.Parameter``). Reads the class only."""
    return subclass_code(type(tensor))


def subclass_code(kind: type) -> str | None:
    """:func:`user_subclass` of a class (None for any class that is no tensor subclass)."""
    if kind is torch.Tensor or not issubclass(kind, torch.Tensor):
        return None
    if getattr(kind, "__torch_dispatch__", _DEFAULT_DISPATCH) is not _DEFAULT_DISPATCH:
        return "__torch_dispatch__"
    function = getattr(kind, "__torch_function__", None)
    if getattr(function, "__func__", function) not in _DEFAULT_FUNCTION:
        return "__torch_function__"
    return None


@contextlib.contextmanager
def analysis_device():
    """The default device the analysis is written for (the CPU: each tensor it makes on
    another device says so), where ``torch.set_default_device`` named another: its probes,
    seeds and index arrays were made there (meta, or CUDA beside CPU inputs) and every entry
    point crashed. Entered after the user's code ran (the cell, a function handed to
    ``differentiate``), and for the analysis's own calls only: a factory call whose innermost
    caller outside torch is the user's (a custom backward in a pass, ``--against f``) makes
    its tensor on the user's default device, as in a plain run (:class:`_OursOnCpu`). The
    user's default is theirs again after, whatever their code set inside."""
    if torch.get_default_device().type == "cpu":
        yield
        return
    with _OursOnCpu():
        yield


class _OursOnCpu(DeviceContext):
    """A ``DeviceContext`` (torch's mode for ``with torch.device(...)``, which stands in for
    the user's default while it is entered) whose factory calls without a device make their
    tensor on the CPU where this package called them, else on the default it stands in for."""

    def __init__(self) -> None:
        super().__init__("cpu")

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if kwargs.get("device") is None and func in _device_constructors():
            users = getattr(self.prev_mode, "device", None)
            if users is not None and not called_by_us(sys._getframe(1)):
                kwargs["device"] = users
                return func(*args, **kwargs)
        return super().__torch_function__(func, types, args, kwargs)


@contextlib.contextmanager
def generators_kept():
    """Every global random generator the user's code can advance (torch's CPU one, each CUDA
    device's once CUDA is initialised, Python's ``random``, numpy's global one) as it was on
    entry, when the context ends, however it ends."""
    states = generator_states()
    try:
        yield
    finally:
        restore_generators(states)


def generator_states() -> tuple:
    """The states of the global generators :func:`generators_kept` keeps, now."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    return torch.get_rng_state(), random.getstate(), numpy_rng.saved(), cuda


def restore_generators(states: tuple) -> None:
    """The global generators put back to ``states`` (:func:`generator_states`)."""
    cpu, py, np_state, cuda = states
    torch.set_rng_state(cpu)
    random.setstate(py)
    numpy_rng.restore(np_state)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


class _Depth(threading.local):
    entries = 0  # quiet_autograd contexts entered on this thread


_DEPTH = _Depth()
_READS = frozenset({"_repr_mimebundle_", "__repr__", "__str__", "_repr_latex_",
                    "_repr_markdown_", "_repr_html_", "_repr_pretty_", "__getitem__"})


def guarded_reads(cls: type | None = None, *, plain: tuple = ()):
    """``cls`` with each public method and property it defines, its displays and items, run
    as an entry point that runs none of the user's code (:func:`quiet_autograd` with the CPU
    as default device): a result read in a later cell, after the user entered a torch mode
    or set another default device, runs none of that mode and makes its tensors as the
    analysis did; inside an entry point already, a read costs nothing more. The methods
    named in ``plain`` (``@guarded_reads(plain=("__getitem__",))``) only make tensors of the
    object's own (no random numbers, no graph, no user's tensor): they enter only where torch
    is not as plain as a fresh session leaves it (:func:`_plain_torch`: a list's item read
    in a loop costs ~1 us, not the entry's tens)."""
    if cls is None:
        return functools.partial(guarded_reads, plain=tuple(plain))
    for name, value in list(vars(cls).items()):
        if name.startswith("_") and name not in _READS:
            continue
        if isinstance(value, property) and value.fget is not None:
            setattr(cls, name, property(entry_point(value.fget), value.fset, value.fdel,
                                        value.__doc__))
        elif isinstance(value, types.FunctionType):
            setattr(cls, name, entry_point(value, name in plain))
    return cls


def entry_point(function, plain: bool = False):
    """``function`` run as an entry point (see :func:`guarded_reads`) where called outside one
    (``plain``: not where torch is plain, :func:`_plain_torch`)."""
    @functools.wraps(function)
    def read(*args, **kwargs):
        if _DEPTH.entries or plain and _plain_torch():
            return function(*args, **kwargs)
        with quiet_autograd(default_device=True):
            return function(*args, **kwargs)
    return read


def _plain_torch() -> bool:
    """Whether a tensor made now is made as inside an entry point: no torch function mode
    (the user's, or a default device: ``torch.set_default_device``, ``with torch.device``),
    no dispatch mode, no inference mode."""
    return not torch._C._is_torch_function_mode_enabled() and \
        torch._C._len_torch_dispatch_stack() == 0 and not torch.is_inference_mode_enabled()


@contextlib.contextmanager
def quiet_autograd(default_device: bool = False):
    """The random generators kept (:func:`generators_kept`), anomaly detection off, no
    default saved-tensor hooks, grad mode on, inference mode and
    autocast off, no tensor subclass's ``__torch_function__`` (:func:`no_subclass_code`),
    none of the user's torch function and dispatch modes (:func:`~.modes.modes_aside`)
    inside; all restored after (also as a decorator). ``default_device``: the
    CPU as the default device inside too (:func:`analysis_device`: for an entry point that
    runs none of the user's code)."""
    # the user's torch modes: set aside first, before any torch call of ours
    with modes_aside(), generators_kept(), writes_kept(), _quiet(default_device):
        _DEPTH.entries += 1
        try:
            yield
        finally:
            _DEPTH.entries -= 1


@contextlib.contextmanager
def _quiet(default_device: bool):
    """:func:`quiet_autograd`'s modes, set through torch's C guards (what ``inference_mode``,
    ``enable_grad`` and :func:`no_subclass_code` enter): the same states, put back as they
    were, without their Python wrappers' frames (some 40 us a call on a warm analysis)."""
    popped = []
    # (older PyTorch, before 2.6, has no reader of the stack: its hooks are left in place)
    top = getattr(_hooks, "_top_saved_tensors_default_hooks", lambda _: None)
    while (hooks := top(True)) is not None:
        popped.append(hooks)
        _hooks._pop_saved_tensors_default_hooks()
    _anomaly.enter()
    try:
        with torch._C._InferenceMode(False):
            grad_was = torch.is_grad_enabled()
            torch._C._set_grad_enabled(True)  # our passes build graphs
            try:
                with torch._C.DisableTorchFunctionSubclass():  # the cell ran the subclass
                    autocast = _autocast_on()
                    if autocast or default_device:
                        with _aside(autocast, default_device):
                            yield
                    else:  # (as a rule: no stack to enter)
                        yield
            finally:
                torch._C._set_grad_enabled(grad_was)
    finally:
        _anomaly.leave()
        for pack, unpack in reversed(popped):
            _hooks._push_saved_tensors_default_hooks(pack, unpack)


@contextlib.contextmanager
def _aside(autocast: list, default_device: bool):
    """Autocast off for the device types in ``autocast``; ``default_device``:
    :func:`analysis_device` too."""
    with contextlib.ExitStack() as stack:
        for device in autocast:
            stack.enter_context(torch.autocast(device, enabled=False))
        if default_device:
            stack.enter_context(analysis_device())
        yield


__all__ = ["analysis_device", "entry_point", "generator_states", "generators_kept", "guarded_reads",
           "no_subclass_code", "quiet_autograd", "restore_generators", "subclass_code",
           "user_subclass"]
