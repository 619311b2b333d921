"""Review, session 43 (R1, tests only): the user's state, and "the analysis runs none of the
user's code".

What earlier reviews did not try: a custom ``autograd.Function``'s backward (called by every
pass of the analysis, where a plain run of the cell calls none) that reaches the user's
tensors by routes ``core/backward_writes.reached`` does not follow (a class attribute read
through an instance, a property, an ``lru_cache``, a generator's frame, a
``WeakValueDictionary``, a ``threading.local``, a ``ContextVar``, a numpy object array), or
that changes state other than a tensor's values (a name rebound, a list grown, an int
counted, a numpy array written); the same in a custom forward that ``--gradcheck`` replays
(``run/forward_writes``).

Expected values: a plain run of the same cell from the same seeds (state), mathematics
(numbers). Strict xfails are findings (``R1-n``; the reason says what is wrong and the class
to fix); unmarked tests guard what held.
"""
from __future__ import annotations

import pytest
import torch

import vjp_magic

# -- 1. a custom backward writing a tensor reached by a route reached() does not follow -----

ROUTES = '''
import torch, numpy as np, functools, weakref, threading, contextvars
class Holder:
    total = torch.zeros(())          # a class attribute, read through an instance
H = Holder()
_HIDDEN = torch.zeros(())
class Prop:
    @property
    def buf(self): return _HIDDEN    # only the property's getter reads it
P = Prop()
@functools.lru_cache(maxsize=None)
def cached(): return torch.zeros(())
cached()
def _gen():
    t = torch.zeros(())
    while True:
        yield t
GEN = _gen()
GEN_T = next(GEN)
class Box: pass
K = Box(); K.t = torch.zeros(())
WVD = weakref.WeakValueDictionary(); WVD['k'] = K
TL = threading.local(); TL.t = torch.zeros(())
CV = contextvars.ContextVar('cv', default=torch.zeros(()))
OBJ = np.empty(1, dtype=object); OBJ[0] = torch.zeros(())
class Ga:
    def __getattr__(self, name): return _GA[name]
_GA = {'t': torch.zeros(())}
GA = Ga()
PL = torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(()))])
BN = torch.nn.BatchNorm1d(3)
W = torch.zeros(3)
'''
_BACKWARD = '''
class F(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x): return x * 2
    @staticmethod
    def backward(ctx, g):
        {body}
        return g * 2
'''
_CELL = "x = torch.linspace(1., 2., 4, requires_grad=True)\ny = F.apply(x) ** 2\n"
_MISSED = {  # route: (what the backward does, the tensor it writes)
    "class attribute via an instance": ("H.total.add_(1)", lambda ns: ns["Holder"].total),
    "property": ("P.buf.add_(1)", lambda ns: ns["_HIDDEN"]),
    "lru_cache": ("cached().add_(1)", lambda ns: ns["cached"]()),
    "generator frame": ("next(GEN).add_(1)", lambda ns: ns["GEN_T"]),
    "WeakValueDictionary": ("WVD['k'].t.add_(1)", lambda ns: ns["K"].t),
    "threading.local": ("TL.t.add_(1)", lambda ns: ns["TL"].t),
    "ContextVar": ("CV.get().add_(1)", lambda ns: ns["CV"].get()),
    "numpy object array": ("OBJ[0].add_(1)", lambda ns: ns["OBJ"][0]),
}
_HELD = {
    "__getattr__": ("GA.t.add_(1)", lambda ns: ns["_GA"]["t"]),
    "ParameterList": ("PL[0].data.add_(1)", lambda ns: ns["PL"][0]),
    "BatchNorm buffer": ("BN.num_batches_tracked.add_(1)",
                         lambda ns: ns["BN"].num_batches_tracked),
    "through .numpy()": ("W.numpy()[0] += 1", lambda ns: ns["W"]),
}
_ROUTES = {**_MISSED, **_HELD}

R1_1 = ("R1-1: a custom Function's backward that writes in place a tensor of the user's reached "
        "through a class attribute read via an instance (H.total), a property's getter, an "
        "functools.lru_cache'd function, a generator's frame (next(GEN)), a "
        "WeakValueDictionary, a threading.local, a contextvars.ContextVar or a numpy object "
        "array leaves it 6 passes' worth written after differentiate / %%vjp, with no "
        "refusal, where a plain run of the cell calls no backward and leaves it 0; the README "
        "promises the put-back for tensors 'reached by a global name, a closure, a dict, "
        "list or object attribute, a method, ...'; class: core/backward_writes.reached opens "
        "only the base containers, user classes' instance dicts/slots and FunctionType "
        "methods: not class attributes, properties/descriptors, C-level wrappers "
        "(lru_cache), frames, weakref containers, stdlib holders or numpy object arrays")


def _run(route: str, api=None):
    ns: dict = {}
    exec(ROUTES, ns)
    exec(_BACKWARD.format(body=_ROUTES[route][0]), ns)
    exec(_CELL, ns)
    if api is not None:
        try:
            api(ns)
        except vjp_magic.VJPUsageError:
            pass  # a refusal is an answer; what matters is the tensor after
    written = _ROUTES[route][1](ns)
    return written.detach().clone(), written._version


_APIS = {
    "differentiate": lambda ns: vjp_magic.differentiate(ns["y"], ns["x"]),
    "dependency": lambda ns: vjp_magic.dependency(ns["y"], ns["x"]),
}


@pytest.mark.xfail(strict=True, reason=R1_1)
@pytest.mark.parametrize("api", list(_APIS))
@pytest.mark.parametrize("route", list(_MISSED))
def test_a_backward_writing_a_tensor_reached_otherwise_leaves_it_as_a_plain_run(route, api):
    value, version = _run(route, _APIS[api])
    plain_value, plain_version = _run(route)
    assert torch.equal(value, plain_value) and version == plain_version


@pytest.mark.parametrize("route", list(_HELD))
def test_a_backward_writing_a_tensor_reached_so_is_put_back(route):
    value, version = _run(route, _APIS["differentiate"])
    plain_value, plain_version = _run(route)
    assert torch.equal(value, plain_value) and version == plain_version


@pytest.mark.xfail(strict=True, reason=R1_1)
@pytest.mark.parametrize("route", ["class attribute via an instance", "threading.local",
                                   "numpy object array"])
def test_a_vjp_cell_whose_backward_writes_a_tensor_reached_otherwise(ip, run_ok, route):
    run_ok(ROUTES)
    run_ok(_BACKWARD.format(body=_ROUTES[route][0]))
    ip.run_cell("%%vjp\n" + _CELL)  # a refusal is an answer too
    written = _ROUTES[route][1](ip.user_ns)
    plain_value, plain_version = _run(route)
    assert torch.equal(written, plain_value) and written._version == plain_version
