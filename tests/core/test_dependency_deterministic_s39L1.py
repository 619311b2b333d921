"""The same input gets the same verdict on a quiet and on a loaded machine: the dependency's
choice of method (row by row or bounded, blocks read exactly or bounded, how many cut sets)
counts work, never elapsed time (issue 23; a loaded machine once bounded what a quiet one
resolved, and the verdict's wording differed)."""
import itertools
import types

import pytest
import torch

import vjp_magic
from vjp_magic.core import grouptest


def _clock(monkeypatch, step: float) -> None:
    """grouptest's clock advances ``step`` seconds a reading (0: a very fast machine)."""
    ticks = itertools.count()
    fake = types.SimpleNamespace(perf_counter=lambda: step * next(ticks),
                                 process_time=grouptest.time.process_time)
    monkeypatch.setattr(grouptest, "time", fake)


def _ghost(b, group):
    torch.manual_seed(0)
    w = torch.randn(8, 8) / 3

    def f(x):
        c = x.view(b // group, group, 8)
        return torch.tanh((c - c.mean(1, keepdim=True)).reshape(b, 8) @ w)
    return f


def _causal(x):
    s = (x @ x.T / 4).masked_fill(torch.triu(torch.ones(len(x), len(x)).bool(), 1), -torch.inf)
    return torch.softmax(s, -1) @ x


@pytest.mark.parametrize("model", ["ghost", "causal"])
def test_a_slow_clock_changes_no_verdict(monkeypatch, model):
    torch.manual_seed(1)
    b = 512
    f = _ghost(b, 32) if model == "ghost" else _causal
    x = torch.randn(b, 8, requires_grad=True)
    found = []
    for step in (0.0, 5.0):
        _clock(monkeypatch, step)
        d = vjp_magic.dependency(f(x), x, seed=7)
        found.append((d.summary(), d.complete, d.pattern.clone()))
    assert found[0][:2] == found[1][:2]
    assert torch.equal(found[0][2], found[1][2])
