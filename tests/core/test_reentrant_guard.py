"""core.reentrant's runtime guard: a custom backward that re-enters autograd (a module, enable_grad,
torch.autograd.grad, the engine, torch.func) is stopped before that starts, whichever way it is
reached; ordinary backwards, once_differentiable and a custom Function inside a non-reentrant
checkpoint are differentiated as torch.autograd.functional.jacobian says; a debugger's profiler
is restored."""
from __future__ import annotations

import sys

import pytest
import torch
import torch.utils.checkpoint as cp

import vjp_magic
from vjp_magic.core.reentrant import reentrant_guard, reentrant_nodes

RUNS = {"block": 0, "hook": 0}
NET = torch.nn.Linear(5, 5).double()
NET.register_forward_hook(lambda m, i, o: RUNS.__setitem__("hook", RUNS["hook"] + 1))


def block(h):
    RUNS["block"] += 1
    return torch.tanh(h * 2.0 + 1.0)


def _enable_grad(h, g):
    with torch.enable_grad():
        return (block(h) * g).sum()


def _set_grad_enabled(h, g):
    with torch.set_grad_enabled(True):
        return (block(h) * g).sum()


def _raw_switch(h, g):
    torch._C._set_grad_enabled(True)
    try:
        return block(h) * g
    finally:
        torch._C._set_grad_enabled(False)


def _module(h, g):
    return NET(h) * g


def _grad(h, g):
    h = h.detach().requires_grad_()
    return torch.autograd.grad(h * 3, h, g)[0]


def _engine(h, g):
    h = h.detach().requires_grad_()
    return torch.autograd.Variable._execution_engine.run_backward(
        (h * 3,), (g,), False, False, (h,), allow_unreachable=True, accumulate_grad=False)[0]


def _func(h, g):
    return torch.func.vjp(block, h)[1](g)[0]


ENTRIES = {"enable_grad": _enable_grad, "set_grad_enabled(True)": _set_grad_enabled,
           "torch._C._set_grad_enabled(True)": _raw_switch, "a module": _module,
           "torch.autograd.grad": _grad, "the engine": _engine, "torch.func.vjp": _func}


class Reentering(torch.autograd.Function):
    """Its backward reaches ``ENTRY[0]`` through a callable on the class (no name to read),
    only where the gradient is nonzero (so the check on zeros misses it: the passes' guard)."""

    entry = [None]

    @staticmethod
    def forward(ctx, h):
        ctx.save_for_backward(h)
        return h * h

    @staticmethod
    def backward(ctx, g):
        (h,) = ctx.saved_tensors
        if bool((g != 0).any()):
            Reentering.entry[0](h, g)
        return 2 * h * g


@pytest.mark.parametrize("entry", list(ENTRIES))
def test_the_guard_stops_each_entry_before_it_starts(entry):
    Reentering.entry[0] = ENTRIES[entry]
    x = torch.linspace(-1, 1, 5, dtype=torch.float64, requires_grad=True)
    y = Reentering.apply(x * 1.0)
    before = dict(RUNS)
    with pytest.raises(vjp_magic.VJPUsageError, match="Reentering.*use_reentrant=False"):
        with reentrant_guard():
            torch.autograd.grad(y, x, torch.ones_like(y))
    assert RUNS == before and x.grad is None and torch.is_grad_enabled()


@pytest.mark.parametrize("entry", ["enable_grad", "a module", "torch.autograd.grad"])
def test_differentiate_stops_a_backward_reentrant_on_nonzero_gradients_only(entry):
    Reentering.entry[0] = ENTRIES[entry]
    x = torch.linspace(-1, 1, 5, dtype=torch.float64, requires_grad=True)
    assert reentrant_nodes(Reentering.apply(x * 1.0)) == ()  # (on zeros: ordinary)
    before = dict(RUNS)
    with pytest.raises(vjp_magic.VJPUsageError, match="Reentering"):
        vjp_magic.differentiate(Reentering.apply(x * 1.0), x)
    assert RUNS == before and x.grad is None


class Swallowing(torch.autograd.Function):
    """A reentrant backward that catches every error and falls back."""

    @staticmethod
    def forward(ctx, h):
        ctx.save_for_backward(h)
        ctx.fn = _module
        return h * h

    @staticmethod
    def backward(ctx, g):
        (h,) = ctx.saved_tensors
        try:
            return ctx.fn(h, g)
        except Exception:  # noqa: BLE001 - the user's fallback
            return 2 * h * g


def test_a_backward_that_swallows_the_error_is_still_found():
    x = torch.linspace(-1, 1, 5, dtype=torch.float64, requires_grad=True)
    before = dict(RUNS)
    assert reentrant_nodes(Swallowing.apply(x * 1.0)) == ("SwallowingBackward",)
    assert RUNS == before


class Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        with torch.no_grad():  # (switching grad mode off is no re-entry)
            return 2 * x * g


ORDINARY = {
    "a custom Function": lambda x: Square.apply(x).sin(),
    "inside a non-reentrant checkpoint": lambda x: cp.checkpoint(
        lambda h: Square.apply(NET(h)), x, use_reentrant=False),
}


@pytest.mark.parametrize("member", list(ORDINARY))
def test_ordinary_graphs_are_differentiated_under_the_guard(member):
    x = torch.linspace(-1, 1, 5, dtype=torch.float64, requires_grad=True)
    y = ORDINARY[member](x)
    assert reentrant_nodes(y) == ()
    expected = torch.autograd.functional.jacobian(ORDINARY[member], x.detach())
    with reentrant_guard():
        rows = [torch.autograd.grad(y, x, v, retain_graph=True)[0]
                for v in torch.eye(5, dtype=torch.float64)]
    torch.testing.assert_close(torch.stack(rows), expected)
    if member == "inside a non-reentrant checkpoint":  # (s35 F4) each pass would re-run the
        with pytest.raises(vjp_magic.VJPUsageError, match="checkpoint"):  # block: refused
            vjp_magic.differentiate(y, x)
        return
    torch.testing.assert_close(vjp_magic.differentiate(y, x).jacobian(), expected)


def test_a_debuggers_profiler_is_restored():
    def debugger(frame, event, arg):
        return None

    previous = sys.getprofile()
    sys.setprofile(debugger)
    try:
        threads = torch._C._is_multithreading_enabled()
        with reentrant_guard():
            assert sys.getprofile() is not debugger
            assert not torch._C._is_multithreading_enabled()  # (a CUDA backward on this thread)
        assert sys.getprofile() is debugger and torch._C._is_multithreading_enabled() == threads
        Reentering.entry[0] = _module
        x = torch.ones(3, dtype=torch.float64, requires_grad=True)
        with pytest.raises(vjp_magic.VJPUsageError), reentrant_guard():
            torch.autograd.grad(Reentering.apply(x * 1.0).sum(), x)
        assert sys.getprofile() is debugger
    finally:
        sys.setprofile(previous)
