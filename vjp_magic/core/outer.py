"""Per-sample gradients that are outer products (a Linear weight read at one position per
sample: D_b = g_b a_bᵀ), kept as their factors g (B, out) and a (B, in) until first read.

Writing D is B·out·in products into fresh memory (11 MB for a small MLP at B = 1,024, most of
the per-sample rules' time: page faults, then a cold cache for the check reading it back).
What the check needs of D comes from the factors: probe 0's vᵀD = (v ∘ g)ᵀ a, one small
product. The check on D itself is not dropped but deferred: the acceptance is kept with the
factors (probe 0, its vᵀJ from the graph's own backward, the bound each entry was held to),
and :meth:`OuterProducts.tensor` writes D, reads vᵀD from the written tensor and holds it to
that same bound — :func:`.given.at_once`'s rule entry by entry, on the very tensor handed
over — before anyone sees a number: the result's ``derivatives`` are written on first read
(:class:`.result.InputResult`), every other consumer gets them written
(:func:`written`). A written D that fails raises (a bug in the write, never a wrong number
shown). The factors are copies: a later in-place write to the layer's input (the user's data
tensor) cannot change a D not yet written.
"""
from __future__ import annotations

import math

import torch


class WrittenCheckFailed(RuntimeError):
    """Per-sample gradients written from checked factors disagree with the check's vᵀJ."""


class OuterProducts:
    """D with ``D.reshape(B, out, in)[b] = g[b] ⊗ a[b]``, shaped ``shape``; tensor-like for
    what the check reads before the write (shape, dtype, device, numel, reshape, vᵀD)."""

    def __init__(self, g: torch.Tensor, a: torch.Tensor, shape: tuple | None = None):
        self.g, self.a = g, a  # (B, out), (B, in): the caller's own copies
        self.shape = torch.Size(shape if shape is not None
                                else (g.shape[0], g.shape[1], a.shape[1]))
        self.dtype, self.device = g.dtype, g.device
        # (v, vᵀJ, the bound or the function making it) rows (1, out·in): the written D's check
        self.accepted = None

    def numel(self) -> int:
        return math.prod(self.shape)

    def dim(self) -> int:
        return len(self.shape)

    def reshape(self, *shape) -> OuterProducts:
        """The same products under another shape of as many entries (written so)."""
        shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) \
            else tuple(shape)
        if -1 in shape or math.prod(shape) != self.numel():
            raise ValueError(f"OuterProducts of {tuple(self.shape)} cannot be shaped {shape}")
        found = OuterProducts(self.g, self.a, shape)
        found.accepted = self.accepted
        return found

    def product(self, v: torch.Tensor) -> torch.Tensor:
        """vᵀD as one row (1, out·in) for ``v`` one row (1, B), from the factors:
        (v ∘ g)ᵀ a, in ``v``'s dtype."""
        g, a = self.g, self.a
        if g.dtype != v.dtype:
            g, a = g.to(v.dtype), a.to(v.dtype)
        return (g * v.reshape(-1, 1)).t().mm(a).reshape(1, -1)

    def tensor(self) -> torch.Tensor:
        """D written (contiguous, ``shape``), held to the check it was accepted by where it
        was (:attr:`accepted`): vᵀD read from the written tensor within each entry's bound."""
        written = self._write()
        if self.accepted is not None:
            v, vjp, bound = self.accepted
            bound = bound() if callable(bound) else bound
            rows = written.reshape(v.shape[1], -1)
            found = v @ (rows if rows.dtype == v.dtype else rows.to(v.dtype))
            if not bool((vjp - found).abs_().le_(bound).all()):  # a NaN never within it
                raise WrittenCheckFailed(
                    "vjp_magic: per-sample gradients written from their checked factors "
                    "failed the probe check (a bug in vjp_magic; please report it)")
        return written

    def _write(self) -> torch.Tensor:
        """g_b ⊗ a_b for every b: one product per entry (exact as any multiply), ``shape``."""
        return (self.g.unsqueeze(2) * self.a.unsqueeze(1)).reshape(self.shape)


def written(value):
    """``value`` as a tensor: an :class:`OuterProducts` written (and checked), else itself."""
    return value.tensor() if isinstance(value, OuterProducts) else value


__all__ = ["OuterProducts", "WrittenCheckFailed", "written"]
