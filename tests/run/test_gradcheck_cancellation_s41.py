"""--gradcheck never passes a wrong backward whose error one random v cancels (session 41, T1).

The check compares vᵀJ e_k for a random v; a wrong backward off by ΔJ is seen through
vᵀΔJ e_k, which is 0 wherever v is orthogonal to the column ΔJ e_k although ΔJ ≠ 0 (a
full-suite run once passed ``x·Σx`` with a backward missing its ``x_i·Σg`` term, max_error 2
and ok True). Here the cancellation is made certain: the inputs are built orthogonal to the
check's own v for each seed (``probe_v``, public), and every such wrong backward must still
fail, at every seed, while the right backward passes at the same seeds. Every expected
verdict comes from mathematics: each backward below is wrong (or right) by construction.
"""
from __future__ import annotations

import pytest
import torch

from vjp_magic.run.gradcheck import SECOND, gradcheck, probe_v
from vjp_magic.run.record import recording

SEEDS = [pytest.param(range(20), id="20-seeds"),  # 200 seeds in all with the slow ones
         pytest.param(range(20, 200), id="180-more", marks=pytest.mark.slow)]


def _orthogonal(x: torch.Tensor, seed: int, draws=(0,)) -> torch.Tensor:
    """``x`` less its part along the check's v of each draw at ``seed`` (v·x = 0)."""
    vs = [probe_v(torch.zeros(x.numel(), dtype=torch.float64), seed, d) for d in draws]
    q, _ = torch.linalg.qr(torch.stack(vs, 1))
    return x - (q @ (q.T @ x.double())).to(x.dtype)


def _verdict(build, x: torch.Tensor, seed: int):
    x = x.detach().requires_grad_(True)
    with recording() as rec:
        y = build(x)
    return gradcheck(rec, {"x": x}, y, ["x"], seed=seed, passes=2000)


def _scaled(right: bool):
    """x ↦ x·Σx: ∂y_i/∂x_k = δ_ik·Σx + x_i. ``right`` False drops the x_i term: every
    column of J is then off by x itself, so vᵀΔJ e_k = vᵀx for every k."""

    class Scaled(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * x.sum()

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return g * x.sum() + ((g * x).sum() if right else 0)

    return lambda x: Scaled.apply(x)  # (applied in the cell: recorded)


@pytest.mark.parametrize("seeds", SEEDS)
def test_a_wrong_backward_fails_at_every_seed(seeds):
    x = torch.linspace(-1, 2, 5, dtype=torch.float64)
    wrong = [s for s in seeds if _verdict(_scaled(False), x, s).ok is not False]
    right = [s for s in seeds if _verdict(_scaled(True), x, s).ok is not True]
    assert wrong == [] and right == []


@pytest.mark.parametrize("seeds", SEEDS)
def test_an_error_the_first_v_cancels_still_fails(seeds):
    """x ⊥ v: vᵀΔJ e_k = vᵀx = 0 for every k, the first v sees no error at all."""
    for seed in seeds:
        x = _orthogonal(torch.linspace(-1, 2, 5, dtype=torch.float64), seed)
        report = _verdict(_scaled(False), x, seed)
        assert report.ok is False, seed
        # every column is off by x itself: the largest error is max |x_i| (mathematics)
        assert report.max_error["x"] == pytest.approx(float(x.abs().max()), rel=1e-3)
        assert _verdict(_scaled(True), x, seed).ok is True, seed


@pytest.mark.parametrize("n, seeds", [(5, range(10)), (50, range(3)),
                                      pytest.param(5, range(10, 100), marks=pytest.mark.slow),
                                      pytest.param(50, range(3, 20), marks=pytest.mark.slow)])
def test_an_error_both_vs_cancel_still_fails(n, seeds):
    """x ⊥ v and the second v: the comparisons of vᵀJ all agree, yet the column of the
    worst entry, in J's own units, is off by x: judged on its own output entries, it fails."""
    for seed in seeds:
        x = _orthogonal(torch.linspace(-1, 2, n, dtype=torch.float64), seed, (0, SECOND))
        report = _verdict(_scaled(False), x, seed)
        assert report.ok is False and report.failed["x"], seed
        assert report.max_error["x"] == pytest.approx(float(x.abs().max()), rel=1e-3)
        assert _verdict(_scaled(True), x, seed).ok is True, seed


@pytest.mark.parametrize("seeds", SEEDS)
def test_an_error_in_one_column_that_v_cancels_fails(seeds):
    """y = A x with a backward off in column 3 only, by d ⊥ v (vᵀΔJ e_3 = vᵀd = 0), beyond
    the entries whose columns are read in J's units (20 > 8): the second v sees it."""
    n, k = 20, 3
    a = torch.linspace(-1, 1, n * n, dtype=torch.float64).reshape(n, n).sin()
    for seed in seeds:
        d = _orthogonal(torch.linspace(1, 2, n, dtype=torch.float64), seed)
        wrong = a.clone()
        wrong[:, k] += d  # the backward's J: A plus d in column k

        def build(x, wrong=wrong):
            return _linear(a, wrong).apply(x)
        report = _verdict(build, torch.linspace(-1, 1, n, dtype=torch.float64), seed)
        assert report.ok is False and report.failed["x"] == (k,), seed


@pytest.mark.parametrize("seeds", SEEDS)
def test_an_error_in_one_output_row_fails_at_every_seed(seeds):
    """A backward off in output row 2 alone: vᵀΔJ e_k = v_2·ΔJ_2k, and |v_2| ≥ 1.5."""
    n = 6
    a = torch.linspace(-1, 1, n * n, dtype=torch.float64).reshape(n, n).cos()
    wrong = a.clone()
    wrong[2] += 0.01
    for seed in seeds:
        x = torch.linspace(-1, 1, n, dtype=torch.float64)
        assert _verdict(lambda x: _linear(a, wrong).apply(x), x, seed).ok is False, seed
        assert _verdict(lambda x: _linear(a, a).apply(x), x, seed).ok is True, seed


@pytest.mark.parametrize("seeds", SEEDS)
def test_a_term_lost_across_a_balanced_v_fails(seeds):
    """y_i = w_i·(x_i + ½Σx²), ∂y_i/∂x_k = w_i·(δ_ik + x_k); the backward drops the x_k·Σg_i w_i
    term, off by x_k·Σv_i w_i: w is balanced against v (Σ v_i w_i = 0)."""
    x = torch.linspace(-1, 2, 6, dtype=torch.float64)
    for seed in seeds:
        w = _orthogonal(torch.linspace(1, 2, 6, dtype=torch.float64), seed)
        for right in (False, True):
            shared = _shared(w, right)
            report = _verdict(lambda x, f=shared: f.apply(x), x, seed)
            assert report.ok is right, (seed, right)


@pytest.mark.parametrize("seeds", SEEDS)
def test_a_float32_cell_with_a_cancelled_error_fails(seeds):
    """The cell in float32 (its v exact in float32), x ⊥ v up to float32's rounding."""
    for seed in seeds:
        x = _orthogonal(torch.linspace(-1, 2, 7, dtype=torch.float64), seed).float()
        assert _verdict(_scaled(False), x, seed).ok is False, seed
        assert _verdict(_scaled(True), x, seed).ok is True, seed


def _linear(a: torch.Tensor, backward_matrix: torch.Tensor):
    """x ↦ A x, whose backward is gᵀ·``backward_matrix`` (right where it is A)."""

    class Linear(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return a.to(x.dtype) @ x

        @staticmethod
        def backward(ctx, g):
            return backward_matrix.to(g.dtype).T @ g

    return Linear


def _shared(w: torch.Tensor, right: bool):
    """x ↦ w·(x + ½Σx²); ``right`` False drops the shared term of the backward."""

    class Shared(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return w * (x + 0.5 * (x * x).sum())

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return g * w + (x * (g * w).sum() if right else 0)

    return Shared


@pytest.mark.parametrize("n, seeds", [(50, (1102, 1266, 1676)), (100, (2558, 4158)),
                                      (300, (5061, 6019))])
def test_the_full_suites_case_fails_where_its_v_cancels_it(n, seeds):
    """The column test's own input (x = linspace(-1, 2, n), test_gradcheck_column_s34f) at
    seeds whose v makes Σ v_i x_i smaller than the tolerance (found among 20,000: about one
    in a thousand), where one v passed the wrong backward with max_error 2."""
    x = torch.linspace(-1, 2, n, dtype=torch.float64)
    for seed in seeds:
        report = _verdict(_scaled(False), x, seed)
        assert report.ok is False, seed
        assert report.max_error["x"] == pytest.approx(2.0, rel=1e-3)  # max |x_i| = 2
        assert _verdict(_scaled(True), x, seed).ok is True, seed
