"""Advice that is code must be Python that, followed, gives a result (s32, G7's class).

Each test does what the message says and runs the cell again: the advice is judged by its
outcome, not by its words.
"""
from __future__ import annotations

import re

import pytest
import torch

import vjp_magic


def _followed(ip, body: str, message: str) -> str:
    """The cell's body with the advice followed: an amended line replaces the line it amends;
    'Delete the line L' / 'delete L' removes L."""
    lines = body.split("\n")
    for gone in re.findall(r"[Dd]elete (?:the line )?(.+?)(?::|, which)", message):
        lines = [line for line in lines if line.strip() != gone.strip()]
    amended = re.search(r"requires_grad=True: (\w+) = (.+?)(?:, and delete|\. \(If|$)", message) \
        or re.search(r"require grad: (\w+) = (.+?)(?:, and delete|\. \(If|$)", message)
    if amended:
        name, value = amended.groups()
        compile(f"{name} = {value}", "<advice>", "exec")
        lines = [f"{name} = {value}" if line.startswith(f"{name} = ") else line
                 for line in lines]
    return "\n".join(lines)


@pytest.mark.parametrize("body", [
    "x = torch.ones(3, requires_grad=False)\ny = x**2",
    "x = torch.rand(2, 3, requires_grad=False, dtype=torch.float64)\ny = x.sin()",
    "x = torch.zeros_like(torch.ones(3), requires_grad=False)\ny = x.exp()",
    "flag = False\nx = torch.ones(3, requires_grad=flag)\ny = x**2",
    "x = torch.ones(3).requires_grad_(False)\ny = x**2",
    "x = torch.tensor([1., 2., 3.]).requires_grad_()\nx.requires_grad = False\ny = x**2",
    "x = torch.ones(3, requires_grad=True)\nx.requires_grad_(False)\ny = x**2",
    "x = torch.ones(3, requires_grad=True)\nx.detach_()\ny = x**2",
    "x = torch.ones(3)\nx.requires_grad_(False)\ny = x**2",
    "x = torch.ones(3); w = torch.ones(3)\ny = x**2",
], ids=["factory-false", "factory-false-kw-after", "like", "variable", "requires_grad_-false",
        "attribute-off", "method-off", "detach_", "plain-then-off", "two-on-a-line"])
def test_requires_grad_advice_followed_gives_a_result(ip, usage_error, body):
    message = usage_error(f"%%vjp\n{body}")
    assert "requires_grad=False, requires_grad=True" not in message
    assert ".requires_grad_().requires_grad_()" not in message
    followed = _followed(ip, body, message)
    assert followed != body, message
    result = ip.run_cell(f"%%vjp\n{followed}")
    assert result.success, (message, followed, result.error_in_exec)
    assert result.result.derivatives


# -- a tuple, list or dict output: advice in the caller's own syntax -------------------------------
X = "x = torch.tensor([1., 2., 3.], requires_grad=True)\ny = x**2\nz = x*3"


@pytest.mark.parametrize("of", ["y,z", "y, z", "(y, z)", "[y, z]", "[z]"])
def test_of_a_tuple_is_told_an_of_that_works(ip, usage_error, of):
    message = usage_error(f"%%vjp --of {of}\n{X}")
    advised = re.search(r"\(--of (.+?)\)", message).group(1)
    result = ip.run_cell(f"%%vjp --of {advised}\n{X}")
    assert result.success, (message, result.error_in_exec)


def test_of_a_dict_is_told_its_key(ip, usage_error):
    body = "x = torch.tensor([1., 2., 3.], requires_grad=True)\nd = {'a': x**2}"
    message = usage_error(f"%%vjp --of d\n{body}")
    advised = re.search(r"\(--of (.+?)\)", message).group(1)
    assert ip.run_cell(f"%%vjp --of {advised}\n{body}").success, message


@pytest.mark.parametrize("line, want", [
    ("y, x", "%jacobian y wrt x"),
    ("y,x", "%jacobian y wrt x"),
    ("y, x, w", "%jacobian y wrt x w"),
])
def test_jacobian_with_commas_is_told_its_own_syntax(ip, run_ok, usage_error, line, want):
    run_ok(X + "\nw = torch.ones(3, requires_grad=True)")
    message = usage_error(f"%jacobian {line}")
    assert "--of" not in message and want in message, message
    assert ip.run_cell(want).success


@pytest.mark.parametrize("call", [vjp_magic.differentiate, vjp_magic.hessian])
@pytest.mark.parametrize("kind", [tuple, list])
def test_python_gets_python_advice_for_a_sequence(call, kind):
    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    with pytest.raises(vjp_magic.VJPUsageError) as caught:
        call(kind([(x**2).sum(), (x * 3).sum()]), x)
    text = str(caught.value)
    assert "--of" not in text and "%%vjp" not in text and "torch.stack" in text, text


# -- a converted input is a copy, not a leaf -------------------------------------------------------
@pytest.mark.parametrize("made", [".double()", ".to(torch.float64)", ".view(3)", ".clone()",
                                  " * 2"])
def test_a_copy_of_an_unnamed_leaf_is_named_with_what_to_do(ip, usage_error, made):
    body = f"x = torch.tensor([1., 2., 3.], requires_grad=True){made}\ny = x**2"
    message = usage_error(f"%%vjp\n{body}")
    assert "x is not a leaf" in message and "--wrt x" in message, message
    assert "none of them is bound to a name" not in message
    r = ip.run_cell(f"%%vjp --wrt x\n{body}")  # the advice, followed
    assert r.success, r.error_in_exec
    torch.testing.assert_close(r.result.derivatives["x"],
                               2 * ip.user_ns["x"].detach())


def test_a_converted_input_says_how_to_make_it_the_leaf(usage_error):
    message = usage_error("%%vjp\nx = torch.tensor([1., 2.], requires_grad=True).double()\n"
                          "y = x**2")
    assert "dtype=torch.float64, requires_grad=True" in message, message


def test_a_copy_beside_a_named_input_is_noted_not_dropped(run_vjp):
    r = run_vjp("w = torch.ones(3, requires_grad=True)\nh = w * 2\n"
                "x = torch.tensor([1., 2., 3.], requires_grad=True).double()\n"
                "y = h.double() * x")
    assert list(r.inputs) == ["w"]
    (note,) = [n for n in r.notes if "not a leaf" in n]
    assert note.startswith("y also depends on x, not a leaf") and "--wrt w x " in note, note


# -- the cause named: requires_grad too late, a copy by torch.tensor, a new tensor as input -------
@pytest.mark.parametrize("body", [
    "x = torch.tensor([1., 2., 3.], requires_grad=True)\ny = torch.sin(x)\ndel x",
    "y = torch.sin(torch.tensor([1., 2., 3.], requires_grad=True))",
    "x = torch.tensor([1., 2., 3.], requires_grad=True)\ny = x.double()\nx = 0",
])
def test_the_output_is_never_its_own_input(usage_error, body):
    message = usage_error(f"%%vjp\n{body}")
    assert "--wrt y" not in message and "y is not a leaf" not in message, message


@pytest.mark.parametrize("late", ["x.requires_grad_()", "x.requires_grad = True",
                                  "x.requires_grad_(True)"])
@pytest.mark.parametrize("compute", ["y = x**2", "y = torch.sin(x) * 2"])
def test_requires_grad_after_the_output_names_the_two_lines(ip, usage_error, late, compute):
    body = f"x = torch.tensor([1., 2., 3.])\n{compute}\n{late}"
    message = usage_error(f"%%vjp\n{body}")
    assert "no_grad" not in message and "Move line 3 before line 2" in message, message
    lines = body.split("\n")
    assert ip.run_cell("%%vjp\n" + "\n".join([lines[0], lines[2], lines[1]])).success


@pytest.mark.parametrize("rhs, kept", [
    ("torch.tensor(x**2)", "y = x**2"),
    ("torch.tensor([xi**2 for xi in x])", "y = torch.stack([xi**2 for xi in x])"),
    ("torch.tensor([x[0], x[1] * 2])", "y = torch.stack([x[0], x[1] * 2])"),
])
def test_an_output_copied_by_torch_tensor_is_told_the_computation_to_keep(ip, usage_error,
                                                                          rhs, kept):
    head = "x = torch.tensor([1., 2., 3.], requires_grad=True)\n"
    message = usage_error(f"%%vjp\n{head}y = {rhs}")
    assert "torch.tensor" in message and "no_grad" not in message and kept in message, message
    assert ip.run_cell(f"%%vjp\n{head}{kept}").success


XW = "x = torch.tensor([1., 2., 3.], requires_grad=True)\nw = torch.tensor([0.5, 1., 2.])\n"


@pytest.mark.parametrize("expression", ["x.detach()", "x.data", "x.detach().requires_grad_()",
                                        "x.data.requires_grad_()", "x.clone().detach()"])
@pytest.mark.parametrize("magic", ["%jacobian x*w wrt {}", "%%vjp --wrt {}\ny = x*w"])
def test_a_new_tensor_as_input_is_refused_and_x_advised(run_ok, usage_error, expression,
                                                        magic):
    run_ok(XW)
    message = usage_error(magic.format(expression))
    assert "false 0" in message and "requires_grad_() before" not in message, message
    assert "wrt x)" in message, message


def test_a_module_parameter_as_an_input_expression_is_still_taken(run_ok):
    run_ok(XW + "lin = torch.nn.Linear(3, 1)\nz = x * w")
    r = run_ok("%jacobian z wrt x lin.weight")
    assert not r.inputs["lin.weight"].tensor.grad_fn and r.inputs["lin.weight"].unused


# -- a second derivative without create_graph (wired into execute.nothing_to_differentiate by P3) -
@pytest.mark.parametrize("lines, want", [
    ("g, = torch.autograd.grad(y.sum(), x)\ng.sum().backward()",
     "torch.autograd.grad(y.sum(), x, create_graph=True)"),
    ("(g,) = torch.autograd.grad(y.sum(), [x])\ntorch.autograd.grad(g.sum(), x)",
     "torch.autograd.grad(y.sum(), [x], create_graph=True)"),
    ("y.sum().backward()\nx.grad.sum().backward()", "create_graph=True to the first backward"),
])
def test_a_second_derivative_without_create_graph_is_told_create_graph(lines, want):
    from vjp_magic.run.grad_advice import second_derivative_advice

    source = f"x = torch.tensor([1., 2., 3.], requires_grad=True)\ny = x**3\n{lines}"
    advice = second_derivative_advice(source, 4)
    assert advice is not None and want in advice and "%hessian" in advice, advice
    fixed = source.replace("grad(y.sum(), x)", "grad(y.sum(), x, create_graph=True)").replace(
        "grad(y.sum(), [x])", "grad(y.sum(), [x], create_graph=True)").replace(
        "y.sum().backward()", "y.sum().backward(create_graph=True)")
    exec(fixed, {"torch": torch})  # followed, the second pass runs


def test_a_plain_missing_graph_is_not_called_a_second_derivative():
    from vjp_magic.run.grad_advice import second_derivative_advice

    assert second_derivative_advice("x = torch.ones(3)\ny = x**3\ny.sum().backward()", 3) is None


@pytest.mark.parametrize("keyword", ["", ", create_graph=False"])
def test_a_gradient_made_without_a_graph_is_advised_valid_code(keyword):
    """G8: torch.autograd.grad(..., create_graph=False) counted as create_graph given, and
    the advice would have appended a second create_graph keyword (a SyntaxError)."""
    from vjp_magic.run.grad_advice import second_derivative_advice

    source = ("x = torch.ones(3, requires_grad=True)\ny = (x**3).sum()\n"
              f"(g,) = torch.autograd.grad(y, x{keyword})\ng.sum().backward()")
    advice = second_derivative_advice(source, 4)
    assert advice is not None
    line = advice.split("Make it with ", 1)[1].split(", or take", 1)[0]
    compile(line, "<advice>", "exec")  # valid Python
    assert line.count("create_graph") == 1 and "create_graph=True" in line, line
