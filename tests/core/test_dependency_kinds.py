"""Dependency kinds a practitioner recognises (issue 23 item 3, issue 20 item 5): blocks along
the diagonal with the witness of a crossing, a band with wrap-around, sparse; and the note that
zeros may be float32 underflow.

Expected patterns come from ``torch.autograd.functional.jacobian`` (``true_pattern``) or from
mathematics, never from the code under test.
"""
from __future__ import annotations

import pytest
import torch

from core.test_dependency import true_pattern
from vjp_magic.core.dependency import Kind, dependency, full_verdict, verdict


def graph_batch(sizes, crossing=None):
    """A batch of star graphs (each graph's first node and every other node read each other;
    a path graph would be a band), plus an optional crossing edge (i, j): node i reads node j."""
    n = sum(sizes)
    edges = []
    start = 0
    for size in sizes:
        edges += [(start, start + k) for k in range(1, size)]
        edges += [(start + k, start) for k in range(1, size)]
        start += size
    if crossing is not None:
        edges.append(crossing)
    dst, src = torch.tensor(edges).T

    def f(x):
        messages = torch.zeros_like(x).index_add(0, dst, x[src])
        return torch.tanh(x + 0.5 * messages)
    return f, n


@pytest.mark.parametrize("crossing", [None, "last-first"])
def test_a_batch_of_graphs_is_block_diagonal_with_the_crossing_edge_as_witness(crossing):
    sizes = [5, 7, 4, 6]
    n = sum(sizes)
    edge = (n - 1, 0) if crossing else None
    f, n = graph_batch(sizes, edge)
    x = torch.randn(n, 3, dtype=torch.float64, requires_grad=True)
    d = dependency(f(x), x)
    assert torch.equal(d.pattern, true_pattern(f, x, 0, 0))
    assert d.kind == Kind.BLOCK_DIAGONAL == "block-diagonal"
    assert d.blocks == tuple(sizes)
    if crossing:  # the crossing edge, not a legitimate edge inside graph 0
        assert d.witness == (n - 1, 0) and d.describe("y", "x") == f"y[{n - 1}] ← x[0]"
    else:
        assert d.witness == (0, 1)
    assert "4 blocks of 5, 7, 4, 6" in d.summary()  # each size, in order


def test_a_periodic_stencil_is_a_band_with_wrap_around_not_dense():
    def f(x):
        return x.roll(1) - 2 * x + x.roll(-1) + 0.1 * x**3
    x = torch.randn(12, dtype=torch.float64, requires_grad=True)
    d = dependency(f(x), x)
    assert torch.equal(d.pattern, true_pattern(f, x, 0, 0))
    assert (d.kind, d.offsets) == ("band with wrap-around", (-1, 1))
    assert d.witness == (0, 1)  # a plain neighbour, first row-major
    assert d.fills_band() and "offsets −1..1 modulo 12" in d.summary()
    # the same stencil without wrap-around (zero padding) stays a band
    def padded(x):
        return torch.nn.functional.pad(x, (1, 1))[:-2] - 2 * x + \
            torch.nn.functional.pad(x, (1, 1))[2:]
    assert verdict(true_pattern(padded, x, 0, 0)) == ("band", (0, 1), (-1, 1))


@pytest.mark.parametrize("n", [10, 300])
def test_a_gather_and_mixup_are_sparse(n):
    torch.manual_seed(n)
    index = torch.randint(0, n, (n,))
    perm = torch.randperm(n)
    cases = {"gather": lambda x: x[index] * 2, "mixup": lambda x: 0.7 * x + 0.3 * x[perm]}
    for name, f in cases.items():
        x = torch.randn(n, 2, dtype=torch.float64, requires_grad=True)
        truth = true_pattern(f, x, 0, 0)
        d = dependency(f(x), x)
        assert torch.equal(d.pattern, truth), name
        reads = truth.sum(1)
        if n >= 100:  # small patterns may happen to fit a band
            assert d.kind == "sparse", name
            assert d.nonzeros == (int(reads.max()), pytest.approx(float(reads.float().mean())))
            assert d.witness == full_verdict(truth).witness


def test_smallest_description_wins_and_old_verdicts_stay():
    eye = torch.eye(6, dtype=torch.bool)
    leak = eye.clone()
    leak[1, 0] = True
    assert verdict(leak) == ("band", (1, 0), (-1, 0))  # not blocks (2, 1, 1, 1, 1)
    blocks = torch.block_diag(*(torch.ones(k, k, dtype=torch.bool) for k in (3, 3, 2)))
    found = full_verdict(blocks)
    assert (found.kind, found.blocks, found.witness) == ("block-diagonal", (3, 3, 2), (0, 1))
    flip = torch.eye(64, dtype=torch.bool).flip(1)  # both corners, one entry a row
    assert full_verdict(flip).kind == "sparse"
    assert verdict(torch.ones(5, 5, dtype=torch.bool))[0] == "dense"


# -- underflow ----------------------------------------------------------------------------------
def long_chain(x):
    """An LSTM-like recurrence over the rows of x: h[t] = tanh(0.2 h[t-1] + x[t]); ∂h[t]/∂x[s]
    shrinks like 0.2^(t−s), past float32's smallest number within about 60 steps."""
    h, out = torch.zeros_like(x[0]), []
    for t in range(len(x)):
        h = torch.tanh(0.2 * h + x[t])
        out.append(h)
    return torch.stack(out)


def test_underflow_note_in_float32_not_in_float64():
    torch.manual_seed(0)
    x32 = torch.randn(96, 2, requires_grad=True)
    d32 = dependency(long_chain(x32), x32)
    assert d32.kind == "band" and d32.offsets[1] == 0  # the zeros far back are underflow
    truth32 = true_pattern(long_chain, x32, 0, 0)  # where the zeros start depends on v
    assert (full_verdict(truth32).kind, full_verdict(truth32).offsets[1]) == ("band", 0)
    assert d32.note is not None and "float32 underflow" in d32.note and "x.double()" in d32.note
    assert "float32 underflow" in d32.summary()
    x64 = x32.detach().double().requires_grad_()
    d64 = dependency(long_chain(x64), x64)
    assert d64.kind == "lower-triangular" and d64.note is None
    assert torch.equal(d64.pattern, true_pattern(long_chain, x64, 0, 0))
    x_short = torch.randn(8, 2, requires_grad=True)  # nothing near underflow: no note
    assert dependency(long_chain(x_short), x_short).note is None


def test_the_display_says_zeros_may_be_underflow():
    import vjp_magic
    torch.manual_seed(0)
    x = torch.randn(96, 2, requires_grad=True)
    text = " ".join(repr(vjp_magic.differentiate(long_chain(x), x)).split())
    assert "zeros may be float32 underflow: check in float64 with x.double()" in text
    x64 = x.detach().double().requires_grad_()
    assert "underflow" not in repr(vjp_magic.differentiate(long_chain(x64), x64))


def test_wide_patterns_judged_row_by_row_give_the_same_verdict(monkeypatch):
    from core.test_dependency import band
    from vjp_magic.core import dependency as dep_module
    patterns = [band(7, -6, 0), band(7, 0, 6), band(7, -6, 1), band(7, -2, 6), band(7, -1, 1),
                torch.ones(5, 5, dtype=torch.bool), band(5, -1, 1, m=3)]
    listed = [verdict(p) for p in patterns]
    monkeypatch.setattr(dep_module, "ENTRIES", 0)  # every pattern row by row
    assert [verdict(p) for p in patterns] == listed
