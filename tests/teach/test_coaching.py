"""Coaching on the cell's own backward mistakes, and every bad input answered clearly.

Recognising a mistake (``run/mistakes.py``: :func:`classify`; ``run/cell_source.py``: the
call-site rewriting; ``run/accumulation.py``: summed ``.grad``; ``run/seeds.py``) and teaching
it (``teach/coaching.py``: document sections, the usage message) are tested on their own first,
then through the magic. Each bad input: a short message (UsageError or a rendered note), no
traceback from inside the package, the cell's variables kept, x.grad untouched.
"""
from __future__ import annotations

import ast
import re

import cells
import pytest
import torch
from IPython.core.error import UsageError
from torch.autograd.functional import jacobian as reference_jacobian

import vjp_magic.core.analysis
import vjp_magic.pipeline
from vjp_magic.core.analysis import differentiate as analyse
from vjp_magic.core.torch_api import TorchError, torch_error
from vjp_magic.render.latex import tex_problems
from vjp_magic.render.document import Bullets, Code, CodeBlock, Math, Paragraph, Section
from vjp_magic.run import accumulation, backward_log, cell_source, mistakes, seeds
from vjp_magic.run.guard import keep_graphs
from vjp_magic.run.mistakes import MistakeKind
from vjp_magic.teach import coaching


# -- reading the coaching off the document ------------------------------------------------------

def _spoken(span) -> str:
    return span.plain if isinstance(span, Math) else span.text


def words(section: Section) -> str:
    """A section's words, a line per paragraph; code blocks indented by four spaces."""
    lines = []
    for block in section.blocks:
        if isinstance(block, CodeBlock):
            lines += ["    " + line for line in block.source.splitlines()]
        elif isinstance(block, Bullets):
            lines += ["".join(map(_spoken, item.spans)) for item in block.items]
        elif isinstance(block, Paragraph):
            lines.append("".join(map(_spoken, block.spans)))
    return "\n".join(lines)


def corrected(section: Section) -> list[str]:
    """The lines of the code block after "Corrected:"."""
    blocks = list(section.blocks)
    at = next(i for i, b in enumerate(blocks)
              if isinstance(b, Paragraph) and words(Section((b,))) == "Corrected:")
    assert isinstance(blocks[at + 1], CodeBlock), blocks
    return blocks[at + 1].source.splitlines()


def _lead(section: Section) -> str:
    return words(Section(section.blocks[:1]))


def coaching_of(r) -> list[Section]:
    """The coaching sections of the result's display, in order."""
    return [s for s in r.view.document(r).sections
            if _lead(s).startswith(("The cell stopped", "Note: "))]


def mistake(r) -> Section:
    found = [s for s in coaching_of(r) if _lead(s).startswith("The cell stopped")]
    assert len(found) == 1, coaching_of(r)
    return found[0]


def notes(r) -> list[Section]:
    return [s for s in coaching_of(r) if _lead(s).startswith("Note: ")]


def unquoted(text: str) -> str:
    """Plain text as one line: inline code's backquotes (if the renderer writes them) and
    the renderer's line breaks dropped."""
    return " ".join(text.replace("`", "").split())


def cell_error(source: str, ns: dict):
    """Run ``source`` as a cell under the guard, as the magic does: (log, error raised)."""
    with keep_graphs("<cell>") as log:
        try:
            exec(compile(source, "<cell>", "exec"), ns)
        except RuntimeError as error:
            log.record_failure(error)
            return log, error
    return log, None


# -- recognising the mistake: one kind at a time -------------------------------------------------

FLOAT_5 = "x = torch.linspace(-2, 2, 5, requires_grad=True)\ny = x**2\n"
CLASSIFIED = [  # (cell, kind, line of the failing call)
    (FLOAT_5 + "y.backward()", MistakeKind.IMPLICIT_SCALAR, 3),
    (FLOAT_5 + "(g,) = torch.autograd.grad(y, x)", MistakeKind.IMPLICIT_SCALAR, 3),
    (FLOAT_5 + "y.backward(torch.ones(3))", MistakeKind.GRADIENT_SHAPE, 3),
    (FLOAT_5 + "y.backward(torch.ones_like(y))\ny.backward(torch.ones_like(y))",
     MistakeKind.SECOND_PASS, 4),
]


@pytest.mark.parametrize("source, kind, line", CLASSIFIED)
def test_classify_names_each_kind_and_its_line(source, kind, line):
    log, error = cell_error(source, {"torch": torch})
    found = mistakes.classify(error, log, source)
    assert found is not None and found.kind is kind and found.line == line
    assert found.source_line(line) == source.splitlines()[line - 1]
    assert found.message().startswith("RuntimeError: ")
    assert found.freed_before_cell is False


def test_classify_leaves_other_errors_alone():
    source = FLOAT_5 + "z = x @ torch.ones(2)"
    log, error = cell_error(source, {"torch": torch})
    assert error is not None and mistakes.classify(error, log, source) is None
    log, error = cell_error(FLOAT_5 + "y.backward()", {"torch": torch})
    assert mistakes.classify(KeyError("y"), log, "") is None  # not a RuntimeError
    other = RuntimeError(str(error))  # the same text, but not raised by the cell's backward
    assert mistakes.classify(other, log, FLOAT_5 + "y.backward()") is None


def test_every_mistake_kind_is_one_of_pytorchs_errors():
    for kind in MistakeKind:
        assert TorchError[kind.name] is not None


def test_a_graph_freed_by_an_earlier_cell_is_told_apart():
    x = torch.tensor([1., 2.], requires_grad=True)
    y = (x**2).sum()
    y.backward()
    log, error = cell_error("y.backward()", {"y": y})
    found = mistakes.classify(error, log, "y.backward()")
    assert found.kind is MistakeKind.SECOND_PASS and found.freed_before_cell
    assert found.freeing_line is None


def test_the_failing_output_of_a_list_is_the_non_scalar_one():
    source = ("x = torch.tensor([1., 2.], requires_grad=True)\ns = (x**2).sum()\nz = x * 3\n"
              "torch.autograd.backward([s, z])")
    log, error = cell_error(source, {"torch": torch})
    found = mistakes.classify(error, log, source)
    assert found.kind is MistakeKind.IMPLICIT_SCALAR and found.failing_index() == 1
    assert found.call_site().y == "z" and tuple(found.failing_tensor().shape) == (2,)
    assert found.given_gradient() is None


# -- the user's own call line: found and rewritten -------------------------------------------------

FOUND_CALLS = [  # (line, kind, which output, style, y)
    ("y.backward()", "backward", 0, "method", "y"),
    ("(a + b).backward(retain_graph=True)", "backward", 0, "method", "a + b"),
    ("torch.autograd.backward([y, z], [g, h])", "backward", 1, "autograd.backward", "z"),
    ("torch.autograd.backward(tensors=y)", "backward", 0, "autograd.backward", "y"),
    ("(g,) = torch.autograd.grad(y, x)", "grad", 0, "grad", "y"),
    ("(g,) = grad(outputs=[y], inputs=[x])", "grad", 0, "grad", "y"),
]


@pytest.mark.parametrize("line, kind, index, style, y", FOUND_CALLS)
def test_find_call_reads_the_call_as_written(line, kind, index, style, y):
    site = cell_source.find_call(line, kind, index)
    assert site is not None and (site.style, site.y) == (style, y)


@pytest.mark.parametrize("line, kind", [
    ("y.backward(", "backward"),  # does not parse
    ("y.sum()", "backward"),  # no such call
    ("y.grad(x)", "grad"),  # a method named grad is not autograd.grad
    ("torch.autograd.grad(inputs=x)", "grad"),  # no outputs given
])
def test_find_call_finds_nothing_where_there_is_no_call(line, kind):
    assert cell_source.find_call(line, kind) is None


SET_ARGUMENTS = [  # (line, kind, keyword, value, position, expected)
    ("    y.backward()", "backward", "retain_graph", "True", None,
     "    y.backward(retain_graph=True)"),
    ("y.backward(v)", "backward", "retain_graph", "True", None,
     "y.backward(v, retain_graph=True)"),
    ("y.backward(v, retain_graph=False)", "backward", "retain_graph", "True", None,
     "y.backward(v, retain_graph=True)"),
    ("y.backward(torch.ones(3))", "backward", "gradient", "g", 0, "y.backward(g)"),
    ("y.backward(gradient=torch.ones(3))", "backward", "gradient", "g", 0,
     "y.backward(gradient=g)"),
    ("(g,) = torch.autograd.grad(y, x)", "grad", "grad_outputs", "v", 2,
     "(g,) = torch.autograd.grad(y, x, grad_outputs=v)"),
]


@pytest.mark.parametrize("line, kind, keyword, value, position, expected", SET_ARGUMENTS)
def test_set_argument_keeps_the_rest_of_the_line(line, kind, keyword, value, position, expected):
    assert cell_source.set_argument(line, kind, keyword, value, position) == expected


@pytest.mark.parametrize("line, kind, index, expected", [
    ("y.backward()", "backward", 0, "y.backward(gradient=O)"),
    ("torch.autograd.backward([y, z])", "backward", 1,
     "torch.autograd.backward([y, z], grad_tensors=[torch.ones_like(y), O])"),
    ("torch.autograd.backward([y, z], [g, h])", "backward", 0,
     "torch.autograd.backward([y, z], [O, h])"),
    ("grad([y], [x], grad_outputs=[q])", "grad", 0, "grad([y], [x], grad_outputs=[O])"),
])
def test_set_gradient_sets_the_failing_outputs_own_gradient(line, kind, index, expected):
    site = cell_source.find_call(line, kind, index)
    assert cell_source.set_gradient(line, kind, site, "O") == expected


def test_names_the_cell_assigns_and_grads_it_never_empties():
    source = ("y = x**2\nfor k in range(2):\n    y.backward(v)\n    print(x.grad, w.grad)\n"
              "w.grad = None")
    assert cell_source.assigned_in(source, "y") and cell_source.assigned_in(source, "k")
    assert not cell_source.assigned_in(source, "x") and not cell_source.assigned_in("y = (", "y")
    assert cell_source.grads_not_zeroed(source) == ["x"]
    assert cell_source.grads_not_zeroed("x.grad.zero_()\nprint(x.grad)") == []


def test_accumulations_find_summed_grads_and_only_those():
    source = ("y = torch.stack([-x**3, 5*x])\n"
              "y.backward(torch.tensor([1., 0.]), retain_graph=True)\n"
              "y.backward(torch.tensor([0., 1.]), retain_graph=True)\n"
              "z = (w**2).sum()\nz.backward()")
    x, w = torch.tensor(1., requires_grad=True), torch.tensor(2., requires_grad=True)
    log, error = cell_error(source, {"torch": torch, "x": x, "w": w})
    assert error is None
    (found,) = accumulation.accumulations({"x": x, "w": w}, log)  # w: one call, nothing summed
    assert found == accumulation.Accumulation("x", 2, False, (2, 3))
    x.grad = None
    assert accumulation.accumulations({"x": x}, log) == []


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
    assert "sum of the 2 backward calls" in text and "x.grad.zero_()" in text
    assert "each of y's 2 components' own" in text  # y = (-x³, 5x): 2 components
    assert CodeBlock("x.grad.zero_()") in note.blocks
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


# -- every bad input gets a clear answer -----------------------------------------------------

@pytest.fixture
def earlier_grad(ip, assert_tensor, run_ok):
    """A tensor with a .grad from an earlier cell: no bad input may change it."""
    run_ok("keep = torch.tensor([1., 2.], requires_grad=True)\n(keep**2).sum().backward()")
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
def test_bad_input_gets_a_short_message_and_loses_nothing(ip, usage_error, earlier_grad, case):
    line, body, words = BAD_CELLS[case]
    if case == "too_large":
        ip.run_line_magic("config", "VJPMagics.memory_budget = 10000")
    try:
        msg = usage_error(f"%%vjp {line}\n{body}")
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


def test_output_not_depending_on_a_named_input(assert_tensor, run_vjp, earlier_grad):
    r = run_vjp("x = torch.ones(3, requires_grad=True)\n"
                "w = torch.ones(2, requires_grad=True)\ny = x**2", line="--wrt x w")
    assert_tensor(r.derivatives["w"], torch.zeros(3, 2))
    assert "y does not depend on w: every derivative is 0." in repr(r)
    assert "every derivative is 0" in unquoted(r._repr_mimebundle_()["text/markdown"])


def test_nan_and_inf_derivatives_are_rendered_and_flagged(assert_tensor, run_vjp):
    r = run_vjp("x = torch.tensor([0., 1., 4.], requires_grad=True)\ny = x.sqrt()")
    d = r.derivatives["x"]
    assert torch.isinf(d[0]) and d[0] > 0  # d√x/dx = 1/(2√x): +∞ at 0
    assert_tensor(d[1:], [0.5, 0.25])
    bundle = r._repr_mimebundle_()
    assert r"\infty" in bundle["text/latex"]
    assert all("have 1 infinite entry:" in bundle[k] for k in ("text/latex", "text/markdown"))
    assert "have 1 infinite entry:" in repr(r)
    r = run_vjp("x = torch.tensor([-1., 0., 1.], requires_grad=True)\n"
                "y = torch.sqrt(x) * 0 + x")
    # √x at -1 is NaN, and its derivative too; at 0, 0·∞ is NaN as well: 2 NaN entries
    assert torch.isnan(r.derivatives["x"][:2]).all()
    assert "NaN" in r._repr_mimebundle_()["text/latex"] and "have 2 NaN entries:" in repr(r)


def test_nan_and_inf_note_counts_each_kind():
    from vjp_magic import differentiate

    # d√x/dx = 1/(2√x): NaN at -1 (outside the domain), +∞ at 0, finite at 4
    x = torch.tensor([-1., 0., 4.], requires_grad=True)
    (note,) = differentiate(x.sqrt(), x).notes
    assert "have 1 NaN entry and 1 infinite entry:" in note
    x = torch.tensor([-1., -2., 0., 0., 0.], requires_grad=True)
    (note,) = differentiate(x.sqrt(), x).notes
    assert "have 2 NaN entries and 3 infinite entries:" in note


def test_finite_derivatives_have_no_note(run_vjp):
    r = run_vjp("x = torch.tensor([1., 4.], requires_grad=True)\ny = x.sqrt()")
    assert not r.notes


def test_syntax_error_is_shown_as_ipython_shows_it(ip):
    result = ip.run_cell("%%vjp\nx = torch.ones(3, requires_grad=True)\ny = (x**2")
    assert type(result.error_in_exec).__name__ == "SyntaxError"  # shown exactly as IPython does
    assert "x" not in ip.user_ns  # nothing ran, as in a normal cell


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_elementwise(assert_tensor, run_vjp, dtype):
    r = run_vjp(f"x = torch.linspace(-2, 2, 5, dtype=torch.{dtype}, requires_grad=True)\n"
                "y = x**2")
    assert r.point_axes["x"] == ((0, 0),)
    assert r.derivatives["x"].dtype == getattr(torch, dtype)
    assert_tensor(r.derivatives["x"], [-4.0, -2.0, 0.0, 2.0, 4.0])  # exact in both dtypes
    markdown = r._repr_mimebundle_()["text/markdown"]
    assert re.search(r"-4\s*&\s*-2\s*&\s*0\s*&\s*2\s*&\s*4\b", markdown), markdown
    assert dtype in markdown


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
    r._repr_mimebundle_(), repr(r)  # renders


def test_our_own_bug_is_a_real_traceback(ip, monkeypatch):
    def broken(*args, **kwargs):
        return 1 / 0

    monkeypatch.setattr(vjp_magic.core.analysis, "differentiate", broken)
    result = ip.run_cell("%%vjp\nx = torch.ones(3, requires_grad=True)\ny = x**2")
    assert isinstance(result.error_in_exec, ZeroDivisionError)
    assert not isinstance(result.error_in_exec, UsageError)
    assert "y" in ip.user_ns


# -- each class of user mistake: a message that says what to do, nothing lost -----------------

def refused(ip, capsys, source: str, keep=()) -> str:
    """Run ``source``: a UsageError whose display shows no frame from the package, and the
    names in ``keep`` still bound. Returns the message."""
    capsys.readouterr()
    result = ip.run_cell(source)
    shown = "".join(capsys.readouterr())
    assert isinstance(result.error_in_exec, UsageError), result.error_in_exec
    assert "Traceback" not in shown and not re.search(r"vjp_magic[/\\][\w/\\]+\.py", shown), shown
    for name in keep:
        assert name in ip.user_ns, name
    return str(result.error_in_exec)


JACOBIAN_EXPRESSIONS = [  # (line, function of the input, input name): '-' inside is Python
    ("torch.clamp(t, -0.5, 0.5) wrt t", lambda t: torch.clamp(t, -0.5, 0.5), "t"),
    ("torch.where(t < 0, -t, t**2) wrt t", lambda t: torch.where(t < 0, -t, t**2), "t"),
    ("-p 3 torch.maximum(t, -t) wrt t", lambda t: torch.maximum(t, -t), "t"),
    ("--threshold 4 -t.flip(0) wrt t", lambda t: -t.flip(0), "t"),
    ("-p3 torch.clamp(t, min=-1) * t[-1] wrt t", lambda t: torch.clamp(t, min=-1) * t[-1], "t"),
    ("--precision=2 torch.nn.functional.leaky_relu(t, 0.1) + (t > 0) wrt t",
     lambda t: torch.nn.functional.leaky_relu(t, 0.1) + (t > 0), "t"),
    ("t.cumsum(-1)", lambda t: t.cumsum(-1), "t"),  # no 'wrt': inputs from the graph
]


@pytest.mark.parametrize("line, fn, name", JACOBIAN_EXPRESSIONS)
def test_jacobian_reads_the_expression_as_python(ip, run_ok, line, fn, name):
    run_ok("t = torch.tensor([-1.5, -0.2, 0.3, 2.0], requires_grad=True)")
    r = run_ok(f"%jacobian {line}")
    t = ip.user_ns["t"]
    torch.testing.assert_close(r.jacobian(name), reference_jacobian(fn, t.detach()))
    assert t.grad is None


def test_jacobian_several_inputs_after_wrt_with_commas_and_brackets(assert_tensor, run_ok):
    run_ok("a = torch.tensor([1., -2.], requires_grad=True)\n"
           "bs = [torch.tensor([3., 4.], requires_grad=True)]")
    r = run_ok("%jacobian (a - bs[0]).abs() * -1 wrt a, bs[0]")
    assert list(r.derivatives) == ["a", "bs[0]"]
    # -|a - b| with a < b: d/da = 1, d/db = -1
    assert_tensor(r.jacobian("a"), torch.eye(2))
    assert_tensor(r.jacobian("bs[0]"), -torch.eye(2))


@pytest.mark.parametrize("line, words", [
    ("--bogus q", ["Unknown option --bogus", "--symbolic", "-p N"]),
    ("--precision q", ["--precision takes a whole number"]),
    ("-p x q", ["-p takes a whole number"]),
    ("--threshold=many q", ["--threshold takes a whole number", "'many'"]),
    ("-p 40 q", ["from 1 to 17"]),
    ("", ["Name the output"]),
    ("q wrt", ["inputs after"]),
    ("wrt q", ["output before"]),
])
def test_jacobian_options_that_cannot_be_read(ip, run_ok, capsys, line, words):
    run_ok("q = torch.ones(2, requires_grad=True)")
    msg = refused(ip, capsys, f"%jacobian {line}", keep=["q"])
    for word in words:
        assert word in msg, msg


def test_jacobian_help_still_documents_the_syntax(ip):
    doc = ip.magics_manager.magics["line"]["jacobian"].__doc__
    assert "wrt" in doc and "--symbolic" in doc and "torch.clamp(x, -1, 1)" in doc


def test_vjp_flags_take_expressions_with_spaces_and_quotes(ip, run_vjp, run_ok):
    run_ok("torch.manual_seed(1)\nnet = torch.nn.Sequential(torch.nn.Linear(3, 2))\n"
           "u = torch.randn(4, 3)")
    r = run_vjp("outs = {'hidden layer': net(u)}\nscore = outs['hidden layer'].sum()",
                line="--wrt net[0].weight net[0].bias --of outs['hidden layer']")
    assert r.output_name == "outs['hidden layer']"
    assert r.derivatives["net[0].weight"].shape[-2:] == (2, 3)
    u, w, b = ip.user_ns["u"], ip.user_ns["net"][0].weight, ip.user_ns["net"][0].bias
    ref = reference_jacobian(lambda b: u @ w.detach().T + b, b.detach())
    torch.testing.assert_close(r.jacobian("net[0].bias"), ref)
    assert w.grad is None


# -- an input expression that makes a new tensor: refused, not a false zero ----------------------

NEW_TENSOR_INPUTS = [  # (setup, magic cell, phrases)
    ("v = torch.rand(4, requires_grad=True)", "%%vjp --wrt v[1]\nout = v.cumsum(0)",
     ["v[1] makes a new tensor", "out was not computed from it", "r.derivatives['v'][..., 1]"]),
    ("m = torch.rand(2, 3, requires_grad=True)", "%jacobian (m**2).mean() wrt m[0, 1]",
     ["m[0, 1] makes a new tensor", "r.derivatives['m'][..., 0, 1]"]),
    ("m = torch.rand(2, 3, requires_grad=True)", "%jacobian m.sum(0) wrt m[1]",
     ["r.derivatives['m'][..., 1, :]"]),
    ("lin = torch.nn.Linear(2, 3)\nq = torch.rand(5, 2)", "%%vjp --wrt lin.weight.T\nz = lin(q)",
     ["lin.weight.T makes a new tensor", "with respect to lin.weight", "false 0"]),
    ("p = torch.rand(3, requires_grad=True)", "%%vjp --wrt p.exp()\nz = p.sin()",
     ["p.exp() makes a new tensor", "with respect to p", "compute z from that tensor"]),
    ("p = torch.rand(3, requires_grad=True)", "%%vjp --wrt p.view(-1) p\nz = p.sin()",
     ["p.view(-1) makes a new tensor"]),
]


@pytest.mark.parametrize("setup, cell, words", NEW_TENSOR_INPUTS)
def test_input_expression_off_the_graph_is_refused(ip, run_ok, capsys, earlier_grad,
                                                   setup, cell, words):
    run_ok(setup)
    msg = refused(ip, capsys, cell)
    for word in words:
        assert word in msg, msg
    assert "does not depend" not in msg and len(msg) < 600
    for value in ip.user_ns.values():
        if isinstance(value, torch.Tensor) and value.is_leaf and value is not ip.user_ns["keep"]:
            assert value.grad is None


def test_input_expressions_on_the_graph_are_differentiated(assert_tensor, run_vjp, run_ok):
    run_ok("c = torch.tensor([1., 2., 3.], requires_grad=True)\nparts = [c * 2]")
    r = run_vjp("z = parts[0] ** 2", line="--wrt parts[0] c")
    assert_tensor(r.derivatives["parts[0]"], [4.0, 8.0, 12.0])  # an intermediate: 2·(2c)
    assert_tensor(r.derivatives["c"], [8.0, 16.0, 24.0])


def test_unused_plain_name_keeps_the_does_not_depend_note(run_vjp, run_ok):
    run_ok("c = torch.ones(2, requires_grad=True)\nunused = torch.ones(3) * c.sum()")
    r = run_vjp("z = c * 3", line="--wrt c unused")
    assert "z does not depend on unused: every derivative is 0." in repr(r)


# -- the output's graph changed in place after it was computed ---------------------------------

IN_PLACE_CELLS = [
    ("", "%%vjp\nw = torch.tensor([1., 2.], requires_grad=True)\nloss = (w**3).sum()\n"
         "loss.backward()\nwith torch.no_grad():\n    w -= 0.1 * w.grad", "loss", "w"),
    ("b = torch.tensor([0.5, 1.5], requires_grad=True)",
     "%%vjp\nenergy = (b * b).mean()\nwith torch.no_grad():\n    b.mul_(0.5)", "energy", "b"),
    ("s = torch.tensor([2., 3.], requires_grad=True)\nr2 = s.pow(2)\n"
     "with torch.no_grad():\n    s.add_(1)", "%jacobian r2 wrt s", "r2", "s"),
]


@pytest.mark.parametrize("setup, cell, output, changed", IN_PLACE_CELLS)
def test_graph_modified_in_place_says_what_to_do(ip, run_ok, capsys, setup, cell, output, changed):
    if setup:
        run_ok(setup)
    msg = refused(ip, capsys, cell, keep=[output, changed])
    grads = ip.user_ns[changed].grad
    for word in [f"{output} can no longer be differentiated", f"({changed})",
                 "modified in place", "after the update", "later cell"]:
        assert word in msg, msg
    assert "inplace operation" not in msg  # PyTorch's wording is explained, not repeated
    assert ip.run_cell(f"{changed}.grad").result is grads  # the magic left .grad alone


def test_pytorch_error_texts_are_matched_from_one_place():
    w = torch.ones(2, requires_grad=True)
    y = (w**2).sum()
    with torch.no_grad():
        w.add_(1)
    with pytest.raises(RuntimeError) as info:
        y.backward()
    assert torch_error(info.value) is TorchError.INPLACE
    z = (w**2).sum()
    z.backward()
    with pytest.raises(RuntimeError) as info:
        z.backward()
    assert torch_error(info.value) is TorchError.SECOND_PASS
    assert torch_error(KeyError("second time")) is None


# -- no output found: the message names what the cell did ---------------------------------------

NO_OUTPUT_CELLS = [  # (magic cell after 'u' exists, phrases)
    ("%%vjp\nflag = u > 0", ["flag is a bool tensor", "comparisons such as u > 0",
                             "torch.where(u > 0, u, 0.0)"]),
    ("%%vjp\nhit = (u ** 2) >= 1", ["hit is a bool tensor", "u"]),
    ("%%vjp\nk = u.argmax()", ["k has dtype torch.int64", "integer", "floating"]),
    ("%%vjp\nn = (u * 3).round().long()", ["n has dtype torch.int64"]),
    ("%%vjp\nsq = u**2\ncube = u**3\nsq, cube", ["ends in a tuple", "--of sq"]),
    ("%%vjp\n(u.sin(), u.cos())", ["ends in a tuple", "--of u.sin()"]),
    ("%%vjp\n[u.sum(), u.max()]", ["ends in a list", "--of u.sum()"]),
    ("%%vjp\ntorch.linalg.slogdet(torch.diag(u))", ["--of (torch.linalg.slogdet"]),
]


@pytest.mark.parametrize("cell, words", NO_OUTPUT_CELLS)
def test_no_output_message_fits_what_the_cell_did(ip, run_ok, capsys, earlier_grad, cell, words):
    run_ok("u = torch.tensor([-1., 0.5, 2.], requires_grad=True)")
    msg = refused(ip, capsys, cell, keep=["u"])
    for word in words:
        assert word in msg, msg
    assert "none of the cell's tensors requires grad" not in msg.lower()
    assert ip.user_ns["u"].grad is None


TARGET_OUTPUTS = [  # (cell, output name): subscript and attribute targets, indexing into a tensor
    ("store = {}\nstore['f'] = torch.tanh(u)", "store['f']"),
    ("import types\nmodel = types.SimpleNamespace()\nmodel.out = torch.tanh(u)", "model.out"),
    ("res = [None]\nres[0] = torch.tanh(u)\nn_items = 1", "res[0]"),
    ("z = torch.zeros(3)\nz[:] = torch.tanh(u)", "z"),
    ("%time th = torch.tanh(u)", "th"),
    ("exec('th2 = torch.tanh(u)')", "th2"),
    ("globals()['th3'] = torch.tanh(u)", "th3"),
    ("_th = torch.tanh(u)", "_th"),
    ("store = {'f': 0}\nstore['f'] += torch.tanh(u)", "store['f']"),
    ("store = {}\nstore['g'], store['f'] = u * 2, torch.tanh(u)", "store['f']"),
    ("store = {}\nstore['f'] = torch.zeros(3)\nstore['f'][:] = torch.tanh(u)", "store['f']"),
    ("store = {}\nfor k in ['a', 'f']:\n    store[k] = torch.tanh(u)", "store[k]"),
    ("z = torch.zeros(3)\nz[0:3] += torch.tanh(u)", "z"),
    ("import types\nm = types.SimpleNamespace(d={})\nm.d['f'] = torch.tanh(u)", "m.d['f']"),
]


@pytest.mark.parametrize("cell, name", TARGET_OUTPUTS)
def test_output_found_however_the_cell_assigned_it(ip, assert_tensor, run_vjp, run_ok, cell, name):
    run_ok("u = torch.tensor([-1., 0.5, 2.], requires_grad=True)")
    r = run_vjp(cell)
    assert r.output_name == name and list(r.derivatives) == ["u"]
    u = ip.user_ns["u"].detach()
    assert_tensor(r.derivatives["u"], 1 - torch.tanh(u) ** 2)
    assert ip.user_ns["u"].grad is None


def test_underscore_input_from_an_earlier_cell_is_found(assert_tensor, run_vjp, run_ok):
    run_ok("_w = torch.tensor([1., 2.], requires_grad=True)")
    r = run_vjp("_loss = (_w ** 2).sum()")
    assert r.output_name == "_loss" and list(r.derivatives) == ["_w"]
    assert_tensor(r.derivatives["_w"], [2.0, 4.0])


@pytest.mark.parametrize("name, visible", [
    ("_", False), ("__", False), ("___", False), ("_7", False), ("_i", False), ("_ii", False),
    ("_iii", False), ("_i12", False), ("_ih", False), ("_oh", False), ("_dh", False),
    ("In", False), ("Out", False), ("exit", False), ("quit", False), ("get_ipython", False),
    ("__name__", False), ("_x", True), ("_loss", True), ("x_", True), ("_i_x", True),
    ("inputs", True), ("_7a", True),
])
def test_only_ipythons_own_names_are_hidden(name, visible):
    from vjp_magic.core.tagging import is_visible_name

    assert is_visible_name(name) is visible


# -- memory: sizes shown truthfully, a budget of 0 or below refused -----------------------------

@pytest.mark.parametrize("nbytes, shown", [
    (0, "0 bytes"), (1, "1 byte"), (36, "36 bytes"), (999, "999 bytes"), (1000, "1 kB"),
    (1536, "1.54 kB"), (40_000, "40 kB"), (123_456, "123 kB"), (2_500_000, "2.5 MB"),
    (512e6, "512 MB"), (1.6e11, "160.0 GB"),
])
def test_sizes_are_shown_truthfully(nbytes, shown):
    from vjp_magic.core.memory import gb

    assert gb(nbytes) == shown


def test_refusal_over_a_tiny_budget_names_true_sizes(ip, capsys):
    ip.run_line_magic("config", "VJPMagics.memory_budget = 500")
    try:
        msg = refused(ip, capsys, "%%vjp --full\ng = torch.ones(2000, requires_grad=True)\n"
                                  "h = g.exp()", keep=["g", "h"])
    finally:
        ip.run_line_magic("config", "VJPMagics.memory_budget = 0.25")
    assert "would need 16 MB, over the memory budget of 500 bytes" in msg, msg
    assert "0 kB" not in msg
    assert ip.user_ns["g"].grad is None


@pytest.mark.parametrize("budget", ["0", "-1", "-2e9", "float('nan')"])
def test_budget_of_zero_or_below_is_refused(ip, assert_tensor, run_vjp, capsys, budget):
    ip.run_line_magic("config", "VJPMagics.memory_budget = 1e9")
    capsys.readouterr()
    try:
        ip.run_line_magic("config", f"VJPMagics.memory_budget = {budget}")
        err = capsys.readouterr().err
        assert "memory_budget must be positive" in err and "It stays 1000000000.0" in err
        assert ip.run_line_magic("config", "VJPMagics.memory_budget") == 1e9
        r = run_vjp("g = torch.ones(3, requires_grad=True)\nh = g * 2")  # still works
        assert_tensor(r.derivatives["g"], [2.0, 2.0, 2.0])
    finally:
        ip.run_line_magic("config", "VJPMagics.memory_budget = 0.25")


# -- top-level await, as in a plain IPython cell ------------------------------------------------

def test_top_level_await_runs_as_in_a_plain_cell(ip, assert_tensor, run_vjp):
    r = run_vjp("import asyncio\nawait asyncio.sleep(0)\n"
                "g = torch.tensor([0., 1.], requires_grad=True)\nh = g.exp()")
    assert_tensor(r.derivatives["g"], torch.tensor([0.0, 1.0]).exp())
    r = run_vjp("async def twice(t):\n    return t * 2\nawait twice(g)")
    assert_tensor(r.derivatives["g"], [2.0, 2.0])
    assert ip.user_ns["g"].grad is None


# -- the v of each of the cell's own backward calls (run/seeds.py), summed_calls ---------------

@pytest.mark.parametrize("v, kind", [
    (None, "ones"), (torch.ones(3), "ones"), (torch.tensor([0.0, 1.0, 0.0]), "zero-one"),
    (torch.tensor([1.0, 0.0, 1.0]), "zero-one"), (torch.tensor([0.5, 1.0, 2.0]), "general"),
    (2 * torch.ones(3), "general"),
])
def test_gradient_kind(v, kind):
    assert seeds.gradient_kind(v) == kind


def test_seeds_tell_the_output_its_sum_and_other_tensors_apart():
    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    y = x**2
    z = torch.sin(x)
    with keep_graphs() as log:
        y.backward(torch.ones_like(y), retain_graph=True)
        y.sum().backward(retain_graph=True)
        z.backward(torch.tensor([0.5, -1.0, 2.0]))
        y.mean().backward()
    found = [(s.target, s.kind) for s in seeds.seeds(log, y)]
    assert found == [("output", "ones"), ("sum", "ones"), ("other", "general"),
                     ("other", "ones")]
    assert all(backward_log.reaches(s.call, x) for s in seeds.seeds(log, y))


def test_summed_calls_reads_any_value_against_the_log():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    y = x**3
    with keep_graphs() as log:
        y.backward(torch.ones_like(y), retain_graph=True)
        y.backward(torch.ones_like(y))
    twice = 2 * 3 * x.detach()**2  # d/dx x³ = 3x², added twice
    found = accumulation.summed_calls(twice, "x", x, log)
    assert (found.summed, found.with_before) == (2, False)
    assert accumulation.summed_calls(3 * x.detach()**2, "x", x, log).summed == 1
    assert accumulation.summed_calls(x.detach(), "x", x, log) is None
    assert accumulation.summed_calls(twice, "x", x, None) is None
