"""A cut the record does not see (R3-4, s42): a custom Function (a reentrant checkpoint) given
no tensor that requires grad runs its function outside autograd; the parameters that
function uses are in the formula, yet absent from the graph. That is a cut, named as one,
never "losses does not depend on m[0].weight" (false of the formula).

Derivatives expected: those of the graph as computed, zero for the cut-off block (the
derivative of a constant), and ``torch.func.jacrev`` of the loss for the block the graph
keeps; an input truly not used keeps "does not depend".
"""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from vjp_magic.run.cuts import CutKind

SETUP = '''import functools
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
torch.manual_seed(0)
m = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
x, t = torch.randn(5, 4), torch.randint(0, 3, (5,))'''
LOSS = 'losses = F.cross_entropy(m[2](h), t, reduction="none")'
CUT_OFF = {  # how the first block is handed to a Function that records none of its reads
    "a module": "h = checkpoint(m[:2], x, use_reentrant=True)",
    "a bound method": "h = torch.tanh(checkpoint(m[0].forward, x, use_reentrant=True))",
    "a partial": ("h = torch.tanh(checkpoint(functools.partial(F.linear, weight=m[0].weight, "
                  "bias=m[0].bias), x, use_reentrant=True))"),
}
pytestmark = pytest.mark.filterwarnings("ignore:None of the inputs have requires_grad")


def _plain(r) -> str:
    return re.sub(r"\s+", " ", r._repr_mimebundle_()["text/plain"])


def _kept_block(m, x, t) -> torch.Tensor:
    """∂losses/∂m[2].weight per sample, of the graph as computed (h a constant)."""
    h = torch.tanh(F.linear(x, m[0].weight, m[0].bias)).detach()
    w = m[2].weight.detach()
    return torch.func.jacrev(
        lambda w: F.cross_entropy(F.linear(h, w, m[2].bias.detach()), t, reduction="none"))(w)


@pytest.mark.parametrize("spelling", list(CUT_OFF))
def test_a_block_a_function_runs_outside_autograd_is_a_cut(ip, run_ok, spelling):
    run_ok(SETUP)
    r = run_ok(f"%%vjp --wrt m\n{CUT_OFF[spelling]}\n{LOSS}")
    cuts = [c for c in r.cuts if c.kind is CutKind.FUNCTION]
    assert len(cuts) == 1 and cuts[0].line == 1, r.cuts
    assert set(cuts[0].inputs) == {"m.0.weight", "m.0.bias"}, cuts
    assert float(r.derivatives["m.0.weight"].abs().max()) == 0.0  # the graph as computed
    ns = ip.user_ns
    torch.testing.assert_close(r.derivatives["m.2.weight"], _kept_block(ns["m"], ns["x"], ns["t"]))
    plain = _plain(r)
    assert "graph is cut" in plain and "outside autograd" in plain, plain
    assert "does not depend on m[0]" not in plain, plain
    assert "does not reach m[0].weight" in plain, plain


def test_an_input_the_formula_does_not_use_still_does_not_depend(ip, run_ok):
    """No cut: m[0] is not in the formula at all (the sentence's other branch)."""
    run_ok(SETUP)
    r = run_ok(f"%%vjp --wrt m\nh = torch.tanh(x.repeat(1, 2)[:, :6])\n{LOSS}")
    assert not getattr(r, "cuts", ())
    plain = _plain(r)
    assert "does not depend on m[0].weight or m[0].bias" in plain, plain
    assert "graph is cut" not in plain, plain


def test_a_checkpoint_autograd_sees_through_is_no_cut(ip, run_ok):
    """use_reentrant=False: autograd records inside the checkpoint (no Function, no cut)."""
    run_ok(SETUP)
    r = run_ok(f"%%vjp --wrt m\nh = checkpoint(m[:2], x, use_reentrant=False)\n{LOSS}")
    assert not getattr(r, "cuts", ()), r.cuts
    ns = ip.user_ns
    m, x, t = ns["m"], ns["x"].detach(), ns["t"]
    params = {k: v.detach() for k, v in m.named_parameters()}
    expected = torch.func.jacrev(lambda p: F.cross_entropy(
        torch.func.functional_call(m, p, (x,)), t, reduction="none"))(params)
    torch.testing.assert_close(r.derivatives["m.0.weight"], expected["0.weight"])
    assert "does not" not in _plain(r)


def test_the_generated_code_comments_a_cut_input_as_cut(ip, run_ok):
    run_ok(SETUP)
    r = run_ok(f"%%vjp --wrt m\n{CUT_OFF['a module']}\n{LOSS}")
    assert "does not depend on m" not in r.code, r.code


def test_a_module_in_a_plain_call_is_not_read_twice(ip, run_ok):
    """nn.Module calls record their torch calls (F.linear reads m[0].weight itself): the
    Function rule adds nothing there (one no_grad cut, as before)."""
    run_ok(SETUP)
    r = run_ok(f"%%vjp --wrt m\nwith torch.no_grad(): h = m[:2](x)\n{LOSS}")
    assert [c.kind for c in r.cuts] == [CutKind.NO_GRAD], r.cuts
    assert "does not depend on m[0]" not in _plain(r)



NORM = '''class Norm(torch.autograd.Function):   # its output marked non-differentiable
    @staticmethod
    def forward(ctx, x):
        n = x.norm()
        ctx.mark_non_differentiable(n)
        return n
    @staticmethod
    def backward(ctx, g): return None
x = torch.tensor([3., 4.], requires_grad=True)'''


def test_a_function_given_a_tensor_that_requires_grad_is_not_said_to_run_outside_autograd(
        ip, run_ok):
    run_ok(NORM)
    r = run_ok("%%vjp\ny = x / Norm.apply(x)")
    assert [cut.kind for cut in r.cuts] == [CutKind.OTHER]
    text = _plain(r)
    assert "outside autograd" not in text and "none of the tensors" not in text, text
    # the graph as computed: d(x / n)/dx with n a constant = I / 5
    torch.testing.assert_close(r.jacobian("x"), torch.eye(2) / 5)
