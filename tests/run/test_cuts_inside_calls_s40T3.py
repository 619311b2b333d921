"""A cut made inside a function the cell calls from another file (a module's ``forward``, a
helper of an earlier cell): named where it was made, inside the cell's call, never as if the
call's whole result were a constant (R2-4, s40: ``net(Xg) makes net(Xg) a constant`` while
the derivative shown is nonzero).

Each case compiles a helper under its own file name (as a module file is; or defines it in an
earlier cell), then runs a ``%%vjp`` cell calling it once and reads ``r.cuts``.
"""
from __future__ import annotations

import linecache
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

from vjp_magic.run.cuts import CutKind

POSITIONS = sys.version_info >= (3, 11)  # expression text needs the source positions


def _compiled(source: str, filename: str, namespace: dict) -> None:
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    exec(compile(source, filename, "exec"), namespace)


def _cuts(ip, helper: str, cell: str, wrt: str = "x"):
    """``r.cuts`` of ``%%vjp --wrt wrt`` over ``cell``, the helper's names in the namespace."""
    namespace = {"torch": torch, "np": np, "nn": nn}
    if helper:
        _compiled(helper, f"/tmp/helpers_{abs(hash(helper))}.py", namespace)
    ip.user_ns.update(namespace)
    ip.user_ns["x"] = torch.tensor([[1., 2.], [3., -4.], [0.5, 2.5]], requires_grad=True)
    result = ip.run_cell(f"%%vjp --wrt {wrt}\n{cell}")
    assert result.success, result.error_in_exec
    return getattr(result.result, "cuts", ())


HELPERS = {  # spelling -> (the helper's body line, its kind, what became constant)
    ".detach() of a batch mean": ("return x - x.mean(0).detach()", CutKind.DETACH, "x.mean(0)"),
    ".item()": ("return x * x.sum().item()", CutKind.EXIT, "x.sum()"),
    ".tolist()": ("return x * torch.tensor(x.sum(0).tolist())", CutKind.EXIT, "x.sum(0)"),
    ".numpy()": ("return x * torch.from_numpy(x.detach().numpy().sum(0))", CutKind.DETACH,
                 None),
}


@pytest.mark.parametrize("spelling", list(HELPERS))
def test_a_cut_in_a_helper_is_named_inside_the_call(ip, spelling):
    body, kind, constant = HELPERS[spelling]
    cuts = _cuts(ip, f"def centre(x):\n    {body}\n", "y = centre(x)")
    assert [c.kind for c in cuts] == [kind], cuts
    cut = cuts[0]
    assert cut.line == 1 and cut.inputs == ("x",)
    assert cut.function[0] == "centre" and cut.function[1].startswith("line 2 of helpers_")
    text = cut.plain()
    assert "centre" in text and "line 2" in text
    assert "centre(x) a constant" not in text and "makes centre(x)" not in text, text
    if POSITIONS:
        assert cut.caller == "centre(x)" and "called by centre(x) on line 1" in text, text
        if constant is not None:
            assert cut.constants == (constant,) and f"makes {constant} a constant" in text


MODULE = '''class Centred(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(2, 2)

    def forward(self, x):
        h = self.a(x)
        with torch.no_grad():
            m = h.mean(0)
        return h - m
'''


@pytest.mark.parametrize("wrt", ["x", "net"])
def test_a_no_grad_block_inside_a_module_names_the_block_and_the_forward(ip, wrt):
    torch.manual_seed(0)
    namespace = {"torch": torch, "nn": nn}
    _compiled(MODULE, "/tmp/helpers_module_no_grad.py", namespace)
    ip.user_ns["net"] = namespace["Centred"]()
    cuts = _cuts(ip, "", "y = net(x)", wrt)
    assert [c.kind for c in cuts] == [CutKind.NO_GRAD], cuts
    cut = cuts[0]
    assert cut.line == 1 and cut.function[0].endswith("Centred.forward")
    assert cut.function[1] == "line 9 of helpers_module_no_grad.py"  # m = h.mean(0)
    assert cut.op == "torch.no_grad()", cut  # the with-item of the forward's own line
    text = cut.plain()
    assert "net(x) a constant" not in text, text
    if POSITIONS:
        assert cut.caller == "net(x)" and cut.constants == ("h.mean(0)",), cut


def test_the_module_call_still_reaches_the_graph():
    """The premise of the words: y is no constant of x (its derivative is not 0), and the
    cut changed it: d/dx of the formula h - h.mean(0) differs (a Linear of 3 points)."""
    torch.manual_seed(0)
    namespace = {"torch": torch, "nn": nn}
    _compiled(MODULE, "/tmp/helpers_module_premise.py", namespace)
    net = namespace["Centred"]()
    x = torch.randn(3, 2, requires_grad=True)
    cut = torch.autograd.functional.jacobian(net, x)
    full = torch.autograd.functional.jacobian(lambda t: net.a(t) - net.a(t).mean(0), x)
    assert cut.abs().sum() > 0 and not torch.allclose(cut, full)


def test_a_helper_written_in_the_cell_is_named_on_its_own_line(ip):
    """A helper the cell itself defines: the cut is on the helper's line, no caller named."""
    cuts = _cuts(ip, "", "def centre(x):\n    return x - x.mean(0).detach()\ny = centre(x)")
    assert [c.kind for c in cuts] == [CutKind.DETACH]
    assert cuts[0].line == 2 and cuts[0].function is None and cuts[0].caller is None


def test_a_helper_of_an_earlier_cell_is_named_inside_the_call(ip):
    """A helper an earlier cell defined (another file for Python): named with its function,
    no file (IPython's cell files mean nothing to the user), inside the cell's call."""
    ip.run_cell("def centre(x):\n    return x - x.mean(0).detach()")
    cuts = _cuts(ip, "", "y = centre(x)")
    assert [c.kind for c in cuts] == [CutKind.DETACH]
    assert cuts[0].line == 1 and cuts[0].function == ("centre", "")
    assert "centre(x) a constant" not in cuts[0].plain()
    if POSITIONS:
        assert cuts[0].constants == ("x.mean(0)",)
