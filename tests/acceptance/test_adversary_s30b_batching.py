"""Adversarial review, session 30 (second pass): the batching check's second judgement against
measured rounding noise (core/checked_batches.within_noise) must not accept a batching rule
that is wrong.

``Off`` is an identity Function whose backward is right in a plain pass and 1 % or 5 % off on
the derivatives of output row 0 when run vectorised (a batching rule off on one row). Expected
values: torch.autograd.functional.jacobian with plain passes (vectorize=False), which equals
Aᵀ here exactly (every one-hot pass of u·a − u·(a − 1) is exact in float32).
"""
from __future__ import annotations

import pytest
import torch
from torch._C._functorch import is_batchedtensor

import vjp_magic


def _off(error: float):
    class Off(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):
            return t.clone()

        @staticmethod
        def backward(ctx, g):
            if is_batchedtensor(g):  # the vectorised pass only: row 0's derivatives off
                return g * (1 + error * g[0])
            return g

    return Off


def _case(a: float, error: float, data: int = 1, n: int = 512):
    generator = torch.Generator().manual_seed(data)
    matrix = torch.randn(n, n, generator=generator)
    x = torch.randn(n, generator=generator)
    off = _off(error)

    def f(t):
        u = off.apply(t @ matrix)
        return u * a - u * (a - 1)

    expected = torch.autograd.functional.jacobian(f, x)
    assert torch.equal(expected, matrix.T)  # exact: the loop's one-hot passes do not round
    leaf = x.clone().requires_grad_()
    return vjp_magic.differentiate(f(leaf), leaf, seed=0).jacobian("x"), expected


@pytest.mark.parametrize("data", [1, 2])
@pytest.mark.parametrize("error", [0.01, 0.05])
def test_a_wrong_batching_rule_is_caught_without_cancellation(error, data):
    got, expected = _case(1.0, error, data)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("data", [1, 2])
@pytest.mark.parametrize("a", [3e5, 1e6])
def test_a_wrong_batching_rule_is_caught_behind_cancellation(a, data):
    got, expected = _case(a, 0.05, data)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("a, error", [(3e3, 0.01), (3e4, 0.01), (1e5, 0.2)])
def test_a_wrong_batching_rule_is_caught_at_milder_cancellation(a, error):
    """Noise just under the bound's cut (a few times the probe tolerance): still caught
    (a ∈ 1e3..1e5, errors 1..20 %, data seeds 1..3 all held in this review)."""
    got, expected = _case(a, error, 3)
    torch.testing.assert_close(got, expected)
