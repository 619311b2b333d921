"""Adversarial review, session 30 (issue 20): ``h.hessian(name, layout=torch.sparse_csr)`` of
results with points (an elementwise map, a row-wise layer), whose CSR holds a few nonzeros
per row however large the dense Hessian would be; mixed sparse and dense inputs of one scalar.

Expected values come from ``torch.func.hessian`` or mathematics (d²/dx² (x sin x) =
2 cos x − x sin x). Tests marked ``xfail(strict=True)`` are bugs found in this review;
unmarked ones guard what holds.
"""
from __future__ import annotations

import pytest
import torch

import vjp_magic


def _x(*shape):
    return torch.randn(shape, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(0)).requires_grad_()


def _second(x):
    return 2 * torch.cos(x) - x * torch.sin(x)


def test_points_hessian_csr_small_equals_torch_func_hessian():
    x = _x(100)
    expected = torch.func.hessian(lambda t: torch.sin(t) * t)(x.detach()).reshape(10_000, 100)
    h = vjp_magic.hessian(torch.sin(x) * x, x, seed=0)
    torch.testing.assert_close(h.hessian("x", layout=torch.sparse_csr).to_dense(), expected)


def test_points_hessian_csr_is_not_refused_for_its_dense_size():
    n = 1000
    x = _x(n)
    h = vjp_magic.hessian(torch.sin(x) * x, x, seed=0, memory_budget=2 ** 30)  # 1 GiB
    csr = h.hessian("x", layout=torch.sparse_csr)
    assert csr.shape == (n * n, n)
    rows = torch.arange(n) * n + torch.arange(n)
    assert torch.equal(csr.crow_indices()[rows + 1] - csr.crow_indices()[rows],
                       torch.ones(n, dtype=torch.int64))
    torch.testing.assert_close(csr.values(), _second(x.detach()))


_W = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def _rowwise(t):
    return torch.tanh(t @ _W).sum(1)


def test_rowwise_hessian_csr_equals_torch_func_hessian():
    x = _x(200, 3)
    expected = torch.func.hessian(_rowwise)(x.detach()).reshape(200 * 600, 600)
    h = vjp_magic.hessian(_rowwise(x), x, seed=0, memory_budget=2 ** 30)
    csr = h.hessian("x", layout=torch.sparse_csr)
    assert csr._nnz() == 200 * 9
    torch.testing.assert_close(csr.to_dense(), expected)


def test_rowwise_hessian_csr_refusal_counts_the_csr_not_the_dense_hessian():
    """(20000·60000) CSR rows need 9.6 GB of row pointers: refused, for that size (it said
    the dense 576,000 GB when this review began)."""
    x = _x(20_000, 3)
    h = vjp_magic.hessian(_rowwise(x), x, seed=0, memory_budget=2 ** 30)
    with pytest.raises(vjp_magic.VJPUsageError) as error:
        h.hessian("x", layout=torch.sparse_csr)
    assert "180,000 nonzeros" in str(error.value) and "576" not in str(error.value)


def test_jacobian_csr_of_points_at_100000_is_built():
    x = _x(100_000)
    r = vjp_magic.differentiate(torch.sin(x), x, seed=0)
    csr = r.jacobian("x", layout=torch.sparse_csr)
    assert csr.shape == (100_000, 100_000) and csr._nnz() == 100_000
    torch.testing.assert_close(csr.values(), torch.cos(x.detach()))


def test_a_scalar_of_a_sparse_and_a_dense_input():
    n = 2100
    x = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    w = torch.randn(30, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def f(a, b):
        return (a * a.roll(1)).sum() + (torch.tanh(b) ** 2).sum() * a[:30].sum() \
            + torch.logsumexp(b, 0)
    expected_x = torch.func.hessian(f, argnums=0)(x, w)
    expected_w = torch.func.hessian(f, argnums=1)(x, w)
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    h = vjp_magic.hessian(f(xr, wr), {"x": xr, "w": wr}, seed=0)
    assert h.inputs["x"].sparse is not None
    torch.testing.assert_close(h.hessian("x", layout=torch.sparse_csr).to_dense(), expected_x)
    torch.testing.assert_close(h.hessian("w"), expected_w)
    torch.testing.assert_close(h.hessian("w", layout=torch.sparse_csr).to_dense(), expected_w)
