"""The analysis runs none of the user's code (session 35, F4): a non-reentrant checkpoint's
block, the user's saved_tensors_hooks and a __torch_dispatch__ subclass held in the middle of
the graph run only as a plain run runs them. Counted: the block runs once (the forward), the
unpack hook and the subclass's dispatch never, in every entry point; expected derivatives from
torch.autograd.functional.jacobian.
"""
from __future__ import annotations

import functools

import pytest
import torch
import torch.utils.checkpoint as cp
from torch.utils._pytree import tree_map

import vjp_magic
from vjp_magic.core.reentrant import reentrant_nodes

RUNS = {"block": 0, "unpack": 0, "dispatch": 0}


def block(t):
    RUNS["block"] += 1
    return torch.sin(t) * 2


def _x():
    return torch.linspace(-1, 1, 5, dtype=torch.float64, requires_grad=True)


def _expected():
    return torch.autograd.functional.jacobian(lambda t: torch.sin(t) * 2, _x().detach())


def _checkpointed(x):
    return cp.checkpoint(block, x, use_reentrant=False)


@pytest.fixture(autouse=True)
def _zero():
    for key in RUNS:
        RUNS[key] = 0


# Before: differentiate(y, x) re-ran the block 3 times (once per pass), hessian 2, sparse_jacobian
# 2, dependency 1.
@pytest.mark.parametrize("entry", ["differentiate", "hessian", "sparse_jacobian", "dependency"])
def test_a_given_checkpointed_output_runs_the_block_once(entry):
    x = _x()
    y = _checkpointed(x)
    if entry == "hessian":
        y = y.sum()
    call = getattr(vjp_magic, entry)
    with pytest.raises(vjp_magic.VJPUsageError, match="checkpoint"):
        call(y, x) if entry != "dependency" else call(y, x, 0, 0)
    assert RUNS["block"] == 1 and x.grad is None


@pytest.mark.parametrize("entry", ["differentiate", "hessian"])
def test_the_advice_works_a_function_is_replayed(entry):
    x = _x()
    with pytest.raises(vjp_magic.VJPUsageError, match=rf"{entry}\(lambda"):
        getattr(vjp_magic, entry)(_checkpointed(x).sum(), x)
    RUNS["block"] = 0
    if entry == "differentiate":
        r = vjp_magic.differentiate(lambda: _checkpointed(x), x)
        torch.testing.assert_close(r.jacobian("x"), _expected())
    else:
        h = vjp_magic.hessian(lambda: _checkpointed(x).sum(), x)
        torch.testing.assert_close(h.hessian("x"), torch.diag(-2 * torch.sin(x.detach())))
    assert RUNS["block"] == 1 and x.grad is None


def test_the_users_own_backward_still_recomputes_once():
    x = _x()
    y = _checkpointed(x)
    with pytest.raises(vjp_magic.VJPUsageError):
        vjp_magic.differentiate(y, x)
    y.sum().backward()
    assert RUNS["block"] == 2  # as in a plain run: the forward, then the user's backward
    torch.testing.assert_close(x.grad, _expected().sum(0))


def _unpack(t):
    RUNS["unpack"] += 1
    return t


def test_the_users_saved_tensors_hooks_never_run():
    x = _x()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t, _unpack):
        y = torch.sin(x) * 2
    with pytest.raises(vjp_magic.VJPUsageError, match="saved_tensors_hooks"):
        vjp_magic.differentiate(y, x)
    assert RUNS["unpack"] == 0


def test_pytorchs_own_save_on_cpu_is_no_user_code():
    x = _x()
    with torch.autograd.graph.save_on_cpu():
        y = torch.sin(x) * 2
    torch.testing.assert_close(vjp_magic.differentiate(y, x).jacobian("x"), _expected())


class Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 2 * x * g


def test_judging_a_custom_function_inside_a_checkpoint_runs_no_block():
    """(Before: its backward, probed on zeros, unpacked x: the block ran again.)"""
    x = _x()
    y = cp.checkpoint(lambda h: Square.apply(block(h)), x, use_reentrant=False)
    assert reentrant_nodes(y) == ()
    assert RUNS["block"] == 1


CELL_SETUP = """
import torch
import torch.utils.checkpoint as cp
runs = [0]
def block(t):
    runs[0] += 1
    return torch.sin(t) * 2
class Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x
    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 2 * x * g
"""


def test_a_cell_is_replayed_without_the_block(ip, run_ok):
    run_ok(CELL_SETUP)
    r = run_ok("%%vjp\nx = torch.linspace(-1, 1, 5, dtype=torch.float64, requires_grad=True)\n"
               "y = cp.checkpoint(block, x, use_reentrant=False)")
    torch.testing.assert_close(r.jacobian("x"), _expected())
    assert ip.user_ns["runs"] == [1]


def test_a_cell_that_cannot_be_replayed_is_refused_without_the_block(ip, run_ok,
                                                                      usage_error):
    """A custom Function too: its own graph is differentiated, whose passes would recompute."""
    run_ok(CELL_SETUP)
    message = usage_error(
        "%%vjp\nx = torch.linspace(-1, 1, 5, dtype=torch.float64, requires_grad=True)\n"
        "y = Square.apply(cp.checkpoint(block, x, use_reentrant=False))")
    assert "checkpoint" in message
    assert ip.user_ns["runs"] == [1]
    assert ip.user_ns["x"].grad is None


class Logged(torch.Tensor):
    """A wrapper subclass whose __torch_dispatch__ counts its calls (the user's code)."""

    @staticmethod
    def __new__(cls, inner):
        return torch.Tensor._make_wrapper_subclass(cls, inner.shape, dtype=inner.dtype,
                                                   device=inner.device)

    def __init__(self, inner):
        self.inner = inner

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        RUNS["dispatch"] += 1
        unwrap = lambda t: t.inner if isinstance(t, Logged) else t  # noqa: E731
        return func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs or {}))


class Saving(torch.autograd.Function):
    """Saves a Logged tensor for its backward, returns a plain one."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(Logged(x.detach().clone()))
        return x * x

    @staticmethod
    def backward(ctx, g):
        (held,) = ctx.saved_tensors
        return 2 * held * g


class Keeping(torch.autograd.Function):
    """Keeps a Logged tensor on its ctx (not saved), returns a plain one."""

    @staticmethod
    def forward(ctx, x):
        ctx.held = [Logged(x.detach().clone())]
        return x * x

    @staticmethod
    def backward(ctx, g):
        return 2 * ctx.held[0] * g


@pytest.mark.parametrize("function", [Saving, Keeping])
@pytest.mark.parametrize("entry", ["differentiate", "sparse_jacobian"])
def test_a_dispatching_subclass_in_the_middle_is_refused_before_any_pass(function, entry):
    x = _x()
    y = torch.sin(function.apply(x))
    before = RUNS["dispatch"]
    with pytest.raises(vjp_magic.VJPUsageError, match="__torch_dispatch__"):
        getattr(vjp_magic, entry)(y, x)
    assert RUNS["dispatch"] == before and x.grad is None


class Unpacking:
    """An unpack hook that is a callable object (its __call__ is the user's code)."""

    def __call__(self, t):
        return _unpack(t)


def _unpack_with(t, extra):
    return _unpack(t)


@pytest.mark.parametrize("unpack", [Unpacking(), functools.partial(_unpack_with, extra=1)],
                         ids=["callable object", "partial"])
def test_any_callable_unpack_hook_is_the_users(unpack):
    x = _x()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t, unpack):
        y = torch.sin(x) * 2
    with pytest.raises(vjp_magic.VJPUsageError, match="saved_tensors_hooks"):
        vjp_magic.differentiate(y, x)
    with pytest.raises(vjp_magic.VJPUsageError, match="saved_tensors_hooks"):
        vjp_magic.sparse_jacobian(y, x)  # (no up-front check: the pass guard stops it)
    assert RUNS["unpack"] == 0


EARLIER = """
import torch, torch.utils.checkpoint as cp
runs = [0]
def block(t):
    runs[0] += 1
    return torch.sin(t) * 2
x = torch.linspace(-1, 1, 3, requires_grad=True)
h = cp.checkpoint(block, x, use_reentrant=False)
"""


def test_a_graph_the_cells_backward_frees_is_not_kept_to_be_freed_by_a_pass(ip, run_ok):
    """A graph from an earlier cell (no record rebuilds it) that the cell's own backward frees:
    kept by the guard, it was freed after the analysis by a pass of zeros, which re-ran the
    block (3 runs, 2 in a plain run). Now the cell's pass frees it, as in a plain run."""
    counts = []
    for magic in ("", "%%vjp\n"):
        run_ok(EARLIER)
        ip.run_cell(magic + "y = (h * 2).sum()\ny.backward()")
        counts.append((ip.user_ns["runs"][0], ip.user_ns["x"].grad.tolist()))
    assert counts[1] == counts[0] and counts[0][0] == 2
