"""The sparse Hessian's check (core/sparse_hessian.checked) judged as the sparse Jacobian's
(core/sparse_check): the probe tolerance of each entry's magnitudes, else its measured
rounding noise; probes from core/probes.ProbeDraws. Hessians whose entries span 1e-8..1e8,
float32 and float64: no false rejection, and a coupling or a value the matrix gets wrong is
refused. Expected values from torch.func.hessian."""
from __future__ import annotations

import pytest
import torch

from custom_functions import Identity
from vjp_magic.core import sparse_hessian

N = 300


SCALES = 10.0 ** (torch.rand(N, generator=torch.Generator().manual_seed(0),
                             dtype=torch.float64) * 16 - 8)


def wide(x, identity=lambda t: t):
    """Σ s_i (x_i²/2 + x_i⁴/12) + Σ √(s_i s_(i+1)) cos(x_i x_(i+1)) / 4, s_i in 1e-8..1e8."""
    u = identity(x)
    s = SCALES[:x.numel()].to(x.dtype)
    near = (s[1:] * s[:-1]).sqrt() / 4
    return (s * (u * u / 2 + u ** 4 / 12)).sum() + (near * torch.cos(u[1:] * u[:-1])).sum()


def _x(dtype, n=N):
    generator = torch.Generator().manual_seed(5)
    return (torch.rand(n, generator=generator, dtype=torch.float64) + 0.5).to(dtype)


def _close(got, expected, dtype):
    """Entry by entry, relative to the largest magnitude of the entry's row and column (what
    autograd's own H·v can resolve)."""
    size = expected.abs()
    bound = torch.maximum(size.amax(1, keepdim=True), size.amax(0, keepdim=True))
    eps = torch.finfo(dtype).eps
    assert bool(((got - expected).abs() <= 64 * eps * bound + 1e-30).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("opaque", [False, True])
def test_a_wide_range_hessian_is_accepted_and_right(dtype, opaque):
    identity = Identity.apply if opaque else (lambda t: t)
    x = _x(dtype).requires_grad_()
    expected = torch.func.hessian(wide)(x.detach())  # Identity is the identity
    for seed in range(5):
        y = wide(x, identity)
        (d,) = torch.autograd.grad(y, x, create_graph=True)
        found = sparse_hessian.sparse_hessian(d, x, 2**28, seed, output=y)
        assert found is not None, seed  # no false rejection
        assert found.evidence == ("observed" if opaque else "proved")
        _close(found.matrix.to_dense(), expected, dtype)


def rosenbrock(x):
    return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rosenbrocks_cancelling_diagonal_is_not_rejected(dtype):
    x = (torch.randn(1000, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
         * 3).to(dtype).requires_grad_()
    for seed in range(8):
        y = rosenbrock(x)
        (d,) = torch.autograd.grad(y, x, create_graph=True)
        assert sparse_hessian.sparse_hessian(d, x, 2**28, seed, output=y) is not None, seed


def _reference(dtype, f=wide):
    x = _x(dtype)
    matrix = torch.func.hessian(f)(x).to_sparse_csr()
    return x.requires_grad_(), matrix


def _column_scale(matrix):
    """Per column j: Σ over the rows i meeting j of Σ_k |H[i, k]| (the check's magnitudes
    for a probe of ones)."""
    dense = matrix.to_dense().abs()
    return (dense.sum(1, keepdim=True) * (dense != 0)).sum(0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_missing_coupling_is_refused(dtype):
    x, matrix = _reference(dtype)
    scale = _column_scale(matrix)
    for a, b in [(3, 200), (150, 151 + 100), (17, 290)]:
        c = 0.1 * float(torch.minimum(scale[a], scale[b]))  # of the rows it would join

        (d,) = torch.autograd.grad(wide(x) + c * x[a] * x[b], x, create_graph=True)
        for seed in range(5):
            assert not sparse_hessian.checked(d, x, matrix, seed=seed), (a, b, seed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_wrong_value_is_refused(dtype):
    x, matrix = _reference(dtype)
    (d,) = torch.autograd.grad(wide(x), x, create_graph=True)
    assert sparse_hessian.checked(d, x, matrix, seed=0)
    scale = _column_scale(matrix)
    dense = matrix.to_dense()
    for j in [0, 40, 123, 299]:  # the diagonal entry off by a tenth of the column's scale
        wrong = dense.clone()
        wrong[j, j] += 0.1 * scale[j]
        for seed in range(5):
            assert not sparse_hessian.checked(d, x, wrong.to_sparse_csr(), seed=seed), (j, seed)


# -- a Hessian whose entries cancel: hidden units in pairs of opposite weights ------------------
_G = torch.Generator().manual_seed(0)
_W = torch.randn(32, 4, generator=_G, dtype=torch.float64) * 3
_W1 = torch.cat([_W, _W * (1 + 1e-4)])  # H = Σ_h w2_h·(-sin z_h)·W1_hi·W1_hj cancels to 1e-4
_w = torch.randn(32, generator=_G, dtype=torch.float64) * 10
_W2 = torch.cat([_w, -_w])


def cancelling(x):
    """Σ over blocks of 4 entries of w2ᵀ sin(W1 x_b): a block-diagonal Hessian ~1e4 times
    smaller than the terms autograd sums into it."""
    return (torch.sin(x.reshape(-1, 4) @ _W1.to(x.dtype).T) @ _W2.to(x.dtype)).sum()


def _terms(x):
    """Per entry of the Hessian: Σ_h |w2_h sin z_h W1_hi W1_hj| (what autograd's sums round at)."""
    z = x.detach().double().reshape(-1, 4) @ _W1.T
    weight = (_W2 * torch.sin(z)).abs()  # blocks × h
    blocks = torch.einsum("bh,hi,hj->bij", weight, _W1.abs(), _W1.abs())
    return torch.block_diag(*blocks)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_cancelling_hessian_is_judged_by_its_measured_noise(dtype):
    x = torch.randn(512, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected = torch.func.hessian(cancelling)(x)
    terms = _terms(x)
    x = x.to(dtype).requires_grad_()
    for seed in range(6):
        y = cancelling(x)
        (d,) = torch.autograd.grad(y, x, create_graph=True)
        found = sparse_hessian.sparse_hessian(d, x, 2**28, seed, output=y)
        assert found is not None, seed  # the fixed tolerance alone refused every seed
        got = found.matrix.to_dense().double()
        assert bool(((got - expected).abs() <= 64 * torch.finfo(dtype).eps * terms).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_wrong_value_in_a_cancelling_hessian_is_refused(dtype):
    x = torch.randn(512, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    dense = torch.func.hessian(cancelling)(x)
    terms = _terms(x).sum(0)
    x = x.to(dtype).requires_grad_()
    (d,) = torch.autograd.grad(cancelling(x), x, create_graph=True)
    for j in [0, 277, 511]:  # off by 1e-2 of the terms autograd sums into column j
        wrong = dense.clone()
        wrong[j, j] += 1e-2 * terms[j]
        matrix = wrong.to(dtype).to_sparse_csr()
        for seed in range(3):
            assert not sparse_hessian.checked(d, x, matrix, seed=seed), (j, seed)
