"""``--gradcheck``: the cell's recorded operations, replayed in float64, against central
finite differences (the cell itself is not run again).

For a random v (1 for a scalar output), the analytic vᵀJ comes from one backward pass
through the float64 replay (so custom ``autograd.Function`` backwards are the ones
checked); the numeric one is
vᵀ(f(x + h e_k) − f(x − h e_k)) / 2h for a sample of entries k of each input (all of them
when there are few; with a sample, also along one random direction through all entries).
Entries agree within ``atol + rtol·|numeric|``, the tolerances of ``torch.autograd.gradcheck``.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from ..core.tagging import custom_backwards
from .replay import NotReplayable, build

ATOL, RTOL = 1e-5, 1e-3  # as torch.autograd.gradcheck
STEP = 1e-6  # the finite-difference step (torch.autograd.gradcheck's eps)
MAX_ENTRIES = 64  # entries per input checked; all of them up to this many
SEED = 0
MAX_SECONDS = 10.0  # sampling stops after this long (each input gets at least one entry)


@dataclass(frozen=True)
class GradcheckReport:
    """The verdict: ``ok`` True when every checked entry agrees, False when one does not, None
    when nothing could be checked (``note`` says why); ``max_error[name]`` the largest
    |analytic − numeric| over its checked entries (``checked[name]`` of them); ``custom`` the
    custom backward functions in the graph; ``note`` why nothing (or not all) was checked."""

    ok: bool | None
    max_error: dict = field(default_factory=dict)
    custom: tuple = ()
    checked: dict = field(default_factory=dict)
    note: str | None = None


def gradcheck(record, inputs: dict, output, names=None,
              seconds: float = MAX_SECONDS) -> GradcheckReport:
    """Check the derivatives of ``output`` with respect to ``inputs`` (name -> tensor; only
    ``names`` if given) on the float64 replay of ``record``; sampling stops after about
    ``seconds`` (the entries checked by then are reported)."""
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
        errors, checked, ok = {}, {}, True
        for name in names:
            error, count, agree = _compare(replay, values, name, analytic[name], v, deadline)
            errors[name], checked[name] = error, count
            ok = ok and agree
    except Exception as error:  # noqa: BLE001 - e.g. an op without float64 support
        return GradcheckReport(ok=None, note=f"The float64 replay failed "
                                              f"({type(error).__name__}: {error}).")
    notes = [] if ok else _detached_note(replay)
    if time.perf_counter() >= deadline:
        notes.append(f"Sampling stopped after {seconds:g} s; {sum(checked.values()):,} "
                     "entries checked.")
    return GradcheckReport(ok=ok, max_error=errors, custom=custom, checked=checked,
                           note=" ".join(notes) or None)


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
    grads = torch.autograd.grad(out, [leaves[n] for n in names], v, allow_unused=True)
    analytic = {n: torch.zeros_like(values[n]) if g is None else g for n, g in zip(names, grads)}
    return analytic, custom_backwards(out), v


def _compare(replay, values: dict, name: str, analytic: torch.Tensor, v: torch.Tensor,
             deadline: float) -> tuple[float, int, bool]:
    """(largest error, entries checked, all agree) for one input; at least one entry is
    checked, more until ``deadline``. Where entries are sampled, one random direction
    through all of them is checked too (an error outside the sample shows there)."""
    count = values[name].numel()
    if count <= MAX_ENTRIES:
        entries = range(count)
    else:
        generator = torch.Generator().manual_seed(SEED + 1)
        entries = torch.randperm(count, generator=generator)[:MAX_ENTRIES].tolist()
    worst, agree, done = 0.0, True, 0
    extra = 1 if count > MAX_ENTRIES else 0  # the random direction, checked first
    directions = [_direction(values[name], None)] * extra + \
        [_direction(values[name], k) for k in entries]
    for direction in directions:
        if done > extra and time.perf_counter() > deadline:
            break
        done += 1
        numeric = _numeric(replay, values, name, direction, v)
        error = abs(float((analytic * direction).sum()) - numeric)
        worst = max(worst, error)
        agree = agree and error <= ATOL + RTOL * abs(numeric)
    return worst, done - extra, agree


def _direction(tensor: torch.Tensor, k: int | None) -> torch.Tensor:
    """The unit vector e_k, or (k None) a random direction: entries ±1/√n."""
    if k is None:
        generator = torch.Generator().manual_seed(SEED + 2)
        u = torch.randint(0, 2, tensor.shape, generator=generator).to(torch.float64)
        return u.mul_(2).sub_(1).div_(math.sqrt(tensor.numel())).to(tensor.device)
    e = torch.zeros(tensor.numel(), dtype=torch.float64, device=tensor.device)
    e[k] = 1.0
    return e.reshape(tensor.shape)


def _numeric(replay, values: dict, name: str, direction: torch.Tensor,
             v: torch.Tensor) -> float:
    """vᵀ(f(x + h u) − f(x − h u)) / 2h along ``direction`` u."""
    results = []
    for sign in (1.0, -1.0):
        moved = values[name] + (sign * STEP) * direction
        with torch.no_grad():
            results.append(replay.run({**values, name: moved}))
    return float((v * (results[0] - results[1])).sum()) / (2 * STEP)


__all__ = ["GradcheckReport", "gradcheck"]
