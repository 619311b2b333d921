"""The retain_grad guard's cost (issue 20's dense row): no pass of zeros where a plain pass the
analysis makes anyway ran through the same nodes after its vectorised passes; the scan finds
retain_grad tensors in containers of every kind it looks into. Expected values:
torch.func.jacrev, and mathematics (d/du of sum(u**2) is 2u)."""
from __future__ import annotations

import collections
import gc

import pytest
import torch

import vjp_magic
from vjp_magic.core import checked_batches, retained
from vjp_magic.core.analysis import differentiate
from pass_counter import counted




def _dense(n=64, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    w1 = torch.randn(n, n, generator=g, dtype=dtype) / n ** 0.5
    w2 = torch.randn(n, n, generator=g, dtype=dtype) / n ** 0.5
    x = torch.randn(n, generator=g, dtype=dtype, requires_grad=True)
    return (lambda v: torch.tanh(w2 @ torch.tanh(w1 @ v))), x


def test_dense_jacobian_equals_jacrev_without_a_pass_of_zeros(monkeypatch):
    f, x = _dense()
    flushes = []
    real = retained._flush
    monkeypatch.setattr(retained, "_flush", lambda out: flushes.append(1) or real(out))
    # a probed graph (tanh and mv are trusted to batch right: no probe, the pass of zeros is
    # then the one plain pass; tests/core/test_trusted_batching_s37D9.py counts it)
    monkeypatch.setattr(checked_batches, "TRUSTED_BATCHING", frozenset())
    y = f(x)
    r = differentiate(y, x, seed=3)
    torch.testing.assert_close(r.jacobian("x"), torch.func.jacrev(f)(x.detach()))
    assert flushes == []  # the probe's plain pass came after the vectorised one
    # one plain pass timing the first chunk, one vectorised pass, the probe: nothing more
    assert counted(lambda: differentiate(f(x), x, seed=3))[1] <= 3


def test_a_plain_pass_to_fewer_inputs_leaves_the_pass_of_zeros(monkeypatch):
    flushes = []
    real = retained._flush
    monkeypatch.setattr(retained, "_flush", lambda out: flushes.append(1) or real(out))
    a = torch.randn(4, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    y = a * b
    with retained.grads_kept(y):
        retained.cleared(True, y, [a, b])
        retained.plain_pass(y, [a])  # b's path was not run again
        retained.plain_pass(y * 1, [a, b])  # another output: other nodes
    assert flushes == [1]
    with retained.grads_kept(y):
        retained.cleared(True, y, [a])
        retained.plain_pass(y, [a, b])
    assert flushes == [1]


@pytest.mark.parametrize("holder", ["namedtuple", "ordereddict", "set", "nested"])
def test_found_in_containers_of_every_kind(holder):
    x = torch.randn(8, dtype=torch.float64, requires_grad=True)
    u = torch.sin(x)
    u.retain_grad()
    pair = collections.namedtuple("Pair", "first second")
    kept = {"namedtuple": pair(1, u), "ordereddict": collections.OrderedDict(u=u),
            "set": {u}, "nested": [[{"deep": (u,)}]]}[holder]
    del u
    y = _first_tensor(kept) ** 2
    found = retained.retained(y)
    gc.collect()  # (u is old now; it was found through `kept`)
    assert [t is _first_tensor(kept) for t in found] == [True]


def _first_tensor(obj):
    if isinstance(obj, torch.Tensor):
        return obj
    items = obj.values() if isinstance(obj, dict) else obj
    return next(t for t in map(_first_tensor, items) if t is not None) \
        if not isinstance(obj, (int, str)) else None


def test_an_old_tensor_not_found_is_caught_by_the_probe_pass():
    """A retain_grad tensor in an old object the scan does not look into: the probe's plain
    pass after the vectorised one raises in its hook; the call is made again with every live
    one kept, and the derivatives are jacrev's."""
    f, x = _dense()

    class Holder:
        pass

    holder = Holder()
    holder.u = torch.tanh(x * 1.5)
    holder.u.retain_grad()
    gc.collect()
    y = f(holder.u)
    r = vjp_magic.differentiate(y, x, seed=5)
    expected = torch.func.jacrev(lambda v: f(torch.tanh(v * 1.5)))(x.detach())
    torch.testing.assert_close(r.jacobian("x"), expected)
    holder.u.grad = None
    (y ** 2).sum().backward()
    u = holder.u.detach()
    torch.testing.assert_close(holder.u.grad, torch.func.grad(lambda w: (f(w) ** 2).sum())(u))


class _Keeps(torch.nn.Module):
    def forward(self, x):
        self.h = torch.sin(x)
        self.h.retain_grad()
        return self.h ** 2


def test_an_aged_activation_kept_on_a_submodule_is_found_and_left_alone():
    """``self.h = h`` on a module inside a container module: the scan looks into module
    attributes; d(sum(h**2))/dh = 2h afterwards, as a plain run gives it."""
    x = torch.randn(64, dtype=torch.float64, requires_grad=True)
    net = torch.nn.Sequential(_Keeps())
    y = net(x)
    gc.collect()  # old now: not among the young objects
    assert [t is net[0].h for t in retained.retained(y)] == [True]
    r = vjp_magic.differentiate(y, x, seed=2)
    torch.testing.assert_close(r.jacobian("x"), torch.func.jacrev(lambda v: torch.sin(v) ** 2)(
        x.detach()))
    assert net[0].h.grad is None
    y.sum().backward()
    torch.testing.assert_close(net[0].h.grad, 2 * torch.sin(x.detach()))
