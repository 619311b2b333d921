"""A tensor subclass's ``__torch_function__`` / ``__torch_dispatch__`` is the user's code: the
cell (or the function handed over) runs it as a plain run does, the analysis runs none of it.

Each entry point is counted on a logging subclass (every call of its ``__torch_function__``),
its numbers compared with ``torch.func.jacrev`` / ``torch.func.hessian`` on plain tensors or
with backward passes over the user's own graph. A ``__torch_dispatch__`` runs below autograd
in every backward pass and cannot be turned off: each entry point refuses it with a short
message before any pass. A subclass whose ``__torch_function__`` changes the graph but not
the values (a straight-through estimator) is never replayed as plain torch operations: the
derivatives are the cell's own graph's.
"""
from __future__ import annotations

import pytest
import torch
from IPython.core.error import UsageError
from torch.utils._pytree import tree_map

import vjp_magic
from vjp_magic.core.errors import VJPUsageError

CALLS = [0]  # calls of the subclasses' own code


class Counting(torch.Tensor):
    """A logging tensor: its ``__torch_function__`` counts, then runs torch's operation."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        CALLS[0] += 1
        return super().__torch_function__(func, types, args, kwargs or {})


class Straight(torch.Tensor):
    """``sin`` as a straight-through estimator: the value sin(x), the derivative 1."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        CALLS[0] += 1
        out = super().__torch_function__(func, types, args, kwargs or {})
        return args[0] + (out - args[0]).detach() if func is torch.Tensor.sin else out


class Wrapped(torch.Tensor):
    """A wrapper subclass whose ``__torch_dispatch__`` counts, then runs on the tensor held."""

    @staticmethod
    def __new__(cls, elem):
        made = torch.Tensor._make_wrapper_subclass(
            cls, elem.size(), strides=elem.stride(), dtype=elem.dtype, device=elem.device,
            requires_grad=elem.requires_grad)
        made.elem = elem
        return made

    __torch_function__ = torch._C._disabled_torch_function_impl

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        CALLS[0] += 1
        out = func(*tree_map(_unwrapped, args), **tree_map(_unwrapped, kwargs or {}))
        return tree_map(lambda t: Wrapped(t) if type(t) is torch.Tensor else t, out)


def _unwrapped(value):
    return value.elem if isinstance(value, Wrapped) else value


def _f(t):
    return t.sin() * t.roll(1)


_X = torch.linspace(-1, 1, 6, dtype=torch.float64)
_J = torch.func.jacrev(_f)(_X)
_H = torch.func.hessian(lambda t: _f(t).sum())(_X)


def _counted(make, call):
    """``call()``'s value and how often the subclass's code ran during it."""
    made = make()
    CALLS[0] = 0
    value = call(*made)
    return value, CALLS[0]


def _counting():
    x = _X.clone().as_subclass(Counting).requires_grad_()
    return x, _f(x)


def _plain(t):
    return t.as_subclass(torch.Tensor) if isinstance(t, torch.Tensor) else t


def _fn_calls() -> int:
    """How often a plain call of ``_f`` on a Counting tensor runs its ``__torch_function__``."""
    x = _X.clone().as_subclass(Counting).requires_grad_()
    CALLS[0] = 0
    _f(x)
    return CALLS[0]


# -- __torch_function__: every Python entry point runs none of it ------------------------------

def test_subclass_differentiate_on_a_tensor_runs_none_of_it():
    r, calls = _counted(_counting, lambda x, y: vjp_magic.differentiate(y, x))
    assert calls == 0
    torch.testing.assert_close(_plain(r.jacobian("x")), _J)


def test_subclass_differentiate_on_a_function_runs_it_once():
    r, calls = _counted(_counting, lambda x, y: vjp_magic.differentiate(lambda: _f(x), x))
    assert calls == _fn_calls()  # the function's own calls, once
    torch.testing.assert_close(_plain(r.jacobian("x")), _J)


def test_subclass_hessian_on_a_tensor_runs_none_of_it():
    def make():
        x, y = _counting()
        return x, y.sum()
    h, calls = _counted(make, lambda x, s: vjp_magic.hessian(s, x))
    assert calls == 0
    torch.testing.assert_close(_plain(h.hessian("x")), _H)


def test_subclass_hessian_on_a_function_runs_it_once():
    h, calls = _counted(_counting, lambda x, y: vjp_magic.hessian(lambda: _f(x).sum(), x))
    assert calls == _fn_calls() + 1  # _f's calls and the sum
    torch.testing.assert_close(_plain(h.hessian("x")), _H)


def test_subclass_sparse_jacobian_runs_none_of_it():
    J, calls = _counted(_counting, lambda x, y: vjp_magic.sparse_jacobian(y, x))
    assert calls == 0
    torch.testing.assert_close(_plain(J.to_dense()), _J)


def test_subclass_dependency_runs_none_of_it():
    d, calls = _counted(_counting, lambda x, y: vjp_magic.dependency(y, x))
    assert calls == 0
    assert torch.equal(_plain(d.pattern.to_dense()), _J != 0)  # y[t] reads x[t] and x[t-1]


# Was a strict xfail: check graded outside the quiet block (teach.grading read the output and
# x through the subclass, 4 calls); fixed by T7-subclass-run.patch (pipeline.check), 1963d28.
def test_subclass_check_runs_none_of_it():
    verdict, calls = _counted(_counting, lambda x, y: vjp_magic.check(_J.clone(), y, x))
    assert verdict.correct
    assert calls == 0


# -- a straight-through subclass: the cell's own graph, never a plain replay -------------------

def _straight_rows(x, y) -> torch.Tensor:
    """dy[i]/dx by backward passes over the user's own graph (what the cell built)."""
    return torch.stack([_plain(torch.autograd.grad(y[i], x, retain_graph=True)[0])
                        for i in range(len(y))])


def test_subclass_straight_through_function_is_differentiated_on_its_own_graph():
    x = _X.clone().as_subclass(Straight).requires_grad_()
    expected = _straight_rows(x, _f(x))
    assert not torch.allclose(expected, _J)  # the estimator's graph is not sin's
    r = vjp_magic.differentiate(lambda: _f(x), x)
    torch.testing.assert_close(_plain(r.jacobian("x")), expected)
    assert sum("Straight" in note for note in r.notes) == 1  # why no replay, said once


def test_subclass_straight_through_cell_is_differentiated_on_its_own_graph(ip, run_ok):
    ip.user_ns.update(Straight=Straight, base=_X)
    r = run_ok("%%vjp\nx = base.clone().as_subclass(Straight).requires_grad_()\n"
               "y = x.sin() * x.roll(1)")
    x, y = ip.user_ns["x"], ip.user_ns["y"]
    torch.testing.assert_close(_plain(r.jacobian("x")), _straight_rows(x, y))


# -- __torch_dispatch__: refused before any pass ----------------------------------------------

def _wrapped():
    x = Wrapped(_X.clone()).requires_grad_()
    return x, _f(x)


@pytest.mark.parametrize("api", ["differentiate", "differentiate_fn", "hessian", "hessian_fn",
                                 "sparse_jacobian", "dependency", "check"])
def test_subclass_torch_dispatch_is_refused_before_any_pass(api):
    x, y = _wrapped()
    calls = {
        "differentiate": lambda: vjp_magic.differentiate(y, x),
        "differentiate_fn": lambda: vjp_magic.differentiate(lambda: y, x),
        "hessian": lambda: vjp_magic.hessian(y, x),
        "hessian_fn": lambda: vjp_magic.hessian(lambda: y, x),
        "sparse_jacobian": lambda: vjp_magic.sparse_jacobian(y, x),
        "dependency": lambda: vjp_magic.dependency(y, x),
        "check": lambda: vjp_magic.check(_J.clone(), y, x),
    }
    CALLS[0] = 0
    with pytest.raises(VJPUsageError, match="__torch_dispatch__"):
        calls[api]()
    assert CALLS[0] == 0


def test_subclass_torch_dispatch_cell_is_refused(ip, run_ok):
    ip.user_ns.update(Wrapped=Wrapped, base=_X)
    run_ok("x = Wrapped(base.clone()).requires_grad_()\ny = x.sin() * x.roll(1)")
    CALLS[0] = 0
    result = ip.run_cell("%jacobian y x")
    assert isinstance(result.error_in_exec, UsageError)
    assert "__torch_dispatch__" in str(result.error_in_exec)
    assert CALLS[0] == 0


# -- no false refusal: nn.Parameter is a subclass with torch's own defaults ---------------------

def test_subclass_parameters_are_replayed_as_before():
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2).double()
    data = torch.randn(4, 3, dtype=torch.float64)
    r = vjp_magic.differentiate(lambda: layer(data).tanh().sum(1), layer, names="layer")
    assert not any("own graph" in note for note in r.notes)  # the hook-free replay
    expected = torch.func.jacrev(
        lambda w: torch.nn.functional.linear(data, w, layer.bias).tanh().sum(1))(layer.weight)
    torch.testing.assert_close(r.jacobian("layer.weight"), expected.detach())


# -- the magics (their displays read x too: render/view, run/guard, run/record) ----------------

@pytest.mark.parametrize("line", ["%jacobian y x", "%hessian y.sum() x"])
def test_subclass_line_magics_run_none_of_it(ip, run_ok, line):
    ip.user_ns.update(Counting=Counting, base=_X)
    run_ok("x = base.clone().as_subclass(Counting).requires_grad_()\ny = x.sin() * x.roll(1)")
    CALLS[0] = 0
    run_ok(line)
    assert CALLS[0] == (1 if "sum" in line else 0)  # y.sum() is the user's


# Was a strict xfail: --symbolic replayed a straight-through subclass as plain sin and showed
# its formula; fixed by T7-subclass-symbolic.patch (symbolic/replay refuses it), 1963d28.
def test_subclass_symbolic_shows_no_formula_of_operations_the_cell_did_not_run(ip, run_ok):
    ip.user_ns.update(Straight=Straight)
    r = run_ok("%%vjp --symbolic\nx = torch.linspace(-1, 1, 4).as_subclass(Straight)"
               ".requires_grad_()\ny = x.sin() * x")
    text = r._repr_mimebundle_()["text/plain"]
    assert "cos" not in text, text
