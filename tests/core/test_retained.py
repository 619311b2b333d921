"""A retain_grad() tensor's ``.grad`` after differentiate / sparse_jacobian / hessian is as a
plain run leaves it (None, or the same tensor as before), and the user's next backward works
(issue 20: batched passes left a vmap BatchedTensor there). Expected values: mathematics."""
from __future__ import annotations

import pytest
import torch

import vjp_magic
from vjp_magic.core import retained

GRAPHS = {  # y of u = sin(x), and d(y.sum())/du
    "points": (lambda u: u ** 2, lambda u: 2 * u),
    "sparse": (lambda u: torch.nn.functional.pad(u, (1, 1))[2:] + u ** 2,
               lambda u: torch.nn.functional.pad(torch.ones_like(u), (1, 0))[:-1] + 2 * u),
    "dense": (lambda u: u.cumsum(0), lambda u: torch.arange(u.numel(), 0, -1).to(u)),
}


def _analyse(api, y, x):
    if api == "differentiate":
        vjp_magic.differentiate(y, x, seed=1)
    elif api == "sparse_jacobian":
        vjp_magic.sparse_jacobian(y, x, seed=1)
    else:
        vjp_magic.hessian((y ** 2).sum(), x, seed=1)


@pytest.mark.parametrize("before", [None, "a previous value"])
@pytest.mark.parametrize("graph", list(GRAPHS))
@pytest.mark.parametrize("api", ["differentiate", "sparse_jacobian", "hessian"])
def test_grad_unchanged_and_next_backward_works(api, graph, before):
    f, df = GRAPHS[graph]
    x = torch.randn(256, dtype=torch.float64, requires_grad=True)
    u = torch.sin(x)
    u.retain_grad()
    y = f(u)
    previous = None
    if before is not None:
        y.sum().backward(retain_graph=True)
        previous = u.grad
    _analyse(api, y, x)
    assert u.grad is previous
    if previous is not None:
        torch.testing.assert_close(previous, df(u.detach()))
    y.sum().backward()  # the user's own next step
    times = 1 if before is None else 2
    torch.testing.assert_close(u.grad, times * df(u.detach()))


def test_found_in_a_list_and_as_the_output():
    x = torch.randn(256, dtype=torch.float64, requires_grad=True)
    acts = [torch.sin(x)]
    acts[0].retain_grad()
    y = acts[0].cumsum(0)
    y.retain_grad()
    vjp_magic.differentiate(y, x, seed=1)
    assert acts[0].grad is None and y.grad is None
    y.sum().backward()
    torch.testing.assert_close(y.grad, torch.ones_like(y))


def test_a_tensor_off_the_graph_is_not_collected():
    x = torch.randn(8, requires_grad=True)
    other = torch.cos(x)
    other.retain_grad()
    u = torch.sin(x)
    u.retain_grad()
    y = u * 2
    found = retained.retained(y)
    assert any(t is u for t in found) and not any(t is other for t in found)


def test_no_scan_inside_a_nested_entry_point(monkeypatch):
    calls = []
    real = retained.retained
    monkeypatch.setattr(retained, "retained", lambda *a: calls.append(1) or real(*a))
    x = torch.randn(256, dtype=torch.float64, requires_grad=True)
    vjp_magic.hessian((torch.sin(x) ** 2).sum(), x, seed=1)
    assert len(calls) == 1


class _Holder:
    """An object the frame walk does not look into."""


@pytest.mark.parametrize("graph", list(GRAPHS))
def test_one_not_found_never_keeps_a_batched_tensor(graph):
    import gc

    f, df = GRAPHS[graph]
    x = torch.randn(256, dtype=torch.float64, requires_grad=True)
    holder = _Holder()
    holder.u = torch.sin(x)
    holder.u.retain_grad()
    gc.collect()  # old now: not among the young objects either
    y = f(holder.u)
    vjp_magic.differentiate(y, x, seed=1)
    vjp_magic.hessian((y ** 2).sum(), x, seed=1)
    holder.u.grad = None  # (not found: its value is not promised, but no BatchedTensor)
    y.sum().backward()
    torch.testing.assert_close(holder.u.grad, df(holder.u.detach()))
