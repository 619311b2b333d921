"""The retain_grad guard's pass of zeros made right after the vectorised passes of a graph
whose nodes all batch right (no plain probe follows them: core.retained.flush_now), not on
leaving (session 40 P2, issue 20's dense row). It keeps the guarantee of the pass it moves: a
retain_grad tensor no scan finds (marked through torch._C.TensorBase.retain_grad, kept on a
plain object, aged) is never left holding a vmap BatchedTensor, and the derivatives are
torch.func.jacrev's; a found one keeps its .grad, the same tensor with the same values.
Expected values: torch.func.jacrev and torch.func.grad."""
from __future__ import annotations

import gc

import torch

import vjp_magic
from vjp_magic.core import checked_batches, retained, strategies, vectorising
from pass_counter import counted


def _dense(n=48):
    g = torch.Generator().manual_seed(1)
    w1 = torch.randn(n, n, generator=g, dtype=torch.float64) / n ** 0.5
    w2 = torch.randn(n, n, generator=g, dtype=torch.float64) / n ** 0.5
    x = torch.randn(n, generator=g, dtype=torch.float64, requires_grad=True)
    return (lambda v: torch.tanh(w2 @ torch.tanh(w1 @ v))), x


def _is_batched(t) -> bool:
    return t is not None and torch._C._functorch.is_batchedtensor(t)


class _Holder:  # a plain object: the scan does not look into its attributes
    pass


def _spied(monkeypatch) -> dict:
    calls = {"flush on leaving": 0, "eager": 0, "every": 0}
    real_flush, real_now, real_every = retained._flush, retained.flush_now, \
        retained._every_retaining

    def flush(out):
        calls["flush on leaving"] += 1
        return real_flush(out)

    def now(out, inputs):
        calls["eager"] += 1
        return real_now(out, inputs)

    def every():
        calls["every"] += 1
        return real_every()

    monkeypatch.setattr(retained, "_flush", flush)
    monkeypatch.setattr(retained, "_every_retaining", every)
    monkeypatch.setattr(strategies, "flush_now", now)
    return calls


def test_a_trusted_graph_passes_zeros_at_once_not_on_leaving(monkeypatch):
    f, x = _dense()
    y = f(x)
    kinds = vjp_magic.core.axisflow.prove(y, x).kinds
    assert checked_batches.batching_trusted(kinds, y, [x])  # no probe follows the passes
    monkeypatch.setattr(strategies, "CHUNK_SECONDS", 1e9)  # one chunk, however loaded
    monkeypatch.setattr(vectorising, "HEAVY_PASS", float("inf"))  # (a loaded machine's time)
    vjp_magic.differentiate(y, x, seed=2)  # (the first run times one plain pass for the chunks)
    calls = _spied(monkeypatch)
    r, passes = counted(lambda: vjp_magic.differentiate(y, x, seed=2))
    torch.testing.assert_close(r.jacobian("x"), torch.func.jacrev(f)(x.detach()))
    assert calls["eager"] == 1 and calls["flush on leaving"] == 0
    assert passes == 2  # the vectorised pass, then the zeros: no pass more than before


def test_a_found_retain_grad_tensor_keeps_its_grad(monkeypatch):
    f, x = _dense()
    u = torch.sin(x)
    u.retain_grad()  # registered: found
    y = f(u)
    (y ** 2).sum().backward(retain_graph=True)
    grad, values = u.grad, u.grad.clone()
    calls = _spied(monkeypatch)
    r = vjp_magic.differentiate(y, x, seed=2)
    assert u.grad is grad and torch.equal(u.grad, values)
    torch.testing.assert_close(r.jacobian("x"), torch.func.jacrev(
        lambda v: f(torch.sin(v)))(x.detach()))
    assert calls["eager"] >= 1 and calls["every"] == 0  # found by the scan, no full one


def test_a_retain_grad_tensor_no_scan_finds_holds_no_batched_tensor(monkeypatch):
    """The pass of zeros right after the vectorised one meets the BatchedTensor the missed
    tensor holds (its hook raises): the call is made again with every live one kept; then
    its .grad is None, as before the call, and the user's next backward fills it right."""
    f, x = _dense()
    holder = _Holder()
    holder.u = torch.tanh(x * 1.5)
    torch._C.TensorBase.retain_grad(holder.u)  # torch's own method: not in the registry
    y = f(holder.u)
    gc.collect()  # aged: not among the young objects either
    assert not any(t is holder.u for t in retained.retained(y))  # no scan finds it
    calls = _spied(monkeypatch)
    r = vjp_magic.differentiate(y, x, seed=5)
    expected = torch.func.jacrev(lambda v: f(torch.tanh(v * 1.5)))(x.detach())
    torch.testing.assert_close(r.jacobian("x"), expected)
    assert calls["every"] >= 1  # the pass of zeros found it out: every live one was kept
    assert holder.u.grad is None and not _is_batched(holder.u.grad)
    (y ** 2).sum().backward()
    u = holder.u.detach()
    torch.testing.assert_close(holder.u.grad, torch.func.grad(lambda w: (f(w) ** 2).sum())(u))
