"""core.reentrant: the nodes whose backward runs a forward again and calls autograd, found
by walking the graph alone; an ordinary custom backward is not one."""
from __future__ import annotations

import pytest
import torch
import torch.utils.checkpoint as cp
from torch.autograd import grad as imported_grad
from torch.autograd.function import once_differentiable

import vjp_magic
from vjp_magic.core.reentrant import reentrant_nodes, refuse_reentrant

RUNS = {"block": 0}


def block(h):
    RUNS["block"] += 1
    return torch.tanh(h * 2.0 + 1.0)


def _rerun(h, g):
    h = h.detach().requires_grad_()
    with torch.enable_grad():
        out = block(h)
    return imported_grad(out, h, g)


class Rebuilt(torch.autograd.Function):
    """Its backward rebuilds the block's graph and calls torch.autograd.grad on it."""

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


class ThroughHelper(Rebuilt):
    @staticmethod
    def backward(ctx, g):
        return _rerun(ctx.saved_tensors[0], g)


class ThroughFunc(Rebuilt):
    @staticmethod
    def backward(ctx, g):
        h = ctx.saved_tensors[0].detach()
        return torch.func.vjp(block, h)[1](g)


class Square(torch.autograd.Function):
    """An ordinary custom Function: its backward reads saved tensors only."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        x, = ctx.saved_tensors
        return 2 * x * g


class OnceSquare(Square):
    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        x, = ctx.saved_tensors
        return 2 * x * g


def _x():
    return torch.linspace(-1.0, 1.0, 6, dtype=torch.float64).requires_grad_()


REENTRANT = {
    "checkpoint": lambda x: cp.checkpoint(block, x, use_reentrant=True),
    "nested checkpoints": lambda x: cp.checkpoint(
        lambda h: cp.checkpoint(block, h, use_reentrant=True), x, use_reentrant=True),
    "reentrant inside non-reentrant": lambda x: cp.checkpoint(
        lambda h: cp.checkpoint(block, h, use_reentrant=True) * h, x, use_reentrant=False),
    "checkpoint_sequential": lambda x: cp.checkpoint_sequential(
        [torch.nn.Tanh(), torch.nn.Softplus(), torch.nn.Tanh()], 2, x, use_reentrant=True),
    "Function calling autograd.grad": lambda x: Rebuilt.apply(x),
    "Function calling a helper": lambda x: ThroughHelper.apply(x),
    "Function calling torch.func.vjp": lambda x: ThroughFunc.apply(x),
}


@pytest.mark.parametrize("member", list(REENTRANT))
def test_each_member_is_found_and_refused_without_a_pass(member):
    x = _x()
    y = REENTRANT[member](x).sin() * 3
    fired = []
    for node in _nodes(y):
        node.register_prehook(lambda g, node=node: fired.append(node.name()))
    runs = RUNS["block"]
    assert reentrant_nodes(y)
    with pytest.raises(vjp_magic.VJPUsageError, match="use_reentrant=False"):
        refuse_reentrant(y, "y")
    assert fired == [] and RUNS["block"] == runs and x.grad is None


def _nodes(y):
    seen, stack = [], [y.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and all(node is not s for s in seen):
            seen.append(node)
            stack.extend(n for n, _ in node.next_functions)
    return seen


NOT_REENTRANT = {
    "torch operations": lambda x: torch.tanh(x).cumsum(0),
    "non-reentrant checkpoint": lambda x: cp.checkpoint(block, x, use_reentrant=False),
    "an ordinary custom Function": lambda x: Square.apply(x),
    "once_differentiable": lambda x: OnceSquare.apply(x),
    "a module's full backward hook": lambda x: _hooked()(x),
}


def _hooked():
    layer = torch.nn.Tanh()
    layer.register_full_backward_hook(lambda m, gi, go: None)
    return layer


@pytest.mark.parametrize("member", list(NOT_REENTRANT))
def test_the_others_are_differentiated_as_before(member):
    x = _x()
    y = NOT_REENTRANT[member](x)
    assert reentrant_nodes(y) == ()
    refuse_reentrant(y, "y")
    expected = torch.autograd.functional.jacobian(NOT_REENTRANT[member], x.detach())
    if member == "non-reentrant checkpoint":  # each pass on y's own graph re-runs the block
        runs = RUNS["block"]
        with pytest.raises(vjp_magic.VJPUsageError, match="checkpoint"):
            vjp_magic.differentiate(y, x)
        assert RUNS["block"] == runs  # (s35 F4: a function is recorded and replayed instead)
        r = vjp_magic.differentiate(lambda: NOT_REENTRANT[member](x), x)
        assert RUNS["block"] == runs + 1
    elif member == "a module's full backward hook":  # (s35 T11: no user hook in a pass)
        with pytest.raises(vjp_magic.VJPUsageError, match=r"your hook _hooked\.<locals>"):
            vjp_magic.differentiate(y, x)
        r = vjp_magic.differentiate(lambda: NOT_REENTRANT[member](x), x)
    else:
        r = vjp_magic.differentiate(y, x)
    torch.testing.assert_close(r.jacobian("x"), expected)
    assert x.grad is None


def test_a_reentrant_checkpoint_whose_inputs_need_no_grad_leaves_no_node():
    """(PyTorch gives no gradient through it then; nothing to refuse.)"""
    w = torch.ones(6, dtype=torch.float64, requires_grad=True)
    with pytest.warns(UserWarning):
        h = cp.checkpoint(block, torch.ones(6, dtype=torch.float64), use_reentrant=True)
    assert reentrant_nodes(h * w) == ()


@pytest.mark.parametrize("call", [vjp_magic.sparse_jacobian, vjp_magic.dependency])
def test_the_core_entry_points_refuse(call):
    x = _x()
    y = cp.checkpoint(block, x, use_reentrant=True)
    runs = RUNS["block"]
    with pytest.raises(vjp_magic.VJPUsageError, match="use_reentrant=False"):
        call(y, x)
    assert RUNS["block"] == runs and x.grad is None


def test_not_a_graph():
    assert reentrant_nodes(3.0) == () and reentrant_nodes(torch.ones(2)) == ()
