"""Rounding noise hidden inside a computation, for ``--gradcheck`` (:mod:`.gradcheck`).

A finite difference vᵀ(f(x + h u) − f(x)) holds the rounding of every value computed on the
way, not only of f's: in ``(x + 1e12) * 2 - 2e12`` the output is about x, but x + 1e12 is
rounded to 1.2e-4, so a step of 1e-6 is lost in it. That noise is measured, not estimated
from the intermediates: the central difference of g(t) = vᵀf(x + t u) at the check's step,
taken at a few base points either side of x (no window holds x: a kink there is not noise),
scatters around a straight line by its rounding only (a smooth g's differences follow it).
Where the two sides' lines do not meet at x within that scatter, x is a kink and no noise is
told. Where g takes only a few values there (a staircase: its rounding is coarser than the
step, x + 1e12), the stair, found at spacings 100-fold larger (beside x, not across it: a jump
at x, as atan2's at (0, 0), is no stair), over the step is the noise.
Only forward values are read: no backward is trusted, so a wrong one cannot hide behind its
own noise. Used only where a difference disagrees with autograd or looks like a kink; the
difference is then judged again with that noise (:func:`.gradcheck._entry`).
"""
from __future__ import annotations

import math

import torch

NOISE_ULPS = 4  # rounding per output entry, in ulps of its value
EPS = torch.finfo(torch.float64).eps
SUPPORT_STEP = 1e-2  # the large steps (times 1 + max |x|) that tell which entries move
SIDE = (1.37, 2.11, 2.85, 3.59)  # base points each side, in steps: no window holds x itself
MARGIN = 2.0  # the largest of 4 scatters is about 2σ; a difference's noise within 2 of them
STAIRS = (1e-4, 1e-2)  # spacings (times 1 + max |x|) where a staircase's stair is looked for
LADDER = 4, -1, 7  # unresolved(): steps h·4^j, j from -1 to 7 (h/4 to 16,384 h)
TRUNCATION = 64  # a smooth f's quotients change 16-fold per 4-fold step (h²): 4× margin
ABOVE = 3  # unresolved(): quotients read above the first jump


class HiddenNoise:
    """(name, u) -> the rounding noise of the central difference of vᵀf along u
    (``name``'s direction) at ``step``, in derivative units, or None where it cannot be told
    (``v``: the check's weights of the output)."""

    def __init__(self, replay, values: dict, v: torch.Tensor, step: float):
        self.replay, self.values, self.v, self.step = replay, values, v, step

    def _g(self, name: str, u: torch.Tensor, t: float) -> float:
        return float(self.v.mul(moved_output(self.replay, self.values, name, t * u)).sum())

    def __call__(self, name: str, u: torch.Tensor) -> float | None:
        h, offsets = self.step, [-o for o in reversed(SIDE)] + list(SIDE)
        try:
            pairs = [(self._g(name, u, (o + 1) * h), self._g(name, u, (o - 1) * h))
                     for o in offsets]
        except Exception:  # noqa: BLE001 - no estimate: the difference stands as it is
            return None
        values = [g for pair in pairs for g in pair]
        if not all(map(math.isfinite, values)):
            return None
        if len(set(values)) <= len(values) // 3:  # a staircase: the stair over the step
            stair = self._stair(name, u)
            return None if stair is None else stair / h
        slopes = [(up - down) / (2 * h) for up, down in pairs]
        half = len(SIDE)
        (left, at_left), (right, at_right) = (line(offsets[:half], slopes[:half]),
                                              line(offsets[half:], slopes[half:]))
        spread = MARGIN * max(left, right)
        return spread if abs(at_left - at_right) <= 2 * spread else None

    def _stair(self, name: str, u: torch.Tensor) -> float | None:
        scale = 1.0 + float(self.values[name].abs().max())
        for spacing in STAIRS:
            try:  # from one spacing on, not x itself: a jump at x is no stair
                g = [self._g(name, u, i * spacing * scale) for i in range(1, 9)]
            except Exception:  # noqa: BLE001
                return None
            rises = [abs(b - a) for a, b in zip(g, g[1:]) if b != a]
            if rises and all(map(math.isfinite, rises)):
                return min(rises)
        return None


def unresolved(along, step: float, want: float, tolerance: tuple) -> float | None:
    """Where the backward's ``want`` disagrees with the central difference at ``step``: the
    size, in x, of the rounding stairs f changes in, too coarse for that step, or None.
    ``along``: t -> (vᵀ(f(x + t u) − f(x)), its rounding noise). Central quotients at steps
    h·4^j (:data:`LADDER`) change by a smooth f's truncation error, c·h², 16-fold per step:
    a change over :data:`TRUNCATION` times the one before (beyond the tolerance and noise),
    or changes over the tolerance from the smallest step on that then fall (rounding, ~1/h,
    where truncation only grows), are none: f is not resolved at the smaller steps
    (``((x + 1e12) - 1e12) * 2 + x``: stairs of 1.2e-4 in x + 1e12; at 1e-6 the quotient sees
    only the smooth x). It is a stair only where ``want`` lies within the scatter of the
    quotients from there on (:data:`ABOVE` steps more), widened by that scatter and the
    tolerance: f, seen across its stairs, agrees. A wrong backward on a smooth f, or one that
    disagrees at every scale, is not excused. Only forward values are read."""
    atol, rtol = tolerance
    base, first, last = LADDER
    quotients, changes, start = [], [], None
    for j in range(first, last + 1):
        if start is not None and len(quotients) > start + ABOVE:
            break
        h = step * base ** j
        (up, n_up), (down, n_down) = along(h), along(-h)
        q, noise = (up - down) / (2 * h), (n_up + n_down) / (2 * h)
        if not math.isfinite(q):
            return None
        if quotients and start is None:
            before, n_before = quotients[-1]
            change = abs(q - before)  # (beyond: over the tolerance and noise)
            beyond = change - atol - rtol * max(abs(q), abs(before)) - noise - n_before
            if changes and beyond > TRUNCATION * changes[-1][0]:  # a jump
                start = len(quotients)
            elif changes and all(b > 0 for _, b in changes) and change < changes[-1][0] / 2:
                start = len(quotients) - 1  # unsettled from the smallest step, then falling
            changes.append((change, beyond))
        quotients.append((q, noise))
    if start is None:
        return None
    later = [q for q, _ in quotients[start:]]
    low, high = min(later), max(later)
    spread = high - low + atol + rtol * max(abs(low), abs(high))
    return 2 * step * base ** (first + start) if low - spread <= want <= high + spread \
        else None


def moved_output(replay, values: dict, name: str, step: torch.Tensor) -> torch.Tensor:
    """The replayed output with input ``name`` moved by ``step`` (the others as in ``values``),
    with no graph."""
    with torch.no_grad():
        return replay.run({**values, name: values[name] + step})


def line(t: list[float], d: list[float]) -> tuple[float, float]:
    """(the largest distance of the points (t, d) from their least-squares line, the line's
    value at t = 0)."""
    n = len(t)
    mean_t, mean_d = sum(t) / n, sum(d) / n
    spread = sum((a - mean_t) ** 2 for a in t)
    slope = sum((a - mean_t) * (b - mean_d) for a, b in zip(t, d)) / spread if spread else 0.0
    farthest = max(abs(b - mean_d - slope * (a - mean_t)) for a, b in zip(t, d))
    return farthest, mean_d - slope * mean_t


__all__ = ["HiddenNoise", "line", "moved_output", "unresolved"]
