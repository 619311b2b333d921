"""Circular pads and writes into slices (a CopySlices node) proved from the graph: the pattern
is exactly the nonzeros of torch.func.jacrev's Jacobian at a random x (float64), for 1-D, 2-D
and 3-D circular pads with asymmetric amounts and Conv's padding_mode="circular"; a write that
is not a copy, and a custom in-place Function on a view, prove nothing and run nothing."""
import pytest
import torch
import torch.nn.functional as F
from test_indexmaps import BUDGET, assert_csr_sorted, dense, structural

import vjp_magic
from vjp_magic.core.indexmaps import proved_pattern
from vjp_magic.core.pairing import Evidence


def _x(n: int, dtype=torch.float64, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, dtype=dtype, generator=torch.Generator().manual_seed(seed))


def _pad1(x):  # (batch, channel, L) with asymmetric amounts, then a crop back to L
    y = F.pad(x.reshape(2, 3, 7), (3, 1), mode="circular")
    return (y[..., 1:8] * y[..., 3:10] + y[..., :7]).reshape(-1) * x


def _pad2(x):
    y = F.pad(x.reshape(1, 2, 5, 6), (2, 0, 1, 3), mode="circular")
    return y.sum(1).reshape(-1)[: x.numel()] * x


def _pad3(x):
    y = F.pad(x.reshape(1, 1, 3, 4, 5), (1, 2, 0, 1, 2, 1), mode="circular")
    return y[..., :3, :4, 1:6].reshape(-1) * y[..., 3:, 1:, :5].reshape(-1)


def _crop(x):  # a negative amount crops that side, the other wraps around
    y = F.pad(x.reshape(1, 2, 30), (-1, 2), mode="circular")
    return F.pad(y, (3, -2), mode="circular").reshape(-1)[: x.numel()] * x


_GENERATOR = torch.Generator().manual_seed(3)
_CONV1 = torch.nn.Conv1d(2, 3, 5, padding=2, padding_mode="circular").double()
_CONV2 = torch.nn.Conv2d(1, 2, (3, 2), padding=(1, 1), padding_mode="circular",
                         dilation=(1, 2)).double()
for _conv in (_CONV1, _CONV2):
    _conv.requires_grad_(False)
    _conv.weight.copy_(torch.randn(_conv.weight.shape, dtype=torch.float64,
                                   generator=_GENERATOR))


def _conv1(x):
    return _CONV1(x.reshape(1, 2, 100)).reshape(-1)


def _conv2(x):
    return torch.tanh(_CONV2(x.reshape(1, 1, 6, 7))).reshape(-1)


def _slices(x):  # the user's own copies into slices of a new tensor
    out = torch.zeros(x.numel() + 3, dtype=x.dtype)
    out[2:-1] = x
    out[:2] = x[-2:] * 2
    return out[1:] + out[:-1] ** 2


CASES = [(_pad1, 42), (_pad2, 60), (_pad3, 60), (_crop, 60), (_conv1, 200), (_conv2, 42),
         (_slices, 30)]


@pytest.mark.parametrize("f,n", CASES, ids=[f.__name__ for f, _ in CASES])
def test_circular_pads_prove_the_structural_pattern(f, n):
    x = _x(n).requires_grad_()
    pattern = proved_pattern(f(x), x, BUDGET)
    assert pattern is not None and pattern.evidence == Evidence.PROVED and pattern.probes == 0
    assert torch.equal(dense(pattern), structural(f, x))
    assert_csr_sorted(pattern)
    assert x.grad is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_differentiate_through_a_circular_pad_equals_jacrev(dtype):
    def f(x):
        return F.pad(x.reshape(1, 1, 8, 9), (1, 2, 3, 0), mode="circular")[0, 0, 2:10, 1:10] \
            .reshape(-1) * x
    x = _x(72, dtype)
    expected = torch.func.jacrev(f)(x)
    x.requires_grad_()
    r = vjp_magic.differentiate(f(x), x, seed=0)
    torch.testing.assert_close(r.jacobian("x"), expected)
    assert (r.inputs["x"].sparse.evidence, r.inputs["x"].sparse.pattern_passes) == ("proved", 0)


def test_a_write_that_is_not_a_copy_proves_nothing():
    x = _x(12).requires_grad_()
    w = _x(4, seed=1).requires_grad_()
    out = x * 1
    out[2:6].mul_(w)  # reads the view's old values: not a copy
    assert proved_pattern(out, x, BUDGET) is None
    out = x * 1
    out[2:6].add_(w)  # the base stays read on the view: refused, not claimed as a copy
    assert proved_pattern(out, x, BUDGET) is None


def test_a_custom_function_written_into_a_view_runs_nothing():
    calls = []

    class Twice(torch.autograd.Function):
        @staticmethod
        def forward(ctx, v):
            ctx.mark_dirty(v)
            return v.mul_(2)

        @staticmethod
        def backward(ctx, grad):
            calls.append(1)
            return grad * 2

    x = _x(10).requires_grad_()
    out = x * 1
    Twice.apply(out[3:7])
    assert proved_pattern(out, x, BUDGET) is None
    assert calls == []
