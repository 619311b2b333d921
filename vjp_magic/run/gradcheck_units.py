"""``--gradcheck``'s largest error in the derivatives' own units (:mod:`.gradcheck`).

For a vector output the check compares vᵀJ e_k, the derivatives weighted by the probe's
random v (|v_i| in [1.5, 3]): its error |vᵀ(J_analytic − J_numeric) e_k| is not one
derivative's. The worst entry's column of J is therefore compared itself: the numeric one by
a central difference, the analytic one as the backward gives it, in one double backward
(Jᵀu is linear in u: ∂(Jᵀu)_k/∂u = J e_k), else (a backward that is not differentiable) by a
backward pass per output entry that moves with x_k (at most :data:`MAX_COLUMN`), so the
figure is max_i |∂y_i/∂x_k analytic − numeric|. Where neither can be had, or the column does
not reproduce the weighted error (a backward not linear in its gradient), the weighted error
divided by Σ|v_i| over the moving outputs is told instead: a lower bound of the largest
entry's error, exact where each entry of x moves one output (an elementwise map). A rounding
noise of vᵀJ e_k, a sum weighted by |v|, is likewise told per output entry
(:func:`per_output`).

The column also tells its entries that disagree beyond the check's tolerance and their
rounding noise (:attr:`Column.over`): where the comparison of vᵀJ agreed, v cancelled the
error (vᵀΔJ e_k = 0 with ΔJ e_k ≠ 0), and those entries are judged again on their own
(:func:`.gradcheck._told_in_units`): a figure far over the tolerance is never told beside a
passed check.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.torch_api import materialized_grad
from .gradcheck_noise import EPS, NOISE_ULPS, SUPPORT_STEP, moved_output

MAX_COLUMN = 64  # backward passes on the worst entry's column without a double backward
AGREE = 1e-2  # the column's weighted error within this of the measured one: the same error
MAX_OVER = 8  # a column's entries beyond the tolerance told (to be judged again), at most


@dataclass(frozen=True)
class Column:
    """One column's figure: ``error``, its largest |analytic − numeric| derivative (or the
    weighted lower bound); ``over``: (flat output entry, analytic derivative) of those whose
    central difference disagrees beyond ``atol + rtol·|numeric|`` plus its rounding noise,
    the farthest first, at most :data:`MAX_OVER` (none where the column could not be
    read)."""

    error: float
    over: tuple = ()
    count: int = 0  # how many disagree so (``over`` holds the first MAX_OVER)
    within: float = 0.0  # the largest |analytic − numeric| of the others


def derivative_error(replay, values: dict, name: str, k: int, probe: tuple, weighted: float,
                     step: float, tolerance: tuple = (0.0, 0.0)) -> Column:
    """The largest |analytic − numeric| derivative in input ``name``'s flat entry ``k``'s
    column of J, from the measured error ``weighted`` of vᵀJ e_k (``probe``: v, f(x), …;
    ``step``: the finite-difference step; ``tolerance``: (atol, rtol)); see the module."""
    v, e = probe[0], _unit(values[name], k)
    try:
        moving = _moving(replay, values, name, e, probe[1]).reshape(-1)
    except Exception:  # noqa: BLE001 - no output moves as far as can be told
        moving = torch.zeros(v.numel(), dtype=torch.bool, device=v.device)
    weight = float(v.reshape(-1)[moving].abs().sum())
    fallback = Column(weighted / weight if weight else weighted / float(v.abs().max()))
    rows = moving.nonzero().reshape(-1).tolist()
    if not rows:
        return fallback
    try:
        sides = [moved_output(replay, values, name, h * e).reshape(-1) for h in (step, -step)]
        numeric = (sides[0] - sides[1]) / (2 * step)
        at = torch.arange(numeric.numel(), device=numeric.device)
        analytic = _whole_column(replay, values, name, k, v)
        if analytic is None and len(rows) <= MAX_COLUMN:
            analytic, at = (_column(replay, values, name, k, rows),
                            torch.tensor(rows, device=numeric.device))
            v = v.reshape(-1)[rows]
    except Exception:  # noqa: BLE001 - the weighted figure stands
        return fallback
    if analytic is None:
        return fallback
    gaps = analytic - numeric[at]
    again = abs(float(v.reshape(-1).to(gaps.dtype).mul(gaps).sum()))
    if not abs(again - weighted) <= AGREE * weighted + 1e-5 * weight:
        return fallback
    noise = NOISE_ULPS * EPS * (sides[0].abs() + sides[1].abs())[at] / (2 * step)
    atol, rtol = tolerance
    excess = gaps.abs() - (atol + rtol * numeric[at].abs() + noise)
    over = (excess > 0).nonzero().reshape(-1)
    order = over[excess[over].argsort(descending=True)][:MAX_OVER].tolist()
    rest = gaps.abs().masked_fill(excess > 0, 0.0)
    return Column(float(gaps.abs().max()),
                  tuple((int(at[i]), float(analytic[i])) for i in order), len(over),
                  float(rest.max()) if rest.numel() else 0.0)


def per_output(replay, values: dict, name: str, k: int, probe: tuple, amount: float) -> float:
    """``amount``, a sum over the output entries weighted by |v| (a rounding noise of vᵀJ
    e_k), per output entry: divided by Σ|v_i| over those that move with entry ``k``."""
    try:
        moving = _moving(replay, values, name, _unit(values[name], k), probe[1])
    except Exception:  # noqa: BLE001 - no output moves as far as can be told
        moving = torch.zeros_like(probe[0], dtype=torch.bool)
    weight = float(probe[0][moving].abs().sum())
    return amount / weight if weight else amount / float(probe[0].abs().max())


def _unit(start: torch.Tensor, k: int) -> torch.Tensor:
    """e_k, shaped as ``start``."""
    e = torch.zeros(start.numel(), dtype=start.dtype, device=start.device)
    e[k] = 1.0
    return e.reshape(start.shape)


def _moving(replay, values: dict, name: str, e: torch.Tensor,
            base: torch.Tensor) -> torch.Tensor:
    """The output entries that move when entry e of x moves by a large step, either way."""
    step = SUPPORT_STEP * (1.0 + float(values[name].abs().max()))
    moved = torch.zeros_like(base, dtype=torch.bool)
    for h in (step, -0.7 * step):
        moved |= moved_output(replay, values, name, h * e) != base  # NaN: moved
    return moved


def _whole_column(replay, values: dict, name: str, k: int,
                  v: torch.Tensor) -> torch.Tensor | None:
    """J e_k, every output entry's ∂y_i/∂x_k as the backward gives it, in one double
    backward at the probe's v: g(u) = Jᵀu is linear in u, so ∂g_k/∂u = J e_k. None where
    the backward is not differentiable (``once_differentiable``, no double backward)."""
    leaf = values[name].detach().requires_grad_(True)
    try:
        with torch.enable_grad():
            out = replay.run({**values, name: leaf})
            u = v.detach().reshape(out.shape).to(out.dtype).requires_grad_(True)
            (g,) = materialized_grad(out, [leaf], u, create_graph=True)
            picked = g.reshape(-1)[k]
            if not picked.requires_grad:
                return None
            (column,) = materialized_grad(picked, [u])
    except (RuntimeError, NotImplementedError):
        return None
    return column.reshape(-1).to(torch.float64)


def _column(replay, values: dict, name: str, k: int, rows: list) -> torch.Tensor:
    """∂y_i/∂x_k for the flat output entries ``rows``, one backward pass each."""
    leaf = values[name].detach().requires_grad_(True)
    with torch.enable_grad():
        out = replay.run({**values, name: leaf})
    column = []
    for n, i in enumerate(rows):
        onehot = torch.zeros_like(out).reshape(-1)
        onehot[i] = 1.0
        (g,) = materialized_grad(out, [leaf], onehot.reshape(out.shape),
                                 retain_graph=n < len(rows) - 1)
        column.append(g.reshape(-1)[k])
    return torch.stack(column).to(torch.float64)
