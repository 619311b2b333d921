"""The Hessian pattern of a sum of terms proved from the first-order graph
(core.indexmaps.summed), the j mod p colouring, and the sparse Hessians they give: patterns
against torch.func.hessian's nonzeros, values against it or against the analytic Rosenbrock
Hessian at a large size."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vjp_magic
from custom_functions import Twice
from vjp_magic.core import hessian as hessian_module
from vjp_magic.core.hessian import second_derivatives
from vjp_magic.core.indexmaps.summed import summed_hessian_pattern
from vjp_magic.core.sparse_hessian import lattice_period

BUDGET = 2**30


def rosenbrock(x):
    return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()


def _pattern_matrix(found, n):
    crow, col = found.pattern.crow, found.pattern.col
    rows = torch.repeat_interleave(torch.arange(n), crow.diff())
    dense = torch.zeros(n, n, dtype=torch.bool)
    dense[rows, col] = True
    return dense


def _permutation(n):
    return torch.from_numpy(np.random.default_rng(3).permutation(n))


SUMS = {
    "rosenbrock": rosenbrock,
    "mean": lambda x: (torch.sin(x[:-2]) * x[2:]).mean(),
    "scaled": lambda x: 3 * (x[1:] * x[:-1]).sum() / 2 - (x ** 4).sum(),
    "weighted": lambda x: (torch.linspace(0, 1, x.numel() - 1, dtype=x.dtype)
                           * torch.tanh(x[1:] - x[:-1])).sum(),
    "roll": lambda x: (x * torch.roll(x, 3) ** 2).sum(),
    "padded": lambda x: (F.pad(x, (2, 0))[:-2] * torch.exp(x / 4)).sum(),
    "grid": lambda x: (x.reshape(6, -1)[1:] * x.reshape(6, -1)[:-1] ** 3).sum(),
    "gather": lambda x: (x * x[_permutation(x.numel())] ** 2).sum(),
    "scalar term": lambda x: (x ** 2).sum() + x[0] * x[5] ** 2,
    "two sums": lambda x: (x[1:] ** 2 * x[:-1]).sum() - torch.sin(x[::2]).sum(),
    "reshaped": lambda x: -(x[1:] ** 2 * x[:-1]).sum().reshape(1),
    "grid energy": lambda x: ((x.reshape(6, 8)[1:] - x.reshape(6, 8)[:-1]) ** 2).sum()
    + ((x.reshape(6, 8)[:, 1:] - x.reshape(6, 8)[:, :-1]) ** 2).sum() + (x ** 4).sum() / 4,
}


@pytest.mark.parametrize("name", list(SUMS))
def test_pattern_holds_every_nonzero_and_is_symmetric(name):
    f, n = SUMS[name], 48
    x = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    expected = torch.func.hessian(f)(x) != 0
    x.requires_grad_(True)
    found = summed_hessian_pattern(f(x), x, BUDGET)
    assert found is not None
    pattern = _pattern_matrix(found, n)
    assert not (expected & ~pattern).any()  # nothing missed
    assert (pattern == pattern.T).all() and pattern.diagonal().all()


def test_shift_terms_give_exactly_the_tridiagonal_pattern():
    x = torch.randn(30, dtype=torch.float64, requires_grad=True)
    found = summed_hessian_pattern(rosenbrock(x), x, BUDGET)
    assert found.offsets.tolist() == [-1, 0, 1]
    band = (torch.arange(30)[:, None] - torch.arange(30)[None, :]).abs() <= 1
    assert (_pattern_matrix(found, 30) == band).all()


@pytest.mark.parametrize("f", [
    lambda x: x.sum() ** 2,  # the square of a sum: every pair
    lambda x: (x * x).sum() * x.sum(),  # a product of two sums
    lambda x: x.sum() / x[1:].sum(),  # x in the denominator
])
def test_not_a_sum_of_sparse_terms_is_not_claimed(f):
    x = torch.randn(40, dtype=torch.float64, requires_grad=True)
    assert summed_hessian_pattern(f(x), x, BUDGET) is None  # dense: left to the other paths


def test_a_custom_function_proves_nothing():
    x = torch.randn(40, dtype=torch.float64, requires_grad=True)
    assert summed_hessian_pattern(Twice.apply(x[1:] * x[:-1]).sum(), x, BUDGET) is None


def test_non_scalar_output_is_not_claimed():
    x = torch.randn(40, dtype=torch.float64, requires_grad=True)
    assert summed_hessian_pattern(x[1:] * x[:-1], x, BUDGET) is None


@pytest.mark.parametrize("offsets, least, period", [
    ([-1, 0, 1], 3, 3), ([0], 1, 1), ([-2, 0, 2], 3, 3), ([-1, 0, 1, 2], 4, 4),
    ([-10, -1, 0, 1, 10], 5, 6), ([-3, 0, 3], 3, 4),  # 5 divides 10: p = 6
])
def test_lattice_period_separates_every_row(offsets, least, period):
    p = lattice_period(np.array(offsets), least)
    assert p == period
    gaps = [abs(a - b) for a in offsets for b in offsets if a != b]
    assert all(g % p for g in gaps)  # columns j + d of a row: distinct j mod p


@pytest.fixture
def sparse_from_small(monkeypatch):
    monkeypatch.setattr(hessian_module, "SPARSE_FROM", 1)


@pytest.mark.parametrize("name", list(SUMS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sparse_hessian_of_sums_equals_torch(sparse_from_small, name, dtype):
    f, n = SUMS[name], 48
    x = torch.randn(n, dtype=dtype, generator=torch.Generator().manual_seed(7))
    expected = torch.func.hessian(f)(x)
    x.requires_grad_(True)
    h = second_derivatives(f(x), {"x": x}, seed=1)
    item = h.inputs["x"]
    assert item.sparse is not None and item.evidence == "proved"
    tol = {} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-4}
    torch.testing.assert_close(h.hessian("x", layout=torch.sparse_csr).to_dense(),
                               expected.reshape(-1, n), **tol)  # (a (1,) output: n × n too)
    assert x.grad is None


def test_rosenbrock_at_a_large_size_against_its_analytic_hessian():
    n = 200_000
    x = torch.linspace(-1.5, 2, n, dtype=torch.float64, requires_grad=True)
    h = vjp_magic.hessian(rosenbrock(x), x)
    matrix = h.hessian("x", layout=torch.sparse_csr)
    v = x.detach()
    diagonal = torch.zeros(n, dtype=torch.float64)
    diagonal[:-1] += 1200 * v[:-1] ** 2 - 400 * v[1:] + 2
    diagonal[1:] += 200
    off = -400 * v[:-1]
    expected = torch.sparse_coo_tensor(
        torch.stack([torch.cat([torch.arange(n), torch.arange(n - 1), torch.arange(1, n)]),
                     torch.cat([torch.arange(n), torch.arange(1, n), torch.arange(n - 1)])]),
        torch.cat([diagonal, off, off]), (n, n)).coalesce()
    got = matrix.to_sparse_coo().coalesce()
    assert torch.equal(got.indices(), expected.indices())
    torch.testing.assert_close(got.values(), expected.values(), rtol=1e-12, atol=1e-9)
    item = h.inputs["x"]
    assert item.sparse.count == 3 and item.evidence == "proved"
    assert "The Hessian is tridiagonal: 599,998 nonzeros from 3 Hessian-vector products " \
        "(the pattern proved from the graph" in " ".join(repr(h).split())


def test_linear_sum_is_the_empty_hessian():
    x = torch.randn(5000, dtype=torch.float64, requires_grad=True)
    h = vjp_magic.hessian((torch.arange(5000.0, dtype=torch.float64) * x[None]).sum(), x)
    assert h.inputs["x"].constant and h.inputs["x"].sparse.nnz == 0


def test_unbatched_products_give_the_same_hessian(sparse_from_small):
    x = torch.randn(64, dtype=torch.float64, requires_grad=True)
    expected = second_derivatives(rosenbrock(x), {"x": x}, seed=3).hessian("x")
    looped = second_derivatives(rosenbrock(x), {"x": x}, seed=3, batched=False).hessian("x")
    torch.testing.assert_close(looped, expected)
    torch.testing.assert_close(expected, torch.func.hessian(rosenbrock)(x.detach()))


def test_a_term_reading_all_of_x_is_refused_before_its_pairs_are_built():
    x = torch.randn(20_000, dtype=torch.float64, requires_grad=True)
    # one term reads 20,000 entries: 4·10⁸ pairs if they were listed
    assert summed_hessian_pattern(torch.logsumexp(x[1:] * x[:-1], 0), x, 2**40) is None
    assert summed_hessian_pattern((x[1:] * x[:-1]).sum() + x.prod(), x, 2**40) is None


def test_a_cast_of_the_sum_is_still_a_sum():
    x = torch.randn(40, requires_grad=True)  # float32, the sum cast to float64
    found = summed_hessian_pattern((x[1:] * x[:-1] ** 2).sum().double(), x, BUDGET)
    assert found is not None and found.offsets.tolist() == [-1, 0, 1]
