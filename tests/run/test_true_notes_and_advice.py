"""What the display and the messages claim is true: no note about the user's own graph or its
hooks where no backward toward the inputs passes through it; the detach advice, followed,
gives a result; a meta tensor is a usage error."""
from __future__ import annotations

import pytest
import torch
from IPython.core.error import UsageError

LEAF = "x = torch.linspace(-2, 2, 5, requires_grad=True)\nz = torch.randn(5, requires_grad=True)\n"


def _text(r) -> str:
    return " ".join(r._repr_mimebundle_()["text/plain"].split())


@pytest.mark.parametrize("line, y", [
    ("--wrt x", "z**2"), ("--of y[0]", "z**2 + x"), ("--of y.sum() * 2", "z**2 + x"),
    ("--of (y * x).sum()", "z**2 + x"), ("--of y[1:3]", "z * x"),
])
def test_no_note_about_a_graph_the_cell_built(run_vjp, line, y):
    r = run_vjp(LEAF + f"y = {y}", line)
    assert "built outside what vjp_magic recorded" not in _text(r)
    assert "any hooks on it ran" not in _text(r)


def test_an_of_expression_gives_autograds_derivatives(ip, run_vjp):
    r = run_vjp(LEAF + "y = z**2 + x**3", "--of (y * x).sum()")
    x, z = ip.user_ns["x"], ip.user_ns["z"]
    expected = torch.autograd.grad(((z**2 + x**3) * x).sum(), [x, z])
    torch.testing.assert_close(r.derivatives["x"], expected[0])
    torch.testing.assert_close(r.derivatives["z"], expected[1])


HOOKED = """calls = []
lin = torch.nn.Linear(5, 5)
lin.register_full_backward_hook(lambda *a: calls.append('module'))
h = z * 3
h.register_hook(lambda g: calls.append('h'))
z.register_hook(lambda g: calls.append('z'))
"""


def test_hooks_off_the_way_are_not_named_and_do_not_run(ip, run_vjp):
    r = run_vjp(LEAF + HOOKED + "y = lin(h**2)", "--wrt x")
    assert "hook" not in _text(r) and ip.user_ns["calls"] == []
    assert torch.count_nonzero(r.jacobian("x")) == 0


def test_hooks_on_the_way_are_still_named(run_vjp):
    r = run_vjp(LEAF + HOOKED + "y = lin(h**2 + x)", "--wrt z")
    assert "Gradient hooks on the way (z, h, a module's backward hook)" in _text(r)


@pytest.mark.parametrize("line", [
    "y = x.detach().requires_grad_()", "y = x.data.requires_grad_()", "y = x.detach()",
    "y = torch.nn.Parameter(x.detach() * 2)", "y = torch.nn.Parameter(x.detach()).requires_grad_()",
    "y = x.detach().clone().requires_grad_()", "y = (x.detach() ** 2).requires_grad_(True)",
])
def test_the_detach_advice_leads_to_a_result(ip, usage_error, line):
    cell = "x = torch.linspace(-2, 2, 5, requires_grad=True)\n"
    message = usage_error("%%vjp\n" + cell + line)
    advice = message.split("Use x itself: ", 1)[1].rstrip(".")
    result = ip.run_cell("%%vjp\n" + cell + advice)
    assert result.success, (advice, result.error_in_exec)


def test_a_leaf_of_its_own_is_named(usage_error):
    message = usage_error("%%vjp\n" + LEAF + "y = torch.nn.Parameter(x * 2)")
    assert "y requires grad but is a leaf of its own" in message and "nn.Parameter" in message


@pytest.mark.parametrize("source", [
    "%%vjp\nx = torch.randn(3, requires_grad=True, device='meta')\ny = x**2",
    "%%vjp --wrt lin\nlin = torch.nn.Linear(3, 2, device='meta')\n"
    "y = lin(torch.randn(4, 3, device='meta'))",
    "%jacobian m**2 wrt m", "%hessian (m**3).sum() wrt m",
])
def test_meta_tensors_get_a_message(ip, source):
    ip.run_cell("m = torch.randn(3, requires_grad=True, device='meta')")
    result = ip.run_cell(source)
    assert isinstance(result.error_in_exec, UsageError), repr(result.error_in_exec)[:200]
    assert "meta tensor" in str(result.error_in_exec)


@pytest.mark.parametrize("setup, cell, advice", [
    ("", "w = torch.randn(3)\nloss = (w * 2).sum()", "w = torch.randn(3, requires_grad=True)"),
    ("", "x = torch.arange(5.)\ny = x**2", "x = torch.arange(5., requires_grad=True)"),
    ("xb = torch.randn(4)", "xb2 = xb.clone()\nloss = (xb2 * 2).sum()",
     "xb2 = xb.clone().requires_grad_()"),
    ("xb = torch.randn(4)", "loss = (xb * 2).sum()", "xb.requires_grad_()"),
])
def test_no_grad_advice_in_the_cells_own_names_leads_to_a_result(ip, run_ok, usage_error,
                                                                 setup, cell, advice):
    if setup:
        run_ok(setup)
    message = usage_error("%%vjp\n" + cell)
    assert "None of the cell's tensors requires grad" in message and advice in message, message
    lines = cell.split("\n")
    same = advice.split(" = ")[0] == lines[0].split(" = ")[0]  # the line amended, else added
    fixed = "\n".join([advice] + lines[1:] if same else [advice] + lines)
    result = ip.run_cell("%%vjp\n" + fixed)
    assert result.success, (fixed, result.error_in_exec)
