"""Choosing the output and the inputs (``run/choose.py``, ``core/validation.named_inputs``):
modules and parameter iterators as inputs, input expressions that make a new tensor, and the
output found however the cell assigned it, or a message that names what the cell did."""
from __future__ import annotations

import math

import pytest
import torch
from coached import refused
from torch.autograd.functional import jacobian as reference_jacobian
from torch.func import functional_call

from vjp_magic.core.errors import VJPUsageError
from vjp_magic.core.validation import named_inputs


# -- modules, parameter iterators and tuples as inputs ---------------------------------------------
def _model():
    torch.manual_seed(4)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))


def test_named_inputs_expands_a_module():
    mlp = _model()
    names = ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert list(named_inputs(mlp, None)) == names
    assert list(named_inputs(mlp, "mlp")) == [f"mlp.{n}" for n in names]
    x = torch.randn(2, requires_grad=True)
    both = named_inputs({"mlp": mlp, "x": x}, None)
    assert list(both) == [f"mlp.{n}" for n in names] + ["x"]
    assert both["mlp.2.bias"] is mlp[2].bias
    assert list(named_inputs(mlp.parameters(), None)) == ["x1", "x2", "x3", "x4"]
    mlp[0].bias.requires_grad_(False)
    assert "0.bias" not in named_inputs(mlp, None)
    with pytest.raises(VJPUsageError, match="no parameters"):
        named_inputs(torch.nn.ReLU(), "relu")


def _expected_module_jacobians(mlp, x) -> dict:
    names = [n for n, _ in mlp.named_parameters()]
    values = tuple(p.detach() for p in mlp.parameters())

    def pure(*ps):
        return functional_call(mlp, dict(zip(names, ps)), (x,)).squeeze(1)

    return {f"mlp.{n}": j for n, j in zip(names, reference_jacobian(pure, values))}


MODEL_CELL = """
torch.manual_seed(4)
mlp = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
x = torch.randn(5, 3)
y = mlp(x).squeeze(1)
"""


@pytest.mark.parametrize("line", ["--wrt mlp", "--wrt mlp.parameters()"])
def test_wrt_module_in_the_magic(run_vjp, ip, line):
    r = run_vjp(MODEL_CELL, line)
    expected = _expected_module_jacobians(ip.user_ns["mlp"], ip.user_ns["x"])
    assert list(r.derivatives) == list(expected)
    for name, tensor in expected.items():
        torch.testing.assert_close(r.jacobian(name), tensor)
    bundle = r._repr_mimebundle_()
    assert "mlp.0.weight" in bundle["text/plain"]
    assert {"text/markdown", "text/latex", "text/plain"} <= set(bundle)


@pytest.mark.parametrize("line", ["--wrt mlp.named_parameters()", "--wrt ps"])
def test_wrt_parameter_iterators_are_named_after_their_module(run_vjp, line):
    r = run_vjp(MODEL_CELL + "ps = list(mlp.parameters())\n", line)
    assert list(r.derivatives) == ["mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias"]


def test_wrt_module_with_other_inputs_and_no_parameters(run_vjp, usage_error):
    r = run_vjp(MODEL_CELL.replace("torch.randn(5, 3)", "torch.randn(5, 3, requires_grad=True)"),
                "--wrt mlp x")
    assert list(r.derivatives)[-1] == "x" and "mlp.2.bias" in r.derivatives
    message = usage_error("%%vjp --wrt relu\nrelu = torch.nn.ReLU()\n"
                          "x = torch.randn(3, requires_grad=True)\ny = relu(x)")
    assert "no parameters" in message


def test_code_runs_with_module_parameter_names(run_vjp, ip):
    r = run_vjp(MODEL_CELL, "--wrt mlp")
    namespace = dict(ip.user_ns)
    exec(r.code, namespace)  # noqa: S102 - the generated code must run as shown
    expected = _expected_module_jacobians(ip.user_ns["mlp"], ip.user_ns["x"])
    assert math.isclose(float(namespace["d_mlp_2_bias"].sum()),
                        float(expected["mlp.2.bias"].sum()), rel_tol=1e-5)


def test_differentiate_accepts_a_module():
    import vjp_magic

    mlp = _model()
    x = torch.randn(5, 3)
    y = mlp(x).squeeze(1)
    expected = _expected_module_jacobians(mlp, x)
    r = vjp_magic.differentiate(y, mlp, names="mlp")
    assert list(r.derivatives) == list(expected)
    for name, tensor in expected.items():
        torch.testing.assert_close(r.jacobian(name), tensor)
    assert list(vjp_magic.differentiate(y, mlp).derivatives)[0] == "0.weight"


def test_wrt_a_tuple_of_tensors_names_each(run_vjp):
    r = run_vjp("x = torch.randn(3, requires_grad=True)\nw = torch.randn(3, requires_grad=True)\n"
                "y = x * w", "--wrt (x, w)")
    assert list(r.derivatives) == ["x", "w"]
    torch.testing.assert_close(r.derivatives["x"], r.inputs["w"].tensor.detach())


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


def test_a_parameter_named_as_named_parameters_spells_it_gets_the_bracketed_form(usage_error):
    message = usage_error("%%vjp --wrt net.0.weight\n"
                          "net = torch.nn.Sequential(torch.nn.Linear(3, 2))\n"
                          "y = net(torch.ones(4, 3))")
    assert "Index with brackets: net[0].weight" in message
