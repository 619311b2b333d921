"""Sparse Hessians of random compositions of shifts, rolls, gathers and elementwise maps,
against torch.func.hessian (float64 and float32); the sparse path forced at small n."""
import numpy as np
import pytest
import torch

from vjp_magic.core import hessian as hessian_module
from vjp_magic.core.hessian import second_derivatives

ELEMENTWISE = [torch.sin, torch.tanh, lambda t: t ** 3 / 3, lambda t: torch.exp(t / 4),
               lambda t: t * torch.sigmoid(t)]


def random_function(rng, n):
    """f(x) = Σ_terms Σ g(x) · h(shifted x) with random shifts, rolls and a gather."""
    terms = []
    for _ in range(int(rng.integers(1, 4))):
        g = ELEMENTWISE[rng.integers(len(ELEMENTWISE))]
        h = ELEMENTWISE[rng.integers(len(ELEMENTWISE))]
        kind = int(rng.integers(3))
        shift = int(rng.integers(1, 4))
        if kind == 0:
            terms.append(lambda x, g=g, h=h, s=shift: (g(x[:-s]) * h(x[s:])).sum())
        elif kind == 1:
            terms.append(lambda x, g=g, h=h, s=shift: (g(x) * h(torch.roll(x, s))).sum())
        else:
            index = torch.from_numpy(rng.permutation(n))
            terms.append(lambda x, g=g, h=h, i=index: (g(x) * h(x[i])).sum())
    return lambda x: sum(term(x) for term in terms) + (x ** 4).sum() / 12


def _one(rng, dtype):
    n = int(rng.integers(8, 60))
    f = random_function(rng, n)
    x = torch.randn(n, dtype=dtype, generator=torch.Generator().manual_seed(int(rng.integers(9))))
    expected = torch.func.hessian(f)(x)
    x.requires_grad_(True)
    h = second_derivatives(f(x), {"x": x})
    tol = {} if dtype == torch.float64 else {"rtol": 1e-3, "atol": 1e-3}
    torch.testing.assert_close(h.hessian("x", layout=torch.sparse_csr).to_dense(), expected,
                               **tol)
    return h.inputs["x"].sparse is not None


@pytest.fixture
def sparse_from_small(monkeypatch):
    monkeypatch.setattr(hessian_module, "SPARSE_FROM", 1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_few_random_compositions(sparse_from_small, dtype):
    rng = np.random.default_rng(11)
    assert sum(_one(rng, dtype) for _ in range(6)) >= 1  # some went sparse


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_many_random_compositions(sparse_from_small, dtype):
    rng = np.random.default_rng(12)
    for _ in range(150):
        _one(rng, dtype)
