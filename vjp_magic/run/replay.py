"""The cell's recorded torch calls as a pure function of its inputs.

:func:`replayable` turns an :class:`~.record.OpRecord` into a :class:`Replay`:
``replay(x=..., w=...)`` re-executes every recorded call the output needs, with each tensor
argument substituted by identity (the inputs, and earlier calls' results, by their new
values; every other tensor is a constant, read as it was when the call was made). The
cell's Python control flow is the branch it took (the record is a trace). A custom
``autograd.Function`` is replayed through its ``apply`` (its own backward is used).

A replay is built only if it reproduces the recorded output at the original inputs;
otherwise (or when a step cannot be followed: in-place writes under ``no_grad``, inputs
changed in place, tensors computed from the inputs outside the record …) the answer is
None and :func:`build` raises :class:`NotReplayable` saying why. Nothing the user holds is
changed by a replay.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..core.tagging import custom_backwards, depends_on
from ..core.tolerances import tolerances
from .record import FunctionApply, storage_of, tensors_in, version
from .steps import Step, cast_step, execute, generators_kept, identity, replayed_function

_NORMS = {"batch_norm", "instance_norm"}  # running statistics updated inside the call
_DETACHING = {"detach", "detach_", "data"}


class NotReplayable(Exception):
    """Why the record cannot be replayed as a pure function."""


class InputChanged(NotReplayable):
    """An input was changed in place after the cell used it (an optimiser step)."""


@dataclass(eq=False)
class Replay:
    """``replay(**tensors) -> output``: the recorded calls re-executed on new input values.

    ``dtype`` (see :meth:`with_dtype`) casts the inputs and every floating constant.
    """

    names: dict  # input name -> id of the recorded tensor
    steps: list
    output_id: int
    dtype: torch.dtype | None = None

    def __call__(self, **tensors) -> torch.Tensor:
        return self.run(tensors)

    def run(self, tensors: dict, overrides: dict | None = None) -> torch.Tensor:
        """The output for input values ``tensors`` (by name); ``overrides`` replaces
        constants by the id of the recorded tensor (e.g. one sample of a batch)."""
        env = dict(overrides or {})
        for name, key in self.names.items():
            env[key] = self._cast(tensors[name])
        with generators_kept(self.steps):
            for step in self.steps:
                execute(step, env)
        return env[self.output_id]

    def with_dtype(self, dtype: torch.dtype) -> Replay:
        """The same replay computing in ``dtype`` (e.g. float64 for finite differences)."""
        steps = [cast_step(step, dtype) for step in self.steps]
        return replace(self, steps=steps, dtype=dtype)

    def constants(self) -> dict:
        """Every constant tensor the steps read: id of the recorded tensor -> its value."""
        found: dict = {}
        for step in self.steps:
            found.update(step.consts)
        return found

    def detaching(self) -> tuple[str, ...]:
        """The steps autograd treats as constants: ``detach``, ``.data``, calls made under
        ``torch.no_grad`` (named once each)."""
        found = []
        for step in self.steps:
            name = getattr(step.func, "__name__", "?")
            if name in ("__get__", "__set__"):
                name = getattr(getattr(step.func, "__self__", None), "__name__", name)
            if name in _DETACHING:
                found.append(name)
            elif not step.grad_enabled:
                found.append(f"{name} under torch.no_grad")
        return tuple(dict.fromkeys(found))

    def _cast(self, tensor):
        if self.dtype is None or not isinstance(tensor, torch.Tensor) \
                or not tensor.is_floating_point() or tensor.dtype == self.dtype:
            return tensor
        return tensor.to(self.dtype)


def replayable(record, inputs: dict, output, *, verify: bool = True) -> Replay | None:
    """The record as a pure function of ``inputs`` (name -> tensor) giving ``output``, or
    None where it cannot be replayed faithfully (:func:`build` says why)."""
    try:
        return build(record, inputs, output, verify=verify)
    except NotReplayable:
        return None


def build(record, inputs: dict, output, *, verify: bool = True,
          at_point: bool = False) -> Replay:
    """:func:`replayable`, raising :class:`NotReplayable` with the reason instead of None.
    ``verify=False`` skips the run at the original inputs: only for a caller that compares
    the replay's values with the output itself. ``at_point=True``: a replay valid at the
    recorded input values only (what the analysis differentiates): results autograd did not
    track (masks, indices, random draws, ``detach``) are constants, as recorded."""
    if record is None:
        raise NotReplayable("the cell's operations were not recorded")
    if record.failed is not None:
        raise NotReplayable(f"the record is incomplete: {record.failed}")
    if not isinstance(output, torch.Tensor):
        raise NotReplayable("the output is not a tensor")
    ids = {name: id(t) for name, t in inputs.items()}
    calls = _live_calls(record, set(ids.values()), at_point)
    if id(output) not in {key for call in calls for key in _out_ids(call)}:
        raise NotReplayable("the output was not computed by the recorded operations from "
                            "the inputs")
    calls = _needed(calls, output, set(ids.values()))
    _refuse_unfollowable(calls, set(ids.values()))
    _check_inputs_unchanged(calls, inputs)
    steps = _steps(calls, _copies(record), inputs)
    _refuse_unrecorded_functions(output, steps)
    replay = Replay(ids, steps, id(output))
    if verify:
        _verify(replay, inputs, output)
    return replay


def _refuse_unrecorded_functions(output, steps: list) -> None:
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


def runs_user_code(replay: Replay) -> bool:
    """Whether replaying calls the user's own Python (a custom Function's forward)."""
    return bool(user_functions(replay))


def user_functions(replay: Replay) -> tuple[str, ...]:
    """The custom ``autograd.Function``\\ s whose forward a replay would run again."""
    return tuple(dict.fromkeys(step.func.__name__ for step in replay.steps
                               if isinstance(step.func, FunctionApply)))


def _check_inputs_unchanged(calls: list, inputs: dict) -> None:
    """The replay uses each input's current value: it must be the one the calls saw (a
    module's parameters initialised in place in the cell are, by the time they are used)."""
    by_id = {id(t): name for name, t in inputs.items()}
    for call in calls:
        for key, (seen, _) in call.seen.items():
            if key in by_id and seen is not None and seen != version(inputs[by_id[key]]):
                raise InputChanged(f"{by_id[key]} was changed in place after the cell used it")


def _out_ids(call) -> list[int]:
    return [id(t) for t in tensors_in(call.result) + list(call.targets)]


def _live_calls(record, input_ids: set, at_point: bool = False) -> list:
    """The calls that read a tensor computed from the inputs, in order (``at_point``: only
    tensors autograd tracked from them)."""
    live, calls = set(input_ids), []
    for call in record.calls:
        if any(id(t) in live for t in tensors_in((call.args, call.kwargs))):
            outs = [key for key in _out_ids(call) if key not in input_ids
                    and (not at_point or key in call.tracked)]
            if outs or not at_point or call.targets:
                calls.append(call)
                live.update(outs)
    return calls


def _refuse_unfollowable(calls: list, input_ids: set) -> None:
    """Steps a pure function cannot repeat: in-place writes autograd did not see, writes
    into an input, results written into ``out=``."""
    for call in calls:
        name = getattr(call.func, "__name__", "?")
        if call.targets and not call.grad_enabled:
            raise NotReplayable(f"{name} changed a tensor computed from the inputs in place "
                                "under torch.no_grad")
        if any(id(t) in input_ids for t in call.targets):
            raise NotReplayable(f"{name} changed an input in place")
        if "out" in call.kwargs:
            raise NotReplayable(f"{name} wrote its result into out=")


def _needed(calls: list, output: torch.Tensor, input_ids: set) -> list:
    """The calls the output needs: those making a tensor it reads, and the in-place calls
    that write into the memory of such a tensor before it is read."""
    needed, memory, kept = {id(output)}, {storage_key(output)}, []
    for call in reversed(calls):
        writes = {storage_key(t) for t in call.targets} - {None}
        if not any(key in needed for key in _out_ids(call)) and not writes & memory:
            continue
        kept.append(call)
        for tensor in tensors_in((call.args, call.kwargs)):
            if id(tensor) not in input_ids:
                needed.add(id(tensor))
                memory.add(storage_key(tensor))
    return kept[::-1]


def storage_key(tensor: torch.Tensor) -> int | None:
    """The memory a tensor lives in (None where it has none of its own)."""
    key, size = storage_of(tensor)
    return key if size else None


def _copies(record) -> dict:
    """(id, version) -> the copy of a tensor taken before an in-place call changed it."""
    copies: dict = {}
    for call in record.calls:
        for target, (seen, copy) in zip(call.targets, call.before):
            if copy is not None:
                copies.setdefault((id(target), seen), copy)
    return copies


def _steps(calls: list, copies: dict, inputs: dict) -> list[Step]:
    """The calls as steps: each tensor argument either has a value from an earlier step (or
    is an input), or is a constant, resolved to its value at the call."""
    live, steps = {id(t) for t in inputs.values()}, []
    for call in calls:
        step = Step(replayed_function(call.func), call.args, call.kwargs, call.result,
                     call.targets, call.grad_enabled, {}, rng=call.rng)
        scratch = _running_stats(call)
        for tensor in tensors_in((call.args, call.kwargs)):
            key = id(tensor)
            if key in live:
                continue
            if key in scratch:
                step.scratch[key] = tensor
            elif any(tensor is t for t in call.targets):
                step.fresh[key] = _resolve(tensor, call, copies)
            else:
                _refuse_foreign(tensor, inputs)
                step.consts[key] = _resolve(tensor, call, copies)
        live.update(_out_ids(call))
        steps.append(step)
    return steps


def _running_stats(call) -> dict:
    """``batch_norm(..., training=True)`` updates its running statistics in place; the replay
    gives it throwaway ones (in training mode the output does not read them)."""
    if getattr(call.func, "__name__", "") not in _NORMS:
        return {}
    training = call.kwargs.get("training", call.kwargs.get("use_input_stats"))
    if training is None and len(call.args) > 5:
        training = call.args[5]
    stats = list(call.args[1:3]) + [call.kwargs.get(k) for k in ("running_mean", "running_var")]
    if not training:
        return {}
    return {id(t): t for t in stats if isinstance(t, torch.Tensor)}


def _resolve(tensor: torch.Tensor, call, copies: dict) -> torch.Tensor:
    """A constant's value when the call was made (it may have changed in place since)."""
    seen = call.seen.get(id(tensor), (None, False))[0]
    if seen is None or version(tensor) == seen:
        return tensor
    copy = copies.get((id(tensor), seen))
    if copy is None:
        raise NotReplayable(f"a tensor of shape {tuple(tensor.shape)} was changed in place "
                            "after the cell used it, and its earlier value was not kept")
    return copy


def _refuse_foreign(tensor: torch.Tensor, inputs: dict) -> None:
    """A constant computed from an input outside the record would hide a derivative."""
    if tensor.grad_fn is None:
        return
    for name, value in inputs.items():
        if depends_on(tensor, value):
            raise NotReplayable(f"a tensor of shape {tuple(tensor.shape)} was computed from "
                                f"{name} outside the recorded operations (in an earlier cell?)")


def _verify(replay: Replay, inputs: dict, output: torch.Tensor) -> None:
    """The replay at the original inputs must give the recorded output."""
    try:
        with torch.no_grad():
            value = replay.run({n: t.detach() for n, t in inputs.items()})
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


__all__ = ["InputChanged", "NotReplayable", "Replay", "build", "close", "replayable"]
