"""Probes that no input can defeat: drawn per run from a seed kept on the result, counted so
that a coupling is missed with probability at most 1e-9, and never verifying anything where
vᵀJ or vᵀD is not finite.

Expected values come from torch.autograd.functional.jacobian or from mathematics; the sizes
that defeated the old fixed-seed probes are found here by redrawing the old probes.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.autograd.functional import jacobian as reference_jacobian

import vjp_magic
from vjp_magic import VJPUsageError, differentiate
from vjp_magic.core import structure
from vjp_magic.core.probes import (FullProbes, Probes, new_seed, probe_mismatch, probe_plan,
                                     probe_vector)
from vjp_magic.core.tolerances import tolerances

ADVERSARIAL_SIZES = (153_874, 172_458, 357_969)


# -- the old scheme, redrawn: a fixed seed, so the probes were a fixed function of the size --
def old_probe_prefix(length: int, draws: int = 3, span: int = 12) -> torch.Tensor:
    """The old float32 probes' first ``length`` entries (draws × length): exponents and signs
    from generators seeded 20240229 + 1000 · stream + draw (a prefix of an i.i.d. draw)."""
    rows = []
    for draw in range(draws):
        exponents = torch.randint(-span, span + 1, (length,),
                                  generator=torch.Generator().manual_seed(20240229 + draw))
        signs = torch.randint(0, 2, (length,),
                              generator=torch.Generator().manual_seed(20241229 + draw)) * 2 - 1
        rows.append(torch.ldexp(signs.to(torch.float32), exponents))
    return torch.stack(rows)


def old_colliding_sizes(limit: int = 1_000_000) -> list[int]:
    """Sizes N ≤ ``limit`` where entries 0 and N − 1 were equal in every old probe: a coupling
    y[N−1] ← x[0] cancelled in all of them."""
    v = old_probe_prefix(limit)
    equal = (v == v[:, :1]).all(0)
    return [int(i) + 1 for i in equal.nonzero().flatten() if i > 0]


def test_the_old_scheme_collided_at_the_adversarys_sizes():
    found = old_colliding_sizes()
    assert set(ADVERSARIAL_SIZES) <= set(found) and len(found) > len(ADVERSARIAL_SIZES)


# -- a single coupled pair ----------------------------------------------------------------------
def coupled(x: torch.Tensor, i: int, j: int, c: float) -> torch.Tensor:
    """sin(x) + 2, and y[j] also reads c · x[i]: J[j, i] = c besides the diagonal cos(x)."""
    y = torch.sin(x) + 2
    y[j] = y[j] + c * x[i]
    return y


def pointwise_derivatives(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """What a pointwise reading shows: the VJP with a vector of ones (cos(x), plus c at i)."""
    return torch.autograd.grad(y, x, torch.ones_like(y), retain_graph=True)[0]


def probes_accept_pointwise(y, x, seed) -> bool:
    probes = Probes(y, {"x": x}, seed)
    return probes.agree("x", pointwise_derivatives(y, x), ((0, 0),))


@pytest.mark.parametrize("n", sorted(set(ADVERSARIAL_SIZES) | set(old_colliding_sizes())))
def test_sizes_that_defeated_the_fixed_seed_do_not_defeat_the_run_seed(n):
    x = torch.linspace(0, 1, n, requires_grad=True)  # x[0] = 0: the pointwise read is 1.5
    y = coupled(x, 0, n - 1, 0.5)
    assert not probes_accept_pointwise(y, x, new_seed())


@pytest.mark.parametrize("n", ADVERSARIAL_SIZES)
@pytest.mark.parametrize("graph_proof", [False, True])
def test_the_adversarys_map_is_never_shown_pointwise(n, graph_proof):
    x = torch.linspace(0, 1, n, requires_grad=True)
    y = coupled(x, 0, n - 1, 0.5)
    try:  # the full Jacobian does not fit 64 MB: a refusal is the honest answer
        r = differentiate(y, x, graph_proof=graph_proof, memory_budget=2**26)
    except VJPUsageError as error:
        assert "memory budget" in str(error)
        return
    assert r.point_axes["x"] != ((0, 0),)
    block = r.jacobian_block("x", torch.tensor([0, n - 1]), torch.tensor([0]))
    torch.testing.assert_close(block, torch.tensor([[1.0], [0.5]]))


@pytest.mark.parametrize("case", range(12))
def test_a_single_coupled_pair_at_a_random_position(case):
    g = torch.Generator().manual_seed(100 + case)
    large = case % 2 == 1
    strategy = {"exact_up_to": 0} if large else {}  # large: judged per pairing, by probes
    n = int(torch.randint(20, 700, (), generator=g))
    i, j = (int(v) for v in torch.randperm(n, generator=g)[:2])
    dtype = (torch.float32, torch.float64)[case % 4 // 2]
    threshold = probe_plan(dtype).threshold
    c = threshold * float(torch.empty(()).uniform_(1.0, 64.0, generator=g))
    x = torch.rand(n, dtype=dtype, generator=g) * 2 - 1
    fn = lambda t: coupled(t, i, j, c)  # noqa: E731
    xs = x.clone().requires_grad_()
    r = differentiate(fn(xs), xs, graph_proof=False, **strategy)
    assert r.point_axes["x"] == ()
    torch.testing.assert_close(r.jacobian("x"), reference_jacobian(fn, x))


# -- the seed ---------------------------------------------------------------------------------
def _take_problem():
    """torch.take with repeated indices: the probes decide the structure here."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 5, dtype=torch.float64, generator=g, requires_grad=True)
    index = torch.randint(0, 20, (5,), generator=g)
    return x, lambda t: torch.take(t, index) * torch.arange(1, 6)


def test_the_same_seed_gives_the_same_result_and_runs_draw_fresh_seeds():
    x, fn = _take_problem()
    first = differentiate(fn(x), x, seed=12345)
    again = differentiate(fn(x), x, seed=12345)
    assert first.seed == again.seed == 12345
    assert first.point_axes == again.point_axes
    assert torch.equal(first.derivatives["x"], again.derivatives["x"])
    assert len(first.gradients["x"]) == len(again.gradients["x"])
    assert all(torch.equal(a, b) for a, b in zip(first.gradients["x"], again.gradients["x"]))
    torch.testing.assert_close(first.jacobian("x"), reference_jacobian(fn, x.detach()))
    seeds = {differentiate(fn(x), x).seed for _ in range(4)}
    assert len(seeds) == 4 and all(isinstance(s, int) for s in seeds)


def test_probes_are_a_function_of_the_seed():
    out = torch.zeros(1000)
    same = [probe_vector(out, 7, d) for d in range(3)]
    assert all(torch.equal(a, probe_vector(out, 7, d)) for d, a in enumerate(same))
    assert not torch.equal(same[0], same[1])
    assert not torch.equal(same[0], probe_vector(out, 8, 0))
    assert structure.row_indices((30, 40), 7) == structure.row_indices((30, 40), 7)


def test_the_users_random_state_is_left_alone():
    x, fn = _take_problem()
    torch.manual_seed(2024)
    before = torch.get_rng_state()
    differentiate(fn(x), x, graph_proof=False)
    vjp_magic.dependency(fn(x), x, 0, 0)
    vjp_magic.hessian((x ** 3).sum(1), x)
    assert torch.equal(before, torch.get_rng_state())


def test_hessian_and_dependency_keep_their_seed():
    x = torch.linspace(0.5, 1.5, 6, dtype=torch.float64, requires_grad=True)
    assert vjp_magic.hessian(torch.sin(x), x, seed=31).seed == 31
    assert vjp_magic.dependency(torch.sin(x), x, seed=32).seed == 32


# -- the bound --------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_the_probe_count_meets_the_bound(dtype):
    plan = probe_plan(dtype)
    k = plan.exponents
    values = 2 * (2 * k + 1)  # ±2^k, |k| ≤ K, equally likely
    assert values ** plan.probes >= 10**9 > values ** (plan.probes - 1)
    assert plan.miss <= 1e-9
    # below this coupling, one probe value's interval can hold a second value
    assert plan.threshold == 2.0 ** (2 * k + 1) * tolerances(dtype).probe
    v = probe_vector(torch.zeros(50_000, dtype=dtype), 3, 0).to(torch.float64)
    mantissa, exponent = torch.frexp(v)
    assert bool((mantissa.abs() == 0.5).all())  # powers of two: scaling commutes with rounding
    assert set((exponent - 1).unique().tolist()) == set(range(-k, k + 1))
    assert abs(float((v > 0).double().mean()) - 0.5) < 0.02


def test_a_coupling_at_the_threshold_is_caught_by_every_seed_of_many():
    """J[j, i] = threshold · |own derivative|: each probe misses with probability ≤ 1/22
    (float32), seven in a row with ≤ 4·10⁻¹⁰; 300 seeds must all catch it."""
    n = 64
    x = torch.linspace(-1, 1, n, requires_grad=True)
    c = probe_plan(torch.float32).threshold * 1.01 * math.cos(float(x[5].detach()))
    y = coupled(x, 5, 40, c)
    assert not any(probes_accept_pointwise(y, x, seed) for seed in range(300))


# -- non-finite entries never agree -----------------------------------------------------------
def sqrt_and_pad(t: torch.Tensor) -> torch.Tensor:
    """sqrt(x) + (0, 0.5 x[0], 0, 0, 0): J[0, 0] = inf at x[0] = 0, J[1, 0] = 0.5."""
    return torch.sqrt(t) + F.pad(0.5 * t[:1], (1, 3))


def sqrt_and_pad_jacobian(x: torch.Tensor) -> torch.Tensor:
    """By hand: d sqrt(x)/dx = 1/(2 sqrt x) (inf at 0) on the diagonal, and J[1, 0] = 0.5."""
    expected = torch.diag(0.5 / torch.sqrt(x))
    expected[1, 0] = 0.5
    return expected


@pytest.mark.parametrize("graph_proof", [True, False])
def test_infinite_derivatives_do_not_verify_a_pointwise_reading(graph_proof, strategy):
    x = torch.tensor([0.0, 1.0, 4.0, 9.0, 16.0], requires_grad=True)
    r = differentiate(sqrt_and_pad(x), x, graph_proof=graph_proof, **strategy)
    assert r.point_axes["x"] == ()
    torch.testing.assert_close(r.jacobian("x"), sqrt_and_pad_jacobian(x.detach()))
    assert any("could not be verified" in note and "x[0]" in note for note in r.notes)


def test_sqrt_at_zero_without_a_proof_is_still_right():
    x = torch.tensor([0.0, 1.0, 4.0, 9.0], dtype=torch.float64, requires_grad=True)
    r = differentiate(torch.sqrt(x), x, graph_proof=False)
    torch.testing.assert_close(r.jacobian("x"), torch.diag(0.5 / torch.sqrt(x.detach())))


def test_a_proved_structure_keeps_its_infinite_derivatives():
    x = torch.tensor([0.0, 1.0, 4.0, 9.0], requires_grad=True)
    r = differentiate(torch.sqrt(x), x)
    assert r.point_axes["x"] == ((0, 0),) and r.inputs["x"].evidence == "proved"
    torch.testing.assert_close(r.derivatives["x"], 0.5 / torch.sqrt(x.detach()))
    assert not any("could not be verified" in note for note in r.notes)


def test_the_rule_rejects_non_finite_entries():
    d = torch.tensor([1.0, math.inf, 2.0])
    v = torch.ones(3)
    assert probe_mismatch(d, v, d.clone(), ((0, 0),)) == math.inf
    assert probe_mismatch(d, v, d.clone(), ((0, 0),), nonfinite_agree=True) == 0.0
    full = torch.diag(d)
    probes = [probe_vector(torch.zeros(3), 1, k) for k in range(3)]
    vjps = [p @ full for p in probes]
    assert FullProbes(full, probes).mismatch(vjps) == math.inf


# -- dependency probes ------------------------------------------------------------------------
def test_dependency_of_sqrt_at_zero_is_independent():
    x = torch.tensor([0.0, 1.0, 4.0, 9.0, 16.0], requires_grad=True)
    d = vjp_magic.dependency(torch.sqrt(x), x)
    assert d.kind == "independent" and d.evidence == "proved"
    assert torch.equal(d.pattern, torch.eye(5, dtype=torch.bool))
    through_index = vjp_magic.dependency(torch.sqrt(x)[torch.arange(5)], x)  # nothing proved
    assert through_index.kind == "independent"
    assert torch.equal(through_index.pattern, torch.eye(5, dtype=torch.bool))


def test_dependency_reads_a_real_coupling_next_to_an_infinity():
    x = torch.tensor([0.0, 1.0, 4.0, 9.0, 16.0], requires_grad=True)
    d = vjp_magic.dependency(sqrt_and_pad(x)[torch.arange(5)], x)
    assert torch.equal(d.pattern, sqrt_and_pad_jacobian(x.detach()) != 0)
    assert (d.kind, d.witness) == ("band", (1, 0))
