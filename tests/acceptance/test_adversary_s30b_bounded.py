"""Adversarial review, session 30 (second pass): bounded dependency verdicts (``complete=False``,
core/dependency.py) at T = 1,024..4,096 on causal, anti-causal, packed, strided, random and
1e-30-small leaks: the witness is a dependence autograd shows, every leak in the pattern lies
within ``offsets``, and a leak left out lies within the margin the note says is not ruled out.
Expected facts: ``torch.autograd.grad`` of one output row. All held in this review (guards)."""
from __future__ import annotations

import re

import pytest
import torch

import vjp_magic


def _reads(y, x, i) -> torch.Tensor:
    (g,) = torch.autograd.grad(y[i], x, torch.ones_like(y[i]), retain_graph=True)
    return (g != 0).any(1)


def _running(x, leaks=(), reverse=False, segments=None, coef=0.5):
    if segments:
        y = torch.cat([part.cumsum(0) for part in torch.split(x, segments)])
    else:
        y = torch.cumsum(x.flip(0), 0).flip(0) if reverse else torch.cumsum(x, 0)
    y = y * torch.tanh(x)
    if leaks:
        rows = torch.tensor([i for i, _ in leaks])
        cols = torch.tensor([j for _, j in leaks])
        y = y + torch.zeros_like(y).index_add(0, rows, coef * x[cols])
    return y


def _margin(note) -> int:
    found = re.search(r"up to (\d+) diagonals past the band", note or "")
    return int(found.group(1)) if found else 0


def _cases():
    generator = torch.Generator().manual_seed(5)
    out = []
    for t in (2048, 4096):
        random = [(int(a), int(b)) for a, b in torch.randint(t, (5, 2), generator=generator)
                  if b > a]
        out += [
            (t, [(0, t - 1)], False, None, 0.5),
            (t, [(t - 1, 0)], True, None, 0.5),
            (t, [(i, i + 64) for i in range(0, t - 64, 256)], False, None, 0.5),
            (t, random, False, None, 0.5),
            (t, [(t // 2, t // 2 + 3)], False, None, 1e-30),
            (t, [(100, t - 1000)], False, None, 1e-30),
            (t, [], False, [t // 4, 3 * t // 4], 0.5),
            (t, [(t - 2, t - 1)], False, [t // 2, t // 2], 0.5),
        ]
    return out


@pytest.mark.parametrize("case", _cases())
def test_a_bounded_verdict_is_honest(case):
    t, leaks, reverse, segments, coef = case
    x = torch.randn(t, 2, generator=torch.Generator().manual_seed(t), dtype=torch.float64)
    x.requires_grad_()
    y = _running(x, leaks, reverse, segments, coef)
    for seed in (0, 1):
        d = vjp_magic.dependency(y, x, seed=seed)
        if d.witness is not None:
            assert _reads(y, x, d.witness[0])[d.witness[1]], (seed, d.witness)
        lo, hi = d.offsets if d.offsets is not None else (-(t - 1), t - 1)
        for i, j in leaks:
            assert _reads(y, x, i)[j]  # the leak is real
            if d.pattern[i, j]:
                assert lo <= j - i <= hi, (seed, (i, j), d.offsets)
            else:
                past = -(j - i) if reverse else j - i
                assert past <= _margin(d.note), (seed, (i, j), d.note)
        if segments and not leaks:
            assert not d.pattern[t - 1, 0] or not d.complete
    assert x.grad is None
