"""Recording the torch calls of the one real run of a cell, for ``--symbolic`` to replay.

Inside :func:`recording`, a :class:`~torch.overrides.TorchFunctionMode` notes every
outermost torch call (operators, methods, ``__getitem__``/``__setitem__``, in-place
methods, torch and ``torch.nn.functional`` functions, also those reached from
``nn.Module``\\ s and hooks) as a :class:`Call`: the function, its arguments, its result,
the version of every tensor argument (and whether it required grad), whether autograd
tracked the result, and, for
in-place calls, small copies of the tensors as they were before the call. The calls run
exactly as they would without the mode: same results, same exceptions; the bookkeeping
itself never raises into the cell. Calls made inside a recorded call are not recorded.

The record holds the cell's tensors until :meth:`OpRecord.release` (or until it is
garbage); it is released on its own when the cell raises.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch.overrides import TorchFunctionMode

MAX_CALLS = 50_000  # calls recorded; past this the record gives up (and frees what it held)
MAX_COPY_ENTRIES = 1 << 16  # entries of one in-place target copied before the call
MAX_COPY_BYTES = 64 << 20  # all copies together
_INPLACE_DUNDERS = {
    "__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__", "__imod__", "__ipow__",
    "__imatmul__", "__iand__", "__ior__", "__ixor__", "__ilshift__", "__irshift__", "__setitem__",
}
_NO_SUBCLASS_DISPATCH = torch._C.DisableTorchFunctionSubclass
_NOT_DATA = {"requires_grad_", "retain_grad_", "share_memory_", "rename_"}


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


@dataclass(eq=False)
class OpRecord:
    """The calls of one run, in order; ``failed`` says why the record is incomplete."""

    calls: list = field(default_factory=list)
    failed: str | None = None
    copied_bytes: int = 0

    def release(self) -> None:
        """Drop every tensor held (the calls, their arguments and results, the copies)."""
        self.calls = []
        self.copied_bytes = 0

    def __len__(self) -> int:
        return len(self.calls)

    def _give_up(self, why: str) -> None:
        self.failed = why
        self.release()


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


def in_place_targets(func, args, kwargs) -> tuple:
    """The tensors a call writes into: ``x.add_(…)``, ``x += …``, ``x[i] = …``, ``out=``,
    ``inplace=True``, and the lists of ``torch._foreach_*_``."""
    name = getattr(func, "__name__", "") or ""
    first = args[0] if args else None
    targets: list = []
    if name in _INPLACE_DUNDERS or kwargs.get("inplace") is True or (
            name.endswith("_") and not name.endswith("__") and name not in _NOT_DATA):
        if isinstance(first, torch.Tensor):
            targets.append(first)
        elif name.startswith("_foreach_") and isinstance(first, (list, tuple)):
            targets.extend(t for t in first if isinstance(t, torch.Tensor))
    targets.extend(tensors_in(kwargs.get("out")))
    return tuple(targets)


def version(tensor: torch.Tensor) -> int | None:
    """``tensor._version``, or None where there is none (inference tensors)."""
    try:
        return tensor._version
    except Exception:  # noqa: BLE001
        return None


class _Recorder(TorchFunctionMode):
    """The mode: runs each call as it is, and notes the outermost ones in ``record``."""

    def __init__(self, record: OpRecord):
        super().__init__()
        self.record = record
        self.depth = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        __tracebackhide__ = True  # noqa: F841 - IPython hides this frame unless it is the last
        kwargs = kwargs or {}
        if self.depth or self.record.failed is not None:
            return func(*args, **kwargs)
        self.depth += 1
        try:
            with _NO_SUBCLASS_DISPATCH():  # reading ._version runs no tensor subclass's code
                started = self._start(func, args, kwargs)
            result = func(*args, **kwargs)
            with _NO_SUBCLASS_DISPATCH():
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
            seen = {id(t): (version(t), t.requires_grad) for t in tensors}
            targets = in_place_targets(func, args, kwargs)
            before = tuple((version(t), self._copy(t)) for t in targets)
            return seen, targets, before, torch.is_grad_enabled()
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
            seen, targets, before, grad_enabled = started
            outs = tensors_in(result) + list(targets)
            tracked = frozenset(id(t) for t in outs if t.requires_grad)
            self.record.calls.append(Call(func, tuple(args), dict(kwargs), result, seen,
                                          tracked, grad_enabled, targets, before))
        except Exception as error:  # noqa: BLE001
            self.record._give_up(f"recording failed ({type(error).__name__}: {error})")


@contextlib.contextmanager
def recording():
    """Record the outermost torch calls made inside the block; yields the :class:`OpRecord`.

    If the block raises, the record is released (nothing will replay it) and the
    exception goes on unchanged.
    """
    record = OpRecord()
    try:
        with _Recorder(record):
            yield record
    except BaseException:
        record.release()
        raise
