"""The user's torch modes (``TorchFunctionMode``, ``TorchDispatchMode``), for the user's code only.

A notebook may leave a mode entered (a logging or counting mode, entered in an earlier cell
or around a call of the Python API). The user's code (the cell, a function handed to
``differentiate``) runs under it as in a plain run; the analysis' own torch calls must not
(they ran the user's ``__torch_function__`` / ``__torch_dispatch__`` 100-400 times where a
plain run makes 0-2 calls). :func:`modes_aside` takes the user's modes off torch's two mode
stacks for the analysis and puts them back exactly; :func:`users_modes` lends them back for
the user's code inside it, and keeps what that code left on the stacks (a mode it entered
stays entered, one it exited stays exited) as the user's.

Kept in place: ``torch.set_default_device``'s ``DeviceContext`` (the bottom of the function
stack: the user's default device, which :func:`~.quiet.analysis_device` reads), and the
modes of this package (marked ``_vjp_magic_own``: the recorder). Refused before any call: a
dispatch mode torch keeps in a slot of its own (FakeTensorMode, FunctionalTensorMode, a
pre-dispatch mode: tracing, not a user's mode), which cannot be taken off and put back.
"""
from __future__ import annotations

import contextlib
import threading

import torch
from torch.utils._device import DeviceContext

from .errors import VJPUsageError

_C = torch._C


class _Entry:
    """One :func:`modes_aside` entered: the user's function and dispatch modes (bottom first)
    it took off, and whether :func:`users_modes` has lent them back (they are on the stacks).
    Compared by identity: two entries holding equal lists are still two."""

    __slots__ = ("function", "dispatch", "lent")

    def __init__(self, function: list, dispatch: list) -> None:
        self.function, self.dispatch, self.lent = function, dispatch, False

    def __repr__(self) -> str:
        return f"_Entry({self.function!r}, {self.dispatch!r}, lent={self.lent})"


class _Saved(threading.local):
    # one _Entry per modes_aside entered on this thread, innermost last (a stack: each
    # modes_aside pops its own, by identity)
    entries: list

    def __init__(self) -> None:
        self.entries = []


_SAVED = _Saved()


def _stays(mode) -> bool:
    """Whether a function mode stays on the stack for the analysis (a default device, ours)."""
    return isinstance(mode, DeviceContext) or getattr(mode, "_vjp_magic_own", False)


def _take_function_modes() -> list:
    """The user's function modes, taken off the stack (bottom first); the rest left."""
    if not _C._len_torch_function_stack():
        return []
    modes = [_C._pop_torch_function_stack() for _ in range(_C._len_torch_function_stack())]
    modes.reverse()
    taken = []
    for mode in modes:
        if _stays(mode):
            _C._push_on_torch_function_stack(mode)
        else:
            taken.append(mode)
    return taken


def _pre_dispatch_modes() -> int:
    try:
        from torch._ops import _len_torch_dispatch_stack_pre_dispatch
    except ImportError:  # an older PyTorch
        return 0
    return _len_torch_dispatch_stack_pre_dispatch()


def _refuse_unmovable() -> None:
    """The usage error, before anything runs, for a dispatch mode that cannot be set aside."""
    count = _C._len_torch_dispatch_stack()
    infra = [m for m in (_C._get_dispatch_stack_at(i) for i in range(count))
             if getattr(m, "_mode_key", None) is not None]
    if infra or _pre_dispatch_modes():
        name = type(infra[0]).__name__ if infra else "a pre-dispatch mode"
        raise VJPUsageError(
            f"vjp_magic was called under {name}, a dispatch mode torch keeps for tracing "
            "(torch.compile, make_fx, FakeTensorMode): the analysis cannot run its passes "
            "beside it. Call it outside that context.")


def _take_dispatch_modes() -> list:
    """The user's dispatch modes, taken off the stack (bottom first)."""
    count = _C._len_torch_dispatch_stack()
    if not count:
        return []
    _refuse_unmovable()
    modes = [_C._pop_torch_dispatch_stack(None) for _ in range(count)]
    modes.reverse()
    return modes


def _put_back(function_modes: list, dispatch_modes: list) -> None:
    for mode in function_modes:
        _C._push_on_torch_function_stack(mode)
    for mode in dispatch_modes:
        _C._push_on_torch_dispatch_stack(mode)


@contextlib.contextmanager
def modes_aside():
    """The user's function and dispatch modes off torch's stacks inside (this thread's), put
    back on top of what stays after, in their order; also as a decorator. A dispatch mode
    that cannot be set aside is refused (:class:`VJPUsageError`) before anything runs.
    Re-entrant: one inside another (an entry point called by the user's code that a
    :func:`users_modes` runs) keeps its own entry, taken off by identity."""
    if not _C._len_torch_function_stack() and not _C._len_torch_dispatch_stack():
        entry = _Entry([], [])  # (the common case: two C calls)
    else:
        if _C._len_torch_dispatch_stack():
            _refuse_unmovable()
        entry = _Entry(_take_function_modes(), _take_dispatch_modes())
    _SAVED.entries.append(entry)
    try:
        yield
    finally:
        _drop(entry)
        if not entry.lent:  # (lent: a users_modes inside still runs; what it left is there)
            _put_back(entry.function, entry.dispatch)


def _drop(entry: _Entry) -> None:
    """``entry`` off this thread's stack of entries, by identity (innermost first)."""
    entries = _SAVED.entries
    for at in range(len(entries) - 1, -1, -1):
        if entries[at] is entry:
            del entries[at]
            return


def _lender() -> _Entry | None:
    """The entry whose modes :func:`users_modes` lends: the innermost holding modes, none
    past one already lent (its modes are on the stacks: the user's code runs under them);
    else the innermost (to keep what the user's code leaves), or None outside any."""
    for entry in reversed(_SAVED.entries):
        if entry.lent:
            return None
        if entry.function or entry.dispatch:
            return entry
    return _SAVED.entries[-1] if _SAVED.entries else None


@contextlib.contextmanager
def users_modes():
    """Inside :func:`modes_aside`: the user's modes back on the stacks while the user's code
    runs; after it, what that code left there (modes entered or exited) is set aside again as
    the user's. Outside any, or inside another users_modes: nothing changes. Re-entrant and
    exception-safe (the entry is marked lent while its modes are out)."""
    entry = _lender()
    if entry is None:
        yield
        return
    lent = (entry.function, entry.dispatch)
    entry.function, entry.dispatch, entry.lent = [], [], True
    _put_back(*lent)
    try:
        yield
    finally:
        entry.lent = False
        entry.function = _take_function_modes()
        try:
            entry.dispatch = _take_dispatch_modes()
        except VJPUsageError:  # the user's code entered a tracing mode: left where it is
            entry.dispatch = []
            raise


__all__ = ["modes_aside", "users_modes"]
