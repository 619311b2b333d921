"""Adversarial review, session 30 (second pass): ``--gradcheck``'s noise inside the computation
(run/gradcheck_noise.py) must not let a WRONG backward pass as "inconclusive".

The backward under test is a custom Function 10 % off (2.2·g·x for x²). Expected values:
mathematics (d(x²)/dx = 2x) and central differences measured here in float64. Strict xfails
are bugs found in this review; unmarked tests guard what holds.
"""
from __future__ import annotations

import pytest
import torch

WRONG = """import torch
class Wrong(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x
    @staticmethod
    def backward(ctx, g):
        x, = ctx.saved_tensors
        return 2.2 * g * x
"""
X5 = "x = torch.linspace(1, 2, 5, dtype=torch.float64, requires_grad=True)\n"
X4 = "x = torch.tensor([1., 1.5, 2., 1e4], dtype=torch.float64, requires_grad=True)\n"


def _check(ip, run_ok, body):
    ip.run_cell(WRONG)
    return run_ok("%%vjp --gradcheck\n" + body).gradcheck


@pytest.mark.parametrize("body", [
    X5 + "y = Wrong.apply(x)",
    X5 + "y = torch.exp(30 * x) * 0 + Wrong.apply(x)",
])
def test_a_wrong_backward_fails(ip, run_ok, body):
    assert _check(ip, run_ok, body).ok is False


def test_the_offset_loses_far_less_than_the_error():
    """Mathematics behind the next test: at h = 1e-6 the central difference of
    ((x + 1e8) - 1e8)² is within 0.01 of 2x, the wrong backward is 0.2x..0.4 off."""
    x = torch.linspace(1, 2, 5, dtype=torch.float64)
    h = 1e-6
    for k in range(5):
        e = torch.zeros(5, dtype=torch.float64)
        e[k] = h
        f = lambda t: (((t + 1e8) - 1e8) ** 2).sum()  # noqa: E731
        fd = float((f(x + e) - f(x - e)) / (2 * h))
        assert abs(fd - 2 * float(x[k])) < 0.01 < 0.2 * float(x[k]) - 0.01


def test_a_wrong_backward_behind_a_large_offset_fails(ip, run_ok):
    assert _check(ip, run_ok, X5 + "y = Wrong.apply((x + 1e8) - 1e8)").ok is False


def test_an_unused_large_intermediate_does_not_hide_a_wrong_backward(ip, run_ok):
    assert _check(ip, run_ok, X4 + "y = Wrong.apply(x) + 0 * (1e16 + x)").ok is False


def test_an_ulp_mover_does_not_hide_a_wrong_backward(ip, run_ok):
    assert _check(ip, run_ok, X4 + "y = Wrong.apply(x) + 0 * (1 + 1e-16 * x)").ok is False


def test_an_untaken_branch_does_not_hide_a_wrong_backward(ip, run_ok):
    """torch.where's untaken 1e16 + x branch: held (the wrong backward fails)."""
    body = X4 + "y = torch.where(x > 0, Wrong.apply(x), 1e16 + x)"
    assert _check(ip, run_ok, body).ok is False


def test_torchs_own_gradcheck_passes_a_steep_sine():
    """Mathematics behind the next test: sin(1000 x) is smooth, and torch's gradcheck (h =
    1e-6, the same tolerances) accepts its built-in backward at these points."""
    x = torch.linspace(0.1, 0.2, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: torch.sin(1000 * t), (x,))


def test_a_steep_sine_is_not_called_a_kink(ip, run_ok):
    body = X5.replace("linspace(1, 2, 5", "linspace(0.1, 0.2, 4") + "y = torch.sin(1000 * x)"
    assert run_ok("%%vjp --gradcheck\n" + body).gradcheck.ok is True
