"""User mistakes in the arguments every public entry shares: two inputs under one name (one
would silently be dropped), a memory budget or a seed of the wrong kind. Each is a short
VJPUsageError that says what to pass, raised before any backward; right arguments of every
accepted kind still work."""
from __future__ import annotations

import math

import numpy
import pytest
import torch

import vjp_magic
from vjp_magic.core import memory, validation


def _xz(n: int = 40):
    torch.manual_seed(0)
    return (torch.randn(n, dtype=torch.float64, requires_grad=True),
            torch.randn(n, dtype=torch.float64, requires_grad=True))


# -- names -------------------------------------------------------------------------------------
@pytest.mark.parametrize("names", [["a", "a"], ("a", "a"), ["a", "b", "a"]])
def test_duplicate_names_in_a_list_are_refused(names):
    x, z = _xz()
    inputs = [x, z, x][:len(names)]
    with pytest.raises(vjp_magic.VJPUsageError, match="names must differ"):
        vjp_magic.differentiate(x * z, inputs, names=names, seed=0)
    with pytest.raises(vjp_magic.VJPUsageError, match="names must differ"):
        vjp_magic.hessian((x * z).sum(), inputs, names=names, seed=0)


def test_duplicate_names_refused_before_the_function_runs():
    x, z = _xz()
    calls = []

    def fn():
        calls.append(1)
        return x * z
    with pytest.raises(vjp_magic.VJPUsageError, match="names must differ"):
        vjp_magic.differentiate(fn, [x, z], names=["a", "a"], seed=0)
    assert calls == []


def test_the_same_tensor_under_one_name_twice_is_refused_in_a_list():
    x, _ = _xz()  # the user asked for two inputs: two names are needed
    with pytest.raises(vjp_magic.VJPUsageError, match="names must differ"):
        vjp_magic.differentiate(x * x, [x, x], names=["a", "a"], seed=0)


def test_a_module_parameter_and_a_tensor_under_one_name_are_refused():
    torch.manual_seed(0)
    net, x = torch.nn.Linear(4, 4).double(), torch.randn(4, dtype=torch.float64)
    w = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)
    y = net(x) * (w @ x)
    with pytest.raises(vjp_magic.VJPUsageError, match="'net.weight'"):
        vjp_magic.differentiate(y, {"net": net, "net.weight": w}, seed=0)
    with pytest.raises(vjp_magic.VJPUsageError, match="names must differ"):
        vjp_magic.differentiate(y, [net, w], names=["net", "net.weight"], seed=0)


def test_a_module_parameter_named_again_as_itself_is_kept_once():
    torch.manual_seed(0)
    net, x = torch.nn.Linear(4, 3).double(), torch.randn(4, dtype=torch.float64)
    r = vjp_magic.differentiate(net(x), {"net": net, "net.weight": net.weight}, seed=0)
    assert sorted(r.derivatives) == ["net.bias", "net.weight"]
    expected = torch.autograd.functional.jacobian(
        lambda w: torch.nn.functional.linear(x, w, net.bias.detach()), net.weight.detach())
    torch.testing.assert_close(r.jacobian("net.weight"), expected)


def test_distinct_names_keep_every_input():
    x, z = _xz()
    r = vjp_magic.differentiate(x.roll(1) * z, [x, z], names=["a", "b"], seed=0)
    torch.testing.assert_close(
        r.jacobian("a"), torch.autograd.functional.jacobian(lambda a: a.roll(1) * z.detach(),
                                                            x.detach()))
    torch.testing.assert_close(
        r.jacobian("b"), torch.autograd.functional.jacobian(lambda b: x.detach().roll(1) * b,
                                                            z.detach()))


_TWO_MODULES = """
import torch
torch.manual_seed(0)
m1, m2 = torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)
p1, p2 = list(m1.named_parameters()), list(m2.named_parameters())
x = torch.randn(3)
y = m1(x) * m2(x)
s = y.sum()
"""


@pytest.mark.parametrize("line", ["%%vjp --wrt p1 p2\ny = m1(x) * m2(x)",
                                  "%jacobian y wrt p1 p2", "%hessian s wrt p1 p2"])
def test_the_magics_refuse_two_inputs_under_one_name(ip, run_ok, usage_error, line):
    run_ok(_TWO_MODULES)  # both lists name their tensors 'weight' and 'bias'
    assert "names must differ" in usage_error(line)


def test_the_magic_takes_one_input_named_twice_once(ip, run_ok):
    r = run_ok("%%vjp --wrt x x\nx = torch.tensor([1., 2.], requires_grad=True)\ny = x ** 2")
    assert list(r.derivatives) == ["x"]
    torch.testing.assert_close(r.derivatives["x"], torch.tensor([2., 4.]))


def test_add_named_unit():
    a, b = torch.zeros(1), torch.ones(1)
    named = validation.add_named({"a": a}, {"a": a, "b": b})
    assert list(named) == ["a", "b"] and named["a"] is a
    with pytest.raises(vjp_magic.VJPUsageError):
        validation.add_named(named, {"b": a})


# -- memory budget -----------------------------------------------------------------------------
BAD_BUDGETS = ["1GB", 0, -1, -0.5, math.nan, math.inf, True, [1e9]]


def _entries(x):
    y = x.roll(1) * x
    return {
        "differentiate": lambda **kw: vjp_magic.differentiate(y, x, **kw),
        "differentiate(fn)": lambda **kw: vjp_magic.differentiate(lambda: x.roll(1) * x, x,
                                                                  **kw),
        "hessian": lambda **kw: vjp_magic.hessian((y ** 2).sum(), x, **kw),
        "hessian(vector)": lambda **kw: vjp_magic.hessian(y, x, **kw),
        "sparse_jacobian": lambda **kw: vjp_magic.sparse_jacobian(y, x, **kw),
        "sparse_jacobian(identity)": lambda **kw: vjp_magic.sparse_jacobian(x, x, **kw),
        "dependency": lambda **kw: vjp_magic.dependency(y, x, **kw),
    }


ENTRIES = sorted(_entries(torch.zeros(1, requires_grad=True)))


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("budget", BAD_BUDGETS, ids=repr)
def test_a_bad_memory_budget_is_a_usage_error(entry, budget):
    x = torch.randn(50, requires_grad=True)
    with pytest.raises(vjp_magic.VJPUsageError, match="fraction of free memory"):
        _entries(x)[entry](memory_budget=budget)


@pytest.mark.parametrize("budget", [None, 0.5, 10**9, 1e9, numpy.float64(0.25), numpy.int64(10**9)],
                         ids=repr)
def test_good_memory_budgets_resolve(budget):
    found = memory.resolve_budget(budget, torch.device("cpu"))
    assert isinstance(found, int) and found > 0


# -- seed --------------------------------------------------------------------------------------
BAD_SEEDS = ["abc", "3", 1.5, 2.0, True, [0]]


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("seed", BAD_SEEDS, ids=repr)
def test_a_bad_seed_is_a_usage_error(entry, seed):
    x = torch.randn(50, requires_grad=True)
    with pytest.raises(vjp_magic.VJPUsageError, match="seed is an int"):
        _entries(x)[entry](seed=seed)


@pytest.mark.parametrize("seed", [0, 12345, numpy.int64(7), torch.tensor(7), -3], ids=repr)
def test_good_seeds_are_taken(seed):
    x = torch.randn(50, dtype=torch.float64, requires_grad=True)
    r = vjp_magic.differentiate(x.roll(1) * x, x, seed=seed)
    assert r.seed == int(seed) and isinstance(r.seed, int)
    torch.testing.assert_close(r.jacobian("x"), torch.autograd.functional.jacobian(
        lambda a: a.roll(1) * a, x.detach()))


@pytest.mark.parametrize("call", ["differentiate", "hessian"])
@pytest.mark.parametrize("keyword", [{"seed": "abc"}, {"memory_budget": "1GB"}], ids=repr)
def test_a_bad_seed_or_budget_is_refused_before_the_function_runs(call, keyword):
    x, z = _xz()
    calls = []

    def fn():
        calls.append(1)
        return (x * z).sum()
    with pytest.raises(vjp_magic.VJPUsageError):
        getattr(vjp_magic, call)(fn, x, **keyword)
    assert calls == []
