"""Adversary s31b: a proved sparse pattern that rests on values x chose must say so
(conditional_on), else 'the pattern holds for every x' is shown where it is false at another
x. Expected patterns from torch.func.jacrev at a second x."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import vjp_magic
from test_adversary_s31_proved import _says_conditional, _support

N = 96
EDGES = torch.linspace(-2, 2, 9, dtype=torch.float64)


def _box_write(x):
    """A masked write into a view whose mask, at a SORTED x, is a contiguous box."""
    y = x.clone() * x.roll(1)
    y[4:].masked_fill_(x[4:] > 0, 0.0)
    return y


def _box_index_put(x):
    y = x.clone() * x.roll(1)
    y[4:][x[4:] > 0] = 0.0
    return y


def _sorted_index_copy(x):
    """index_copy_ into a view by x.argsort(): at a sorted x the index is 0, 1, 2, ..."""
    y = x.clone() * x.roll(1)
    y[4:].index_copy_(0, x[4:].detach().argsort(), x[4:] ** 2 * x[3:-1])
    return y


def _sorted_scatter(x):
    y = x.clone() * x.roll(1)
    y[4:].scatter_(0, x[4:].detach().argsort(), x[4:] ** 2 * x[3:-1])
    return y


def _clamped_view(x):
    y = x * x.roll(1)
    y[2:].clamp_(min=0)
    return y


BOXES = {
    "masked_fill_ on a view, mask a box at this x": (_box_write, True),
    "view[mask] = 0, mask a box at this x": (_box_index_put, True),
    "index_copy_ into a view by argsort, sorted here": (_sorted_index_copy, True),
    "scatter_ into a view by argsort, sorted here": (_sorted_scatter, True),
}

FROM_X = {
    "clamp_ of a view": (_clamped_view, False),
    "gather by bucketize(x)": (
        lambda x: x.roll(3).gather(0, torch.bucketize(x.detach(), EDGES).clamp(max=N - 1)) * x,
        False),
    "take by searchsorted(x)": (
        lambda x: x.roll(5).take(torch.searchsorted(EDGES, x.detach()).clamp(max=N - 1)) * x,
        False),
    "sort values times x": (lambda x: x.sort().values * x.roll(1), False),
    "topk values": (lambda x: x.topk(N // 2).values * x[:N // 2], False),
    "interpolate nearest of x[idx]": (
        lambda x: F.interpolate(x[x.argsort()][None, None], scale_factor=1.0,
                                mode="nearest")[0, 0] * x, False),
    "embedding of x by x.argsort()": (
        lambda x: F.embedding(x.detach().argsort(), (x * x.roll(1)).reshape(N, 1)).reshape(N),
        False),
}


def _x(seed, sort):
    x = torch.randn(N, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return x.sort().values if sort else x


@pytest.mark.parametrize("case", list(FROM_X))
def test_a_proved_pattern_resting_on_x_says_so(case):
    _check(*FROM_X[case])


@pytest.mark.parametrize("case", list(BOXES))
def test_a_masked_view_write_that_is_a_box_here_says_so(case):
    _check(*BOXES[case])


def _check(f, sort):
    x = _x(1, sort).requires_grad_()
    r = vjp_magic.differentiate(f(x), x, seed=0, exact_up_to=0)
    sparse = r.inputs["x"].sparse
    text = " ".join(repr(r).split())
    torch.testing.assert_close(r.jacobian("x").reshape(-1, N),
                               torch.func.jacrev(f)(x.detach()).reshape(-1, N))
    if sparse is None or str(sparse.evidence) != "proved":
        return
    other = _x(9, False)  # unsorted: the mask is no box
    jacobian = torch.func.jacrev(f)(other).reshape(sparse.matrix.shape)
    missed = int(((jacobian != 0) & ~_support(sparse.matrix)).sum())
    assert missed == 0 or _says_conditional(sparse, text), (missed, sparse.conditional_on)
