"""Fixes of G10's user findings outside the render files (session 33, U6): parameter names
that paste, advice for a held tensor without grad, names in notes and refusals, near names
for --wrt typos, frozen parameters named.

Expected numbers come from ``torch.autograd.grad``; expected names from evaluating them
against the module, as a user pasting them would.
"""
from __future__ import annotations

import re

import pytest
import torch

from vjp_magic.core.validation import parameter_expression

KEYED = """import torch.nn as nn
torch.manual_seed(0)
class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleDict({'layer-1': nn.Linear(3, 3), 'def': nn.Linear(3, 3),
                                     '0': nn.Linear(3, 3), 'ok': nn.Linear(3, 1)})
        self.plist = nn.ParameterList([nn.Parameter(torch.ones(3))])
        self.pdict = nn.ParameterDict({'1': nn.Parameter(torch.ones(3))})
    def forward(self, x):
        x = self.blocks['0'](self.blocks['layer-1'](x) * self.plist[0] * self.pdict['1'])
        return self.blocks['ok'](self.blocks['def'](x))
model = M()
xb = torch.randn(4, 3)"""


def _bundle(result) -> dict:
    shown = result._repr_mimebundle_()
    return shown[0] if isinstance(shown, tuple) else shown


@pytest.mark.parametrize("line, root", [("--wrt model", "model"),
                                        ("--wrt model.blocks", "model.blocks")])
def test_each_parameter_name_spelled_reaches_that_parameter(ip, run_ok, run_vjp, line, root):
    run_ok(KEYED)
    r = run_vjp("loss = model(xb).pow(2).sum()", line)
    model, xb = ip.user_ns["model"], ip.user_ns["xb"]
    owner = eval(root, {"model": model})  # noqa: S307 - the module the line names
    params = {f"{root}.{n}": p for n, p in owner.named_parameters()}
    grads = torch.autograd.grad(model(xb).pow(2).sum(), list(params.values()))
    assert set(r.derivatives) == set(params)
    for (name, parameter), grad in zip(params.items(), grads):
        torch.testing.assert_close(r.derivatives[name], grad)
        spelled = parameter_expression(name)
        assert eval(spelled, {"model": model}) is parameter, (name, spelled)  # noqa: S307
    markdown = _bundle(r)["text/markdown"]
    assert "_.inputs[" not in markdown  # every name is Python: the formulas name it so
    for code in re.findall(r"```python\n(.*?)```", markdown, flags=re.S):
        compile(code, "<shown>", "exec")


def test_a_digit_key_is_a_string_and_an_index_is_a_number(ip, run_ok):
    run_ok(KEYED)
    model = ip.user_ns["model"]
    run_ok("%%vjp --wrt model\nloss = model(xb).pow(2).sum()")
    assert parameter_expression("model.blocks.0.weight") == "model.blocks['0'].weight"
    assert parameter_expression("model.plist.0") == "model.plist[0]"
    assert parameter_expression("model.pdict.1") == "model.pdict['1']"
    assert parameter_expression("model.blocks.def.bias") == "model.blocks['def'].bias"
    assert eval(parameter_expression("model.blocks.ok.weight"),  # noqa: S307
                {"model": model}) is model.blocks["ok"].weight


HELD = """import torch.nn as nn
class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.register_buffer('scale', torch.full((3,), 2.0))
    def forward(self, x):
        return self.lin(x) * self.scale
model = Scaled()
box = type('Box', (), {})()
box.w = torch.ones(3)
seq = [torch.ones(3)]
xb = torch.ones(2, 3)"""


@pytest.mark.parametrize("line, body", [
    ("--wrt model.scale", "loss = model(xb).sum()"),
    ("--wrt box.w", "loss = (model(xb) * box.w).sum()"),
    ("--wrt seq[0]", "loss = (model(xb) * seq[0]).sum()"),
], ids=["buffer", "attribute", "list entry"])
def test_a_held_tensor_without_grad_is_told_to_require_grad(ip, run_ok, usage_error, line, body):
    run_ok(HELD)
    message = usage_error(f"%%vjp {line}\n{body}")
    source = line.split()[-1]
    assert "does not require grad" in message and f"{source}.requires_grad_()" in message
    assert "new tensor" not in message
    # what it says to do works: the derivative is then the one autograd gives
    run_ok(f"{source}.requires_grad_()")
    r = run_vjp_ok(ip, f"%%vjp {line}\n{body}")
    held = eval(source, ip.user_ns)  # noqa: S307 - the tensor named
    ns = ip.user_ns
    expected, = torch.autograd.grad(eval(body.split("= ", 1)[1], ns), held)  # noqa: S307
    torch.testing.assert_close(r.derivatives[source], expected)


def test_a_view_of_a_tensor_without_grad_is_still_a_new_tensor(ip, run_ok, usage_error):
    run_ok(HELD)
    message = usage_error("%%vjp --wrt xb.T\nloss = model(xb).sum()")
    assert "makes a new tensor" in message  # xb.T is made, not held: requires_grad_ would not do


def run_vjp_ok(ip, source):
    result = ip.run_cell(source)
    assert result.success, result.error_in_exec
    return result.result


def _decay(x):
    """h_t = 0.01·h_{t-1} + x_t: ∂h_t/∂x_s = 0.01^(t-s), below float32's range 23 steps back."""
    h, out = torch.zeros_like(x[0]), []
    for t in range(x.shape[0]):
        h = 0.01 * h + x[t]
        out.append(h)
    return torch.stack(out)


def test_the_underflow_note_names_the_input_as_given():
    import vjp_magic
    x = torch.ones(40, requires_grad=True)
    r = vjp_magic.differentiate(_decay(x), x, names="signal")
    expected = torch.tril(0.01 ** (torch.arange(40)[:, None] - torch.arange(40)).clamp(min=0)
                          .double()).float()
    torch.testing.assert_close(r.jacobian("signal"), expected)
    text = " ".join(_bundle(r)["text/plain"].split())
    assert "underflow" in text and "signal.double()" in text, text
    assert "x.double()" not in text


def test_the_in_place_refusal_names_a_dict_key_as_the_cell_writes_it(ip, run_ok, usage_error):
    run_ok("import torch.nn as nn\ntorch.manual_seed(0)\n"
           "model = nn.ModuleDict({'in-layer': nn.Linear(3, 2)})\n"
           "opt = torch.optim.SGD(model.parameters(), lr=0.5)\nxb = torch.randn(4, 3)")
    message = usage_error("%%vjp --wrt model\nopt.zero_grad()\n"
                          "loss = model['in-layer'](xb).pow(2).sum()\nloss.backward()\nopt.step()")
    assert "modified in place" in message
    assert "model['in-layer'].weight" in message and "model.in-layer" not in message, message


@pytest.mark.parametrize("typo, meant", [
    ("Model", "model"), ("modle.layers[0].weight", "model.layers[0].weight"),
    ("model.layers[1].wieght", "model.layers[1].weight"), ("model.haed.bias", "model.head.bias"),
    ("model.pdict['k'].sclae", None), ("model.nothing_like_it", None)])
def test_a_wrt_typo_is_told_the_near_name_without_running_code(ip, run_ok, usage_error,
                                                                typo, meant):
    run_ok("import torch.nn as nn\ncalls = []\nclass Net(nn.Module):\n"
           "    def __init__(self):\n        super().__init__()\n"
           "        self.layers = nn.ModuleList([nn.Linear(3, 3), nn.Linear(3, 3)])\n"
           "        self.head = nn.Linear(3, 1)\n"
           "    @property\n    def hed(self):\n        calls.append(1)\n        return self.head\n"
           "    def forward(self, x):\n"
           "        return self.head(self.layers[1](self.layers[0](x)))\n"
           "model = Net()\nxb = torch.randn(4, 3)")
    calls = len(ip.user_ns["calls"])
    message = usage_error(f"%%vjp --wrt {typo}\nloss = model(xb).sum()")
    if meant is None:
        assert "Did you mean" not in message, message
    else:
        assert eval(meant, {"model": ip.user_ns["model"]}) is not None  # noqa: S307
        assert f"Did you mean {meant}?" in message, message
    # the hint reads what a dot reaches from the objects' dicts: no property (model.hed) runs
    assert len(ip.user_ns["calls"]) == calls


def test_a_diagonal_hessian_over_the_dense_budget_is_given_sparse():
    import vjp_magic
    x = torch.linspace(-1, 1, 1500, requires_grad=True)  # dense: 1500² float32 = 9 MB
    h = vjp_magic.hessian(x.pow(3).sum(), x, memory_budget=2_000_000)
    got = h.hessian("x", layout=torch.sparse_csr)
    assert got._nnz() == 1500
    torch.testing.assert_close(got.to_dense(), torch.diag(6 * x.detach()))
    with pytest.raises(vjp_magic.VJPUsageError, match="1,500 nonzeros"):
        vjp_magic.hessian(x.pow(3).sum(), x, memory_budget=10_000)


class _Skewed(torch.autograd.Function):
    """f(a, b) = a·b + 1e4 with a backward whose mixed second derivatives are 1 and 1.1."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x[0] * x[1] + 1e4

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.stack([x[1], 1.1 * x[0]])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_wrong_custom_backward_is_still_called_asymmetric(dtype):
    import vjp_magic
    x = torch.tensor([1.0, 2.0], dtype=dtype, requires_grad=True)
    h = vjp_magic.hessian(_Skewed.apply(x), x)
    torch.testing.assert_close(h.hessian("x"), torch.tensor([[0, 1], [1.1, 0]], dtype=dtype))
    assert not h.inputs["x"].symmetric  # 9% of the largest entry: no rounding gives it
    assert any("not symmetric" in note for note in h.notes)


def test_a_cancelling_float32_hessian_says_its_rounding():
    import vjp_magic
    torch.manual_seed(0)
    ln, w = torch.nn.LayerNorm(4), torch.randn(4, 4, requires_grad=True)
    xs = torch.randn(6, 4)
    h = vjp_magic.hessian(ln(xs @ w).pow(2).sum(), w, names="w")  # ~24 always: H ~1e-4
    assert h.inputs["w"].symmetric
    gap = float((h.hessian("w").reshape(16, 16) - h.hessian("w").reshape(16, 16).T).abs().max())
    if gap > 1e-4 * float(h.hessian("w").abs().max()):  # rounding showed: said, not hidden
        assert any("rounding in sums that cancel" in note for note in h.notes), h.notes
    assert not any("not symmetric" in note for note in h.notes)


def test_frozen_parameters_of_a_module_given_are_named_once(ip, run_ok, run_vjp):
    run_ok("import torch.nn as nn\ntorch.manual_seed(0)\n"
           "net = nn.ModuleDict({'enc-1': nn.Linear(3, 3), 'head': nn.Linear(3, 1)})\n"
           "net['enc-1'].bias.requires_grad_(False)\nxb = torch.randn(5, 3)")
    r = run_vjp("loss = net['head'](net['enc-1'](xb)).sum()", "--wrt net")
    net, xb = ip.user_ns["net"], ip.user_ns["xb"]
    trainable = {f"net.{n}": p for n, p in net.named_parameters() if p.requires_grad}
    assert set(r.derivatives) == set(trainable)
    for (name, _), grad in zip(trainable.items(), torch.autograd.grad(
            net["head"](net["enc-1"](xb)).sum(), list(trainable.values()))):
        torch.testing.assert_close(r.derivatives[name], grad)
    text = " ".join(_bundle(r)["text/plain"].split())
    assert text.count("Left out, frozen") == 1 and "net['enc-1'].bias" in text, text
    assert "net['enc-1'].bias.requires_grad_()" in text  # it alone: no other one unfrozen
    everything = run_vjp("loss = net['head'](xb).sum()", "--wrt net['head']")
    assert "frozen" not in _bundle(everything)["text/plain"]  # nothing frozen there


def test_frozen_parameters_of_a_module_found_are_named(ip, run_ok, run_vjp):
    run_ok("import torch.nn as nn\ntorch.manual_seed(0)\n"
           "big = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))\n"
           "big[0].requires_grad_(False)\nxb = torch.randn(5, 3)")
    r = run_vjp("loss = big(xb).pow(2).sum()")  # no --wrt: the model's parameters are found
    big, xb = ip.user_ns["big"], ip.user_ns["xb"]
    expected = torch.autograd.grad(big(xb).pow(2).sum(), [big[1].weight, big[1].bias])
    assert set(r.derivatives) == {"big.1.weight", "big.1.bias"}
    torch.testing.assert_close(r.derivatives["big.1.weight"], expected[0])
    text = " ".join(_bundle(r)["text/plain"].split())
    assert "frozen" in text and "big[0].weight" in text and "big[0].bias" in text, text


def test_a_name_reused_for_another_structure_is_spelled_as_the_new_module(ip, run_ok, run_vjp):
    run_ok(KEYED)
    run_vjp("loss = model(xb).pow(2).sum()", "--wrt model")  # model.blocks.0: a dict's key
    assert parameter_expression("model.blocks.0.weight") == "model.blocks['0'].weight"
    run_ok("class N(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
           "        self.blocks = nn.Sequential(nn.Linear(3, 1))\n"
           "    def forward(self, x):\n        return self.blocks(x)\nmodel = N()")
    r = run_vjp("loss = model(xb).pow(2).sum()", "--wrt model.parameters()")
    assert set(r.derivatives) == {"model.blocks.0.weight", "model.blocks.0.bias"}
    assert parameter_expression("model.blocks.0.weight") == "model.blocks[0].weight"
    text = _bundle(r)["text/plain"]
    assert "model.blocks[0].weight" in text and "model.blocks['0']" not in text
