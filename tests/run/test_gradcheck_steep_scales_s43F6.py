"""``--gradcheck`` on steep smooth functions, at large inputs and with incoming gradients of
every magnitude (s43 F6: review findings R2-1, R2-2, R2-3, R2-6).

A right backward of a smooth function is never FAILED, however steep (sin(k·x) up to
k = 1e9): where no finite-difference step resolves it, the check is inconclusive and says so
(never "not differentiable", never "a kink"); where a step does, a wrong backward fails. A
backward wrong only for small (|g| ≪ 1), large, zero or relatively small incoming gradient
entries fails; a backward 33 % off at |x| ~ 1e10 fails (a step relative to |x|). Expected
derivatives come from mathematics: d/dx sin(kx) = k cos(kx), d/dx exp(ax) = a exp(ax),
d/dx x^n = n x^(n-1), d/dx x³ = 3x².
"""
from __future__ import annotations

import pytest
import torch

from vjp_magic.render import plain
from vjp_magic.render.document import Document
from vjp_magic.render.gradcheck import gradcheck_sections
from vjp_magic.run.gradcheck import gradcheck
from vjp_magic.run.record import recording


def _function(forward, derivative, incoming=lambda g: g):
    """A custom Function: ``forward(x)``, backward ``derivative(x) · incoming(g)``."""
    class Custom(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return forward(x)

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return derivative(x) * incoming(g)

    return Custom


def _checked(build, x: torch.Tensor, seed: int = 0):
    with recording() as rec:
        y = build(x)
    return gradcheck(rec, {"x": x}, y, ["x"], seed=seed)


def _text(report) -> str:
    return " ".join(plain.render(Document(tuple(gradcheck_sections(report, None)))).split())


def _x(low: float = 0.5, high: float = 1.5, n: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return (low + (high - low) * torch.rand(n, dtype=torch.float64, generator=g)) \
        .requires_grad_()


STEEP = [1e3, 1e5, 1e6, 1e7, 3e7, 1e8, 1e9]


@pytest.mark.parametrize("k", STEEP)
def test_a_right_backward_of_a_steep_sine_is_never_failed_nor_called_a_kink(k):
    report = _checked(lambda x: torch.sin(k * x), _x())
    assert report.ok is not False, (report.failed, report.max_error)
    text = _text(report)
    assert "not differentiable" not in text and "a kink" not in text, text
    if report.ok is None:  # where no step resolves it, the check says so
        assert report.steep and "changes too fast for finite differences" in text, text


@pytest.mark.parametrize("k", [1e3, 1e5])
def test_a_resolvable_steep_sine_passes(k):
    """At h = 1e-6 / 256, k·h ≤ 4e-4: the central difference's truncation (kh)²/6 is far
    below the tolerance, so the check has a verdict, and autograd's is right."""
    assert _checked(lambda x: torch.sin(k * x), _x()).ok is True


@pytest.mark.parametrize("k", [1e3, 1e5])
def test_a_wrong_backward_of_a_resolvable_steep_sine_fails(k):
    wrong = _function(lambda x: torch.sin(k * x), lambda x: 1.1 * k * torch.cos(k * x))
    assert _checked(lambda t: wrong.apply(t), _x()).ok is False


@pytest.mark.parametrize("k", [3e7, 1e8, 1e9])
def test_a_wrong_backward_of_an_unresolvable_sine_is_not_passed(k):
    """No step resolves sin(kx) here: the check can neither pass nor fail the backward."""
    wrong = _function(lambda x: torch.sin(k * x), lambda x: 1.1 * k * torch.cos(k * x))
    assert _checked(lambda t: wrong.apply(t), _x()).ok is not True


SMOOTH = {  # name: (f, f', x)
    "exp(50 x)": (lambda x: torch.exp(50 * x), lambda x: 50 * torch.exp(50 * x), _x()),
    "x^20 at 3": (lambda x: x ** 20, lambda x: 20 * x ** 19, _x(2.9, 3.1)),
}


@pytest.mark.parametrize("name", list(SMOOTH))
def test_steep_smooth_functions_pass_with_right_backwards_and_fail_with_wrong_ones(name):
    f, derivative, x = SMOOTH[name]
    assert _checked(f, x).ok is True
    assert _checked(lambda t: _function(f, derivative).apply(t), x).ok is True
    assert _checked(lambda t: _function(f, lambda s: 0.99 * derivative(s)).apply(t), x).ok is False


INCOMING = {  # a backward wrong only for some incoming gradient entries (x ↦ x³)
    "drops |g| < 1e-3": lambda g: torch.where(g.abs() < 1e-3, torch.zeros_like(g), g),
    "drops |g| < 0.5": lambda g: torch.where(g.abs() < 0.5, torch.zeros_like(g), g),
    "clips |g| > 1e3": lambda g: g.clamp(-1e3, 1e3),
    "1 where g is 0": lambda g: torch.where(g == 0, torch.ones_like(g), g),
    "drops g small beside the largest": lambda g: torch.where(
        g.abs() < 1e-3 * g.abs().max(), torch.zeros_like(g), g),
}


@pytest.mark.parametrize("name", list(INCOMING))
@pytest.mark.parametrize("seed", [0, 3])
def test_a_backward_wrong_only_for_some_incoming_gradients_fails(name, seed):
    cube = _function(lambda x: x ** 3, lambda x: 3 * x ** 2, INCOMING[name])
    x = torch.linspace(0.5, 1.5, 6, dtype=torch.float64, requires_grad=True)
    report = _checked(lambda t: cube.apply(t), x, seed)
    assert report.ok is False and report.unscaled == ("x",), report
    assert "small, large or zero entries" in _text(report)


@pytest.mark.parametrize("seed", [0, 3])
def test_right_backwards_pass_the_magnitude_probes(seed):
    """x³ elementwise, a matrix product (sums of mixed signs) and a scalar output."""
    w = torch.randn(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    cube = _function(lambda x: x ** 3, lambda x: 3 * x ** 2)
    x = torch.linspace(-1.5, 1.5, 6, dtype=torch.float64, requires_grad=True)
    for build in (lambda t: cube.apply(t), lambda t: cube.apply(t) @ w,
                  lambda t: (cube.apply(t) @ w).sum()):
        report = _checked(build, x, seed)
        assert report.ok is True and report.unscaled == (), report


@pytest.mark.parametrize("low", [1e10, -2e12])
def test_a_wrong_backward_at_large_inputs_fails_and_a_right_one_passes(low):
    """At |x| ≥ 1e10 a step of 1e-6 is below x³'s rounding; 1e-6·|x| resolves a 33 % error."""
    x = torch.linspace(low, 2 * low, 6, dtype=torch.float64, requires_grad=True)
    right = _function(lambda t: t ** 3, lambda t: 3 * t ** 2)
    wrong = _function(lambda t: t ** 3, lambda t: 2 * t ** 2)
    assert _checked(lambda t: right.apply(t), x).ok is True
    assert _checked(lambda t: wrong.apply(t), x).ok is False
