"""A write into a view (CopySlices) is proved unconditionally only where its geometry is the
view's own (a slice, a transposed, strided or diagonal view, a circular pad): a wrapped op that
reads a saved index, mask or condition makes the proof conditional, even where that selection
is a box or 0, 1, 2, ... at this x (s31 CX). Expected patterns: torch.func.jacrev at another x."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vjp_magic.core.indexmaps import proved_pattern
from vjp_magic.core.indexmaps.copies import MASKED_WRITE

N = 48


def _x(seed, sort=False):
    x = torch.randn(N, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return x.sort().values if sort else x


def _written(write):
    def f(x):
        y = x.clone() * x.roll(1)
        write(y, x)
        return y
    return f


SELECTED = {
    "masked_fill_": lambda y, x: y[4:].masked_fill_(x[4:].detach() > 0, 0.0),
    "view[mask] = 0": lambda y, x: y[4:].__setitem__(x[4:].detach() > 0, 0.0),
    "index_copy_ by argsort": lambda y, x: y[4:].index_copy_(
        0, x[4:].detach().argsort(), x[4:] ** 2 * x[3:-1]),
    "scatter_ by argsort": lambda y, x: y[4:].scatter_(
        0, x[4:].detach().argsort(), x[4:] ** 2 * x[3:-1]),
    "index_put_ accumulate by argsort": lambda y, x: y[4:].index_put_(
        (x[4:].detach().argsort(),), x[4:] ** 2, accumulate=True),
    "masked_scatter_": lambda y, x: y[4:].masked_scatter_(x[4:].detach() > 0, x[4:] * 3),
}

GEOMETRIC = {
    "slice copy_": _written(lambda y, x: y[4:20].copy_(x[10:26] ** 2)),
    "strided fill_": _written(lambda y, x: y[1::3].fill_(0.0)),
    "transposed copy_": _written(lambda y, x: y.view(6, 8).t()[2:5].copy_(
        (x[:18] * 2).view(3, 6))),
    "diagonal copy_": _written(lambda y, x: y.view(6, 8).diagonal().copy_(x[:6] ** 3)),
    "circular pad": lambda x: F.pad((x * x.roll(2)).view(1, 1, N), (3, 3),
                                    mode="circular").reshape(-1),
}


def _pattern(f, x):
    x = x.clone().requires_grad_()
    pattern = proved_pattern(f(x), x, 2**30)
    assert x.grad is None
    return pattern


def _missed(f, pattern, x) -> int:
    """Nonzeros of jacrev at x outside the pattern."""
    rows = torch.repeat_interleave(torch.arange(pattern.shape[0]), pattern.crow.diff())
    support = torch.zeros(pattern.shape, dtype=torch.bool)
    support[rows, pattern.col] = True
    jacobian = torch.func.jacrev(f)(x).reshape(pattern.shape)
    return int(((jacobian != 0) & ~support).sum())


@pytest.mark.parametrize("case", list(SELECTED))
def test_a_selected_write_into_a_view_is_conditional_even_where_a_box(case):
    f = _written(SELECTED[case])
    pattern = _pattern(f, _x(1, sort=True))  # sorted: the selection is a box / the identity
    if case.endswith("accumulate by argsort"):  # base and source reach one entry: unproved
        assert pattern is None or MASKED_WRITE in pattern.conditional_on, pattern
        return
    assert pattern is not None and str(pattern.evidence) == "proved"
    assert MASKED_WRITE in pattern.conditional_on, pattern.conditional_on
    assert _missed(f, pattern, _x(1, sort=True)) == 0


@pytest.mark.parametrize("case", ["masked_fill_", "index_copy_ by argsort"])
def test_the_condition_is_needed(case):
    """At an unsorted x the sorted x's pattern misses nonzeros (why it is conditional)."""
    f = _written(SELECTED[case])
    pattern = _pattern(f, _x(1, sort=True))
    assert _missed(f, pattern, _x(9)) > 0


@pytest.mark.parametrize("case", list(GEOMETRIC))
def test_a_write_placed_by_the_view_stays_unconditional_and_holds_elsewhere(case):
    f = GEOMETRIC[case]
    pattern = _pattern(f, _x(1))
    assert pattern is not None and str(pattern.evidence) == "proved"
    assert pattern.conditional_on == (), pattern.conditional_on
    assert _missed(f, pattern, _x(1)) == 0
    assert _missed(f, pattern, _x(9)) == 0
