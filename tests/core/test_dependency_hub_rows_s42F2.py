"""A few output indices that read (nearly) every input index, beside a sparse rest (R3-3,
s42): a softmax over the batch for a few tokens, expert-choice routing. They are read as rows
(k × n), never by reading each of the n columns (n × m: quadratic memory and time).

Expected patterns: ``torch.autograd.functional.jacobian`` in float64; the work: which
columns were read exactly in forward mode (a spy on the function that reads them).
"""
from __future__ import annotations

import pytest
import torch

import vjp_magic
from vjp_magic.core import grouptest

D = torch.float64


def _x(n: int, seed: int = 2) -> torch.Tensor:
    return torch.randn(n, 4, dtype=D, generator=torch.Generator().manual_seed(seed))


def _truth(f, x) -> torch.Tensor:
    jac = torch.autograd.functional.jacobian(f, x)
    return (jac != 0).any(3).any(1)


CASES = {  # name -> (hub rows, the map from x to y)
    "over-zeros": lambda idx: lambda x: torch.zeros_like(x).index_add(0, idx, x.softmax(0)[idx]),
    "over-identity": lambda idx: lambda x: x.index_add(0, idx, x.softmax(0)[idx]),
    "over-a-band": lambda idx: lambda x: (x + x.roll(1, 0)).index_add(
        0, idx, x.softmax(0)[idx]),
    "reading-most": lambda idx: lambda x: torch.tanh(x).index_add(  # 80 % of the batch
        0, idx, (x[:240].softmax(0) * x[:240]).sum(0, keepdim=True).expand(len(idx), -1)),
}


@pytest.fixture
def read_columns(monkeypatch):
    """The number of input indices each forward-mode read took, in order."""
    seen: list[int] = []
    original = grouptest._forward_answers

    def spy(prober, columns):
        seen.append(len(columns))
        return original(prober, columns)

    monkeypatch.setattr(grouptest, "_forward_answers", spy)
    return seen


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("rows", [[5, 130, 250], [0, 299], [17]])
def test_a_few_dense_rows_are_read_as_rows(case, rows, read_columns):
    f = CASES[case](torch.tensor(rows))
    x = _x(300)
    leaf = x.clone().requires_grad_()
    d = vjp_magic.dependency(f(leaf), leaf, 0, 0, seed=0)
    pattern = d.pattern.to_dense() if d.pattern.layout != torch.strided else d.pattern
    truth = _truth(f, x)
    assert torch.equal(pattern, truth), (d, (pattern ^ truth).nonzero()[:5])
    assert d.witness is None or bool(truth[d.witness]), d
    assert sum(read_columns) <= 2 * grouptest.HUB_SAMPLE, read_columns  # not the 300 columns


def test_many_dense_rows_are_not_taken_for_hubs():
    """Past MAX_HEAVY rows reading everything (a softmax over the batch for every other
    token) the pattern is still exact: the columns are read as before."""
    idx = torch.arange(0, 300, 3)
    f = CASES["over-identity"](idx)
    x = _x(300)
    leaf = x.clone().requires_grad_()
    d = vjp_magic.dependency(f(leaf), leaf, 0, 0, seed=0)
    pattern = d.pattern.to_dense() if d.pattern.layout != torch.strided else d.pattern
    assert torch.equal(pattern, _truth(f, x)), d
