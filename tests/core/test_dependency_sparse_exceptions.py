"""Sparse structures with a few exceptions (adversary s29): a batch of sparse graphs with an
edge crossing graphs names the crossing as the witness, and five or six leaks beside a band
stay the band's exceptions. The patterns are read off ``torch.autograd.functional.jacobian``."""
from __future__ import annotations

import pytest
from recurrences import recurrence
import torch

import vjp_magic
from vjp_magic.core.dependency import full_verdict


def _graphs(n: int, size: int, crossings):
    """Ring-like graphs of ``size`` nodes (node i receives from node i + 3 of its graph)
    plus the edges ``crossings`` (receiver, sender)."""
    senders = torch.arange(n)
    receivers = senders // size * size + (senders + 3) % size
    extra = torch.tensor(crossings, dtype=torch.long).reshape(-1, 2)
    senders, receivers = torch.cat([senders, extra[:, 1]]), torch.cat([receivers, extra[:, 0]])

    def f(x):
        return torch.zeros_like(x).index_add(0, receivers, x[senders] * 2.0) + x
    return f


@pytest.mark.parametrize("n, size, crossings", [
    (256, 16, [(5, 38)]), (256, 16, [(100, 200), (5, 38)]), (512, 32, [(40, 5)]),
    (512, 16, [(300, 17)]), (256, 16, [(7, 250), (5, 38)]), (256, 16, [(15, 16)])])
def test_a_crossing_between_sparse_graphs_is_the_witness(n, size, crossings):
    f = _graphs(n, size, crossings)
    x = torch.randn(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    truth = torch.autograd.functional.jacobian(f, x).ne(0).any(3).any(1)
    x.requires_grad_()
    d = vjp_magic.dependency(f(x), x, seed=0)
    assert torch.equal(d.pattern, truth)
    assert d.witness == min(crossings)  # the first crossing, row-major
    graph = torch.arange(n) // size
    assert sorted(d.exceptions()) == sorted(crossings)
    assert all(graph[i] != graph[j] for i, j in d.exceptions())


def test_sparse_graphs_without_a_crossing_keep_the_plain_verdict():
    f = _graphs(256, 16, [])
    x = torch.randn(256, 2, dtype=torch.float64, requires_grad=True)
    d = vjp_magic.dependency(f(x), x, seed=0)
    assert d.kind == "sparse" and d.exceptions() == []


def _band(n: int):
    index = torch.arange(n)
    return (index[:, None] - index[None, :]).abs() <= 1


@pytest.mark.parametrize("n, rows", [(64, (0, 10, 20, 30, 40)), (64, (0, 10, 20, 30, 40, 55)),
                                     (48, (3, 9, 17, 25, 33, 47)), (100, (5, 50, 60, 70, 80))])
def test_five_or_six_leaks_beside_a_band_are_its_exceptions(n, rows):
    pattern = _band(n)
    leaks = [(i, (i * 7 + n // 3) % n) for i in rows]
    for i, j in leaks:
        pattern[i, j] = True
    leaks = [leak for leak in leaks if abs(leak[0] - leak[1]) > 1]
    kind, witness, offsets = full_verdict(pattern)[:3]
    assert (kind, offsets) == ("sparse", (-1, 1)) and witness == min(leaks)


def test_a_band_with_a_leak_in_every_few_rows_is_not_excepted():
    n = 64
    pattern = _band(n)
    for i in range(0, n, 4):  # 16 leaks: far more than a few
        pattern[i, (i + n // 2) % n] = True
    kind, _, offsets = full_verdict(pattern)[:3]
    assert offsets != (-1, 1)


# -- an abrupt float32 underflow ----------------------------------------------------------------
@pytest.mark.parametrize("decay", [1e-30, 1e-25, 1e-15])
def test_an_abrupt_float32_underflow_is_noted(decay):
    x = torch.randn(32, generator=torch.Generator().manual_seed(0))
    truth = torch.autograd.functional.jacobian(lambda v: recurrence(v, decay), x).ne(0)
    wider = torch.autograd.functional.jacobian(lambda v: recurrence(v, decay), x.double())
    assert int(wider.ne(0).sum()) > int(truth.sum())  # float32 rounds decay^k to 0 sooner
    x.requires_grad_()
    d = vjp_magic.dependency(recurrence(x, decay), x, seed=0)
    assert torch.equal(d.pattern, truth)
    assert d.note is not None and "float32 underflow" in d.note


def test_derivatives_of_ordinary_size_get_no_note():
    x = torch.randn(32, requires_grad=True)
    assert vjp_magic.dependency(recurrence(x, 0.5), x, seed=0).note is None
