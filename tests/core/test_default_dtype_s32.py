"""The global default dtype (``torch.set_default_dtype(torch.float64)``, as scientific
notebooks start; or float16) changes nothing: the tensors the analysis makes for itself
(group-testing sets and counts, probe draws) have their own dtype, never the default's.

Expected patterns: ``torch.func.jacrev`` under the float32 default, read as nonzero.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import vjp_magic
from vjp_magic.core.grouptest import _reached
from vjp_magic.core.probes import set_probe_values


@pytest.fixture(params=[torch.float64, torch.float16], ids=["float64", "float16"])
def default_dtype(request):
    before = torch.get_default_dtype()
    torch.set_default_dtype(request.param)
    yield request.param
    torch.set_default_dtype(before)


def _tridiagonal(t):
    return t.roll(1) - 2 * t ** 3 + t.roll(-1)


CASES = {  # (f of an (8, 60) x, output axis, input axis)
    "tridiagonal": (lambda t: _tridiagonal(t.reshape(-1)).reshape(8, 60), 1, 1),
    "causal": (lambda t: t.cumsum(1), 1, 1),
    "blocks": (lambda t: t.view(8, 6, 10).softmax(-1).view(8, 60), 1, 1),
    "band": (lambda t: F.conv1d(t[:, None], torch.ones(1, 1, 5, dtype=t.dtype),
                                padding=2)[:, 0], 1, 1),
    "samples": (lambda t: t * t.sum(1, keepdim=True), 0, 0),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", list(CASES))
def test_dependency_under_another_default_dtype(default_dtype, dtype, case):
    f, a, b = CASES[case]
    x = torch.randn(8, 60, dtype=dtype, requires_grad=True,
                    generator=torch.Generator().manual_seed(0))
    y = f(x)
    torch.set_default_dtype(torch.float32)
    jacobian = torch.func.jacrev(f)(x.detach())
    torch.set_default_dtype(default_dtype)
    kept = (a, 2 + b)
    expected = (jacobian != 0).any(dim=tuple(i for i in range(4) if i not in kept))
    d = vjp_magic.dependency(y, x, a, b)
    pattern = d.pattern.to_dense() if d.pattern.layout != torch.strided else d.pattern
    assert torch.equal(pattern, expected)


def test_sets_reached_in_any_default_dtype(default_dtype):
    sets = torch.tensor([[True, False, True], [False, True, False]])
    pattern = torch.tensor([[True, False], [False, True], [True, True]])
    reached = _reached(sets, pattern, pattern.nonzero(as_tuple=True))
    assert torch.equal(reached, torch.tensor([[True, True], [False, True]]))


def test_probe_draws_do_not_follow_the_default_dtype(default_dtype):
    like = torch.zeros(5, 7, dtype=torch.float64)
    got = set_probe_values(like, 3, "dependency")
    torch.set_default_dtype(torch.float32)
    assert torch.equal(got, set_probe_values(like, 3, "dependency"))
