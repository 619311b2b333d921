"""Adversarial review, session 30 (issues 20 and 23): user mistakes and the messages and
checks around them, through the public API only.

A user mistake must get a short ``VJPUsageError`` that says what to do, never a silently
wrong answer or a traceback from inside the package; a check must not call right numbers
wrong. Expected values come from ``torch.autograd.functional.jacobian`` or mathematics.
Tests marked ``xfail(strict=True)`` are bugs found in this review (they pass once fixed and
then lose the mark); unmarked ones guard what holds today.
"""
from __future__ import annotations

import pytest
import torch

import vjp_magic


def _roll_times(x):
    return x.roll(1) * x


# -- duplicate names: one input silently dropped ---------------------------------------------
def test_duplicate_names_are_refused_by_differentiate():
    x = torch.randn(50, requires_grad=True)
    z = torch.randn(50, requires_grad=True)
    with pytest.raises(vjp_magic.VJPUsageError):
        vjp_magic.differentiate(_roll_times(x), [x, z], names=["a", "a"], seed=0)


def test_duplicate_names_are_refused_by_hessian():
    x = torch.randn(4, requires_grad=True)
    z = torch.randn(4, requires_grad=True)
    with pytest.raises(vjp_magic.VJPUsageError):
        vjp_magic.hessian((x ** 3 * z).sum(), [x, z], names=["a", "a"], seed=0)


def test_distinct_names_keep_both_inputs():
    x = torch.randn(50, dtype=torch.float64, requires_grad=True)
    z = torch.randn(50, dtype=torch.float64, requires_grad=True)
    r = vjp_magic.differentiate(_roll_times(x) * z, [x, z], names=["a", "b"], seed=0)
    expected = torch.autograd.functional.jacobian(
        lambda a: _roll_times(a) * z.detach(), x.detach())
    torch.testing.assert_close(r.jacobian("a"), expected)


def test_the_same_tensor_twice_gives_its_jacobian_twice():
    x = torch.randn(50, dtype=torch.float64, requires_grad=True)
    r = vjp_magic.differentiate(_roll_times(x), [x, x], seed=0)
    expected = torch.autograd.functional.jacobian(_roll_times, x.detach())
    torch.testing.assert_close(r.jacobian("x1"), expected)
    torch.testing.assert_close(r.jacobian("x2"), expected)


# -- a sparse result over the budget: the refusal says why -------------------------------------
def test_sparse_jacobian_refusal_gives_the_nonzero_count():
    x = torch.randn(100_000, requires_grad=True)
    with pytest.raises(vjp_magic.VJPUsageError) as error:
        vjp_magic.sparse_jacobian(_roll_times(x), x, memory_budget=1e6, seed=0)
    assert "200,000 nonzeros" in str(error.value)
    assert "No sparsity pattern paid off" not in str(error.value)


def test_differentiate_refusal_gives_the_nonzero_count():
    x = torch.randn(100_000, requires_grad=True)
    with pytest.raises(vjp_magic.VJPUsageError) as error:
        vjp_magic.differentiate(_roll_times(x), x, memory_budget=1e6, seed=0)
    assert "200,000 nonzeros" in str(error.value)


# -- arguments of the wrong type: a usage error, not a traceback --------------------------------
def test_a_string_budget_is_a_usage_error():
    x = torch.randn(50, requires_grad=True)
    with pytest.raises(vjp_magic.VJPUsageError):
        vjp_magic.sparse_jacobian(_roll_times(x), x, memory_budget="1GB")


def test_a_string_seed_is_a_usage_error():
    x = torch.randn(50, requires_grad=True)
    with pytest.raises(vjp_magic.VJPUsageError):
        vjp_magic.differentiate(_roll_times(x), x, seed="abc")


@pytest.mark.parametrize("call", ["sparse_jacobian", "dependency", "differentiate", "hessian"])
def test_a_freed_graph_is_a_usage_error(call):
    x = torch.randn(50, requires_grad=True)
    y = _roll_times(x)
    y.sum().backward()
    x.grad = None
    with pytest.raises(vjp_magic.VJPUsageError):
        if call == "hessian":
            vjp_magic.hessian((y ** 2).sum(), x)
        else:
            getattr(vjp_magic, call)(y, x)


@pytest.mark.parametrize("axes", [(5, 0), (0, 3)])
def test_dependency_axis_out_of_range_is_a_usage_error(axes):
    x = torch.randn(50, requires_grad=True)
    with pytest.raises(vjp_magic.VJPUsageError):
        vjp_magic.dependency(_roll_times(x), x, *axes)


def test_dependency_takes_negative_axes():
    x = torch.randn(6, 8, dtype=torch.float64, requires_grad=True)
    y = x.roll(1, 1) * x
    assert torch.equal(vjp_magic.dependency(y, x, -1, -1, seed=0).pattern,
                       vjp_magic.dependency(y, x, 1, 1, seed=0).pattern)


@pytest.mark.parametrize("layout", [torch.sparse_coo, "csr"])
def test_other_layouts_are_usage_errors(layout):
    x = torch.randn(50, requires_grad=True)
    y = _roll_times(x)
    with pytest.raises(vjp_magic.VJPUsageError):
        vjp_magic.differentiate(y, x, seed=0).jacobian("x", layout=layout)


@pytest.mark.parametrize("layout", [torch.sparse_csc, "csr"])
def test_other_hessian_layouts_are_usage_errors(layout):
    """Second derivatives come strided, CSR or COO (y.shape + x.shape + x.shape, as a vector
    output's sparse ones are); any other layout is a usage error."""
    x = torch.randn(50, requires_grad=True)
    with pytest.raises(vjp_magic.VJPUsageError):
        vjp_magic.hessian((_roll_times(x) ** 2).sum(), x, seed=0).hessian("x", layout=layout)


# -- --gradcheck: a false alarm on an affine map ------------------------------------------------
def test_gradcheck_is_no_false_alarm_on_a_large_offset(ip, run_ok):
    r = run_ok("%%vjp --gradcheck\n"
               "x = torch.linspace(1, 2, 5, dtype=torch.float64, requires_grad=True)\n"
               "y = x + 1e12")
    assert torch.equal(r.derivatives["x"], torch.ones(5, dtype=torch.float64))
    assert r.gradcheck.ok is not False


@pytest.mark.parametrize("body", [
    "x = torch.linspace(1, 2, 5, dtype=torch.float64, requires_grad=True)\ny = 1e9 * x**2",
    "x = torch.linspace(1, 2, 5, dtype=torch.float64, requires_grad=True)\ny = torch.exp(30*x)",
    "x = torch.linspace(1e-5, 2, 5, dtype=torch.float64, requires_grad=True)\ny = 1 / x",
    "x = torch.tensor([1e6, 2e6], dtype=torch.float64, requires_grad=True)\ny = torch.sin(x)",
    "x = torch.tensor([0.5, 1.5, 2.25], requires_grad=True)\ny = torch.floor(x) * x",
    "x = torch.linspace(1, 2, 5, requires_grad=True)\ny = x * torch.randn(5)",
    "x = torch.linspace(0.1, 0.9, 20, requires_grad=True)\n"
    "y = x * torch.bernoulli(x.detach())",
])
def test_gradcheck_passes_right_derivatives(ip, run_ok, body):
    """Large values, steep or oscillating maps, random draws the replay keeps: no false alarm."""
    assert run_ok("%%vjp --gradcheck\n" + body).gradcheck.ok is True


@pytest.mark.parametrize("body", [
    "x = torch.tensor([0., 1., -1.], requires_grad=True)\ny = torch.relu(x)",
    "x = torch.tensor([1., 1., 0.], requires_grad=True)\ny = x.max()",
    "x = torch.zeros(3, requires_grad=True)\ny = x.norm()",
    "x = torch.tensor([1., 1., 2.], requires_grad=True)\n"
    "y = torch.sort(x)[0] * torch.tensor([1., 2., 3.])",
])
def test_gradcheck_at_a_kink_or_tie_is_inconclusive_not_failed(ip, run_ok, body):
    assert run_ok("%%vjp --gradcheck\n" + body).gradcheck.ok is None
