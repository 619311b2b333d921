"""The replay: the cell's recorded torch calls re-applied to symbolic inputs.

Nothing of the user's code runs again. A tensor the cell computed from the inputs gets the
symbolic value of the same computation; every other tensor is a constant with the value it had
when it was used (random draws included); the branches the cell took are the ones replayed.
"""
from __future__ import annotations

import numpy as np
import torch

from ..core.tagging import depends_on
from ..run.record import tensors_in, version
from .calls import DETACHING, call_name, replay_call
from .deadline import spend
from .errors import RuleBug, Unavailable, Unsupported
from .tensor import SymTensor


class _Poison:
    """Why a tensor has no symbolic value; raised only if the output needs that value."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException):
        self.error = error


class Replay:
    """The recorded calls re-applied to symbolic values.

    The inputs are symbols. A call's result (or the tensor it changed in place) that autograd
    tracked and that came from symbolic values gets the symbolic value of the same call;
    every other tensor is a constant, read as it was when the call was made (from the copy
    the record kept, if it changed in place later). What cannot be followed is remembered as
    a :class:`_Poison` and reported only if the output depends on it.
    """

    def __init__(self, result, record, symbols, namespace, output_source):
        self.result, self.record, self.namespace = result, record, namespace or {}
        self.output_source = output_source
        self.values: dict[int, SymTensor | _Poison] = {}
        self.inputs: dict[int, torch.Tensor] = {}
        for name, item in result.inputs.items():
            self.values[id(item.tensor)] = SymTensor(symbols[name], item.tensor.dtype, name=name)
            self.inputs[id(item.tensor)] = item.tensor
        self.copies: dict[tuple, torch.Tensor] = {}
        self.made: set[int] = set()  # tensors the record produced or changed
        for call in record.calls:
            for target, (seen, copy) in zip(call.targets, call.before):
                if copy is not None:
                    self.copies.setdefault((id(target), seen), copy)
            self.made.update(id(t) for t in tensors_in(call.result) + list(call.targets))
        self._storages: dict[int, list] | None = None
        self._foreign: dict[int, str | None] = {}

    def output(self) -> np.ndarray:
        """Replay every call; return the output's symbolic entries."""
        for call in self.record.calls:
            spend()
            self._step(call)
        return self._output_value()

    def _step(self, call) -> None:
        name, display = call_name(call.func)
        args = tensors_in((call.args, call.kwargs))
        live = [t for t in args if id(t) in self.values]
        outs = tensors_in(call.result) + list(call.targets)
        if name in DETACHING and live:
            self._poison(outs, Unsupported(display,
                                           "is not supported (it detaches from the graph)"))
            return
        if call.targets and not call.grad_enabled:
            self._untracked_write(call, display)
            return
        tracked = [t for t in outs if id(t) in call.tracked and t.is_floating_point()]
        if not tracked:
            return  # constants: the numbers the cell computed
        poisons = [self.values[id(t)] for t in live if isinstance(self.values[id(t)], _Poison)]
        if poisons or not live:
            reason = poisons[0].error if poisons else self._foreign_among(call, args)
            if reason is not None:
                self._poison(tracked, reason)
            return
        try:
            new_args, new_kwargs = self._substitute(call)
            value = replay_call(call.func, new_args, new_kwargs)
        except (Unsupported, Unavailable, RuleBug) as error:
            self._poison(tracked, error)
            return
        except Exception as error:  # noqa: BLE001 - reported only if the output needs it
            self._poison(tracked, RuleBug(name, error))
            return
        self._store(call, value, {id(t) for t in tracked}, name, display)

    # -- values in
    def _substitute(self, call) -> tuple[tuple, dict]:
        def swap(value, depth=0):
            if isinstance(value, torch.Tensor):
                known = self.values.get(id(value))
                return known if known is not None else self._constant(value, call)
            if depth < 4 and type(value) in (list, tuple):
                return type(value)(swap(v, depth + 1) for v in value)
            return value

        return tuple(swap(a) for a in call.args), {k: swap(v) for k, v in call.kwargs.items()}

    def _constant(self, tensor: torch.Tensor, call) -> torch.Tensor:
        """The tensor's value when the call was made (it may have changed in place since)."""
        seen, tracked = call.seen.get(id(tensor), (None, False))
        reason = self._foreign_reason(tensor) if tracked else None
        if reason is not None:
            raise Unavailable(reason)
        if seen is None or version(tensor) == seen:
            return tensor
        copy = self.copies.get((id(tensor), seen))
        if copy is None:
            raise Unavailable(f"{self._label(tensor)} was changed in place after the cell used "
                              "it, and its earlier value was not kept")
        return copy

    def _foreign_among(self, call, tensors) -> BaseException | None:
        """Why a call's arguments that required grad then cannot be constants, if so."""
        for tensor in tensors:
            reason = self._foreign_reason(tensor) \
                if call.seen.get(id(tensor), (None, False))[1] else None
            if reason is not None:
                return Unavailable(reason)
        return None

    def _foreign_reason(self, tensor: torch.Tensor) -> str | None:
        """Why a tensor computed from the inputs outside the record cannot be a constant."""
        if tensor.grad_fn is None or id(tensor) in self.values:
            return None
        if id(tensor) not in self._foreign:
            reason = None
            if any(depends_on(tensor, x) for x in self.inputs.values()):
                label = self._label(tensor)
                if id(tensor) in self.made:
                    reason = (f"{label} comes from {type(tensor.grad_fn).__name__}, which "
                              "the symbolic replay cannot follow")
                else:
                    reason = f"{label} was computed from the inputs {self._elsewhere()}"
            self._foreign[id(tensor)] = reason
        return self._foreign[id(tensor)]

    def _elsewhere(self) -> str:
        if self.output_source is None:
            return "in an earlier cell; put its computation in this cell to see the formula"
        return "before this line; put its computation in the expression to see the formula"

    def _label(self, tensor: torch.Tensor) -> str:
        for name, value in self.namespace.items():
            if value is tensor and not name.startswith("_"):
                return name
        return f"a tensor of shape {tuple(tensor.shape)}"

    # -- values out
    def _store(self, call, value, tracked: set[int], name: str, display: str) -> None:
        if call.targets:
            for target in call.targets:
                if id(target) in tracked:
                    self._set(target, value, name)
                    self._poison_sharers(target, display)
        else:
            self._assign(call.result, value, tracked, name)

    def _assign(self, result, value, tracked: set[int], name: str) -> None:
        if isinstance(result, torch.Tensor):
            if id(result) in tracked:
                self._set(result, value, name)
        elif isinstance(result, (tuple, list)) and isinstance(value, (tuple, list)) \
                and len(result) == len(value):
            for part, part_value in zip(result, value):
                self._assign(part, part_value, tracked, name)
        else:
            self._poison([t for t in tensors_in(result) if id(t) in tracked],
                         RuleBug(name, TypeError(f"{type(value).__name__} for the result")))

    def _set(self, tensor: torch.Tensor, value, name: str) -> None:
        if id(tensor) in self.inputs:  # x.requires_grad_(), x.to(x.dtype): x itself
            return
        if not isinstance(value, SymTensor) or tuple(value.shape) != tuple(tensor.shape):
            shape = tuple(value.shape) if isinstance(value, SymTensor) else type(value).__name__
            self._poison([tensor], RuleBug(name, ValueError(
                f"gave {shape} for a result of shape {tuple(tensor.shape)}")))
            return
        self.values[id(tensor)] = SymTensor(value.array, tensor.dtype)

    def _poison(self, tensors, error: BaseException) -> None:
        for tensor in tensors:
            if id(tensor) not in self.inputs:
                self.values[id(tensor)] = _Poison(error)

    def _untracked_write(self, call, display: str) -> None:
        """An in-place change under ``torch.no_grad`` (an optimizer step …): autograd does not
        see it, so a tensor that depends on the inputs has no formula afterwards."""
        for target in call.targets:
            for tensor in [target] + self._sharing(target):
                if id(tensor) in self.values and id(tensor) not in self.inputs:
                    self._poison([tensor], Unavailable(
                        f"{display} under torch.no_grad changed {self._label(tensor)}, which "
                        "depends on the inputs"))

    def _poison_sharers(self, target: torch.Tensor, display: str) -> None:
        """Views of a tensor changed in place (and what it is a view of) change with it."""
        for tensor in self._sharing(target):
            self._poison([tensor], Unsupported(
                f"{display} on a tensor that shares memory with {self._label(tensor)}",
                "is not supported (views changed in place)"))

    def _sharing(self, target: torch.Tensor) -> list:
        """Other recorded tensors on the same memory as ``target``."""
        if self._storages is None:
            self._storages = {}
            seen: set[int] = set()
            for call in self.record.calls:
                for tensor in tensors_in((call.args, call.kwargs, call.result)):
                    key = _storage(tensor)
                    if key is not None and id(tensor) not in seen:
                        seen.add(id(tensor))
                        self._storages.setdefault(key, []).append(tensor)
        key = _storage(target)
        return [t for t in self._storages.get(key, []) if t is not target] if key else []

    def _output_tensor(self) -> torch.Tensor:
        """The output among the recorded tensors: itself, or (where the result keeps only a
        detached alias of it) the last recorded tensor on the same memory with the same layout,
        preferring one with a symbolic value (``y.data`` is such a tensor too)."""
        output = self.result.output
        if id(output) in self.values or id(output) in self.made:
            return output
        key = _layout_key(output)
        if key is None:
            return output
        candidates = list(self.inputs.values()) + [
            t for call in self.record.calls for t in tensors_in(call.result) + list(call.targets)]
        matches = [t for t in candidates if _layout_key(t) == key]
        symbolic = [t for t in matches if isinstance(self.values.get(id(t)), SymTensor)]
        poisoned = [t for t in matches if id(t) in self.values]
        return (symbolic or poisoned or matches or [output])[-1]

    def _output_value(self) -> np.ndarray:
        output, name = self._output_tensor(), self.result.output_name
        value = self.values.get(id(output))
        if isinstance(value, _Poison):
            error = value.error
            raise error if isinstance(error, RuleBug) else Unavailable(str(error))
        if isinstance(value, SymTensor):
            if tuple(value.shape) != tuple(output.shape):
                raise Unavailable(f"the replay gave {name} the shape {tuple(value.shape)}, not "
                                  f"{tuple(output.shape)}")
            return value.array
        reason = self._foreign_reason(output)
        if id(output) not in self.made:
            source = self.output_source
            if source is not None and source.isidentifier():
                raise Unavailable(f"{source} is a stored tensor, computed before this line; give "
                                  "the output as an expression, e.g. "
                                  "%jacobian --symbolic (x**2).sum() wrt x")
            raise Unavailable(f"{name} was computed {self._elsewhere()}")
        if reason is not None:
            raise Unavailable(reason)
        raise Unavailable(f"in the replay, {name} does not depend on "
                          f"{', '.join(self.result.inputs)}")


def _layout_key(tensor: torch.Tensor) -> tuple | None:
    """Memory, offset, shape, strides and dtype: equal for a tensor and its detached alias."""
    memory = _storage(tensor)
    if memory is None:
        return None
    return (memory, tensor.storage_offset(), tuple(tensor.shape), tensor.stride(), tensor.dtype)


def _storage(tensor: torch.Tensor) -> int | None:
    try:
        storage = tensor.untyped_storage()
        return storage.data_ptr() if storage.nbytes() else None
    except Exception:  # noqa: BLE001 - sparse, meta …: no memory to share
        return None
