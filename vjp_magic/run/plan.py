"""A recording becomes pruned steps: the one builder both replays run.

:func:`pruned_steps` keeps the calls that read a tensor computed from the inputs (``live``
calls), then only those the output needs (the calls making a tensor it reads, and the
in-place calls writing into the memory of one before it is read), and turns each into a
:class:`~.steps.Step` whose constants are resolved to their value at the call. Whatever
cannot be followed is refused by :mod:`.refusals`. ``at_point=True`` (the analysis and the
symbolic replay): results autograd did not track (masks, indices, random draws) are
constants, as recorded; a detaching call (``detach``, ``.data``) stays a step, so each replay
decides what detaching means for its values.

Also here, the record's memory map for either replay: :func:`storage_key`,
:func:`layout_key`, :func:`tensors_by_memory`, :func:`recorded_alias`.
"""
from __future__ import annotations

import torch

from .record import outs_of, reads_of, storage_of, tensors_in
from .refusals import (
    ForeignTensor, NotReached, check_inputs_unchanged, constant_at, foreign_on_the_way,
    refuse_foreign, refuse_record, refuse_unfollowable, refuse_unrecorded_functions,
)
from .steps import DETACHING, Step, function_name, replayed_function

_NORMS = {"batch_norm", "instance_norm"}  # running statistics updated inside the call


def pruned_steps(record, inputs: dict, output, *, at_point: bool = False,
                 label=None) -> list[Step]:
    """The steps that compute ``output`` from ``inputs`` (name -> tensor), or a
    :class:`~.refusals.NotReplayable` saying why there are none. ``label`` names a tensor in
    the refusals (default: its shape)."""
    refuse_record(record, output)
    input_ids = {id(t) for t in inputs.values()}
    live_outs: dict = {}  # id(call) -> its live results (what _live_outs says), found once
    calls = _live_calls(record, input_ids, at_point, live_outs)
    if id(output) not in {key for call in calls for key in out_ids(call)}:
        needed = _needed(record.calls, output, input_ids)
        raise NotReached(foreign_on_the_way(needed, output, inputs, label))
    calls = _needed(calls, output, input_ids)
    refuse_unfollowable(calls, input_ids)
    check_inputs_unchanged(calls, inputs)
    try:
        steps = _steps(calls, _copies(record), inputs, live_outs, label)
    except ForeignTensor as found:  # made by calls that read it: name where it began
        needed = _needed(record.calls, found.tensor, input_ids)
        raise foreign_on_the_way(needed, found.tensor, inputs, label) or found from None
    refuse_unrecorded_functions(output, steps)
    return steps


def out_ids(call) -> list[int]:
    """The ids of what a call makes or changes: its result's tensors and in-place targets."""
    return [id(t) for t in outs_of(call)]


def _live_outs(call, input_ids: set, at_point: bool) -> list[int]:
    detaching = at_point and function_name(call.func) in DETACHING
    return [key for key in out_ids(call) if key not in input_ids
            and (not at_point or key in call.tracked or detaching)]


def _live_calls(record, input_ids: set, at_point: bool = False,
                live_outs: dict | None = None) -> list:
    """The calls that read a tensor computed from the inputs, in order (``at_point``: only
    tensors autograd tracked from them, and what a detaching call makes of them);
    ``live_outs`` gets each one's :func:`_live_outs` by its id."""
    live, calls = set(input_ids), []
    for call in record.calls:
        if any(id(t) in live for t in reads_of(call)):
            outs = _live_outs(call, input_ids, at_point)
            if live_outs is not None:
                live_outs[id(call)] = outs
            if outs or not at_point or call.targets:
                calls.append(call)
                live.update(outs)
    return calls


def _needed(calls: list, output: torch.Tensor, input_ids: set) -> list:
    """The calls the output needs: those making a tensor it reads, and the in-place calls
    that write into the memory of such a tensor before it is read."""
    writing = any(call.targets for call in calls)  # else no memory needs looking up
    needed, memory, kept = {id(output)}, {storage_key(output)} if writing else set(), []
    for call in reversed(calls):
        writes = {storage_key(t) for t in call.targets} - {None}
        if not any(key in needed for key in out_ids(call)) and not writes & memory:
            continue
        kept.append(call)
        for tensor in reads_of(call):
            if id(tensor) not in input_ids:
                needed.add(id(tensor))
                if writing:
                    memory.add(storage_key(tensor))
    return kept[::-1]


def storage_key(tensor: torch.Tensor) -> int | None:
    """The memory a tensor lives in (None where it has none of its own)."""
    key, size = storage_of(tensor)
    return key if size else None


def layout_key(tensor: torch.Tensor) -> tuple | None:
    """Memory, offset, shape, strides and dtype: equal for a tensor and its detached alias."""
    memory = storage_key(tensor)
    if memory is None:
        return None
    return (memory, tensor.storage_offset(), tuple(tensor.shape), tensor.stride(), tensor.dtype)


def recorded_alias(record, inputs: dict, output: torch.Tensor) -> torch.Tensor:
    """The output among the recorded tensors: itself, or (where the caller holds only a
    detached alias of it, ``y.data``) the last recorded tensor with the same memory and
    layout, preferring one autograd tracked from the inputs, then one computed from them."""
    input_ids = {id(t) for t in inputs.values()}
    made = [t for call in record.calls for t in outs_of(call)]
    if id(output) in input_ids or any(t is output for t in made):
        return output
    key = layout_key(output)
    if key is None:
        return output
    calls = _live_calls(record, input_ids, True)
    live = input_ids | {k for call in calls for k in _live_outs(call, input_ids, True)}
    tracked = input_ids | {k for call in calls for k in call.tracked}
    matches = [t for t in list(inputs.values()) + made if layout_key(t) == key]
    return ([t for t in matches if id(t) in tracked] or [t for t in matches if id(t) in live]
            or matches or [output])[-1]


def tensors_by_memory(record) -> dict[int, list]:
    """Every recorded tensor (arguments and results, once each) by :func:`storage_key`."""
    found: dict[int, list] = {}
    seen: set[int] = set()
    for call in record.calls:
        for tensor in tensors_in((call.args, call.kwargs, call.result)):
            key = storage_key(tensor)
            if key is not None and id(tensor) not in seen:
                seen.add(id(tensor))
                found.setdefault(key, []).append(tensor)
    return found


def _copies(record) -> dict:
    """(id, version) -> the copy of a tensor taken before an in-place call changed it."""
    copies: dict = {}
    for call in record.calls:
        for target, (seen, copy) in zip(call.targets, call.before):
            if copy is not None:
                copies.setdefault((id(target), seen), copy)
    return copies


def _steps(calls: list, copies: dict, inputs: dict, live_outs: dict, label) -> list[Step]:
    """The calls as steps: each tensor argument either has a value from an earlier step (or
    is an input), or is a constant, resolved to its value at the call (``live_outs``: each
    call's :func:`_live_outs`, by its id)."""
    input_ids = {id(t) for t in inputs.values()}
    live, steps = set(input_ids), []
    for call in calls:
        step = Step(replayed_function(call.func), call.args, call.kwargs, call.result,
                    call.targets, call.grad_enabled, {}, rng=call.rng,
                    live=frozenset(live_outs[id(call)]),
                    detached=frozenset(map(id, frozen_at(call, live))))
        scratch = _running_stats(call)
        for tensor in reads_of(call):
            key = id(tensor)
            if key in live:
                continue
            if key in scratch:
                step.scratch[key] = tensor
            elif any(tensor is t for t in call.targets):
                step.fresh[key] = constant_at(tensor, call, copies, label)
            else:
                refuse_foreign(tensor, inputs, label)
                step.consts[key] = constant_at(tensor, call, copies, label)
        live.update(out_ids(call))
        steps.append(step)
    return steps


def frozen_at(call, live) -> list:
    """``call``'s tensor arguments that carry the inputs (their ids in ``live``) and require
    grad now but did not at the call (``requires_grad_(False)`` around it, or not set yet):
    the cell's graph has no edge to them there, so neither has the replay's (its step gives
    them detached), and :mod:`.cuts` names the cut. Data that never requires grad, and what
    the call itself returns or writes (``requires_grad_``, in place), are not set aside."""
    made = set(out_ids(call))
    return [t for t in reads_of(call)
            if id(t) in live and id(t) not in made and t.requires_grad
            and not call.seen.get(id(t), (None, True))[1]]


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


__all__ = ["frozen_at", "layout_key", "out_ids", "pruned_steps", "recorded_alias", "storage_key",
           "tensors_by_memory"]
