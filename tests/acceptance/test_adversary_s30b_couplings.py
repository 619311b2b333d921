"""Adversarial review, session 30 (second pass): observed patterns (core/setdecode.py words,
core/couplings.py checks) of an opaque map (a custom Function: no graph rule reaches it)
whose extra readers have derivatives that cancel exactly in shared sets (+1 and -1 on one row,
constant, so fresh values cannot break the tie), in float64 down to float16/bfloat16.
Expected: torch.autograd.functional.jacobian (plain passes). Strict xfails are bugs."""
from __future__ import annotations

import warnings

import pytest
import torch

import vjp_magic


def _opaque(rows, cols, coef):
    class Op(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.index_add(0, rows, coef.to(x.dtype) * x[cols])

        @staticmethod
        def backward(ctx, g):
            return g.index_add(0, cols, coef.to(g.dtype) * g[rows])

    return Op.apply


def _check(f, x, seed):
    expected = torch.autograd.functional.jacobian(f, x)
    leaf = x.clone().requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = vjp_magic.differentiate(f(leaf), leaf, seed=seed)
        assert torch.equal(r.jacobian("x"), expected)
        assert torch.equal(vjp_magic.dependency(f(leaf), leaf, seed=seed).pattern,
                           expected != 0)
    assert leaf.grad is None


SMALL = {  # rows reading +x[j] and -x[k] beside their own entry: shared sets cancel exactly
    "one row, three readers": ([5, 5, 5], [6, 7, 8], [-1.0, 1.0, -1.0]),
    "two rows share a reader": ([5, 5, 7], [6, 9, 6], [1.0, -1.0, -1.0]),
    "powers of two apart": ([50] * 6, [50 + 2 ** k for k in range(6)],
                            [(-1.0) ** k for k in range(6)]),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16,
                                   torch.bfloat16])
@pytest.mark.parametrize("case", list(SMALL))
def test_cancelling_readers_are_found(case, dtype):
    rows, cols, coef = (torch.tensor(v) for v in SMALL[case])
    f = _opaque(rows, cols, coef)
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0)).to(dtype)
    for seed in (0, 1):
        _check(f, x, seed)


def _many(n=4096):
    rows = torch.arange(0, n, 5)
    cols = (rows * 7 + 3) % n
    coef = torch.where(rows % 2 == 0, 1.0, -1.0)
    x = torch.randn(n, generator=torch.Generator().manual_seed(n))
    return _opaque(rows, cols, coef), x


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_many_cancelling_readers(dtype):
    f, x = _many()
    _check(f, x.to(dtype), 0)


def test_many_cancelling_readers_float16_seed_2():
    f, x = _many()
    _check(f, x.half(), 2)
