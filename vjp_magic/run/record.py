"""Recording the torch calls of the one real run of a cell, for the replays (``--symbolic``,
``--gradcheck``, per-sample gradients).

Inside :func:`recording`, a :class:`~torch.overrides.TorchFunctionMode` notes every
outermost torch call (operators, methods, ``__getitem__``/``__setitem__``, in-place
methods, torch and ``torch.nn.functional`` functions, also those reached from
``nn.Module``\\ s and hooks) as a :class:`Call`: the function, its arguments, its result,
the version of every tensor argument (and whether it required grad), whether autograd
tracked the result, and, for
in-place calls, small copies of the tensors as they were before the call. The calls run
exactly as they would without the mode: same results, same exceptions; the bookkeeping
itself never raises into the cell. Calls made inside a recorded call are not recorded.
A custom ``autograd.Function``'s ``apply`` (which the mode does not see) is recorded as one
call (:class:`FunctionApply`), so a replay runs it, and its own backward, again.

The record gives up (``failed`` says why) past :data:`MAX_CALLS` calls or when the results
it holds exceed :func:`held_bytes_cap`, so recording never pins unbounded memory.

The record holds the cell's tensors until :meth:`OpRecord.release` (or until it is
garbage); it is released on its own when the cell raises.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import sys
import threading
import types
import weakref
from dataclasses import dataclass, field

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._device import DeviceContext
from torch.utils.hooks import RemovableHandle

from ..core import numpy_rng, own_generators
from ..core.memory import gb
from ..core.origin import ours, torchs
from ..core.quiet import no_subclass_code

MAX_CALLS = 50_000  # calls recorded; past this the record gives up (and frees what it held)
MAX_COPY_ENTRIES = 1 << 16  # entries of one in-place target copied before the call
MAX_COPY_BYTES = 64 << 20  # all copies together
MAX_HELD_BYTES = 1 << 30  # result memory held (unique storages); also at most RAM_FRACTION
RAM_FRACTION = 0.25
_INPLACE_DUNDERS = {
    "__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__", "__imod__", "__ipow__",
    "__imatmul__", "__iand__", "__ior__", "__ixor__", "__ilshift__", "__irshift__", "__setitem__",
}
# core.quiet.no_subclass_code's own context (no subclass's __torch_function__ runs; modes
# do), entered directly per recorded call: its generator would add 2 µs to the ~14 µs a call
# costs the recorder (measured: 13.3 vs 15.1 ms a 1,000 calls)
_NO_SUBCLASS_CODE = torch._C.DisableTorchFunctionSubclass
_NOT_DATA = {"requires_grad_", "retain_grad_", "share_memory_", "rename_"}
# Calls whose name holds one of these may draw random numbers: the generators' states are
# kept from just before them, so a replay draws the same numbers (a call missed here only
# makes its replay differ from the cell, which the replay's check refuses).
_RANDOM_WORDS = ("rand", "dropout", "bernoulli", "multinomial", "normal", "uniform", "rrelu",
                 "gumbel", "poisson", "exponential", "cauchy", "geometric", "attention",
                 "multi_head", "transformer", "sample")


@dataclass(eq=False, slots=True)
class Call:
    """One recorded torch call."""

    func: object
    args: tuple
    kwargs: dict
    result: object
    seen: dict  # id(tensor argument) -> (its ._version, its requires_grad) at the call
    tracked: frozenset  # ids of result tensors and in-place targets requiring grad afterwards
    grad_enabled: bool
    targets: tuple = ()  # tensors the call changed in place
    before: tuple = ()  # (version, copy or None) of each target, from just before the call
    rng: tuple | None = None  # the random generators' states just before a call that draws
    site: tuple | None = None  # where the call was made (:func:`call_site`)
    made: tuple | None = None  # its result's tensors, then its targets (:func:`outs_of`)
    reads: tuple | None = None  # the tensors of its arguments, once read (:func:`reads_of`)


@dataclass(eq=False)
class OpRecord:
    """The calls of one run, in order; ``failed`` says why the record is incomplete."""

    calls: list = field(default_factory=list)
    failed: str | None = None
    copied_bytes: int = 0
    held_bytes: int = 0  # memory of the unique result storages the calls hold
    storages: set = field(default_factory=set, repr=False)
    # hooks of any kind registered while recording (tensor, node, module: each makes a
    # torch.utils.hooks.RemovableHandle), counted even where a call bypassed the recorder
    # (torch._C.DisableTorchFunction); None until the block ends
    hooks_registered: int | None = None
    # the name of a torch.compile'd function the cell reached all the same (no scan found it,
    # :mod:`.compiled`), which ran eagerly under the recorder; None: none
    ran_eagerly: str | None = None

    def release(self) -> None:
        """Drop every tensor held (the calls, their arguments and results, the copies)."""
        self.calls = []
        self.copied_bytes = self.held_bytes = 0
        self.storages = set()

    def __len__(self) -> int:
        return len(self.calls)

    def _give_up(self, why: str) -> None:
        self.failed = why
        self.release()


def held_bytes_cap() -> int:
    """The most result memory a record may hold: :data:`MAX_HELD_BYTES`, and at most
    :data:`RAM_FRACTION` of the machine's memory."""
    ram = _physical_memory()
    if ram is None:
        return MAX_HELD_BYTES
    return min(MAX_HELD_BYTES, int(ram * RAM_FRACTION))


_RAM: list = []  # the machine's memory in bytes (None where unknown), read once


def _physical_memory() -> int | None:
    if not _RAM:
        try:
            _RAM.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        except (AttributeError, ValueError, OSError):
            _RAM.append(None)
    return _RAM[0]


class FunctionApply:
    """``Fn.apply`` of a custom ``autograd.Function``, as a recorded call's ``func``: calling
    it runs ``Fn.apply`` (so autograd uses ``Fn.backward``)."""

    def __init__(self, function: type):
        self.function = function
        self.__name__ = self.__qualname__ = f"{function.__name__}.apply"
        self.__module__ = function.__module__

    def __call__(self, *args, **kwargs):
        __tracebackhide__ = True  # the user's errors show their own frames
        return _original_apply(self.function)(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<{self.__name__}>"


def tensors_in(value, depth: int = 0) -> list:
    """The tensors in a value: itself, or the items of (nested) lists, tuples and dicts."""
    if isinstance(value, torch.Tensor):
        return [value]
    if depth > 3 or not isinstance(value, (list, tuple, dict)):
        return []
    found = []
    for item in value.values() if isinstance(value, dict) else value:
        if isinstance(item, torch.Tensor):
            found.append(item)
        elif isinstance(item, (list, tuple, dict)):
            found.extend(tensors_in(item, depth + 1))
    return found


# What a function's name says, by the function (torch's functions and methods: a bounded
# set; a custom Function's FunctionApply, made per call, is not kept): (its name, whether
# the name says it writes in place, whether it may draw random numbers).
_NAMED: dict = {}
_NAMED_MAX = 4096


def _named(func) -> tuple[str, bool, bool]:
    """(name, writes in place by its name, may draw random numbers) of ``func``."""
    try:
        return _NAMED[func]
    except (KeyError, TypeError):  # not seen yet, or unhashable
        pass
    name = getattr(func, "__name__", "") or ""
    lower = name.lower()
    facts = (name, name in _INPLACE_DUNDERS or (
        name.endswith("_") and not name.endswith("__") and name not in _NOT_DATA),
        any(word in lower for word in _RANDOM_WORDS) or isinstance(func, FunctionApply))
    if not isinstance(func, FunctionApply):
        try:
            if len(_NAMED) >= _NAMED_MAX:
                _NAMED.clear()
            _NAMED[func] = facts
        except TypeError:
            pass
    return facts


def reads_of(call: Call) -> tuple:
    """The tensors a recorded call read, ``tensors_in((call.args, call.kwargs))``, found once
    per call (the replays' planner and the cuts read them several times)."""
    reads = call.reads
    if reads is None:
        reads = call.reads = tuple(tensors_in((call.args, call.kwargs)))
    return reads


def outs_of(call: Call) -> tuple:
    """The tensors a recorded call made or changed: ``tensors_in(call.result)``, then its
    in-place targets (noted as it was recorded)."""
    made = call.made
    if made is None:
        made = call.made = tuple(tensors_in(call.result)) + tuple(call.targets)
    return made


def in_place_targets(func, args, kwargs) -> tuple:
    """The tensors a call writes into: ``x.add_(…)``, ``x += …``, ``x[i] = …``, ``out=``,
    ``inplace=True``, and the lists of ``torch._foreach_*_``."""
    name, in_place, _ = _named(func)
    first = args[0] if args else None
    targets: list = []
    if in_place or kwargs.get("inplace") is True:
        if isinstance(first, torch.Tensor):
            targets.append(first)
        elif name.startswith("_foreach_") and isinstance(first, (list, tuple)):
            targets.extend(t for t in first if isinstance(t, torch.Tensor))
    if "out" in kwargs:
        targets.extend(tensors_in(kwargs["out"]))
    return tuple(targets)


def version(tensor: torch.Tensor) -> int | None:
    """``tensor._version``, or None where there is none (inference tensors)."""
    try:
        return tensor._version
    except Exception:  # noqa: BLE001
        return None


class _Recorder(TorchFunctionMode):
    """The mode: runs each call as it is, and notes the outermost ones in ``record``.

    It sits beneath the user's own function modes (above a default device's
    ``DeviceContext``), so a mode the cell enters or exits is pushed or popped above it, as in
    a plain run, and it records the calls as they reach torch (:func:`recording`)."""

    _vjp_magic_own = True  # core.modes sets the user's modes aside, never this one

    def __init__(self, record: OpRecord):
        super().__init__()
        self.record = record
        self.depth = 0
        self.cap = held_bytes_cap()
        self.noted: set = set()  # ids of the argument tensors whose memory _hold has noted
        self.own: list | None = None  # in a custom forward: (generator, state before it)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        __tracebackhide__ = True  # IPython hides this frame unless it is the last
        kwargs = kwargs or {}
        if self.depth or self.record.failed is not None:
            if self.own is not None and self.depth:
                self._note_generators(args, kwargs)
            return func(*args, **kwargs)
        self.depth += 1
        try:
            with _NO_SUBCLASS_CODE():  # reading ._version runs no tensor subclass's code
                started = self._start(func, args, kwargs)
            result = calling_at(users_frame(sys._getframe(1)))(func, args, kwargs)
            with _NO_SUBCLASS_CODE():
                self._finish(started, func, args, kwargs, result)
            return result
        finally:
            self.depth -= 1

    def _start(self, func, args, kwargs):
        """What must be noted before the call runs (versions, copies of in-place targets)."""
        try:
            record = self.record
            if len(record.calls) >= MAX_CALLS:
                record._give_up(f"the cell made more than {MAX_CALLS:,} torch calls")
                return None
            tensors = tensors_in(args) + tensors_in(kwargs) if kwargs else tensors_in(args)
            try:
                seen = {id(t): (t._version, t.requires_grad) for t in tensors}
            except Exception:  # noqa: BLE001 - an inference tensor: no version
                seen = {id(t): (version(t), t.requires_grad) for t in tensors}
            targets = in_place_targets(func, args, kwargs)
            before = tuple((version(t), self._copy(t)) for t in targets) if targets else ()
            rng = rng_states(func, tensors) if _named(func)[2] else None
            self.own = None
            if isinstance(func, FunctionApply):
                self.own = [(g, own_generators.state(g))
                            for g in own_generators.reachable(func.function, args, kwargs)]
            elif rng is not None:  # a torch call given the user's own torch.Generator
                rng = (*rng[:3], tuple((g, own_generators.state(g))
                                       for g in own_generators.passed(args, kwargs)))
            if _STANCE.cells is not None and record.ran_eagerly is None:
                record.ran_eagerly = compiled_caller(sys._getframe(2))
            return (seen, targets, before, torch.is_grad_enabled(), rng,
                    call_site(sys._getframe(2)), tensors)
        except Exception as error:  # noqa: BLE001 - never disturb the cell
            self.record._give_up(f"recording failed ({type(error).__name__}: {error})")
            return None

    def _copy(self, tensor: torch.Tensor):
        size = tensor.numel() * tensor.element_size()
        if tensor.numel() > MAX_COPY_ENTRIES or \
                self.record.copied_bytes + size > MAX_COPY_BYTES:
            return None
        self.record.copied_bytes += size
        with torch.no_grad():
            return tensor.detach().clone()

    def _finish(self, started, func, args, kwargs, result) -> None:
        if started is None or self.record.failed is not None:
            return
        try:
            seen, targets, before, grad_enabled, rng, site, read = started
            if isinstance(func, FunctionApply) and rng is not None:
                rng = (*rng[:3], tuple(self.own or ()))
                if not _moved(rng):
                    rng = None  # a custom forward that drew nothing: nothing to draw again
            self.own = None
            outs = tensors_in(result) + list(targets)
            tracked = frozenset(id(t) for t in outs if t.requires_grad)
            self.record.calls.append(Call(func, tuple(args), dict(kwargs), result, seen,
                                          tracked, grad_enabled, targets, before, rng, site,
                                          tuple(outs)))
            self._hold(outs, read)
        except Exception as error:  # noqa: BLE001
            self.record._give_up(f"recording failed ({type(error).__name__}: {error})")

    def _note_generators(self, args, kwargs) -> None:
        """Keep the state of each ``torch.Generator`` a call in the custom forward is given,
        as it is before the forward's first draw from it (the forward drew from it)."""
        try:
            for generator in own_generators.passed(args, kwargs):
                if not any(generator is g for g, _ in self.own):
                    self.own.append((generator, own_generators.state(generator)))
        except Exception as error:  # noqa: BLE001 - never disturb the cell
            self.record._give_up(f"recording failed ({type(error).__name__}: {error})")

    def _hold(self, tensors, read) -> None:
        """Count the memory of result storages (``tensors``) not counted before, except the
        memory of tensors the cell had already (``read``: the call's tensor arguments; a view
        of a dataset pins nothing new); give up past the cap."""
        record, noted = self.record, self.noted
        for tensor in read:
            if id(tensor) in noted:  # (held by the record: its id is its own)
                continue
            noted.add(id(tensor))
            key = storage_of(tensor)[0]
            if key is not None and key not in record.storages:
                record.storages.add(key)  # memory from outside the record: not counted
        for tensor in tensors:  # (a target's memory may have changed: looked up again)
            noted.add(id(tensor))
            key, size = storage_of(tensor)
            if key is not None and key not in record.storages:
                record.storages.add(key)
                record.held_bytes += size
        if record.held_bytes > self.cap:
            record._give_up(f"the cell's tensors take more than {gb(self.cap)}, more than a "
                            "record may hold")

    def apply_function(self, function: type, args, kwargs):
        """A custom Function's ``apply``, recorded as one call like any torch call."""
        __tracebackhide__ = True
        return self.__torch_function__(FunctionApply(function), (), args, kwargs)


def call_site(frame, depth: int = 64) -> tuple | None:
    """Where a recorded call was made: ``(code, lasti, line, in_cell)`` of the innermost frame
    outside torch and this package, preferring one running the cell's own file (the file of
    the frame this package ran, the cell or ``%jacobian``'s expression; ``in_cell`` then),
    and, where the call was made deeper, in a function of another file the cell called (a
    module's ``forward``), a fifth item: ``(code, lasti, line)`` of that innermost frame.
    Only the code object is kept (positions are read from it when asked), no frame."""
    found = []
    while frame is not None and depth:
        kind = _file_kind(frame.f_code.co_filename)
        if kind == _IN_OURS and found:  # the frame below ours runs the cell
            cell = [f for f in found if f[0].co_filename == found[-1][0].co_filename]
            return (*cell[0], True) if cell[0] is found[0] else (*cell[0], True, found[0])
        if kind == _IN_USERS:
            found.append((frame.f_code, frame.f_lasti, frame.f_lineno))
        frame, depth = frame.f_back, depth - 1
    return (*found[0], False) if found else None


def compiled_caller(frame, depth: int = 64) -> str | None:
    """The name of the function a ``torch.compile`` wrapper (a frame of dynamo's
    ``eval_frame.py``, running it eagerly: ``force_eager``) called on the way from the cell to
    ``frame``, the innermost such; None where none did."""
    compiled = getattr(sys.modules.get("torch._dynamo.eval_frame"), "__file__", None)
    called, left_ours = None, False
    while frame is not None and depth and compiled is not None:
        code = frame.f_code
        kind = _file_kind(code.co_filename)
        if kind == _IN_OURS and left_ours:
            return None  # the frame below ours runs the cell
        left_ours = left_ours or kind != _IN_OURS
        if code.co_filename == compiled and called is not None:
            return getattr(called, "co_qualname", called.co_name)
        if kind == _IN_USERS:
            called = code
        frame, depth = frame.f_back, depth - 1
    return None


def users_frame(frame):
    """The innermost frame from ``frame`` outward running neither torch's code nor this
    package's: where a plain run reports a warning the call raises (None: none)."""
    while frame is not None and _file_kind(frame.f_code.co_filename) != _IN_USERS:
        frame = frame.f_back
    return frame


def calling_at(frame):
    """A function ``call(func, args, kwargs)`` that returns ``func(*args, **kwargs)`` from a
    frame that reads as ``frame`` does to the warnings module (its file, line and globals:
    its module's name, filters and ``__warningregistry__``), so a warning the call raises (a
    C function's, at the innermost Python frame; torch's Python one, a stack level or two up,
    past the recorder) is filtered, shown once per line and raised under "error" at the
    cell's line, as in a plain run: nothing is swapped or caught (the filters are process-wide,
    shared by every thread). ``frame`` None: a plain call."""
    if frame is None:
        return _plain_call
    key = (frame.f_code.co_filename, frame.f_lineno or 1, id(frame.f_globals))
    call = _CALLERS.get(key)
    if call is None or call.__globals__ is not frame.f_globals:
        if len(_CALLERS) >= _NAMED_MAX:
            _CALLERS.clear()
        code = _CALLER_CODE.replace(co_filename=key[0], co_firstlineno=key[1])
        call = _CALLERS[key] = types.FunctionType(code, frame.f_globals, _CALLER_NAME)
    return call


def _plain_call(func, args, kwargs):
    __tracebackhide__ = True  # noqa: F841 - IPython hides this frame
    return func(*args, **kwargs)


def is_caller(code) -> bool:
    """Whether ``code`` is a :func:`calling_at` caller's (a frame a traceback leaves out)."""
    return code.co_name == _CALLER_NAME and code.co_code == _CALLER_CODE.co_code


# one line, so every instruction of a caller is at the line its frame stands for
_CALLER_NAME = "<vjp_magic: the recorded torch call>"
_CALLER_CODE = compile("def call(func, args, kwargs): __tracebackhide__ = True; "
                       "return func(*args, **kwargs)", "<torch call>", "exec").co_consts[0]
_CALLER_CODE = _CALLER_CODE.replace(  # (co_qualname from Python 3.11; 3.10 has co_name only)
    co_name=_CALLER_NAME, **({"co_qualname": _CALLER_NAME}
                             if hasattr(_CALLER_CODE, "co_qualname") else {}))
_CALLERS: dict = {}  # (file, line, globals' id) -> its caller, bounded


_IN_USERS, _IN_TORCH, _IN_OURS = range(3)
_FILE_KINDS: dict = {}  # a frame's file -> whose code it is (above), bounded


def _file_kind(name: str) -> int:
    """Whose frames file ``name`` holds: this package's, torch's or the user's, remembered."""
    kind = _FILE_KINDS.get(name)
    if kind is not None:
        return kind
    kind = _IN_OURS if ours(name) else _IN_TORCH if torchs(name) else _IN_USERS
    if len(_FILE_KINDS) >= _NAMED_MAX:
        _FILE_KINDS.clear()
    _FILE_KINDS[name] = kind
    return kind


def rng_states(func, tensors) -> tuple | None:
    """The CPU generator's state, and each CUDA device's that the call's tensors are on,
    when ``func`` may draw random numbers (see :data:`_RANDOM_WORDS`; a custom Function's
    forward is the user's code, which may draw from any generator: Python's ``random`` and
    numpy's global one too); else None."""
    if not _named(func)[2]:
        return None
    return generator_states({t.device.index or 0 for t in tensors if t.device.type == "cuda"},
                            python=isinstance(func, FunctionApply))


def generator_states(cuda_devices, python: bool = False, own=()) -> tuple:
    """The CPU generator's state and those of ``cuda_devices`` (indices), (``python``)
    Python's ``random`` and numpy's global generator's (else None), and pairs of each of
    the user's own generators ``own`` (:mod:`.own_generators`) and its state, for
    :func:`restore_rng`."""
    return (torch.get_rng_state(), tuple((d, torch.cuda.get_rng_state(d))
                                         for d in sorted(cuda_devices)),
            (random.getstate(), numpy_rng.saved()) if python else None,
            tuple((g, own_generators.state(g)) for g in own))


def _moved(states) -> bool:
    """Whether any generator in ``states`` (:func:`generator_states`) has moved since."""
    cpu, cuda, python, own = states
    if own_generators.moved(own):
        return True
    if not torch.equal(torch.get_rng_state(), cpu) or any(
            not torch.equal(torch.cuda.get_rng_state(d), state) for d, state in cuda):
        return True
    return python is not None and (random.getstate() != python[0]
                                   or not own_generators.same(numpy_rng.saved(), python[1]))


def restore_rng(states) -> None:
    """Put back the generators' states that :func:`rng_states` kept."""
    cpu, cuda, python, own = states
    for generator, state in own:
        own_generators.set_state(generator, state)
    torch.set_rng_state(cpu)
    for device, state in cuda:
        torch.cuda.set_rng_state(state, device)
    if python is not None:
        random.setstate(python[0])
        numpy_rng.restore(python[1])


def storage_of(tensor: torch.Tensor) -> tuple[int | None, int]:
    """(address, bytes) of a tensor's memory; (None, 0) where it has none of its own."""
    try:
        storage = tensor.untyped_storage()
        return storage.data_ptr(), storage.nbytes()
    except Exception:  # noqa: BLE001 - sparse, meta …
        return None, 0


_ORIGINAL_APPLY = torch.autograd.Function.__dict__["apply"]


def _original_apply(cls):
    """PyTorch's own ``apply`` bound to ``cls`` (a Python classmethod in some releases, a C
    classmethod descriptor in others: both bind through ``__get__``)."""
    return _ORIGINAL_APPLY.__get__(None, cls)

_ACTIVE = threading.local()  # .recorders: this thread's recorders, innermost last
_PATCH_LOCK = threading.Lock()
_PATCHED = [0]  # recordings (all threads) that need Function.apply patched
_REPLACED = [_ORIGINAL_APPLY]  # what Function.apply was when the first of them began


def _recorded_apply(cls, *args, **kwargs):
    __tracebackhide__ = True
    recorders = getattr(_ACTIVE, "recorders", None)
    if not recorders:
        return _original_apply(cls)(*args, **kwargs)
    return recorders[-1].apply_function(cls, args, kwargs)


@contextlib.contextmanager
def _custom_functions_recorded(recorder: _Recorder):
    """While the block runs, ``Function.apply`` in this thread goes through ``recorder``."""
    recorders = _ACTIVE.__dict__.setdefault("recorders", [])
    with _PATCH_LOCK:
        if not _PATCHED[0]:  # put back afterwards whatever is there now (not only torch's)
            _REPLACED[0] = torch.autograd.Function.__dict__["apply"]
            torch.autograd.Function.apply = classmethod(_recorded_apply)
        _PATCHED[0] += 1
    recorders.append(recorder)
    try:
        yield
    finally:
        recorders.remove(recorder)
        with _PATCH_LOCK:
            _PATCHED[0] -= 1
            if not _PATCHED[0]:
                torch.autograd.Function.apply = _REPLACED[0]


@contextlib.contextmanager
def recording():
    """Record the outermost torch calls made inside the block; yields the :class:`OpRecord`.

    If the block raises, the record is released (nothing will replay it) and the
    exception goes on unchanged.
    """
    record = OpRecord()
    recorder = _Recorder(record)
    handles = RemovableHandle.next_id  # every hook registered makes one
    _push_beneath_users(recorder)
    try:
        with _custom_functions_recorded(recorder), compiled_code_run_eagerly():
            yield record
    except BaseException:
        record.release()
        raise
    finally:
        if not _take_off(recorder) and record.failed is None:
            record._give_up("the cell took vjp_magic's recorder off torch's mode stack "
                            "(it popped more modes than it entered)")
        record.hooks_registered = RemovableHandle.next_id - handles


def compiled_code_run_eagerly():
    """A context in which the user's ``torch.compile``\\ d functions run as plain Python
    (``torch.compiler.set_stance("force_eager")``, torch >= 2.6) - a backstop: a cell that can
    call compiled code runs unrecorded (:mod:`.compiled`), and compiled code reached all the
    same is named in ``OpRecord.ran_eagerly`` (:func:`compiled_caller`), which the result
    says. The recorder, a function mode, then sees their every call, and dynamo neither
    compiles them again under a mode stack it guards on (the recorder's) nor leaves an entry
    for it in their cache, so the next plain call reuses what was compiled before. A no-op
    where torch has no stances or dynamo was never imported (nothing compiled). A stance the
    cell sets in this thread (``torch.compiler.set_stance``, as a call, a context or a
    decorator) is the cell's own
    (:func:`_cells_stance`): it returns the cell's prior stance, and is in force when the
    block ends, as after a plain run; inside, compiled code still runs eagerly (with
    ``fail_on_recompile`` it compiles nothing, so nothing is refused)."""
    dynamo = sys.modules.get("torch._dynamo")
    frame = sys.modules.get("torch._dynamo.eval_frame")
    decorators = sys.modules.get("torch._dynamo.decorators")
    if dynamo is None or getattr(dynamo, "set_stance", None) is None or frame is None \
            or getattr(decorators, "_set_stance", None) is None or _STANCE.cells is not None:
        return contextlib.nullcontext()  # (nested: the outer one holds the cell's stance)
    return _eager(frame, decorators)


class _Stance(threading.local):
    cells = None  # while recording in this thread: the stance the cell holds (set or not)


_STANCE = _Stance()
_STANCE_PATCH = [0, None]  # recordings that patched torch's _set_stance, torch's own one


@contextlib.contextmanager
def _eager(frame, decorators):
    """``force_eager`` in force, the cell's stance kept aside (:func:`_cells_stance`) and put in
    force at the end, only where the stance is still ours (no other thread set one since)."""
    with _PATCH_LOCK:
        if not _STANCE_PATCH[0]:
            _STANCE_PATCH[1] = decorators._set_stance
            decorators._set_stance = _cells_stance
        _STANCE_PATCH[0] += 1
    real = _STANCE_PATCH[1]
    ours = frame.DynamoStance("force_eager")
    _STANCE.cells = real(ours)
    try:
        yield
    finally:
        cells, _STANCE.cells = _STANCE.cells, None
        if frame._stance is ours:
            real(cells)
        with _PATCH_LOCK:
            _STANCE_PATCH[0] -= 1
            if not _STANCE_PATCH[0]:
                decorators._set_stance = _STANCE_PATCH[1]


def _cells_stance(stance):
    """torch's ``_set_stance`` while a cell is recorded: in the recording thread, the cell's
    stance kept aside (its prior returned, as torch returns it); in any other, torch's."""
    if _STANCE.cells is None:
        return _STANCE_PATCH[1](stance)
    prior, _STANCE.cells = _STANCE.cells, stance
    return prior


def _push_beneath_users(recorder: _Recorder) -> None:
    """``recorder`` on torch's function-mode stack beneath the modes there (the user's: a
    mode the cell exits is popped from above it), above a default device's DeviceContext
    (torch keeps that at the bottom)."""
    c = torch._C
    modes = [c._pop_torch_function_stack() for _ in range(c._len_torch_function_stack())]
    modes.reverse()  # bottom first
    kept = 0
    while kept < len(modes) and isinstance(modes[kept], DeviceContext):
        kept += 1
    for mode in (*modes[:kept], recorder, *modes[kept:]):
        c._push_on_torch_function_stack(mode)


def _take_off(recorder: _Recorder) -> bool:
    """``recorder`` taken off torch's function-mode stack wherever it is, every other mode
    left in its place (those the cell entered stay entered); False where it was not there."""
    c = torch._C
    modes = [c._pop_torch_function_stack() for _ in range(c._len_torch_function_stack())]
    modes.reverse()
    for mode in modes:
        if mode is not recorder:
            c._push_on_torch_function_stack(mode)
    return any(mode is recorder for mode in modes)


class KeptRecord:
    """A ``%%vjp`` cell's record kept after its request, so that a later ``%jacobian`` or
    ``%hessian`` on its output can rebuild a graph the cell's own ``backward`` freed (the
    hook-free replay: no user code runs).

    Bounded: only a complete record is kept (so within :func:`held_bytes_cap`), and only while
    the output tensor lives. The record holds a detached alias in the output's place (same
    memory, same version counter), so it never keeps the output alive; a weak reference
    to the output releases the record when the output is garbage."""

    def __init__(self, record: OpRecord, output: torch.Tensor):
        self._record: OpRecord | None = record
        self._alias = output.detach()
        record.calls = [_swapped_call(call, output, self._alias) for call in record.calls]
        self._output = weakref.ref(output, self._dropped)

    @classmethod
    def keep(cls, record: OpRecord | None, output) -> KeptRecord | None:
        """``record`` kept for ``output``, where it is complete and computed the output (read
        as torch's: a tensor subclass's ``__torch_function__`` is the user's code)."""
        with no_subclass_code():
            if record is None or record.failed is not None \
                    or not isinstance(output, torch.Tensor) or output.grad_fn is None:
                return None
            if not any(t is output for call in record.calls for t in outs_of(call)):
                return None  # not the cell's own (an --of expression, an earlier cell's tensor)
            return cls(record, output)

    @property
    def output(self) -> torch.Tensor | None:
        """The output, while it lives and the record is kept."""
        return None if self._record is None else self._output()

    def record(self) -> OpRecord | None:
        """The calls as the cell made them (the output in its place again), or None once the
        output is gone or the record released."""
        output = self.output
        if output is None:
            return None
        return OpRecord([_swapped_call(call, self._alias, output) for call in self._record.calls])

    def release(self) -> None:
        """Drop the record and everything it holds."""
        if self._record is not None:
            self._record.release()
        self._record = None

    def _dropped(self, _reference) -> None:
        self.release()


def _swapped_call(call: Call, old: torch.Tensor, new: torch.Tensor) -> Call:
    """``call`` with the tensor ``old`` replaced by ``new`` wherever it holds it (arguments,
    result, targets, and the ids its versions and tracking are kept under); ``call`` itself
    where it holds ``old`` nowhere (its arguments are seen by id, its results by identity)."""
    if id(old) not in call.seen and not any(t is old for t in outs_of(call)):
        return call

    def swap(value, depth=0):
        if value is old:
            return new
        if depth > 3 or not isinstance(value, (list, tuple, dict)):
            return value
        if isinstance(value, dict):
            return {k: swap(v, depth + 1) for k, v in value.items()}
        items = [swap(v, depth + 1) for v in value]
        if all(a is b for a, b in zip(items, value)):
            return value
        try:
            return type(value)(items)
        except TypeError:  # a namedtuple
            return type(value)(*items)

    def key(k):
        return id(new) if k == id(old) else k

    return dataclasses.replace(
        call, args=swap(call.args), kwargs=swap(call.kwargs), result=swap(call.result),
        targets=swap(call.targets), seen={key(k): v for k, v in call.seen.items()},
        tracked=frozenset(key(k) for k in call.tracked), made=None, reads=None)
