"""Autograd's global modes a notebook left on (anomaly detection, saved-tensor hooks) are for
the user's code, not for the analysis' own replays and passes (core/quiet.py): no crash on a
probe's 0 times an infinite derivative, no pack or unpack hook called by the analysis; both
modes as they were afterwards.

Expected values: calculus (d sqrt(x)/dx = 1 / (2 sqrt(x)), inf at 0), a plain backward.
"""
from __future__ import annotations

import pytest
import torch

import vjp_magic
from vjp_magic.core.quiet import quiet_autograd


@pytest.fixture
def anomaly_mode():
    before = torch.is_anomaly_enabled(), torch.is_anomaly_check_nan_enabled()
    torch.autograd.set_detect_anomaly(True)
    yield
    torch.autograd.set_detect_anomaly(*before)


class _Counted:
    """Saved-tensor hooks that count their calls."""

    def __init__(self):
        self.count = {"pack": 0, "unpack": 0}

    def pack(self, t):
        self.count["pack"] += 1
        return t

    def unpack(self, t):
        self.count["unpack"] += 1
        return t


def _top():
    return torch._C._autograd._top_saved_tensors_default_hooks(True)


def test_quiet_restores_both_modes_after_an_error(anomaly_mode):
    hooks = _Counted()
    with torch.autograd.graph.saved_tensors_hooks(hooks.pack, hooks.unpack):
        with torch.autograd.graph.save_on_cpu():
            top = _top()
            with pytest.raises(ValueError), quiet_autograd():
                assert not torch.is_anomaly_enabled() and _top() is None
                raise ValueError
            assert torch.is_anomaly_enabled() and _top() == top
        assert _top() == (hooks.pack, hooks.unpack)  # the order kept
    assert _top() is None


def _sqrt_at_zero():
    x = torch.linspace(0, 2, 5, dtype=torch.float64, requires_grad=True)
    expected = torch.cat([torch.tensor([float("inf")], dtype=torch.float64),
                          0.5 / torch.sqrt(x.detach()[1:])])
    return x, expected


def test_differentiate_sqrt_at_zero_in_anomaly_mode(anomaly_mode):
    x, expected = _sqrt_at_zero()
    for r in (vjp_magic.differentiate(torch.sqrt(x), x),
              vjp_magic.differentiate(lambda: torch.sqrt(x), x)):  # replayed
        torch.testing.assert_close(r.derivatives["x"], expected)
    assert torch.is_anomaly_enabled()


def test_hessian_in_anomaly_mode(anomaly_mode):
    x = torch.linspace(0, 2, 5, dtype=torch.float64, requires_grad=True)
    h = vjp_magic.hessian(lambda: (x ** 3).sum(), x)
    torch.testing.assert_close(h.hessian("x"), torch.diag(6 * x.detach()))


def test_dependency_and_sparse_jacobian_in_anomaly_mode(anomaly_mode):
    x = torch.rand(200, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x[::7] = 0
    x.requires_grad_()
    y = torch.sqrt(x) * 3
    d = vjp_magic.dependency(y, x)
    assert torch.equal(d.pattern.to_dense() if d.pattern.layout != torch.strided else d.pattern,
                       torch.eye(200, dtype=torch.bool))
    J = vjp_magic.sparse_jacobian(y, x).to_dense()
    torch.testing.assert_close(J.diagonal(), 1.5 / torch.sqrt(x.detach()))
    assert torch.is_anomaly_enabled()


def test_saved_tensor_hooks_do_not_see_the_analysis(monkeypatch):
    # teach/freed_graph._changed_in_place reads the output graph's saved tensors itself (an
    # unpack per saved tensor: reported, not this module's); here only the analysis is counted
    monkeypatch.setattr("vjp_magic.teach.freed_graph._changed_in_place", lambda output: False)
    x, _ = _sqrt_at_zero()
    x = (x.detach() + 0.5).requires_grad_()
    hooks = _Counted()
    with torch.autograd.graph.saved_tensors_hooks(hooks.pack, hooks.unpack):
        r = vjp_magic.differentiate(lambda: torch.sqrt(x), x)  # replayed: packs nothing
        assert hooks.count == {"pack": 1, "unpack": 0}  # fn's own sqrt, as a plain call
        h = vjp_magic.hessian(lambda: torch.sqrt(x).sum(), x)
        assert hooks.count == {"pack": 2, "unpack": 0}
    torch.testing.assert_close(r.derivatives["x"], 0.5 / torch.sqrt(x.detach()))
    torch.testing.assert_close(h.hessian("x"), torch.diag(-0.25 * x.detach() ** -1.5))


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode], ids=["no_grad",
                                                                             "inference_mode"])
def test_called_with_grad_mode_off(mode):
    """The output built with autograd on, the call made inside no_grad / inference_mode: the
    analysis' passes still build their graphs (a Hessian read all zeros, a stencil's
    compressed passes crashed), and the mode is as it was afterwards."""
    x = torch.linspace(0.5, 2, 5, dtype=torch.float64, requires_grad=True)
    z = torch.randn(3000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    z.requires_grad_()
    scalar, stencil = (x ** 3).sum(), z.roll(1) * z
    expected = torch.diag(z.detach().roll(1)) + torch.diag(z.detach()[1:], -1)
    expected[0, -1] = z.detach()[0]
    with mode():
        h = vjp_magic.hessian(scalar, x)
        J = vjp_magic.sparse_jacobian(stencil, z)
        assert not torch.is_grad_enabled()
    torch.testing.assert_close(h.hessian("x"), torch.diag(6 * x.detach()))
    torch.testing.assert_close(J.to_dense(), expected)
