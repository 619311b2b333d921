"""The batching check's verdict near the probe rule's bound (issue 20's dense row, s32): every
verdict is the rule's own (``probes.probe_agrees``) where a few entries of vᵀJ are moved by
a fraction or a multiple of the bound, where many are, where a column cancels in vᵀflat, and
for NaN, ±inf and zeros. (A verdict reading |flat| only for the columns a sure bound left was
tried against these and reverted: in the pipeline it cost more than it saved.) Expected
verdicts come from the probe rule; the bound's entries from a float64 |v|ᵀ|J| computed here."""
from __future__ import annotations

import pytest
import torch

from vjp_magic.core import checked_batches
from vjp_magic.core.probes import probe_agrees
from vjp_magic.core.tolerances import tolerances


def _case(seed, n=96, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    w1 = torch.randn(n, n, generator=g, dtype=dtype) / n**0.5
    w2 = torch.randn(n, n, generator=g, dtype=dtype) / n**0.5
    x = torch.randn(n, generator=g, dtype=dtype, requires_grad=True)

    def f(v):
        return torch.tanh(w2 @ torch.tanh(w1 @ v))

    y = f(x)
    flat = torch.func.jacrev(f)(x.detach())
    v = checked_batches.batching_vector(y, seed)
    (vjp,) = torch.autograd.grad(y, x, v)
    return flat, v, vjp


def _rule(flat, v, vjp) -> bool:
    return probe_agrees(flat, v, vjp, (), nonfinite_agree=True)


def _bound(flat, v):
    """tol · |v|ᵀ|J| per entry (float64: no rounding of its own to speak of)."""
    scale = v.double().abs().reshape(1, -1) @ flat.double().abs().reshape(v.numel(), -1)
    return tolerances(flat.dtype).probe * scale.reshape(-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", range(4))
def test_a_true_jacobian_is_accepted_and_said_ordinary(dtype, seed):
    flat, v, vjp = _case(seed, dtype=dtype)
    assert _rule(flat, v, vjp)
    assert checked_batches.batching_verdict(flat, v, vjp) == (True, True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("factor", [0.25, 0.9, 0.99, 1.01, 1.1, 4.0])
@pytest.mark.parametrize("entries", [1, 5, 60])
def test_near_the_bound_the_verdict_is_the_rules(dtype, factor, entries):
    # entries of vᵀJ moved by factor × the rule's bound: a few (left to their own columns)
    # or many (every column); below the bound the rule accepts, above it it does not
    flat, v, vjp = _case(11 + entries, dtype=dtype)
    g = torch.Generator().manual_seed(entries)
    picked = torch.randperm(vjp.numel(), generator=g)[:entries]
    moved = vjp.clone()
    signs = torch.where(torch.rand(entries, generator=g) < 0.5, -1.0, 1.0).to(dtype)
    moved[picked] += (signs * factor * _bound(flat, v)[picked]).to(dtype)
    rule = _rule(flat, v, moved)
    assert checked_batches.batching_agrees(flat, v, moved) == rule
    if factor >= 1.1:
        assert not rule
    if factor <= 0.25:
        assert rule


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_non_finite_and_zero_cases_are_the_rules(dtype):
    flat, v, vjp = _case(5, dtype=dtype)
    inf_vjp = vjp.clone()
    inf_vjp[3] = float("inf")
    inf_flat = flat.clone()
    inf_flat[2, 3] = float("inf")
    nan_flat = flat.clone()
    nan_flat[:, 7] = float("nan")
    nan_vjp = vjp.clone()
    nan_vjp[7] = float("nan")
    cases = [(flat, inf_vjp), (inf_flat, vjp), (nan_flat, vjp), (nan_flat, nan_vjp),
             (flat, nan_vjp), (torch.zeros_like(flat), torch.zeros_like(vjp)),
             (torch.zeros_like(flat), vjp)]
    for d, got in cases:
        agrees, ordinary = checked_batches.batching_verdict(d, v, got)
        assert agrees == _rule(d, v, got)
        assert not ordinary or bool(torch.isfinite(d).all()) and bool(d.any())
    assert checked_batches.batching_verdict(torch.zeros_like(flat), v,
                                           torch.zeros_like(vjp)) == (True, False)


def test_a_column_cancelling_in_vjp_is_judged_by_its_own_bound():
    # vᵀJ exactly 0 at an entry where |v|ᵀ|J| is not: the sure bound shows nothing there,
    # the column's own |v|ᵀ|J| does (the rule accepts a rounding-sized difference)
    flat, v, vjp = _case(8)
    m = v.numel()
    column = flat.reshape(m, -1)[:, 0].clone()
    column[-1] = 0.0
    column[-1] = -(v.reshape(-1) @ column) / v.reshape(-1)[-1]
    crafted = flat.clone()
    crafted.reshape(m, -1)[:, 0] = column
    expected = v.reshape(1, m) @ crafted.reshape(m, -1)
    got = expected.reshape(-1).clone()
    got[0] += 0.1 * float(_bound(crafted, v)[0])
    assert _rule(crafted, v, got)
    assert checked_batches.batching_verdict(crafted, v, got)[0]
    got[0] += 2 * float(_bound(crafted, v)[0])
    assert not _rule(crafted, v, got)
    assert not checked_batches.batching_agrees(crafted, v, got)


def test_a_tensor_requiring_grad_takes_the_torch_route():
    flat, v, vjp = _case(2)
    assert checked_batches.batching_verdict(flat.requires_grad_(), v, vjp) == (True, True)
