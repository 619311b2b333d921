"""Adversarial review, session 30 (issue 20): sparse Jacobians and Hessians on compositions the
earlier reviews did not cover (cumulative ops, unfold/fold, negative indices and pads,
scatter reductions, 3-d and depthwise convolutions, pixel shuffles, bags), on odd inputs (a
view of a leaf, a zero-stride leaf, a transposed leaf, NaN and inf entries, subnormals, values
spanning 1e±30) and on Hessians that are not what star colouring assumes (a custom backward
whose derivative is not symmetric, an observed unit coupling beside a 1e12 diagonal).

Expected values come from ``torch.autograd.functional.jacobian``, ``torch.func.jacrev`` /
``jacfwd`` or ``torch.func.hessian`` only. Everything here held in this review: these tests
guard it.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from custom_functions import Identity
import vjp_magic

N = 96
_G = torch.Generator().manual_seed(5)
INDEX = torch.randint(0, N, (N,), generator=_G)  # repeats
NEGATIVE = -1 - torch.randint(0, N, (N,), generator=_G)
W3 = torch.randn(6, 2, 3, 3, dtype=torch.float64, generator=_G)


def _reference(f, x):
    y = f(x.detach())
    return torch.autograd.functional.jacobian(f, x.detach()).reshape(y.numel(), x.numel())


def _add_at_repeats(x):
    z = x.clone()
    z[INDEX[:20]] += x[:20] ** 2  # repeated indices: each repeat adds once
    return z * x


OPS = {
    "cumsum tail": (lambda x: torch.cumsum(x, 0)[-40:] ** 2, (N,)),
    "cumprod rows": (lambda x: torch.cumprod(x, 1), (8, 12)),
    "cummax": (lambda x: torch.cummax(x, 1)[0] * x, (8, 12)),
    "logcumsumexp": (lambda x: torch.logcumsumexp(x, 1), (8, 12)),
    "triu with offset": (lambda x: torch.triu(x, 2) * x, (12, 8)),
    "tensor unfold": (lambda x: x.unfold(0, 5, 2).prod(1), (N,)),
    "tensor unfold step over size": (lambda x: x.unfold(0, 3, 5).prod(1), (N,)),
    "F.unfold": (lambda x: F.unfold(x, (3, 3), stride=2, padding=1), (1, 2, 8, 8)),
    "F.fold": (lambda x: F.fold(x, (6, 6), (2, 2)), (1, 8, 25)),
    "conv_transpose2d": (
        lambda x: F.conv_transpose2d(x, W3.reshape(2, 6, 3, 3)[:, :3].to(x.dtype), stride=2),
                         (1, 2, 5, 5)),
    "depthwise conv2d, stride, dilation": (
        lambda x: F.conv2d(x, W3[:, :1].to(x.dtype), groups=6, stride=(2, 1), dilation=(1, 2),
                           padding=2),
        (1, 6, 6, 6)),
    "conv3d": (lambda x: F.conv3d(x, torch.ones(2, 1, 2, 2, 2, dtype=x.dtype), stride=(1, 2, 1)),
               (1, 1, 4, 6, 4)),
    "pixel_shuffle": (lambda x: F.pixel_shuffle(x, 2) ** 2, (1, 8, 4, 3)),
    "max_pool1d": (lambda x: F.max_pool1d(x, 3, 2, 1), (1, 2, 48)),
    "adaptive_avg_pool1d": (lambda x: F.adaptive_avg_pool1d(x, 17), (1, 2, 48)),
    "linear interpolation": (lambda x: F.interpolate(x, scale_factor=2, mode="linear"),
                             (1, 2, 48)),
    "negative advanced index": (lambda x: x[NEGATIVE] ** 2 * x, (N,)),
    "take with negative indices": (lambda x: torch.take(x, NEGATIVE.reshape(8, 12)) ** 3,
                                   (8, 12)),
    "negative pad (a crop)": (lambda x: F.pad(x, (-3, 2)) ** 2 * x[:N - 1], (N,)),
    "mixed negative pads 2-D": (lambda x: F.pad(x, (-1, 2, 3, -2)).roll(1, 1) ** 2, (8, 12)),
    "roll by more than n": (lambda x: x.roll(N + 5) * x, (N,)),
    "flip two axes": (lambda x: x.flip(0, 1) * x, (8, 12)),
    "index_add with alpha": (lambda x: x.index_add(0, INDEX[:20], x[:20], alpha=-2.5), (N,)),
    "index_fill": (lambda x: x.index_fill(0, INDEX[:10], 0.) * x.roll(1), (N,)),
    "masked_select": (lambda x: torch.masked_select(x, INDEX % 2 == 0) ** 2, (N,)),
    "x[idx] += with repeats": (_add_at_repeats, (N,)),
    "put accumulate": (lambda x: torch.zeros(N, dtype=x.dtype).put(INDEX, x ** 2,
                                                                   accumulate=True), (N,)),
    "scatter_reduce prod": (
        lambda x: torch.ones(N, dtype=x.dtype).scatter_reduce(0, INDEX, x, "prod"), (N,)),
    "scatter_reduce mean": (
        lambda x: torch.zeros(N, dtype=x.dtype).scatter_reduce(0, INDEX, x ** 2, "mean"), (N,)),
    "scatter_reduce amax": (
        lambda x: torch.zeros(N, dtype=x.dtype).scatter_reduce(0, INDEX, x, "amax",
                                                               include_self=False), (N,)),
    "index_put twice": (
        lambda x: torch.zeros(N, dtype=x.dtype).index_put((INDEX,), x).index_put(
            (INDEX.flip(0),), x * 2, accumulate=True), (N,)),
    "repeat_interleave by a tensor": (lambda x: x.repeat_interleave(INDEX % 3) * 2, (N,)),
    "embedding_bag": (lambda x: F.embedding_bag(INDEX[:40] % 12, x, torch.tensor([0, 7, 20, 33])),
                      (12, 8)),
    "tril_indices gather": (
        lambda x: x[torch.tril_indices(12, 12)[0] % 8, torch.tril_indices(12, 12)[1]] ** 2,
        (8, 12)),
    "as_strided with an offset": (lambda x: x.as_strided((20, 4), (3, 2), 5).sum(1) ** 2, (N,)),
    "atan2 of neighbours": (lambda x: torch.atan2(x, x.roll(1)), (N,)),
    "clamp by a tensor": (lambda x: torch.clamp(x, min=x.roll(1)), (N,)),
    "cross product of rows": (lambda x: torch.linalg.cross(x, x.roll(1, 0)), (32, 3)),
    "batched matmul blocks": (
        lambda x: torch.bmm(x.reshape(8, 3, 4), x.reshape(8, 4, 3)).reshape(-1), (8, 12)),
}


DEFAULT = ("tensor unfold", "F.fold", "negative advanced index", "negative pad (a crop)",
           "mixed negative pads 2-D", "put accumulate", "scatter_reduce prod",
           "scatter_reduce mean", "conv3d", "cumprod rows", "take with negative indices",
           "pixel_shuffle", "x[idx] += with repeats", "index_put twice", "embedding_bag",
           "depthwise conv2d, stride, dilation")  # the rest: pytest -m slow


@pytest.mark.parametrize("case", [
    case if case in DEFAULT else pytest.param(case, marks=pytest.mark.slow) for case in OPS])
def test_sparse_results_equal_autograd(case):
    f, shape = OPS[case]
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected = _reference(f, x)
    x.requires_grad_()
    y = f(x)
    for strategy in ({}, {"exact_up_to": 0}):
        r = vjp_magic.differentiate(y, x, seed=3, **strategy)
        torch.testing.assert_close(r.jacobian("x", layout=torch.sparse_csr).to_dense(), expected)
    torch.testing.assert_close(vjp_magic.sparse_jacobian(y, x, seed=4).to_dense(), expected)
    assert x.grad is None


@pytest.mark.parametrize("case", ["cumprod rows", "F.fold", "pixel_shuffle",
                                  "negative advanced index", "scatter_reduce prod",
                                  "depthwise conv2d, stride, dilation"])
def test_sparse_results_equal_autograd_in_float32(case):
    f, shape = OPS[case]
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    expected = _reference(f, x.double()).float()
    x.requires_grad_()
    got = vjp_magic.sparse_jacobian(f(x), x, seed=4).to_dense()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_these_cases_reach_the_compressed_passes():
    """Some of the cases above take the sparse path (else they would test nothing new)."""
    for case in ("tensor unfold", "F.fold", "negative advanced index", "negative pad (a crop)",
                 "put accumulate", "scatter_reduce prod", "conv3d"):
        f, shape = OPS[case]
        x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
        assert vjp_magic.differentiate(f(x), x, seed=0, exact_up_to=0).inputs["x"].sparse \
            is not None, case


# -- odd inputs -----------------------------------------------------------------------------
def _tridiagonal(x):
    return x.roll(1) * x + x.roll(-1)


def _both(y, x, seed=1):
    r = vjp_magic.differentiate(y, x, seed=seed)
    return (r.jacobian("x", layout=torch.sparse_csr).to_dense(),
            vjp_magic.sparse_jacobian(y, x, seed=seed).to_dense())


def test_a_view_of_a_leaf_as_the_input():
    base = torch.randn(200, dtype=torch.float64, requires_grad=True)
    x = base[::2]
    expected = _reference(_tridiagonal, x)
    for got in _both(_tridiagonal(x), x):
        torch.testing.assert_close(got, expected)
    assert base.grad is None


def test_a_zero_stride_leaf():
    x = torch.randn(1, dtype=torch.float64).expand(100).requires_grad_()
    expected = _reference(_tridiagonal, x)
    for got in _both(_tridiagonal(x), x):
        torch.testing.assert_close(got, expected)


def test_a_transposed_leaf():
    x = torch.randn(10, 12, dtype=torch.float64).t().requires_grad_()

    def f(t):
        return t.roll(1, 1) * t
    for got in _both(f(x), x):
        torch.testing.assert_close(got, _reference(f, x))


def test_inf_and_nan_inputs_follow_the_nan_rule():
    """NaN only where both jacrev and jacfwd give NaN (api.md), else the finite one; and 0
    where y[i] does not read x[j] at all (|i - j| > 1), where both modes read 0·inf = NaN
    too. Mathematics decides there, as in test_adversary_s31_dependency.py: a twin with the
    inf and NaN made finite has the same dependences, and where its Jacobian is 0 so is the
    derivative (y[i] is constant in x[j])."""
    x = torch.randn(100, dtype=torch.float64)
    twin = x.clone()
    x[7], x[20] = float("inf"), float("nan")

    def f(t):
        return t.roll(1) * t + torch.exp(t.roll(-1))
    reverse, forward = torch.func.jacrev(f)(x), torch.func.jacfwd(f)(x)
    expected = torch.where(reverse.isnan(), forward, reverse)
    support = torch.func.jacrev(f)(twin) != 0
    expected = torch.where(expected.isfinite() | support, expected, torch.zeros(()))
    x.requires_grad_()
    for got in _both(f(x), x):
        torch.testing.assert_close(got, expected, equal_nan=True, rtol=0, atol=0)


def test_subnormal_inputs():
    x = (torch.rand(100, generator=torch.Generator().manual_seed(0)) * 1e-39).requires_grad_()

    def f(t):
        return t.roll(1) * 1e-3 + t * t.roll(-1)
    for got in _both(f(x), x):
        torch.testing.assert_close(got, _reference(f, x), rtol=0, atol=0)


def test_entries_spanning_1e60_in_float32():
    scale = (10 ** torch.linspace(-30, 30, 100)).float()
    x = torch.randn(100, generator=torch.Generator().manual_seed(0)).requires_grad_()

    def f(t):
        return scale * t.roll(1) + scale.flip(0) * t ** 2
    expected = torch.func.jacrev(f)(x.detach())
    for seed in range(3):
        for got in _both(f(x), x, seed):
            assert torch.equal(got, expected)


def test_an_empty_input_gives_an_empty_csr():
    x = torch.randn(0, dtype=torch.float64, requires_grad=True)
    got = vjp_magic.sparse_jacobian(_tridiagonal(x), x)
    assert got.shape == (0, 0) and got.layout == torch.sparse_csr


# -- sparse Hessians -------------------------------------------------------------------------
HN = 2100  # a scalar of 2,048 entries or more is tried sparse
_HG = torch.Generator().manual_seed(0)
_H_INDEX = torch.randint(0, HN, (HN,), generator=_HG)
_H_KERNEL = torch.randn(1, 1, 5, dtype=torch.float64, generator=_HG)
SLOW_HESSIANS = ("conv", "windows of three", "pairs through softplus", "mean of relu",
                 "sorted and weighted")
HESSIANS = {
    "gather with repeats": lambda x: (x[_H_INDEX] ** 2 * x).sum(),
    "conv": lambda x: (F.conv1d(x[None, None], _H_KERNEL, padding=2) ** 3).sum(),
    "windows of three": lambda x: x.unfold(0, 3, 1).prod(1).sum(),
    "pairs through softplus": lambda x: F.softplus(x[0::2] * x[1::2]).sum(),
    "2-D differences": lambda x: (x.reshape(42, 50).diff(dim=0) ** 2).sum()
    + (x.reshape(42, 50).diff(dim=1) ** 3).sum(),
    "mean of relu": lambda x: F.relu(x * x.roll(3)).mean(),
    "max": lambda x: (x * x.roll(1)).max(),
    "sorted and weighted": lambda x: (torch.sort(x)[0] * torch.arange(HN, dtype=x.dtype))
    .pow(2).sum(),
    "zeros at this x": lambda x: ((x * x.roll(1)) ** 2).sum(),
}


@pytest.mark.parametrize("case", [
    pytest.param(case, marks=pytest.mark.slow) if case in SLOW_HESSIANS else case
    for case in HESSIANS])
def test_sparse_hessian_equals_torch_func_hessian(case):
    f = HESSIANS[case]
    x = torch.randn(HN, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    if case == "zeros at this x":
        x[::3] = 0
    expected = torch.func.hessian(f)(x)
    x.requires_grad_()
    h = vjp_magic.hessian(f(x), x, seed=2)
    torch.testing.assert_close(h.hessian("x", layout=torch.sparse_csr).to_dense(), expected)
    assert x.grad is None


class _Skew(torch.autograd.Function):
    """x², with a backward 2·g·x.roll(1): its derivative is a shift, not symmetric."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 2 * g * x.roll(1)


def test_a_hessian_that_is_not_symmetric_is_not_symmetrised():
    """Star colouring assumes H = Hᵀ; a custom backward can break that. The answer must be
    the derivative of the backward (what torch.autograd.functional.hessian computes), and
    say it is not symmetric."""
    x = torch.randn(HN, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def f(t):
        return _Skew.apply(t).sum()
    expected = torch.autograd.functional.hessian(f, x)
    x.requires_grad_()
    h = vjp_magic.hessian(f(x), x, seed=0)
    torch.testing.assert_close(h.hessian("x"), expected)
    assert h.inputs["x"].symmetric is False


@pytest.mark.parametrize("dtype, big", [(torch.float32, 1e12), (torch.float64, 1e20)])
def test_an_observed_hessian_keeps_a_unit_coupling_beside_a_huge_diagonal(dtype, big):
    x = (torch.rand(HN, dtype=dtype, generator=torch.Generator().manual_seed(0)) + 0.5)
    x.requires_grad_()
    u = Identity.apply(x)  # no rule: the Hessian's pattern is observed
    h = vjp_magic.hessian((big * u * u / 2).sum() + u[4] * u[5], x, seed=0)
    hessian = h.hessian("x", layout=torch.sparse_csr).to_dense()
    assert hessian[4, 5] == 1 and hessian[5, 4] == 1
    assert h.inputs["x"].sparse is not None and h.inputs["x"].sparse.evidence == "observed"
