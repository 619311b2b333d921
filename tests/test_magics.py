"""The IPython layer: registration, flags, namespace handling, errors, x.grad untouched."""
from __future__ import annotations

import pytest
import torch
from IPython.core.error import UsageError
from torch.autograd.functional import jacobian as reference_jacobian

from conftest import assert_tensor, run_ok, run_vjp


def usage_error(ip, source: str) -> str:
    result = ip.run_cell(source)
    assert isinstance(result.error_in_exec, UsageError), result.error_in_exec
    return str(result.error_in_exec)


def test_load_registers_and_unload_removes(ip):
    magics = ip.magics_manager.magics
    assert "vjp" in magics["cell"] and "jacobian" in magics["line"]
    ip.run_line_magic("unload_ext", "vjp_magic")
    assert "vjp" not in magics["cell"] and "jacobian" not in magics["line"]
    ip.run_line_magic("load_ext", "vjp_magic")
    assert "vjp" in magics["cell"]


def test_import_does_not_register(ip):
    ip.run_line_magic("unload_ext", "vjp_magic")
    import vjp_magic  # noqa: F401

    assert "vjp" not in ip.magics_manager.magics["cell"]
    ip.run_line_magic("load_ext", "vjp_magic")


def test_cell_runs_like_a_normal_cell(ip, capsys):
    r = run_vjp(ip, "x = torch.linspace(-2, 2, 5, requires_grad=True)\nprint('hello')\ny = x**2")
    assert "hello" in capsys.readouterr().out
    assert "x" in ip.user_ns and "y" in ip.user_ns
    assert ip.user_ns["_"] is r
    assert_tensor(r.derivatives["x"], [-4.0, -2.0, 0.0, 2.0, 4.0])


def test_users_exception_fails_the_cell_and_keeps_earlier_assignments(ip):
    result = ip.run_cell("%%vjp\nx = torch.ones(3, requires_grad=True)\nraise KeyError('mine')")
    assert isinstance(result.error_in_exec, KeyError)
    assert "x" in ip.user_ns


def test_syntax_error_is_shown_as_a_syntax_error(ip, capsys):
    result = ip.run_cell("%%vjp\nx = (1,\n")
    error = result.error_in_exec
    assert type(error).__name__ == "SyntaxError" and isinstance(error.syntax_error, SyntaxError)
    shown = capsys.readouterr().out
    plain = ip.run_cell("x = (1,\n")
    assert isinstance(plain.error_before_exec, SyntaxError)
    # exactly IPython's display for the same line: no frames from inside the magic
    assert "SyntaxError: '(' was never closed" in shown and "x = (1," in shown
    assert "magics.py" not in shown and "run_cell_magic" not in shown


def test_final_expression_is_the_output(ip):
    r = run_vjp(ip, "x = torch.arange(3., requires_grad=True)\nx.exp()")
    torch.testing.assert_close(r.derivatives["x"], torch.arange(3.0).exp())


def test_x_grad_untouched_by_the_magic(ip):
    run_vjp(ip, "x = torch.linspace(0, 1, 4, requires_grad=True)\ny = torch.sin(x)")
    assert ip.user_ns["x"].grad is None
    # the graph is still usable for the user's next cell
    run_ok(ip, "y.backward(torch.ones_like(y))")
    torch.testing.assert_close(ip.user_ns["x"].grad, torch.cos(torch.linspace(0, 1, 4)))


def test_existing_grad_is_left_as_it_was(ip):
    run_ok(ip, "x = torch.tensor([1., 2.], requires_grad=True)\n(x**3).sum().backward()")
    before = ip.user_ns["x"].grad.clone()
    run_vjp(ip, "y = x**2")
    assert torch.equal(ip.user_ns["x"].grad, before)


def test_inputs_from_an_earlier_cell(ip):
    run_ok(ip, "a = torch.tensor([1., 2., 3.], requires_grad=True)\nb = torch.tensor(2., requires_grad=True)")
    r = run_vjp(ip, "y = b * a**2")
    assert set(r.derivatives) == {"a", "b"}
    ref_a, ref_b = reference_jacobian(lambda a, b: b * a**2, (ip.user_ns["a"].detach(), ip.user_ns["b"].detach()))
    torch.testing.assert_close(r.jacobian("a"), ref_a)
    torch.testing.assert_close(r.jacobian("b"), ref_b)


def test_wrt_and_of_flags(ip):
    run_ok(ip, "a = torch.tensor([1., 2.], requires_grad=True)\nb = torch.tensor([3., 4.], requires_grad=True)")
    r = run_vjp(ip, "y = a * b\nz = y.sum()", line="--wrt a --of y")
    assert list(r.derivatives) == ["a"]
    assert_tensor(r.derivatives["a"], [3.0, 4.0])
    assert r.output_name == "y"


def test_wrt_accepts_attribute_expressions(ip):
    run_ok(ip, "torch.manual_seed(0)\nlayer = torch.nn.Linear(3, 2)\nx = torch.randn(4, 3)")
    r = run_vjp(ip, "y = layer(x)", line="--wrt layer.weight")
    assert r.derivatives["layer.weight"].shape[-2:] == (2, 3)
    x = ip.user_ns["x"]
    w = ip.user_ns["layer"].weight.detach()
    b = ip.user_ns["layer"].bias.detach()
    ref = reference_jacobian(lambda w: x @ w.T + b, w)
    torch.testing.assert_close(r.jacobian("layer.weight"), ref)


def test_full_flag_gives_plain_jacobian(ip):
    r = run_vjp(ip, "x = torch.linspace(-1, 1, 3, requires_grad=True)\ny = x**2", line="--full")
    assert r.point_axes["x"] == ()
    assert_tensor(r.derivatives["x"], torch.diag(torch.tensor([-2.0, 0.0, 2.0])))


def test_precision_flag(ip):
    r = run_vjp(ip, "x = torch.tensor([1/3], dtype=torch.float64, requires_grad=True)\ny = x**2 / 2", line="-p 2")
    assert "0.33" in r._repr_latex_() and "0.333" not in r._repr_latex_()


def test_config_traitlet_precision(ip):
    ip.run_line_magic("config", "VJPMagics.precision = 6")
    r = run_vjp(ip, "x = torch.tensor([1/3], dtype=torch.float64, requires_grad=True)\ny = x**2 / 2")
    assert "0.333333" in r._repr_latex_()
    ip.run_line_magic("config", "VJPMagics.precision = 4")


def test_help_is_available(ip):
    doc = ip.magics_manager.magics["cell"]["vjp"].__doc__
    assert "--wrt" in doc and "--full" in doc and "--precision" in doc
    assert "%%vjp [--wrt" in doc  # a cell magic's usage line, as %%vjp? shows it
    assert "wrt" in ip.magics_manager.magics["line"]["jacobian"].__doc__


# -- %jacobian ------------------------------------------------------------------------------

def test_jacobian_on_names(ip):
    run_ok(ip, "x = torch.tensor([1., 2., 3.], requires_grad=True)\ny = torch.softmax(x, 0)")
    r = run_ok(ip, "%jacobian y x")
    ref = reference_jacobian(lambda t: torch.softmax(t, 0), ip.user_ns["x"].detach())
    torch.testing.assert_close(r.jacobian("x"), ref)
    latex = r._repr_latex_()
    assert "J = " in latex and latex.count(r"\\") >= 2


def test_jacobian_on_an_expression(ip):
    run_ok(ip, "x = torch.tensor([1., -2.], requires_grad=True)")
    r = run_ok(ip, "%jacobian (x**2).sum() wrt x")
    assert_tensor(r.jacobian("x"), [2.0, -4.0])


def test_jacobian_infers_inputs_and_labels_matrix_shapes(ip):
    run_ok(ip, "W = torch.ones(2, 2, requires_grad=True)\nz = W * 3")
    r = run_ok(ip, "%jacobian z")
    assert_tensor(r.jacobian("W"), 3 * torch.eye(4).reshape(2, 2, 2, 2))
    latex = r._repr_latex_()
    assert "z_{1,1}" in latex and "W_{2,2}" in latex  # labelled with the tensors' own names


# -- user mistakes ----------------------------------------------------------------------------

def test_no_tensor_requires_grad(ip):
    msg = usage_error(ip, "%%vjp\nx = torch.ones(3)\ny = x**2")
    assert "requires_grad=True" in msg
    assert "x" in ip.user_ns and "y" in ip.user_ns


def test_output_under_no_grad(ip):
    msg = usage_error(ip, "%%vjp --of y\nx = torch.ones(3, requires_grad=True)\nwith torch.no_grad():\n    y = x**2")
    assert "no_grad" in msg


def test_unknown_wrt_name(ip):
    msg = usage_error(ip, "%%vjp --wrt q\nx = torch.ones(3, requires_grad=True)\ny = x**2")
    assert "'q'" in msg


def test_unknown_jacobian_name(ip):
    assert "'nope'" in usage_error(ip, "%jacobian nope")


def test_output_not_a_tensor(ip):
    msg = usage_error(ip, "%%vjp --of y\nx = torch.ones(3, requires_grad=True)\ny = 3.0")
    assert "not a tensor" in msg


def test_integer_input(ip):
    msg = usage_error(ip, "%%vjp --wrt n\nx = torch.ones(3, requires_grad=True)\nn = torch.arange(3)\ny = x * n")
    assert "floating" in msg


def test_bad_option(ip):
    result = ip.run_cell("%%vjp --nonsense\nx = 1")
    assert isinstance(result.error_in_exec, UsageError)


@pytest.mark.parametrize(
    "cell, words",
    [
        ("%%vjp\nx = torch.randn(3, requires_grad=True)\ny = (x > 0).int()", ["torch.int32", "integer"]),
        ("%%vjp\nx = torch.randn(3, requires_grad=True)\ny = (x**2, x**3)", ["tuple", "--of y[0]"]),
        ("%%vjp --of y\nx = torch.randn(3, requires_grad=True)\ny = (x**2, x**3)", ["tuple", "y[0]"]),
        ("%%vjp --wrt net.0.weight\nnet = torch.nn.Sequential(torch.nn.Linear(2, 2))\n"
         "y = net(torch.randn(3, 2))", ["net[0].weight"]),
        ("x = torch.ones(2, requires_grad=True)\n%jacobian --nonsense x",
         ["Unknown option --nonsense", "--symbolic"]),
        ("%%vjp -p 0\nx = torch.ones(2, requires_grad=True)\ny = x * 2", ["precision"]),
        ("%%vjp --threshold 0\nx = torch.ones(2, requires_grad=True)\ny = x * 2", ["threshold"]),
    ],
)
def test_mistakes_get_a_message_that_says_what_to_do(ip, cell, words):
    *setup, magic_cell = cell.split("\n%jacobian") if "%jacobian" in cell else ("", cell)
    if setup and setup[0]:
        run_ok(ip, setup[0])
        magic_cell = "%jacobian" + magic_cell
    msg = usage_error(ip, magic_cell)
    for word in words:
        assert word in msg


def test_output_that_is_the_input_itself_has_derivative_one(ip):
    r = run_vjp(ip, "x = torch.randn(3, requires_grad=True)", line="--of x")
    assert_tensor(r.derivatives["x"], [1.0, 1.0, 1.0])


def test_expression_output_gets_a_name_in_the_hand_written_line(ip):
    r = run_vjp(ip, "x = torch.randn(3, requires_grad=True)\ny = x**2\ny.sum()")
    latex = r._repr_latex_()
    assert r"out\phantom{0}{=}\phantom{0}y{.}sum()" in latex and r"out{.}backward()" in latex
    torch.testing.assert_close(r.derivatives["x"], 2 * ip.user_ns["x"].detach())
