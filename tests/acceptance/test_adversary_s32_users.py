"""Adversarial review, session 32 (G7): vjp_magic as a student, a teacher and a practitioner use
it in an IPython shell — the tutorial's cells with the code beneath them pasted into the next
cell (and r.code), a student's mistakes and the advice they get (which must be valid Python
that, followed, works), --check answers of other names, layouts and dtypes, exam and
presentation modes on a 1024 × 768 projector, names the maths cannot spell, numbers at a wide
dynamic range, --symbolic, --explain and %hessian wording, the prose that links the maths to
the code.

Expected numbers come from the tutorial (``cells.py``) or from plain PyTorch; advice is
checked by doing what it says. Tests marked ``xfail(strict=True)`` are findings of this
review; unmarked ones guard what held.
"""
from __future__ import annotations

import math
import re

import pytest
import torch
from IPython.core.error import UsageError
from jupyter_harness import node_missing, python_fences, render_vscode

import cells
import vjp_magic
from vjp_magic.render.budget import height
from vjp_magic.render.options import DISPLAY_HEIGHT
from vjp_magic.render.typeset import CODE_CHARACTER_PX, PROSE_WIDTH_PX


def bundle(result) -> dict:
    shown = result._repr_mimebundle_()
    return shown[0] if isinstance(shown, tuple) else shown


def plain(result) -> str:
    """text/plain with its line wrapping undone (a phrase may break across lines)."""
    return " ".join(bundle(result)["text/plain"].split())


def shown_code(result) -> list[str]:
    """The fenced python blocks of the display: what a reader copies into the next cell."""
    return python_fences(bundle(result)["text/markdown"])


# -- the code beneath a cell, pasted into the next cell -------------------------------------------
def test_the_loop_pasted_after_the_tutorials_matrix_cell_gives_its_numbers(
        ip, run_vjp, run_ok, assert_tensor):
    # the tutorial's own loop (retain_graph=True) leaves x.grad = 5: found here, fixed in c487503
    cell = cells.MATRIX_VALUED_UNIVARIATE
    r = run_vjp(cell.source)
    (code,) = shown_code(r)
    run_ok(code)
    assert_tensor(ip.user_ns["d_x"], cell.derivatives)


@pytest.mark.parametrize("cell", cells.TUTORIAL, ids=cells.ids(cells.TUTORIAL))
def test_the_code_pasted_after_each_tutorial_cell_gives_its_numbers(ip, run_vjp, cell):
    """Each tutorial cell calls backward itself (freeing the graph, filling x.grad): the code
    beneath it, pasted into the next cell, still gives the tutorial's numbers, or says why not
    in a comment (b69165e)."""
    r = run_vjp(cell.source)
    for code in shown_code(r):
        if "retain_graph=True and run the cell again" in " ".join(code.split()):
            continue  # said in the code itself
        result = ip.run_cell(code)
        assert result.success, (code, result.error_in_exec)
        got = ip.user_ns["d_x"] if "d_x" in code else ip.user_ns["x"].grad
        expected = torch.as_tensor(cell.derivatives, dtype=got.dtype)
        torch.testing.assert_close(got.reshape(expected.shape), expected)


@pytest.mark.parametrize("body, expected", [
    ("w = torch.ones(3)\ny = x*w\ny.backward(torch.ones_like(y))\nw += 1", [1.0, 1.0, 1.0]),
    ("k = 2.0\ny = x**k\ny.backward(torch.ones_like(y))\nk = 3.0", [2.0, 4.0, 6.0]),
], ids=["in-place", "rebound"])
def test_the_recomputed_line_reads_the_values_the_output_was_made_from(ip, run_vjp,
                                                                      assert_tensor, body,
                                                                      expected):
    r = run_vjp(f"x = torch.tensor([1., 2., 3.], requires_grad=True)\n{body}")
    assert_tensor(r.derivatives["x"], expected)
    (code,) = shown_code(r)
    if "retain_graph=True and run the cell again" in " ".join(code.split()):
        return  # the code says it cannot build the graph again
    namespace = dict(ip.user_ns)
    exec(r.code, namespace)  # r.code builds y again the same way ("r.code alike")
    assert_tensor(namespace["d_x"], expected)
    ip.run_cell(code)
    assert_tensor(ip.user_ns["x"].grad, expected)


def test_the_code_runs_or_says_why_after_a_saved_constant_changed_in_place(ip, run_vjp,
                                                                           assert_tensor):
    r = run_vjp("x = torch.tensor([1., 2., 3.], requires_grad=True)\nw = torch.ones(3)\n"
                "y = x*w\nw += 1")
    assert_tensor(r.derivatives["x"], [1.0, 1.0, 1.0])
    if "in place" in plain(r) or "in-place" in plain(r):
        return  # the display says the shown code cannot run as is
    (code,) = shown_code(r)
    result = ip.run_cell(code)
    assert result.success, result.error_in_exec
    assert_tensor(ip.user_ns["x"].grad, [1.0, 1.0, 1.0])


@pytest.mark.parametrize("line, body", [
    ("--wrt h", "x = torch.tensor([1., 2., 3.], requires_grad=True)\nh = x*2\ny = h**2\n"
                "y.backward(torch.ones_like(y))"),
    ("", "x = torch.linspace(-1, 1, 300, dtype=torch.float64, requires_grad=True)\n"
         "y = x.roll(1) - 2*x + x.roll(-1)\ny.backward(torch.ones_like(y))"),
], ids=["non-leaf", "coloured"])
def test_the_code_pasted_after_the_cells_own_backward_runs_or_says_why(ip, run_vjp, line, body):
    r = run_vjp(body, line)
    for code in shown_code(r):
        if "run the cell again" in " ".join(code.split()):
            continue  # the code says it cannot build the graph again
        result = ip.run_cell(code)
        assert result.success, result.error_in_exec


def test_the_line_pasted_after_a_cell_with_its_own_backward_gives_its_numbers(
        ip, run_vjp, run_ok, assert_tensor):
    r = run_vjp("x = torch.linspace(-1, 1, 5, requires_grad=True)\ny = x.sum()\ny.backward()")
    (code,) = shown_code(r)  # y.backward() / x.grad: a sum saves no tensor, so it runs again
    value = run_ok(code)  # ends in x.grad, as the display says
    assert_tensor(value, [1.0] * 5)


def test_the_loop_pasted_after_the_short_cell_gives_the_tutorials_numbers(
        ip, run_vjp, run_ok, assert_tensor):
    cell = cells.VECTOR_MULTIVARIATE_MULTIPLE_POINTS
    r = run_vjp(cell.short)
    (code,) = shown_code(r)
    run_ok(code)
    assert_tensor(ip.user_ns["d_x"], cell.derivatives)
    assert ip.user_ns["x"].grad is None


def test_the_loop_pasted_for_an_input_named_v_gives_its_derivatives(ip, run_vjp, assert_tensor):
    r = run_vjp("v = torch.linspace(-1, 1, 4, requires_grad=True)\n"
                "out = torch.stack([v**2, v*3])")
    v = ip.user_ns["v"]
    (code,) = shown_code(r)
    result = ip.run_cell(code)
    assert result.success, result.error_in_exec
    assert ip.user_ns["v"] is v  # the cell's input is still there
    assert_tensor(ip.user_ns["d_v"], [[2 * t for t in v.tolist()], [3.0] * 4])


@pytest.mark.parametrize("body, line, taken", [
    ("x = torch.tensor([1., 2., 3.], requires_grad=True)\ny = 5\nx**2", "", "y"),
    ("x = torch.tensor([1., 2., 3.], requires_grad=True)\nout = torch.ones(3)\ny = x**2",
     "--of y.sum()", "out"),
], ids=["y", "out"])
def test_an_expression_output_is_not_named_after_another_cell_value(ip, run_vjp, body, line,
                                                                    taken):
    r = run_vjp(body, line)
    before = ip.user_ns[taken]
    assert f"to {taken} = " not in bundle(r)["text/plain"]
    for code in shown_code(r):
        ip.run_cell(code)
    assert ip.user_ns[taken] is before


# -- advice that is code: it must be valid Python and do what it says -----------------------------
@pytest.mark.parametrize("line", ["x = torch.ones(3, requires_grad=False)",
                                  "x = torch.linspace(-1, 1, 5, requires_grad=False)"])
def test_the_requires_grad_advice_is_valid_python(usage_error, line):
    message = usage_error(f"%%vjp\n{line}\ny = x**2")
    advised = message.split("requires_grad=True: ", 1)[1].split(". (If", 1)[0]
    compile(advised, "<advice>", "exec")  # a repeated keyword is a SyntaxError
    assert "requires_grad=True" in advised


def test_the_requires_grad_advice_names_the_line_that_turned_it_off(usage_error):
    message = usage_error("%%vjp\nx = torch.tensor([1., 2., 3.]).requires_grad_()\n"
                          "x.requires_grad = False\ny = x**2")
    assert ".requires_grad_().requires_grad_()" not in message
    assert "requires_grad = False" in message or "line 2" in message


def test_a_tuple_output_from_python_gets_python_advice():
    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    with pytest.raises(vjp_magic.VJPUsageError) as caught:
        vjp_magic.differentiate((x**2, x * 3), x)
    assert "--of" not in str(caught.value)


def test_the_tuple_advice_when_followed_leads_to_a_result(ip, usage_error):
    body = "x = torch.tensor([1., 2., 3.], requires_grad=True)\ny = x**2\nz = x*3"
    message = usage_error(f"%%vjp --of y,z\n{body}")
    advised = message.split("(--of ", 1)[1].split(")", 1)[0]
    result = ip.run_cell(f"%%vjp --of {advised}\n{body}")
    assert result.success, result.error_in_exec


def test_a_tuple_expression_in_jacobian_gets_jacobians_syntax(run_ok, usage_error):
    run_ok("x = torch.tensor([1., 2., 3.], requires_grad=True)\ny = x**2")
    message = usage_error("%jacobian y, x")
    assert "--of" not in message
    assert "%jacobian" in message or "wrt" in message


def test_an_input_converted_after_requires_grad_is_named(usage_error):
    message = usage_error("%%vjp\nx = torch.tensor([1., 2., 3.], requires_grad=True).double()"
                          "\ny = x**2")
    assert "none of them is bound to a name" not in message
    assert "--wrt x" in message or "leaf" in message


@pytest.mark.parametrize("body", [
    "x = torch.tensor([1., 2., 3.], requires_grad=True)\ny = torch.sin(x)\ndel x",
    "y = torch.sin(torch.tensor([1., 2., 3.], requires_grad=True))",
], ids=["deleted", "unnamed"])
def test_the_output_is_never_advised_as_its_own_input(usage_error, body):
    message = usage_error(f"%%vjp\n{body}")
    assert "--wrt y" not in message and "y is not a leaf" not in message


# was a strict xfail: y.backward(1) / y.backward([1., 1., 1.]) showed torch's TypeError
@pytest.mark.parametrize("call", ["y.backward(gradient=1)", "y.backward([1., 1., 1.])"])
def test_a_number_or_list_as_gradient_is_coached(ip, call):
    result = ip.run_cell(f"%%vjp\nx = torch.tensor([1., 2., 3.], requires_grad=True)\n"
                         f"y = x**2\n{call}")
    assert result.result is not None, result.error_in_exec  # the derivatives are shown
    assert "torch.ones_like(y)" in plain(result.result)




@pytest.mark.parametrize("late", ["x.requires_grad_()", "x.requires_grad = True"])
def test_requires_grad_set_after_the_output_is_named_as_the_cause(usage_error, late):
    message = usage_error(f"%%vjp\nx = torch.tensor([1., 2., 3.])\ny = x**2\n{late}")
    assert "no_grad" not in message and ".detach()" not in message
    assert "line 3" in message or "before" in message


@pytest.mark.parametrize("rhs", ["torch.tensor(x**2)", "torch.tensor([xi**2 for xi in x])"])
def test_an_output_copied_by_torch_tensor_names_the_copy(usage_error, rhs):
    message = usage_error(f"%%vjp\nx = torch.tensor([1., 2., 3.], requires_grad=True)\n"
                          f"y = {rhs}")
    assert "torch.tensor" in message and "no_grad" not in message


@pytest.mark.parametrize("lines", ["g, = torch.autograd.grad(y.sum(), x)\ng.sum().backward()",
                                   "y.sum().backward()\nx.grad.sum().backward()"],
                         ids=["autograd.grad", "x.grad"])
def test_a_second_derivative_without_create_graph_names_create_graph(ip, lines):
    result = ip.run_cell(f"%%vjp\nx = torch.tensor([1., 2., 3.], requires_grad=True)\n"
                         f"y = x**3\n{lines}")
    error = result.error_in_exec
    text = str(error) if error is not None else plain(result.result)
    assert "create_graph" in text or "%hessian" in text, text


def test_of_a_grad_without_create_graph_names_create_graph(usage_error):
    message = usage_error("%%vjp --of x.grad\nx = torch.tensor([1., 2., 3.], requires_grad=True)"
                          "\ny = x**3\ny.sum().backward()")
    assert "create_graph" in message and "no_grad" not in message, message

XW = "x = torch.tensor([1., 2., 3.], requires_grad=True)\nw = torch.tensor([0.5, 1., 2.])"


def test_the_advice_for_a_detached_input_expression_names_x(run_ok, usage_error):
    run_ok(XW)
    message = usage_error("%jacobian x*w wrt x.detach()")
    assert "x.detach().requires_grad_()" not in message
    assert "wrt x" in message


@pytest.mark.parametrize("expression", ["x.detach().requires_grad_()",
                                        "x.data.requires_grad_()"])
def test_a_fresh_leaf_as_input_expression_is_refused_as_a_false_0(run_ok, usage_error,
                                                                 expression):
    run_ok(XW)
    message = usage_error(f"%jacobian x*w wrt {expression}")
    assert "false 0" in message or "new tensor" in message

# -- the cell's own names --------------------------------------------------------------------------
@pytest.mark.parametrize("body", [
    "x_ = torch.linspace(-1, 1, 4, requires_grad=True)\ny = x_**2",
    "_x = torch.linspace(-1, 1, 4, requires_grad=True)\ny = _x**2",
    "x = torch.randn(3, 2, requires_grad=True)\ny_ = x.sum(1)",
    "Δt = torch.linspace(-1, 1, 4, requires_grad=True)\ny = Δt**2",
    "x = torch.randn(3, 2, requires_grad=True)\nŷ = x.sum(1)",
], ids=["x_", "_x", "y_", "Δt", "ŷ"])
def test_an_underscored_name_is_shown(run_vjp, body):
    r = run_vjp(body)
    shown = bundle(r)  # IPython would print our traceback here, and no derivatives
    name = body.split(" = ")[0] if "sum(1)" not in body else body.split("\n")[1].split(" = ")[0]
    assert name in shown["text/plain"] and name in shown["text/markdown"]


def test_jacobian_of_an_underscored_input_is_shown(run_ok):
    run_ok("x_ = torch.linspace(-1, 1, 4, requires_grad=True)")
    r = run_ok("%jacobian x_**2 wrt x_")
    assert "x_" in bundle(r)["text/plain"]


# -- --check: answers of other layouts and dtypes -------------------------------------------------
def _stacked():
    x = torch.tensor([0.3, 1.7, 2.9], requires_grad=True)
    y = torch.stack([x**2, x**3])
    return x, y, torch.stack([2 * x, 3 * x**2]).detach()


@pytest.mark.parametrize("layout", ["coo", "csr"])
def test_a_sparse_answer_gets_a_verdict_or_a_short_message(layout):
    x, y, d = _stacked()
    answer = d.to_sparse() if layout == "coo" else d.to_sparse_csr()
    try:
        verdict = vjp_magic.check(answer, y, x)
    except vjp_magic.VJPUsageError as error:
        assert "dense" in str(error) or "sparse" in str(error)
    else:
        assert verdict.correct  # the right numbers, stored sparse


def test_a_sparse_answer_in_a_cell_gets_no_traceback(ip):
    result = ip.run_cell("%%vjp --check ans\nx = torch.tensor([0.3, 1.7, 2.9], "
                         "requires_grad=True)\ny = torch.stack([x**2, x**3])\n"
                         "ans = torch.stack([2*x, 3*x**2]).detach().to_sparse()")
    assert result.error_in_exec is None or isinstance(result.error_in_exec, UsageError)


@pytest.mark.parametrize("dtype", [torch.bool, torch.complex64], ids=str)
def test_an_answer_of_the_wrong_dtype_is_named_by_its_dtype(dtype):
    x, y, d = _stacked()
    answer = d > 0 if dtype is torch.bool else d.to(dtype)
    verdict = vjp_magic.check(answer, y, x)
    assert not verdict.correct
    assert "a Tensor, not a tensor" not in verdict.hint
    assert str(dtype).removeprefix("torch.") in verdict.hint


def test_an_answer_for_the_other_input_is_recognised(run_vjp):
    r = run_vjp("w = torch.tensor([0.5, -1., 4.], requires_grad=True)\n"
                "x = torch.tensor([1., 2., 3.], requires_grad=True)\ny = x*w\n"
                "ans = w.detach()", "--check ans")  # dy/dx = w
    hint = " ".join(r.check.hint.split())
    assert r.check.correct or "--wrt x" in hint or "with respect to x" in hint, hint


def test_python_hints_without_a_name_read_as_code_and_sentences():
    x = torch.tensor([0.3, 1.7, 2.9], requires_grad=True)
    d = torch.stack([2 * x, 3 * x**2]).detach()
    transposed = vjp_magic.check(d.T, lambda t: torch.stack([t**2, t**3]), x)
    assert transposed.kind == "transposed"
    assert "the answer.T" not in transposed.hint
    other = vjp_magic.check(2 * x.detach(), lambda t: t**2, x, y=x**3)
    assert ". the answer" not in other.hint, other.hint


# was a strict xfail: --check ans.T made ans (a tensor with history) the output
@pytest.mark.parametrize("answer, line", [("torch.stack([2*x, 3*x**2]).T", "--check ans.T"),
                                          ("torch.stack([2*x, 3*x**2])", "--check ans.detach()")],
                         ids=["T", "detach"])
def test_checking_an_expression_of_the_answer_grades_the_cells_output(run_vjp, answer, line):
    r = run_vjp("x = torch.tensor([0.3, 1.7, 2.9], requires_grad=True)\n"
                f"y = torch.stack([x**2, x**3])\nans = {answer}", line)
    assert r.output_name == "y"
    assert r.check.correct, r.check.hint


@pytest.mark.parametrize("line, last", [("--check h.grad", ""),
                                        ("--check ans --wrt h", "\nans = h.grad")],
                         ids=["h.grad", "ans"])
def test_the_grad_of_a_non_leaf_is_explained_by_retain_grad(run_vjp, line, last):
    r = run_vjp("x = torch.tensor([1., 2., 3.], requires_grad=True)\nh = x * 2\ny = h**2\n"
                f"y.backward(torch.ones_like(y)){last}", line)
    hint = " ".join(r.check.hint.split())
    assert r.check.kind == "missing"
    assert "retain_grad" in hint and "set to None afterwards" not in hint, hint


@pytest.fixture
def exam(ip):
    ip.run_line_magic("config", "VJPMagics.exam = True")
    yield
    ip.run_line_magic("config", "VJPMagics.exam = False")


def test_exam_hints_do_not_spell_the_backward_that_answers_the_exercise(run_vjp, exam):
    r = run_vjp("x = torch.tensor([0.3, 1.7, 2.9], requires_grad=True)\ny = x**2\n"
                "ans = 3*x", "--check ans")
    assert not r.check.correct
    shown = bundle(r)
    assert "gradient=torch.ones_like" not in shown["text/plain"]
    assert "gradient=torch.ones_like" not in shown["text/markdown"]


def test_the_zeroed_grad_hint_speaks_of_x_grad_itself(run_vjp):
    r = run_vjp("x = torch.tensor([0.3, 1.7, 2.9], requires_grad=True)\ny = x**2\n"
                "y.sum().backward()\nx.grad.zero_()", "--check x.grad")
    assert not r.check.correct
    assert "If it holds x.grad" not in r.check.hint


@pytest.mark.parametrize("name", ["données", "ŷ"])
def test_an_accented_name_typesets_without_katex_warnings(run_vjp, name):
    if node_missing():
        pytest.skip(node_missing())
    r = run_vjp(f"{name} = torch.linspace(-1, 1, 4, requires_grad=True)\nout = {name}**2")
    shown = bundle(r)
    for rendered in render_vscode([shown["text/markdown"], shown["text/latex"]]):
        assert not rendered["errors"] and not rendered["warnings"], rendered["warnings"][:1]


@pytest.mark.parametrize("magic", ["jacobian", "hessian"])
def test_exam_mode_advice_on_a_line_magic_is_an_option_it_has(run_ok, exam, magic):
    run_ok("x = torch.tensor([1., 2., 3.], requires_grad=True)\ny = x**2")
    text = plain(run_ok(f"%{magic} y x"))
    assert "--check" not in text or "%%vjp" in text, text


# -- the prose that links the maths to the code ---------------------------------------------------
def test_the_counting_sentence_names_a_component_as_the_output_entry(run_vjp):
    r = run_vjp(cells.VECTOR_MULTIVARIATE_MULTIPLE_POINTS.short)
    assert "grad f_1 is y[0]" not in plain(r)
    assert r"$\nabla f_{1}$ is $y[0]$" not in bundle(r)["text/markdown"]


def test_a_tilde_in_the_output_expression_is_typeset_in_vscode(run_vjp):
    if node_missing():
        pytest.skip(node_missing())
    r = run_vjp("x = torch.linspace(-1, 1, 4, requires_grad=True)\ny = x**2",
                "--of ~y.bool() * y")
    (rendered,) = render_vscode([bundle(r)["text/latex"]])
    assert not rendered["errors"]
    assert "$\\sim$" not in rendered["html"]


def test_the_at_column_counts_as_the_display_says(run_vjp):
    r = run_vjp("img = ((torch.arange(32.) - 12.2) / 10).reshape(2, 4, 4).requires_grad_()\n"
                "out = torch.sigmoid(img)")  # sigmoid' is largest at img[0, 3, 0] = -0.02
    text = plain(r)
    assert "[1, 3, :]" in text  # rows as the code indexes them
    assert "(0, 3, 0)" in text or "from 1" in text


def test_explain_does_not_deny_the_zeros_the_display_states(run_vjp):
    r = run_vjp("x = torch.tensor([0.5, -1., 2.], requires_grad=True)\ny = torch.cumsum(x, 0)",
                "--explain")
    text = plain(r)
    assert "lower-triangular" in text
    assert "Nothing is known to be zero" not in text


@pytest.mark.parametrize("dtype, big", [(torch.float32, "1e8"), (torch.float64, "1e20")],
                         ids=["float32", "float64"])
def test_a_points_own_derivative_never_reads_0_beside_a_large_one(run_vjp, dtype, big):
    r = run_vjp(f"x = torch.tensor([{big}, -3.0], dtype={dtype}, requires_grad=True)\n"
                "y = x**2")
    assert r.derivatives["x"][1].item() == -6.0
    line = next(t for t in bundle(r)["text/plain"].splitlines() if t.startswith("f'(x^(i))"))
    entries = line[line.index("[") + 1:line.index("]")].split()
    assert entries[-1] != "0", line


@pytest.mark.parametrize("expression", ["torch.clamp(x, 0, 1)", "torch.where(x > 0, x, -2*x)"])
def test_a_piecewise_linear_output_is_not_called_linear(run_ok, expression):
    run_ok("x = torch.tensor([-1., 0.5, 2.], requires_grad=True)")
    h = run_ok(f"%hessian {expression} wrt x")
    assert not h.derivatives["x"].any()  # every second derivative is 0 here
    text = plain(h)
    assert "is linear in x" not in text or "piecewise" in text or "at this x" in text


def test_the_code_beneath_a_cell_fits_the_output_with_long_names(run_vjp):
    r = run_vjp("input_features_tensor = torch.randn(3, 4, requires_grad=True)\n"
                "attention_weights = torch.softmax(input_features_tensor, 1)")
    (code,) = shown_code(r)
    widest = max(code.splitlines(), key=len)
    assert len(widest) * CODE_CHARACTER_PX <= PROSE_WIDTH_PX, widest


def test_different_functions_per_entry_are_not_called_one_function(run_vjp, assert_tensor):
    r = run_vjp("x = torch.tensor([0.5, -1., 2.], requires_grad=True)\n"
                "y = torch.stack([x[0]**2, torch.sin(x[1]), torch.exp(x[2])])")
    assert_tensor(r.derivatives["x"], [1.0, math.cos(-1.0), math.exp(2.0)])
    assert "one function f" not in plain(r)


def test_explain_does_not_say_rows_that_could_share_a_backward_need_their_own(run_vjp):
    r = run_vjp("x = torch.tensor([0.5, -1., 2., 1.5, 3.], requires_grad=True)\n"
                "y = x[1:] - x[:-1]", "--explain")
    assert "needs its own backward" not in plain(r)


def test_a_small_rows_gradient_never_reads_0_beside_a_large_row(run_vjp):
    r = run_vjp("x = torch.tensor([1., 2., 3.], requires_grad=True)\n"
                "y = torch.stack([(x**2).sum() * 1e6, x.mean()])")
    torch.testing.assert_close(r.derivatives["x"][1], torch.full((3,), 1 / 3))
    row = next(t for t in bundle(r)["text/plain"].splitlines() if "y[1]" in t and "[" in t)
    entries = row[row.rindex("[") + 1:row.rindex("]")].split()
    assert "0" not in entries, row


# was a strict xfail (s32 G7), fixed this session: the test stays as a guard
def test_a_gradient_entry_never_reads_0_beside_a_large_one_it_does_not_sum_with(run_vjp):
    r = run_vjp("features = torch.tensor([3.2e7, 0.25])\n"
                "w = torch.tensor([0.5, -1.0], requires_grad=True)\n"
                "prediction = (w * features).sum()")
    assert r.derivatives["w"][1].item() == 0.25
    line = next(t for t in bundle(r)["text/plain"].splitlines() if t.startswith("∂prediction"))
    entries = line[line.index("[") + 1:line.index("]")].split()
    assert entries[-1] != "0", line


# -- presentation mode on a 1024 x 768 projector ---------------------------------------------------
@pytest.mark.parametrize("body", [
    cells.VECTOR_MULTIVARIATE_MULTIPLE_POINTS.short,  # 718 px before f78a5df
    "x = torch.linspace(-3, 3, 30000).reshape(10000, 3).requires_grad_()\n"
    "y = torch.softmax(x, 1)",  # rows x 3 components: about 1,400 px before f78a5df
], ids=["tutorial", "softmax_rows"])
def test_present_of_the_tutorials_gradients_at_points_fits_one_screen(run_vjp, body):
    r = run_vjp(body, "--present")
    assert height(r.view.document(r).sections) <= DISPLAY_HEIGHT


def test_without_present_the_same_cell_fits_one_screen(run_vjp):
    r = run_vjp(cells.VECTOR_MULTIVARIATE_MULTIPLE_POINTS.short)
    assert height(r.view.document(r).sections) <= DISPLAY_HEIGHT


# -- --symbolic on the first example of linear algebra --------------------------------------------
LINEAR = ("W = torch.tensor([[0.6213, -0.4519, -0.1661], [-1.523, 0.3817, -1.028],"
          " [-0.5631, -0.8923, -0.05825]])\nx = torch.tensor([1., 2., 3.], requires_grad=True)\n"
          "y = W @ x")


# was a strict xfail (s32 G7), fixed this session: the test stays as a guard
def test_symbolic_constants_show_the_digits_the_dtype_holds(run_vjp):
    r = run_vjp(LINEAR, "--symbolic")
    for mime in ("text/markdown", "text/plain"):
        numbers = re.findall(r"\d+\.\d+", bundle(r)[mime])
        assert all(len(n.replace(".", "").lstrip("0")) <= 8 for n in numbers), (mime, numbers)


# was a strict xfail (s32 G7), fixed this session: the test stays as a guard
def test_symbolic_of_a_three_by_three_linear_map_fits_one_screen(run_vjp):
    r = run_vjp(LINEAR, "--symbolic")
    assert height(r.view.document(r).sections) <= DISPLAY_HEIGHT


# was a strict xfail (s32 G7), fixed this session: the test stays as a guard
def test_symbolic_plain_text_fits_a_terminal(run_vjp):
    r = run_vjp("x = torch.tensor([0.1, 0.2, 0.3, 0.4], requires_grad=True)\n"
                "y = torch.softmax(x, 0)", "--symbolic")
    widest = max(bundle(r)["text/plain"].splitlines(), key=len)
    assert len(widest) <= 100, widest


# was a strict xfail (s32 G7), fixed this session: the test stays as a guard
def test_symbolic_formulas_follow_the_configured_width(run_vjp):
    body = ("x = torch.tensor([0.1, 0.2], requires_grad=True)\n"
            "y = torch.sin(x) * torch.exp(x) + x**3 / (1 + x**2)")

    def symbolic_part(line):
        return bundle(run_vjp(body, line))["text/markdown"].split("agrees with autograd")[0]

    assert symbolic_part("--symbolic --width 20") != symbolic_part("--symbolic")


# -- what held ---------------------------------------------------------------------------
@pytest.mark.parametrize("line, words", [
    ("--wrt X", ["'X'", "Did you mean x?"]),
    ("--check anss", ["'anss'", "--check"]),
])
def test_a_mistyped_name_gets_a_short_message(usage_error, line, words):
    message = usage_error(f"%%vjp {line}\nx = torch.ones(3, requires_grad=True)\n"
                          "y = x*2\nans = 2*x")
    assert all(word in message for word in words), message


def test_the_cells_own_exception_is_not_a_usage_error(ip):
    result = ip.run_cell("%%vjp\nx = torch.ones(3, requires_grad=True)\nx += 1\ny = x*2")
    assert isinstance(result.error_in_exec, RuntimeError)
    assert not isinstance(result.error_in_exec, UsageError)
    assert "in-place" in str(result.error_in_exec)
