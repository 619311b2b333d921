"""Adversarial review, session 29 (issue 23, "kinds a practitioner recognises"): dependency
verdicts on batches of small graphs and on bands with a few leaks, through the public API.

The expected pattern comes from ``torch.autograd.functional.jacobian``; a witness must be a
dependence the structure forbids (an edge crossing graphs, a leak off the band), never a
legitimate one. Tests marked ``xfail(strict=True)`` are bugs found in this review; unmarked
ones guard a class of inputs that holds today.
"""
from __future__ import annotations

import pytest
from recurrences import recurrence
import torch

import vjp_magic


def _graphs(n: int, size: int, crossings):
    """Message passing over n // size ring-like graphs of ``size`` nodes (node i receives from
    node i + 3 of its own graph), plus the edges ``crossings`` (receiver, sender)."""
    senders = torch.arange(n)
    receivers = senders // size * size + (senders + 3) % size
    extra = torch.tensor(crossings, dtype=torch.long).reshape(-1, 2)
    senders = torch.cat([senders, extra[:, 1]])
    receivers = torch.cat([receivers, extra[:, 0]])

    def f(x):
        return torch.zeros_like(x).index_add(0, receivers, x[senders] * 2.0) + x
    return f


def _truth(f, x):
    return torch.autograd.functional.jacobian(f, x.detach()).ne(0).any(3).any(1)


def _verdict(n, size, crossings):
    f = _graphs(n, size, crossings)
    x = torch.randn(n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x.requires_grad_()
    d = vjp_magic.dependency(f(x), x, seed=0)
    assert torch.equal(d.pattern, _truth(f, x))
    graph = torch.arange(n) // size
    return d, graph


@pytest.mark.parametrize("crossings", [[(5, 22)], [(5, 22), (42, 59)]])
def test_a_crossing_edge_between_graphs_of_8_is_the_witness(crossings):
    d, graph = _verdict(64, 8, crossings)
    assert d.kind == "block-diagonal" and d.blocks == (8,) * 8
    assert d.witness == crossings[0]


def test_a_crossing_edge_between_sparse_graphs_of_16_is_the_witness():
    d, graph = _verdict(256, 16, [(5, 38)])
    assert graph[d.witness[0]] != graph[d.witness[1]]


def test_six_leaks_beside_a_band_name_a_leak():
    n = 64
    index = torch.arange(n)
    allowed = (index[:, None] - index[None, :]).abs() <= 1
    pattern = allowed.clone()
    for i in (0, 10, 20, 30, 40, 55):  # six leaks
        pattern[i, (i * 7 + n // 3) % n] = True
    weights = torch.randn(n, n, dtype=torch.float64,
                          generator=torch.Generator().manual_seed(1)) * pattern
    x = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    x.requires_grad_()
    d = vjp_magic.dependency(torch.tanh(weights @ x), x, seed=0)
    assert int((pattern & ~allowed).sum()) == 6
    assert torch.equal(d.pattern, pattern)
    assert not allowed[d.witness]


# -- zeros that are float32 underflow ---------------------------------------------------------
def _recurrence_verdict(decay):
    x = torch.randn(64, generator=torch.Generator().manual_seed(0)).requires_grad_()
    return vjp_magic.dependency(recurrence(x, decay), x, seed=0)


def test_a_slow_underflow_is_noted():
    d = _recurrence_verdict(1e-3)  # 1e-3^k reaches float32's subnormals gradually
    assert d.kind == "band" and "underflow" in d.note


def test_an_abrupt_underflow_is_noted():
    d = _recurrence_verdict(1e-30)
    assert d.offsets == (-1, 0)  # the float32 pattern, exact zeros
    assert d.note is not None and "underflow" in d.note


# -- a verdict at any size (issue 20: "everything stays summarised at any size") ----------------
def test_dependency_of_a_stencil_at_100000_entries():
    x = torch.randn(100_000, generator=torch.Generator().manual_seed(0)).requires_grad_()
    y = torch.nn.functional.pad(x, (1, 0))[:-1] + x ** 3 + torch.nn.functional.pad(x, (0, 1))[1:]
    d = vjp_magic.dependency(y, x, memory_budget=2**30, seed=0)  # 1 GiB on every machine
    assert (d.kind, d.offsets) == ("band", (-1, 1))
