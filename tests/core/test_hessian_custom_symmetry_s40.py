"""Session 40 (R1-7, R1-8): a Hessian through a custom ``autograd.Function`` is not proved
symmetric. The sparse path reads autograd's rows as they are there (no star colouring's
mirrored reads), its symmetry is judged on the matrix (and by probes uᵀHv = vᵀHu against
measured rounding), and the float32 check does not let a 1e-3 relative error through.

Expected values: ``torch.autograd.functional.hessian`` (a custom Function's backward as
autograd differentiates it; ``torch.func.hessian`` for torch's own ops)."""
from __future__ import annotations

import pytest
import torch
from torch.autograd.function import once_differentiable

import vjp_magic
from vjp_magic.core.sparse_hessian import checked

N = 2100  # past the sparse path's threshold


def _skewed(eps: float, shift: int):
    """sum(x**2) + Σ x_i x_(i+1) by a custom backward adding eps·x[i - shift]: autograd's
    ∂d/∂x has eps at (i, i - shift) only (not symmetric)."""
    class _Skewed(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x ** 2

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return g * 2 * x + eps * g * x.roll(shift)

    return lambda x: _Skewed.apply(x).sum() + (x[1:] * x[:-1]).sum()


class _Cube(torch.autograd.Function):
    """x**3 with its true derivative: a custom Function whose Hessian is symmetric."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x ** 3

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 3 * g * x ** 2


class _OnceCube(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x ** 3

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 3 * g * x ** 2


def _cubic(x):
    return _Cube.apply(x).sum() + (x[1:] * x[:-1]).sum() + (x[:-300].sin() * x[300:]).sum()


def _text(h) -> str:
    return " ".join(h._repr_mimebundle_()["text/plain"].split())


def _x(dtype, n=N):
    return torch.randn(n, dtype=dtype, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("eps,shift", [(1e-3, 300), (1e-2, 1), (1e-6, 7)])
def test_a_skewed_custom_hessian_is_autograds_and_not_called_symmetric(dtype, eps, shift):
    f = _skewed(eps, shift)
    x = _x(dtype)
    leaf = x.clone().requires_grad_()
    h = vjp_magic.hessian(f(leaf), leaf, names=["x"], seed=0)
    expected = torch.autograd.functional.hessian(f, x)
    got = h.hessian("x", layout=torch.sparse_csr).to_dense()
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)
    if eps * 2 > 1e-5 or dtype == torch.float64:  # above float32's own rounding of 2
        assert not h.inputs["x"].symmetric
        text = _text(h)
        assert "not symmetric" in text and "symmetric (proved" not in text


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("n", [N, 60], ids=["sparse", "dense"])
def test_a_custom_function_with_a_true_backward_is_symmetric_checked_not_proved(dtype, n):
    """No false alarm: x**3 by a custom Function stays symmetric (sparse at N), its values
    autograd's; the words say checked at this x, not proved."""
    x = _x(dtype, n)
    leaf = x.clone().requires_grad_()
    h = vjp_magic.hessian(_cubic(leaf), leaf, names=["x"], seed=0)
    assert (h.inputs["x"].sparse is not None) == (n == N)
    assert h.inputs["x"].symmetric
    torch.testing.assert_close(h.hessian("x"), torch.autograd.functional.hessian(_cubic, x))
    text = _text(h)
    assert "symmetric at this x (checked, not proved" in text and "not symmetric" not in text
    assert "symmetric (proved" not in text


def test_torchs_own_ops_keep_a_proved_symmetric_headline():
    f = lambda x: (x ** 3).sum() + (x[1:] * x[:-1]).sum()  # noqa: E731
    x = _x(torch.float64).requires_grad_()
    h = vjp_magic.hessian(f(x), x, names=["x"], seed=0)
    torch.testing.assert_close(h.hessian("x"), torch.func.hessian(f)(x.detach()))
    assert "symmetric (proved for every x)" in _text(h)


def test_once_differentiable_is_refused_not_shown_symmetric():
    x = _x(torch.float32).requires_grad_()
    with pytest.raises(vjp_magic.VJPUsageError, match="once_differentiable"):
        vjp_magic.hessian(_OnceCube.apply(x).sum(), x, names=["x"], seed=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_the_sparse_check_fails_a_relative_error_well_above_rounding(dtype):
    """The check of a sparse Hessian against vᵀ∂d/∂x: the exact matrix passes; entries
    moved by 1e-3 of their size (far above float32's rounding, 6e-8) fail. float32 let 1e-3
    through when its first judgement took 64 times the probe tolerance of row sums."""
    f = lambda t: (t ** 2).sum() + (t[1:] * t[:-1]).sum() + (t[:-300] * t[300:]).sum()  # noqa
    x = _x(dtype).requires_grad_()
    (d,) = torch.autograd.grad(f(x), x, create_graph=True)
    exact = torch.func.hessian(f)(x.detach())
    assert checked(d, x, exact.to_sparse_csr(), 0)
    for rel in (1e-3, 1e-2):
        wrong = exact.clone()
        wrong[0, 300] += 2 * rel
        wrong[1000, 1001] -= 2 * rel
        assert not checked(d, x, wrong.to_sparse_csr(), 0), rel


# -- R1-4: a Hessian with a few dense rows (an arrow) is coloured, each dense row its own colour
def _two_hubs(t):
    """H: rows and columns 0 and 1 dense, tridiagonal elsewhere."""
    return t[0] * (t ** 2).sum() + t[1] * t.sin().sum() + (t[1:] * t[:-1]).sum() + (t ** 4).sum()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_an_arrow_hessian_with_two_dense_rows_is_sparse_and_torchs(dtype):
    x = _x(dtype, 3000)
    leaf = x.clone().requires_grad_()
    h = vjp_magic.hessian(_two_hubs(leaf), leaf, names=["x"], seed=0, memory_budget=2e7)
    sparse = h.inputs["x"].sparse
    assert sparse is not None and sparse.count <= 8
    expected = torch.func.hessian(_two_hubs)(x.double())
    got = h.hessian("x", layout=torch.sparse_csr)
    assert got._nnz() == int((expected != 0).sum())
    tol = {} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-4}
    torch.testing.assert_close(got.to_dense().double(), expected, **tol)
    assert h.inputs["x"].symmetric


def test_an_arrow_over_the_budget_is_refused_by_its_nonzeros():
    """Refused by what its CSR needs (nonzeros counted), not by its dense size."""
    x = _x(torch.float64, 3000).requires_grad_()
    nnz = int((torch.func.hessian(_two_hubs)(x.detach()) != 0).sum())
    with pytest.raises(vjp_magic.VJPUsageError) as caught:
        vjp_magic.hessian(_two_hubs(x), x, names=["x"], seed=0, memory_budget=1e5)
    said = " ".join(str(caught.value).split())
    assert f"({nnz:,} nonzeros) would need" in said and "9,000,000 entries" not in said
