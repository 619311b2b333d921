"""Adversarial review, session 29 (issues 20 and 23): sparse Jacobians in the half-precision
dtypes, through the public API only.

Expected values come from ``torch.func.jacrev`` at the same dtype (an exact match: one
backward pass per colour adds each entry once). Tests marked ``xfail(strict=True)`` are bugs
found in this review; unmarked ones guard a class of inputs that holds today.
"""
from __future__ import annotations

import pytest
import torch

import vjp_magic


def _cyclic(x):
    return x.roll(1) - 2 * x + x.roll(-1)


def _neighbours(x):
    return x.roll(1) * x


def _x(n, dtype):
    generator = torch.Generator().manual_seed(0)
    return torch.randn(n, generator=generator).to(dtype).requires_grad_()


@pytest.mark.parametrize("f", [_cyclic, _neighbours])
def test_sparse_jacobian_in_float16_equals_jacrev(f):
    x = _x(300, torch.float16)
    expected = torch.func.jacrev(f)(x.detach())
    got = vjp_magic.sparse_jacobian(f(x), x, seed=0)
    assert got.dtype == torch.float16
    torch.testing.assert_close(got.to_dense(), expected, rtol=0, atol=0)


@pytest.mark.parametrize("f", [_cyclic, _neighbours])
def test_sparse_jacobian_in_bfloat16_equals_jacrev(f):
    x = _x(300, torch.bfloat16)
    expected = torch.func.jacrev(f)(x.detach())
    got = vjp_magic.sparse_jacobian(f(x), x, seed=0)
    torch.testing.assert_close(got.to_dense(), expected, rtol=0, atol=0)


def test_differentiate_a_large_bfloat16_stencil():
    _large_stencil(torch.bfloat16)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_differentiate_a_large_stencil(dtype):
    _large_stencil(dtype)


def _large_stencil(dtype):
    """y[i] = x[i-1]·x[i] (cyclic): dy[i]/dx[i] = x[i-1], dy[i]/dx[i-1] = x[i], 0 elsewhere."""
    x = _x(5000, dtype)
    r = vjp_magic.differentiate(_neighbours(x), x, seed=0)
    rows, t = torch.arange(5000), x.detach()
    torch.testing.assert_close(r.jacobian_block("x", rows, rows).diagonal(), t.roll(1),
                               rtol=0, atol=0)
    torch.testing.assert_close(r.jacobian_block("x", rows, rows.roll(1)).diagonal(), t,
                               rtol=0, atol=0)
    assert r.jacobian("x", layout=torch.sparse_csr).values().count_nonzero() <= 2 * 5000


def test_differentiate_a_small_bfloat16_stencil():
    """At 300 entries the same map in bfloat16 is computed (guards the class)."""
    x = _x(300, torch.bfloat16)
    expected = torch.func.jacrev(_neighbours)(x.detach())
    got = vjp_magic.differentiate(_neighbours(x), x, seed=0).jacobian("x")
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_sparse_hessian_in_bfloat16_equals_torch_func_hessian():
    x = _x(2500, torch.bfloat16)
    h = vjp_magic.hessian(_neighbours(x).sum(), x, seed=0)
    assert h.inputs["x"].sparse is not None
    got = h.hessian("x", layout=torch.sparse_csr).to_dense()
    expected = torch.func.hessian(lambda t: _neighbours(t).sum())(x.detach())
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
