"""h.hessian(name, layout=torch.sparse_csr) of a result with points builds the CSR from the
per-point second derivatives, never the dense Hessian (core/hessian.points_csr). Expected
values from torch.func.hessian."""
from __future__ import annotations

import pytest
import torch

import vjp_magic

_W = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
CASES = {
    "elementwise": (lambda t: torch.sin(t) * t, (7,)),
    "rows summed": (lambda t: torch.tanh(t @ _W).sum(1), (5, 3)),
    "rows with components": (lambda t: torch.tanh(t @ _W), (5, 3)),
    "columns": (lambda t: (t.T @ _W[:, :1]) ** 3, (3, 4)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_points_csr_is_torch_func_hessian(case):
    f, shape = CASES[case]
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expected = torch.func.hessian(f)(x)
    x.requires_grad_()
    h = vjp_magic.hessian(f(x), x, seed=0)
    csr = h.hessian("x", layout=torch.sparse_csr)
    n = x.numel()
    assert csr.layout == torch.sparse_csr and csr.shape == (expected.numel() // n, n)
    torch.testing.assert_close(csr.to_dense(), expected.reshape(-1, n))
    torch.testing.assert_close(h.hessian("x"), expected)


def test_a_large_points_hessian_is_not_refused_for_its_dense_size():
    n = 1000
    x = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x.requires_grad_()
    h = vjp_magic.hessian(torch.sin(x) * x, x, seed=0, memory_budget=2**30)
    csr = h.hessian("x", layout=torch.sparse_csr)  # dense: 10^9 entries, 8 GB
    assert csr.shape == (n * n, n) and csr._nnz() == n
    rows = torch.arange(n) * n + torch.arange(n)  # entry (y = i, j = i, k = i)
    assert torch.equal(csr.crow_indices()[rows + 1] - csr.crow_indices()[rows],
                       torch.ones(n, dtype=torch.int64))
    t = x.detach()
    torch.testing.assert_close(csr.values(), 2 * torch.cos(t) - t * torch.sin(t))


def test_a_points_csr_over_the_budget_is_refused_with_its_size():
    x = torch.randn(20_000, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x.requires_grad_()
    h = vjp_magic.hessian(torch.tanh(x @ _W).sum(1), x, seed=0, memory_budget=2**30)
    with pytest.raises(vjp_magic.VJPUsageError, match="180,000 nonzeros"):
        h.hessian("x", layout=torch.sparse_csr)  # 1.2·10⁹ rows: their pointers alone 9.6 GB
