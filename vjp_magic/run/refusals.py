"""Every reason a record cannot be replayed as a pure function of its inputs, in one place.

Both replays (torch values, :mod:`.replay`; SymPy values, :mod:`vjp_magic.symbolic.replay`)
build their steps with :mod:`.plan`, which asks here. A refusal is a :class:`NotReplayable`;
the ones a caller may word in its own terms carry the tensor concerned
(:class:`ForeignTensor`, :class:`ConstantLost`) or the cause found (:class:`NotReached`).
Messages name a tensor through ``label`` (default: its shape).

The refusals: no complete record; the output not computed from the inputs by the record;
in-place writes autograd did not see (under ``torch.no_grad``), into an input, or into
``out=``; an input changed in place after the cell used it; a constant changed in place
whose earlier value was not kept; a tensor computed from an input outside the record; a
custom ``autograd.Function`` applied through a reference made before the cell (its forward,
the user's code, is not in the record); replaying a custom Function's forward at all, for a
caller that may not run the user's code twice (:func:`refuse_user_code`); and a replay
whose values differ from the cell's (random draws or state the record does not show).
"""
from __future__ import annotations

import linecache

import torch

from ..core.errors import RUNS_ONCE
from ..core.tagging import custom_backwards, depends_on, is_visible_name
from ..core.tolerances import tolerances
from .record import FunctionApply, outs_of, reads_of, version
from .steps import identity


class NotReplayable(Exception):
    """Why the record cannot be replayed as a pure function."""


class NoRecord(NotReplayable):
    """The cell's calls were not recorded, or only in part (``failed`` says why)."""

    def __init__(self, failed: str | None = None):
        self.failed = failed
        super().__init__("the cell's operations were not recorded" if failed is None
                         else f"the record is incomplete: {failed}")


class InputChanged(NotReplayable):
    """An input was changed in place after the cell used it (an optimiser step)."""


class ForeignTensor(NotReplayable):
    """A constant was computed from the input ``source`` outside the record."""

    def __init__(self, tensor: torch.Tensor, source: str, label=None):
        self.tensor, self.source = tensor, source
        super().__init__(f"{(label or shape_label)(tensor)} was computed from {source} outside "
                         "the recorded operations (in an earlier cell?)")


class ConstantLost(NotReplayable):
    """A constant changed in place after the call read it, its earlier value not kept."""

    def __init__(self, tensor: torch.Tensor, label=None):
        self.tensor = tensor
        super().__init__(f"{(label or shape_label)(tensor)} was changed in place after the cell "
                         "used it, and its earlier value was not kept")


class UntrackedWrite(NotReplayable):
    """``func`` changed ``tensor``, computed from the inputs, in place under ``no_grad``."""

    def __init__(self, func, tensor: torch.Tensor):
        self.func, self.tensor = func, tensor
        super().__init__(f"{getattr(func, '__name__', '?')} changed a tensor computed from the "
                         "inputs in place under torch.no_grad")


class UserCode(NotReplayable):
    """Replaying would run the user's own Python again: a custom Function's forward."""


class NotReached(NotReplayable):
    """The recorded calls do not compute the output from the inputs; ``cause``: the
    :class:`ForeignTensor` on its way, where there is one."""

    def __init__(self, cause: ForeignTensor | None = None):
        self.cause = cause
        super().__init__("the output was not computed by the recorded operations from the "
                         "inputs")


def shape_label(tensor: torch.Tensor) -> str:
    """How a message names a tensor when nothing better is known."""
    return f"a tensor of shape {tuple(tensor.shape)}"


def namespace_label(namespace):
    """How messages name a tensor (a ``label``): by the visible name ``namespace`` binds it
    to (``e``, made in an earlier cell), else by its shape (:func:`shape_label`)."""
    def label(tensor: torch.Tensor) -> str:
        for name, value in (namespace or {}).items():
            if value is tensor and is_visible_name(name):
                return name
        return shape_label(tensor)
    return label


def refuse_record(record, output) -> None:
    """A complete record and a tensor output, and no ``.data`` set on a tensor a call had
    read (:func:`refuse_data_writes`)."""
    if record is None or record.failed is not None:
        raise NoRecord(None if record is None else record.failed)
    if not isinstance(output, torch.Tensor):
        raise NotReplayable("the output is not a tensor")
    refuse_data_writes(record, output)


def refuse_data_writes(record, output=None) -> None:
    """``x.data = …`` (or a write into ``x.data`` in place: ``x.data.mul_(2)``, ``x.data[0] =
    5.``) after a recorded call read x and made a value ``output`` is computed
    from (any value, where ``output`` is not given): autograd does not see the write, and the
    graph reads the new values where it saved x (``y = x ** 2`` then ``x.data = 2 *
    x.data``: a backward of y gives 2·x at the new x, not where y was computed), which no
    replay of the calls can be. Named with its line, as the cell wrote it."""
    read: dict = {}  # id(tensor) → the calls (not x.data's own get/set) that read it
    data_of: dict = {}  # id(x.data's tensor) → id(x): a write into it is a write into x
    for call in record.calls:
        if _gets_data(call):
            data_of.update((id(t), id(call.args[0])) for t in outs_of(call))
        written = id(call.args[0]) if _sets_data(call) else next(
            (data_of[id(t)] for t in call.targets if id(t) in data_of), None)
        if written is not None and any(_on_the_way(c, output) for c in read.get(written, ())):
            line, text = _written(call.site)
            where = f"{text} (line {line})" if text else f"a .data write (line {line})" \
                if line else "a .data write"
            raise NotReplayable(
                f"{where} {'swaps' if _sets_data(call) else 'changes in place'} the values "
                "of a tensor the graph had read, unseen by "
                "autograd: where the graph saved that tensor it reads the new values, so the "
                "derivatives are taken there, not where the output was computed")
        if getattr(call.func, "__name__", "") not in ("__get__", "__set__"):
            for t in reads_of(call):  # (reading x.data is no graph's read)
                read.setdefault(id(t), []).append(call)


def _gets_data(call) -> bool:
    """``x.data`` read (a tensor sharing x's memory, which autograd does not track)."""
    return _data_access(call, "__get__")


def _sets_data(call) -> bool:
    """``x.data = …`` (x's values swapped, unseen by autograd)."""
    return _data_access(call, "__set__")


def _data_access(call, accessor: str) -> bool:
    """Whether ``call`` is the ``data`` descriptor's ``accessor`` on a tensor."""
    return getattr(call.func, "__name__", "") == accessor and getattr(
        getattr(call.func, "__self__", None), "__name__", "") == "data" and bool(call.args) \
        and isinstance(call.args[0], torch.Tensor)


def _on_the_way(call, output) -> bool:
    """Whether ``output`` is computed from a result of ``call`` (any call, without one)."""
    if not isinstance(output, torch.Tensor):
        return True
    return any(isinstance(t, torch.Tensor) and (t is output or t.grad_fn is not None
                                                and depends_on(output, t))
               for t in outs_of(call))


def _written(site) -> tuple[int | None, str]:
    """(line, its text as the cell wrote it) of a call's site (:func:`.record.call_site`)."""
    if not site:
        return None, ""
    code, line = site[0], site[2]
    text = linecache.getline(getattr(code, "co_filename", ""), line).strip() if line else ""
    return line, text


def refuse_unfollowable(calls: list, input_ids: set) -> None:
    """Steps a pure function cannot repeat: in-place writes autograd did not see, writes
    into an input, results written into ``out=``."""
    for call in calls:
        name = getattr(call.func, "__name__", "?")
        if call.targets and not call.grad_enabled:
            raise UntrackedWrite(call.func, call.targets[0])
        if any(id(t) in input_ids for t in call.targets):
            raise NotReplayable(f"{name} changed an input in place")
        if "out" in call.kwargs:
            raise NotReplayable(f"{name} wrote its result into out=")


def check_inputs_unchanged(calls: list, inputs: dict) -> None:
    """The replay uses each input's current value: it must be the one the calls saw (a
    module's parameters initialised in place in the cell are, by the time they are used)."""
    by_id = {id(t): name for name, t in inputs.items()}
    for call in calls:
        for key, (seen, _) in call.seen.items():
            if key in by_id and seen is not None and seen != version(inputs[by_id[key]]):
                raise InputChanged(f"{by_id[key]} was changed in place after the cell used it")


def constant_at(tensor: torch.Tensor, call, copies: dict, label=None) -> torch.Tensor:
    """A constant's value when the call was made (it may have changed in place since)."""
    seen = call.seen.get(id(tensor), (None, False))[0]
    if seen is None or version(tensor) == seen:
        return tensor
    copy = copies.get((id(tensor), seen))
    if copy is None:
        raise ConstantLost(tensor, label)
    return copy


def refuse_foreign(tensor: torch.Tensor, inputs: dict, label=None) -> None:
    """A constant computed from an input outside the record would hide a derivative."""
    found = _foreign(tensor, inputs, label)
    if found is not None:
        raise found


def _foreign(tensor: torch.Tensor, inputs: dict, label=None) -> ForeignTensor | None:
    if tensor.grad_fn is None:
        return None
    for name, value in inputs.items():
        if depends_on(tensor, value):
            return ForeignTensor(tensor, name, label)
    return None


def foreign_on_the_way(calls: list, output: torch.Tensor, inputs: dict,
                       label=None) -> ForeignTensor | None:
    """Why ``calls`` (those the output needs, in order) do not reach it from the inputs: the
    first tensor they read that was computed from an input elsewhere (or the output itself)."""
    made = {id(t) for t in inputs.values()}
    for call in calls:
        for tensor in reads_of(call):
            found = None if id(tensor) in made else _foreign(tensor, inputs, label)
            if found is not None:
                return found
        made.update(id(t) for t in outs_of(call))
    return _foreign(output, inputs, label)


def refuse_unrecorded_functions(output, steps: list) -> None:
    """A custom ``autograd.Function`` in the graph must be one call of the record: applied
    through a reference taken before recording (``sq = Fn.apply``), only its forward's inner
    operations were recorded, and a replay of those would not be the cell."""
    applied = {step.func.function.__name__ for step in steps
               if isinstance(step.func, FunctionApply)}
    applied |= {"BackwardHookFunction"} if any(s.func is identity for s in steps) else set()
    for name in custom_backwards(output):
        if name.removesuffix("Backward") not in applied:
            raise NotReplayable(
                f"{name} (a custom autograd.Function) was applied through a reference made "
                "before the cell (e.g. sq = Fn.apply), so the record holds only its forward's "
                "inner operations, not the function itself")


def user_functions(steps: list) -> tuple[str, ...]:
    """The custom ``autograd.Function``\\ s whose forward (user code) replaying would run."""
    return tuple(dict.fromkeys(step.func.__name__ for step in steps
                               if isinstance(step.func, FunctionApply)))


def refuse_user_code(steps: list) -> None:
    """For a caller that may not run the cell's code a second time (a custom
    ``autograd.Function``'s forward is the user's own Python)."""
    functions = user_functions(steps)
    if functions:
        raise UserCode(f"{', '.join(functions)} is a custom autograd.Function, whose forward "
                       f"is the cell's own code and {RUNS_ONCE}")



def verify(run, inputs: dict, output: torch.Tensor) -> None:
    """``run(values)`` at the original inputs must give the recorded output."""
    try:
        with torch.no_grad():
            value = run({n: t.detach() for n, t in inputs.items()})
    except Exception as error:  # noqa: BLE001 - any failure means: cannot replay
        raise NotReplayable(f"replaying failed ({type(error).__name__}: {error})") from None
    if not isinstance(value, torch.Tensor) or value.shape != output.shape:
        raise NotReplayable("the replay gave a value of another shape")
    if not close(value, output.detach()):
        raise NotReplayable("the replay gave other values than the cell (random draws "
                            "such as dropout, or state the record does not show)")


def close(value: torch.Tensor, expected: torch.Tensor) -> bool:
    """Equal up to the dtype's rounding (relative to the output's size), NaNs where NaNs."""
    if value.dtype != expected.dtype:
        value = value.to(expected.dtype)
    if not expected.is_floating_point():
        return bool(torch.equal(value, expected))
    tol = tolerances(expected.dtype).backward
    finite = torch.isfinite(expected)
    scale = float(expected[finite].abs().max()) if bool(finite.any()) else 1.0
    return bool(torch.allclose(value, expected, rtol=tol, atol=tol * max(scale, 1e-30),
                               equal_nan=True))


__all__ = ["ConstantLost", "ForeignTensor", "InputChanged", "NoRecord", "NotReached",
           "NotReplayable", "UntrackedWrite", "UserCode", "check_inputs_unchanged", "close",
           "constant_at", "foreign_on_the_way", "refuse_data_writes", "refuse_foreign",
           "refuse_record", "refuse_unfollowable", "refuse_unrecorded_functions",
           "refuse_user_code", "shape_label", "user_functions", "verify"]
