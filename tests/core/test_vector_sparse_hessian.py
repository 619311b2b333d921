"""Sparse second derivatives of a vector output whose Jacobian pattern is proved sparse
(issue 20; :mod:`vjp_magic.core.vector_sparse_hessian`): y[i]'s Hessian lives on the entries
of x that y[i] reads, outputs reading disjoint entries share one sum's Hessian-vector
products, so a 1,000 × 1,000 × 1,000 Hessian that was refused (8 GB dense) is 8,990
nonzeros from a number of passes independent of n.

Expected values: torch.func.jacfwd(torch.func.jacrev(f)) in float64 (n = 40, the sparse path
forced by a memory budget below the dense size); the closed form of y = x[i-1]·x[i]·x[i+1].
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import vjp_magic
from pass_counter import counted

N = 40
GATHER = torch.tensor([[(5 * r) % N, (7 * r + 3) % N, (11 * r + 1) % N] for r in range(30)])


def _triple(x):
    p = F.pad(x, (1, 1))
    return p[:-2] * p[1:-1] * p[2:]


MAPS = {
    "x[i-1]*x[i]*x[i+1]": _triple,
    "x[i]*x[i+3]": lambda x: x[:-3] * x[3:],
    "conv1d then cube": lambda x: F.conv1d(
        x[None, None], torch.tensor([[[1.0, -2.0, 0.5]]], dtype=x.dtype))[0, 0] ** 3,
    "gather with a fixed index": lambda x: (torch.sin(x)[GATHER] ** 2).prod(-1),
    "2-D y of 1-D x": lambda x: torch.stack([x[:-1] * x[1:], torch.exp(x[:-1] - x[1:])]),
}
BUDGET = 200_000  # bytes: the dense second derivatives (≥ 300 kB) are over it


@pytest.mark.parametrize("name", list(MAPS))
def test_values_are_the_jacobian_of_the_jacobian(name):
    f = MAPS[name]
    x = torch.randn(N, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    leaf = x.clone().requires_grad_(True)
    h = vjp_magic.hessian(f(leaf), leaf, names=["x"], seed=0, memory_budget=BUDGET)
    assert h.inputs["x"].sparse_blocks is not None, "not the sparse path"
    expected = torch.func.jacfwd(torch.func.jacrev(f))(x)
    coo = h.derivatives["x"]
    assert coo.layout == torch.sparse_coo and coo.shape == expected.shape
    torch.testing.assert_close(coo.to_dense(), expected, rtol=1e-12, atol=1e-12)
    csr = h.hessian("x", layout=torch.sparse_csr)
    torch.testing.assert_close(csr.to_dense(), expected.reshape(-1, N), rtol=1e-12, atol=1e-12)
    assert leaf.grad is None


def test_the_refused_example_in_closed_form_with_passes_independent_of_n():
    passes = {}
    for n in (1_000, 10_000):
        x = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
        leaf = x.clone().requires_grad_(True)
        h, passes[n] = counted(lambda t=leaf: vjp_magic.hessian(_triple(t), t, names=["x"],
                                                              seed=0))
        coo = h.derivatives["x"]
        assert coo._nnz() == 9 * n - 10  # 3 × 3 blocks, 2 × 2 at the two edges
        i, j, k = coo.indices()
        p = F.pad(x, (1, 1))
        # ∂²(x[i-1]x[i]x[i+1])/∂x[j]∂x[k] (j ≠ k): the third factor; 0 on the diagonal
        # the factor that is neither j nor k: x[3i - j - k] (the indices sum to 3i), p[· + 1]
        third = p[(3 * i - j - k + 1).clamp(0, n + 1)]  # (clamped: a diagonal entry is 0)
        expected = torch.where(j == k, torch.zeros_like(third), third)
        torch.testing.assert_close(coo.values(), expected, rtol=0, atol=0)
    assert passes[1_000] == passes[10_000], passes


def test_display_stays_a_few_sentences():
    leaf = torch.randn(10_000, dtype=torch.float64).requires_grad_(True)
    h = vjp_magic.hessian(_triple(leaf), leaf, names=["x"], seed=0)
    text = h._repr_mimebundle_()["text/plain"]
    assert "x[i-1], x[i], x[i+1]" in text and "at most 89,990 nonzeros" in text, text
    assert "proved for every x" in text, text
    assert len(text) < 2_000
    assert len(h._repr_mimebundle_()["text/latex"]) < 20_000


class _Cube(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x ** 3

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 3 * x ** 2 * g


def test_an_unproved_pattern_is_still_refused():
    leaf = torch.randn(1_000, dtype=torch.float64).requires_grad_(True)
    y = _triple(_Cube.apply(leaf))
    with pytest.raises(vjp_magic.VJPUsageError, match="second derivatives of y"):
        vjp_magic.hessian(y, leaf, names=["x"], seed=0)


def test_a_branch_on_x_is_claimed_at_this_x_only():
    """hessian(fn) whose Python reads a value of x: the pattern holds of this x's path, so
    the display says so (the headline's owner of that claim), never "for every x"."""
    leaf = torch.randn(1_000, dtype=torch.float64).requires_grad_(True)

    def f():
        return _triple(leaf) if leaf.sum() > -1e9 else leaf[:-1] * leaf.sum()

    h = vjp_magic.hessian(f, leaf, names=["x"], seed=0)
    assert h.inputs["x"].sparse_blocks is not None and h.steers
    text = " ".join(h._repr_mimebundle_()["text/plain"].split())
    assert "checked at this x only" in text and "for every x" not in text, text


def test_a_linear_output_has_zero_second_derivatives():
    leaf = torch.randn(1_000, dtype=torch.float64).requires_grad_(True)
    y = F.conv1d(leaf[None, None], torch.tensor([[[1.0, -2.0, 1.0]]], dtype=leaf.dtype))[0, 0]
    h = vjp_magic.hessian(y, leaf, names=["x"], seed=0)
    assert not bool(h.derivatives["x"].values().any())
    text = " ".join(h._repr_mimebundle_()["text/plain"].split())
    assert "Every second derivative is 0" in text and "nonzeros" not in text, text


def test_a_pattern_missing_couplings_fails_the_check_and_is_refused(monkeypatch):
    """A wrong "proved" pattern (each y[i] said to read x[i] alone): the probe of each sum's
    Hessian disagrees, so the sparse path gives nothing and the dense refusal stands."""
    from vjp_magic.core import vector_sparse_hessian as module
    from vjp_magic.core.pairing import Evidence
    from vjp_magic.core.pattern import Pattern

    def diagonal_only(output, x, budget):
        n = x.numel()
        return Pattern(torch.arange(n + 1), torch.arange(n), (n, n), 0, Evidence.PROVED)

    monkeypatch.setattr(module, "proved_pattern", diagonal_only)
    leaf = torch.randn(1_000, dtype=torch.float64).requires_grad_(True)
    with pytest.raises(vjp_magic.VJPUsageError, match="second derivatives of y"):
        vjp_magic.hessian(_triple(leaf), leaf, names=["x"], seed=0)
