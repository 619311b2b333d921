"""A wide pattern bounded rather than resolved row by row (``complete=False``, issue 23, review
s30): its witness is a dependence autograd shows, its offsets hold every leak the cut sets can
see, and a leak nearer the band than the note's margin is either found or said not ruled out.
Expected facts come from ``torch.autograd.grad`` of one output row, never from the code under
test."""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from vjp_magic.core import grouptest
from vjp_magic.core.dependency import dependency

M = 512


@pytest.fixture(autouse=True)
def bounded(monkeypatch):
    monkeypatch.setattr(grouptest, "RESOLVE_ROWS", 64)
    monkeypatch.setattr(grouptest, "RESOLVE_ENTRIES", 0)


def _reads(y, x, i) -> torch.Tensor:
    (g,) = torch.autograd.grad(y[i], x, torch.ones_like(y[i]), retain_graph=True)
    return (g != 0).any(1)


def _running(x, leaks=(), reverse=False):
    """A causal running sum (anti-causal where ``reverse``), with leaks (i, j): y[i] += x[j]."""
    y = torch.cumsum(x.flip(0), 0).flip(0) if reverse else torch.cumsum(x, 0)
    y = y * torch.tanh(x)
    for i, j in leaks:
        y = y + 0.5 * F.pad(x[j:j + 1], (0, 0, i, len(x) - 1 - i))
    return y


def _margin(note: str) -> int:
    found = re.search(r"up to (\d+) diagonals past the band", note)
    return int(found.group(1)) if found else 0


CASES = {
    "causal, far future leak": ([(100, 400)], False),
    "causal, two leaks": ([(30, 300), (250, 500)], False),
    "causal, leak one step ahead": ([(200, 201)], False),
    "anti-causal, far past leak": ([(450, 20)], True),
    "anti-causal, near past leak": ([(300, 297)], True),
    "causal, no leak": ([], False),
}


@pytest.mark.parametrize("name", list(CASES))
def test_a_bounded_verdict_names_a_real_dependence_and_holds_what_it_can_see(name):
    leaks, reverse = CASES[name]
    x = torch.randn(M, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x.requires_grad_()
    y = _running(x, leaks, reverse)
    for seed in range(3):
        d = dependency(y, x, seed=seed)
        assert not d.complete and "one by one" in d.note
        i, j = d.witness
        assert _reads(y, x, i)[j], (seed, d.witness)
        margin = _margin(d.note)
        lo, hi = d.offsets if d.offsets is not None else (-(M - 1), M - 1)
        for i, j in leaks:
            past = (j - i) if not reverse else -(j - i)  # beyond the diagonal, the band's edge
            if d.pattern[i, j]:
                assert lo <= j - i <= hi
            else:  # missed: only where the note says it is not ruled out
                assert past <= margin, (seed, (i, j), d.note)
        if not leaks:
            assert d.kind == ("upper-triangular" if reverse else "lower-triangular")


def test_far_leaks_are_found_and_read_exactly():
    x = torch.randn(M, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x.requires_grad_()
    leaks = [(40, 480), (100, 300)]
    y = _running(x, leaks)
    d = dependency(y, x, seed=0)
    assert d.kind == "band" and d.offsets == (-(M - 1), 440) and d.witness == (40, 480)
    for i, j in leaks:
        assert d.pattern[i, j]
        column = torch.tensor([_reads(y, x, r)[j] for r in range(M)])
        assert torch.equal(d.pattern[:, j], column)  # the leaked input index: exact

