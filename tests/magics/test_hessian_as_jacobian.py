"""%hessian takes no --picture or --explain: the refusal gives the cell that does it, in the
user's names (the Hessian is the Jacobian of the gradient made with create_graph=True), and
that cell, run, gives the Hessian torch.autograd.functional.hessian gives."""

import pytest
import torch

ENERGY = ("w = torch.linspace(-1, 1, 12, dtype=torch.float64, requires_grad=True)\n"
          "e = (torch.diff(w) ** 2).sum() + (w ** 4).sum()\ng = 'the user keeps this'")


def _energy(w):
    return (torch.diff(w) ** 2).sum() + (w ** 4).sum()


@pytest.mark.parametrize("flag", ["--picture", "--explain"])
@pytest.mark.parametrize("line", ["%hessian {flag} e w", "%hessian {flag} e wrt w"])
def test_the_refusal_gives_the_cell_that_works(ip, run_ok, usage_error, flag, line):
    run_ok(ENERGY)
    message = usage_error(line.format(flag=flag))
    cell = message.split("\n\n", 1)[1]
    assert cell.startswith(f"%%vjp {flag} --wrt w\n"), message
    assert "create_graph=True" in cell and "torch.autograd.grad(e, w" in cell
    r = run_ok(cell)
    assert ip.user_ns["g"] == "the user keeps this"  # the gradient took a free name
    truth = torch.autograd.functional.hessian(_energy, ip.user_ns["w"].detach())
    torch.testing.assert_close(r.jacobian("w"), truth)


def test_an_expression_and_several_inputs_are_named_as_written(ip, run_ok, usage_error):
    run_ok("x = torch.randn(3, requires_grad=True)\nb = torch.randn(3, requires_grad=True)")
    message = usage_error("%hessian --picture (x**3 * b).sum() wrt x b")
    assert "torch.autograd.grad((x**3 * b).sum(), x, create_graph=True)" in message
    assert "likewise for b" in message
