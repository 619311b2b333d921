"""A non-finite reading in both modes (0·∞ where a zero seed meets an infinite derivative,
at a zero of sqrt's input) is a dependence only where the graph's index maps allow one
(core/grouptest.resolved_columns): dependency(x.roll(1) * sqrt(x), x) said 'sparse, at most
43 per row' with witness y[0] <- x[7], which y[0] = x[299]·sqrt(x[0]) cannot read.

Expected patterns: calculus (y[i] reads x[i] and x[i-1] only; d y[i]/d x[i-1] = sqrt(x[i]),
0 at the zeros of x).
"""
from __future__ import annotations

import torch

import vjp_magic


def _neighbours(n: int = 300):
    x = torch.rand(n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x[::7] = 0
    x.requires_grad_()
    i = torch.arange(n)
    expected = torch.zeros(n, n, dtype=torch.bool)
    expected[i, i] = x.detach().roll(1) != 0  # x[i-1] / (2 sqrt(x[i])): inf at x[i] = 0
    expected[i, (i - 1) % n] = x.detach() != 0  # sqrt(x[i])
    return x, x.roll(1) * x.sqrt(), expected


def _dense(t):
    return t.to_dense() if t.layout != torch.strided else t


def test_no_dependence_the_graph_rules_out():
    x, y, expected = _neighbours()
    d = vjp_magic.dependency(y, x)
    assert torch.equal(_dense(d.pattern), expected)
    assert d.witness is None or expected[d.witness]


def test_a_true_nan_is_still_a_dependence():
    """Guard: where the graph reads a NaN of x, both modes' NaN stays a dependence."""
    x = torch.rand(50, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) + 0.5
    x[20] = float("nan")
    x.requires_grad_()
    y = x.roll(1) * x.sqrt()
    d = vjp_magic.dependency(y, x)
    assert bool(_dense(d.pattern)[20, 20]) and bool(_dense(d.pattern)[21, 20])
    assert not _dense(d.pattern)[0, 20]
