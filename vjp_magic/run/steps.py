"""The replay engine: one recorded call as a :class:`Step`, and the :class:`Interpreter` that
runs a list of them (:mod:`.plan` builds the list from a record).

A :class:`Step` is the call with what it reads resolved: tensors computed by earlier steps
(or the inputs) come from the interpreter's environment by the identity of the recorded
tensor, every other tensor is a constant as it was at the call. The :class:`Interpreter`
follows ``torch.fx.Interpreter``: it walks the steps, substitutes the arguments and stores
the results, and :meth:`Interpreter.call_function` is the one place that computes a value.
As it stands it computes with torch (random draws are made from the generators' states kept
at the call, and the generators end as they began, :func:`generators_kept`); the symbolic
replay overrides it to compute with SymPy. Torch's module-hook marker is the identity (no
hook fires).
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace

import torch

from .forward_writes import forward_kept
from .record import FunctionApply, generator_states, restore_rng

try:  # where PyTorch keeps the marker it applies for module backward hooks
    from torch.nn.modules._functions import BackwardHookFunction
except ImportError:  # pragma: no cover - older PyTorch
    from torch.utils.hooks import BackwardHookFunction

_CASTS = {"float", "half", "bfloat16", "double"}  # Tensor methods naming a floating dtype
_DEPTH = 4
DETACHING = frozenset({"detach", "detach_", "data"})  # their results leave autograd's graph


@dataclass(eq=False)
class Step:
    """One recorded call to re-execute."""

    func: object
    args: tuple
    kwargs: dict
    result: object
    targets: tuple
    grad_enabled: bool
    consts: dict  # id(recorded tensor) -> the value to use (as it was at the call)
    fresh: dict = field(default_factory=dict)  # constant in-place targets: id -> value before
    scratch: dict = field(default_factory=dict)  # running statistics: id -> a throwaway value
    rng: tuple | None = None  # the generators' states the call drew from (record.rng_states)
    live: frozenset = frozenset()  # ids of the results and targets that carry the inputs
    # ids of arguments that carry the inputs but required no grad at the call (a weight
    # frozen for this call alone): given detached, as the cell's graph has no edge to them
    detached: frozenset = frozenset()

    @property
    def name(self) -> str:
        """The call's name (see :func:`function_name`)."""
        return function_name(self.func)


def function_name(func) -> str:
    """A recorded function's name; a property read (``x.data``) is named after the property."""
    name = getattr(func, "__name__", "?")
    if name in ("__get__", "__set__"):
        name = getattr(getattr(func, "__self__", None), "__name__", name)
    return name


def replayed_function(func):
    """What a step calls: the recorded function, except torch's module-hook marker
    (``BackwardHookFunction``), which is the identity with hooks attached in the cell and is
    replayed as the identity: a replay fires no hook."""
    if isinstance(func, FunctionApply) and func.function is BackwardHookFunction:
        return identity
    return func


def identity(*args):
    return args


class Interpreter:
    """Runs steps in order over ``env`` (id of a recorded tensor -> its value in this run).

    Override :meth:`call_function` to compute with other values (as ``torch.fx.Interpreter``),
    :meth:`fetch` and :meth:`store` to read and write them differently.
    """

    def __init__(self, steps: list):
        self.steps = steps

    def run(self, env: dict) -> dict:
        """Every step, in order; ``env`` holds the inputs' values and receives the results.
        A replay warns nothing: each warning its calls give, the cell's run gave already (or
        it comes from the analysis' own values, as a float64 copy's: not the user's to see)."""
        with generators_kept(self.steps), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for step in self.steps:
                self.run_step(step, env)
        return env

    def run_step(self, step: Step, env: dict) -> None:
        """One step: arguments substituted, result (and in-place targets) into ``env``."""
        for key, value in step.fresh.items():
            if key not in env:
                env[key] = value.clone()
        local = {key: _throwaway(value) for key, value in step.scratch.items()}
        fetch = self.fetch

        def swap(value, depth=0):
            if isinstance(value, torch.Tensor):
                found = local[id(value)] if id(value) in local else fetch(step, value, env)
                return found.detach() if id(value) in step.detached \
                    and isinstance(found, torch.Tensor) else found
            if depth < _DEPTH and type(value) in (list, tuple):
                return type(value)([swap(v, depth + 1) for v in value])
            return value

        args = tuple([swap(a) for a in step.args])
        kwargs = {k: swap(v) for k, v in step.kwargs.items()} if step.kwargs else {}
        self.store(step, self.call_function(step, args, kwargs), env)

    def fetch(self, step: Step, tensor: torch.Tensor, env: dict):
        """The value of a tensor argument: from ``env``, else the step's constant."""
        found = env.get(id(tensor))
        return found if found is not None else step.consts.get(id(tensor), tensor)

    def call_function(self, step: Step, args: tuple, kwargs: dict):
        """The call's value (torch: the recorded function, its draws and grad mode as then)."""
        if step.rng is not None:
            restore_rng(step.rng)  # the same draws as the cell's
        users = isinstance(step.func, FunctionApply) \
            and step.func.function is not BackwardHookFunction  # the user's forward
        if users:
            name = step.func.function.__name__
            for counts in _COUNTS:
                counts[name] = counts.get(name, 0) + 1
        with nullcontext() if step.grad_enabled else torch.no_grad(), \
                forward_kept(step.func.function, args, kwargs) if users else nullcontext():
            return step.func(*args, **kwargs)

    def store(self, step: Step, value, env: dict) -> None:
        """The value's tensors into ``env`` by the identity of the recorded results."""
        _store(step.result, value, env)


# The open :func:`forwards_run` counts (custom Function name -> forwards run by replays)
_COUNTS: list = []


@contextmanager
def forwards_run():
    """A dict that counts, while open, how many times replays ran each custom
    ``autograd.Function``'s forward (the user's own code: a list it appends to grows each
    time), by the Function's name."""
    counts: dict = {}
    _COUNTS.append(counts)
    try:
        yield counts
    finally:
        _COUNTS[:] = [c for c in _COUNTS if c is not counts]


@contextmanager
def generators_kept(steps: list):
    """The random generators end as they began: a replay moves no user RNG state."""
    drew = [step.rng for step in steps if step.rng is not None]
    own = {id(g): g for rng in drew for g, _ in rng[3]}
    states = generator_states({d for rng in drew for d, _ in rng[1]},
                              python=any(rng[2] is not None for rng in drew),
                              own=own.values())
    try:
        yield
    finally:
        restore_rng(states)


def _throwaway(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().clone()


def _store(result, value, env: dict, depth: int = 0) -> None:
    if isinstance(result, torch.Tensor):
        if isinstance(value, torch.Tensor):
            env[id(result)] = value
        return
    if depth < _DEPTH and isinstance(result, (list, tuple)) and isinstance(value, (list, tuple)):
        for part, part_value in zip(result, value):
            _store(part, part_value, env, depth + 1)


def cast_step(step: Step, dtype: torch.dtype) -> Step:
    """The step computing in ``dtype``: floating constants cast, floating dtypes named in the
    arguments replaced, ``.float()``-style casts made casts to ``dtype``."""
    def cast(value, depth=0):
        if isinstance(value, torch.dtype) and value.is_floating_point:
            return dtype
        if depth < _DEPTH and type(value) in (list, tuple):
            return type(value)(cast(v, depth + 1) for v in value)
        return value  # tensors stay: they are looked up by identity

    def values(found: dict) -> dict:
        return {k: v.detach().to(dtype) if v.is_floating_point() else v
                for k, v in found.items()}

    func = _Cast(dtype) if getattr(step.func, "__name__", "") in _CASTS else step.func
    return replace(step, func=func, args=cast(step.args),
                   kwargs={k: cast(v) for k, v in step.kwargs.items()},
                   consts=values(step.consts), fresh=values(step.fresh),
                   scratch=values(step.scratch))


@dataclass(frozen=True)
class _Cast:
    """``x.float()`` in a replay computing in another dtype: ``x.to(dtype)``."""

    dtype: torch.dtype

    def __call__(self, tensor, *args, **kwargs):
        return tensor.to(self.dtype)


__all__ = ["DETACHING", "Interpreter", "Step", "cast_step", "forwards_run", "function_name",
           "generators_kept", "identity", "replayed_function"]
