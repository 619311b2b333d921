"""``--gradcheck`` judges finite differences against their own rounding noise.

Where the values are so large that the central difference at the step is rounding noise
(y = x + 1e12: ε·1e12/h ≈ 100 against a derivative of 1; x = 1e12, where x + h is x), the
entry is inconclusive, saying why, never FAILED; a wrong backward (1 % off, or ignoring
``grad_output``) still FAILS at large and at small magnitudes wherever the error is above
tolerance plus noise. Expected derivatives come from mathematics.
"""
from __future__ import annotations

import pytest
import torch
from custom_functions import square

from vjp_magic.render import plain
from vjp_magic.render.document import Document
from vjp_magic.render.gradcheck import gradcheck_sections
from vjp_magic.run.gradcheck import gradcheck
from vjp_magic.run.record import recording


def _ignoring(scale: float):
    class Ignoring(torch.autograd.Function):
        """x ↦ scale·x², backward 2·scale·x: ``grad_output`` ignored."""

        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return scale * x * x

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return 2 * scale * x

    return Ignoring


def _checked(build, x: torch.Tensor, seed: int = 0):
    with recording() as rec:
        y = build(x)
    return gradcheck(rec, {"x": x}, y, ["x"], seed=seed)


def _text(report) -> str:
    return " ".join(plain.render(Document(tuple(gradcheck_sections(report, None)))).split())


def _x(low: float, high: float, n: int = 5) -> torch.Tensor:
    return torch.linspace(low, high, n, dtype=torch.float64, requires_grad=True)


# -- right derivatives under rounding noise: inconclusive or passed, never failed ------------
@pytest.mark.parametrize("build, x", [
    (lambda x: x + 1e12, _x(1, 2)),
    (lambda x: x * 3 + 1e14, _x(-1, 1)),
    (lambda x: (x + 1e12).sum(), _x(1, 2)),
    (lambda x: torch.sin(x) + 1e13, _x(0, 3)),
    (lambda x: square(2.0).apply(x) + 1e12, _x(1, 2)),
], ids=["offset", "steep-offset", "scalar-offset", "sin-offset", "custom-offset"])
@pytest.mark.parametrize("seed", [0, 5])
def test_rounding_noise_is_inconclusive_not_failed(build, x, seed):
    report = _checked(build, x, seed)
    assert report.ok is None, report
    assert report.failed == {} and report.noisy
    text = _text(report)
    assert "FAILED" not in text and "not differentiable" not in text
    assert "too large for finite differences" in text


@pytest.mark.parametrize("seed", [0, 5])
def test_huge_x_is_checked_at_a_step_relative_to_it(seed):
    """x² at x = 1e12 and -3e13: a step of 1e-6 is below the rounding of x² (noise
    ε·1e26/1e-6), a step of 1e-6·|x| is not ((x + h)² − (x − h)² = 4xh: the central
    difference is 2x, exact but for rounding of ~1e-10 of it): checked, and passed."""
    x = torch.tensor([1e12, -3e13], dtype=torch.float64, requires_grad=True)
    report = _checked(lambda t: t ** 2, x, seed)
    assert report.ok is True and not report.noisy, report


@pytest.mark.parametrize("build", [
    lambda x: (x + 1e12) * 2 - 2e12,  # the output is 2x: the step is lost inside, in x + 1e12
    lambda x: (x + 1e12) - 1e12,
    lambda x: torch.sin(x + 1e8),  # rounding of x + 1e8 (1.5e-8) against a step of 1e-6
], ids=["offset-inside", "offset-cancelled", "sin-offset-inside"])
def test_rounding_inside_the_computation_is_inconclusive_not_failed_nor_a_kink(build):
    report = _checked(build, _x(1, 2))
    assert report.ok is None and report.failed == {} and report.inconclusive == {}, report
    assert report.noisy
    assert "kink" not in _text(report) and "too large for finite differences" in _text(report)


def test_a_wrong_backward_with_rounding_inside_still_fails():
    # backward 3·t instead of 2·t for t = x + 1e4: error ~1e4·|v|, far over the noise
    report = _checked(lambda x: square(3.0).apply(x + 1e4) - 1e8, _x(1, 2))
    assert report.ok is False and report.failed.get("x")


@pytest.mark.parametrize("factor", [2e6, 1e20])
def test_a_hugely_wrong_backward_is_not_hidden_by_its_own_size(factor):
    # the noise is read off forward values only: a backward 1e6 or 1e20 times too large,
    # under an offset inside, is no reason to call the differences noise
    report = _checked(lambda x: square(factor).apply(x + 10.0) - 100.0, _x(1, 2))
    assert report.ok is False and report.failed.get("x"), report


def test_an_all_noisy_check_claims_no_largest_error():
    report = _checked(lambda x: x + 1e12, _x(1, 2))
    assert sum(len(v) for v in report.noisy.values()) == 5
    assert "Largest error" not in _text(report) and "elsewhere" not in _text(report)


def test_a_moderate_offset_still_checks_every_entry():
    # ε·1e6/h ≈ 2e-4 for y = x + 1e6: far under the tolerance, every entry conclusive
    report = _checked(lambda x: x * 2 + 1e6, _x(1, 2))
    assert report.ok is True and report.noisy == {}


# -- wrong backwards fail at every magnitude -------------------------------------------------
WRONG_BY_ONE_PERCENT = [
    ("small", lambda x: square(2.02).apply(x), _x(0.5, 2)),
    ("tiny values", lambda x: square(2.02).apply(x), _x(0.01, 0.05)),
    ("tiny derivatives", lambda x: 1e-6 * square(2.02).apply(x), _x(0.5, 2)),
    ("tiny scalar", lambda x: (1e-7 * square(2.02).apply(x)).sum(), _x(0.5, 2)),
    ("large values", lambda x: 1e9 * square(2.02).apply(x), _x(0.5, 2)),
    ("large inputs", lambda x: square(2.02).apply(x), _x(1e3, 2e3)),
    ("large offset", lambda x: square(2.02).apply(x) + 1e6, _x(0.5, 2)),
    ("scalar", lambda x: (1e6 * square(2.02).apply(x)).sum(), _x(0.5, 2)),
]


@pytest.mark.parametrize("label, build, x", WRONG_BY_ONE_PERCENT,
                         ids=[c[0] for c in WRONG_BY_ONE_PERCENT])
def test_a_backward_one_percent_off_fails(label, build, x):
    report = _checked(build, x)
    assert report.ok is False, report
    assert report.failed.get("x"), report  # by the finite differences, not only by scaling
    assert report.unscaled == ()


@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e9])
@pytest.mark.parametrize("shape", ["vector", "scalar"])
def test_a_backward_ignoring_grad_output_fails_at_any_magnitude(scale, shape):
    x = _x(0.5, 2, 6)
    f = _ignoring(scale)
    report = _checked(lambda t: f.apply(t) if shape == "vector" else f.apply(t).sum(), x)
    assert report.ok is False and report.unscaled == ("x",)


def test_a_wrong_backward_under_an_offset_fails_where_the_error_is_over_the_noise():
    # backward 3·x instead of 2·x under a 1e8 offset: noise ~ 8ε·|v|·1e8/h ≈ 0.5, error
    # |v·x| ≥ 15
    report = _checked(lambda x: square(3.0).apply(x) + 1e8, _x(10, 20))
    assert report.ok is False and report.failed.get("x")


def test_the_magic_says_why_it_is_inconclusive(ip, run_ok):
    r = run_ok("%%vjp --gradcheck\n"
               "x = torch.linspace(1, 2, 5, dtype=torch.float64, requires_grad=True)\n"
               "y = x + 1e12")
    assert r.gradcheck.ok is None
    torch.testing.assert_close(r.derivatives["x"], torch.ones(5, dtype=torch.float64))
