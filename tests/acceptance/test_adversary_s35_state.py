"""Adversarial review, session 35 (G15: state), guards for what held: after a ``%%vjp`` cell
the process is as a plain run of the cell leaves it.

1. global switches the cell itself sets (grad mode off at its end, anomaly mode,
   deterministic algorithms, the default dtype, the thread count);
2. the rewrite that records subscript and attribute targets (``d[k] = v``, ``o.a += v``)
   calls the user's ``__getitem__``/``__setitem__``/``__setattr__`` and key functions exactly
   as a plain run does, in the same order;
3. the next cell's ``backward`` succeeds or fails as after a plain run (a graph the cell's
   own backward freed stays freed; a retained one stays usable) and accumulates the same
   ``.grad``.

Expected: a plain run of the same cell in the same shell.
"""
from __future__ import annotations

import pytest
import torch

_BODY = "x = torch.linspace(-1, 1, 5, requires_grad=True)\ny = torch.sin(x)\n"


def _switches() -> dict:
    return {"grad": torch.is_grad_enabled(), "anomaly": torch.is_anomaly_enabled(),
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "dtype": torch.get_default_dtype(), "threads": torch.get_num_threads()}


_SET_IN_CELL = {
    "grad mode off": "torch.set_grad_enabled(False)\n",
    "anomaly mode": "torch.autograd.set_detect_anomaly(True)\n",
    "deterministic": "torch.use_deterministic_algorithms(True)\n",
    "default dtype": "torch.set_default_dtype(torch.float64)\n",
    "one thread": "torch.set_num_threads(1)\n",
}


@pytest.fixture
def switches_restored():
    before = _switches()
    yield
    torch.set_grad_enabled(before["grad"])
    torch.autograd.set_detect_anomaly(before["anomaly"])
    torch.use_deterministic_algorithms(before["deterministic"])
    torch.set_default_dtype(before["dtype"])
    torch.set_num_threads(before["threads"])


@pytest.mark.parametrize("switch", list(_SET_IN_CELL))
def test_a_switch_the_cell_sets_stays_set(ip, run_ok, switches_restored, switch):
    before = _switches()
    run_ok(_BODY + _SET_IN_CELL[switch])
    plain = _switches()
    torch.set_grad_enabled(before["grad"])
    torch.autograd.set_detect_anomaly(before["anomaly"])
    torch.use_deterministic_algorithms(before["deterministic"])
    torch.set_default_dtype(before["dtype"])
    torch.set_num_threads(before["threads"])
    run_ok("%%vjp\n" + _BODY + _SET_IN_CELL[switch])
    assert _switches() == plain


# -- 2. the target-recording rewrite calls the user's code as a plain run does ---------------

_LOGGING = '''
log = []
class D(dict):
    def __getitem__(self, k):
        log.append(("get", k))
        return super().__getitem__(k)
    def __setitem__(self, k, v):
        log.append(("set", k))
        super().__setitem__(k, v)
class O:
    def __init__(self):
        self.__dict__["_v"] = 0
    def __getattr__(self, n):
        log.append(("getattr", n))
        return self.__dict__["_v"]
    def __setattr__(self, n, v):
        log.append(("setattr", n))
        self.__dict__["_v"] = v
it = iter([5, 5, 5])
def key():
    k = next(it)
    log.append(("key", k))
    return k
d, o = D(), O()
x = torch.linspace(-1, 1, 5, requires_grad=True)
'''

_TARGETS = {
    "d[key()] += x": "d[5] = x * 1\nd[key()] += x\ny = d[5]\n",
    "o.y += x": "o.y = x * 1\no.y += x\ny = o.y\n",
    "d['a'], o.b = ...": "d['a'], o.b = x**2, x**3\ny = d['a'] + o.b\n",
    "d['a'], d['b'] = d['b'], d['a']": (
        "d['a'], d['b'] = x, x**2\nd['a'], d['b'] = d['b'], d['a']\ny = d['a']\n"),
}


@pytest.mark.parametrize("target", list(_TARGETS))
def test_recorded_targets_call_the_users_code_as_a_plain_run(ip, run_ok, target):
    run_ok(_LOGGING)
    run_ok(_TARGETS[target])
    plain, y = list(ip.user_ns["log"]), ip.user_ns["y"].detach().clone()
    run_ok(_LOGGING)
    run_ok("%%vjp\n" + _TARGETS[target])
    assert ip.user_ns["log"] == plain
    assert torch.equal(ip.user_ns["y"].detach(), y)


# -- 3. the next cell's backward ------------------------------------------------------------

_BACKWARDS = {
    "freed by the cell's backward": "y.sum().backward()\n",
    "retained by the cell's backward": "y.sum().backward(retain_graph=True)\n",
    "freed by torch.autograd.grad": "g, = torch.autograd.grad(y.sum(), x)\n",
    "a part freed": "h = y.exp()\ny.sum().backward()\n",
}


def _next_cell(ip):
    result = ip.run_cell("y.sum().backward()\nafter = x.grad.clone()\n")
    return result.success, (ip.user_ns["after"].tolist() if result.success else None)


@pytest.mark.parametrize("cell", list(_BACKWARDS))
def test_the_next_cells_backward_is_as_after_a_plain_cell(ip, run_ok, cell):
    body = "x = torch.linspace(-1, 1, 5, requires_grad=True)\ny = x.exp()\n" + _BACKWARDS[cell]
    run_ok(body)
    plain = _next_cell(ip)
    run_ok("%%vjp\n" + body)
    assert _next_cell(ip) == plain
