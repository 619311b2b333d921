"""Fuzz: ``vjp_magic.dependency`` against the exact pattern of random block, band and sparse
structures with 0–3 random leaks (issue 23 item 2, adversary s28). Expected patterns come from
``torch.autograd.functional.jacobian``, never from the code under test.

The default run is short; ``pytest -m slow tests/core/test_dependency_fuzz.py`` runs
``VJP_FUZZ_EXAMPLES`` (default 300) examples.
"""
from __future__ import annotations

import os

import pytest
import torch

from vjp_magic import dependency
from vjp_magic.core.dependency import full_verdict


def _base(kind: str, n: int, g: torch.Generator) -> torch.Tensor:
    """A clean (n × n) structure: blocks of random sizes, a band, or a sparse gather."""
    index = torch.arange(n)
    if kind == "blocks":
        sizes, left = [], n
        while left:
            sizes.append(min(left, int(torch.randint(2, 12, (1,), generator=g))))
            left -= sizes[-1]
        block = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
        pattern = block[:, None] == block[None, :]
        if torch.rand(1, generator=g) < 0.5:  # packed causal sequences
            pattern &= index[None, :] <= index[:, None]
        return pattern
    if kind == "band":
        lo, hi = (int(v) for v in torch.randint(0, 5, (2,), generator=g))
        offset = index[None, :] - index[:, None]
        return (offset >= -lo) & (offset <= hi)
    pattern = torch.eye(n, dtype=torch.bool)  # sparse: each row reads itself and 1-2 others
    for _ in range(2):
        pattern[index, torch.randint(0, n, (n,), generator=g)] = True
    return pattern


def _function(pattern: torch.Tensor, g: torch.Generator, spread: float = 0.0):
    """y[i] = Σ_j a_ij·tanh(w_ij·x[j] + 0.3) over the j that row i of ``pattern`` holds
    (``spread``: the a_ij span e^±spread, a wide dynamic range within a column)."""
    rows, cols = pattern.nonzero(as_tuple=True)
    w = torch.rand(rows.numel(), dtype=torch.float64, generator=g) + 0.5
    a = torch.exp(torch.empty(rows.numel(), dtype=torch.float64).uniform_(
        -spread, spread, generator=g)) if spread else torch.ones(rows.numel(), dtype=torch.float64)

    def f(x):
        terms = torch.tanh(x[cols] * w.to(x.dtype)[:, None] + 0.3) * a.to(x.dtype)[:, None]
        return torch.zeros(pattern.shape[0], x.shape[1], dtype=x.dtype).index_add(0, rows, terms)
    return f


def _truth(f, x) -> torch.Tensor:
    jacobian = torch.autograd.functional.jacobian(f, x.detach())
    return (jacobian != 0).any(3).any(1)


def _example(k: int) -> None:
    g = torch.Generator().manual_seed(1000 + k)
    kind = ("blocks", "band", "sparse")[k % 3]
    n = int(torch.randint(24, 160, (1,), generator=g))
    base = _base(kind, n, g)
    pattern = base.clone()
    leaks = int(torch.randint(0, 4, (1,), generator=g))
    for _ in range(leaks):
        i, j = (int(v) for v in torch.randint(0, n, (2,), generator=g))
        pattern[i, j] = True
    wide = k % 4 == 3  # float32, terms over e^±8 within a column
    f = _function(pattern, g, 8.0 if wide else 0.0)
    x = torch.randn(n, 2, dtype=torch.float32 if wide else torch.float64, generator=g)
    truth = _truth(f, x)
    d = dependency(f(x.requires_grad_()), x, seed=k)
    if wide:  # a term below float32's resolution beside its colour's may go unseen: no more
        assert not bool((d.pattern & ~truth).any()), (k, kind, n, leaks)  # nothing claimed
        return  # that is not there
    assert torch.equal(d.pattern, truth), (k, kind, n, leaks)
    assert d.complete
    clean = full_verdict(base)
    if bool((truth & ~_allowed(clean, n)).any()):  # a leak the clean verdict does not allow
        assert (d.kind, d.witness, d.offsets, d.blocks, d.nonzeros) != tuple(clean), (k, kind)


def _allowed(clean, n: int) -> torch.Tensor:
    """The entries the clean pattern's verdict allows (a band's diagonals, its blocks), from
    the definitions of the kinds; everything for the kinds with no region (sparse, dense)."""
    index = torch.arange(n)
    offset = index[None, :] - index[:, None]
    if clean.offsets is not None and clean.kind != "band with wrap-around":
        return (offset >= clean.offsets[0]) & (offset <= clean.offsets[1])
    if clean.blocks is not None:
        block = torch.repeat_interleave(torch.arange(len(clean.blocks)),
                                        torch.tensor(clean.blocks))
        same = block[:, None] == block[None, :]
        return same & (offset <= 0) if clean.kind == "block-lower-triangular" else same
    return torch.ones(n, n, dtype=torch.bool)


@pytest.mark.parametrize("k", range(12))
def test_dependency_equals_the_exact_pattern(k):
    _example(k)


@pytest.mark.slow
def test_dependency_equals_the_exact_pattern_many_seeds():
    for k in range(12, 12 + int(os.environ.get("VJP_FUZZ_EXAMPLES", "300"))):
        _example(k)


def test_the_verification_reads_a_leak_hidden_behind_a_band_again():
    """The adversary's case at larger sizes: a tridiagonal batch plus leaks the band's colours
    alias onto rows of the band (i ≡ r mod the band's width)."""
    for n, leaks in [(300, [(150, 30)]), (257, [(200, 11), (13, 140), (90, 91 - 45)])]:
        index = torch.arange(n)
        pattern = (index[:, None] - index[None, :]).abs() <= 1
        for leak in leaks:
            pattern[leak] = True
        f = _function(pattern, torch.Generator().manual_seed(n))
        x = torch.randn(n, 2, dtype=torch.float64).requires_grad_()
        for seed in range(4):
            d = dependency(f(x), x, seed=seed)
            assert torch.equal(d.pattern, _truth(f, x)), (n, seed)
            assert d.kind != "band"
