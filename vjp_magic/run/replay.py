"""The cell's recorded torch calls as a pure function of its inputs.

:func:`replayable` turns an :class:`~.record.OpRecord` into a :class:`Replay`:
``replay(x=..., w=...)`` re-executes every recorded call the output needs, with each tensor
argument substituted by identity (the inputs, and earlier calls' results, by their new
values; every other tensor is a constant, read as it was when the call was made). The
cell's Python control flow is the branch it took (the record is a trace). A custom
``autograd.Function`` is replayed through its ``apply`` (its own backward is used).

The engine is shared with the symbolic replay: :mod:`.plan` builds the pruned steps,
:mod:`.refusals` says why there are none, :class:`~.steps.Interpreter` runs them (here with
torch values).

A replay is built only if it reproduces the recorded output at the original inputs;
otherwise (or when a step cannot be followed: in-place writes under ``no_grad``, inputs
changed in place, tensors computed from the inputs outside the record …) the answer is
None and :func:`build` raises :class:`NotReplayable` saying why. Nothing the user holds is
changed by a replay.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..core.quiet import subclass_code
from ..core.validation import a_or_an
from . import refusals
from .plan import pruned_steps, storage_key
from .refusals import InputChanged, NotReplayable, UserCode, close
from .record import FunctionApply, tensors_in
from .steps import DETACHING, Interpreter, cast_step


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

    def run(self, tensors: dict, overrides: dict | None = None,
            interpreter: Interpreter | None = None) -> torch.Tensor:
        """The output for input values ``tensors`` (by name); ``overrides`` replaces
        constants by the id of the recorded tensor (e.g. one sample of a batch);
        ``interpreter``: one over these steps that also keeps what it needs (else a plain one)."""
        env = dict(overrides or {})
        for key, names in self.slots().items():  # names of one tensor: the first one given
            name = next((n for n in names if n in tensors), names[0])
            env[key] = self._cast(tensors[name])
        return (interpreter or Interpreter(self.steps)).run(env)[self.output_id]

    def slots(self) -> dict:
        """id of a recorded input -> the names that hold it (several where one tensor was
        named twice: ``b = a``, a layer's parameters under the model's name too)."""
        found: dict = {}
        for name, key in self.names.items():
            found.setdefault(key, []).append(name)
        return found

    def with_dtype(self, dtype: torch.dtype) -> Replay:
        """The same replay computing in ``dtype`` (e.g. float64 for finite differences);
        :class:`NotReplayable` where a custom Function's forward drew random numbers in the
        cell: from the same generator states it would draw others in another dtype
        (``rand_like`` of float64 is not that of float32), so its replay is not the cell's."""
        drew = [step.name for step in self.steps
                if isinstance(step.func, FunctionApply) and step.rng is not None
                and any(t.is_floating_point() and t.dtype != dtype
                        for t in tensors_in(step.result))]
        if drew:
            raise NotReplayable(
                f"the forward of {drew[0].removesuffix('.apply')} (a custom autograd.Function) "
                f"makes random draws, which a {str(dtype).removeprefix('torch.')} replay "
                "would make anew (other numbers), so it is not the cell's function there")
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
            if step.name in DETACHING:
                found.append(step.name)
            elif not step.grad_enabled:
                found.append(f"{step.name} under torch.no_grad")
        return tuple(dict.fromkeys(found))

    def _cast(self, tensor):
        if self.dtype is None or not isinstance(tensor, torch.Tensor) \
                or not tensor.is_floating_point() or tensor.dtype == self.dtype:
            return tensor
        return tensor.to(self.dtype)


def distinct(inputs: dict) -> dict:
    """``inputs`` (name -> tensor) with each tensor once, under its first name: what a
    replay's leaves, and every gradient taken through it, are made for (one tensor is one
    leaf to autograd, whatever its names). :func:`aliases` maps every name back."""
    seen: set = set()
    return {name: t for name, t in inputs.items()
            if not (id(t) in seen or seen.add(id(t)))}


def aliases(inputs: dict) -> dict:
    """name -> the first name holding the same tensor (itself where it is the first): the
    names a result computed for :func:`distinct` inputs is copied back to."""
    first: dict = {}
    return {name: first.setdefault(id(t), name) for name, t in inputs.items()}


def one_tensor_names(inputs: dict) -> list[list[str]]:
    """The groups of two or more names that hold one tensor, in order."""
    groups: dict = {}
    for name, canonical in aliases(inputs).items():
        groups.setdefault(canonical, []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def replayable(record, inputs: dict, output, *, verify: bool = True,
               user_code: bool = True) -> Replay | None:
    """The record as a pure function of ``inputs`` (name -> tensor) giving ``output``, or
    None where it cannot be replayed faithfully (:func:`build` says why)."""
    try:
        return build(record, inputs, output, verify=verify, user_code=user_code)
    except NotReplayable:
        return None


def build(record, inputs: dict, output, *, verify: bool = True, at_point: bool = False,
          user_code: bool = True, label=None) -> Replay:
    """:func:`replayable`, raising :class:`NotReplayable` with the reason instead of None.
    ``verify=False`` skips the run at the original inputs: only for a caller that compares
    the replay's values with the output itself. ``at_point=True``: a replay valid at the
    recorded input values only (what the analysis differentiates): results autograd did not
    track (masks, indices, random draws) are constants, as recorded; ``detach`` is replayed.
    ``user_code=False``: refused (:class:`~.refusals.UserCode`) where replaying would run a
    custom Function's forward again (checked before the verifying run would run it).
    ``label`` names a tensor in the refusals (:func:`.refusals.namespace_label`)."""
    steps = pruned_steps(record, inputs, output, at_point=at_point, label=label)
    refuse_subclasses(inputs, steps)
    if not user_code:
        refusals.refuse_user_code(steps)
    replay = Replay({name: id(t) for name, t in inputs.items()}, steps, id(output))
    if verify:
        refusals.verify(replay.run, inputs, output)
    return replay


def refuse_subclasses(inputs: dict, steps: list) -> None:
    """:class:`NotReplayable` where an input or a tensor a step reads or makes is a tensor
    subclass with its own ``__torch_function__`` or ``__torch_dispatch__`` (the user's code):
    a replay would run that code again, or, with it turned off (the analysis runs none), run
    torch's operation where the cell ran the subclass's, which may differ in its values or
    its graph (a straight-through estimator). The cell's own graph is what the cell built."""
    for kind in _classes(inputs, steps):
        code = subclass_code(kind)
        if code is not None:
            raise NotReplayable(
                f"it holds {a_or_an(kind.__name__)}, a tensor subclass with its own {code}, "
                "which a replay would either run again or leave out")


def _classes(inputs: dict, steps: list) -> set:
    """The classes of the inputs and of every value the steps read and make (arguments and
    results, and the items of lists, tuples and dicts among them): read by type, once."""
    found = set(map(type, inputs.values()))
    containers = (list, tuple, dict)
    for step in steps:
        result = step.result
        results = result.values() if type(result) is dict else \
            result if type(result) in containers else (result,)
        for values in (step.args, step.kwargs.values() if step.kwargs else (), results):
            for value in values:
                kind = type(value)
                found.add(kind)
                if kind in containers:
                    found.update(map(type, tensors_in(value)))
    return found


def runs_user_code(replay: Replay) -> bool:
    """Whether replaying calls the user's own Python (a custom Function's forward)."""
    return bool(user_functions(replay))


def user_functions(replay: Replay) -> tuple[str, ...]:
    """The custom ``autograd.Function``\\ s whose forward a replay would run again."""
    return refusals.user_functions(replay.steps)


__all__ = ["InputChanged", "NotReplayable", "Replay", "UserCode", "aliases", "build", "close",
           "distinct", "one_tensor_names", "replayable", "runs_user_code", "storage_key",
           "user_functions"]
