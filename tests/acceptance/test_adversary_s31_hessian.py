"""Adversarial review, session 31 (issue 20): ``vjp_magic.hessian`` / ``%hessian`` of a VECTOR
output whose first-derivative Jacobian takes the sparse path (no point structure, more than
64·64 entries): a neighbour product ``x * x.roll(1)`` at 65 entries, a squared stencil.
Expected values: ``torch.func.jacfwd(torch.func.jacrev(f))``. Strict xfails are bugs; unmarked
tests guard what held.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import vjp_magic


def _neighbours(x):
    return x * x.roll(1)


def _stencil(x):
    return F.conv1d(x[None, None], torch.ones(1, 1, 3, dtype=x.dtype), padding=1)[0, 0] ** 2


CASES = {"x * x.roll(1)": _neighbours, "a squared 3-point stencil": _stencil}
CRASH = ("(fixed) hessian of a vector output whose Jacobian is computed sparse (> 64x64 "
         "entries, no points) crashed: 'reshape is not implemented for sparse tensors' in "
         "core/hessian.py first_derivatives (expected.reshape on the sparse CSR Jacobian)")


def _expected(f, x):
    return torch.func.jacfwd(torch.func.jacrev(f))(x)


@pytest.mark.parametrize("n", [8, 64])
@pytest.mark.parametrize("case", list(CASES))
def test_a_vector_hessian_below_the_sparse_size(case, n):
    f = CASES[case]
    x = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expected = _expected(f, x)
    x.requires_grad_()
    h = vjp_magic.hessian(f(x), x, seed=0)
    torch.testing.assert_close(h.hessian("x"), expected)
    assert x.grad is None


def test_an_elementwise_vector_hessian_at_150():
    def f(x):
        return torch.sin(x) * x
    x = torch.randn(150, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expected = _expected(f, x)
    x.requires_grad_()
    h = vjp_magic.hessian(f(x), x, seed=0)
    torch.testing.assert_close(h.hessian("x"), expected)
    torch.testing.assert_close(h.hessian("x", layout=torch.sparse_csr).to_dense(),
                               expected.reshape(150 * 150, 150))


@pytest.mark.parametrize("n", [65, 120])
@pytest.mark.parametrize("case", list(CASES))
def test_a_vector_hessian_with_a_sparse_jacobian(case, n):
    f = CASES[case]
    x = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expected = _expected(f, x)
    x.requires_grad_()
    h = vjp_magic.hessian(f(x), x, seed=0)
    torch.testing.assert_close(h.hessian("x"), expected)
    torch.testing.assert_close(h.hessian("x", layout=torch.sparse_csr).to_dense(),
                               expected.reshape(n * n, n))


def test_the_magic_on_a_vector_with_a_sparse_jacobian(ip, run_ok):
    run_ok("x = torch.randn(65, dtype=torch.float64, requires_grad=True)\ny = x * x.roll(1)")
    h = run_ok("%hessian y wrt x")
    x = ip.user_ns["x"].detach()
    torch.testing.assert_close(h.hessian("x"), _expected(_neighbours, x))


def _two_inputs_a(a, b):
    return a * a.roll(1) + b ** 2


def _two_inputs_both(a, b):
    return a * b.roll(1)


@pytest.mark.parametrize("f", [_two_inputs_a, _two_inputs_both], ids=["sparse in a", "both"])
def test_a_vector_hessian_of_two_inputs_with_a_sparse_jacobian(f):
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(80, dtype=torch.float64, generator=g) for _ in range(2))
    expected = torch.func.jacfwd(torch.func.jacrev(f, argnums=(0, 1)), argnums=(0, 1))(a, b)
    a.requires_grad_()
    b.requires_grad_()
    h = vjp_magic.hessian(f(a, b), {"a": a, "b": b}, seed=0)
    torch.testing.assert_close(h.hessian("a"), expected[0][0])
    torch.testing.assert_close(h.hessian("b"), expected[1][1])


def test_a_2d_output_hessian_with_a_sparse_jacobian():
    def f(x):
        return (x * x.roll(1)).reshape(8, 10)
    x = torch.randn(80, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expected = _expected(f, x)
    x.requires_grad_()
    torch.testing.assert_close(vjp_magic.hessian(f(x), x, seed=0).hessian("x"), expected)
