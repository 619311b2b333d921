"""The compressed Jacobian takes forward-mode column passes where they need fewer colours than
the rows (issue 20, item 2), through the public entry points; values against torch.func.jacrev."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import vjp_magic
from vjp_magic.core.compressed import compressed_jacobian


def _dense_column(x):
    """A 3-point stencil plus x[0]·cos(x): every output reads x[0] (a dense column)."""
    return F.pad(x, (1, 1))[2:] + x ** 3 + x[0] * torch.cos(x)


def _broadcast_first(x):
    """y = sin(x) * x[..., :1]: each row of the grid reads its own first entry."""
    return torch.sin(x) * x[:, :1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("f,shape", [(_dense_column, (300,)), (_broadcast_first, (40, 30))])
def test_dense_columns_are_computed_by_columns_and_equal_jacrev(f, shape, dtype):
    x = torch.linspace(-1, 1, int(torch.tensor(shape).prod()), dtype=dtype).reshape(shape)
    x.requires_grad_()
    found = compressed_jacobian(f(x), x, 2**30, seed=0)
    assert found is not None and found.mode == "columns"
    expected = torch.func.jacrev(f)(x.detach()).reshape(f(x).numel(), x.numel())
    torch.testing.assert_close(found.matrix.to_dense(), expected)
    torch.testing.assert_close(vjp_magic.sparse_jacobian(f(x), x, seed=1).to_dense(), expected)


def test_a_tridiagonal_stays_by_rows():
    x = torch.linspace(-1, 1, 300, requires_grad=True)
    y = F.pad(x, (1, 1))[2:] + x ** 3 + F.pad(x, (1, 1))[:-2]
    found = compressed_jacobian(y, x, 2**30, seed=0)
    assert found is not None and found.mode == "rows" and found.count == 3


class _Once(torch.autograd.Function):
    """x[0]·x through a backward with no double backward."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x[0]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        grad = g * x[0]
        grad[0] = grad[0] + (g * x).sum()
        return grad


def test_no_double_backward_is_never_silently_wrong():
    x = torch.linspace(0.5, 1.5, 200, dtype=torch.float64, requires_grad=True)
    y = _Once.apply(x) + x ** 2
    expected = torch.func.jacrev(lambda t: t * t[0] + t ** 2)(x.detach())
    torch.testing.assert_close(vjp_magic.sparse_jacobian(y, x, seed=0).to_dense(), expected)
    r = vjp_magic.differentiate(y, x, seed=0)
    torch.testing.assert_close(r.jacobian("x"), expected)
