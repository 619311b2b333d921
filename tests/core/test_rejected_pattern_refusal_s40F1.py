"""A refusal after a found pattern was rejected says so, with the pattern's nonzero count and
what the exact path would need (issue 20: "A refusal gives the nonzero count and what it would
need"; the G27-5 remainder). A custom Function's backward hides a coupling from the grouped
probes (their weights are ±(1..2): it shows only where |v| < 1), so the pattern they find is
the band of its forward, and the random check rejects it."""
from __future__ import annotations

import pytest
import torch

import vjp_magic
from vjp_magic.core.errors import VJPUsageError


class HiddenCoupling(torch.autograd.Function):
    """y = 2x + roll(x, 1); the backward adds g[i - 3] to entry i where |g[i - 3]| < 1."""

    @staticmethod
    def forward(ctx, x):
        return 2 * x + x.roll(1)

    @staticmethod
    def backward(ctx, g):
        hidden = g.roll(3)
        return 2 * g + g.roll(-1) + torch.where(hidden.abs() < 1, hidden, torch.zeros_like(g))


def _x(n=400):
    return torch.rand(n, dtype=torch.float64,
                      generator=torch.Generator().manual_seed(0)).requires_grad_()


def test_the_refusal_names_the_rejected_patterns_count_and_the_dense_need():
    x = _x()
    band = torch.func.jacrev(lambda t: 2 * t + t.roll(1))(x.detach())
    nnz = int(band.count_nonzero())  # 800: what the grouped probes see
    with pytest.raises(VJPUsageError) as refused:
        vjp_magic.sparse_jacobian(HiddenCoupling.apply(x), x, memory_budget=100_000, seed=0)
    message = str(refused.value)
    assert message.startswith(f"A sparsity pattern of {nnz:,} nonzeros was found but rejected: "
                              "a random probe could not confirm"), message
    # 400 × 400 float64 entries: 1,280,000 bytes
    assert "the dense 400 × 400 Jacobian would need 1.28 MB, over the memory budget of " \
           "100 kB" in message, message
    assert "No sparsity pattern paid off" not in message


def test_within_the_budget_the_rejected_pattern_falls_back_to_the_exact_path():
    """One-hot rows (the exact path) see what autograd's backward gives them: |g| = 1 there,
    so the hidden term never shows and the rows are the band's."""
    x = _x()
    csr = vjp_magic.sparse_jacobian(HiddenCoupling.apply(x), x, memory_budget=10**7, seed=0)
    expected = torch.stack([torch.autograd.grad(HiddenCoupling.apply(x), x, v)[0]
                            for v in torch.eye(400, dtype=torch.float64)])
    torch.testing.assert_close(csr.to_dense(), expected)


def test_a_pattern_that_is_not_rejected_keeps_the_old_sentence():
    """Nothing found (a dense map): the refusal still says none paid off, with the nonzeros
    the graph proves (softmax: all 300 × 300 = 90,000 of them)."""
    x = _x(300)
    with pytest.raises(VJPUsageError, match=r"^No sparsity pattern paid off \(the graph proves "
                                            r"90,000 nonzeros: .*\), and the dense "
                                            "300 × 300 Jacobian"):
        vjp_magic.sparse_jacobian(torch.softmax(x, 0), x, memory_budget=100_000, seed=0)


def test_differentiates_refusal_names_the_rejected_patterns_count():
    """The same in vjp_magic.differentiate, whose refusal adds what a sparse Jacobian would
    be: the band of 2x + roll(x, 1) holds 2 entries a row, 8,000 for n = 4,000."""
    x = _x(4000)
    with pytest.raises(VJPUsageError) as refused:
        vjp_magic.differentiate(HiddenCoupling.apply(x), x, names=["x"], output_name="y",
                                seed=0, memory_budget=1_000_000)
    message = str(refused.value)
    assert "As a sparse Jacobian: with respect to x, none: its pattern of 8,000 nonzeros was " \
           "found but rejected: a random probe could not confirm" in message, message
