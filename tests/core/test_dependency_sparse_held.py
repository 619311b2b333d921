"""Dependency verdicts past the memory budget (issue 20 item 5): the pattern is held as a
sparse CSR bool tensor (the dense m × n one would not fit), and every reading of it (kind,
witness, offsets, blocks, nonzeros, exceptions, leaking rows, reads) equals the dense one's.

Expected patterns come from ``torch.autograd.functional.jacobian`` (``true_pattern``) at small
sizes, where a tiny ``memory_budget`` forces the sparse form; at 10⁵ and 10⁶ entries from the
stencils' mathematics.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from core.test_dependency import true_pattern
from vjp_magic import VJPUsageError, dependency

N = 240


def _stencil(x):
    return F.pad(x, (1, 0))[:-1] + x ** 3 + F.pad(x, (0, 1))[1:]


def _periodic(x):
    return x.roll(1) - 2 * x + x.roll(-1) + x ** 3


def _leak(x):  # the stencil, and y[150] ← x[20]
    return torch.index_add(_stencil(x), 0, torch.tensor([150]), 0.5 * x[20:21])


def _gather(x):
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(1))
    return x * x[perm]


def _graphs(x):  # 15 ring-like graphs of 16 nodes, one edge crossing two of them
    senders = torch.arange(x.shape[0])
    receivers = torch.cat([senders // 16 * 16 + (senders + 3) % 16, torch.tensor([40])])
    senders = torch.cat([senders, torch.tensor([3])])
    return torch.zeros_like(x).index_add(0, receivers, x[senders] * 2.0) + x


def _rows(x):  # (N // 4, 4): a stencil along axis 0, mixing along axis 1
    torch.manual_seed(0)
    w = torch.randn(4, 4, dtype=x.dtype)
    z = x.reshape(-1, 4)
    return torch.tanh(F.pad(z, (0, 0, 1, 1))[:-2] @ w + z).reshape(-1, 4)


def _conv(x):
    torch.manual_seed(0)
    z = x.reshape(1, 2, -1)
    for _ in range(2):
        z = torch.tanh(F.conv1d(z, torch.randn(2, 2, 3, dtype=x.dtype) / 3, padding=1))
    return z


CASES = {"stencil": (_stencil, 0, 0), "periodic": (_periodic, 0, 0), "leak": (_leak, 0, 0),
         "gather": (_gather, 0, 0), "graphs": (_graphs, 0, 0), "rows": (_rows, 0, 0),
         "conv": (_conv, 2, 2)}


def _x(f):
    """x of N entries; 2,048 where a flat row reads several entries of another axis (the flat
    pattern held must fit where the axes' dense one does not)."""
    size = 2048 if f in (_rows, _conv) else N
    x = torch.randn(size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    return x.reshape(1, 2, -1) if f is _conv else x.reshape(-1, 4) if f is _rows else x


def _band(n: int, width: int) -> torch.Tensor:
    """|i − j| ≤ width: two width-3 convolutions of random weights (jacobian's vmap over a
    convolution takes half a minute here)."""
    index = torch.arange(n)
    return (index[:, None] - index[None, :]).abs() <= width


@pytest.mark.parametrize("name", list(CASES))
def test_a_pattern_held_sparsely_reads_as_the_dense_one(name):
    f, a, b = CASES[name]
    x = _x(f).requires_grad_()
    expected = true_pattern(f, x, a, b) if f is not _conv else _band(x.shape[2], 2)
    dense = dependency(f(x), x, a, b, seed=0)
    m, n = expected.shape
    sparse = dependency(f(x), x, a, b, memory_budget=2 * m * n - 1, seed=0)
    assert dense.pattern.layout == torch.strided and sparse.pattern.layout == torch.sparse_csr
    assert torch.equal(sparse.pattern.to_dense(), expected)
    assert torch.equal(dense.pattern, expected)
    for reading in ("kind", "witness", "offsets", "blocks", "nonzeros"):
        assert getattr(sparse, reading) == getattr(dense, reading), reading
    assert sparse.exceptions() == dense.exceptions()
    assert sparse.leaking() == dense.leaking()
    assert sparse.fills_band() == dense.fills_band()
    assert all(sparse.reads(i) == dense.reads(i) for i in range(m))
    assert sparse.summary() == dense.summary()
    assert x.grad is None


def test_the_kinds_held_sparsely_are_the_mathematical_ones():
    readings = {}
    for name in ("stencil", "periodic", "leak", "graphs"):
        f, a, b = CASES[name]
        x = _x(f).requires_grad_()
        readings[name] = dependency(f(x), x, a, b, memory_budget=2 * N * N - 1, seed=0)
    assert (readings["stencil"].kind, readings["stencil"].offsets) == ("band", (-1, 1))
    assert (readings["periodic"].kind, readings["periodic"].offsets) == \
        ("band with wrap-around", (-1, 1))
    leak = readings["leak"]
    assert (leak.kind, leak.offsets, leak.witness, leak.exceptions()) == \
        ("sparse", (-1, 1), (150, 20), [(150, 20)])
    graphs = readings["graphs"]
    assert graphs.blocks == (16,) * 15 and graphs.witness == (40, 3)


@pytest.mark.parametrize("n", [100_000, pytest.param(1_000_000, marks=pytest.mark.slow)])
def test_a_stencil_at_any_size(n):
    x = torch.randn(n, generator=torch.Generator().manual_seed(0)).requires_grad_()
    d = dependency(_stencil(x), x, memory_budget=2**30, seed=0)
    assert (d.kind, d.offsets, d.witness, d.exceptions()) == ("band", (-1, 1), (0, 1), [])
    assert d.pattern.layout == torch.sparse_csr and d.pattern.values().numel() == 3 * n - 2
    assert d.fills_band() and d.leaking()[:3] == [0, 1, 2] and d.reads(7) == [6, 8]
    assert d.summary() == "band, offsets −1..1"
    leak = dependency(_leak(x), x, memory_budget=2**30, seed=0)
    assert (leak.kind, leak.witness, leak.exceptions()) == ("sparse", (150, 20), [(150, 20)])
    periodic = dependency(_periodic(x), x, memory_budget=2**30, seed=0)
    assert (periodic.kind, periodic.offsets) == ("band with wrap-around", (-1, 1))
    assert x.grad is None


def test_a_diagonal_proved_from_the_graph_is_held_sparsely():
    x = torch.randn(200_000, requires_grad=True)
    d = dependency(torch.sin(x), x, memory_budget=2**30, seed=0)
    assert (d.kind, d.evidence, d.witness) == ("independent", "proved", None)
    assert d.pattern.layout == torch.sparse_csr and d.pattern.values().numel() == 200_000


def test_a_dense_pattern_past_the_budget_is_still_refused():
    x = torch.randn(100_000, requires_grad=True)
    with pytest.raises(VJPUsageError, match="dependency pattern"):
        dependency(torch.cumsum(x, 0), x, memory_budget=2**30, seed=0)


class _Shift(torch.autograd.Function):  # no rule sees through it: the pattern is observed
    @staticmethod
    def forward(ctx, x):
        return F.pad(x, (1, 0))[:-1]

    @staticmethod
    def backward(ctx, grad):
        return F.pad(grad, (0, 1))[1:]


def test_a_pattern_the_graph_does_not_prove_is_observed_and_held_sparsely():
    def f(x):
        return _Shift.apply(x) + x ** 3
    x = torch.randn(N, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x.requires_grad_()
    d = dependency(f(x), x, memory_budget=2 * N * N - 1, seed=0)
    assert d.pattern.layout == torch.sparse_csr
    assert torch.equal(d.pattern.to_dense(), true_pattern(f, x, 0, 0))
    assert (d.kind, d.offsets, d.witness) == ("band", (-1, 0), (1, 0))
