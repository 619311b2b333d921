"""``--gradcheck``: the cell's recorded operations, replayed in float64, against central
finite differences (the cell itself is not run again).

For a random v (1 for a scalar output), the analytic vᵀJ comes from one backward pass
through the float64 replay (so custom ``autograd.Function`` backwards are the ones
checked); the numeric one is
vᵀ(f(x + h e_k) − f(x − h e_k)) / 2h for a sample of entries k of each input (all of them
when there are few; with a sample, also along one random direction through all entries).
Entries agree within ``atol + rtol·|numeric|``, the tolerances of ``torch.autograd.gradcheck``.

A step must not cross a kink (relu, clamp, abs at 0): there the central difference is not
a derivative. Each entry's central difference is used only where the one-sided differences
agree with it (f is smooth across the step); else a one-sided difference that agrees with
its own halved step (no kink on that side), else the same at smaller steps. Where both
sides are smooth but differ, or no step is safe, f has no derivative there to check: the
entry is *inconclusive*, never failed. A check fails only where every safe difference
disagrees with autograd.

The replays draw no random numbers from the global generators: they run under
:func:`torch.random.fork_rng`, so the cell's RNG state is as a plain run leaves it.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..core.tagging import custom_backwards
from ..core.textenum import TextEnum
from ..core.torch_api import materialized_grad
from .replay import NotReplayable, build

ATOL, RTOL = 1e-5, 1e-3  # as torch.autograd.gradcheck
STEP = 1e-6  # the finite-difference step (torch.autograd.gradcheck's eps)
SMALLER = (1.0, 1 / 16, 1 / 256)  # steps tried (times STEP) where a kink is within one
MAX_ENTRIES = 64  # entries per input checked; all of them up to this many
SEED = 0
MAX_SECONDS = 10.0  # sampling stops after this long (each input gets at least one entry)
KINKED = frozenset((
    "relu", "relu6", "clamp", "clip", "clamp_min", "clamp_max", "abs", "hardtanh",
    "leaky_relu", "maximum", "minimum", "max", "min", "amax", "amin", "threshold",
    "hardshrink", "softshrink", "where", "hardsigmoid", "hardswish", "elu", "selu", "celu",
    "prelu", "rrelu", "l1_loss", "smooth_l1_loss", "huber_loss", "median", "sort", "topk",
    "max_pool1d", "max_pool2d", "max_pool3d", "norm", "dist", "cdist",
))  # ops with kinks: named where an entry is inconclusive


@dataclass(frozen=True)
class GradcheckReport:
    """The verdict: ``ok`` True when every checked entry agrees, False when one does not
    (every safe finite difference there disagrees), None when nothing could be checked
    (``note`` says why) or, none failing, some entries are ``inconclusive`` (a kink: f has no
    derivative there to check); ``max_error[name]`` the largest |analytic − numeric| over its
    conclusive entries (``checked[name]`` entries examined); ``inconclusive[name]`` the
    indices of its inconclusive entries; ``kinks`` the ops with kinks the replay runs;
    ``custom`` the custom backward functions in the graph; ``note`` why nothing (or not all)
    was checked."""

    ok: bool | None
    max_error: dict = field(default_factory=dict)
    custom: tuple = ()
    checked: dict = field(default_factory=dict)
    note: str | None = None
    inconclusive: dict = field(default_factory=dict)
    kinks: tuple = ()


def gradcheck(record, inputs: dict, output, names=None,
              seconds: float = MAX_SECONDS) -> GradcheckReport:
    """Check the derivatives of ``output`` with respect to ``inputs`` (name -> tensor; only
    ``names`` if given) on the float64 replay of ``record``; sampling stops after about
    ``seconds`` (the entries checked by then are reported). The global RNG state (CPU, and
    CUDA's where the inputs are there) is left as it was."""
    devices = sorted({t.device.index or 0 for t in inputs.values()
                      if isinstance(t, torch.Tensor) and t.is_cuda})
    with torch.random.fork_rng(devices=devices):
        return _gradcheck(record, inputs, output, names, seconds)


def _gradcheck(record, inputs: dict, output, names, seconds: float) -> GradcheckReport:
    names = list(inputs) if names is None else list(names)
    try:
        replay = build(record, inputs, output).with_dtype(torch.float64)
    except NotReplayable as reason:
        return GradcheckReport(ok=None, note=f"The cell's operations cannot be replayed: "
                                              f"{reason}.")
    except Exception as error:  # noqa: BLE001 - never break the cell for the check
        return GradcheckReport(ok=None, note=f"The replay could not be built "
                                              f"({type(error).__name__}: {error}).")
    values = {n: t.detach().to(torch.float64) if t.is_floating_point() else t.detach()
              for n, t in inputs.items()}
    deadline = time.perf_counter() + seconds
    try:
        analytic, custom, v = _analytic(replay, values, names)
        with torch.no_grad():
            probe = (v, replay.run(values))
        found = {name: _compare(replay, values, name, analytic[name], probe, deadline)
                 for name in names}
    except Exception as error:  # noqa: BLE001 - e.g. an op without float64 support
        return GradcheckReport(ok=None, note=f"The float64 replay failed "
                                              f"({type(error).__name__}: {error}).")
    return _report(replay, found, custom, seconds if time.perf_counter() >= deadline else None)


def _report(replay, found: dict, custom: tuple, stopped: float | None) -> GradcheckReport:
    """The verdict from each input's comparison (``stopped``: sampling ran out of time)."""
    failed = any(not f.agree for f in found.values())
    inconclusive = {name: f.inconclusive for name, f in found.items() if f.inconclusive}
    notes = _detached_note(replay) if failed else []
    if stopped is not None:
        notes.append(f"Sampling stopped after {stopped:g} s; "
                     f"{sum(f.checked for f in found.values()):,} entries checked.")
    return GradcheckReport(
        ok=False if failed else (None if inconclusive else True),
        max_error={n: f.worst for n, f in found.items()}, custom=custom,
        checked={n: f.checked for n, f in found.items()}, note=" ".join(notes) or None,
        inconclusive=inconclusive, kinks=kinked_ops(replay) if inconclusive else ())


def kinked_ops(replay) -> tuple[str, ...]:
    """The ops with kinks (:data:`KINKED`) among the replay's steps, once each."""
    found = []
    for step in replay.steps:
        name = getattr(step.func, "__name__", "").strip("_")
        if name in KINKED or name.removesuffix("_") in KINKED:
            found.append(name.removesuffix("_"))
    return tuple(dict.fromkeys(found))


def _detached_note(replay) -> list[str]:
    """A failed check where the cell detaches part of its computation: why that fails."""
    detaching = replay.detaching()
    if not detaching:
        return []
    return [f"The cell detaches part of its computation ({', '.join(detaching)}): autograd "
            "treats it as a constant, the finite differences do not, so they differ even "
            "when every backward is right."]


def _analytic(replay, values: dict, names: list) -> tuple[dict, tuple, torch.Tensor]:
    """vᵀJ for each input by one backward pass through the replay; the custom backwards."""
    leaves = {n: t.detach().requires_grad_(True) if n in names else t
              for n, t in values.items()}
    with torch.enable_grad():
        out = replay.run(leaves)
    if out.dtype != torch.float64:
        raise TypeError(f"the replay computes in {out.dtype}, not float64 (a custom Function "
                        "or an op casts), too coarse for finite differences")
    generator = torch.Generator().manual_seed(SEED)
    v = torch.randn(out.shape, generator=generator, dtype=torch.float64) \
        if out.numel() > 1 else torch.ones(out.shape, dtype=torch.float64)
    v = v.to(out.device)
    if not out.requires_grad:
        return {n: torch.zeros_like(values[n]) for n in names}, (), v
    grads = materialized_grad(out, [leaves[n] for n in names], v)
    return dict(zip(names, grads)), custom_backwards(out), v


@dataclass
class _Found:
    """One input's comparison: the largest conclusive error, entries examined, whether all
    conclusive ones agree, and the indices of the inconclusive ones."""

    worst: float = 0.0
    checked: int = 0
    agree: bool = True
    inconclusive: tuple = ()


def _compare(replay, values: dict, name: str, analytic: torch.Tensor, probe: tuple,
             deadline: float) -> _Found:
    """One input's entries compared; at least one entry is checked, more until
    ``deadline``. Where entries are sampled, one random direction through all of them is
    checked too (an error outside the sample shows there; a kink along it is no verdict)."""
    count = values[name].numel()
    if count <= MAX_ENTRIES:
        entries = list(range(count))
    else:
        generator = torch.Generator().manual_seed(SEED + 1)
        entries = torch.randperm(count, generator=generator)[:MAX_ENTRIES].tolist()
    found, inconclusive = _Found(), []
    extra = [None] if count > MAX_ENTRIES else []  # the random direction, checked first
    for k in extra + entries:
        if found.checked and time.perf_counter() > deadline:
            break
        direction = _direction(values[name], k)
        want = float((analytic * direction).sum())
        verdict, error = _entry(replay, values, name, direction, probe, want)
        if verdict is Agreement.KINK:
            inconclusive += [] if k is None else [_index(values[name].shape, k)]
        else:
            found.worst = max(found.worst, error)
            found.agree = found.agree and verdict is Agreement.AGREE
        found.checked += k is not None
    found.inconclusive = tuple(inconclusive)
    return found


def _index(shape, k: int):
    """Entry ``k`` (row-major) as an index: an int for a vector, a tuple otherwise."""
    index = tuple(int(i) for i in np.unravel_index(k, tuple(shape)))
    return index[0] if len(index) == 1 else index


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= ATOL + RTOL * max(abs(a), abs(b))


class Agreement(TextEnum):
    """One entry's finite difference against autograd's."""

    AGREE = "agree"
    DISAGREE = "disagree"
    KINK = "kink"  # f kinks at the entry, and autograd took a one-sided slope: no verdict


def _agreement(want: float, numeric: float) -> Agreement:
    return Agreement.AGREE if _close(want, numeric) else Agreement.DISAGREE


def _entry(replay, values: dict, name: str, u: torch.Tensor, probe: tuple,
           want: float) -> tuple[Agreement, float]:
    """(:class:`Agreement`, |want − numeric|) along ``u``: the central difference
    where f is smooth across the step, else a safe one-sided one (see the module)."""
    v, base = probe

    def along(h: float) -> float:  # vᵀ(f(x + h u) − f(x))
        with torch.no_grad():
            moved = replay.run({**values, name: values[name] + h * u})
        return float((v * (moved - base)).sum())

    for factor in SMALLER:
        h = STEP * factor
        up, down = along(h), along(-h)
        if _close(up / h, -down / h):  # smooth across the step: the central difference
            numeric = (up - down) / (2 * h)
            return _agreement(want, numeric), abs(want - numeric)
        safe = [d for d, half in ((up / h, along(h / 2) / (h / 2)),
                                  (-down / h, -along(-h / 2) / (h / 2))) if _close(d, half)]
        if len(safe) == 2:  # smooth on either side, not across: a kink at the entry itself;
            low, high = min(safe), max(safe)  # autograd's choice: a one-sided slope or between
            inside = _close(want, low) or _close(want, high) or low <= want <= high
            verdict = Agreement.KINK if inside else Agreement.DISAGREE
            return verdict, min(abs(want - d) for d in safe)
        if safe:
            return _agreement(want, safe[0]), abs(want - safe[0])
    return Agreement.KINK, 0.0


def _direction(tensor: torch.Tensor, k: int | None) -> torch.Tensor:
    """The unit vector e_k, or (k None) a random direction: entries ±1/√n."""
    if k is None:
        generator = torch.Generator().manual_seed(SEED + 2)
        u = torch.randint(0, 2, tensor.shape, generator=generator).to(torch.float64)
        return u.mul_(2).sub_(1).div_(math.sqrt(tensor.numel())).to(tensor.device)
    e = torch.zeros(tensor.numel(), dtype=torch.float64, device=tensor.device)
    e[k] = 1.0
    return e.reshape(tensor.shape)


__all__ = ["GradcheckReport", "gradcheck", "kinked_ops"]
