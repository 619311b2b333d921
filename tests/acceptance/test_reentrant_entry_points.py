"""A graph with a reentrant node (a backward that runs the forward again and calls autograd
itself) is refused on every entry point with the short usage error, before any pass: no
hook fires, no block runs again, no ``.grad`` or random state changes (issue 23, trust).

Members: ``torch.utils.checkpoint(..., use_reentrant=True)``, nested checkpoints (a reentrant
one inside a reentrant or a non-reentrant one), ``checkpoint_sequential``, and custom
``autograd.Function``\\ s whose backward rebuilds a graph and calls ``torch.autograd.grad``
(directly, imported by name, through a helper) or ``.backward()``.
"""
from __future__ import annotations

import pytest
import torch
from IPython.core.error import UsageError

from vjp_magic import VJPUsageError

B = 40  # per-sample losses: the vectorised per-sample path is asked for (from 32)

SETUP = f'''
import torch, torch.nn as nn, torch.nn.functional as F
import torch.utils.checkpoint as cp
from torch.autograd import grad as agrad
import vjp_magic
count = {{"block": 0, "backpre": 0, "node": 0, "unpack": 0}}
torch.manual_seed(0)
net = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
net[0].register_forward_hook(lambda m, a, o: count.__setitem__("block", count["block"] + 1))
net[2].register_full_backward_pre_hook(
    lambda m, go: count.__setitem__("backpre", count["backpre"] + 1))
block = nn.Sequential(net[0], net[1])
X, t = torch.randn({B}, 4, requires_grad=True), torch.randint(0, 3, ({B},))

def rerun(h, g):
    h = h.detach().requires_grad_()
    with torch.enable_grad():
        out = block(h)
    return torch.autograd.grad(out, h, g)

class ByGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h):
        ctx.save_for_backward(h)
        return block(h)
    @staticmethod
    def backward(ctx, g):
        h = ctx.saved_tensors[0].detach().requires_grad_()
        with torch.enable_grad():
            out = block(h)
        return torch.autograd.grad(out, h, g)

class ByImportedGrad(ByGrad):
    @staticmethod
    def backward(ctx, g):
        h = ctx.saved_tensors[0].detach().requires_grad_()
        with torch.enable_grad():
            out = block(h)
        return agrad(out, h, g)

class ByHelper(ByGrad):
    @staticmethod
    def backward(ctx, g):
        return rerun(ctx.saved_tensors[0], g)

class ByBackward(ByGrad):
    @staticmethod
    def backward(ctx, g):
        h = ctx.saved_tensors[0].detach().requires_grad_()
        with torch.enable_grad():
            block(h).backward(g)
        return h.grad

def pack(t):
    return t
def unpack(t):
    count["unpack"] += 1
    return t
'''

MEMBERS = {
    "checkpoint": "cp.checkpoint(block, X, use_reentrant=True)",
    "nested checkpoints": (
        "cp.checkpoint(lambda h: cp.checkpoint(block, h, use_reentrant=True), X, "
        "use_reentrant=True)"),
    "reentrant inside non-reentrant": (
        "cp.checkpoint(lambda h: cp.checkpoint(block, h, use_reentrant=True), X, "
        "use_reentrant=False)"),
    "checkpoint_sequential": "cp.checkpoint_sequential(block, 2, X, use_reentrant=True)",
    "Function calling autograd.grad": "ByGrad.apply(X)",
    "Function calling grad imported by name": "ByImportedGrad.apply(X)",
    "Function calling a helper": "ByHelper.apply(X)",
    "Function calling backward()": "ByBackward.apply(X)",
}


def _body(member: str) -> str:
    return ("with torch.autograd.graph.saved_tensors_hooks(pack, unpack):\n"
            f"    h = {MEMBERS[member]}\n"
            "    losses = F.cross_entropy(net[2](h), t, reduction='none')\n"
            "h.register_hook(lambda g: count.__setitem__('node', count['node'] + 1))\n"
            "losses.grad_fn.register_prehook(lambda g: count.__setitem__('node', "
            "count['node'] + 1))")


def _state(ns) -> dict:
    return {"count": dict(ns["count"]), "rng": torch.get_rng_state(),
            "X.grad": ns["X"].grad,
            "grads": [p.grad for p in ns["net"].parameters()]}


def _assert_same(before: dict, after: dict) -> None:
    assert after["count"] == before["count"]
    assert torch.equal(after["rng"], before["rng"])
    assert after["X.grad"] is None and before["X.grad"] is None
    assert all(g is None for g in after["grads"])


CELL_MAGICS = ["%%vjp --wrt X", "%%vjp", "%%vjp --wrt net", "%%vjp --wrt X --explain"]


@pytest.mark.parametrize("magic", CELL_MAGICS)
@pytest.mark.parametrize("member", list(MEMBERS))
def test_a_cell_magic_refuses_before_any_pass(ip, run_ok, usage_error, member, magic):
    run_ok(SETUP)
    run_ok(_body(member))
    plain = _state(ip.user_ns)
    assert plain["count"]["backpre"] == 0 and plain["count"]["block"] == 1
    run_ok(SETUP)
    message = usage_error(f"{magic}\n{_body(member)}")
    assert "use_reentrant=False" in message
    _assert_same(plain, _state(ip.user_ns))


LINES = ["%jacobian losses wrt X", "%hessian losses.sum() wrt X",
         "vjp_magic.differentiate(losses, X)", "vjp_magic.differentiate(losses, net)",
         "vjp_magic.hessian(losses.sum(), X)", "vjp_magic.sparse_jacobian(losses, X)",
         "vjp_magic.dependency(losses, X)",
         "vjp_magic.check(torch.zeros(40, 40, 4), losses, X)"]


def _refused(ip, source: str) -> str:
    """The error of ``source``: the magic's usage error, or the call's VJPUsageError."""
    error = ip.run_cell(source).error_in_exec
    assert isinstance(error, (UsageError, VJPUsageError)), error
    return str(error)


@pytest.mark.parametrize("line", LINES)
@pytest.mark.parametrize("member", ["checkpoint", "checkpoint_sequential",
                                    "Function calling autograd.grad"])
def test_a_line_or_a_call_on_a_bare_graph_refuses_before_any_pass(ip, run_ok, member, line):
    run_ok(SETUP)
    run_ok(_body(member))
    before = _state(ip.user_ns)
    assert "use_reentrant=False" in _refused(ip, line)
    _assert_same(before, _state(ip.user_ns))


@pytest.mark.parametrize("wrt", ["X", "net"])
@pytest.mark.parametrize("member", ["checkpoint", "nested checkpoints",
                                    "Function calling a helper"])
def test_differentiate_a_function_refuses_after_one_run(ip, run_ok, member, wrt):
    import vjp_magic

    run_ok(SETUP)
    ns = ip.user_ns
    fn = eval(f"lambda: F.cross_entropy(net[2]({MEMBERS[member]}), t, reduction='none')", ns)
    with pytest.raises(vjp_magic.VJPUsageError, match="use_reentrant=False"):
        vjp_magic.differentiate(fn, ns[wrt])
    with pytest.raises(vjp_magic.VJPUsageError, match="use_reentrant=False"):
        vjp_magic.hessian(lambda: fn().sum(), ns[wrt])
    assert ns["count"]["block"] == 2  # each function ran once; no backward re-ran the block
    assert ns["count"]["backpre"] == 0 and ns["X"].grad is None


def test_the_custom_function_is_named(ip, run_ok, usage_error):
    run_ok(SETUP)
    message = usage_error("%%vjp --wrt X\n" + _body("Function calling a helper"))
    assert "ByHelper" in message and "custom autograd.Function" in message
    assert "torch.utils.checkpoint with use_reentrant=True, which" not in message


def test_the_same_cell_without_reentrance_is_differentiated_hook_free(ip, run_ok):
    """The non-reentrant checkpoint: the hook-free copy, as before; values from autograd."""
    run_ok(SETUP)
    run_ok("losses = F.cross_entropy(net[2](cp.checkpoint(block, X, use_reentrant=False)), t, "
           "reduction='none')")
    before = _state(ip.user_ns)
    run_ok(SETUP)
    r = run_ok("%%vjp --wrt X\nlosses = F.cross_entropy(net[2](cp.checkpoint(block, X, "
               "use_reentrant=False)), t, reduction='none')")
    _assert_same(before, _state(ip.user_ns))
    ns = ip.user_ns
    expected = torch.autograd.functional.jacobian(  # (its hooks fire: the state is read)
        lambda x: torch.nn.functional.cross_entropy(ns["net"](x), ns["t"], reduction="none"),
        ns["X"].detach())
    torch.testing.assert_close(r.jacobian("X"), expected, rtol=1e-5, atol=1e-6)
