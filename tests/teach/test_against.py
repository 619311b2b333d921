"""Grading against the exercise (issue 21, item 1): ``%%vjp --check NAME --against EXPR``,
``vjp_magic.check(answer, f, inputs)`` and ``vjp_magic.assert_correct``.

The reference is the teacher's f on fresh copies of the inputs; expected derivatives here come
from ``torch.func.jacrev`` / ``torch.autograd.functional.jacobian`` or the mathematics.
"""
from __future__ import annotations


import pytest
import torch
from torch.autograd.functional import jacobian as reference_jacobian

import vjp_magic


def cubic(x):
    return x**3 - 2 * x


def stacked(x):
    return torch.stack([-x**3, 5 * x])


def points(n=5, dtype=torch.float32):
    return torch.linspace(-2, 2, n, dtype=dtype, requires_grad=True)


# -- from Python ------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_check_with_a_function(dtype):
    x = points(dtype=dtype)
    right = torch.func.jacrev(lambda t: cubic(t).sum())(x.detach())  # 3x² - 2 at each point
    check = vjp_magic.check(right, cubic, x)
    assert (check.correct, check.against) == (True, "cubic(x)")
    assert x.grad is None and not x.detach().isnan().any()  # nothing of the student's changed
    wrong = vjp_magic.check(2 * x.detach() - 2, cubic, x)  # the derivative of x**2 - 2x
    assert not wrong.correct and wrong.kind != "correct"


def test_check_with_a_function_of_several_components_and_the_full_jacobian():
    x = points(3)
    full = reference_jacobian(stacked, x.detach())
    assert vjp_magic.check(full, stacked, x).form == "jacobian"
    rows = torch.stack([-3 * x.detach()**2, torch.full((3,), 5.0)])
    assert vjp_magic.check(rows, stacked, x).correct
    assert vjp_magic.check(rows.sum(0), stacked, x).kind == "summed"


def test_check_with_a_function_of_several_inputs_by_name_or_in_order():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    w = torch.tensor([3.0, -1.0], requires_grad=True)

    def loss(w, x):  # its parameters named like the inputs, in another order
        return (w * x**2).sum()

    gx, gw = 2 * w.detach() * x.detach(), x.detach() ** 2
    assert vjp_magic.check({"x": gx, "w": gw}, loss, {"x": x, "w": w}).correct
    check = vjp_magic.check({"x1": gx, "x2": gw}, lambda a, b: (b * a**2).sum(), [x, w])
    assert check.correct  # unnamed parameters: the inputs in order


def test_the_tensor_form_still_grades_against_the_output():
    x = points()
    y = cubic(x)
    assert vjp_magic.check(3 * x.detach()**2 - 2, y, x).correct


def test_the_students_output_is_compared_with_f():
    x = points()
    answer = 3 * x.detach()**2 - 2
    assert vjp_magic.check(answer, cubic, x, y=cubic(x)).correct
    check = vjp_magic.check(2 * x.detach() - 2, cubic, x, y=x**2 - 2 * x)
    assert (check.correct, check.kind) == (False, "output-differs")
    assert "y differs from cubic(x)" in check.hint
    cut = vjp_magic.check(torch.full((5,), -2.0), cubic, x, y=x.detach()**3 - 2 * x)
    assert (cut.correct, cut.kind) == (False, "graph-cut")
    assert "in the graph as computed, y does not reach x" in cut.hint  # (not: the formula)
    assert cut.answer_kind == "wrong"  # -2 is 3x² - 2 at x = 0 only: by chance, not the derivative


def test_f_failing_or_not_giving_a_tensor_is_a_usage_error():
    x = points()
    with pytest.raises(vjp_magic.VJPUsageError, match="not a tensor"):
        vjp_magic.check(x.detach(), lambda t: 3.0, x)


def test_assert_correct_raises_with_the_hint():
    x = points(3)
    rows = torch.stack([-3 * x.detach()**2, torch.full((3,), 5.0)])
    assert vjp_magic.assert_correct(rows, stacked, x).correct
    with pytest.raises(AssertionError, match="the components summed") as raised:
        vjp_magic.assert_correct(rows.sum(0), stacked, x)
    assert "one-hot" in str(raised.value)
    y = stacked(x)
    with pytest.raises(AssertionError, match="✗"):
        vjp_magic.assert_correct(rows * 2, y, x)  # the tensor form too


@pytest.mark.parametrize("function", [vjp_magic.check, vjp_magic.assert_correct],
                         ids=lambda f: f.__name__)
def test_docstrings_say_what_they_raise(function):
    # their reference text and examples run with the other public docstrings
    # (tests/magics/test_magics.py::test_public_docstrings_carry_the_reference_...)
    assert "Raises:" in function.__doc__


# -- %%vjp --check NAME --against EXPR --------------------------------------------------------

CUBIC_CELL = "x = torch.linspace(-2, 2, 5, requires_grad=True)\nruns += 1\n"


@pytest.mark.parametrize("against", ['"x**3 - 2*x"', "f", "f(x)", "(lambda t: t**3 - 2*t)",
                                     "torch.stack([x**k for k in (3,)])[0] - 2*x"])
def test_magic_grades_a_right_answer_against_f(run_ok, run_vjp, ip, against):
    run_ok("runs = 0\ndef f(x):\n    return x**3 - 2*x")
    r = run_vjp(CUBIC_CELL + "y = x**3 - 2*x\ny.backward(torch.ones_like(y))",
                f"--check x.grad --against {against}")
    assert r.check.correct, r.check.hint
    assert ip.user_ns["runs"] == 1  # the cell ran once
    expected = torch.func.grad(lambda t: cubic(t).sum())(ip.user_ns["x"].detach())
    torch.testing.assert_close(ip.user_ns["x"].grad, expected)  # the magic left x.grad alone


def test_magic_mistyped_f_is_not_a_tick(run_ok, run_vjp, ip):
    run_ok("runs = 0\ndef f(x):\n    return x**3 - 2*x")
    r = run_vjp(CUBIC_CELL + "y = x**2 - 2*x\ny.backward(torch.ones_like(y))",
                "--check x.grad --against f")
    assert (r.check.correct, r.check.kind, r.check.against) == (False, "output-differs", "f(x)")
    shown = r._repr_mimebundle_()["text/plain"]
    assert "✓" not in shown and "y differs from f(x)" in " ".join(shown.split())
    assert ip.user_ns["runs"] == 1


def test_magic_cut_graph_is_named(run_vjp):
    r = run_vjp("x = torch.linspace(-2, 2, 5, requires_grad=True)\ny = x.detach()**3 - 2*x\n"
                "y.backward(torch.ones_like(y))", '--check x.grad --against "x**3 - 2*x"')
    assert (r.check.correct, r.check.kind) == (False, "graph-cut")
    assert "in the graph as computed, y does not reach x" in r.check.hint.lower()


def test_magic_reveal_shows_fs_derivatives_not_the_cut_graphs(run_vjp):
    r = run_vjp("x = torch.tensor([1., 2., 3.], requires_grad=True)\n"
                "y = torch.stack([-x.detach()**3, 5*x])\nans = torch.zeros(2, 3)",
                "--check ans --against torch.stack([-x**3, 5*x]) --reveal")
    shown = r._repr_mimebundle_()["text/plain"]
    # f's derivatives: -3x² at 1, 2, 3 (the cut graph's row would be 0 0 0)
    for value in ("-3", "-12", "-27"):
        assert value in shown
    assert r.check.kind == "graph-cut"


def test_magic_against_an_expression_that_fails_is_a_usage_error(usage_error):
    text = usage_error("%%vjp --check ans --against torch.nonexistent(x)\n"
                       "x = torch.ones(2, requires_grad=True)\ny = x * 2\nans = 2 * torch.ones(2)")
    assert "--against" in text and "nonexistent" in text
