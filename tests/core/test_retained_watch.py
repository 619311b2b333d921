"""The watched plain pass (retained.watched, G1-1): a retain_grad tensor no scan finds is seen
by its hook's operation in the first plain pass, before any vectorised pass, and kept."""
import gc

import pytest
import torch

import vjp_magic
from vjp_magic.core import retained


class _Holder:  # a plain object: no scan looks into its attributes
    pass


def _graph(mark: bool, backward: bool):
    """(x, holder, y): y = tanh(W2 tanh(W1 u)), u = tanh(1.5 x) on holder, marked through
    torch's own retain_grad where ``mark``; ``backward``: the user's own backward ran."""
    g = torch.Generator().manual_seed(2)
    w1, w2 = (torch.randn(24, 24, generator=g, dtype=torch.float64) / 24 ** 0.5
              for _ in range(2))
    x = torch.randn(24, generator=g, dtype=torch.float64, requires_grad=True)
    holder = _Holder()
    holder.u = torch.tanh(x * 1.5)
    if mark:
        torch._C.TensorBase.retain_grad(holder.u)
    y = torch.tanh(w2 @ torch.tanh(w1 @ holder.u))
    if backward:
        (y ** 2).sum().backward(retain_graph=True)
    gc.collect()
    return x, holder, y


ENTRIES = {
    "differentiate": lambda y, x: vjp_magic.differentiate(y, x, seed=5),
    "dependency": lambda y, x: vjp_magic.dependency(y, x),
    "sparse_jacobian": lambda y, x: vjp_magic.sparse_jacobian(y, x),
    "hessian": lambda y, x: vjp_magic.hessian((y ** 2).sum(), x),
}


@pytest.mark.parametrize("entry", list(ENTRIES))
def test_a_missed_tensor_is_kept_without_a_second_call(entry, monkeypatch):
    """Seen before the vectorised passes, the tensor is kept: one full scan finds it, and the
    call is not made again with every live one kept (no BatchedTensor met, none unbatched)."""
    calls = {"scans": 0, "unbatched": 0}
    every, unbatch = retained._every_retaining, retained._unbatch

    def scan():
        calls["scans"] += 1
        return every()

    def unbatched(tensors):
        calls["unbatched"] += 1
        return unbatch(tensors)

    monkeypatch.setattr(retained, "_every_retaining", scan)
    monkeypatch.setattr(retained, "_unbatch", unbatched)
    x, holder, y = _graph(mark=True, backward=True)
    assert not any(t is holder.u for t in retained.retained(y))  # no scan finds it
    grad = holder.u.grad
    ENTRIES[entry](y, x)
    assert calls == {"scans": 1, "unbatched": 0}
    assert holder.u.grad is grad


def test_a_missed_tensors_grad_keeps_its_values_and_the_jacobian_is_torchs():
    x, holder, y = _graph(mark=True, backward=True)
    values = holder.u.grad.clone()
    r = vjp_magic.differentiate(y, x, seed=5)
    assert torch.equal(holder.u.grad, values)
    w = torch.autograd.functional.jacobian(lambda v: _graph_of(v, x, holder, y), x.detach())
    assert torch.allclose(r.jacobian(), w, rtol=1e-12, atol=1e-14)


def _graph_of(v, x, holder, y):
    g = torch.Generator().manual_seed(2)
    w1, w2 = (torch.randn(24, 24, generator=g, dtype=torch.float64) / 24 ** 0.5
              for _ in range(2))
    return torch.tanh(w2 @ torch.tanh(w1 @ torch.tanh(v * 1.5)))


def test_a_missed_tensor_without_grad_is_left_without_one():
    x, holder, y = _graph(mark=True, backward=False)
    vjp_magic.differentiate(y, x, seed=5)
    assert holder.u.grad is None and x.grad is None


def test_a_found_tensor_needs_no_full_scan(monkeypatch):
    """A found retain_grad tensor's hook result is its own .grad (put back on leaving): no
    sign of a missed one, so the full scan (milliseconds) is not made."""
    scans = []
    every = retained._every_retaining
    monkeypatch.setattr(retained, "_every_retaining", lambda: scans.append(1) or every())
    x, holder, y = _graph(mark=False, backward=False)
    u = holder.u
    u.retain_grad()  # a local: found
    y = torch.sin(y) * u.sum()
    (y ** 2).sum().backward(retain_graph=True)
    grad = u.grad
    for entry in ENTRIES.values():
        entry(y, x)
    assert not scans and u.grad is grad
