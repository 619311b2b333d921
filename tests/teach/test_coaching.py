"""Coaching the cell's own backward mistakes (``teach/coaching.py``): document sections and
the usage message, then through the magic: a non-scalar y, a second backward without
retain_graph, a .grad summed over calls, a gradient of the wrong shape; what is not coached
fails the cell as usual."""
from __future__ import annotations

import ast

import cells
import pytest
import torch
from coached import (
    CLASSIFIED,
    FLOAT_5,
    cell_error,
    coaching_of,
    corrected,
    mistake,
    notes,
    unquoted,
    words,
)
from torch.autograd.functional import jacobian as reference_jacobian

from vjp_magic.core.analysis import differentiate as analyse
from vjp_magic.render.document import Code, CodeBlock, Math, Paragraph
from vjp_magic.render.latex import tex_problems
from vjp_magic.run import mistakes
from vjp_magic.run.guard import keep_graphs
from vjp_magic.teach import coaching

# -- teaching it: document sections --------------------------------------------------------------

def test_mistake_section_is_prose_code_and_maths():
    source, ns = FLOAT_5 + "y.backward()\nafter = 1", {"torch": torch}
    log, error = cell_error(source, ns)
    log.mistake = mistakes.classify(error, log, source)
    r = analyse(ns["y"], {"x": ns["x"]}, output_name="y")
    (section,) = coaching.mistake_sections(log, r)
    head = section.blocks[0]
    assert head.strong and Code("y.backward()") in head.spans  # the failing line, as code
    codes = [b for b in section.blocks if isinstance(b, CodeBlock)]
    assert codes == [CodeBlock("y.backward(gradient=torch.ones_like(y))")]  # copyable
    maths = [s for b in section.blocks if isinstance(b, Paragraph) for s in b.spans
             if isinstance(s, Math)]
    assert Math(r"v^\top J", "vᵀJ") in maths
    assert all(len(m.plain) < 10 for m in maths)  # maths only for formulas, never sentences
    assert all(tex_problems(m.tex) == [] for m in maths)
    text = words(section)
    assert "did not run" in text and "J is diagonal" in text
    assert len(text) < 700


@pytest.mark.parametrize("source, kind, line", CLASSIFIED)
def test_every_kind_is_taught_with_code_that_runs_as_python(source, kind, line):
    ns = {"torch": torch}
    log, error = cell_error(source, ns)
    found = mistakes.classify(error, log, source)
    r = analyse(ns["y"], {"x": ns["x"]}, output_name="y")
    section = coaching.mistake_section(found, r)
    ast.parse("\n".join(corrected(section)))  # copyable: the corrected code is Python
    assert words(section).startswith(f"The cell stopped at line {line}: ")


def test_no_log_or_nothing_to_say_gives_no_sections():
    x = torch.ones(2, requires_grad=True)
    r = analyse(x * 2, {"x": x})
    assert coaching.mistake_sections(None, r) == ()
    log, _ = cell_error("z = x * 2", {"x": x})
    assert coaching.mistake_sections(log, r) == ()


def test_usage_message_is_the_coaching_then_the_error():
    log, error = cell_error(FLOAT_5 + "y.backward()", {"torch": torch})
    found = mistakes.classify(error, log, FLOAT_5 + "y.backward()")
    msg = unquoted(coaching.usage_message(found, RuntimeError("No tensor requires grad")))
    assert "The cell stopped at line 3" in msg and "grad can be implicitly created" in msg
    assert "y.backward(gradient=torch.ones_like(y))" in msg
    assert msg.rstrip().endswith("No tensor requires grad")
    assert "computed correctly by vjp_magic" not in msg  # no derivatives below


# -- coaching: y.backward() on a non-scalar y --------------------------------------------------

def test_implicit_backward_at_points_says_ones_and_shows_derivatives(ip, run_vjp, assert_tensor,
                                                                     capsys):
    r = run_vjp(cells.MULTIPLE_POINTS.short + "\n"
                "y.backward()\n"
                "after = 1\n"
                "print('not printed')")
    section = mistake(r)
    text = words(section)
    assert "line 3: y.backward()" in text
    assert "RuntimeError: grad can be implicitly created only for scalar outputs" in text
    assert "did not run" in text
    assert "J is diagonal" in text and "v = ones" in text
    assert corrected(section) == ["y.backward(gradient=torch.ones_like(y))"]
    # the statement failed, so the later ones did not run — as in a normal cell
    assert "after" not in ip.user_ns and "not printed" not in capsys.readouterr().out
    assert "x" in ip.user_ns and "y" in ip.user_ns
    assert ip.user_ns["x"].grad is None
    # then the derivatives, right: the tutorial's f'(x) = 2x at -2..2
    assert_tensor(r.derivatives["x"], [-4.0, -2.0, 0.0, 2.0, 4.0])
    assert r.view.document(r).sections[0] == section  # the coaching comes first
    markdown = r._repr_mimebundle_()["text/markdown"]
    assert "```python\ny.backward(gradient=torch.ones_like(y))\n```" in markdown
    assert markdown.index("grad can be implicitly created") < markdown.index("$$")
    assert ip.user_ns["_"] is r


def test_implicit_backward_with_components_says_one_hot(run_vjp, assert_tensor):
    r = run_vjp(cells.STACK_AT_POINTS.short + "\ny.backward(retain_graph=True)")
    text = words(mistake(r))
    assert "2 components at each of 3 points" in text and "one-hot" in text
    assert "for k in range(2):" in text and "v[k] = 1" in text
    assert "y.backward(gradient=v, retain_graph=True)" in text
    assert_tensor(r.derivatives["x"], [[0.0, -3.0, -12.0], [5.0, 5.0, 5.0]])


def test_implicit_backward_keeps_other_arguments(run_vjp):
    r = run_vjp("x = torch.linspace(-2, 2, 5, requires_grad=True)\n"
                "y = torch.sin(x)\n"
                "y.backward(retain_graph=True)")
    assert corrected(mistake(r)) == ["y.backward(retain_graph=True, gradient=torch.ones_like(y))"]


def test_implicit_autograd_grad(ip, run_vjp):
    r = run_vjp(cells.MULTIPLE_POINTS.short + "\n(g,) = torch.autograd.grad(y, x)")
    assert corrected(mistake(r)) == [
        "(g,) = torch.autograd.grad(y, x, grad_outputs=torch.ones_like(y))"]
    assert "g" not in ip.user_ns


def test_implicit_backward_on_an_intermediate(ip, run_vjp):
    r = run_vjp("x = torch.tensor([1., 2., 3.], requires_grad=True)\n"
                "h = torch.softmax(x, 0)\n"
                "h.backward()\n", line="--of h")
    text = words(mistake(r))
    assert "3 components" in text  # softmax is not pointwise: one-hot, not ones
    ref = reference_jacobian(lambda t: torch.softmax(t, 0), ip.user_ns["x"].detach())
    torch.testing.assert_close(r.jacobian("x"), ref)


@pytest.mark.parametrize("call, fixed", [
    ("torch.autograd.backward([y], [torch.ones(3)])",
     "torch.autograd.backward([y], [torch.ones_like(y)])"),
    ("torch.autograd.backward([y])",
     "torch.autograd.backward([y], grad_tensors=[torch.ones_like(y)])"),
    ("(g,) = torch.autograd.grad([y], [x], grad_outputs=[torch.ones(2, 2)])",
     "(g,) = torch.autograd.grad([y], [x], grad_outputs=[torch.ones_like(y)])"),
    ("(g,) = torch.autograd.grad(outputs=y, inputs=x)",
     "(g,) = torch.autograd.grad(outputs=y, inputs=x, grad_outputs=torch.ones_like(y))"),
    ("(g,) = torch.autograd.grad(y, x)",
     "(g,) = torch.autograd.grad(y, x, grad_outputs=torch.ones_like(y))"),
])
def test_corrected_function_call_is_the_users_own_and_runs(ip, run_ok, run_vjp, assert_tensor,
                                                          call, fixed):
    r = run_vjp("x = torch.tensor([1., 2.], requires_grad=True)\ny = x**2\n" + call)
    section = mistake(r)
    assert corrected(section) == [fixed]
    why = words(section).split("Why:", 1)[1].split("Corrected:")[0]
    assert "y has shape (2,)" in why and "[y]" not in why
    # the corrected line runs and gives f'(x) = 2x
    run_ok(fixed)
    got = ip.user_ns["g"] if fixed.startswith("(g,)") else ip.user_ns["x"].grad
    assert_tensor(got, [2.0, 4.0])


def test_function_imported_in_an_earlier_cell_is_coached_at_guard_level():
    real_grad, real_backward = torch.autograd.grad, torch.autograd.backward
    ns = {"torch": torch, "grad": real_grad, "bw": real_backward}
    source = "x = torch.tensor([1., 2.], requires_grad=True)\ny = x**2\n(g,) = grad(y, x)"
    code = compile(source, "<cell-7>", "exec")
    with keep_graphs("<cell-7>") as log:
        assert torch.autograd.grad is real_grad  # nothing the cell can reach is replaced
        assert ns["grad"] is real_grad and ns["bw"] is real_backward
        with pytest.raises(RuntimeError) as info:
            exec(code, ns)
    log.record_failure(info.value)  # failed before the engine: rebuilt from its frames
    found = mistakes.classify(info.value, log, source)
    assert found is not None and found.line == 3
    r = analyse(ns["y"], {"x": ns["x"]}, output_name="y")
    assert corrected(coaching.mistake_section(found, r)) == [
        "(g,) = grad(y, x, grad_outputs=torch.ones_like(y))"]


def test_function_imported_inside_the_cell_is_the_real_one():
    real_grad, real_backward = torch.autograd.grad, torch.autograd.backward
    ns = {}
    with keep_graphs("<cell-8>"):
        exec("from torch.autograd import grad, backward", ns)
    assert ns["grad"] is real_grad and ns["backward"] is real_backward
    assert torch.autograd.grad is real_grad and torch.autograd.backward is real_backward


def test_function_imported_in_an_earlier_cell_is_coached(ip, run_ok, run_vjp):
    run_ok("from torch.autograd import grad")
    r = run_vjp("x = torch.tensor([1., 2.], requires_grad=True)\ny = x**2\n(g,) = grad(y, x)")
    assert corrected(mistake(r)) == ["(g,) = grad(y, x, grad_outputs=torch.ones_like(y))"]
    assert ip.user_ns["grad"] is torch.autograd.grad


def test_several_inputs_with_different_structures(ip, run_vjp, assert_tensor):
    r = run_vjp("a = torch.tensor([1., 2.], requires_grad=True)\n"
                "b = torch.tensor(3., requires_grad=True)\n"
                "y = a*b\ny.backward()")
    section = mistake(r)
    text = words(section)
    assert "for a, f applied at 2 points" in text and "for b, 2 components" in text
    assert "v = ones would add up" in text
    lines = corrected(section)
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


def test_component_loop_over_several_axes_imports_itertools(ip, run_vjp, assert_tensor):
    r = run_vjp("x = torch.tensor(2., requires_grad=True)\n"
                "y = torch.stack([x**i for i in range(6)]).view(3, 2)\ny.backward()")
    lines = corrected(mistake(r))
    assert lines[:2] == ["import itertools",
                         "for i, j in itertools.product(range(3), range(2)):"]
    seen = []
    ip.user_ns["print"] = lambda g: seen.append(float(g))
    try:
        exec("\n".join(lines), ip.user_ns)
    finally:
        del ip.user_ns["print"]
    assert seen == [0.0, 1.0, 4.0, 12.0, 32.0, 80.0]  # i·x^(i-1) at x = 2, row-major


# -- coaching: a second backward without retain_graph=True ------------------------------------

SECOND_PASS = cells.VECTOR_UNIVARIATE_SINGLE_POINT.short + """
y.backward(torch.tensor([1., 0.]))
x.grad.zero_()
y.backward(torch.tensor([0., 1.]))
print('not printed')
"""


def test_second_backward_without_retain_graph(ip, run_vjp, assert_tensor, capsys):
    r = run_vjp(SECOND_PASS)
    section = mistake(r)
    text = words(section)
    assert "line 5: y.backward(torch.tensor([0., 1.]))" in text
    assert "Trying to backward through the graph a second time" in text  # PyTorch's message
    assert "line 3 freed the graph" in text
    assert corrected(section) == [
        "y.backward(torch.tensor([1., 0.]), retain_graph=True)  # line 3"]
    assert "not printed" not in capsys.readouterr().out
    # x.grad exactly as the cell left it: -3 after line 3, zeroed on line 4
    assert_tensor(ip.user_ns["x"].grad, 0.0)
    assert_tensor(r.derivatives["x"], [-3.0, 5.0])  # the tutorial's f_1'(1), f_2'(1)
    assert not notes(r)


def test_second_backward_in_a_loop_names_the_previous_iteration(run_vjp):
    r = run_vjp("x = torch.tensor([1., 2.], requires_grad=True)\ny = x**2\n"
                "for k in range(2):\n    v = torch.zeros(2); v[k] = 1\n    y.backward(v)")
    section = mistake(r)
    assert "line 5, in the previous iteration (this same line), freed" in words(section)
    assert corrected(section) == ["y.backward(v, retain_graph=True)  # line 5"]


def test_second_backward_reading_grad_says_to_zero_it(run_vjp):
    r = run_vjp("x = torch.tensor(1., requires_grad=True)\ny = torch.stack([-x**3, 5*x])\n"
                "y.backward(torch.tensor([1., 0.]))\na = x.grad.item()\n"
                "y.backward(torch.tensor([0., 1.]))")
    assert corrected(mistake(r)) == [
        "y.backward(torch.tensor([1., 0.]), retain_graph=True)  # line 3",
        "x.grad.zero_()  # between the two: .grad adds up over backward calls"]


@pytest.mark.parametrize("define, free, cell, expected", [
    ("y = x**2", "y.sum().backward()", "y.backward(torch.ones(2))", [2.0, 4.0]),
    ("y = (x**2).sum()", "y.backward()", "y.backward()", [2.0, 4.0]),
])
def test_graph_freed_by_an_earlier_cell(ip, run_ok, usage_error, assert_tensor,
                                        define, free, cell, expected):
    run_ok(f"x = torch.tensor([1., 2.], requires_grad=True)\n{define}\n{free}")
    msg = unquoted(usage_error("%%vjp\n" + cell))
    assert "Trying to backward through the graph a second time" in msg
    assert "freed before this cell ran" in msg and "earlier cell" in msg
    assert "Recompute y in this cell" in msg and "retain_graph=True to the earlier" in msg
    recompute = unquoted("y = ...  # recompute y here: the line that defined it earlier")
    assert recompute in msg and msg.index(recompute) < msg.rindex(cell)  # then the user's line
    assert "gradient=v" not in msg  # no undefined v
    # the advice works: recompute y, then the user's own line runs
    run_ok(f"x.grad = None\n{define}\n{cell}")
    assert_tensor(ip.user_ns["x"].grad, expected)  # f'(x) = 2x


def test_graph_freed_by_an_earlier_cell_usage_message():
    x = torch.tensor([1., 2.], requires_grad=True)
    y = (x**2).sum()
    y.backward()
    log, error = cell_error("y.backward()", {"y": y})
    found = mistakes.classify(error, log, "y.backward()")
    assert found.freed_before_cell
    msg = coaching.usage_message(found, RuntimeError("Found no output"))
    assert "Found no output" not in msg and "Recompute" in msg


COACHED_USAGE_ERRORS = [  # (earlier cell, %%vjp cell, in the message, not in it)
    # a graph freed by a plain cell, then z.sum(): PyTorch's own error, as without the magic
    ("x = torch.tensor([1., 2.], requires_grad=True)\ny = x**2\ny.sum().backward()",
     "%%vjp\nz = y.sum()\nz.backward()", ["second time", "retain_graph=True"], []),
    ("x = torch.tensor([1., 2.], requires_grad=True)\ny = (x**2).sum()\ny.backward()",
     "%%vjp\ny.backward()", ["Recompute"], ["Found no output"]),
    # the cell stopped on a mistake and --wrt names nothing: both are said
    ("", "%%vjp --wrt q\nx = torch.ones(3, requires_grad=True)\ny = x**2\ny.backward()",
     ["grad can be implicitly created", "torch.ones_like(y)", "'q'"], []),
]


@pytest.mark.parametrize("setup, cell, present, absent", COACHED_USAGE_ERRORS)
def test_coached_usage_errors(run_ok, usage_error, setup, cell, present, absent):
    if setup:
        run_ok(setup)
    msg = unquoted(usage_error(cell))
    for word in present:
        assert word in msg, msg
    for word in absent:
        assert word not in msg, msg


# -- coaching: x.grad summed over several backward calls ---------------------------------------

def test_accumulated_grad_is_noted(ip, run_vjp, assert_tensor):
    r = run_vjp(cells.VECTOR_UNIVARIATE_SINGLE_POINT.short + "\n"
                "y.backward(torch.tensor([1., 0.]), retain_graph=True)\n"
                "y.backward(torch.tensor([0., 1.]))")
    (note,) = notes(r)
    text = words(note)
    assert "sum of the 2 backward calls" in text and "x.grad = None" in text
    assert "each of y's 2 components' own" in text  # y = (-x³, 5x): 2 components
    assert CodeBlock("x.grad = None") in note.blocks  # .zero_() fails before the first
    assert not [s for s in coaching_of(r) if s is not note]
    assert_tensor(ip.user_ns["x"].grad, 2.0)  # -3 + 5: what the user's code made
    assert_tensor(r.derivatives["x"], [-3.0, 5.0])
    assert "Note: x.grad holds the sum" in unquoted(repr(r))


def test_grad_left_from_an_earlier_cell_is_noted(ip, run_ok, run_vjp, assert_tensor):
    run_ok("x = torch.tensor([1., 2.], requires_grad=True)\n(x**3).sum().backward()")
    r = run_vjp("y = x**2\ny.backward(torch.ones_like(y))")
    (note,) = notes(r)
    text = words(note)
    assert "before" in text
    assert "f' at each of the 2 points, once" in text and "component" not in text
    assert_tensor(ip.user_ns["x"].grad, [3.0 + 2.0, 12.0 + 4.0])  # 3x² + 2x, untouched
    assert_tensor(r.derivatives["x"], [2.0, 4.0])


def test_accumulated_grad_of_a_scalar_output_is_worded_for_a_scalar(ip, run_vjp, assert_tensor):
    r = run_vjp("x = torch.tensor([1., 2.], requires_grad=True)\n"
                "y = (x**2).sum()\n"
                "y.backward(retain_graph=True)\n"
                "y.backward()")
    (note,) = notes(r)
    text = words(note)
    assert "the gradient of y alone, once" in text and "component" not in text
    assert_tensor(ip.user_ns["x"].grad, [4.0, 8.0])  # 2 · 2x
    assert_tensor(r.derivatives["x"], [2.0, 4.0])


@pytest.mark.parametrize("zeroing", ["x.grad.zero_()", "x.grad = None"])
def test_zeroing_between_calls_is_not_noted(ip, run_vjp, assert_tensor, zeroing):
    r = run_vjp(cells.VECTOR_UNIVARIATE_SINGLE_POINT.short + "\n"
                "y.backward(torch.tensor([1., 0.]), retain_graph=True)\n"
                f"{zeroing}\n"
                "y.backward(torch.tensor([0., 1.]))")
    assert not notes(r)
    assert_tensor(ip.user_ns["x"].grad, 5.0)


def test_the_tutorials_matrix_loop_is_not_noted(ip, run_vjp, assert_tensor):
    r = run_vjp(cells.MATRIX_VALUED_UNIVARIATE.source)
    assert not coaching_of(r)
    assert_tensor(ip.user_ns["x"].grad, 5.0)


# -- coaching: gradient of the wrong shape ---------------------------------------------------

def test_gradient_of_the_wrong_shape(ip, run_vjp, assert_tensor):
    r = run_vjp(cells.MULTIPLE_POINTS.short + "\ny.backward(torch.ones(3))")
    section = mistake(r)
    text = words(section)
    assert "Mismatch in shape" in text
    assert "that is (5,), the gradient given has shape (3,)" in text
    assert corrected(section) == ["y.backward(torch.ones_like(y))"]
    assert_tensor(r.derivatives["x"], [-4.0, -2.0, 0.0, 2.0, 4.0])
    assert ip.user_ns["x"].grad is None


def test_gradient_keyword_of_the_wrong_shape_with_components(run_vjp):
    r = run_vjp(cells.STACK_AT_POINTS.short + "\n"
                "y.backward(gradient=torch.ones(3, dtype=float))")
    text = words(mistake(r))
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


def test_user_caught_error_is_not_coached(ip, run_vjp):
    r = run_vjp(cells.MULTIPLE_POINTS.short + "\n"
                "try:\n    y.backward()\nexcept RuntimeError:\n    caught = True")
    assert ip.user_ns["caught"] is True and not coaching_of(r)


def test_correct_backward_in_the_cell_keeps_x_grad(ip, run_ok, run_vjp, assert_tensor):
    r = run_vjp(cells.SCALAR_MULTIVARIATE_MULTIPLE_POINTS.short + "\n"
                "y.backward(torch.ones_like(y))")
    expected = [[-0.0, 2.0], [-4.0, 6.0], [-8.0, 10.0]]  # the tutorial's x.grad
    assert_tensor(ip.user_ns["x"].grad, expected)
    assert_tensor(r.derivatives["x"], expected)
    assert not coaching_of(r)
    # the cell's own backward freed the graph, as in a plain cell: a second one fails the same
    failed = ip.run_cell("y.backward(torch.ones_like(y))")
    assert "second time" in str(failed.error_in_exec)
    # a graph only the magic went through stays usable for the next cell
    run_vjp("z = (x**3).sum()")
    run_ok("x.grad = None\nz.backward()")
    assert_tensor(ip.user_ns["x"].grad, [[0.0, 3.0], [12.0, 27.0], [48.0, 75.0]])
