"""Models by default (issue 22, item 6): ``%%vjp`` on a module call whose output no named
tensor with ``requires_grad=True`` reaches differentiates the module's parameters, as
``--wrt MODULE`` does, and says so; a call whose named inputs require grad names the
parameters it left out; no suggestion names what the cell does not have.

Expected derivatives come from ``torch.func.jacrev`` over ``torch.func.functional_call``."""
from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, jacrev

MLP_CELL = """torch.manual_seed(0)
mlp = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
x = torch.randn(4, 3)
y = mlp(x)"""

MLP_NAMES = ["mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias"]


def parameter_jacobians(module, prefix: str, call) -> dict:
    """name → Jacobian of ``call(module)`` with respect to each parameter, by torch.func."""
    params = {k: v.detach() for k, v in module.named_parameters()}
    jac = jacrev(lambda p: call(lambda *a: functional_call(module, p, a)))(params)
    return {f"{prefix}.{k}": v for k, v in jac.items()}


def notes(r) -> str:
    return " ".join(" ".join(r.notes).split())


def test_a_model_on_data_is_differentiated_by_its_parameters(ip, run_vjp):
    r = run_vjp(MLP_CELL)
    mlp, x = ip.user_ns["mlp"], ip.user_ns["x"]
    assert list(r.derivatives) == MLP_NAMES  # as --wrt mlp names them
    expected = parameter_jacobians(mlp, "mlp", lambda f: f(x))
    for name in MLP_NAMES:
        torch.testing.assert_close(r.jacobian(name), expected[name])
        assert dict(mlp.named_parameters())[name[4:]].grad is None  # .grad never changed
    said = notes(r)
    assert "the inputs are the parameters of mlp (as --wrt mlp)" in said
    assert "--wrt mlp[0].weight" in said  # the flag that narrows it, a name that evaluates
    assert said in " ".join(repr(r).split())  # one sentence of the display


def test_the_default_is_what_wrt_module_gives(ip, run_vjp):
    default = run_vjp(MLP_CELL)
    named = run_vjp("y = mlp(x)", line="--wrt mlp")
    assert list(named.derivatives) == list(default.derivatives)
    for name in MLP_NAMES:
        torch.testing.assert_close(default.derivatives[name], named.derivatives[name])
    assert not notes(named)  # named inputs: nothing to say


def test_the_narrowing_flag_the_note_gives_works(run_vjp):
    run_vjp(MLP_CELL)
    r = run_vjp("y = mlp(x)", line="--wrt mlp[0].weight")
    assert list(r.derivatives) == ["mlp[0].weight"]


def test_run_all_is_not_stopped(ip):
    result = ip.run_cell(f"%%vjp\n{MLP_CELL}")
    assert result.success, result.error_in_exec
    assert ip.run_cell("after = 1").success and ip.user_ns["after"] == 1


def test_the_fewest_modules_holding_the_parameters(run_vjp):
    r = run_vjp("torch.manual_seed(1)\nl1 = torch.nn.Linear(3, 4)\nl2 = torch.nn.Linear(4, 1)\n"
                "net = torch.nn.Sequential(l1, torch.nn.Tanh(), l2)\n"
                "loss = net(torch.randn(5, 3)).pow(2).sum()")
    assert list(r.derivatives) == ["net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"]
    assert "(as --wrt net)" in notes(r)


def test_several_modules_each_give_their_parameters(ip, run_vjp):
    r = run_vjp("torch.manual_seed(2)\nenc = torch.nn.Linear(3, 4)\ndec = torch.nn.Linear(4, 2)\n"
                "data = torch.randn(5, 3)\nout = dec(torch.tanh(enc(data)))")
    enc, dec, data = (ip.user_ns[n] for n in ("enc", "dec", "data"))
    assert sorted(r.derivatives) == ["dec.bias", "dec.weight", "enc.bias", "enc.weight"]
    expected = parameter_jacobians(enc, "enc", lambda f: dec(torch.tanh(f(data))))
    expected |= parameter_jacobians(dec, "dec", lambda f: f(torch.tanh(enc(data))))
    for name, jac in expected.items():
        torch.testing.assert_close(r.jacobian(name), jac)
    assert "(as --wrt dec enc)" in notes(r) or "(as --wrt enc dec)" in notes(r)


def test_jacobian_line_magic_also_takes_the_parameters(ip, run_ok):
    run_ok(MLP_CELL)
    r = run_ok("%jacobian mlp(x).sum()")
    assert list(r.derivatives) == MLP_NAMES
    expected = parameter_jacobians(ip.user_ns["mlp"], "mlp", lambda f: f(ip.user_ns["x"]).sum())
    for name in MLP_NAMES:
        torch.testing.assert_close(r.jacobian(name), expected[name])
    assert "(as wrt mlp)" in notes(r)


# -- named inputs found: the parameters left out are named, with the flag ---------------------
LIN_CELL = """torch.manual_seed(3)
lin = torch.nn.Linear(3, 2)
xb = torch.randn(4, 3, requires_grad=True)
out = lin(xb)"""


def test_a_call_on_inputs_that_require_grad_names_what_it_left_out(ip, run_vjp):
    r = run_vjp(LIN_CELL)
    assert list(r.derivatives) == ["xb"]
    said = notes(r)
    assert "lin's parameters" in said and "--wrt xb lin" in said
    widened = run_vjp("out = lin(xb)", line="--wrt xb lin")  # the flag it gives works
    assert list(widened.derivatives) == ["xb", "lin.weight", "lin.bias"]
    lin, xb = ip.user_ns["lin"], ip.user_ns["xb"]
    expected = parameter_jacobians(lin, "lin", lambda f: f(xb.detach()))
    torch.testing.assert_close(widened.jacobian("lin.weight"), expected["lin.weight"])


def test_a_parameter_named_alone_leaves_the_others_named(run_vjp):
    r = run_vjp("torch.manual_seed(4)\nlin = torch.nn.Linear(3, 2)\nw = lin.weight\n"
                "out = lin(torch.randn(4, 3))")
    assert list(r.derivatives) == ["w"]
    said = notes(r)
    assert "lin.bias" in said and "--wrt w lin.bias" in said


def test_nothing_left_out_says_nothing(run_vjp):
    r = run_vjp("x = torch.ones(3, requires_grad=True)\ny = x**2")
    assert not notes(r)


# -- no module to name: a message whose every suggestion is the cell's ------------------------
@pytest.mark.parametrize("cell", [
    "y = torch.nn.Linear(3, 2)(torch.randn(4, 3))",
    "nets = [torch.nn.Linear(3, 2)]\ny = nets[0](torch.randn(4, 3))",
])
def test_unnamed_parameters_get_a_message_without_invented_names(ip, usage_error, cell):
    message = usage_error(f"%%vjp\n{cell}")
    assert "--wrt" in message and "bound to a name" in message
    for invented in ("layer", "--wrt x", "e.g."):
        assert invented not in message, message
