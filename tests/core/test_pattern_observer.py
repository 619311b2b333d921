"""One pattern observer (core/pattern.py observed_pattern, decoded by core/setdecode.py's bit
sets as dependency's probes are): it finds every derivative a one-hot backward pass finds
non-zero, however small beside the others of its row and column (issue 20). Expected patterns
and values from torch.func.jacrev."""
from __future__ import annotations

import pytest
import torch

from custom_functions import Identity
import vjp_magic
from vjp_magic.core.pattern import observed_pattern


def _dense(pattern):
    rows = torch.repeat_interleave(torch.arange(pattern.shape[0]), pattern.crow.diff())
    out = torch.zeros(pattern.shape, dtype=torch.bool)
    out[rows, pattern.col] = True
    return out


def _huge_diagonal_plus_couplings(x, big, pairs, scales, identity=Identity.apply):
    """big·x²/2 (a diagonal big·x) plus scale·x[a] added to entry b for each (b, a)."""
    u = identity(x)
    extra = torch.zeros_like(x)
    for (b, a), s in zip(pairs, scales):
        extra = extra + s * u[a] * (torch.arange(x.numel()) == b).to(x.dtype)
    return big * u * u / 2 + extra


def _x(n, dtype, seed=0):
    return (torch.rand(n, dtype=dtype, generator=torch.Generator().manual_seed(seed)) + 0.5)


def _expected(x, big, pairs, scales):
    f = lambda t: _huge_diagonal_plus_couplings(t, big, pairs, scales, lambda s: s)  # noqa: E731
    return torch.func.jacrev(f)(x.detach())


@pytest.mark.parametrize("dtype,big", [(torch.float32, 1e12), (torch.float64, 1e20)])
@pytest.mark.parametrize("n", [65, 200])
def test_sparse_jacobian_keeps_the_coupling_for_every_seed(dtype, big, n):
    x = _x(n, dtype).requires_grad_()
    expected = _expected(x, big, [(4, 5)], [1.0])
    for seed in range(21):
        y = _huge_diagonal_plus_couplings(x, big, [(4, 5)], [1.0])
        got = vjp_magic.sparse_jacobian(y, x, seed=seed).to_dense()
        assert got[4, 5] == 1.0, seed
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("dtype,big", [(torch.float32, 1e8), (torch.float64, 1e16)])
def test_the_observed_pattern_is_jacrevs_nonzeros_over_a_wide_range(dtype, big):
    generator = torch.Generator().manual_seed(7)
    for trial in range(6):
        n = int(torch.randint(20, 300, (1,), generator=generator))
        count = int(torch.randint(1, 12, (1,), generator=generator))
        pairs = torch.randint(0, n, (count, 2), generator=generator).tolist()
        scales = (10.0 ** torch.randint(-8, 1, (count,), generator=generator)).tolist()
        x = _x(n, dtype, trial).requires_grad_()
        y = _huge_diagonal_plus_couplings(x, big, pairs, scales)
        found = observed_pattern(y, x, 2**28, seed=trial)
        assert found is not None
        expected = _expected(x, big, pairs, scales) != 0
        assert torch.equal(_dense(found), expected), (trial, pairs, scales)


def test_dependency_and_the_sparse_observer_agree():
    x = _x(150, torch.float32).requires_grad_()
    pairs, scales = [(4, 5), (100, 3), (7, 140), (7, 141)], [1.0, 1e-3, 2.0, 1e-6]
    y = _huge_diagonal_plus_couplings(x, 1e10, pairs, scales)
    found = observed_pattern(y, x, 2**28, seed=3)
    assert torch.equal(_dense(found), vjp_magic.dependency(y, x, seed=3).pattern)


def test_a_differentiate_point_structure_hiding_a_coupling_is_rejected_past_64_entries():
    x = _x(300, torch.float32).requires_grad_()
    y = _huge_diagonal_plus_couplings(x, 1e12, [(250, 20)], [1.0])
    r = vjp_magic.differentiate(y, x, seed=0)
    assert r.jacobian_block("x", torch.tensor([250]), torch.tensor([20])).item() == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("dtype,big", [(torch.float32, 1e8), (torch.float64, 1e16)])
def test_observed_patterns_fuzz(dtype, big):
    """Random couplings (any offsets, powers of 2 among them) of 1e-8..1 beside a big diagonal:
    the observed pattern is exactly jacrev's nonzeros, or None (never a wrong pattern)."""
    generator = torch.Generator().manual_seed(11)
    refused = 0
    for trial in range(150):
        n = int(torch.randint(2, 400, (1,), generator=generator))
        count = int(torch.randint(1, 16, (1,), generator=generator))
        pairs = torch.randint(0, n, (count, 2), generator=generator)
        if trial % 3 == 0:  # readers 2^k apart
            shift = 2 ** torch.randint(0, 8, (count,), generator=generator)
            pairs[:, 0] = (pairs[:, 1] + shift) % n
        pairs = pairs.tolist()
        scales = (10.0 ** torch.randint(-8, 1, (count,), generator=generator)).tolist()
        x = _x(n, dtype, trial).requires_grad_()
        found = observed_pattern(_huge_diagonal_plus_couplings(x, big, pairs, scales), x,
                                 2**28, seed=trial)
        if found is None:
            refused += 1
            continue
        expected = _expected(x, big, pairs, scales) != 0
        assert torch.equal(_dense(found), expected), (trial, n, pairs, scales)
    assert refused <= 15
