"""Couplings the probes cannot see (core/couplings.py), NaN and complex in sparse_jacobian
(core/sparse_exact.py). Expected values from torch.func.jacrev / jacfwd or one-hot rows."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from custom_functions import Identity
import vjp_magic
from vjp_magic.core import couplings
from vjp_magic.core.indexmaps import proved_pattern
from vjp_magic.core.pairing import Pairing


def _coupled(x, big, a=5, b=4, identity=Identity.apply):
    u = identity(x)
    one_hot = torch.zeros_like(x)
    one_hot[b] = 1.0
    return big * u * u / 2 + one_hot * u[a]


def _jacrev(x, big, a=5, b=4):
    return torch.func.jacrev(lambda t: _coupled(t, big, a, b, lambda s: s))(x.detach())


# -- the structure test itself --------------------------------------------------------------
@pytest.mark.parametrize("pairing", [((0, 0),), ((1, 1),), ((0, 0), (1, 1)), ((0, 1),)])
def test_pairing_inside_is_the_support_of_the_pairing(pairing):
    out_shape, in_shape = (3, 4), (3, 4) if pairing != ((0, 1),) else (2, 3)
    inside = couplings.pairing_inside(out_shape, in_shape, Pairing(pairing))
    rows, cols = torch.arange(12)[:, None], torch.arange(int(torch.tensor(in_shape).prod()))
    got = inside(rows, cols[None, :])
    for i in range(12):
        for j in range(cols.numel()):
            oi = torch.unravel_index(torch.tensor(i), out_shape)
            ij = torch.unravel_index(torch.tensor(j), in_shape)
            assert bool(got[i, j]) == all(int(oi[a]) == int(ij[b]) for a, b in pairing)


def test_nonzero_outside_sees_one_entry_and_ignores_nan():
    jac = torch.diag(torch.full((6,), 1e12))
    assert not couplings.nonzero_outside(jac, 1, Pairing(((0, 0),)))
    jac[4, 5] = float("nan")  # 0·NaN of reverse mode: the probes' business, not a coupling
    assert not couplings.nonzero_outside(jac, 1, Pairing(((0, 0),)))
    jac[4, 5] = 1.0
    assert couplings.nonzero_outside(jac, 1, Pairing(((0, 0),)))
    assert not couplings.nonzero_outside(jac, 1, Pairing())  # the full Jacobian: no outside


def test_csr_inside_reads_the_stored_entries():
    dense = torch.tensor([[1.0, 0, 2], [0, 0, 0], [0, 3, 0]])
    inside = couplings.csr_inside(dense.to_sparse_csr())
    rows, cols = torch.arange(3)[:, None], torch.arange(3)[None, :]
    assert torch.equal(inside(rows, cols), dense != 0)


def test_a_graph_that_allows_nothing_outside_needs_no_pass():
    x = torch.randn(50, dtype=torch.float64, requires_grad=True)
    y = torch.sin(x) * 3
    pattern = proved_pattern(y, x, 2**30)
    inside = couplings.pairing_inside(y.shape, x.shape, Pairing(((0, 0),)))
    assert couplings.outside_entries(y, x, inside, pattern) == couplings.Verdict(False, True, 0)


@pytest.mark.parametrize("dtype,big", [(torch.float32, 1e12), (torch.float64, 1e20)])
def test_the_proved_pattern_names_the_one_column_to_compute(dtype, big):
    x = torch.rand(300, dtype=dtype, generator=torch.Generator().manual_seed(0)) + 0.5
    x.requires_grad_()
    y = _coupled(x, big, identity=lambda s: s)
    inside = couplings.pairing_inside(y.shape, x.shape, Pairing(((0, 0),)))
    verdict = couplings.outside_entries(y, x, inside, proved_pattern(y, x, 2**30))
    assert verdict == couplings.Verdict(True, True, 1)  # column 5 by forward mode


def test_without_a_proved_pattern_few_rows_are_all_computed():
    x = torch.rand(400, dtype=torch.float64) + 0.5
    x.requires_grad_()
    y = _coupled(x, 1e20)[:40]  # 40 rows of a custom Function's output
    inside = couplings.pairing_inside(y.shape, x.shape, Pairing(((0, 0),)))
    assert couplings.outside_entries(y, x, inside, None) == couplings.Verdict(True, True, 40)
    clean = Identity.apply(x)[:40] * 1e20
    assert couplings.outside_entries(clean, x, inside, None) == couplings.Verdict(False, True, 40)
    verdict = couplings.outside_entries(y, x, inside, None, most=16)  # past most: observed
    assert verdict.coupled and verdict.checked
    dense = Identity.apply(x)[:40] * 1e20 + Identity.apply(x).sum()  # every row reads all of x
    assert not couplings.outside_entries(dense, x, inside, None, most=16).checked


# -- differentiate, large path (per pairing) ------------------------------------------------
@pytest.mark.parametrize("dtype,big", [(torch.float32, 1e12), (torch.float64, 1e20)])
def test_large_path_rejects_points_the_graph_does_not_hold(dtype, big):
    x = torch.rand(600, dtype=dtype, generator=torch.Generator().manual_seed(1)) + 0.5
    x.requires_grad_()
    r = vjp_magic.differentiate(_coupled(x, big, 7, 300, lambda s: s), x, seed=0)
    assert r.point_axes["x"] == ()
    expected = _jacrev(x, big, 7, 300)
    assert r.jacobian("x")[300, 7] == 1.0
    torch.testing.assert_close(r.jacobian("x"), expected)


def _dense_coupled(x, big):
    """big·x²/2 behind an opaque Function, plus the sum of x on every entry: a coupling of 1
    in every row, which no pattern observation can resolve (every row reads all of x)."""
    u = Identity.apply(x)
    return big * u * u / 2 + u.sum()


def test_large_path_notes_what_it_could_not_check():
    x = torch.rand(600, dtype=torch.float32, generator=torch.Generator().manual_seed(1)) + 0.5
    x.requires_grad_()
    r = vjp_magic.differentiate(_dense_coupled(x, 1e12), x, seed=0)
    assert r.point_axes["x"] == ((0, 0),)  # today's behaviour, said honestly
    notes = [n for n in r.notes if "resolution" in n]
    assert len(notes) == 1 and "full=True" in notes[0] and "float32" in notes[0]
    full = vjp_magic.differentiate(_dense_coupled(x, 1e12), x, seed=0, full=True)
    assert full.jacobian("x")[300, 7] == 1.0


def test_large_path_rejects_points_hiding_one_coupling_past_64_entries():
    x = torch.rand(600, dtype=torch.float32, generator=torch.Generator().manual_seed(1)) + 0.5
    x.requires_grad_()
    r = vjp_magic.differentiate(_coupled(x, 1e12, 7, 300), x, seed=0)
    assert r.point_axes["x"] == ()  # the observed pattern shows the coupling beside 1e12
    assert not [n for n in r.notes if "resolution" in n]
    assert r.jacobian_block("x", torch.tensor([300]), torch.tensor([7])).item() == 1.0


def test_large_path_clean_points_keep_no_note():
    x = torch.rand(600, dtype=torch.float64, requires_grad=True)
    r = vjp_magic.differentiate(torch.sin(x) * 1e20, x, seed=0)
    assert r.point_axes["x"] == ((0, 0),)
    assert not [n for n in r.notes if "resolution" in n]


# -- sparse_jacobian ------------------------------------------------------------------------
@pytest.mark.parametrize("dtype,big", [(torch.float32, 1e12), (torch.float64, 1e20)])
def test_sparse_jacobian_keeps_a_sub_resolution_coupling(dtype, big):
    x = torch.rand(48, dtype=dtype, generator=torch.Generator().manual_seed(2)) + 0.5
    x.requires_grad_()
    got = vjp_magic.sparse_jacobian(_coupled(x, big, 9, 30), x, seed=1).to_dense()
    assert got[30, 9] == 1.0
    torch.testing.assert_close(got, _jacrev(x, big, 9, 30))


def _both_modes(f, x):
    reverse, forward = torch.func.jacrev(f)(x), torch.func.jacfwd(f)(x)
    return torch.where(reverse.isnan() & ~forward.isnan(), forward, reverse)


@pytest.mark.parametrize("where", [0, 500, 999])
def test_sparse_jacobian_nan_only_where_both_modes_are(where):
    def f(t):
        return F.pad(t, (1, 1))[2:] * t + torch.sqrt(t.abs()) * F.pad(t, (1, 1))[:-2]

    x = torch.randn(1000, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    twin = x.clone()
    x[where] = float("nan")
    expected = _both_modes(f, x)
    # Both modes also read 0·NaN = NaN where y[i] does not read x[j] at all (|i - j| > 1:
    # the backward of row `where` multiplies every other row's zero seed by its NaN).
    # Mathematics decides there, as in tests/acceptance/test_adversary_s31_dependency.py: a
    # twin with the NaN made finite has the same dependences, and where its finite Jacobian
    # is 0 so is the derivative (y[i] is constant in x[j]); NaN stays where it reads one.
    support = torch.func.jacrev(f)(twin) != 0
    expected = torch.where(expected.isfinite() | support, expected, torch.zeros(()))
    x.requires_grad_()
    got = vjp_magic.sparse_jacobian(f(x), x, seed=0)
    torch.testing.assert_close(got.to_dense(), expected, equal_nan=True)
    assert int(got.values().isnan().sum()) == int(expected.isnan().sum())


def test_sparse_jacobian_true_nan_stays():
    x = torch.rand(1000, dtype=torch.float64) + 0.1
    x[3] = -1.0  # sqrt(-1): a NaN value and derivative
    x.requires_grad_()
    got = vjp_magic.sparse_jacobian(torch.sqrt(x), x, seed=0).to_dense()
    assert got[3, 3].isnan() and int(got.isnan().sum()) == 1
    torch.testing.assert_close(got.diagonal()[4:], 0.5 / x.detach()[4:].sqrt())


class _Scaled(torch.autograd.Function):
    """2t: a custom Function, so no pattern is proved through it."""

    @staticmethod
    def forward(ctx, t):
        return 2 * t

    @staticmethod
    def backward(ctx, g):
        return 2 * g


def test_sparse_jacobian_nan_over_the_budget_is_refused_without_a_proved_pattern():
    x = torch.randn(2000, dtype=torch.float64)
    x[7] = float("nan")
    x.requires_grad_()
    y = F.pad(_Scaled.apply(x), (1, 1))[2:] * x
    with pytest.raises(vjp_magic.VJPUsageError, match="NaN"):
        vjp_magic.sparse_jacobian(y, x, memory_budget=10**6, seed=0)


def test_sparse_jacobian_nan_over_the_budget_is_exact_with_a_proved_pattern():
    """The dense Jacobian (32 MB) is over the budget, the proved pattern is not: its entries
    are read by chunks of rows (sparse_exact.proved_exact_csr). Truth: y[i] = x[i+1]·x[i],
    d/dx[i] = x[i+1], d/dx[i+1] = x[i] (NaN where they read x[7]), 0 elsewhere."""
    x = torch.randn(2000, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    x[7] = float("nan")
    x.requires_grad_()
    y = F.pad(x, (1, 1))[2:] * x
    got = vjp_magic.sparse_jacobian(y, x, memory_budget=10**6, seed=0).to_dense()
    a, i = x.detach(), torch.arange(2000)
    expected = torch.zeros(2000, 2000, dtype=torch.float64)
    expected[i, i] = torch.cat([a[1:], torch.zeros(1, dtype=torch.float64)])
    expected[i[:-1], i[:-1] + 1] = a[:-1]
    torch.testing.assert_close(got, expected, equal_nan=True)


def test_sparse_jacobian_finite_result_is_unchanged():
    x = torch.randn(2000, dtype=torch.float64, requires_grad=True)
    y = F.pad(x, (1, 1))[2:] * x
    got = vjp_magic.sparse_jacobian(y, x, memory_budget=10**6, seed=0)
    assert got.values().numel() <= 2 * 2000
    torch.testing.assert_close(got.to_dense(), torch.func.jacrev(
        lambda t: F.pad(t, (1, 1))[2:] * t)(x.detach()))


def test_sparse_jacobian_refuses_a_complex_input():
    x = torch.randn(100, dtype=torch.complex128, requires_grad=True)
    with pytest.raises(vjp_magic.VJPUsageError, match="complex"):
        vjp_magic.sparse_jacobian((x * x).real, x, seed=0)


# -- batched points (one paired axis of two) ----------------------------------------------
def _batched(x, big, identity=Identity.apply):
    u = identity(x)
    coupling = torch.zeros_like(x)
    coupling[2, 1] = 1.0
    return big * u * u / 2 + coupling * u[5, 1]  # beside the huge entry of x[5, 1]


@pytest.mark.parametrize("exact_up_to", [2**18, 0])  # the whole Jacobian, or per pairing
@pytest.mark.parametrize("identity", [Identity.apply, lambda s: s])
def test_a_hidden_coupling_between_samples_is_kept(exact_up_to, identity):
    x = torch.rand(16, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4)) + 0.5
    expected = torch.func.jacrev(lambda t: _batched(t, 1e20, lambda s: s))(x)
    assert expected[2, 1, 5, 1] == 1.0
    x.requires_grad_()
    r = vjp_magic.differentiate(_batched(x, 1e20, identity), x, seed=0, exact_up_to=exact_up_to)
    assert 0 not in [a for a, _ in r.point_axes["x"]]  # samples 2 and 5 are coupled
    torch.testing.assert_close(r.jacobian("x"), expected)
    assert not [n for n in r.notes if "resolution" in n]  # 64 columns or rows: all checked
