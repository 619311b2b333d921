"""The per-layer rules' check compares each weighted pass's gradients, divided by the weights,
with the plain pass's exactly (``run/expanded.py``: ``_equal``, numpy on the CPU): the same
answer as ``torch.equal`` for every case that matters (NaN, ±0, inf, strides, dtypes)."""
from __future__ import annotations

import pytest
import torch

from vjp_magic.run.expanded import _equal


def _pairs():
    torch.manual_seed(0)
    a = torch.randn(64, 10)
    yield a, a.clone()
    b = a.clone()
    b[3, 4] = torch.nextafter(b[3, 4], torch.tensor(10.0))  # one ulp
    yield a, b
    c, d = a.clone(), a.clone()
    c[0, 0], d[0, 0] = float("nan"), float("nan")
    yield c, d  # NaN is never equal
    e, f = a.clone(), a.clone()
    e[1, 1], f[1, 1] = 0.0, -0.0
    yield e, f  # ±0 equal
    g = a.clone()
    g[2, 2] = float("inf")
    yield g, g.clone()
    yield a.t(), a.clone().t()  # strided
    yield a[:, ::2], a.clone()[:, ::2]
    yield a.double(), a.double()
    yield a.half(), a.half()
    yield a.bfloat16(), a.bfloat16()  # no numpy dtype: torch.equal
    yield torch.zeros(0, 3), torch.zeros(0, 3)


@pytest.mark.parametrize("pair", list(_pairs()))
def test_equal_answers_as_torch_equal(pair):
    a, b = pair
    assert _equal(a, b) == torch.equal(a, b)


def test_equal_reads_tensors_that_require_grad():
    a = torch.randn(5, 3, requires_grad=True)
    assert _equal(a, a.detach().clone()) and not _equal(a, a.detach() + 1)
