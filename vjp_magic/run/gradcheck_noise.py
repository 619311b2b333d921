"""Rounding noise hidden inside a computation, for ``--gradcheck`` (:mod:`.gradcheck`).

A finite difference vᵀ(f(x + h u) − f(x)) holds the rounding of every value computed on the
way, not only of f's: in ``(x + 1e12) * 2 - 2e12`` the output is about x, but x + 1e12 is
rounded to 1.2e-4, so a step of 1e-6 is lost in it. First-order rounding analysis bounds
that noise: each entry t_i of an intermediate, rounded by ε·|t_i|, moves vᵀf by about
|∂(vᵀf)/∂t_i|·ε·|t_i|. The gain |∂(vᵀf)/∂t| is read off the forward values alone, at a
large step along u either way (|Δ(vᵀf)| / max |Δt|: no backward is trusted, so a wrong one
cannot hide behind its own noise), and only the entries that move there count (the others
do not depend on x along u: their rounding cancels exactly). Three runs of the replay per
direction; used only where a difference disagrees with autograd or looks like a kink.
"""
from __future__ import annotations

import math

import torch

from .steps import Interpreter

NOISE_ULPS = 4  # rounding per intermediate entry, in ulps of its value (as the output's)
EPS = torch.finfo(torch.float64).eps
SUPPORT_STEP = 1e-2  # the large steps (times 1 + max |x|) that tell which entries move


class _Kept(Interpreter):
    """The replay's interpreter, keeping a copy of every floating result in call order (a
    later in-place call does not change what was kept)."""

    def __init__(self, steps: list):
        super().__init__(steps)
        self.found: list = []

    def call_function(self, step, args: tuple, kwargs: dict):
        value = super().call_function(step, args, kwargs)
        items = value if isinstance(value, (tuple, list)) else (value,)
        for item in items:
            if isinstance(item, torch.Tensor) and item.is_floating_point():
                self.found.append(item.detach().clone())
        return value


class HiddenNoise:
    """(name, u) -> the rounding noise vᵀ(f(x + h u) − f(x)) may hold from every
    intermediate entry that moves along u (``name``'s direction), or None where it cannot be
    told (``v``: the check's weights of the output)."""

    def __init__(self, replay, values: dict, v: torch.Tensor):
        self.replay, self.values, self.v = replay, values, v

    def _runs(self, name: str, u: torch.Tensor) -> list:
        start = self.values[name]
        step = SUPPORT_STEP * (1.0 + float(start.abs().max()))
        runs = []
        for h in (0.0, step, -0.7 * step):
            kept = _Kept(self.replay.steps)
            with torch.no_grad():
                out = self.replay.run({**self.values, name: start + h * u}, interpreter=kept)
            runs.append((float(self.v.mul(out).sum()), kept.found))
        return runs

    def __call__(self, name: str, u: torch.Tensor) -> float | None:
        try:
            (value, base), *moved = self._runs(name, u)
        except Exception:  # noqa: BLE001 - no estimate: the difference stands as it is
            return None
        if not all(len(found) == len(base) for _, found in moved):
            return None
        total = 0.0
        for j, t in enumerate(base):
            gain, entries = 0.0, torch.zeros_like(t, dtype=torch.bool)
            for other, found in moved:
                if found[j].shape != t.shape:
                    return None
                change = (found[j] - t).abs().nan_to_num(nan=math.inf)
                entries |= change != 0
                largest = float(change.max()) if change.numel() else 0.0
                if largest:  # |Δ(vᵀf)| per unit of t's largest move
                    gain = max(gain, abs(other - value) / largest)
            if gain and bool(entries.any()):
                total += gain * float(t.abs()[entries].nan_to_num(posinf=0.0).sum())
        return NOISE_ULPS * EPS * total if math.isfinite(total) else None


__all__ = ["HiddenNoise"]
