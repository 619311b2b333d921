"""Observing a pattern, and checking a structure, with fewer sets (issue 20): words of one
weight (core/setdecode.py weight_sets) instead of both sides of every bit, and checks that
read only the input entries no reader inside the structure can mask (core/couplings.py
_by_points, _by_colours). Expected counts from math.comb, patterns from torch.func.jacrev."""
from __future__ import annotations

import functools
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from custom_functions import Identity
from vjp_magic.core import couplings
from vjp_magic.core.pairing import Pairing
from vjp_magic.core.pattern import observed_pattern
from vjp_magic.core.setdecode import weighed, weight_code, weight_sets


def _fewest(width: int) -> int:
    """The fewest L with C(L, L // 2) ≥ width (the largest binomial of L: Sperner)."""
    return next(L for L in itertools.count(1) if math.comb(L, max(1, L // 2)) >= width)


@pytest.mark.parametrize("width", [1, 2, 3, 7, 20, 100, 1000, 1717, 100_000, 1_000_000])
def test_words_are_distinct_of_one_weight_and_fewest(width):
    length, weight = weight_code(width)
    assert length == _fewest(width)
    assert length <= 2 * max(1, (width - 1).bit_length())
    words = weight_sets(width, length, weight)
    assert words.shape == (length, width)
    assert bool((words.sum(0) == weight).all())
    assert torch.unique(words.t(), dim=0).shape[0] == width
    single, index, empty = weighed(words, weight)
    assert bool(single.all()) and not bool(empty.any())
    assert torch.equal(index, torch.arange(width))


def test_counts_for_a_thousand_and_a_million():
    assert weight_code(1000)[0] == 13 and weight_code(10**6)[0] == 23  # not 20 and 40


@pytest.mark.parametrize("width", [2, 5, 40, 129])
def test_every_ordered_pair_is_separated_and_two_readers_collide(width):
    length, weight = weight_code(width)
    words = weight_sets(width, length, weight)
    apart = (words[:, :, None] & ~words[:, None, :]).any(0)  # [i, j]: a set holds i, not j
    assert bool(apart[~torch.eye(width, dtype=torch.bool)].all())
    pairs = torch.combinations(torch.arange(width), 2)[:500]
    union = words[:, pairs[:, 0]] | words[:, pairs[:, 1]]
    single, _, empty = weighed(union, weight)
    assert not bool(single.any()) and not bool(empty.any())


def _tridiagonal(x, couple=None, scale=1.0):
    u = Identity.apply(x)
    y = F.pad(u, (1, 0))[:-1] + F.pad(u, (0, 1))[1:] + 1e6 * u**3
    if couple is not None:
        b, a = couple
        y = y + scale * u[a] * (torch.arange(x.numel()) == b).to(x.dtype)
    return y


def _jacrev_tridiagonal(x, couple=None, scale=1.0):
    def f(t):
        y = F.pad(t, (1, 0))[:-1] + F.pad(t, (0, 1))[1:] + 1e6 * t**3
        if couple is not None:
            b, a = couple
            y = y + scale * t[a] * (torch.arange(t.numel()) == b).to(t.dtype)
        return y
    return torch.func.jacrev(f)(x.detach())


def _dense(found):
    rows = torch.repeat_interleave(torch.arange(found.shape[0]), found.crow.diff())
    out = torch.zeros(found.shape, dtype=torch.bool)
    out[rows, found.col] = True
    return out


def test_an_opaque_tridiagonal_is_observed_in_one_round_of_3_groups_at_1000():
    x = (torch.rand(1000, dtype=torch.float64) + 0.5).requires_grad_()
    found = observed_pattern(_tridiagonal(x), x, 2**28, seed=0)
    # 3 or 4 rows read exactly say offsets -1, 0, 1: 3 groups of 334 entries (before: k = 1,
    # 2, 3 on both sides of each bit, 20 + 36 + 54 sets)
    assert 3 + 3 * _fewest(334) <= found.probes <= 4 + 3 * _fewest(334) == 37
    assert torch.equal(_dense(found), _jacrev_tridiagonal(x) != 0)


def test_a_5_point_stencil_is_observed_in_one_round_of_6_groups():
    side = 40
    x = (torch.rand(side, side, dtype=torch.float64) + 0.5).requires_grad_()

    def stencil(t, identity=Identity.apply):
        u = identity(t)
        p = F.pad(u, (1, 1, 1, 1))
        return p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] - 4 * u + u**3
    found = observed_pattern(stencil(x), x, 2**28, seed=1)
    # offsets 0, ±1, ±40: k = 5 leaves 40 - (-40) = 80 together, k = 6 parts them all
    assert found.probes <= 4 + 6 * _fewest(-(-side * side // 6))
    expected = torch.func.jacrev(functools.partial(stencil, identity=lambda s: s))(x.detach())
    assert torch.equal(_dense(found), expected.reshape(side * side, -1) != 0)


def _x(n, dtype, seed=0):
    return (torch.rand(n, dtype=dtype, generator=torch.Generator().manual_seed(seed)) + 0.5)


@pytest.mark.parametrize("dtype,big", [(torch.float32, 1e12), (torch.float64, 1e20)])
def test_points_check_takes_fewest_sets_and_sees_a_coupling_beside_a_big_diagonal(dtype, big):
    x = _x(300, dtype).requires_grad_()
    inside = couplings.pairing_inside((300,), (300,), Pairing(((0, 0),)))
    clean = big * Identity.apply(x) ** 2
    verdict = couplings.outside_entries(clean, x, inside, None, seed=1)
    assert verdict == couplings.Verdict(False, True, _fewest(300))  # 11 sets, not 18
    for b, a in [(250, 20), (0, 299), (1, 2)]:
        coupled = clean + (torch.arange(300) == b).to(dtype) * Identity.apply(x)[a]
        assert couplings._by_points(coupled, x, *inside.point_keys, 1) is None
        verdict = couplings.outside_entries(coupled, x, inside, None, seed=1)
        assert verdict.coupled and verdict.checked


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_structure_check_reads_outside_each_colours_footprint(dtype):
    n = 400
    x = _x(n, dtype).requires_grad_()
    structure = (_jacrev_tridiagonal(x) != 0).to(dtype).to_sparse_csr()
    inside = couplings.csr_inside(structure)
    verdict = couplings.outside_entries(_tridiagonal(x), x, inside, None, seed=2)
    assert verdict == couplings.Verdict(False, True, 3 * _fewest(-(-n // 3)))
    for couple in [(5, 7), (7, 5), (0, 399), (200, 202), (100, 300)]:
        y = _tridiagonal(x, couple, 1.0)  # 1 beside 1e6·3x² on the diagonal
        assert (_jacrev_tridiagonal(x, couple) != 0).sum() == structure._nnz() + 1
        assert couplings._by_colours(y, x, structure, 2) is None, couple
        verdict = couplings.outside_entries(y, x, inside, None, seed=2)
        assert verdict.coupled and verdict.checked, couple


def test_a_coupling_inside_the_structure_is_no_coupling():
    x = _x(200, torch.float64).requires_grad_()
    expected = _jacrev_tridiagonal(x, (3, 150)) != 0
    inside = couplings.csr_inside(expected.double().to_sparse_csr())
    verdict = couplings.outside_entries(_tridiagonal(x, (3, 150)), x, inside, None, seed=0)
    assert verdict.checked and not verdict.coupled


def _random_map(n, pairs, scales, dtype):
    def f(t, identity=Identity.apply):
        u = identity(t)
        y = 1e8 * u * u
        for (b, a), s in zip(pairs, scales):
            y = y + s * u[a] * (torch.arange(n) == b).to(dtype)
        return y
    return f


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_structure_checks_fuzz(dtype):
    """Random couplings of 1e-8..1 beside a big diagonal: a structure equal to jacrev's
    nonzeros is clean; one entry left out of it is a coupling; points are clean iff jacrev
    has nothing off the diagonal."""
    generator = torch.Generator().manual_seed(5)
    for trial in range(60):
        n = int(torch.randint(66, 300, (1,), generator=generator))
        count = int(torch.randint(0, 6, (1,), generator=generator))
        pairs = torch.randint(0, n, (count, 2), generator=generator).tolist()
        scales = (10.0 ** torch.randint(-8, 1, (count,), generator=generator)).tolist()
        x = _x(n, dtype, trial).requires_grad_()
        f = _random_map(n, pairs, scales, dtype)
        truth = torch.func.jacrev(functools.partial(f, identity=lambda s: s))(x.detach()) != 0
        y = f(x)
        points = couplings.pairing_inside((n,), (n,), Pairing(((0, 0),)))
        off = bool((truth & ~torch.eye(n, dtype=torch.bool)).any())
        verdict = couplings.outside_entries(y, x, points, None, seed=trial)
        assert verdict.checked and verdict.coupled == off, (trial, pairs)
        full = couplings.csr_inside(truth.to(dtype).to_sparse_csr())
        assert couplings._by_colours(y, x, full.matrix, trial) is not None, (trial, pairs)
        r, c = truth.nonzero(as_tuple=True)
        drop = int(torch.randint(0, len(r), (1,), generator=generator))
        fewer = truth.clone()
        fewer[r[drop], c[drop]] = False
        less = couplings.csr_inside(fewer.to(dtype).to_sparse_csr())
        verdict = couplings.outside_entries(y, x, less, None, seed=trial)
        assert verdict.checked and verdict.coupled, (trial, pairs, drop)
