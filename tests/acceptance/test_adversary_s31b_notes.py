"""Adversary s31b: the batching check's strict bound and the analysis' skipped sum over J
(`ordinary` from the check) must still note NaN, infinite and all-zero Jacobians on the dense
path. Which case holds is read off torch.autograd.functional.jacobian."""
from __future__ import annotations

import pytest
import torch

import vjp_magic

W = torch.randn(30, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
X = torch.linspace(0, 1, 40, dtype=torch.float64)  # x[0] = 0: sqrt's slope is infinite

CASES = {
    "all zero": lambda x: W @ (x * 0),
    "infinite (sqrt at 0)": lambda x: W @ x.sqrt(),
    "NaN (0 * sqrt at 0)": lambda x: W @ (x.sqrt() * 0),
    "overflow to inf": lambda x: (W * 1e300) @ (x * 1e10),
    "saturated tanh: all zero": lambda x: torch.tanh(W @ x * 1e6),
    "one zero column: ordinary": lambda x: W @ (x * (torch.arange(40) != 3)),
    "sum that cancels in v^T J: ordinary": lambda x: torch.cat([W @ x, -(W @ x)]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_nonfinite_and_zero_jacobians_are_noted(case):
    f = CASES[case]
    expected = torch.autograd.functional.jacobian(f, X)
    x = X.clone().requires_grad_()
    r = vjp_magic.differentiate(f(x), x, seed=0)
    got = r.jacobian()
    torch.testing.assert_close(got, expected, equal_nan=True)
    text = " ".join(r.notes)
    nan, inf = int(expected.isnan().sum()), int(expected.isinf().sum())
    assert (f"{nan:,} NaN entries" in text) == bool(nan), text
    assert (f"{inf:,} infinite entries" in text) == bool(inf), text
    zero = bool((expected == 0).all())
    assert ("Every derivative of y with respect to x is 0" in text) == zero, text
    assert x.grad is None
