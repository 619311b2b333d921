"""The parameter table's 'at' column says how it counts, beside row labels that are code
(from 0): the entry it names is the largest |∂y/∂p| of torch.autograd.grad's gradient."""
from __future__ import annotations

import re

import pytest
import torch

import vjp_magic
from vjp_magic.render.options import RenderOptions


def _model():
    torch.manual_seed(1)
    net = torch.nn.Sequential(*[torch.nn.Linear(5, 5) for _ in range(5)])
    return net, torch.randn(3, 5)


@pytest.mark.parametrize("base", [1, 0])
def test_the_header_says_the_base_and_the_entry_is_the_largest(base):
    net, xb = _model()
    params = {f"net.{k}": v for k, v in net.named_parameters()}
    loss = net(xb).pow(2).sum()
    grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()),
                                                 retain_graph=True)))
    r = vjp_magic.differentiate(loss, params, options=RenderOptions(index_base=base))
    text = r._repr_mimebundle_()["text/plain"]
    assert f"at (from {base})" in text
    for name, grad in grads.items():
        label = name.replace("net.", "net[", 1).replace(".", "].", 1)
        line = next(ln for ln in text.splitlines() if ln.strip().startswith(label + " ["))
        at = [int(n) for n in re.findall(r"\d+", line.split()[-1])]
        expected = torch.unravel_index(grad.abs().argmax(), grad.shape)
        assert at == [int(i) + base for i in expected], (name, line)
