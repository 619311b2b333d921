"""Coaching on the cell's own backward mistakes, and every bad input answered clearly.

Each bad input: a short message (UsageError or a rendered note), no traceback from inside
the package, the cell's variables kept, x.grad untouched.
"""
from __future__ import annotations

import pytest
import torch
from IPython.core.error import UsageError
from torch.autograd.functional import jacobian as reference_jacobian

import vjp_magic.magics
from conftest import assert_tensor, run_ok, run_vjp
from test_magics import usage_error
from vjp_magic.latex import code as code_tex


def mistake(r):
    found = [s for s in r.sections if getattr(s, "kind", None) == "mistake"]
    assert len(found) == 1, r.sections
    return found[0]


def notes_of_kind(r, kind):
    return [s for s in r.sections if getattr(s, "kind", None) == kind]


# -- coaching: y.backward() on a non-scalar y --------------------------------------------------

def test_implicit_backward_at_points_says_ones_and_shows_derivatives(ip, capsys):
    r = run_vjp(ip, "x = torch.linspace(-2, 2, 5, requires_grad=True)\n"
                    "y = x**2\n"
                    "y.backward()\n"
                    "after = 1\n"
                    "print('not printed')")
    section = mistake(r)
    text = section.text()
    assert "line 3: y.backward()" in text
    assert "RuntimeError: grad can be implicitly created only for scalar outputs" in text
    assert "did not run" in text
    assert "J is diagonal" in text and "v = ones" in text
    assert "    y.backward(gradient=torch.ones_like(y))" in text
    # the statement failed, so the later ones did not run — as in a normal cell
    assert "after" not in ip.user_ns and "not printed" not in capsys.readouterr().out
    assert "x" in ip.user_ns and "y" in ip.user_ns
    assert ip.user_ns["x"].grad is None
    # then the derivatives, right: the tutorial's f'(x) = 2x at -2..2
    assert_tensor(r.derivatives["x"], [-4.0, -2.0, 0.0, 2.0, 4.0])
    latex = r._repr_latex_()
    assert latex.index("grad can be implicitly created") < latex.index("f'(x) = ")
    assert code_tex("y.backward(gradient=torch.ones_like(y))") in latex
    assert ip.user_ns["_"] is r


def test_implicit_backward_with_components_says_one_hot(ip):
    r = run_vjp(ip, "x = torch.arange(3, dtype=float, requires_grad=True)\n"
                    "y = torch.stack([-x**3, 5*x])\n"
                    "y.backward(retain_graph=True)")
    text = mistake(r).text()
    assert "2 components at each of 3 points" in text and "one-hot" in text
    assert "for k in range(2):" in text and "v[k] = 1" in text
    assert "y.backward(gradient=v, retain_graph=True)" in text
    assert_tensor(r.derivatives["x"], [[0.0, -3.0, -12.0], [5.0, 5.0, 5.0]])


def test_implicit_backward_keeps_other_arguments(ip):
    r = run_vjp(ip, "x = torch.linspace(-2, 2, 5, requires_grad=True)\n"
                    "y = torch.sin(x)\n"
                    "y.backward(retain_graph=True)")
    assert "y.backward(retain_graph=True, gradient=torch.ones_like(y))" in mistake(r).text()


def test_implicit_autograd_grad(ip):
    r = run_vjp(ip, "x = torch.linspace(-2, 2, 5, requires_grad=True)\n"
                    "y = x**2\n"
                    "(g,) = torch.autograd.grad(y, x)")
    assert "torch.autograd.grad(y, x, grad_outputs=torch.ones_like(y))" in mistake(r).text()
    assert "g" not in ip.user_ns


def test_implicit_backward_on_an_intermediate(ip):
    r = run_vjp(ip, "x = torch.tensor([1., 2., 3.], requires_grad=True)\n"
                    "h = torch.softmax(x, 0)\n"
                    "h.backward()\n", line="--of h")
    text = mistake(r).text()
    assert "3 components" in text  # softmax is not pointwise: one-hot, not ones
    ref = reference_jacobian(lambda t: torch.softmax(t, 0), ip.user_ns["x"].detach())
    torch.testing.assert_close(r.jacobian("x"), ref)


def corrected(text):
    """The corrected code lines of a mistake's plain text."""
    return [line[4:] for line in text.split("Corrected:\n", 1)[1].splitlines()
            if line.startswith("    ")]


@pytest.mark.parametrize("call, fixed", [
    ("torch.autograd.backward([y], [torch.ones(3)])",
     "torch.autograd.backward([y], [torch.ones_like(y)])"),
    ("torch.autograd.backward([y])",
     "torch.autograd.backward([y], grad_tensors=[torch.ones_like(y)])"),
    ("(g,) = torch.autograd.grad([y], [x], grad_outputs=[torch.ones(2, 2)])",
     "(g,) = torch.autograd.grad([y], [x], grad_outputs=[torch.ones_like(y)])"),
    ("(g,) = torch.autograd.grad(outputs=y, inputs=x)",
     "(g,) = torch.autograd.grad(outputs=y, inputs=x, grad_outputs=torch.ones_like(y))"),
    ("(g,) = torch.autograd.grad(y, x)", "(g,) = torch.autograd.grad(y, x, grad_outputs=torch.ones_like(y))"),
])
def test_corrected_function_call_is_the_users_own_and_runs(ip, call, fixed):
    r = run_vjp(ip, "x = torch.tensor([1., 2.], requires_grad=True)\ny = x**2\n" + call)
    text = mistake(r).text()
    assert corrected(text) == [fixed]
    why = text.split("Why:", 1)[1].split("Corrected:")[0]
    assert "y has shape (2,)" in why and "[y]" not in why
    # the corrected line runs and gives f'(x) = 2x
    run_ok(ip, fixed)
    got = ip.user_ns["g"] if fixed.startswith("(g,)") else ip.user_ns["x"].grad
    assert_tensor(got, [2.0, 4.0])


def test_function_imported_in_an_earlier_cell_is_coached_at_guard_level():
    from vjp_magic import coaching, differentiate
    from vjp_magic.guard import keep_graphs

    real_grad, real_backward = torch.autograd.grad, torch.autograd.backward
    ns = {"torch": torch, "grad": real_grad, "bw": real_backward}
    source = "x = torch.tensor([1., 2.], requires_grad=True)\ny = x**2\n(g,) = grad(y, x)"
    code = compile(source, "<cell-7>", "exec")
    with keep_graphs("<cell-7>", ns) as log:
        assert ns["grad"] is torch.autograd.grad is not real_grad  # patched during the cell
        assert ns["bw"] is torch.autograd.backward
        with pytest.raises(RuntimeError) as info:
            exec(code, ns)
    assert ns["grad"] is real_grad and ns["bw"] is real_backward  # restored afterwards
    found = coaching.classify(info.value, log, source)
    assert found is not None and found.line == 3
    r = differentiate(ns["y"], {"x": ns["x"]}, output_name="y")
    assert corrected(coaching.mistake_text(found, r)) == [
        "(g,) = grad(y, x, grad_outputs=torch.ones_like(y))"]


def test_function_imported_inside_the_cell_is_real_again_afterwards():
    from vjp_magic.guard import keep_graphs

    ns = {}
    with keep_graphs("<cell-8>", ns):
        exec("from torch.autograd import grad, backward", ns)
        assert ns["grad"] is torch.autograd.grad  # the patched one, as imported
    assert ns["grad"] is torch.autograd.grad and ns["backward"] is torch.autograd.backward
    assert ns["grad"].__module__ == "torch.autograd"


def test_function_imported_in_an_earlier_cell_is_coached(ip):
    run_ok(ip, "from torch.autograd import grad")
    r = run_vjp(ip, "x = torch.tensor([1., 2.], requires_grad=True)\ny = x**2\n(g,) = grad(y, x)")
    assert corrected(mistake(r).text()) == ["(g,) = grad(y, x, grad_outputs=torch.ones_like(y))"]
    assert ip.user_ns["grad"] is torch.autograd.grad


def test_several_inputs_with_different_structures(ip):
    r = run_vjp(ip, "a = torch.tensor([1., 2.], requires_grad=True)\n"
                    "b = torch.tensor(3., requires_grad=True)\n"
                    "y = a*b\ny.backward()")
    text = mistake(r).text()
    assert "for a, f applied at 2 points" in text and "for b, 2 components" in text
    assert "v = ones would add up" in text
    lines = corrected(text)
    assert lines[0] == "for k in range(2):"
    assert "    a.grad.zero_()" in lines and "    b.grad.zero_()" in lines
    # run the loop: component k gives row k of each Jacobian (d(a_k b)/da = b e_k, /db = a_k)
    seen = []
    ns = ip.user_ns
    ns["print"] = lambda g: seen.append(g.clone())
    try:
        exec("\n".join(lines), ns)
    finally:
        del ns["print"]
    assert len(seen) == 4
    assert_tensor(seen[0], [3.0, 0.0]) and assert_tensor(seen[1], 1.0)
    assert_tensor(seen[2], [0.0, 3.0]) and assert_tensor(seen[3], 2.0)


# -- coaching: a second backward without retain_graph=True ------------------------------------

SECOND_PASS = """x = torch.tensor(1., requires_grad=True)
y = torch.stack([-x**3, 5*x])
y.backward(torch.tensor([1., 0.]))
x.grad.zero_()
y.backward(torch.tensor([0., 1.]))
print('not printed')
"""


def test_second_backward_without_retain_graph(ip, capsys):
    r = run_vjp(ip, SECOND_PASS)
    text = mistake(r).text()
    assert "line 5: y.backward(torch.tensor([0., 1.]))" in text
    assert "Trying to backward through the graph a second time" in text  # PyTorch's message
    assert "line 3 freed the graph" in text
    assert "line 3: y.backward(torch.tensor([1., 0.]), retain_graph=True)" in text
    assert "not printed" not in capsys.readouterr().out
    # x.grad exactly as the cell left it: -3 after line 3, zeroed on line 4
    assert_tensor(ip.user_ns["x"].grad, 0.0)
    assert_tensor(r.derivatives["x"], [-3.0, 5.0])  # the tutorial's f_1'(1), f_2'(1)
    assert not notes_of_kind(r, "accumulation")


def test_second_backward_in_a_later_cell_is_plain_pytorch(ip):
    run_ok(ip, "x = torch.tensor([1., 2.], requires_grad=True)\ny = x**2\ny.sum().backward()")
    # the graph was freed by a normal cell: PyTorch's own error, as without the magic
    msg = usage_error(ip, "%%vjp\nz = y.sum()\nz.backward()")
    assert "second time" in msg and "retain_graph=True" in msg


def test_second_backward_in_a_loop_names_the_previous_iteration(ip):
    r = run_vjp(ip, "x = torch.tensor([1., 2.], requires_grad=True)\ny = x**2\n"
                    "for k in range(2):\n    v = torch.zeros(2); v[k] = 1\n    y.backward(v)")
    text = mistake(r).text()
    assert "line 5, in the previous iteration (this same line), freed" in text
    assert corrected(text) == ["line 5: y.backward(v, retain_graph=True)"]


@pytest.mark.parametrize("define, free, cell, expected", [
    ("y = x**2", "y.sum().backward()", "y.backward(torch.ones(2))", [2.0, 4.0]),
    ("y = (x**2).sum()", "y.backward()", "y.backward()", [2.0, 4.0]),
])
def test_graph_freed_by_an_earlier_cell(ip, define, free, cell, expected):
    run_ok(ip, f"x = torch.tensor([1., 2.], requires_grad=True)\n{define}\n{free}")
    fixed = cell
    msg = usage_error(ip, "%%vjp\n" + cell)
    assert "Trying to backward through the graph a second time" in msg
    assert "freed before this cell ran" in msg and "earlier cell" in msg
    assert "Recompute y in this cell" in msg and "retain_graph=True to the earlier" in msg
    lines = corrected(msg)
    assert lines[:2] == ["y = ...  # recompute y here: the line that defined it earlier", fixed]
    assert "gradient=v" not in msg  # no undefined v
    # the advice works: recompute y, then the user's own line runs
    run_ok(ip, f"x.grad = None\n{define}\n{fixed}")
    assert_tensor(ip.user_ns["x"].grad, expected)  # f'(x) = 2x


def test_graph_freed_by_an_earlier_cell_usage_message():
    from vjp_magic import coaching
    from vjp_magic.guard import keep_graphs

    x = torch.tensor([1., 2.], requires_grad=True)
    y = (x**2).sum()
    y.backward()
    ns = {"y": y}
    with keep_graphs("<cell-9>", ns) as log:
        with pytest.raises(RuntimeError) as info:
            exec(compile("y.backward()", "<cell-9>", "exec"), ns)
    found = coaching.classify(info.value, log, "y.backward()")
    assert coaching.freed_before_cell(found)
    msg = coaching.usage_message(found, RuntimeError("Found no output"))
    assert "Found no output" not in msg and "Recompute" in msg


def test_graph_freed_by_an_earlier_cell_has_no_unrelated_error(ip):
    run_ok(ip, "x = torch.tensor([1., 2.], requires_grad=True)\ny = (x**2).sum()\ny.backward()")
    msg = usage_error(ip, "%%vjp\ny.backward()")
    assert "Found no output" not in msg


# -- coaching: x.grad summed over several backward calls ---------------------------------------

def test_accumulated_grad_is_noted(ip):
    r = run_vjp(ip, "x = torch.tensor(1., requires_grad=True)\n"
                    "y = torch.stack([-x**3, 5*x])\n"
                    "y.backward(torch.tensor([1., 0.]), retain_graph=True)\n"
                    "y.backward(torch.tensor([0., 1.]))")
    (note,) = notes_of_kind(r, "accumulation")
    assert "sum of the 2 backward calls" in note.text() and "x.grad.zero_()" in note.text()
    assert "each of y's 2 components' own" in note.text()  # y = (-x³, 5x): 2 components
    assert not notes_of_kind(r, "mistake")
    assert_tensor(ip.user_ns["x"].grad, 2.0)  # -3 + 5: what the user's code made
    assert_tensor(r.derivatives["x"], [-3.0, 5.0])
    assert "Note: x.grad holds the sum" in repr(r)


def test_grad_left_from_an_earlier_cell_is_noted(ip):
    run_ok(ip, "x = torch.tensor([1., 2.], requires_grad=True)\n(x**3).sum().backward()")
    r = run_vjp(ip, "y = x**2\ny.backward(torch.ones_like(y))")
    (note,) = notes_of_kind(r, "accumulation")
    assert "before" in note.text()
    assert "f' at each of the 2 points, once" in note.text() and "component" not in note.text()
    assert_tensor(ip.user_ns["x"].grad, [3.0 + 2.0, 12.0 + 4.0])  # 3x² + 2x, untouched
    assert_tensor(r.derivatives["x"], [2.0, 4.0])


def test_accumulated_grad_of_a_scalar_output_is_worded_for_a_scalar(ip):
    r = run_vjp(ip, "x = torch.tensor([1., 2.], requires_grad=True)\n"
                    "y = (x**2).sum()\n"
                    "y.backward(retain_graph=True)\n"
                    "y.backward()")
    (note,) = notes_of_kind(r, "accumulation")
    assert "the gradient of y alone, once" in note.text() and "component" not in note.text()
    assert_tensor(ip.user_ns["x"].grad, [4.0, 8.0])  # 2 · 2x
    assert_tensor(r.derivatives["x"], [2.0, 4.0])


@pytest.mark.parametrize("zeroing", ["x.grad.zero_()", "x.grad = None"])
def test_zeroing_between_calls_is_not_noted(ip, zeroing):
    r = run_vjp(ip, "x = torch.tensor(1., requires_grad=True)\n"
                    "y = torch.stack([-x**3, 5*x])\n"
                    "y.backward(torch.tensor([1., 0.]), retain_graph=True)\n"
                    f"{zeroing}\n"
                    "y.backward(torch.tensor([0., 1.]))")
    assert not notes_of_kind(r, "accumulation")
    assert_tensor(ip.user_ns["x"].grad, 5.0)


def test_the_tutorials_matrix_loop_is_not_noted(ip):
    r = run_vjp(ip, """
import itertools
x = torch.tensor(1., requires_grad=True)
y = torch.stack([x**i for i in range(6)]).view(3,2)
derivatives = torch.zeros_like(y)
for i, j in itertools.product(*[range(_) for _ in y.shape]):
    v = torch.zeros_like(y)
    v[i,j] = 1.
    if x.grad is not None: x.grad.zero_()
    y.backward(v, retain_graph=True)
    derivatives[i,j] = x.grad.item()
""")
    assert not r.sections
    assert_tensor(ip.user_ns["x"].grad, 5.0)


# -- coaching: gradient of the wrong shape ---------------------------------------------------

def test_gradient_of_the_wrong_shape(ip):
    r = run_vjp(ip, "x = torch.linspace(-2, 2, 5, requires_grad=True)\n"
                    "y = x**2\n"
                    "y.backward(torch.ones(3))")
    text = mistake(r).text()
    assert "Mismatch in shape" in text
    assert "that is (5,), the gradient given has shape (3,)" in text
    assert "    y.backward(torch.ones_like(y))" in text
    assert_tensor(r.derivatives["x"], [-4.0, -2.0, 0.0, 2.0, 4.0])
    assert ip.user_ns["x"].grad is None


def test_gradient_keyword_of_the_wrong_shape_with_components(ip):
    r = run_vjp(ip, "x = torch.arange(3, dtype=float, requires_grad=True)\n"
                    "y = torch.stack([-x**3, 5*x])\n"
                    "y.backward(gradient=torch.ones(3, dtype=float))")
    text = mistake(r).text()
    assert "(2, 3)" in text and "for k in range(2):" in text


# -- what is not coached still fails the cell as usual -------------------------------------

def test_other_runtime_errors_propagate(ip):
    result = ip.run_cell("%%vjp\nx = torch.ones(3, requires_grad=True)\ny = x @ torch.ones(2)")
    assert isinstance(result.error_in_exec, RuntimeError)
    assert "x" in ip.user_ns


def test_backward_on_a_tensor_without_grad_propagates(ip):
    result = ip.run_cell("%%vjp\nx = torch.ones(3)\ny = (x**2).sum()\ny.backward()")
    assert isinstance(result.error_in_exec, RuntimeError)
    assert "does not require grad" in str(result.error_in_exec)


def test_user_caught_error_is_not_coached(ip):
    r = run_vjp(ip, "x = torch.linspace(-2, 2, 5, requires_grad=True)\ny = x**2\n"
                    "try:\n    y.backward()\nexcept RuntimeError:\n    caught = True")
    assert ip.user_ns["caught"] is True and not notes_of_kind(r, "mistake")


def test_mistake_then_a_usage_error_still_coaches(ip):
    msg = usage_error(ip, "%%vjp --wrt q\nx = torch.ones(3, requires_grad=True)\n"
                          "y = x**2\ny.backward()")
    assert "grad can be implicitly created" in msg and "torch.ones_like(y)" in msg
    assert "'q'" in msg


def test_correct_backward_in_the_cell_keeps_x_grad(ip):
    r = run_vjp(ip, "x = torch.arange(6, dtype=float).view(3, 2).requires_grad_(True)\n"
                    "w = torch.tensor([-1, 1])\ny = (x*x*w).sum(1)\n"
                    "y.backward(torch.ones_like(y))")
    expected = [[-0.0, 2.0], [-4.0, 6.0], [-8.0, 10.0]]  # the tutorial's x.grad
    assert_tensor(ip.user_ns["x"].grad, expected)
    assert_tensor(r.derivatives["x"], expected)
    assert not r.sections
    # the magic kept the graph (DESIGN: usable for the user's next cell)
    run_ok(ip, "x.grad = None\ny.backward(torch.ones_like(y))")
    assert_tensor(ip.user_ns["x"].grad, expected)


# -- every bad input gets a clear answer -----------------------------------------------------

@pytest.fixture
def earlier_grad(ip):
    """A tensor with a .grad from an earlier cell: no bad input may change it."""
    run_ok(ip, "keep = torch.tensor([1., 2.], requires_grad=True)\n(keep**2).sum().backward()")
    yield
    assert_tensor(ip.user_ns["keep"].grad, [2.0, 4.0])


BAD_CELLS = {
    "no_requires_grad": ("", "x = torch.ones(3)\ny = x**2", ["requires_grad=True"]),
    "no_grad_block": ("", "x = torch.ones(3, requires_grad=True)\nwith torch.no_grad():\n"
                          "    y = x**2", ["no_grad"]),
    "no_grad_block_of": ("--of y", "x = torch.ones(3, requires_grad=True)\n"
                                   "with torch.no_grad():\n    y = x**2", ["no_grad"]),
    "detached": ("", "x = torch.ones(3, requires_grad=True)\ny = (x**2).detach()",
                 ["detach"]),
    "unknown_wrt": ("--wrt q", "x = torch.ones(3, requires_grad=True)\ny = x**2", ["'q'"]),
    "unknown_of": ("--of Y", "x = torch.ones(3, requires_grad=True)\ny = x**2",
                   ["'Y'", "Did you mean y?"]),
    "failing_of_expression": ("--of y.nope", "x = torch.ones(3, requires_grad=True)\ny = x**2",
                              ["y.nope", "AttributeError"]),
    "item_number": ("", "x = torch.ones(3, requires_grad=True)\ny = (x**2).sum().item()",
                    ["y is a Python float", ".item()"]),
    "number_of": ("--of y", "x = torch.ones(3, requires_grad=True)\ny = 3.0",
                  ["not a tensor"]),
    "integer_input": ("--wrt n", "x = torch.ones(3, requires_grad=True)\nn = torch.arange(3)\n"
                                 "y = x * n", ["torch.int64", "floating"]),
    "bool_input": ("--wrt b", "x = torch.ones(3, requires_grad=True)\n"
                              "b = torch.tensor([True, False, True])\ny = x * b",
                   ["torch.bool", "floating"]),
    "input_without_grad": ("--wrt w", "x = torch.ones(3, requires_grad=True)\n"
                                      "w = torch.ones(3)\ny = x * w", ["does not require grad"]),
    "complex_input": ("", "x = torch.ones(3, dtype=torch.cfloat, requires_grad=True)\n"
                          "y = x.abs()", ["complex", "x.real"]),
    "complex_output": ("", "x = torch.ones(3, requires_grad=True)\ny = x * 1j",
                       ["complex", "y.real"]),
    "empty_input_and_output": ("", "x = torch.zeros(0, requires_grad=True)\ny = x**2",
                               ["empty", "(0,)"]),
    "empty_output": ("", "x = torch.ones(3, requires_grad=True)\ny = x[:0] * 2",
                     ["empty", "(0,)"]),
    "empty_input": ("", "x = torch.zeros(0, 3, requires_grad=True)\ny = x.sum()",
                    ["empty", "(0, 3)"]),
    "two_outputs": ("--of y z", "x = torch.ones(3, requires_grad=True)\ny = x**2\nz = y",
                    ["one output"]),
    "too_large": ("--full", "x = torch.ones(3000, requires_grad=True)\ny = x**2",
                  ["memory budget"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CELLS))
def test_bad_input_gets_a_short_message_and_loses_nothing(ip, earlier_grad, case):
    line, body, words = BAD_CELLS[case]
    if case == "too_large":
        ip.run_line_magic("config", "VJPMagics.memory_budget = 10000")
    try:
        msg = usage_error(ip, f"%%vjp {line}\n{body}")
    finally:
        ip.run_line_magic("config", "VJPMagics.memory_budget = 0.25")
    for word in words:
        assert word in msg, msg
    assert len(msg) < 600 and "Traceback" not in msg
    assert "x" in ip.user_ns  # the cell ran: everything it assigned is kept
    if "\ny = " in body:
        assert "y" in ip.user_ns
    x = ip.user_ns["x"]
    assert x.grad is None


def test_integer_tensor_with_requires_grad_is_pytorchs_own_error(ip):
    result = ip.run_cell("%%vjp\nx = torch.arange(3, requires_grad=True)\ny = x**2")
    assert isinstance(result.error_in_exec, RuntimeError)
    assert "floating point" in str(result.error_in_exec)


def test_output_not_depending_on_a_named_input(ip, earlier_grad):
    r = run_vjp(ip, "x = torch.ones(3, requires_grad=True)\n"
                    "w = torch.ones(2, requires_grad=True)\ny = x**2", line="--wrt x w")
    assert_tensor(r.derivatives["w"], torch.zeros(3, 2))
    assert "y does not depend on w: every derivative is 0." in repr(r)
    assert r"\text{y does not depend on w: every derivative is 0.}" in r._repr_latex_()


def test_nan_and_inf_derivatives_are_rendered_and_flagged(ip):
    r = run_vjp(ip, "x = torch.tensor([0., 1., 4.], requires_grad=True)\ny = x.sqrt()")
    d = r.derivatives["x"]
    assert torch.isinf(d[0]) and d[0] > 0  # d√x/dx = 1/(2√x): +∞ at 0
    assert_tensor(d[1:], [0.5, 0.25])
    latex = r._repr_latex_()
    assert r"\infty" in latex and "have 1 infinite entry:" in latex
    assert "have 1 infinite entry:" in repr(r)
    r = run_vjp(ip, "x = torch.tensor([-1., 0., 1.], requires_grad=True)\n"
                    "y = torch.sqrt(x) * 0 + x")
    # √x at -1 is NaN, and its derivative too; at 0, 0·∞ is NaN as well: 2 NaN entries
    assert torch.isnan(r.derivatives["x"][:2]).all()
    assert "NaN" in r._repr_latex_() and "have 2 NaN entries:" in repr(r)


def test_nan_and_inf_note_counts_each_kind():
    from vjp_magic import differentiate

    # d√x/dx = 1/(2√x): NaN at -1 (outside the domain), +∞ at 0, finite at 4
    x = torch.tensor([-1., 0., 4.], requires_grad=True)
    (note,) = differentiate(x.sqrt(), x).notes
    assert "have 1 NaN entry and 1 infinite entry:" in note
    x = torch.tensor([-1., -2., 0., 0., 0.], requires_grad=True)
    (note,) = differentiate(x.sqrt(), x).notes
    assert "have 2 NaN entries and 3 infinite entries:" in note


def test_finite_derivatives_have_no_note(ip):
    r = run_vjp(ip, "x = torch.tensor([1., 4.], requires_grad=True)\ny = x.sqrt()")
    assert not r.notes


def test_syntax_error_is_shown_as_ipython_shows_it(ip):
    result = ip.run_cell("%%vjp\nx = torch.ones(3, requires_grad=True)\ny = (x**2")
    assert type(result.error_in_exec).__name__ == "SyntaxError"  # shown exactly as IPython does
    assert "x" not in ip.user_ns  # nothing ran, as in a normal cell


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_elementwise(ip, dtype):
    r = run_vjp(ip, f"x = torch.linspace(-2, 2, 5, dtype=torch.{dtype}, requires_grad=True)\n"
                    "y = x**2")
    assert r.point_axes["x"] == ((0, 0),)
    assert r.derivatives["x"].dtype == getattr(torch, dtype)
    assert_tensor(r.derivatives["x"], [-4.0, -2.0, 0.0, 2.0, 4.0])  # exact in both dtypes
    latex = r._repr_latex_()
    assert r"\begin{bmatrix}-4 & -2 & 0 & 2 & 4\end{bmatrix}" in latex
    assert dtype in latex


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("case", ["softmax", "row_softmax", "rows_matmul", "components"])
def test_low_precision_structure_and_values(dtype, case):
    from vjp_magic import differentiate

    torch.manual_seed(0)
    low = getattr(torch, dtype)
    B = torch.randn(4, 3, dtype=torch.float64)
    fns = {
        "softmax": (lambda x: torch.softmax(x, 0), (5,), ()),
        "row_softmax": (lambda x: torch.softmax(x, 1), (5, 7), ((0, 0),)),
        "rows_matmul": (lambda x: torch.tanh(x @ B.to(x.dtype)), (6, 4), ((0, 0),)),
        "components": (lambda x: torch.stack([x.sum(1), (x**2).sum(1)]), (5, 7), ((1, 0),)),
    }
    fn, shape, axes = fns[case]
    x64 = torch.randn(shape, dtype=torch.float64)
    x = x64.to(low).requires_grad_(True)
    r = differentiate(fn(x), x)
    assert r.point_axes["x"] == axes
    ref = reference_jacobian(fn, x.detach().double())  # the exact Jacobian at the same point
    tol = 3e-2 if dtype == "bfloat16" else 4e-3
    torch.testing.assert_close(r.jacobian("x").double(), ref, rtol=tol, atol=tol)
    r._repr_latex_(), repr(r)  # renders


def test_our_own_bug_is_a_real_traceback(ip, monkeypatch):
    def broken(*args, **kwargs):
        return 1 / 0

    monkeypatch.setattr(vjp_magic.magics, "differentiate", broken)
    result = ip.run_cell("%%vjp\nx = torch.ones(3, requires_grad=True)\ny = x**2")
    assert isinstance(result.error_in_exec, ZeroDivisionError)
    assert not isinstance(result.error_in_exec, UsageError)
    assert "y" in ip.user_ns
