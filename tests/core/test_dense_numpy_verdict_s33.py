"""The batching check's verdict read through numpy on CPU (issue 20's dense row, s33): the
same verdict as the probe rule's own (``probes.probe_agrees``) for row- and column-major
Jacobians, near the bound, for NaN, ±inf and overflow (no numpy warning escapes), and the
|v|ᵀ|J| it forms bit for bit the product torch's |J| gives. Expected verdicts come from the
probe rule; the bound's entries from a float64 |v|ᵀ|J| computed here."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from vjp_magic.core import batching_check
from vjp_magic.core.probes import probe_agrees
from vjp_magic.core.tolerances import tolerances


def _case(seed, n=48, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    w1 = torch.randn(n, n, generator=g, dtype=dtype) / n**0.5
    w2 = torch.randn(n, n, generator=g, dtype=dtype) / n**0.5
    x = torch.randn(n, generator=g, dtype=dtype, requires_grad=True)

    def f(v):
        return torch.tanh(w2 @ torch.tanh(w1 @ v))

    y = f(x)
    flat = torch.func.jacrev(f)(x.detach())
    v = batching_check.batching_vector(y, seed)
    (vjp,) = torch.autograd.grad(y, x, v)
    return flat, v, vjp


def _rule(flat, v, vjp) -> bool:
    return probe_agrees(flat, v, vjp, (), nonfinite_agree=True)


def _layouts(flat):
    """The Jacobian row-major, column-major (as a vectorised pass leaves it) and with gaps
    (neither: the torch route)."""
    wide = torch.zeros(flat.shape[0], 2 * flat.shape[1], dtype=flat.dtype)
    wide[:, ::2] = flat
    return {"rows": flat.contiguous(), "columns": flat.T.contiguous().T, "gaps": wide[:, ::2]}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["rows", "columns", "gaps"])
def test_the_product_of_magnitudes_is_torchs_bit_for_bit(dtype, layout):
    flat, v, _ = _case(1, dtype=dtype)
    d = _layouts(flat)[layout]
    by_torch = v.abs().reshape(1, -1) @ d.abs()
    assert batching_check._numpy_readable(d, v) is (layout != "gaps")
    if layout != "gaps":
        by_numpy = v.abs().reshape(1, -1) @ torch.from_numpy(np.abs(d.numpy()))
        assert torch.equal(by_numpy, by_torch)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["rows", "columns", "gaps"])
@pytest.mark.parametrize("factor", [0.0, 0.5, 0.99, 1.01, 2.0, 3.0])
def test_near_the_bound_every_layout_gives_the_rules_verdict(dtype, layout, factor):
    flat, v, vjp = _case(7, dtype=dtype)
    bound = tolerances(dtype).probe * (v.double().abs() @ flat.double().abs())
    moved = vjp.clone()
    moved[3] += factor * float(bound[3])
    d = _layouts(flat)[layout]
    agrees, ordinary = batching_check.batching_verdict(d, v, moved)
    assert agrees == _rule(d, v, moved)  # (its products in d's layout: rounded as d's are)
    if factor not in (0.99, 1.01):  # clear of the rounding of vᵀJ itself
        assert agrees == (factor < 1)
    assert ordinary == agrees


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["rows", "columns"])
def test_non_finite_entries_are_the_rules_and_warn_nothing(dtype, layout):
    flat, v, vjp = _case(3, dtype=dtype)
    big = torch.finfo(dtype).max
    cases = []
    inf = flat.clone()
    inf[2, 5] = float("inf")
    inf_vjp = vjp.clone()
    inf_vjp[5] = float("inf")
    cases += [(inf, vjp), (inf, inf_vjp)]  # one side only; both sides (the same entry)
    nan = flat.clone()
    nan[0, 0] = float("nan")
    cases += [(nan, vjp)]
    huge = flat.clone()
    huge[:, 1] = big  # vᵀJ overflows in that column
    cases += [(huge, vjp)]
    for broken, got in cases:
        d = _layouts(broken)[layout]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            agrees, ordinary = batching_check.batching_verdict(d, v, got)
        assert agrees == _rule(broken, v, got)
        assert not ordinary


def test_all_zero_is_accepted_and_not_said_ordinary():
    flat, v, vjp = _case(5)
    zeros = torch.zeros_like(flat).T.contiguous().T
    assert batching_check.batching_verdict(zeros, v, torch.zeros_like(vjp)) == (True, False)
