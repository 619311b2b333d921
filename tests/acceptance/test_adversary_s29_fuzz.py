"""Adversarial review, session 29: the examples the issue's long sparse fuzz
(``VJP_FUZZ_EXAMPLES=10000 pytest -m slow tests/core/test_sparse_fuzz.py``) stopped at.

Both overflow (exp of a cube of a stencil) to ±inf, where ``torch.func.jacrev`` reads 0·inf as
NaN in whole columns. ``sparse_jacobian`` follows its documented rule instead (NaN only where
reverse and forward mode both give NaN, as ``differentiate``): these tests hold it to that
reference, built from ``jacrev`` and ``jacfwd``. The fuzz's own comparison with ``jacrev``
alone fails on them: a reference to fix in the fuzz, not the package.
"""
from __future__ import annotations

import pytest
import torch
from compositions import composition

import vjp_magic


def _both_modes(f, x):
    """jacrev's entries, its NaNs filled from jacfwd where forward mode is finite, and 0
    where y[i] does not read x[j] at all (both modes can carry 0·inf there; mathematics says
    0, the rule since session 33): which entries y[i] reads is the union of jacrev's
    nonzeros at two small random x, where nothing overflows (a generic x has no
    accidental zeros)."""
    reverse, forward = torch.func.jacrev(f)(x), torch.func.jacfwd(f)(x)
    both = torch.where(reverse.isnan() & ~forward.isnan(), forward, reverse)
    g = torch.Generator().manual_seed(1)
    reads = sum(torch.func.jacrev(f)(torch.rand(x.shape, dtype=x.dtype, generator=g) * 0.1
                                     + 0.05) != 0 for _ in range(2))
    return torch.where(reads.bool(), both, torch.zeros_like(both))


@pytest.mark.parametrize("seed,dtype", [(11437, torch.float32), (12144, torch.float64)])
def test_the_fuzz_examples_that_overflow_follow_the_nan_rule(seed, dtype):
    f, n = composition(seed, dtype, most=4)
    x = torch.randn(n, dtype=dtype, generator=torch.Generator().manual_seed(seed))
    y = f(x)
    assert not y.isfinite().all()  # the overflow that makes jacrev's NaN columns
    jacrev = torch.func.jacrev(f)(x).reshape(y.numel(), n)
    expected = _both_modes(f, x).reshape(y.numel(), n)
    assert int(expected.isnan().sum()) < int(jacrev.isnan().sum())
    x.requires_grad_()
    got = vjp_magic.sparse_jacobian(f(x), x, seed=seed).to_dense()
    torch.testing.assert_close(got, expected, equal_nan=True)
    r = vjp_magic.differentiate(f(x), x, seed=seed).jacobian("x").reshape(y.numel(), n)
    torch.testing.assert_close(r, expected, equal_nan=True)
