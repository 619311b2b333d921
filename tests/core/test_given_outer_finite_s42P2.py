""":func:`vjp_magic.core.given._read_row` on per-sample Linear weights kept as factors
(:class:`~vjp_magic.core.outer.OuterProducts`): vᵀD equal to vᵀJ bit for bit gets a scale
of 0 only where it is finite. Finiteness is read off a sum (NaN and ±inf carry through
sums; where a sum of finite entries overflows, they are read one by one):
an infinite or NaN vᵀD equal to vᵀJ must keep its real, non-finite scale, which fails
:func:`~vjp_magic.core.given.at_once`'s bound.

Expected values: vᵀD = (v ∘ g)ᵀ a by hand; float32 overflow from its range (3.4e38)."""
from __future__ import annotations

import pytest
import torch

from vjp_magic.core import given
from vjp_magic.core.outer import OuterProducts

B, OUT, IN = 4, 3, 2


def _factors(huge: float | None = None):
    g = torch.arange(1.0, 1 + B * OUT).reshape(B, OUT)
    a = torch.arange(1.0, 1 + B * IN).reshape(B, IN) / 8
    if huge is not None:
        g[1, 2] = huge
    return g, a


def _read(g, a, vjp=None):
    v = torch.tensor([[1.0, -2.0, 0.5, 4.0]])
    lazy = OuterProducts(g, a)
    by_hand = ((g * v.reshape(-1, 1)).t() @ a).reshape(1, -1)
    vjp = by_hand.clone() if vjp is None else vjp
    scale = lambda rows: ((g.abs() * rows.reshape(-1, 1)).t() @ a.abs()).reshape(1, -1)  # noqa: E731
    return by_hand, given._read_row(lazy, v, v.abs(), scale, torch.float32, vjp)


def test_a_finite_product_equal_to_the_vjp_gets_scale_zero():
    by_hand, (found, scale) = _read(*_factors())
    assert torch.equal(found, by_hand)
    assert torch.equal(scale, torch.zeros_like(by_hand))


@pytest.mark.parametrize("huge", [float("inf"), float("nan"), 3e38])
def test_a_non_finite_product_keeps_its_scale(huge):
    g, a = _factors(huge)
    by_hand, (found, scale) = _read(g, a)
    assert not bool(torch.isfinite(by_hand).all())  # (3e38 · 4 overflows float32)
    assert torch.equal(found.isnan(), by_hand.isnan())
    assert not bool(torch.isfinite(scale).all())  # the real one: no bound can hold


def test_an_overflowing_sum_of_finite_entries_is_still_finite():
    """Every entry finite, their sum not: read entry by entry then, as finite as it is."""
    g = torch.full((B, OUT), 5e37)
    a = torch.full((B, IN), 0.5)
    by_hand, (found, scale) = _read(g, a)
    assert bool(torch.isfinite(by_hand).all()) and not torch.isfinite(by_hand.sum())
    assert torch.equal(found, by_hand) and torch.equal(scale, torch.zeros_like(by_hand))
