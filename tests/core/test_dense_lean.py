"""The small exact path made leaner (issue 20's dense row): the batching check's verdict and
what it shows of the Jacobian (finite, not all 0: no pass of the analysis's own over it for
the notes), the batching vector from a reused generator, one chunk without chunk sizing.
Expected numbers come from torch.func.jacrev or the probe rule itself."""
import pytest
import torch

from vjp_magic import differentiate
from vjp_magic.core import checked_batches, derivatives
from vjp_magic.core.probes import probe_agrees, probe_generator, probe_values


def _dense(seed, n=32, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    w1 = torch.randn(n, n, generator=g, dtype=dtype) / n**0.5
    w2 = torch.randn(n, n, generator=g, dtype=dtype) / n**0.5
    x = torch.randn(n, generator=g, dtype=dtype, requires_grad=True)
    return (lambda v: torch.tanh(w2 @ torch.tanh(w1 @ v))), x


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_an_infinite_entry_the_plain_pass_lacks_is_the_rules_to_judge(dtype):
    # a batched Jacobian with one infinite entry, the plain vᵀJ finite: vᵀflat is infinite
    # there and so is the bound; the rule rejects it (non-finite on one side only)
    f, x = _dense(1, dtype=dtype)
    y = f(x)
    flat = torch.func.jacrev(f)(x.detach())
    v = checked_batches.batching_vector(y, 3)
    (vjp,) = torch.autograd.grad(y, x, v)
    broken = flat.clone()
    broken[4, 7] = float("inf")
    rule = probe_agrees(broken, v, vjp, (), nonfinite_agree=True)
    assert rule is False
    assert checked_batches.batching_agrees(broken, v, vjp) is rule
    assert checked_batches.batching_verdict(broken, v, vjp) == (False, False)


def test_the_verdict_says_finite_and_not_all_zero_only_when_it_is():
    f, x = _dense(2)
    y = f(x)
    flat = torch.func.jacrev(f)(x.detach())
    v = checked_batches.batching_vector(y, 5)
    (vjp,) = torch.autograd.grad(y, x, v)
    assert checked_batches.batching_verdict(flat, v, vjp) == (True, True)
    zeros = torch.zeros_like(flat)
    assert checked_batches.batching_verdict(zeros, v, torch.zeros_like(vjp)) == (True, False)
    nan = flat.clone()
    nan[0, 0] = float("nan")
    nan_vjp = vjp.clone()
    nan_vjp[0] = float("nan")
    agrees, ordinary = checked_batches.batching_verdict(nan, v, nan_vjp)
    assert agrees == probe_agrees(nan, v, nan_vjp, (), nonfinite_agree=True)
    assert not ordinary


@pytest.mark.parametrize("seed", [0, 7, 2**62 + 5])
def test_batching_vector_is_a_fresh_generators_draw(seed):
    y = torch.zeros(6, 5)
    values = probe_values(torch.float32)
    codes = torch.randint(len(values), (y.numel(),),
                          generator=probe_generator(seed, "batching"))
    expected = values[codes].view(y.shape)
    assert torch.equal(checked_batches.batching_vector(y, seed), expected)
    checked_batches.batching_vector(torch.zeros(50), seed + 1)  # its generator drawn from
    assert torch.equal(checked_batches.batching_vector(y, seed), expected)


@pytest.mark.parametrize("n", [5, 40])
def test_one_chunk_and_many_give_jacrev(n):
    f, x = _dense(3, n=n)
    y = f(x)
    expected = torch.func.jacrev(f)(x.detach())
    one, _ = derivatives.component_vjps(y, [x], (), 2**30, first=10**6)
    many, _ = derivatives.component_vjps(y, [x], (), 2**30, first=2)
    torch.testing.assert_close(one[0], expected)
    torch.testing.assert_close(many[0], expected)


def test_dense_result_matches_jacrev_and_keeps_its_notes():
    f, x = _dense(4, n=64)
    r = differentiate(f(x), x, seed=1)
    torch.testing.assert_close(r.derivatives["x"], torch.func.jacrev(f)(x.detach()))
    assert not any("is 0" in note or "NaN" in note for note in r.notes)
    # all-zero derivatives of an output that depends on x: the zero note stays
    w = torch.randn(64, 64)
    zero = differentiate(torch.tanh(w @ x) * torch.zeros(64), x, seed=1)
    assert torch.equal(zero.derivatives["x"], torch.zeros(64, 64))
    assert any("Every derivative of y with respect to x is 0" in n for n in zero.notes)
    # NaN derivatives: the non-finite note stays
    w_nan = w.clone()
    w_nan[3, 5] = float("nan")
    nan = differentiate(torch.tanh(w_nan @ x), x, seed=1)
    assert bool(nan.derivatives["x"].isnan().any())
    assert any("NaN" in n for n in nan.notes)
