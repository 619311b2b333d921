"""Batched passes outside the components' loop (a pattern's probes, a sparse Hessian's
products and checks) are vectorised only while that pays (issue 23, session 31: index_put
under vmap has no batching rule, and its fallback made a permutation's Hessian 20× slower
than plain passes). Values never depend on the choice: they are autograd's either way."""
from __future__ import annotations

import time

import torch

import vjp_magic
from vjp_magic.core import derivatives
from vjp_magic.core.derivatives import PaidBatches
from vjp_magic.core.pattern import observed_pattern
from vjp_magic.core.vectorising import JUDGED_FROM, Payoff

PERM = torch.randperm(80, generator=torch.Generator().manual_seed(0))


def _graph():
    x = torch.randn(80, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    x.requires_grad_(True)
    return x, x[PERM] * x.roll(1)


def _slow_vmap(calls: list):
    real = derivatives._vmap_grad

    def slow(output, inputs, grad_outputs):
        calls.append(len(grad_outputs))
        began = time.process_time()
        while time.process_time() - began < 0.05 * len(grad_outputs):  # CPU time, not sleep
            pass
        return real(output, inputs, grad_outputs)
    return slow


def test_the_values_are_autograds(monkeypatch):
    x, y = _graph()
    vectors = torch.randn(12, 80, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    (got,) = PaidBatches()(y, [x], vectors)
    expected = torch.stack([torch.autograd.grad(y, x, v, retain_graph=True)[0] for v in vectors])
    torch.testing.assert_close(got, expected)
    assert x.grad is None


def test_a_slow_vectorised_pass_makes_the_rest_plain(monkeypatch):
    calls: list = []
    monkeypatch.setattr(derivatives, "_vmap_grad", _slow_vmap(calls))
    x, y = _graph()
    passes = PaidBatches()
    vectors = torch.randn(8, 80, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    expected = torch.stack([torch.autograd.grad(y, x, v, retain_graph=True)[0] for v in vectors])
    for _ in range(3):
        (got,) = passes(y, [x], vectors)
        torch.testing.assert_close(got, expected)
    assert calls == [7], calls  # the first vector plain and timed, 7 vectorised, then plain


def test_a_fast_vectorised_pass_stays_vectorised(monkeypatch):
    calls: list = []
    real = derivatives._vmap_grad
    monkeypatch.setattr(derivatives, "_vmap_grad",
                        lambda o, i, g: calls.append(len(g)) or real(o, i, g))
    x, y = _graph()
    passes = PaidBatches()
    vectors = torch.randn(8, 80, dtype=torch.float64)
    for _ in range(3):
        passes(y, [x], vectors)
    assert len(calls) >= 2, calls  # (a chunk under JUDGED_FROM seconds is never judged)


def test_payoff_pays():
    payoff = Payoff(())
    assert payoff.pays(10, 1.0)  # no plain pass timed yet
    payoff.timed(1, 0.01, False)
    assert payoff.pays(10, 0.05) and not payoff.pays(10, 0.5)
    assert payoff.pays(10, JUDGED_FROM / 2)  # too short to judge


def test_the_pattern_probes_go_plain_where_vmap_is_slow(monkeypatch):
    calls: list = []
    monkeypatch.setattr(derivatives, "_vmap_grad", _slow_vmap(calls))
    x, y = _graph()
    pattern = observed_pattern(y, x, 2 ** 30, 0)
    assert pattern is not None
    assert len(calls) <= 1, calls
    dense = torch.zeros(80, 80, dtype=torch.bool)
    rows = torch.repeat_interleave(torch.arange(80), pattern.crow.diff())
    dense[rows, pattern.col] = True
    expected = torch.autograd.functional.jacobian(lambda t: t[PERM] * t.roll(1),
                                                  x.detach()) != 0
    assert torch.equal(dense, expected)


def test_a_permutations_vector_hessian_is_torchs():
    x = torch.randn(80, dtype=torch.float64, requires_grad=True)

    def f(t):
        return t[PERM] * t.roll(1)

    h = vjp_magic.hessian(f(x), x)
    expected = torch.func.jacfwd(torch.func.jacrev(f))(x.detach())
    torch.testing.assert_close(h.hessian("x").reshape(expected.shape), expected)


def test_a_graph_that_indexes_x_gets_its_first_derivatives_from_plain_passes(monkeypatch):
    """Through a D made by one batched pass over x[perm] (index_put: no batching rule), the
    second derivatives' vmapped passes take the slow fallback: D comes from plain passes."""
    from vjp_magic.core import hessian

    batched: list = []
    real = hessian.autograd_grad

    def spy(*args, **kwargs):
        batched.append(bool(kwargs.get("is_grads_batched")))
        return real(*args, **kwargs)

    monkeypatch.setattr(hessian, "autograd_grad", spy)
    x = torch.randn(80, dtype=torch.float64, requires_grad=True)
    assert hessian._indexes(x[PERM] * x.roll(1)) and not hessian._indexes(x * x.roll(1))
    h = vjp_magic.hessian(x[PERM] * x.roll(1), x)
    assert batched and not any(batched), batched
    expected = torch.func.jacfwd(torch.func.jacrev(lambda t: t[PERM] * t.roll(1)))(x.detach())
    torch.testing.assert_close(h.hessian("x").reshape(expected.shape), expected)
    batched.clear()
    vjp_magic.hessian(x * x.roll(1), x)  # no indexing: one batched pass, as before
    assert any(batched), batched
