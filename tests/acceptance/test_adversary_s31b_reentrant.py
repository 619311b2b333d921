"""Adversary s31b: core/reentrant.py reads a custom Function's backward by the names its code
reads. Reentrant backwards it misses (autograd reached through an alias, a callable stored on
ctx, a method of the class, a lambda, functools.partial, a module) re-run the user's code on
every pass; ordinary backwards must not be refused."""
from __future__ import annotations

import functools

import pytest
import torch
import torch.autograd as ag
from torch import autograd as engine

import vjp_magic
from vjp_magic.core.reentrant import reentrant_nodes

RUNS = {"block": 0}


def block(h):
    RUNS["block"] += 1
    return torch.tanh(h * 2.0 + 1.0)


def _rebuild_and_grad(h, g):
    """What each reentrant backward below does, however it reaches it."""
    h = h.detach().requires_grad_()
    with torch.enable_grad():
        out = block(h)
    return torch.autograd.grad(out, h, g)


class _Base(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h):
        ctx.save_for_backward(h)
        ctx.fn = _rebuild_and_grad
        ctx.entry = "grad"
        return block(h)


class ViaAlias(_Base):
    """``import torch.autograd as ag``: ag.grad(...)."""

    @staticmethod
    def backward(ctx, g):
        h = ctx.saved_tensors[0].detach().requires_grad_()
        with torch.enable_grad():
            out = block(h)
        return ag.grad(out, h, g)


class ViaFromImportAlias(_Base):
    """``from torch import autograd as engine``: engine.backward(...) then h.grad."""

    @staticmethod
    def backward(ctx, g):
        h = ctx.saved_tensors[0].detach().requires_grad_()
        with torch.enable_grad():
            out = block(h)
        engine.backward(out, g)
        return h.grad


class ViaGetattr(_Base):
    @staticmethod
    def backward(ctx, g):
        h = ctx.saved_tensors[0].detach().requires_grad_()
        with torch.enable_grad():
            out = block(h)
        return getattr(torch.autograd, ctx.entry)(out, h, g)


class ViaCtx(_Base):
    """The re-run stored on ctx in forward: ctx.fn(...)."""

    @staticmethod
    def backward(ctx, g):
        return ctx.fn(ctx.saved_tensors[0], g)


class ViaMethod(_Base):
    """A staticmethod of the class doing the work: ViaMethod.rerun(...)."""

    @staticmethod
    def rerun(h, g):
        return _rebuild_and_grad(h, g)

    @staticmethod
    def backward(ctx, g):
        return ViaMethod.rerun(ctx.saved_tensors[0], g)


class ViaLambda(_Base):
    rerun = staticmethod(lambda h, g: _rebuild_and_grad(h, g))

    @staticmethod
    def backward(ctx, g):
        return ViaLambda.rerun(ctx.saved_tensors[0], g)


_PARTIAL = functools.partial(_rebuild_and_grad)


class ViaPartial(_Base):
    @staticmethod
    def backward(ctx, g):
        return _PARTIAL(ctx.saved_tensors[0], g)


class _Rerunner(torch.nn.Module):
    def forward(self, h, g):
        return _rebuild_and_grad(h, g)


RERUNNER = _Rerunner()


class ViaModule(_Base):
    """A backward that calls a module whose forward rebuilds and calls autograd."""

    @staticmethod
    def backward(ctx, g):
        return RERUNNER(ctx.saved_tensors[0], g)


MISSED = {
    "import torch.autograd as ag; ag.grad": ViaAlias,
    "getattr(torch.autograd, ctx.entry)": ViaGetattr,
    "ctx.fn(...) stored in forward": ViaCtx,
    "a staticmethod of the class": ViaMethod,
    "a lambda stored on the class": ViaLambda,
    "functools.partial": ViaPartial,
    "an nn.Module called in backward": ViaModule,
}


def _through(cls):
    x = torch.linspace(-1, 1, 5, dtype=torch.float64, requires_grad=True)
    return x, cls.apply(x * 1.0).sum()


def test_engine_backward_under_enable_grad_is_found():
    """Guard: 'from torch import autograd as engine; engine.backward' under enable_grad."""
    _, y = _through(ViaFromImportAlias)
    assert reentrant_nodes(y)


def test_the_helpers_really_are_reentrant():
    """Guard: each class above re-runs block in its backward (so each is a true positive)."""
    for cls in MISSED.values():
        x, y = _through(cls)
        before = RUNS["block"]
        (gx,) = torch.autograd.grad(y, x)
        assert RUNS["block"] == before + 1
        expected = 2 * (1 - torch.tanh(2 * x.detach() + 1) ** 2)
        torch.testing.assert_close(gx, expected)


@pytest.mark.parametrize("name", list(MISSED))
def test_reentrant_backward_is_found(name):
    _, y = _through(MISSED[name])
    assert reentrant_nodes(y), name


def test_differentiate_through_an_aliased_reentrant_backward_runs_no_user_code():
    x = torch.linspace(-1, 1, 5, dtype=torch.float64, requires_grad=True)
    before = RUNS["block"]
    try:
        vjp_magic.differentiate(lambda: ViaAlias.apply(x * 1.0), x)
    except vjp_magic.VJPUsageError:
        pass
    assert RUNS["block"] == before + 1  # the function's own forward, once; no backward re-run


# ---- false refusals: ordinary backwards that only read saved tensors -------------------------

class Scaled(torch.autograd.Function):
    """Ordinary: stores a Python function's name and a precomputed Jacobian on ctx, reads
    torch.autograd.grad_mode in a check; no autograd call."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        ctx.func = "square"
        ctx.jacobian = 2 * x.detach()
        return x * x

    @staticmethod
    def backward(ctx, g):
        assert ctx.func == "square"
        return ctx.jacobian * g


class ConvGrad(torch.autograd.Function):
    """Ordinary: a conv1d whose backward is torch.nn.grad's closed form (no autograd call); it
    checks its ctx is a torch.autograd.function.FunctionCtx."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        ctx.input_shape = x.shape
        return torch.nn.functional.conv1d(x, WEIGHT)

    @staticmethod
    def backward(ctx, g):
        assert isinstance(ctx, torch.autograd.function.FunctionCtx)
        return torch.nn.grad.conv1d_input(ctx.input_shape, WEIGHT, g)


WEIGHT = torch.tensor([[[1.0, -2.0, 0.5]]], dtype=torch.float64)


ORDINARY = {"ctx.func and ctx.jacobian attributes": Scaled,
            "torch.nn.grad.conv1d_input and torch.autograd.function.FunctionCtx": ConvGrad}


@pytest.mark.parametrize("name", list(ORDINARY))
def test_ordinary_custom_backward_is_not_refused(name):
    cls = ORDINARY[name]
    x = torch.linspace(-1, 1, 5, dtype=torch.float64).reshape(1, 1, 5).requires_grad_()
    y = cls.apply(x * 1.0)
    assert not reentrant_nodes(y)
    r = vjp_magic.differentiate(lambda: cls.apply(x * 1.0), x)
    expected = torch.autograd.functional.jacobian(lambda t: cls.apply(t * 1.0), x.detach())
    torch.testing.assert_close(r.jacobian(), expected)


class Patched(_Base):
    """Ordinary at first; its backward is replaced by a reentrant one later (a notebook that
    edits a class's method in place)."""

    @staticmethod
    def backward(ctx, g):
        (h,) = ctx.saved_tensors
        return 2 * (1 - torch.tanh(2 * h + 1) ** 2) * g


def _patched_backward(ctx, g):
    h = ctx.saved_tensors[0].detach().requires_grad_()
    with torch.enable_grad():
        out = block(h)
    return torch.autograd.grad(out, h, g)


def test_a_backward_replaced_later_is_judged_again():
    original = Patched.backward
    try:
        assert not reentrant_nodes(_through(Patched)[1])
        Patched.backward = staticmethod(_patched_backward)
        assert reentrant_nodes(_through(Patched)[1])
    finally:
        Patched.backward = staticmethod(original)


CELL_SETUP = """import torch
calls = {"hook": 0}
net = torch.nn.Linear(4, 4).double()
net.register_forward_hook(lambda m, i, o: calls.__setitem__("hook", calls["hook"] + 1))
def rerun(h, g):
    h = h.detach().requires_grad_()
    with torch.enable_grad():
        out = net(h)
    return torch.autograd.grad(out, h, g)
class Block(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h):
        ctx.save_for_backward(h)
        ctx.fn = rerun
        return net(h)
    @staticmethod
    def backward(ctx, g):
        return ctx.fn(ctx.saved_tensors[0], g)
"""


def test_vjp_cell_through_ctx_fn_fires_no_hook(ip, run_ok):
    run_ok(CELL_SETUP)
    try:
        run_ok("%%vjp\nx = torch.linspace(-1, 1, 4, dtype=torch.float64, "
               "requires_grad=True)\ny = Block.apply(x * 1.0)\n")
    except Exception:  # noqa: BLE001 - a usage error is the right answer
        pass
    assert ip.user_ns["calls"]["hook"] == 1
