"""A retain_grad tensor kept where no scan reaches (an aged object outside the frames: another
module's dict, a closure, a plain object's attribute) keeps its .grad as a plain run leaves it,
through every entry point; and Tensor.retain_grad behaves as torch's own."""
from __future__ import annotations

import gc
import types

import pytest
import torch
import torch.nn.functional as F

import vjp_magic

_ELSEWHERE = types.ModuleType("elsewhere")  # not __main__, not on the stack


def _stash(h):
    """h kept only by a closure in another module's dict, and by a plain object."""
    holder = types.SimpleNamespace(h=h)
    _ELSEWHERE.keep = (lambda: holder, )
    return _ELSEWHERE


def _stencil(h):
    return F.pad(h, (1, 0))[:-1] + h ** 3 + F.pad(h, (0, 1))[1:]


def _graph(n):
    x = torch.randn(n, dtype=torch.float64, requires_grad=True)
    h = torch.sin(x)
    h.retain_grad()
    _stash(h)
    y = _stencil(h)
    return x, y


@pytest.mark.parametrize("api", ["differentiate", "sparse_jacobian", "dependency", "hessian"])
@pytest.mark.parametrize("n", [8, 300])
def test_an_aged_retain_grad_tensor_kept_elsewhere_is_left_alone(api, n):
    x, y = _graph(n)
    del_h_from_frames = None  # noqa: F841 - h is only reachable through _ELSEWHERE now
    gc.collect()  # a notebook ages objects between cells
    call = {"differentiate": lambda: vjp_magic.differentiate(y, x, seed=0),
            "sparse_jacobian": lambda: vjp_magic.sparse_jacobian(y, x, seed=0),
            "dependency": lambda: vjp_magic.dependency(y, x, seed=0),
            "hessian": lambda: vjp_magic.hessian((y ** 2).sum(), x, seed=0)}[api]
    call()
    h = _ELSEWHERE.keep[0]().h
    assert h.grad is None
    y.sum().backward()
    fresh = torch.sin(x.detach()).requires_grad_()
    (expected,) = torch.autograd.grad(_stencil(fresh).sum(), fresh)
    torch.testing.assert_close(h.grad, expected)


def test_retain_grad_is_torchs_own():
    x = torch.randn(3, requires_grad=True)
    h = x * 2
    assert h.retain_grad() is None and h.retains_grad
    h.sum().backward()
    torch.testing.assert_close(h.grad, torch.ones(3))
    with pytest.raises(RuntimeError):
        torch.randn(3).retain_grad()  # no grad to retain: torch's own error


def test_retain_grad_under_torch_compile_warns_nothing_and_retains():
    """The wrapper calls torch's own method in a form dynamo traces: no graph-break warning
    about an unknown builtin, and the .grad retained as without vjp_magic."""
    import warnings

    def f(x):
        y = x.sin()
        y.retain_grad()
        return y.sum(), y

    x = torch.randn(3, requires_grad=True)
    try:
        compiled = torch.compile(f, backend="eager")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            total, y = compiled(x)
    except RuntimeError as error:  # a Python this torch cannot compile for
        pytest.skip(f"torch.compile unavailable here: {error}")
    assert not [w for w in caught if "builtin" in str(w.message)]
    total.backward()
    torch.testing.assert_close(y.grad, torch.ones(3))
