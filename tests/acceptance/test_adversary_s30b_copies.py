"""Adversarial review, session 30 (second pass): the CopySlices rule (core/indexmaps/copies.py)
that calls the graph node's backward on index grids. Where it proves a pattern, the pattern is
exactly jacrev's nonzeros (float64, at the point); writes that are not copies (broadcast,
duplicate indices, cumsum, renorm, put) prove nothing; the call leaves a trace function, hooks
and a freed graph as they were. All held in this review (guards)."""
from __future__ import annotations

import sys

import pytest
import torch

import vjp_magic
from stencils import dense
from vjp_magic.core.indexmaps import proved_pattern

IDX = torch.tensor
BUDGET = 2**28


def structural(f, x: torch.Tensor) -> torch.Tensor:
    """The nonzeros of jacrev's Jacobian at x, in float64."""
    return torch.func.jacrev(f)(x.detach().double()).reshape(-1, x.numel()) != 0


def _view_of_view(x):
    out = x * 1
    out[1:11][::2][1:4].copy_(x[:3] * 3)
    return out * x


def _mask_fill(x):
    out = x * 1
    out[2:8].masked_fill_(x[2:8].detach() > 0, 0.0)
    return out


def _clamp(x):
    out = x * 1
    out[2:8].clamp_(min=0)
    return out


def _scatter(x):
    out = x * 1
    out[2:8].scatter_(0, IDX([5, 4, 3]), x[:3] * 1)
    return out


def _index_copy(x):
    out = x * 1
    out[2:8].index_copy_(0, IDX([5, 1, 3]), x[:3] * 2)
    return out


def _masked_scatter(x):
    out = x * 1
    out[2:8].masked_scatter_(IDX([1, 0, 1, 0, 1, 1], dtype=torch.bool), x[:6] * 1)
    return out


def _twice(x):
    out = x * 1
    out[2:6] = x[:4]
    out[3:5] = x[10:12] * 2
    return out


def _broadcast(x):
    out = x * 1
    out[2:6].copy_(x[7:8])
    return out


def _duplicates(x):
    out = x * 1
    view = out[2:8]
    view[IDX([0, 0, 3])] = x[:3] * 1
    return out


def _accumulate(x):
    out = x * 1
    out[2:8].index_put_((IDX([0, 0, 3]),), x[:3] * 1, accumulate=True)
    return out


def _cumsum(x):
    out = x * 1
    out[2:8].cumsum_(0)
    return out


def _scatter_duplicates(x):
    out = x * 1
    out[2:8].scatter_(0, IDX([5, 5, 3]), x[:3] * 1)
    return out


PROVED = [_view_of_view, _mask_fill, _clamp, _scatter, _index_copy, _masked_scatter, _twice]
REFUSED = [_broadcast, _duplicates, _accumulate, _cumsum, _scatter_duplicates]


def _x():
    return torch.randn(20, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("f", PROVED + REFUSED, ids=lambda f: f.__name__)
def test_a_proved_write_is_jacrevs_pattern(f):
    x = _x().requires_grad_()
    pattern = proved_pattern(f(x), x, BUDGET)
    if f in REFUSED:
        assert pattern is None
    else:
        assert pattern is not None
        assert torch.equal(dense(pattern), structural(f, x))
    assert x.grad is None


def test_the_call_leaves_trace_hooks_and_freed_graphs_alone():
    x = _x().requires_grad_()
    y = _twice(x)
    calls, seen = [], []
    y.grad_fn.register_hook(lambda *a: calls.append("post"))
    y.grad_fn.register_prehook(lambda *a: calls.append("pre"))

    def tracer(frame, event, arg):
        seen.append(event)
        return tracer
    old = sys.gettrace()
    sys.settrace(tracer)
    try:
        pattern = proved_pattern(y, x, BUDGET)
        inside = sys.gettrace()
    finally:
        sys.settrace(old)
    assert inside is tracer and seen and pattern is not None and calls == []
    y.sum().backward()
    x.grad = None
    with pytest.raises(vjp_magic.VJPUsageError):
        vjp_magic.dependency(y, x, seed=0)
