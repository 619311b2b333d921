"""The replay: the cell's recorded torch calls re-applied to symbolic inputs.

Nothing of the user's code runs again. The steps come from the one builder of the replay
engine (:func:`vjp_magic.run.plan.pruned_steps`, at the recorded point: what autograd did
not track is a constant, read as it was when it was used, random draws included; the
branches the cell took are the ones replayed), and its refusals are worded here for the
reader. :class:`SymbolicInterpreter` runs the steps with :class:`SymTensor` values: its
``call_function`` maps each recorded call to its SymPy rule (:mod:`.calls`).
"""
from __future__ import annotations

import numpy as np
import torch

from ..core.errors import unreached
from ..run.plan import out_ids, pruned_steps, recorded_alias, storage_key, tensors_by_memory
from ..run.record import tensors_in
from ..run.replay import refuse_subclasses
from ..run.refusals import ForeignTensor, NotReached, NotReplayable, UntrackedWrite, namespace_label
from ..run.steps import Interpreter, Step, identity
from .calls import call_name, replay_call
from .deadline import spend
from .errors import RuleBug, Unavailable, Unsupported
from .tensor import SymTensor


class _Poison:
    """Why a tensor has no symbolic value; raised only if the output needs that value."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException):
        self.error = error


class SymbolicInterpreter(Interpreter):
    """Runs the steps with symbolic values. What a step cannot compute (no rule, a bug in
    one) becomes a :class:`_Poison` on what it makes, raised only where a later step or the
    output reads it. ``sharing`` (memory -> recorded tensors) and ``label`` name the tensors
    a write into shared memory leaves without a value."""

    def __init__(self, steps: list, input_ids: set, sharing: dict, label):
        super().__init__(steps)
        self.input_ids, self.sharing, self.label = input_ids, sharing, label

    def run_step(self, step: Step, env: dict) -> None:
        spend()
        try:
            super().run_step(step, env)
        except (Unsupported, Unavailable, RuleBug) as error:
            self._poison(step.live, error, env)
        except Exception as error:  # noqa: BLE001 - reported only if the output needs it
            self._poison(step.live, RuleBug(call_name(step.func)[0], error), env)

    def fetch(self, step: Step, tensor: torch.Tensor, env: dict):
        found = env.get(id(tensor))
        if isinstance(found, _Poison):
            raise found.error
        return super().fetch(step, tensor, env)

    def call_function(self, step: Step, args: tuple, kwargs: dict):
        """The SymPy value of one step (its rule from :mod:`.calls`)."""
        if step.func is identity:  # torch's module-hook marker: the hooks may change gradients
            raise Unsupported("the custom autograd.Function BackwardHookFunction")
        return replay_call(step.func, args, kwargs)

    def store(self, step: Step, value, env: dict) -> None:
        name, display = call_name(step.func)
        if not step.targets:
            self._assign(step.result, value, step.live, name, env)
            return
        for target in step.targets:
            if id(target) in step.live:
                self._set(target, value, name, env)
                self._poison_sharers(target, display, env)

    def _assign(self, result, value, live: frozenset, name: str, env: dict) -> None:
        if isinstance(result, torch.Tensor):
            if id(result) in live:
                self._set(result, value, name, env)
        elif isinstance(result, (tuple, list)) and isinstance(value, (tuple, list)) \
                and len(result) == len(value):
            for part, part_value in zip(result, value):
                self._assign(part, part_value, live, name, env)
        else:
            self._poison([id(t) for t in tensors_in(result) if id(t) in live],
                         RuleBug(name, TypeError(f"{type(value).__name__} for the result")), env)

    def _set(self, tensor: torch.Tensor, value, name: str, env: dict) -> None:
        if id(tensor) in self.input_ids:  # x.requires_grad_(), x.to(x.dtype): x itself
            return
        if not isinstance(value, SymTensor) or tuple(value.shape) != tuple(tensor.shape):
            shape = tuple(value.shape) if isinstance(value, SymTensor) else type(value).__name__
            self._poison([id(tensor)], RuleBug(name, ValueError(
                f"gave {shape} for a result of shape {tuple(tensor.shape)}")), env)
            return
        env[id(tensor)] = SymTensor(value.array, tensor.dtype)

    def _poison(self, keys, error: BaseException, env: dict) -> None:
        for key in keys:
            if key not in self.input_ids:
                env[key] = _Poison(error)

    def _poison_sharers(self, target: torch.Tensor, display: str, env: dict) -> None:
        """Views of a tensor changed in place (and what it is a view of) change with it."""
        key = storage_key(target)
        for tensor in self.sharing.get(key, []) if key is not None else []:
            if tensor is not target:
                self._poison([id(tensor)], Unsupported(
                    f"{display} on a tensor that shares memory with {self.label(tensor)}",
                    "is not supported (views changed in place)"), env)


class SymbolicReplay:
    """The recorded calls re-applied to symbolic values: :meth:`output` gives the output's
    symbolic entries, or raises :class:`Unavailable` (or :class:`RuleBug`) saying why not.
    The inputs are ``symbols`` (by name); ``namespace`` names tensors in the messages;
    ``output_source`` is the expression evaluated (``%jacobian``) or None (a cell)."""

    def __init__(self, result, record, symbols, namespace, output_source):
        self.result, self.record, self.namespace = result, record, namespace or {}
        self.symbols, self.output_source = symbols, output_source
        self.inputs = {name: item.tensor for name, item in result.inputs.items()}
        self.made = {key for call in record.calls for key in out_ids(call)}

    def output(self) -> np.ndarray:
        """Replay the steps the output needs; return its symbolic entries."""
        output = recorded_alias(self.record, self.inputs, self.result.output)
        env = {id(t): SymTensor(self.symbols[name], t.dtype, name=name)
               for name, t in self.inputs.items()}
        if id(output) in env:  # the output is an input
            return self._value(env[id(output)], output)
        try:
            steps = pruned_steps(self.record, self.inputs, output, at_point=True,
                                 label=self._label)
            refuse_subclasses(self.inputs, steps)  # its formulas would be torch's, not its own
        except NotReplayable as refusal:
            raise Unavailable(self._reason(refusal, output)) from None
        input_ids = {id(t) for t in self.inputs.values()}
        SymbolicInterpreter(steps, input_ids, tensors_by_memory(self.record),
                            self._label).run(env)
        return self._value(env.get(id(output)), output)

    def _value(self, value, output: torch.Tensor) -> np.ndarray:
        name = self.result.output_name
        if isinstance(value, _Poison):
            error = value.error
            raise error if isinstance(error, RuleBug) else Unavailable(str(error))
        if not isinstance(value, SymTensor):
            raise Unavailable(self._independent())
        if tuple(value.shape) != tuple(output.shape):
            raise Unavailable(f"the replay gave {name} the shape {tuple(value.shape)}, not "
                              f"{tuple(output.shape)}")
        return value.array

    def _reason(self, refusal: NotReplayable, output: torch.Tensor) -> str:
        """A refusal in the reader's terms: where to compute what the record does not hold."""
        if isinstance(refusal, NotReached):
            if id(output) not in self.made:
                source = self.output_source
                if source is not None and source.isidentifier():
                    magic = "%hessian" if getattr(self.result, "order", 1) == 2 \
                        else "%jacobian"  # (the line the student typed)
                    return (f"{source} is a stored tensor, computed before this line; give "
                            f"the output as an expression, e.g. {magic} --symbolic "
                            "(x**2).sum() wrt x")
                return f"{self.result.output_name} was computed {self._elsewhere()}"
            if refusal.cause is None:
                return self._independent()
            refusal = refusal.cause
        if isinstance(refusal, ForeignTensor):
            tensor, label = refusal.tensor, self._label(refusal.tensor)
            if id(tensor) in self.made:
                return (f"{label} comes from {type(tensor.grad_fn).__name__}, which the "
                        "symbolic replay cannot follow")
            return f"{label} was computed from the inputs {self._elsewhere()}"
        if isinstance(refusal, UntrackedWrite):
            return (f"{call_name(refusal.func)[1]} under torch.no_grad changed "
                    f"{self._label(refusal.tensor)}, which depends on the inputs")
        return str(refusal)

    def _independent(self) -> str:
        return unreached(self.result.output_name, ", ".join(self.result.inputs))

    def _elsewhere(self) -> str:
        if self.output_source is None:
            return "in an earlier cell; put its computation in this cell to see the formula"
        return "before this line; put its computation in the expression to see the formula"

    def _label(self, tensor: torch.Tensor) -> str:
        return namespace_label(self.namespace)(tensor)


__all__ = ["SymbolicInterpreter", "SymbolicReplay"]
