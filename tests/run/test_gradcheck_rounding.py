"""``--gradcheck``'s float32 check judges a difference against the rounding the same formula
has in float32 (G28-5's class): a right custom backward whose float32 arithmetic cancels
(1 − cos x, exp(x) − 1 and 1/(1 + x) − 1 near 0, a difference of squares) or saturates
(sigmoid's s(1 − s) at s ≈ 1) is inconclusive in float32, never FAILED; a backward wrong in
float32 is still failed. Each backward is first verified right in float64 against
torch.func.jacrev of the same function written with built-in ops.
"""
from __future__ import annotations

import pytest
import torch

from vjp_magic.render import plain
from vjp_magic.render.document import Document
from vjp_magic.render.gradcheck import gradcheck_sections
from vjp_magic.run.gradcheck import gradcheck
from vjp_magic.run.record import recording


def _custom(forward, backward, flip32=False):
    """x ↦ forward(x) with backward g · backward(x) (``flip32``: its sign flipped in float32
    only, a backward wrong only there)."""

    class Custom(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return forward(x)

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            sign = -1.0 if flip32 and x.dtype == torch.float32 else 1.0
            return sign * g * backward(x)

    return Custom


def _sigmoid_backward(x):
    s = torch.sigmoid(x)  # saturates: 1 in float32, 1 − 2e-9 in float64
    return s * (1 - s)


CASES = {  # name: (forward with built-in ops, the backward's cancelling formula, x)
    "x - sin x, 1 - cos x": (lambda x: x - torch.sin(x), lambda x: 1 - torch.cos(x),
                             torch.linspace(1e-3, 2e-3, 5)),
    "exp(x) - x, exp(x) - 1 (no expm1)": (lambda x: torch.exp(x) - x,
                                          lambda x: torch.exp(x) - 1,
                                          torch.linspace(1e-5, 3e-5, 6)),
    "log1p(x) - x, 1/(1 + x) - 1": (lambda x: torch.log1p(x) - x,
                                    lambda x: 1 / (1 + x) - 1, torch.linspace(1e-5, 3e-5, 6)),
    "x², ((x + 1)² - (x - 1)²)/2": (lambda x: x * x,
                                    lambda x: ((x + 1) ** 2 - (x - 1) ** 2) / 2,
                                    torch.linspace(1e-6, 3e-6, 6)),
    "sigmoid at saturation": (torch.sigmoid, _sigmoid_backward, torch.linspace(15.0, 18.0, 6)),
}


def _checked(case, flip32=False, output="sum"):
    forward, backward, x = CASES[case]
    custom = _custom(forward, backward, flip32)
    x = x.clone().requires_grad_(True)
    with recording() as rec:
        y = custom.apply(x)
        y = y.sum() if output == "sum" else y
    return gradcheck(rec, {"x": x}, y, ["x"], seed=0, passes=400), custom


@pytest.mark.parametrize("case", list(CASES))
def test_the_backward_is_right_in_float64(case):
    forward, backward, x = CASES[case]
    x64 = x.double().requires_grad_(True)
    custom = _custom(forward, backward)
    (mine,) = torch.autograd.grad(custom.apply(x64).sum(), x64)
    want = torch.func.jacrev(lambda t: forward(t).sum())(x.double())
    torch.testing.assert_close(mine, want, rtol=1e-9, atol=1e-300)


@pytest.mark.parametrize("output", ["sum", "vector"])
@pytest.mark.parametrize("case", list(CASES))
def test_a_right_backward_with_float32_cancellation_is_inconclusive_not_failed(case, output):
    report, _ = _checked(case, output=output)
    assert report.failed == {} and report.unscaled == ()  # the float64 replay agrees
    assert report.ok is not False and report.cell_failed == ()
    text = " ".join(plain.render(Document(gradcheck_sections(report, None))).split())
    assert "FAILED" not in text
    if report.ok is None and report.cell_dtype:  # float32 in doubt: why is said
        assert "rounding of this size is expected" in report.note or \
            "values already differ" in report.note  # (a cancelling forward: not compared)
        if not (report.inconclusive or report.noisy):
            assert "inconclusive in float32" in text


def test_the_float32_verdict_names_the_rounding():
    """A case where only float32 is in doubt: the headline and the note say so."""
    report, _ = _checked("exp(x) - x, exp(x) - 1 (no expm1)", output="vector")
    assert report.ok is None and report.cell_failed == () and report.cell_dtype == "float32"
    assert not (report.inconclusive or report.noisy or report.unchecked)
    text = " ".join(plain.render(Document(gradcheck_sections(report, None))).split())
    assert "inconclusive in float32" in text and "rounding of this size is expected" in text


@pytest.mark.parametrize("case", list(CASES))
def test_float32_arithmetic_really_is_that_far_off_here(case):
    """Behind the test above: the float32 derivatives differ from float64's beyond the old
    tolerance (1e-3 of the largest), so a check ignoring the formula's rounding fails them."""
    forward, backward, x = CASES[case]
    want = backward(x.double())
    got = backward(x).double()
    assert float((got - want).abs().max() / want.abs().max()) > 1e-3


@pytest.mark.parametrize("case", list(CASES))
def test_a_backward_with_its_sign_flipped_in_float32_still_fails(case):
    report, _ = _checked(case, flip32=True, output="vector")
    assert report.ok is False and report.cell_failed == ("x",)
    text = " ".join(plain.render(Document(gradcheck_sections(report, None))).split())
    assert "FAILED" in text and "only in float32" in text and "Custom" in text


def test_no_rounding_note_without_a_custom_backward():
    """Built-in ops only: their float32 derivatives are not second-guessed, no backward is
    blamed and no float32 note is written (issue 23 item 5)."""
    x = torch.linspace(1e-3, 2e-3, 5, requires_grad=True)
    with recording() as rec:
        y = x - torch.sin(x)
    report = gradcheck(rec, {"x": x}, y, ["x"], seed=0, passes=400)
    assert report.custom == () and report.cell_dtype is None and report.ok is not False
    assert "custom autograd.Function" not in " ".join(
        plain.render(Document(gradcheck_sections(report, None))).split())


def test_a_backward_drawing_random_numbers_is_not_excused_as_rounding():
    """A backward 5 % noisy in any dtype (d(x²)/dx = 2x, well conditioned): every replay of it
    moves by its noise, which is no rounding; the float32 check still fails it."""
    gen = torch.Generator().manual_seed(0)

    def noisy(t):
        return 2 * t * (1 + 0.05 * torch.randn(t.shape, generator=gen, dtype=t.dtype))

    custom = _custom(lambda t: t * t, noisy)
    x = torch.linspace(0.5, 2, 12, requires_grad=True)
    with recording() as rec:
        y = custom.apply(x)
    report = gradcheck(rec, {"x": x}, y, ["x"], seed=0, passes=400)
    assert report.ok is False and report.cell_failed == ("x",)
