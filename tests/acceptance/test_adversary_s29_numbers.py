"""Adversarial review, session 29 (issues 20 and 23): numbers a sparse result states, against
what autograd and the other entry points say on the same graph.

Expected values come from the mathematics of each map (stated beside it) or from
``torch.func.jacrev``. Tests marked ``xfail(strict=True)`` are bugs found in this review;
unmarked ones guard a class of inputs that holds today.
"""
from __future__ import annotations

import pytest
import torch

from custom_functions import Identity
import vjp_magic


# -- a unit coupling beside a huge diagonal, past the 64 entries the coupling check reads -------
def _huge_diagonal_plus_coupling(x, big, a=5, b=4):
    """big·x²/2 through an opaque Function, plus x[a] added to entry b: dy[b]/dx[a] = 1."""
    u = Identity.apply(x)
    one_hot = torch.zeros_like(x)
    one_hot[b] = 1.0
    return big * u * u / 2 + one_hot * u[a]


def _x(n, dtype):
    generator = torch.Generator().manual_seed(0)
    return (torch.rand(n, dtype=dtype, generator=generator) + 0.5).requires_grad_()


@pytest.mark.parametrize("n", [65, 200])
def test_dependency_and_differentiate_see_the_coupling_past_64_entries(n):
    x = _x(n, torch.float32)
    y = _huge_diagonal_plus_coupling(x, 1e12)
    assert vjp_magic.dependency(y, x, seed=0).pattern[4, 5]
    r = vjp_magic.differentiate(y, x, seed=0)
    assert r.jacobian_block("x", torch.tensor([4]), torch.tensor([5])).item() == 1.0


@pytest.mark.parametrize("n", [65, 200])
def test_sparse_jacobian_keeps_the_coupling_past_64_entries(n):
    x = _x(n, torch.float32)
    y = _huge_diagonal_plus_coupling(x, 1e12)
    assert vjp_magic.sparse_jacobian(y, x, seed=0).to_dense()[4, 5] == 1.0


def test_sparse_jacobian_keeps_the_coupling_in_float64_past_64_entries():
    x = _x(200, torch.float64)
    y = _huge_diagonal_plus_coupling(x, 1e20)
    assert vjp_magic.sparse_jacobian(y, x, seed=0).to_dense()[4, 5] == 1.0


# -- the sparse check on a proved pattern: an MLP over x plus its previous row (issue 23's leak) --
def _mlp_with_a_row_leak():
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(),
                              torch.nn.Linear(32, 4)).double()

    def f(x):  # y[i] reads x[i] and x[i-1]: a proved pattern, 8 colours
        return mlp(x + torch.cat([torch.zeros(1, 16, dtype=x.dtype), 0.1 * x[:-1]]))
    x = torch.randn(256, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    return f, x


def test_the_mlp_with_a_row_leak_has_the_derivatives_of_jacrev():
    f, x = _mlp_with_a_row_leak()
    expected = torch.func.jacrev(f)(x)
    x.requires_grad_()
    for seed in range(4):
        r = vjp_magic.differentiate(f(x), x, seed=seed)
        torch.testing.assert_close(r.jacobian("x"), expected)


def test_the_mlp_with_a_row_leak_takes_the_sparse_path():
    f, x = _mlp_with_a_row_leak()
    x.requires_grad_()
    for seed in range(4):
        r = vjp_magic.differentiate(f(x), x, seed=seed)
        assert r.inputs["x"].sparse is not None, (seed, r.notes)
