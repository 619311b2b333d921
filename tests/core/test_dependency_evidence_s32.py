"""What ``r.dependency(...)`` calls "proved" must hold for every x, not only at this one.

A result's derivatives are values at this x: a derivative that happens to be 0 there (y[0] =
x[0]·x[5] at x[0] = 0) is no dependence in them. A pattern read off those values is
"observed"; "proved" is kept for what the graph proves — a pairing's diagonal, or a proved
sparse pattern's entries, zeros at this x included — and where that proof rests on index
tensors the graph saved (a gather by ``x.argsort()``), the dependency says so.
"""
from __future__ import annotations

import pytest
import torch

import vjp_magic


def _periodic(x):
    return x * x.roll(1)  # y[i] = x[i]·x[i−1]: reads x[i] and x[i−1 mod n]


@pytest.mark.parametrize("repeats", [1, 50])  # a dense Jacobian (6 entries), a sparse one (300)
def test_a_zero_derivative_at_this_x_is_not_called_proved_absent(repeats):
    x = torch.tensor([0.0, 1, 2, 3, 4, 5] * repeats, requires_grad=True)
    d = vjp_magic.differentiate(_periodic(x), x).dependency("x", 0, 0)
    n = x.numel()
    # for every x, y[0] reads x[n-1]; here its derivative x[0] is 0
    if d.evidence == "proved":
        assert bool(d.pattern[0, n - 1]), "proved pattern misses y[0] ← x[n-1]"
        assert str(d.kind) == "band with wrap-around"
    else:
        assert d.evidence == "observed"
        assert not bool(d.pattern[0, n - 1])  # read off values: the zero is not a dependence


def test_at_a_generic_x_the_periodic_band_is_found_either_way():
    x = torch.linspace(1, 2, 300, requires_grad=True)
    d = vjp_magic.differentiate(_periodic(x), x).dependency("x", 0, 0)
    assert str(d.kind) == "band with wrap-around"
    assert d.offsets == (-1, 0)


def test_a_proof_resting_on_saved_indices_says_so():
    torch.manual_seed(0)
    x = torch.randn(300, requires_grad=True)
    y = x.gather(0, x.detach().argsort()) ** 2
    d = vjp_magic.differentiate(y, x).dependency("x", 0, 0)
    assert d.evidence in ("proved", "observed")
    if d.evidence == "proved":
        assert d.conditional_on == ("gather",)
        assert "gather" in d.note and "same ones" in d.note


def test_points_stay_proved():
    x = torch.randn(40, requires_grad=True)
    d = vjp_magic.differentiate(torch.sin(x), x).dependency("x", 0, 0)
    assert d.evidence == "proved" and str(d.kind) == "independent"
    assert d.conditional_on == ()
