"""A kind that holds exactly beats a kind with exceptions, and a recurrence's ragged edge is no
cut (R3-1 / R3-2's class): batches of graphs whose blocks hold an edge in both directions are
block-diagonal with no exception (an edge inside a graph is never called a leak); a causal band
whose far reads underflow is the band, not blocks whose crossings are its own reads.

Expected kinds and blocks come from how the graphs and patterns are built (mathematics); the
patterns from ``torch.autograd.functional.jacobian``.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import vjp_magic
from vjp_magic.core.dependency import full_verdict

D = torch.float64


def _graphs(edges: list[tuple[int, int]], n: int):
    """tanh(x + the sum of x over each node's in-edges (src → dst)), a scatter_reduce GNN."""
    src, dst = torch.tensor([e[0] for e in edges]), torch.tensor([e[1] for e in edges])

    def f(x):
        agg = torch.zeros_like(x).scatter_reduce(0, dst[:, None].expand(-1, x.shape[1]),
                                                 x[src], "sum", include_self=True)
        return torch.tanh(agg + x)
    return f


def _truth(f, x):
    jac = torch.autograd.functional.jacobian(f, x)  # (n, 2, n, 2)
    return (jac != 0).permute(0, 2, 1, 3).flatten(2).any(2)


def _ring(start: int, size: int) -> list[tuple[int, int]]:
    return [(start + k, start + (k + 1) % size) for k in range(size)]


BATCHES = {  # name: (edges, nodes, blocks)
    "rings": (_ring(0, 3) + _ring(3, 4) + _ring(7, 2) + _ring(9, 5), 14, (3, 4, 2, 5)),
    "pairs-and-chains": ([(0, 1), (1, 0), (2, 3), (3, 4), (5, 6), (6, 5)], 8, (2, 3, 2, 1)),
    "one-pair-one-chain-isolated": ([(0, 1), (1, 0), (2, 3)], 6, (2, 2, 1, 1)),
    "chains-and-a-pair-last": ([(0, 1), (1, 2), (3, 4), (4, 5), (6, 7), (7, 6)], 9,
                               (3, 3, 2, 1)),
}


@pytest.mark.parametrize("name", list(BATCHES))
def test_a_batch_of_graphs_is_block_diagonal_with_no_exception(name):
    edges, n, blocks = BATCHES[name]
    f = _graphs(edges, n)
    x = torch.randn(n, 2, dtype=D, generator=torch.Generator().manual_seed(0))
    leaf = x.clone().requires_grad_()
    d = vjp_magic.dependency(f(leaf), leaf, seed=0)
    truth = _truth(f, x)
    assert torch.equal(d.pattern, truth)
    assert (d.kind, tuple(d.blocks)) == ("block-diagonal", blocks), d.summary()
    assert d.exceptions() == [] and "exception" not in d.summary()
    assert bool(truth[d.witness]) and d.witness[0] != d.witness[1], d.witness


def test_an_edge_between_two_graphs_is_the_one_exception_and_the_witness():
    edges = [(0, 1), (1, 0), (2, 3), (3, 4), (5, 6), (6, 5), (6, 4)]  # 4 ← 6 crosses graphs
    f = _graphs(edges, 8)
    x = torch.randn(8, 2, dtype=D, generator=torch.Generator().manual_seed(1))
    leaf = x.clone().requires_grad_()
    d = vjp_magic.dependency(f(leaf), leaf, seed=0)
    assert torch.equal(d.pattern, _truth(f, x))
    assert (d.kind, tuple(d.blocks)) == ("block-diagonal", (2, 3, 2, 1)), d.summary()
    assert d.exceptions() == [(4, 6)] and d.witness == (4, 6), d.summary()


def test_a_future_read_inside_a_longer_causal_sequence_stays_its_exception():
    """Packed causal sequences of 2, 5 and 5, one reading a later index inside the second (a
    causal leak): block-lower-triangular with that exception (a block it does not fill)."""
    pattern = torch.zeros(12, 12, dtype=torch.bool)
    for start, size in ((0, 2), (2, 5), (7, 5)):
        pattern[start:start + size, start:start + size] = torch.ones(size, size).tril().bool()
    pattern[3, 5] = True
    found = full_verdict(pattern)
    assert (found.kind, found.blocks, found.witness) == ("block-lower-triangular", (2, 5, 5),
                                                         (3, 5))


def _ragged_causal(n: int, reach: int, seed: int) -> torch.Tensor:
    """Row i reads i − reach − k .. i (k in −6..6 drawn per row, clipped at 0): a causal band
    whose far edge is ragged, as float32 underflow leaves a long recurrence."""
    g = torch.Generator().manual_seed(seed)
    pattern = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        lo = max(0, i - reach - int(torch.randint(-6, 7, (1,), generator=g)))
        pattern[i, lo:i + 1] = True
    return pattern


@pytest.mark.parametrize("n, reach, seed", [(200, 150, 0), (300, 150, 0), (300, 200, 2)])
def test_a_ragged_causal_band_is_the_band_not_blocks(n, reach, seed):
    pattern = _ragged_causal(n, reach, seed)
    r, c = pattern.nonzero(as_tuple=True)
    found = full_verdict(pattern)
    assert found.kind == "band" and found.blocks is None, found
    assert found.offsets == (int((c - r).min()), 0), found


@pytest.mark.slow
def test_a_causal_lstm_over_300_float32_steps_is_a_band_with_the_underflow_note():
    torch.manual_seed(0)
    lstm = nn.LSTM(2, 2)
    with torch.no_grad():  # a fast-forgetting cell: derivatives underflow past ~150 steps
        lstm.weight_hh_l0.mul_(0.05)
        lstm.bias_hh_l0.zero_()
        lstm.bias_ih_l0.zero_()
    xs = torch.randn(300, 1, 2, generator=torch.Generator().manual_seed(3)).requires_grad_()
    d = vjp_magic.dependency(lstm(xs)[0], xs, 0, 0, seed=0)
    assert d.kind in ("band", "lower-triangular") and d.offsets[1] == 0, d.summary()
    assert d.exceptions() == [] and "underflow" in (d.note or ""), d.summary()
    assert d.offsets[0] > -299, d.summary()  # (the far reads underflowed: a band, not blocks)
