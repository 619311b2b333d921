"""The "Corrected:" code after a second backward through a freed graph runs when pasted
and leaves ``.grad`` as one backward would (s35 T9, G15's findings 3 and 6): the cell's own
first call rewritten from its AST (every line of it, retain_graph set where given, by
keyword or by position), and ``.zero_()`` only for the tensors whose ``.grad`` the cell
reads (``net.weight``; never ``torch.autograd.grad``). Expected numbers: ``torch.func.grad``
of the same loss."""
from __future__ import annotations

import re

import pytest
import torch

from vjp_magic.run.cell_source import grads_not_zeroed, retained_call


def _corrected(ip, body: str) -> str:
    result = ip.run_cell("%%vjp\n" + body).result
    block = result._repr_mimebundle_()["text/plain"].split("Corrected:", 1)[1]
    code = re.search(r"((?:^    .*\n?)+)", block, flags=re.MULTILINE).group(1)
    return "\n".join(line[4:] for line in code.splitlines())


SETUP = "x = torch.linspace(-1, 1, 5, requires_grad=True)\ny = x.exp()\n"


@pytest.mark.parametrize("first", [
    "torch.autograd.backward([y.sum()], None, False)\n",  # retain_graph third, by position
    "y.backward(torch.ones(5),\n           False)\n",  # by position, over two lines
    "(y * 2).sum().backward(\n    inputs=[x]\n)\n",  # no trailing comma
    "for k in range(1):\n    y.sum().backward(\n        inputs=[x])\n",  # inside a loop
])
def test_the_corrected_first_call_runs_and_keeps_the_graph(ip, first):
    code = _corrected(ip, SETUP + first + "y.sum().backward()\n")
    assert "retain_graph=True" in code and "= v" not in code
    namespace = {"torch": torch}
    exec(SETUP, namespace)
    exec(code, namespace)
    namespace["y"].sum().backward()  # the cell's second call, through the kept graph


def test_the_corrected_code_leaves_a_parameters_grad_as_one_backward(ip):
    setup = ("torch.manual_seed(0)\nnet = torch.nn.Linear(3, 1)\nX = torch.randn(4, 3)\n"
             "loss = net(X).pow(2).sum()\n")
    code = _corrected(ip, setup + "loss.backward()\nprint(net.weight.grad)\nloss.backward()\n")
    assert "net.weight.grad.zero_()" in code
    namespace = {"torch": torch}
    exec(setup, namespace)
    exec(code, namespace)
    namespace["loss"].backward()
    net = namespace["net"]
    params = {k: v.detach() for k, v in net.named_parameters()}
    once = torch.func.grad(
        lambda p: torch.func.functional_call(net, p, (namespace["X"],)).pow(2).sum())(params)
    torch.testing.assert_close(net.weight.grad, once["weight"])


@pytest.mark.parametrize("source, expected", [
    ("print(net[0].weight.grad)\n", ["net[0].weight"]),
    ("g = torch.func.grad(f)(x)\nh = grad(f)(x)\nprint(x.grad)\n", ["x"]),
    ("f = torch.autograd.grad\nprint(m.fc.bias.grad)\nm.fc.bias.grad.data.zero_()\n", []),
    ("print(a.grad, b.grad)\ndel a.grad\nb.grad = torch.zeros(3)\n", []),
    ("%matplotlib inline\nprint(v.grad)\n", ["v"]),  # an IPython line: read as pass
])
def test_grads_not_zeroed_reads_tensors_grads_only(source, expected):
    assert grads_not_zeroed(source) == expected


def test_retained_call_refuses_unpacked_arguments():
    assert retained_call("y.backward(**options)\n", 1, "backward") is None
    assert retained_call("torch.autograd.grad(*args)\n", 1, "grad") is None
    assert retained_call("y.backward(v, False, False)\n", 1, "backward") == (
        "y.backward(v, True, False)", 1)  # a positional argument follows: True in place
