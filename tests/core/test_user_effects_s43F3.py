"""The Python state a custom Function's backward (called by every pass) or its replayed
forward (--gradcheck) changes is put back (core/user_effects, session 43 F3): after the
analysis every global, container and object is as a plain run of the cell leaves it (a
plain run calls no backward and runs the forward once). Expected values: a plain run of the
same cell. Reading and putting back run none of the user's code (__eq__ / __hash__ raise)."""
from __future__ import annotations

import sys

import pytest
import torch

import vjp_magic
from vjp_magic.core import user_effects

STATE = '''
import torch, collections, numpy as np
SEEN = set()
QUEUE = collections.deque(maxlen=5)
BUF = bytearray(b"ab")
class Box:
    count = 0                       # a class attribute counted in
B = Box(); B.t = torch.zeros(())
GONE = 1
D = {}
OBJ = np.empty(2, dtype=object); OBJ[0] = 'a'
class Strict:                       # comparing or hashing it is the user's code: refused
    armed = False
    def __eq__(self, other): raise RuntimeError("__eq__ ran")
    def __hash__(self):
        if Strict.armed: raise RuntimeError("__hash__ ran")
        return 1
S = Strict()
STRICT = [S]; STRICT_SET = {S}; STRICT_KEYS = {S: 1}
Strict.armed = True
'''
_BACKWARD = '''
class F(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.calls = 0
        {forward}
        return x * 2
    @staticmethod
    def backward(ctx, g):
        {backward}
        return g * 2
'''
_CELL = "x = torch.linspace(1., 2., 4, requires_grad=True)\ny = F.apply(x) ** 2\n"
BODIES = {  # what the code does: the state a test reads
    "a set grown": ("SEEN.add(len(SEEN))", lambda ns: sorted(ns["SEEN"])),
    "a deque appended to": ("QUEUE.append(1)", lambda ns: list(ns["QUEUE"])),
    "a bytearray written": ("BUF[0] = 120", lambda ns: bytes(ns["BUF"])),
    "an object's attribute rebound": ("B.t = B.t + 1", lambda ns: ns["B"].t.item()),
    "a class attribute counted in": ("Box.count += 1", lambda ns: ns["Box"].count),
    "a global deleted": ("global GONE\n        del GONE", lambda ns: "GONE" in ns),
    "a global added": ("global NEW\n        NEW = 1", lambda ns: "NEW" in ns),
    "a dict key added": ("D[len(D)] = 1", lambda ns: dict(ns["D"])),
    "a numpy object array's item": ("OBJ[0] = OBJ[0] + 'b'", lambda ns: ns["OBJ"][0]),
    "a ctx attribute": ("ctx.calls += 1", lambda ns: ns["y"].grad_fn.next_functions[0][0]
                        .calls),
    "a list of the user's objects": ("STRICT.append(STRICT[0]); STRICT_SET.clear(); "
                                     "STRICT_KEYS.clear()",
                                     lambda ns: (len(ns["STRICT"]), len(ns["STRICT_SET"]),
                                                 len(ns["STRICT_KEYS"]))),
    "another module's counter": ("helper_s43f3.bump()",
                                 lambda ns: sys.modules["helper_s43f3"].COUNT),
}


@pytest.fixture(autouse=True)
def helper_module(tmp_path, monkeypatch):
    """A module of the user's, imported by the cell, whose function counts in its global."""
    (tmp_path / "helper_s43f3.py").write_text(
        "COUNT = 0\ndef bump():\n    global COUNT\n    COUNT += 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("helper_s43f3", None)


def _state(name: str, where: str, api=None):
    sys.modules.pop("helper_s43f3", None)
    ns: dict = {}
    exec("import helper_s43f3\n" + STATE, ns)
    body = BODIES[name][0]
    exec(_BACKWARD.format(backward=body if where == "backward" else "pass",
                          forward=body if where == "forward" else "pass"), ns)
    exec(_CELL, ns)
    if api is not None:
        api(ns)
    return BODIES[name][1](ns)


_APIS = {"differentiate": lambda ns: vjp_magic.differentiate(ns["y"], ns["x"]),
         "dependency": lambda ns: vjp_magic.dependency(ns["y"], ns["x"])}


@pytest.mark.parametrize("api", list(_APIS))
@pytest.mark.parametrize("name", list(BODIES))
def test_a_backward_leaves_the_state_it_changes_as_a_plain_run(name, api):
    assert _state(name, "backward", _APIS[api]) == _state(name, "backward")


@pytest.mark.parametrize("name", [n for n in BODIES if n != "a ctx attribute"])
def test_gradchecks_replays_leave_a_forwards_state_as_a_plain_run(ip, run_ok, name):
    def cell(line):
        ip.run_cell("%reset -f")
        sys.modules.pop("helper_s43f3", None)
        run_ok("import helper_s43f3\n" + STATE)
        run_ok(_BACKWARD.format(forward=BODIES[name][0], backward="pass"))
        run_ok(line + _CELL)
        return BODIES[name][1](ip.user_ns)

    assert cell("%%vjp --gradcheck\n") == cell("")


def test_a_graph_without_a_custom_function_records_no_python_state(monkeypatch):
    """The dense path pays nothing: no state is recorded where no user's code is called."""
    calls = []
    real = user_effects.kept
    monkeypatch.setattr(user_effects, "kept", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = torch.linspace(1., 2., 4, requires_grad=True)
    r = vjp_magic.differentiate((x.sin() * x).sum(), x)
    expected = torch.func.grad(lambda t: (t.sin() * t).sum())(x.detach())
    assert torch.allclose(r.jacobian("x").reshape(-1), expected)
    assert calls == []
