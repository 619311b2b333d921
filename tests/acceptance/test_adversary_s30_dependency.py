"""Adversarial review, session 30 (issue 23): ``vjp_magic.dependency`` verdicts against the
pattern of ``torch.autograd.functional.jacobian``, in the half-precision dtypes, along axes
other than the first, between axes of different sizes, and the kinds' own promises (api.md,
"Dependency patterns") on random structures.

Tests marked ``xfail(strict=True)`` are bugs found in this review (they pass once fixed and
then lose the mark); unmarked ones guard what holds today.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import vjp_magic


def _truth(f, x, out_axis=0, in_axis=0) -> torch.Tensor:
    y = f(x.detach())
    jacobian = torch.autograd.functional.jacobian(f, x.detach())
    jacobian = jacobian.movedim(out_axis, 0).movedim(y.dim() + in_axis, 1)
    return (jacobian != 0).reshape(jacobian.shape[0], jacobian.shape[1], -1).any(2)


def _gather_plus_self(n):
    """y[i] = x[idx[i]] + x[i], idx with repeats: y[i] reads x[i] and x[idx[i]] (derivatives
    1 or 2, exactly representable in every dtype)."""
    index = torch.randint(0, n, (n,), generator=torch.Generator().manual_seed(0))
    return lambda x: x[index] + x


def _half_input(n, dtype):
    x = torch.randn(n, generator=torch.Generator().manual_seed(1)).to(dtype)
    return x.requires_grad_()


# -- bfloat16: the decoded pattern mixes up readers ----------------------------------------------
def test_bfloat16_gather_claims_no_dependence_that_is_not_there():
    f = _gather_plus_self(1500)
    x = _half_input(1500, torch.bfloat16)
    d = vjp_magic.dependency(f(x), x, seed=0)
    truth = _truth(f, x)
    assert not (d.pattern & ~truth).any()
    assert torch.equal(d.pattern, truth)


def test_bfloat16_gather_small_is_exact():
    f = _gather_plus_self(100)
    x = _half_input(100, torch.bfloat16)
    assert torch.equal(vjp_magic.dependency(f(x), x, seed=0).pattern, _truth(f, x))


def test_float16_gather_is_exact():
    f = _gather_plus_self(1500)
    x = _half_input(1500, torch.float16)
    assert torch.equal(vjp_magic.dependency(f(x), x, seed=1).pattern, _truth(f, x))


@pytest.mark.parametrize("n", [100, 1500])
def test_float32_gather_is_exact(n):
    f = _gather_plus_self(n)
    x = _half_input(n, torch.float32)
    for seed in range(2):
        assert torch.equal(vjp_magic.dependency(f(x), x, seed=seed).pattern, _truth(f, x))


def test_bfloat16_result_dependency_is_exact():
    f = _gather_plus_self(100)
    x = _half_input(100, torch.bfloat16)
    r = vjp_magic.differentiate(f(x), x, seed=0)
    assert torch.equal(r.dependency("x").pattern, _truth(f, x))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_neighbours_are_exact(dtype):
    x = _half_input(1500, dtype)

    def f(t):
        return t + t.roll(1) + t.roll(-1)
    for seed in range(2):
        assert torch.equal(vjp_magic.dependency(f(x), x, seed=seed).pattern, _truth(f, x))


# -- other axes, other sizes ----------------------------------------------------------------------
_W = torch.randn(3, 2, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
_PERM = torch.randperm(64, generator=torch.Generator().manual_seed(3))
_INDEX = torch.randint(0, 40, (90,), generator=torch.Generator().manual_seed(2))
AXES = {
    # name: (f, x shape, out_axis, in_axis)
    "strided conv along length": (lambda x: F.conv1d(x, _W, stride=2, padding=2), (1, 2, 64),
                                  2, 2),
    "max pool along length": (lambda x: F.max_pool1d(x, 4, 3), (2, 3, 50), 2, 2),
    "linear upsampling": (lambda x: F.interpolate(x, scale_factor=3, mode="linear"),
                          (1, 2, 30), 2, 2),
    "transposed axes": (lambda x: torch.tanh(x.T @ x[:, :5]), (40, 30), 0, 1),
    "cyclic second axis with a column": (
        lambda x: x * torch.tanh(x.roll(1, 1)) + 1e-3 * x[:, :1], (20, 40), 1, 1),
    "reverse cumsum": (lambda x: torch.flip(torch.cumsum(torch.flip(x, [0]), 0), [0]),
                       (50, 3), 0, 0),
    "leak of 1e-12": (lambda x: torch.tanh(x) + 1e-12 * F.pad(x[:1], (0, 0, 37, 12)),
                      (50, 3), 0, 0),
    "band with a 1e-9 leak": (
        lambda x: (F.pad(x, (0, 0, 1, 1))[:-2] + F.pad(x, (0, 0, 1, 1))[2:]) * x
        + 1e-9 * F.pad(x[3:4], (0, 0, 40, 9)), (50, 3), 0, 0),
    "mixup": (lambda x: 0.7 * x + 0.3 * x[_PERM], (64, 4), 0, 0),
    "gather to a longer output": (lambda x: x[_INDEX] ** 2, (40, 3), 0, 0),
    "broadcast over a new axis": (
        lambda x: x[None].expand(5, 30, 3) * torch.arange(5., dtype=x.dtype)[:, None, None],
        (30, 3), 1, 0),
    "reshape pairs rows": (lambda x: x.reshape(20, 6) * 2, (40, 3), 0, 0),
    "packed causal blocks": (lambda x: torch.cumsum(x.reshape(8, 8, 2), 1).reshape(64, 2),
                             (64, 2), 0, 0),
    "softmax over the batch": (lambda x: torch.softmax(x, 0), (40, 5), 0, 0),
    "zero derivatives at this x": (lambda x: x * F.relu(x.roll(1, 0)), (60, 1), 0, 0),
}


@pytest.mark.parametrize("case", list(AXES))
def test_dependency_pattern_equals_the_jacobians(case):
    f, shape, out_axis, in_axis = AXES[case]
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    if case == "zero derivatives at this x":
        x[::2] = -1
    truth = _truth(f, x, out_axis, in_axis)
    x.requires_grad_()
    for seed in range(2):
        d = vjp_magic.dependency(f(x), x, out_axis, in_axis, seed=seed)
        assert torch.equal(d.pattern, truth), (case, seed)
        _assert_kind_promises(d, truth)
    assert x.grad is None


# -- the kinds' promises on random structures with random leaks ----------------------------------
def _assert_kind_promises(d, pattern):
    """What api.md says each kind means, checked on the pattern itself."""
    r, c = pattern.nonzero(as_tuple=True)
    offset = c - r
    m, n = pattern.shape
    exceptions = d.exceptions()
    if d.kind in ("band", "lower-triangular", "upper-triangular"):
        assert d.offsets == (int(offset.min()), int(offset.max()))
        assert not exceptions
    if d.kind == "lower-triangular":
        assert pattern[m - 1, 0] and int(offset.max()) <= 0
    if d.kind == "independent":
        assert bool((offset == 0).all())
    assert len(exceptions) <= max(6, int(pattern.sum()) // 64)
    if exceptions:
        assert d.witness == exceptions[0]
    if d.witness is not None:
        assert pattern[d.witness]
    if d.kind in ("block-diagonal", "block-lower-triangular"):
        assert sum(d.blocks) <= max(m, n)
        # a block of one index (an isolated node, a one-token sequence: s36 R1) only where
        # that index reads and is read by nothing else
        start = 0
        for size in d.blocks:
            if size == 1 and start < min(m, n):
                row, col = pattern[start].clone(), pattern[:, start].clone()
                row[start] = col[start] = False
                assert not row.any() and not col.any(), (d.blocks, start)
            start += size


def _structure(g: torch.Generator) -> torch.Tensor:
    m = int(torch.randint(8, 80, (1,), generator=g))
    n = m if torch.rand(1, generator=g) < 0.8 else int(torch.randint(8, 80, (1,), generator=g))
    i, j = torch.arange(m)[:, None], torch.arange(n)[None, :]
    kind = int(torch.randint(0, 6, (1,), generator=g))
    if kind == 0:
        lo, hi = (int(v) for v in torch.randint(0, 4, (2,), generator=g))
        pattern = (j - i >= -lo) & (j - i <= hi)
    elif kind == 1:
        size = int(torch.randint(2, 9, (1,), generator=g))
        pattern = (i // size) == (j // size)
        if torch.rand(1, generator=g) < 0.5:
            pattern &= j <= i
    elif kind == 2:
        width = int(torch.randint(1, 3, (1,), generator=g))
        pattern = ((j - i) % n <= width) | ((j - i) % n >= n - width)
    elif kind == 3:
        pattern = j <= i
    elif kind == 4:
        pattern = torch.zeros(m, n, dtype=torch.bool)
        pattern[torch.arange(m), torch.randint(0, n, (m,), generator=g)] = True
    else:
        pattern = torch.eye(m, n, dtype=torch.bool)
    for _ in range(int(torch.randint(0, 9, (1,), generator=g))):
        pattern[int(torch.randint(0, m, (1,), generator=g)),
                int(torch.randint(0, n, (1,), generator=g))] = True
    return pattern


def _map(pattern, g):
    rows, cols = pattern.nonzero(as_tuple=True)
    w = torch.rand(rows.numel(), dtype=torch.float64, generator=g) + 0.5

    def f(x):
        terms = torch.tanh(x[cols] * w[:, None] + 0.3)
        return torch.zeros(pattern.shape[0], x.shape[1], dtype=x.dtype).index_add(0, rows, terms)
    return f


@pytest.mark.parametrize("first", [0, 25])
def test_random_structures_keep_the_kinds_promises(first):
    for seed in range(first, first + 25):
        g = torch.Generator().manual_seed(seed)
        pattern = _structure(g)
        f = _map(pattern, g)
        x = torch.randn(pattern.shape[1], 2, dtype=torch.float64, generator=g,
                        requires_grad=True)
        d = vjp_magic.dependency(f(x), x, seed=seed)
        assert torch.equal(d.pattern, pattern), seed
        _assert_kind_promises(d, pattern)


@pytest.mark.slow
def test_random_structures_keep_the_kinds_promises_long():
    for seed in range(50, 1050):
        g = torch.Generator().manual_seed(seed)
        pattern = _structure(g)
        f = _map(pattern, g)
        x = torch.randn(pattern.shape[1], 2, dtype=torch.float64, generator=g,
                        requires_grad=True)
        d = vjp_magic.dependency(f(x), x, seed=seed)
        assert torch.equal(d.pattern, pattern), seed
        _assert_kind_promises(d, pattern)
