"""The rounding a coarser dtype's derivatives necessarily have, for ``--gradcheck``'s check
of the cell's own (float32) derivatives (:func:`.gradcheck._cell_derivatives`).

A right backward computed in float32 can differ from the float64 one far beyond a few ulps
of the result: ``g * (1 - cos x)`` at x = 1e-3 keeps 1 − cos x ≈ 5e-7 to cos x's float32
rounding, 6e-8 (12 %); a softmax backward at saturated logits keeps 1 − p to p's. Such a
difference is the conditioning of the formula, not a wrong backward. It is measured, not
guessed: the float64 replay's forward and backward run again with every value an op
computes moved by a random relative amount within the cell dtype's unit roundoff (below
its smallest normal number, by that much of it: underflow), as rounding to that dtype
would move it (:class:`_Rounding`); how far vᵀJ moves over a few such runs is the rounding
the same formula has in that dtype. Only float64 arithmetic runs, so a backward that is
wrong only in float32 (one that branches on its dtype, computes in half precision) is not
excused: its float64 formula is the right one, and rounds as little as any.
"""
from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ..core.probes import probe_generator
from ..core.torch_api import materialized_grad

RUNS = 4  # runs with values rounded at random
MARGIN = 3.0  # the largest of RUNS moves, times this: the rounding a float32 run may have
# (the caller's allowance: a run's rounding is a random sum, RUNS samples see its typical size)
EXACT = frozenset(("detach", "clone", "alias", "lift_fresh", "copy", "zeros_like",
                   "ones_like", "empty_like", "zeros", "ones", "empty", "full", "full_like",
                   "scalar_tensor", "lift_fresh_copy"))  # ops that compute no rounded value


def rounding_moves(replay, values: dict, names: list, v: torch.Tensor, dtype: torch.dtype,
                   seed: int) -> dict | None:
    """name -> the largest move per entry of vᵀJ (float64) when the replay's values are
    rounded as ``dtype`` would round them, over :data:`RUNS` runs (see the module); None where
    the replay cannot be run so, or its vᵀJ differs between two plain runs (a backward
    drawing random numbers: its moves are not rounding)."""
    generator = probe_generator(seed, "gradcheck rounding")
    unit = torch.finfo(dtype).eps / 2
    tiny = torch.finfo(dtype).tiny
    moves: dict = {}
    try:
        base = _vjp(replay, values, names, v, None)
        if not all(map(torch.equal, base, _vjp(replay, values, names, v, None))):
            return None  # a backward that moves by itself (random): no rounding excuses it
        for _ in range(RUNS):
            moved = _vjp(replay, values, names, v, _Rounding(generator, unit, tiny))
            for name, b, m in zip(names, base, moved):
                gap = (m - b).abs()
                moves[name] = gap if name not in moves else torch.maximum(moves[name], gap)
    except Exception:  # noqa: BLE001 - no measure: the difference stands as it is
        return None
    return moves


def _vjp(replay, values: dict, names: list, v: torch.Tensor, mode) -> tuple:
    """vᵀJ of the replay for ``names``, forward and backward under ``mode`` (if any)."""
    leaves = {n: t.detach().requires_grad_(True) if n in names else t
              for n, t in values.items()}
    with torch.enable_grad():
        if mode is None:
            out = replay.run(leaves)
            return tuple(g.detach() for g in materialized_grad(out, [leaves[n] for n in names],
                                                                v.to(out.dtype)))
        with mode:
            out = replay.run(leaves)
            grads = materialized_grad(out, [leaves[n] for n in names], v.to(out.dtype))
    return tuple(g.detach() for g in grads)


class _Rounding(TorchDispatchMode):
    """Every floating value an op computes (not views, in-place results or copies), moved
    by δ·max(|value|, ``tiny``), δ uniform in ±``unit``: a dtype's rounding, in float64."""

    def __init__(self, generator: torch.Generator, unit: float, tiny: float):
        super().__init__()
        self.generator, self.unit, self.tiny = generator, unit, tiny

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        schema = func._schema
        if (schema.name.split("::")[-1] in EXACT or schema.is_mutable
                or any(r.alias_info is not None for r in schema.returns)):
            return out
        if isinstance(out, (tuple, list)):  # (values, indices), native_layer_norm's three
            return type(out)(self._rounded(t) for t in out)
        return self._rounded(out)

    def _rounded(self, value):
        if not (isinstance(value, torch.Tensor) and value.dtype == torch.float64):
            return value
        delta = torch.rand(value.shape, generator=self.generator, dtype=torch.float64)
        delta = (2 * delta - 1).to(value.device) * self.unit
        return value + delta * value.abs().clamp_min(self.tiny)


__all__ = ["MARGIN", "RUNS", "rounding_moves"]
