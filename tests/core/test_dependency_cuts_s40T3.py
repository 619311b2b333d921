"""``r.dependency`` where the cell's record shows a cut (R2-5, s40): a value computed from the
input that reaches the output outside autograd's graph (``.detach()``, ``.item()``,
``.tolist()``, ``.numpy()``, ``torch.no_grad()``) is read by no derivative, so a verdict of
the graph alone may call coupled indices independent. The verdict then names the cut and
its line in ``.note``, says it covers derivatives only, and is not "proved"; without a cut
it says nothing more (no noise on every verdict).

The premise of each case (y[0] reads x[1] through the cut) is checked by moving x[1] and
recomputing y[0]; never from the code under test.
"""
from __future__ import annotations

import linecache

import numpy as np
import pytest
import torch
import torch.nn as nn

SPELLINGS = {
    ".tolist()": lambda x: x * torch.tensor(x.sum(0).tolist()),
    ".numpy()": lambda x: x * torch.from_numpy(x.detach().numpy().sum(0)),
    ".item()": lambda x: x * x.sum().item(),
    "torch.no_grad()": None,  # a block inside a module's forward, below
}

MODULE = '''class Centred(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)

    def forward(self, x):
        h = self.a(x)
        with torch.no_grad():
            m = h.mean(0)
        return h - m
'''


def _centred():
    filename = "/tmp/dependency_cuts_module.py"
    linecache.cache[filename] = (len(MODULE), None, MODULE.splitlines(True), filename)
    namespace = {"torch": torch, "nn": nn}
    exec(compile(MODULE, filename, "exec"), namespace)
    torch.manual_seed(0)
    return namespace["Centred"]()


def _function(spelling):
    return SPELLINGS[spelling] or _centred()


def _x():
    return torch.randn(6, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64
                       ).float().requires_grad_()


@pytest.mark.parametrize("spelling", list(SPELLINGS))
def test_a_verdict_through_a_cut_names_it_and_is_not_proved(ip, run_ok, spelling):
    f, x = _function(spelling), _x()
    with torch.no_grad():
        moved = x.clone()
        moved[1] += 1
        assert not torch.allclose(f(moved)[0], f(x)[0])  # premise: y[0] reads x[1]
    ip.user_ns.update(f=f, x=x, np=np)
    d = run_ok("%%vjp --wrt x\ny = f(x)").dependency("x")
    assert d.kind == "independent"  # of the graph: each row's derivative reads its own row
    assert d.evidence != "proved", d
    assert d.note is not None and "cut" in d.note and "line 1" in d.note, d.note
    assert "derivatives only" in d.note, d.note


def test_the_module_path_notes_the_cut_on_its_parameters_verdict(ip, run_ok):
    """--wrt net: the cut inside the forward reads net.a's parameters; column i of y reads
    row i of net.a.weight in the graph (independent along those axes), the note names it."""
    net, x = _centred(), _x().detach()
    ip.user_ns.update(net=net, x=x)
    d = run_ok("%%vjp --wrt net\ny = net(x)").dependency("net.a.weight", out_axis=1, in_axis=0)
    bias = net.a.bias.detach()
    jac = torch.func.jacrev(lambda w: torch.func.functional_call(
        net, {"a.weight": w, "a.bias": bias}, (x,)))(net.a.weight.detach())  # y[b, i]/w[j, k]
    pattern = (jac != 0).any(0).any(-1)  # [i, j]: some y[:, i] reads row j of w
    assert torch.equal(pattern, torch.eye(4, dtype=torch.bool))
    assert d.kind == "independent" and d.evidence != "proved", d
    assert "Centred.forward" in d.note and "derivatives only" in d.note, d.note


def test_without_a_cut_the_verdict_is_proved_and_says_nothing_more(ip, run_ok):
    ip.user_ns.update(x=_x())
    d = run_ok("%%vjp --wrt x\ny = torch.tanh(x) * 2").dependency("x")
    assert d.kind == "independent" and d.evidence == "proved" and d.note is None, d


def test_a_dense_verdict_needs_no_cut_note(ip, run_ok):
    """A dense pattern already holds every dependence a cut could add."""
    ip.user_ns.update(x=_x())
    d = run_ok("%%vjp --wrt x\ny = x * x.sum(0) + x.mean(0).detach()").dependency("x")
    assert d.kind == "dense" and d.note is None, d
