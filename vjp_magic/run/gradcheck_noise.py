"""Rounding noise hidden inside a computation, for ``--gradcheck`` (:mod:`.gradcheck`).

A finite difference vᵀ(f(x + h u) − f(x)) holds the rounding of every value computed on the
way, not only of f's: in ``(x + 1e12) * 2 - 2e12`` the output is about x, but x + 1e12 is
rounded to 1.2e-4, so a step of 1e-6 is lost in it. First-order rounding analysis bounds
that noise: each entry t_i of an intermediate, rounded by ε·|t_i|, moves vᵀf by about
|∂(vᵀf)/∂t_i|·ε·|t_i|; summed over the entries that depend on x along u (those that move
at a large step, either way), it is the noise a difference along u may hold. One backward
through the replay gives every ∂(vᵀf)/∂t (made once, when first needed); each direction
costs three runs of the replay. Used only where a difference disagrees with autograd.
"""
from __future__ import annotations

import torch

from .steps import Interpreter

NOISE_ULPS = 4  # rounding per intermediate entry, in ulps of its value (as the output's)
EPS = torch.finfo(torch.float64).eps
SUPPORT_STEP = 1e-2  # the large steps (times 1 + max |x|) that tell which entries move


class _Kept(Interpreter):
    """The replay's interpreter, keeping every floating result in call order (detached
    copies unless ``live``: then the results themselves, to differentiate with respect to)."""

    def __init__(self, steps: list, live: bool = False):
        super().__init__(steps)
        self.found: list = []
        self.live = live

    def call_function(self, step, args: tuple, kwargs: dict):
        value = super().call_function(step, args, kwargs)
        items = value if isinstance(value, (tuple, list)) else (value,)
        for item in items:
            if isinstance(item, torch.Tensor) and item.is_floating_point():
                self.found.append(item if self.live else item.detach().clone())
        return value


class HiddenNoise:
    """u -> the rounding noise vᵀ(f(x + h u) − f(x)) may hold from every intermediate that
    moves along u (``name``'s direction), or None where it cannot be told."""

    def __init__(self, replay, values: dict, v: torch.Tensor, names: list):
        self.replay, self.values, self.v, self.names = replay, values, v, names
        self._products: list | None = None
        self._failed = False

    def products(self) -> list | None:
        """|t|·|∂(vᵀf)/∂t| per intermediate t (None where unused), made once."""
        if self._products is None and not self._failed:
            try:
                leaves = {n: t.detach().requires_grad_(True) if n in self.names else t
                          for n, t in self.values.items()}
                kept = _Kept(self.replay.steps, live=True)
                with torch.enable_grad():
                    out = self.replay.run(leaves, interpreter=kept)
                    wanted = [t for t in kept.found if t.requires_grad]
                    grads = torch.autograd.grad(out, wanted, self.v, allow_unused=True)
                found = dict(zip(map(id, wanted), grads))
                self._products = [None if found.get(id(t)) is None else
                                  (t.detach().abs() * found[id(t)].abs()).nan_to_num()
                                  for t in kept.found]
            except Exception:  # noqa: BLE001 - no estimate: the difference stands as it is
                self._failed = True
        return self._products

    def __call__(self, name: str, u: torch.Tensor) -> float | None:
        products = self.products()
        if products is None:
            return None
        start = self.values[name]
        step = SUPPORT_STEP * (1.0 + float(start.abs().max()))
        runs = []
        for h in (0.0, step, -0.7 * step):
            kept = _Kept(self.replay.steps)
            with torch.no_grad():
                self.replay.run({**self.values, name: start + h * u}, interpreter=kept)
            runs.append(kept.found)
        if not all(len(run) == len(products) for run in runs):
            return None
        total = 0.0
        for product, base, up, down in zip(products, *runs):
            if product is None or not base.shape == up.shape == down.shape == product.shape:
                continue
            total += float(product[(up != base) | (down != base)].sum())  # NaN: moved
        return NOISE_ULPS * EPS * total


__all__ = ["HiddenNoise"]
