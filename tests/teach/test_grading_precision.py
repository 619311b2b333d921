"""Grading where float32 autograd is itself imprecise (``--check``, ``vjp_magic.check``).

``y = x - sin x`` at x = 1e-3: autograd adds 1 and -cos x in float32 and gets 4.77e-7 where
1 - cos x = 5.00e-7; ``y = sqrt(x + 1) - sqrt x`` at x = 1e3 likewise. A student who computes
the true derivative (in float64 and casts, or by a formula without the cancellation) is
right; a wrong answer is still wrong. The true derivatives come from the mathematics in
float64, never from the code under test.
"""
from __future__ import annotations

import pytest
import torch

import vjp_magic
from vjp_magic.run.record import recording
from vjp_magic.teach.grading import grade

X_SIN = [1e-3]  # 1 - cos(1e-3) in float32: 1 and -0.9999995 cancel
SQRT = [1e3]


def x_sin(x):
    return x - torch.sin(x)


def x_sin_true(x, dtype=torch.float64):
    """d/dx (x - sin x) = 1 - cos x = 2 sin²(x/2) (no cancellation), in ``dtype``."""
    x = torch.as_tensor(x, dtype=dtype)
    return 2 * torch.sin(x / 2) ** 2


def sqrt_gap(x):
    return torch.sqrt(x + 1) - torch.sqrt(x)


def sqrt_gap_true(x, dtype=torch.float64):
    """1/(2√(x+1)) − 1/(2√x) = −1 / (2 √x √(x+1) (√x + √(x+1))) (no cancellation)."""
    x = torch.as_tensor(x, dtype=dtype)
    a, b = torch.sqrt(x), torch.sqrt(x + 1)
    return -1 / (2 * a * b * (a + b))


CASES = {"x_sin": (x_sin, x_sin_true, X_SIN), "sqrt_gap": (sqrt_gap, sqrt_gap_true, SQRT)}
RIGHT = {  # answers a student may compute, each right
    "float64_cast": lambda true, x: true(x).float(),
    "float64_itself": lambda true, x: true(x),
    "float32_formula": lambda true, x: true(x, torch.float32),  # e.g. 2 sin²(x/2)
}
WRONG = {  # and wrong ones: twice the answer (.grad accumulated), a sign slip
    "twice": lambda true, x: (2 * true(x)).float(),
    "negated": lambda true, x: (-true(x)).float(),
}


def _autograd(f, points):
    x = torch.tensor(points, requires_grad=True)
    (grad,) = torch.autograd.grad(f(x).sum(), x)
    return grad


@pytest.mark.parametrize("case", CASES)
def test_float32_autograd_is_itself_off_here(case):
    """The premise: autograd's float32 value differs from the truth by far more than float32
    rounding of the value (so grading against it alone calls right answers wrong)."""
    f, true, points = CASES[case]
    error = (_autograd(f, points).double() - true(points)).abs()[0]
    assert error > 1e-4 * true(points).abs()[0]


def _graded_by_magic(run_vjp, ip, case: str, answer, line: str = ""):
    f, true, points = CASES[case]
    ip.user_ns.update(f=f, answer=answer)
    return run_vjp(f"x = torch.tensor({points!r}, requires_grad=True)\ny = f(x)\n"
                   "ans = answer", f"--check ans {line}").check


@pytest.mark.parametrize("line", ["", "--wrt x"])
@pytest.mark.parametrize("how", RIGHT)
@pytest.mark.parametrize("case", CASES)
def test_magic_calls_a_right_answer_right(run_vjp, ip, case, how, line):
    f, true, points = CASES[case]
    check = _graded_by_magic(run_vjp, ip, case, RIGHT[how](true, points), line)
    assert (check.correct, check.kind) == (True, "correct"), check.hint


@pytest.mark.parametrize("line", ["", "--wrt x"])
@pytest.mark.parametrize("case", CASES)
def test_magic_calls_autograds_own_value_right(run_vjp, case, line):
    """``--check x.grad`` after the cell's own backward: autograd's float32 value is right."""
    f, _, points = CASES[case]
    check = run_vjp(f"x = torch.tensor({points!r}, requires_grad=True)\n"
                    f"y = x - torch.sin(x) if {case == 'x_sin'} else "
                    "torch.sqrt(x + 1) - torch.sqrt(x)\n"
                    "y.backward(torch.ones_like(y))", f"--check x.grad {line}").check
    assert check.correct, check.hint


@pytest.mark.parametrize("line", ["", "--wrt x"])
@pytest.mark.parametrize("how", WRONG)
@pytest.mark.parametrize("case", CASES)
def test_magic_still_calls_a_wrong_answer_wrong(run_vjp, ip, case, how, line):
    f, true, points = CASES[case]
    check = _graded_by_magic(run_vjp, ip, case, WRONG[how](true, points), line)
    assert not check.correct


def test_with_the_record_twice_the_answer_is_recognised(run_vjp, ip):
    """Against the float64 reference the answer is known well enough to say what it is."""
    check = _graded_by_magic(run_vjp, ip, "x_sin", (2 * x_sin_true(X_SIN)).float(), "--wrt x")
    assert (check.correct, check.kind, check.factor) == (False, "accumulated", 2)


@pytest.mark.parametrize("line", ["", "--wrt x"])
def test_wrong_at_one_cancelling_point_only_is_wrong_there(run_vjp, ip, line):
    points = [1e-3, 2e-3, 3e-3]  # every point cancels
    ip.user_ns["f"] = x_sin
    right = x_sin_true(points).float()
    ip.user_ns["answer"] = right
    body = f"x = torch.tensor({points!r}, requires_grad=True)\ny = f(x)\nans = answer"
    assert run_vjp(body, f"--check ans {line}").check.correct
    wrong = right.clone()
    wrong[1] = 0.0  # 1 - cos(2e-3) is 2e-6, not 0
    ip.user_ns["answer"] = wrong
    check = run_vjp(body, f"--check ans {line}").check
    assert (check.correct, check.kind, check.points) == (False, "wrong-at-points", (1,))


# -- from Python ----------------------------------------------------------------------------
def _right_and_wrong(true, points, judge) -> None:
    """Every right form of the answer is graded right by ``judge``, every wrong one wrong."""
    for how, make in RIGHT.items():
        assert judge(make(true, points)).correct, how
    for how, make in WRONG.items():
        assert not judge(make(true, points)).correct, how


@pytest.mark.parametrize("case", CASES)
def test_grade_against_the_record(case):
    f, true, points = CASES[case]
    x = torch.tensor(points, requires_grad=True)
    with recording() as rec:
        y = f(x)
    r = vjp_magic.differentiate(y, x)  # its output is detached: the recorded one is y
    _right_and_wrong(true, points, lambda answer: grade(answer, r, record=rec, output=y))
    assert x.grad is None


def _undecided_and_wrong(true, points, judge) -> None:
    """Every right form of the answer is undecided by ``judge`` (within a rounding bound it
    cannot prove: neither ✓ nor ✗, s37 F7), every wrong one wrong."""
    for how, make in RIGHT.items():
        verdict = judge(make(true, points))
        assert (verdict.correct, verdict.kind) == (False, "undecided"), how
    for how, make in WRONG.items():
        assert not judge(make(true, points)).correct, how


@pytest.mark.parametrize("case", CASES)
def test_grade_within_the_rounding_bound_without_a_record(case):
    """No record: autograd's values, within a bound on its own rounding read off the graph,
    which proves no answer right (a wrong one inside it is as likely): undecided."""
    f, true, points = CASES[case]
    x = torch.tensor(points, requires_grad=True)
    y = f(x)
    r = vjp_magic.differentiate(y, x)
    _undecided_and_wrong(true, points, lambda answer: grade(answer, r, output=y))
    assert x.grad is None


@pytest.mark.parametrize("case", CASES)
def test_check_from_python(case):
    """Against the exercise's f (computed again in float64) right answers are right; against
    the output tensor alone they are undecided."""
    f, true, points = CASES[case]
    x = torch.tensor(points, requires_grad=True)
    y = f(x)
    _right_and_wrong(true, points, lambda answer: vjp_magic.check(answer, f, x))
    _undecided_and_wrong(true, points, lambda answer: vjp_magic.check(answer, y, x))


def test_check_from_python_still_calls_wrong_answers_wrong():
    for f, true, points in CASES.values():
        x = torch.tensor(points, requires_grad=True)
        y = f(x)
        for how, make in WRONG.items():
            assert not vjp_magic.check(make(true, points), y, x).correct, how


def test_grading_leaves_the_rng_alone():
    torch.manual_seed(0)
    x = torch.tensor(X_SIN, requires_grad=True)
    with recording() as rec:
        y = x_sin(x) * torch.rand_like(x)
    noise = y.detach() / x_sin(x.detach())
    true = (x_sin_true(X_SIN) * noise.double()).float()
    state = torch.get_rng_state()
    assert grade(true, vjp_magic.differentiate(y, x), record=rec, output=y).correct
    assert torch.equal(torch.get_rng_state(), state)
