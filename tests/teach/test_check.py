"""Grading a student's answer (``teach/grading.py``), and the notes on the cell's own backward.

Every answer is built by the mistake itself in real PyTorch code (``y.backward(ones)`` on a
2-component output, two backward calls without zeroing, ``.T``, a formula wrong at a few
points…); the true derivatives come from ``torch.autograd.functional.jacobian``/``torch.func``
or the mathematics, never from the code under test. Graded through :func:`grade` with results
of ``vjp_magic.differentiate``; the notes on v = ones and on a general v through the magic.
"""
from __future__ import annotations

import re

import pytest
import torch
from torch.autograd.functional import jacobian as reference_jacobian

import vjp_magic
from vjp_magic.core.analysis import differentiate as analyse
from vjp_magic.render import plain
from vjp_magic.render.document import Document, Formula
from vjp_magic.render.latex import tex_problems
from vjp_magic.run.guard import keep_graphs
from vjp_magic.teach.coaching import mistake_sections
from vjp_magic.teach.grading import KINDS, Verdict, VerdictKind, grade, verdict_sections

DTYPES = [torch.float32, torch.float64]
SIZES = [3, 100_000]


def stacked(x):
    """The tutorial's two component functions at every point: (-x³, 5x)."""
    return torch.stack([-x**3, 5 * x])


def stacked_derivatives(x):
    """Row k: f_k' at the points (the mathematics: -3x², 5)."""
    x = x.detach()
    return torch.stack([-3 * x**2, torch.full_like(x, 5.0)])


def points(n, dtype):
    return torch.linspace(-2, 2, n, dtype=dtype, requires_grad=True)


def one_hot_loop(y, x, *, zero=True, clone=True):
    """The tutorial's loop: one backward per component, v one-hot on it (ones along points)."""
    rows = []
    for k in range(y.shape[0]):
        v = torch.zeros_like(y)
        v[k] = 1
        y.backward(gradient=v, retain_graph=True)
        rows.append(x.grad.clone() if clone else x.grad)
        if zero:
            x.grad = None
    return rows


def numbers_in(text: str) -> set[str]:
    return set(re.findall(r"-?\d+\.\d+", text))


# -- correct answers, in every accepted form --------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_ones_at_points_is_correct(dtype, n):
    x = points(n, dtype)
    y = x**3 - 2 * x
    r = vjp_magic.differentiate(y, x)
    y.backward(torch.ones_like(y))
    check = grade(x.grad, r)
    assert check == Verdict(True, "correct", check.hint, name="x", expected_shape=(n,),
                            answer_shape=(n,), form="derivatives")
    assert check.correct and check.hint.startswith("Right")
    formula = 3 * x.detach()**2 - 2  # the student's own formula, rounded its own way
    assert grade(formula, r).kind == "correct"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_components_stacked_from_the_tutorials_loop_are_correct(dtype, n):
    x = points(n, dtype)
    y = stacked(x)
    r = vjp_magic.differentiate(y, x)
    rows = one_hot_loop(y, x)
    assert grade(rows, r).kind == "correct"  # a list of tensors is stacked
    assert grade(torch.stack(rows), r).correct
    assert grade(stacked_derivatives(x), r).correct


@pytest.mark.parametrize("dtype", DTYPES)
def test_full_jacobian_is_correct(dtype):
    x = points(4, dtype)
    r = vjp_magic.differentiate(stacked(x), x)
    full = reference_jacobian(stacked, x.detach())
    check = grade(full, r)
    assert check.correct and check.form == "jacobian"
    softmax = torch.tensor([1.0, 2.0, 3.0], dtype=dtype, requires_grad=True)
    r = vjp_magic.differentiate(torch.softmax(softmax, 0), softmax)
    assert grade(reference_jacobian(lambda s: torch.softmax(s, 0), softmax.detach()), r).correct


def test_answer_still_on_the_graph_is_read_without_it():
    x = points(5, torch.float64)
    y = torch.sin(x)
    r = vjp_magic.differentiate(y, x)
    (ans,) = torch.autograd.grad(y, x, torch.ones_like(y), create_graph=True)
    assert ans.requires_grad and grade(ans, r).correct


def test_scalar_output_and_extra_size_one_axes():
    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    y = (x**2).sum()
    r = vjp_magic.differentiate(y, x)
    y.backward()
    assert grade(x.grad, r).correct
    assert grade(x.grad.reshape(1, 3), r).correct  # size-1 axes may differ
    assert grade(x.grad.tolist(), r).correct  # plain numbers too


def test_several_inputs_graded_each():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    w = torch.tensor([3.0, -1.0], requires_grad=True)
    y = (w * x**2).sum()
    r = vjp_magic.differentiate(y, {"x": x, "w": w})
    gx, gw = torch.autograd.grad(y, (x, w), retain_graph=True)
    assert grade((gx, gw), r).correct
    assert grade({"x": gx, "w": gw}, r).correct
    check = grade({"x": gx, "w": 2 * gw}, r, answer_name="ans")
    assert (check.kind, check.name) == ("accumulated", "w") and "ans['w']" in check.hint
    assert grade(gw, r, "w").correct and grade(gx, r, answer_name="x.grad").correct


# -- each mistake, built by the mistake itself --------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_ones_on_two_components_is_summed(dtype, n):
    x = points(n, dtype)
    y = stacked(x)
    r = vjp_magic.differentiate(y, x)
    y.backward(torch.ones_like(y))
    check = grade(x.grad, r, answer_name="x.grad")
    assert (check.correct, check.kind) == (False, "summed")
    assert "added up" in check.hint and "one-hot" in check.hint
    assert not numbers_in(check.hint)


def test_sum_backward_on_softmax_is_summed_column_sums():
    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    y = torch.softmax(x, 0)
    r = vjp_magic.differentiate(y, x)
    y.sum().backward()
    check = grade(x.grad, r, answer_name="x.grad")
    assert check.kind == "summed" and "column sums" in check.hint


def test_ones_twice_is_summed_twice():
    x = points(3, torch.float64)
    y = stacked(x)
    r = vjp_magic.differentiate(y, x)
    y.backward(torch.ones_like(y), retain_graph=True)
    y.backward(torch.ones_like(y))
    check = grade(x.grad, r)
    assert (check.kind, check.factor) == ("summed", 2) and "2 times" in check.hint


@pytest.mark.parametrize("n", SIZES)
def test_one_hot_on_one_component_only(n):
    x = points(n, torch.float32)
    y = stacked(x)
    r = vjp_magic.differentiate(y, x)
    v = torch.zeros_like(y)
    v[1] = 1
    y.backward(gradient=v)
    check = grade(x.grad, r, answer_name="ans")
    assert (check.kind, check.component) == ("one-component", 1)
    assert "(2, " in check.hint  # the shape wanted


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_two_backward_calls_without_zeroing_accumulate(dtype, n):
    x = points(n, dtype)
    y = torch.sin(x)
    r = vjp_magic.differentiate(y, x)
    y.backward(torch.ones_like(y), retain_graph=True)
    y.backward(torch.ones_like(y))
    check = grade(x.grad, r, answer_name="x.grad")
    assert (check.kind, check.factor) == ("accumulated", 2)
    assert "x.grad.zero_()" in check.hint


def test_loop_without_zeroing_is_accumulated_with_the_log_and_summed_without():
    x = points(3, torch.float64)
    y = stacked(x)
    r = vjp_magic.differentiate(y, x)
    with keep_graphs() as log:
        one_hot_loop(y, x, zero=False)
    check = grade(x.grad, r, log=log)
    assert (check.kind, check.factor) == ("accumulated", 2)
    assert "sum of 2 backward calls" in check.hint
    assert grade(x.grad, r).kind == "summed"  # the numbers alone: components added up


def test_grad_from_an_earlier_computation_is_accumulated_with_the_log():
    x = points(4, torch.float64)
    (x**2).sum().backward()  # an earlier cell
    y = torch.exp(x)
    r = vjp_magic.differentiate(y, x)
    with keep_graphs() as log:
        y.backward(torch.ones_like(y))
    check = grade(x.grad, r, log=log)
    assert check.kind == "accumulated" and "before" in check.hint
    assert grade(x.grad, r).kind != "correct"


@pytest.mark.parametrize("clone", [True, False])
def test_rows_stored_without_zeroing_are_accumulated(clone):
    x = points(3, torch.float32)
    y = stacked(x)
    r = vjp_magic.differentiate(y, x)
    rows = one_hot_loop(y, x, zero=False, clone=clone)
    check = grade(torch.stack(rows), r)
    assert check.kind == "accumulated" and "zero" in check.hint


@pytest.mark.parametrize("n", SIZES)
def test_transposed(n):
    x = points(n, torch.float32)
    y = stacked(x)
    r = vjp_magic.differentiate(y, x)
    ans = torch.stack(one_hot_loop(y, x)).T
    check = grade(ans, r, answer_name="ans")
    assert check.kind == "transposed" and "ans.T" in check.hint


def test_transposed_square_and_jacobian():
    x = torch.tensor([0.5, 1.0, 2.0], requires_grad=True)
    y = torch.softmax(x * torch.tensor([1.0, 2.0, 3.0]), 0)
    r = vjp_magic.differentiate(y, x)
    full = reference_jacobian(lambda s: torch.softmax(s * torch.tensor([1.0, 2.0, 3.0]), 0),
                              x.detach())
    assert not torch.allclose(full, full.T)
    assert grade(full.T, r).kind == "transposed"


@pytest.mark.parametrize("n", SIZES)
def test_reshaped(n):
    x = points(n, torch.float64)
    y = stacked(x)
    r = vjp_magic.differentiate(y, x)
    rows = one_hot_loop(y, x)
    along_points = torch.stack(rows, dim=1)  # (n, 2): stacked along the wrong axis …
    check = grade(along_points.reshape(2, n), r, answer_name="ans")  # … then reshaped
    assert check.kind == "reshaped" and ".permute" in check.hint
    check = grade(torch.stack(rows).reshape(n, 2), r, answer_name="ans")
    assert check.kind == "reshaped" and f"ans.reshape(2, {n})" in check.hint


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_wrong_at_a_few_points(dtype, n):
    x = points(n, dtype)
    y = torch.tanh(x) * x
    r = vjp_magic.differentiate(y, x)
    # f' at every point: the gradient of the sum of an elementwise f
    true = reference_jacobian(lambda t: (torch.tanh(t) * t).sum(), x.detach())
    wrong_at = sorted({1, n // 2, n - 1})  # not all of them
    ans = true.clone()
    ans[wrong_at] += 0.5
    check = grade(ans, r, answer_name="ans")
    if 2 * len(wrong_at) > n:  # wrong at most points (2 of 3): not the derivative at all
        assert (check.kind, check.points) == ("wrong", ())
        return
    assert (check.kind, check.points) == ("wrong-at-points", tuple(wrong_at))
    assert f"x[{n // 2}]" in check.hint and f"{n - len(wrong_at):,} of {n:,}" in check.hint


def test_formula_undefined_at_zero_is_wrong_there():
    x = torch.linspace(-2, 2, 5, requires_grad=True)
    r = vjp_magic.differentiate(x.abs(), x)
    ans = x.detach() / x.detach().abs()  # sign(x), but 0/0 = nan at x = 0
    check = grade(ans, r, answer_name="ans")
    assert (check.kind, check.points) == ("wrong-at-points", (2,)) and "x[2]" in check.hint


def test_wrong_points_of_rows_name_the_row():
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    y = (x**2).sum(1)
    r = vjp_magic.differentiate(y, x)
    ans = 2 * x.detach()
    ans[4, 1] = 0.0
    check = grade(ans, r, answer_name="ans")
    assert check.points == (4,) and "x[4]" in check.hint


def test_wrong_everywhere():
    x = torch.linspace(0.1, 1.0, 5, requires_grad=True)
    r = vjp_magic.differentiate(torch.sin(x), x)
    check = grade(torch.sin(x.detach()), r, answer_name="ans")  # forgot to differentiate
    assert (check.correct, check.kind) == (False, "wrong")
    assert "ans has the right shape" in check.hint and "ones_like" in check.hint


def test_rows_stored_without_clone_then_zeroed_are_all_zeros():
    x = points(3, torch.float32)
    y = stacked(x)
    r = vjp_magic.differentiate(y, x)
    rows = []
    for k in range(2):
        v = torch.zeros_like(y)
        v[k] = 1
        y.backward(gradient=v, retain_graph=True)
        rows.append(x.grad)  # the same tensor each time …
        x.grad.zero_()  # … emptied here
    check = grade(torch.stack(rows), r, answer_name="ans")
    assert check.kind == "wrong" and "all zeros" in check.hint and ".clone()" in check.hint


@pytest.mark.parametrize("n", SIZES)
def test_wrong_shape_says_the_shape_wanted(n):
    x = points(n, torch.float32)
    y = stacked(x)
    r = vjp_magic.differentiate(y, x)
    y.backward(torch.ones_like(y))
    check = grade(x.grad.sum(), r, answer_name="ans")
    assert check.kind == "wrong-shape" and f"have shape (2, {n})" in check.hint
    assert check.expected_shape == (2, n) and check.answer_shape == ()


def test_no_backward_means_no_answer():
    x = points(3, torch.float32)
    r = vjp_magic.differentiate(x**2, x)
    check = grade(x.grad, r, answer_name="x.grad")
    assert check.kind == "missing" and "backward" in check.hint
    assert grade("two", r).kind == "missing"


def test_every_kind_has_words():
    assert set(KINDS) >= {"correct", "wrong-shape", "summed", "one-component", "accumulated",
                          "transposed", "reshaped", "wrong-at-points", "wrong"}


def test_a_verdicts_kind_is_a_verdict_kind_equal_to_its_name():
    x = points(3, torch.float64)
    r = vjp_magic.differentiate(stacked(x), x)
    verdict = grade(stacked_derivatives(x).sum(0), r)
    assert verdict.kind is VerdictKind.SUMMED and verdict.kind == "summed"
    assert f"{verdict.kind}" == str(verdict.kind) == "summed" and repr(verdict.kind) == "'summed'"
    assert KINDS["summed"] == verdict.kind.words == "the components summed"
    assert Verdict(True, "correct", "").kind is VerdictKind.CORRECT


# -- the verdict as document sections -----------------------------------------------------------

def test_sections_hide_the_answer_unless_revealed():
    x = points(3, torch.float64)
    y = stacked(x)
    r = vjp_magic.differentiate(y, x)
    y.backward(torch.ones_like(y))
    check = grade(x.grad, r, answer_name="x.grad")
    hidden = plain.render(Document(verdict_sections(check, r, reveal=False)))
    assert "✗" in hidden and check.hint.split(":")[0] in hidden.replace("\n", " ")
    assert "-12" not in hidden and "Formula" not in repr(verdict_sections(check, r, False))
    shown = verdict_sections(check, r, reveal=True)
    assert any(isinstance(b, Formula) for s in shown for b in s.blocks)
    assert "-12" in plain.render(Document(shown))  # f_0'(-2) = -3·4
    right = plain.render(Document(verdict_sections(grade(stacked_derivatives(x), r), r, False)))
    assert right.strip().startswith("✓ correct")


# -- the notes on the cell's own backward, through the magic -------------------------------------

def _text(r) -> str:
    return re.sub(r"\s+", " ", r._repr_mimebundle_()["text/plain"])


def test_ones_on_two_components_gets_the_summed_note(run_vjp):
    r = run_vjp("x = torch.linspace(-2, 2, 3, requires_grad=True)\n"
                "y = torch.stack([-x**3, 5*x])\n"
                "y.backward(torch.ones_like(y))")
    text = _text(r)
    assert "x.grad = f₁′ + f₂′, the components summed" in text
    assert "$f_{1}' + f_{2}'$" in r._repr_mimebundle_()["text/markdown"]


def test_sum_backward_on_softmax_gets_the_column_sums_note(run_vjp):
    r = run_vjp("x = torch.tensor([1., 2., 3.], requires_grad=True)\n"
                "y = torch.softmax(x, 0)\n"
                "y.sum().backward()")
    assert "the column sums of J, here 0" in _text(r)


def test_column_sums_that_are_not_zero_are_not_called_zero(run_vjp):
    r = run_vjp("x = torch.tensor([1., 2., 3.], requires_grad=True)\n"
                "y = torch.tanh(x) @ torch.ones(3, 2)\n"
                "y.backward(gradient=torch.ones_like(y))")
    text = _text(r)
    assert "the column sums of J" in text and "here 0" not in text


@pytest.mark.parametrize("body", [
    "x = torch.linspace(-2, 2, 5, requires_grad=True)\ny = x**2\n"
    "y.backward(torch.ones_like(y))",  # one component per point: ones is right
    "x = torch.randn(4, 3, requires_grad=True)\ny = (x**2).sum(1)\ny.sum().backward()",
    "x = torch.tensor([1., 2.], requires_grad=True)\ny = (x**2).sum()\ny.backward()",
    "x = torch.linspace(-2, 2, 3, requires_grad=True)\ny = torch.stack([-x**3, 5*x])\n"
    "v = torch.zeros_like(y); v[0] = 1\ny.backward(gradient=v)",  # one-hot
])
def test_right_uses_get_no_note(run_vjp, body):
    text = _text(run_vjp(body))
    assert "Note:" not in text and "upstream" not in text


def test_general_gradient_says_what_it_computes(run_vjp):
    r = run_vjp("x = torch.randn(4, 3, requires_grad=True)\n"
                "W = torch.randn(3, 2, requires_grad=True)\n"
                "b = torch.zeros(2, requires_grad=True)\n"
                "y = x @ W + b\n"
                "g = torch.randn(4, 2)\n"
                "y.backward(gradient=g)")
    text = _text(r)
    assert "y.backward(gradient=g) computes vᵀJ with v = g" in text
    assert "vᵀJ = ∇(ℓ∘f)(x, W, b)" in text and "upstream gradient" in text
    assert "fills x.grad, W.grad and b.grad" in text
    assert "Axis 0 of y indexes the 4 samples" in text
    assert "x.grad holds each sample's own; W.grad and b.grad add up" in text
    markdown = r._repr_mimebundle_()["text/markdown"]
    assert r"$v^\top J = \nabla(\ell\circ f)(x, W, b)$" in markdown


def test_notes_are_safe_maths_and_can_be_left_out(run_vjp):
    x = torch.randn(4, 3, requires_grad=True)
    W = torch.randn(3, 2, requires_grad=True)
    y = torch.stack([x @ W, -(x @ W)])
    r = analyse(y, {"x": x, "W": W}, keep_graph=True)  # the output itself, graph and all
    with keep_graphs() as log:
        y.backward(torch.ones_like(y), retain_graph=True)
        y.backward(torch.randn_like(y))
    sections = mistake_sections(log, r)
    assert len(sections) == 2  # v = ones summed the components; a general v
    words = plain.render(Document(sections))
    assert "x.grad = ∂y₁,₁/∂x + ∂y₁,₂/∂x + … + ∂y₂,₂/∂x" in words.replace("\n", " ")
    from vjp_magic.render import markdown
    maths = re.findall(r"\$([^$]+)\$", markdown.render(Document(sections)))
    assert maths and all(not tex_problems(m) for m in maths), maths
    assert mistake_sections(log, r, notes=False) == ()


def test_general_gradient_of_parameters_only_names_no_samples(run_vjp):
    r = run_vjp("x = torch.randn(5, 3)\n"
                "W = torch.randn(3, 2, requires_grad=True)\n"
                "y = torch.tanh(x @ W)\n"
                "y.backward(torch.rand_like(y) - 0.5)")
    text = _text(r)
    assert "with v = torch.rand_like(y) - 0.5" in text and "fills W.grad at once" in text
    assert "samples" not in text


# -- %%vjp --check: the verdict through the magic --------------------------------------------------

class TestMagicCheck:
    def test_check_a_right_answer(self, run_vjp):
        r = run_vjp("x = torch.linspace(-2, 2, 5, requires_grad=True)\ny = x**2\n"
                    "y.backward(torch.ones_like(y))\nans = x.grad", "--check ans")
        assert (r.check.correct, r.check.kind) == (True, "correct")
        assert "✓ correct" in r._repr_mimebundle_()["text/plain"]

    def test_check_x_grad_summed_hides_the_answer(self, run_vjp):
        r = run_vjp("x = torch.linspace(-2, 2, 3, requires_grad=True)\n"
                    "y = torch.stack([-x**3, 5*x])\n"
                    "y.backward(torch.ones_like(y))", "--check x.grad")
        assert (r.check.correct, r.check.kind) == (False, "summed")
        text = r._repr_mimebundle_()["text/plain"]
        assert r.check.hint.split(":")[0] in re.sub(r"\s+", " ", text)
        assert "-12" not in text  # f_0'(-2), the expected answer, is not shown

    def test_reveal_shows_the_answer(self, run_vjp):
        r = run_vjp("x = torch.linspace(-2, 2, 3, requires_grad=True)\n"
                    "y = torch.stack([-x**3, 5*x])\n"
                    "y.backward(torch.ones_like(y))", "--check x.grad --reveal")
        assert r.check.kind == "summed" and "-12" in r._repr_mimebundle_()["text/plain"]

    def test_answer_is_not_taken_for_the_output(self, run_vjp):
        r = run_vjp("x = torch.linspace(-2, 2, 3, requires_grad=True)\ny = torch.sin(x)\n"
                    "ans = torch.autograd.grad(y, x, torch.ones_like(y), create_graph=True)[0]",
                    "--check ans")
        assert r.output_name == "y" and r.check.correct

    def test_accumulated_over_two_calls_names_the_lines(self, run_vjp):
        r = run_vjp("x = torch.linspace(-2, 2, 3, requires_grad=True)\ny = torch.sin(x)\n"
                    "y.backward(torch.ones_like(y), retain_graph=True)\n"
                    "y.backward(torch.ones_like(y))", "--check x.grad")
        assert r.check.kind == "accumulated" and r.check.lines == (3, 4)

    def test_check_from_python(self):
        x = torch.tensor([1.0, 2.0], requires_grad=True)
        y = x**3
        check = vjp_magic.check(3 * x.detach()**2, y, x)
        assert (check.correct, check.kind) == (True, "correct")
        assert vjp_magic.check(3 * x.detach()**2 * 2, y, x).kind == "accumulated"

    def test_check_after_the_answers_own_backward_says_the_graph_was_freed(self):
        """A typed error (GraphFreed, a VJPUsageError) that says what to do, raised from
        PyTorch's own error and never read off a message."""
        from vjp_magic.core.errors import GraphFreed

        x = torch.tensor([1.0, 2.0], requires_grad=True)
        y = x**3
        y.backward(torch.ones_like(y))  # frees the graph
        with pytest.raises(GraphFreed, match="retain_graph=True, or call vjp_magic.check"):
            vjp_magic.check(x.grad, y, x)
        with pytest.raises(vjp_magic.VJPUsageError):
            vjp_magic.check(x.grad, y, x)


# -- autograd's own rounding (more in test_grading_precision.py) ------------------------------
@pytest.mark.parametrize("line", ["", "--wrt x"])
def test_a_far_off_answer_is_never_read_as_a_huge_multiple(run_vjp, line):
    """1 + cos x at x = 1e-3 is about 4·10⁶ times 1 - cos x (5e-7): with a tolerance as
    large as autograd's rounding such a factor cannot be told from its neighbours, so the
    verdict is "wrong", never ".grad accumulated 4,000,000 times"."""
    r = run_vjp("x = torch.tensor([1e-3], requires_grad=True)\ny = x - torch.sin(x)\n"
                "ans = 1 + torch.cos(x.detach())", f"--check ans {line}")
    assert (r.check.correct, r.check.kind, r.check.factor) == (False, "wrong", None)


@pytest.mark.parametrize("n", SIZES)
def test_ordinary_mistakes_are_recognised_as_before(n):
    """Where nothing cancels, the refined comparison changes no verdict: twice the answer is
    accumulated, the right answer (the mathematics, 3x²) correct."""
    x = torch.linspace(0.5, 2, n, requires_grad=True)
    y = x**3
    r = vjp_magic.differentiate(y, x)
    true = 3 * x.detach().double() ** 2
    assert grade(true.float(), r, output=y).correct
    check = grade((2 * true).float(), r, output=y)
    assert (check.kind, check.factor) == ("accumulated", 2)
