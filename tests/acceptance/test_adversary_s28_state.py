"""Adversarial review, session 28 (issues 20 and 23): the user's state after the analysis.

Each public entry point on a graph the user built: ``.grad`` of ``retain_grad()`` tensors,
the global RNG, module buffers, hooks and ``requires_grad`` flags must be as a plain run
leaves them, and the user's next ``backward`` must work. Expected values come from plain
autograd. Tests marked ``xfail(strict=True)`` are bugs found in this review.
"""
from __future__ import annotations

import copy
import gc

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import vjp_magic


def _stencil_through(h):
    return F.pad(h, (1, 1))[2:] * h


class _Keeps(nn.Module):
    """Keeps its activation for inspection, as feature-visualisation code does."""

    def forward(self, x):
        h = torch.sin(x)
        h.retain_grad()
        self.h = h
        return _stencil_through(h)


def _user_backward_after(y, h):
    """The user's own next step; ``h.grad`` as a plain run gives it."""
    y.sum().backward()
    return h.grad


# -- dependency: retain_grad tensors ----------------------------------------------------------
@pytest.mark.parametrize("n", [8, 300])
def test_dependency_with_a_retain_grad_tensor_on_the_graph(n):
    x = torch.randn(n, dtype=torch.float64, requires_grad=True)
    h = torch.sin(x)
    h.retain_grad()
    y = _stencil_through(h)
    vjp_magic.dependency(y, x)
    assert h.grad is None
    fresh = torch.sin(x.detach()).requires_grad_()
    (expected,) = torch.autograd.grad(_stencil_through(fresh).sum(), fresh)
    torch.testing.assert_close(_user_backward_after(y, h), expected)


def test_result_dependency_with_a_retain_grad_tensor_on_the_graph():
    """r.dependency (through differentiate's result) keeps it: guards the class."""
    x = torch.randn(300, dtype=torch.float64, requires_grad=True)
    h = torch.sin(x)
    h.retain_grad()
    y = _stencil_through(h)
    r = vjp_magic.differentiate(y, x, seed=0)
    assert r.dependency("x", 0, 0).kind is not None
    assert h.grad is None
    _user_backward_after(y, h)
    assert h.grad is not None and torch.isfinite(h.grad).all()


# -- sparse_jacobian: a retain_grad tensor kept by a module ---------------------------------
def test_sparse_jacobian_leaves_a_module_kept_activation_alone():
    x = torch.randn(300, dtype=torch.float64, requires_grad=True)
    net = _Keeps()
    y = net(x)
    gc.collect()  # a notebook ages objects between cells
    vjp_magic.sparse_jacobian(y, x, seed=0)
    assert net.h.grad is None


@pytest.mark.parametrize("api", ["differentiate", "hessian", "check"])
def test_other_entry_points_leave_a_module_kept_activation_alone(api):
    x = torch.randn(300, dtype=torch.float64, requires_grad=True)
    net = _Keeps()
    y = net(x)
    gc.collect()
    if api == "differentiate":
        vjp_magic.differentiate(y, x, seed=0)
    elif api == "hessian":
        vjp_magic.hessian(y.sum(), x, seed=0)
    else:
        vjp_magic.check(torch.zeros(300, 300, dtype=torch.float64), y, x)
    assert net.h.grad is None


# -- differentiate(fn, model): the call is the user's, the analysis runs none of it ------------
def _model(kind: str) -> nn.Module:
    torch.manual_seed(0)
    layers = {"bn": [nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)],
              "dropout": [nn.Linear(5, 8), nn.Dropout(0.5), nn.Tanh(), nn.Linear(8, 3)]}[kind]
    return nn.Sequential(*layers).double()


@pytest.mark.parametrize("mixes", [False, True])
@pytest.mark.parametrize("kind", ["bn", "dropout"])
def test_callable_per_sample_keeps_state_and_values(kind, mixes):
    """Per-sample losses from a callable (B = 48, the vectorised path): buffers, RNG, hooks
    and requires_grad as after one plain call; values equal a loop of backward passes,
    also when the loss mixes samples (a batch mean subtracted)."""
    model = _model(kind)
    data = torch.randn(48, 5, dtype=torch.float64)
    targets = torch.randint(0, 3, (48,))
    calls = []
    model.register_forward_hook(lambda *a: calls.append("forward"))
    model[0].register_full_backward_hook(lambda *a: calls.append("backward"))

    def fn():
        losses = F.cross_entropy(model(data), targets, reduction="none")
        return losses - losses.mean() if mixes else losses

    start = copy.deepcopy(model.state_dict())
    torch.manual_seed(1)
    losses = fn()
    plain = (copy.deepcopy(model.state_dict()), torch.get_rng_state(), list(calls))
    params = dict(model.named_parameters())
    rows = [torch.autograd.grad(losses[b], list(params.values()), retain_graph=True)
            for b in range(48)]
    model.load_state_dict(start)
    calls.clear()
    torch.manual_seed(1)
    r = vjp_magic.differentiate(fn, model, seed=0)
    for key, value in model.state_dict().items():
        assert torch.equal(value, plain[0][key]), key
    assert torch.equal(torch.get_rng_state(), plain[1])
    assert calls == plain[2]
    for i, (name, p) in enumerate(params.items()):
        expected = torch.stack([row[i] for row in rows])
        torch.testing.assert_close(r.jacobian(name).reshape(expected.shape), expected)
        assert p.grad is None and p.requires_grad


def test_magic_per_sample_with_batchnorm_keeps_buffers(ip, run_ok):
    """%%vjp --wrt m on 40 per-sample losses through BatchNorm2d in training mode (a batch
    of one still normalises over H × W, so the per-sample replay runs): running statistics
    as after one plain run."""
    setup = ("m = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3),"
             " torch.nn.Flatten(), torch.nn.Linear(48, 1)).double()\n"
             "X = torch.randn(40, 2, 6, 6, dtype=torch.float64)\n")
    body = "losses = m(X)[:, 0] ** 2"
    run_ok("torch.manual_seed(0)\n" + setup)
    run_ok(body)
    plain = {k: v.clone() for k, v in ip.user_ns["m"].state_dict().items()}
    run_ok("torch.manual_seed(0)\n" + setup)
    run_ok("%%vjp --of losses --wrt m\n" + body)
    for key, value in ip.user_ns["m"].state_dict().items():
        assert torch.equal(value, plain[key]), key


class _KeepsThen(nn.Module):
    """Keeps its activation h = sin(x) (retain_grad) on itself, then applies ``post``."""

    def __init__(self, post):
        super().__init__()
        self.post = post

    def forward(self, x):
        h = torch.sin(x)
        h.retain_grad()
        self.h = h
        return self.post(h)


MODULE_KEPT = {
    "differentiate, a scalar (one backward)": (64, lambda h: (h ** 2).sum(),
                                                lambda y, x: vjp_magic.differentiate(y, x, seed=0)),
    "differentiate, probes, elementwise": (
        400, lambda h: h ** 2, lambda y, x: vjp_magic.differentiate(y, x, seed=0, exact_up_to=0)),
    "differentiate, row-wise softmax": (4000, lambda h: h.reshape(-1, 4).softmax(1),
                                        lambda y, x: vjp_magic.differentiate(y, x, seed=0)),
    "dependency, elementwise": (400, lambda h: h ** 2,
                                lambda y, x: vjp_magic.dependency(y, x, seed=0)),
    "hessian, a scalar": (4000, lambda h: (h ** 2).sum(),
                          lambda y, x: vjp_magic.hessian(y, x, seed=0)),
}


@pytest.mark.parametrize("case", list(MODULE_KEPT))
def test_a_module_kept_activation_is_left_alone(case):
    n, post, call = MODULE_KEPT[case]
    x = torch.randn(n, dtype=torch.float64, requires_grad=True)
    net = _KeepsThen(post)
    y = net(x)
    gc.collect()  # a notebook ages objects between cells
    call(y, x)
    assert net.h.grad is None


KEEPS_CELL = ("import gc\nimport torch.nn.functional as F\n"
              "class Keeps(torch.nn.Module):\n"
              "    def forward(self, x):\n"
              "        h = torch.sin(x)\n        h.retain_grad()\n        self.h = h\n"
              "        return F.pad(h, (1, 1))[2:] * h\n"
              "x = torch.randn(300, dtype=torch.float64, requires_grad=True)\n"
              "net = Keeps()\ny = net(x)\ngc.collect()\n")


@pytest.mark.parametrize("magic", ["%jacobian y x", "%hessian (y ** 2).sum() wrt x",
                                   "%%vjp --wrt x\nz = y * 2"])
def test_magics_on_an_earlier_graph_leave_a_module_kept_activation_alone(ip, run_ok, magic):
    run_ok(KEEPS_CELL)
    run_ok(magic)
    assert ip.user_ns["net"].h.grad is None


def test_vjp_on_the_same_cell_leaves_a_module_kept_activation_alone(ip, run_ok):
    """The cell's own graph is replayed hook-free: nothing of the user's is touched."""
    run_ok(KEEPS_CELL)
    run_ok("%%vjp --wrt x\nz = net(x)")
    assert ip.user_ns["net"].h.grad is None
