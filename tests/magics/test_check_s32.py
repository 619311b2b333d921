"""--check answers of any layout or dtype get a verdict or a short message, and exam mode's
hints never spell the code that answers the exercise (s32, G7's classes)."""
from __future__ import annotations

import pytest
import torch
from IPython.core.error import UsageError

import vjp_magic

X = "x = torch.tensor([0.3, 1.7, 2.9], requires_grad=True)\n"


def _stacked():
    x = torch.tensor([0.3, 1.7, 2.9], requires_grad=True)
    return x, torch.stack([x**2, x**3]), torch.stack([2 * x, 3 * x**2]).detach()


@pytest.mark.parametrize("layout", ["coo", "csr", "csc", "bsr"])
@pytest.mark.parametrize("right", [True, False])
def test_a_sparse_answer_is_graded_by_its_values(layout, right):
    x, y, d = _stacked()
    d = d if right else d * 2
    answer = {"coo": d.to_sparse(), "csr": d.to_sparse_csr(), "csc": d.to_sparse_csc(),
              "bsr": d.to_sparse_bsr((1, 1))}[layout]
    verdict = vjp_magic.check(answer, y, x)
    assert verdict.correct is right, verdict.hint


def test_a_sparse_jacobian_from_the_result_is_a_right_answer():
    x, y, _ = _stacked()
    r = vjp_magic.differentiate(y, x)
    verdict = vjp_magic.check(r.jacobian("x", layout=torch.sparse_csr), y, x)
    assert verdict.correct, verdict.hint


def test_a_sparse_answer_in_a_cell_gets_a_verdict(ip):
    result = ip.run_cell(f"%%vjp --check ans\n{X}y = torch.stack([x**2, x**3])\n"
                         "ans = torch.stack([2*x, 3*x**2]).detach().to_sparse_csr()")
    assert result.success, result.error_in_exec
    assert result.result.check.correct


@pytest.mark.parametrize("make, dtype", [
    (lambda d: d > 0, "bool"), (lambda d: d.to(torch.complex64), "complex64"),
    (lambda d: d.to(torch.complex128), "complex128")])
def test_an_answer_of_a_wrong_dtype_is_named_by_it(make, dtype):
    x, y, d = _stacked()
    verdict = vjp_magic.check(make(d), y, x)
    assert not verdict.correct
    assert dtype in verdict.hint and "a Tensor, not" not in verdict.hint, verdict.hint


@pytest.fixture
def exam(ip):
    ip.run_line_magic("config", "VJPMagics.exam = True")
    yield
    ip.run_line_magic("config", "VJPMagics.exam = False")


@pytest.mark.parametrize("body, answer", [
    ("y = x**2", "ans = 3*x"),  # wrong: the hint would say how
    ("y = x**2", "ans = torch.zeros(3)"),
    ("y = torch.stack([x**2, x**3])", "ans = torch.stack([2*x, 3*x**2]).sum(0)"),  # summed
    ("y = torch.stack([x**2, x**3])", "ans = torch.stack([3*x, 3*x**2])"),
    ("y = torch.stack([x**2, x**3])", "ans = 2*x"),  # wrong shape
])
def test_exam_hints_never_spell_backward_code(run_vjp, exam, body, answer):
    r = run_vjp(f"{X}{body}\n{answer}", "--check ans")
    assert not r.check.correct
    bundle = r._repr_mimebundle_()
    for mime in ("text/plain", "text/markdown", "text/latex"):
        shown = bundle[mime]
        assert ".backward(" not in shown and "ones_like" not in shown, (mime, shown)


def test_x_grad_zeroed_is_told_about_x_grad_itself(run_vjp):
    r = run_vjp(f"{X}y = x**2\ny.sum().backward()\nx.grad.zero_()", "--check x.grad")
    assert not r.check.correct
    assert "If it holds x.grad" not in r.check.hint
    assert "zeroed" in r.check.hint and "x.grad.clone()" in r.check.hint


def test_an_answer_variable_of_zeros_keeps_its_hint(run_vjp):
    r = run_vjp(f"{X}y = x**2\ny.sum().backward()\nans = x.grad\nx.grad.zero_()",
                "--check ans")
    assert "If it holds x.grad" in r.check.hint


def test_a_huge_sparse_answer_is_a_short_message(monkeypatch):
    import vjp_magic.teach.grading_targets as targets

    monkeypatch.setattr(targets, "DENSE_ANSWER_ENTRIES", 4)
    x, y, d = _stacked()
    with pytest.raises((vjp_magic.VJPUsageError, UsageError)) as caught:
        vjp_magic.check(d.to_sparse(), y, x)
    assert "sparse" in str(caught.value)


# -- with several inputs, an answer right for one of them is right --------------------------------
WX = ("w = torch.tensor([0.5, -1., 4.], requires_grad=True)\n"
      "x = torch.tensor([1., 2., 3.], requires_grad=True)\ny = x*w\n")


@pytest.mark.parametrize("answer, right", [
    ("ans = w.detach()", "x"),  # dy/dx = w: right for x
    ("ans = x.detach()", "w"),  # dy/dw = x: right for w
])
def test_an_answer_right_for_another_input_is_right(run_vjp, answer, right):
    r = run_vjp(WX + answer, "--check ans")
    assert r.check.correct and r.check.name == right, r.check.hint


def test_an_answer_wrong_for_both_inputs_is_graded_against_the_first(run_vjp):
    r = run_vjp(WX + "ans = 2 * w.detach()", "--check ans")
    assert not r.check.correct and r.check.name == "w"


def test_x_grad_is_still_graded_against_x(run_vjp):
    r = run_vjp(WX + "y.sum().backward()\nx.grad.mul_(3)", "--check x.grad")
    assert not r.check.correct and r.check.name == "x"


# -- from Python the answer has no name: hints read as code and sentences -------------------------
def test_python_hints_spell_code_with_a_name_and_sentences_capitalised():
    x = torch.tensor([0.3, 1.7, 2.9], requires_grad=True)
    d = torch.stack([2 * x, 3 * x**2]).detach()
    f = lambda t: torch.stack([t**2, t**3])  # noqa: E731
    for answer in (d.T, d.reshape(3, 2), d[0].expand(2, 3).clone() * 0 + d[1]):
        hint = vjp_magic.check(answer, f, x).hint
        assert "the answer." not in hint and "`the answer" not in hint, hint
        assert ". the answer" not in hint, hint
    other = vjp_magic.check(2 * x.detach(), lambda t: t**2, x, y=x**3)
    assert ". the answer" not in other.hint, other.hint


@pytest.mark.parametrize("line", ["--check ans.T", "--check ans.detach()", "--check ans[:]"])
def test_an_expression_of_the_answer_is_never_the_output(ip, line):
    from vjp_magic.run.choose import FromCell
    from vjp_magic.run.execute import run_cell

    run = run_cell(ip, "x = torch.tensor([0.3, 1.7, 2.9], requires_grad=True)\n"
                   "y = torch.stack([x**2, x**3])\nans = torch.stack([2*x, 3*x**2]).T")
    name, _ = FromCell(run, ip, exclude=(line.split()[1],)).output(None)
    assert name == "y"


# -- .grad that backward never filled: a non-leaf, or a gradient without create_graph -------------
H = "x = torch.tensor([1., 2., 3.], requires_grad=True)\nh = x * 2\ny = h**2\n" \
    "y.backward(torch.ones_like(y))"


@pytest.mark.parametrize("line, last", [("--check h.grad", ""),
                                        ("--check ans --wrt h", "\nans = h.grad"),
                                        ("--check h.grad --wrt h", "")])
def test_a_non_leafs_grad_is_explained_by_retain_grad(run_vjp, line, last):
    r = run_vjp(H + last, line)
    hint = " ".join(r.check.hint.split())
    assert r.check.kind == "missing" and "h.retain_grad()" in hint, hint
    assert "set to None afterwards" not in hint


def test_a_leafs_grad_set_to_none_keeps_its_hint(run_vjp):
    r = run_vjp(H + "\nx.grad = None", "--check x.grad")
    assert "set to None afterwards" in " ".join(r.check.hint.split())


def test_of_x_grad_without_create_graph_names_create_graph(usage_error):
    message = usage_error("%%vjp --of x.grad\nx = torch.tensor([1., 2., 3.], requires_grad=True)"
                          "\ny = x**3\ny.sum().backward()")
    assert "create_graph=True" in message and "no_grad" not in message, message


@pytest.mark.parametrize("magic", ["%jacobian y x", "%hessian y.sum() x"])
def test_exam_mode_on_a_line_magic_points_to_a_vjp_cell(run_ok, exam, magic):
    run_ok("x = torch.tensor([1., 2., 3.], requires_grad=True)\ny = x**2")
    text = " ".join(run_ok(magic)._repr_mimebundle_()["text/plain"].split())
    assert "%%vjp --check NAME" in text, text


def test_exam_mode_on_hessian_says_second_derivatives_are_not_graded(run_ok, exam):
    """G8: %hessian in exam mode sent students to %%vjp --check, which grades a Hessian
    against the first derivatives ('wrong shape ... like x')."""
    run_ok("x = torch.tensor([1., 2., 3.], requires_grad=True)\ny = (x**3).sum()")
    text = " ".join(run_ok("%hessian y x")._repr_mimebundle_()["text/plain"].split())
    assert "not graded" in text and "first derivatives only" in text, text
