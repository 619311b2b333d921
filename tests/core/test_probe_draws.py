"""The probes' draws (core.probes.ProbeDraws): every probe of a run drawn at once, yet each
probe's entries independent and uniform over the 2(2K+1) values ±2^k, the probes independent
of one another, reproducible from the run's seed, and a coupling at the plan's threshold
still caught. Expected frequencies come from mathematics (uniform cells, chi-square bounds
with a fixed seed and generous thresholds), never from the code under test.
"""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from vjp_magic.core.probes import ProbeDraws, Probes, probe_plan, probe_vector

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


def values_of(dtype: torch.dtype) -> list[float]:
    """The 2(2K+1) probe values ±2^k, |k| ≤ K, from the plan's K (mathematics)."""
    k = probe_plan(dtype).exponents
    return sorted(s * 2.0**e for e in range(-k, k + 1) for s in (1, -1))


def codes(v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Each entry's index among :func:`values_of` (fails on a value outside it)."""
    table = torch.tensor(values_of(dtype), dtype=torch.float64)
    found = v.to(torch.float64).reshape(-1, 1) == table
    assert bool(found.any(1).all()), "a probe entry outside ±2^k, |k| ≤ K"
    return found.to(torch.int64).argmax(1)


def chi_square(counts: torch.Tensor) -> tuple[float, int]:
    """Pearson's statistic against equal cells, and its degrees of freedom."""
    counts = counts.to(torch.float64).reshape(-1)
    expected = float(counts.sum()) / counts.numel()
    return float(((counts - expected) ** 2).sum() / expected), counts.numel() - 1


def within(statistic: float, dof: int, sigmas: float = 6.0) -> bool:
    """A chi-square statistic below its mean + ``sigmas`` standard deviations (generous:
    a fixed seed, so a pass is not luck that changes from run to run)."""
    return statistic <= dof + sigmas * math.sqrt(2 * dof)


@pytest.mark.parametrize("dtype", DTYPES)
def test_each_probe_is_uniform_over_its_values(dtype):
    plan = probe_plan(dtype)
    n = 400 * plan.values
    draws = ProbeDraws(torch.zeros(n, dtype=dtype), 20261206)
    for draw in range(plan.probes):
        counts = torch.bincount(codes(draws.vector(draw), dtype), minlength=plan.values)
        statistic, dof = chi_square(counts)
        assert within(statistic, dof), (draw, statistic)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_probes_are_independent_of_one_another(dtype):
    """Every pair of probes, entry by entry: the joint cell (value of one, value of the
    other) uniform over values² cells, for probes of the same part and across parts."""
    plan = probe_plan(dtype)
    n = 60 * plan.values**2
    draws = ProbeDraws(torch.zeros(n, dtype=dtype), 7)
    every = [codes(draws.vector(d), dtype) for d in range(plan.probes)]
    for a, b in itertools.combinations(range(plan.probes), 2):
        joint = torch.bincount(every[a] * plan.values + every[b], minlength=plan.values**2)
        statistic, dof = chi_square(joint)
        assert within(statistic, dof), (a, b, statistic)


def test_neighbouring_entries_are_independent():
    plan = probe_plan(torch.float32)
    v = codes(ProbeDraws(torch.zeros(60 * plan.values**2 + 1), 3).vector(4), torch.float32)
    joint = torch.bincount(v[:-1] * plan.values + v[1:], minlength=plan.values**2)
    statistic, dof = chi_square(joint)
    assert within(statistic, dof), statistic


def test_one_entry_across_seeds_is_uniform_in_every_probe():
    """The miss bound is per entry: over many runs (seeds), entry 0 of each probe takes
    each value equally often, and its tuple of the first two probes too."""
    plan = probe_plan(torch.float32)
    runs = 40 * plan.values**2
    seen = torch.stack([codes(torch.stack([d.vector(k) for k in range(plan.probes)]),
                              torch.float32)
                        for d in (ProbeDraws(torch.zeros(1), seed) for seed in range(runs))])
    for k in range(plan.probes):
        assert within(*chi_square(torch.bincount(seen[:, k], minlength=plan.values)))
    pair = torch.bincount(seen[:, 0] * plan.values + seen[:, plan.probes - 1],
                          minlength=plan.values**2)
    assert within(*chi_square(pair))


@pytest.mark.parametrize("dtype", DTYPES)
def test_small_and_large_outputs_draw_the_same_entries(dtype):
    """Below a digit table's size each probe's entry is computed digit by digit, above it
    read off the table: both give the same probe for the same seed (a longer output's
    probe begins with a shorter one's)."""
    plan = probe_plan(dtype)
    large = plan.values ** (plan.probes - plan.probes // 2) + 5  # every table in use
    short, long = (ProbeDraws(torch.zeros(n, dtype=dtype), 99) for n in (1000, large))
    for draw in range(plan.probes):
        assert torch.equal(short.vector(draw), long.vector(draw)[:1000])


def test_probes_are_reproducible_and_shaped_like_the_output():
    out = torch.zeros(3, 4, 5)
    probes = Probes(out, {}, 123)
    for draw in range(probe_plan(out.dtype).probes):
        v = probes.vector(draw)
        assert v.shape == out.shape and v.dtype == out.dtype and v._base is None
        assert torch.equal(v, probe_vector(out, 123, draw))
        probes.release()  # drawn again, the same
        assert torch.equal(v, probes.vector(draw))
    assert not torch.equal(probe_vector(out, 123, 0), probe_vector(out, 124, 0))
    with pytest.raises(ValueError):
        ProbeDraws(out, 1).vector(probe_plan(out.dtype).probes)


def test_empty_output():
    assert probe_vector(torch.zeros(0, 3), 5, 2).shape == (0, 3)


def test_a_coupling_at_the_threshold_is_caught_on_the_table_path():
    """J[j, i] = threshold · |own derivative| at a size where the probes are read off the
    digit tables: each probe misses with probability ≤ 1/22, all seven with ≤ 4·10⁻¹⁰."""
    plan = probe_plan(torch.float32)
    n = plan.values ** (plan.probes - plan.probes // 2) + 1000
    x = torch.linspace(-1, 1, n, requires_grad=True)
    i, j = 5, n - 3
    c = plan.threshold * 1.01 * math.cos(float(x[i].detach()))
    y = torch.sin(x) + 2
    y = y + torch.zeros_like(y).index_fill(0, torch.tensor([j]), 1.0) * (c * x[i])
    derivatives = torch.autograd.grad(y, x, torch.ones_like(y), retain_graph=True)[0]
    for seed in range(12):
        assert not Probes(y, {"x": x}, seed).agree("x", derivatives, ((0, 0),))


# -- the finiteness shortcut: a bit-exact vᵀJ is scanned unless vᵀD is known finite ----------
def test_products_finite_bounds_every_probe():
    from vjp_magic.core.probes import products_finite

    big = torch.finfo(torch.float32).max / 2**6  # times 2^5 (the largest probe) still finite
    assert products_finite(torch.tensor([1.0, -big / 4]), 1)
    assert not products_finite(torch.tensor([1.0, big * 2]), 1)  # 2^5 · d overflows
    assert not products_finite(torch.tensor([1.0, big / 4]), 8)  # a sum of 8 may overflow
    assert not products_finite(torch.tensor([1.0, math.inf]), 1)
    assert not products_finite(torch.tensor([math.nan, 1.0]), 1)
    assert products_finite(torch.zeros(0), 3)


@pytest.mark.parametrize("scale", [math.inf, 3e38])
def test_equal_but_infinite_probes_never_verify(scale):
    """vᵀJ = vᵀD = ±inf entry by entry (an infinite derivative, or v·D overflowing): equal,
    yet nothing is verified there (the rule: non-finite entries never agree)."""
    n = 1000
    x = torch.linspace(0, 1, n, requires_grad=True)  # sqrt at x[0] = 0: d = inf
    y = torch.sqrt(x) if scale == math.inf else x * scale
    derivatives = torch.autograd.grad(y, x, torch.ones_like(y), retain_graph=True)[0]
    assert not bool(torch.isfinite(derivatives).all()) or scale < math.inf
    probes = Probes(y, {"x": x}, 5)
    assert not probes.agree("x", derivatives, ((0, 0),))
    assert "x" in probes.nonfinite
