"""s37 F7: grading never excuses a wrong answer by a rounding bound it cannot prove.

A ✓ needs the answer proved within the tolerance: against float64 derivatives (the cell's
record replayed, or the exercise's f on float64 copies), or, for the answer's own rounding,
its formula replayed in float64. Where only a first-order bound read off a graph (autograd's
rounding, or the answer's own) would excuse the difference, the verdict is "undecided"
(neither ✓ nor ✗) and says how to decide it. Expected values come from mathematics:
d/dx (x²/2) = x; d/dx (x − sin x) = 1 − cos x = 2 sin²(x/2), evaluated in float64.
"""
from __future__ import annotations

import pytest
import torch

import vjp_magic
from vjp_magic.run.record import recording
from vjp_magic.teach.grading import grade


def _x_sin_true(points) -> torch.Tensor:
    x = torch.as_tensor(points, dtype=torch.float64)
    return 2 * torch.sin(x / 2) ** 2


def _lossy_identity(x: torch.Tensor, offset: float) -> torch.Tensor:
    """x + offset, computed through 1e6 in x's dtype: every intermediate value is saved on
    the graph (pow with a tensor exponent, sqrt), so the answer's own first-order rounding
    bound (~0.6 in float32) can be read off it, and is larger than the offset."""
    return torch.sqrt(torch.pow(x + 1e6, torch.tensor(2.0, dtype=x.dtype))) - (1e6 - offset)


@pytest.mark.parametrize("offset", [0.3, 0.5])
def test_a_wrong_formula_inside_its_own_rounding_bound_is_not_right(offset):
    x = torch.tensor([100.0, 200.0, 300.0], requires_grad=True)
    y = x**2 / 2  # dy/dx = x
    answer = _lossy_identity(x.detach().requires_grad_(), offset)  # x + offset: wrong
    verdict = vjp_magic.check(answer, y, x)
    assert not verdict.correct
    assert verdict.kind == "undecided", verdict.hint
    assert verdict.headline.startswith("?")
    assert ".double()" in verdict.hint
    with pytest.raises(AssertionError):
        vjp_magic.assert_correct(answer, y, x)


def test_the_same_formulas_in_float64_are_decided():
    x = torch.tensor([100.0, 200.0, 300.0], requires_grad=True)
    y = x**2 / 2
    xd = x.detach().double().requires_grad_()
    assert vjp_magic.check(_lossy_identity(xd, 0.0), y, x).correct  # x itself
    wrong = vjp_magic.check(_lossy_identity(xd, 0.5), y, x)
    assert not wrong.correct and wrong.kind != "undecided"


def test_an_error_beyond_the_bound_is_wrong():
    x = torch.tensor([100.0, 200.0, 300.0], requires_grad=True)
    y = x**2 / 2
    verdict = vjp_magic.check(_lossy_identity(x.detach().requires_grad_(), 5.0), y, x)
    assert (verdict.correct, verdict.kind) == (False, "wrong")


@pytest.mark.parametrize("factor", [1.0, 1.1, 1.3])
def test_autograds_rounding_bound_never_makes_a_check(factor):
    """y = x − sin x at 1e-3: autograd's float32 value is 4.6% off; from the graph alone the
    truth, 10% or 30% too much are all within its rounding bound: none is ✓."""
    x = torch.tensor([1e-3], requires_grad=True)
    y = x - torch.sin(x)
    verdict = vjp_magic.check((factor * _x_sin_true([1e-3])).float(), y, x)
    assert (verdict.correct, verdict.kind) == (False, "undecided"), verdict.hint
    assert "check(answer, f, x)" in verdict.hint


def test_autograds_own_value_and_a_clear_mistake_stay_decided():
    x = torch.tensor([1e-3], requires_grad=True)
    y = x - torch.sin(x)
    (own,) = torch.autograd.grad(y.sum(), x, retain_graph=True)
    assert vjp_magic.check(own, y, x).correct  # what r.derivatives holds
    twice = vjp_magic.check((2 * _x_sin_true([1e-3])).float(), y, x)
    assert not twice.correct and twice.kind != "undecided"


@pytest.mark.parametrize("factor, right", [(1.0, True), (1.05, False), (1.2, False)])
def test_against_f_is_decided_in_float64(factor, right):
    x = torch.tensor([1e-3], requires_grad=True)
    verdict = vjp_magic.check((factor * _x_sin_true([1e-3])).float(),
                              lambda t: t - torch.sin(t), x)
    assert verdict.correct is right, verdict.hint
    assert verdict.kind != "undecided"


@pytest.mark.parametrize("factor, kind", [(1.0, "correct"), (1.03, "undecided"),
                                          (1.09, "wrong")])
def test_the_records_float64_replay_excuses_no_more_than_autograds_own_error(factor, kind):
    """Autograd's float32 value is 4.6% off here; 9% off was ✓ when the slack was twice
    that error: now ✗. A float32 answer 3% off is as near the truth as autograd's own value,
    which a right float32 formula can be: undecided (a bare tensor: its formula unknown)."""
    x = torch.tensor([1e-3], requires_grad=True)
    with recording() as rec:
        y = x - torch.sin(x)
    r = vjp_magic.differentiate(y, x)
    verdict = grade((factor * _x_sin_true([1e-3])).float(), r, record=rec, output=y)
    assert verdict.kind == kind, verdict.hint
    assert verdict.correct is (kind == "correct")
    if kind == "wrong":  # in float64 an answer 3% off has no rounding to hide in
        assert not grade(1.03 * _x_sin_true([1e-3]), r, record=rec, output=y).correct


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_cancellation(dtype):
    """x − sin x at 0.05 in a half type: 1 − cos x cancels to nothing or a unit; the truth
    and 30% too much are undecided from the graph, decided against f."""
    points = [0.05]
    truth = _x_sin_true(points)
    x = torch.tensor(points, dtype=dtype, requires_grad=True)
    y = x - torch.sin(x)
    f = lambda t: t - torch.sin(t)  # noqa: E731
    for factor in (1.0, 1.3):
        verdict = vjp_magic.check((factor * truth).to(dtype), y, x)
        assert not (verdict.correct and factor != 1.0), verdict.hint
        assert verdict.correct or verdict.kind == "undecided" or factor != 1.0, verdict.hint
    assert vjp_magic.check(truth.to(dtype), f, x).correct
    assert not vjp_magic.check((1.3 * truth).to(dtype), f, x).correct  # autograd's is 200% off
    assert not vjp_magic.check((1.3 * truth), f, x).correct  # float64: no rounding to hide in


def test_magic_answer_with_a_cancelling_formula_is_still_right(run_vjp):
    """In a cell the record replays the answer's formula in float64: a right formula whose
    float32 value lost digits is ✓ (s36 F5), a wrong one inside its rounding ✗."""
    cell = ("x = torch.tensor([100., 200., 300.], requires_grad=True)\ny = x**2 / 2\n"
            "ans = torch.sqrt(torch.pow(x.detach() + 1e6, torch.tensor(2.))) - (1e6 - {off})\n")
    assert run_vjp(cell.format(off=0.0), "--check ans").check.correct
    wrong = run_vjp(cell.format(off=0.5), "--check ans").check
    assert (wrong.correct, wrong.kind) == (False, "wrong")
