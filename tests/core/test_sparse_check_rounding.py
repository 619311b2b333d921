"""The sparse check of a PROVED pattern against autograd's own rounding (issue 23, s29 R2).

An MLP over x + 0.1·(x's previous row): each Jacobian entry is a sum over 32 hidden units
with cancellation, and autograd's vᵀJ sums in another order than the colour passes, so the
correct J_sparse can miss the probe tolerance. The check then measures the rounding noise
of vᵀJ per entry; these tests show that the correct matrix is taken and that wrong ones
(an entry dropped or shifted, next to the cancellation or in a quiet column) are refused.
Expected values come from torch.func.jacrev; the noise the tests size their wrong entries
by is measured here with other factors than the check's.
"""
from __future__ import annotations

import torch

import vjp_magic
from vjp_magic.core import sparse_check


def _mlp_with_a_row_leak(seed: int = 3, rows: int = 64, spread=None):
    """``spread``: x's 16 features are multiplied by it first (columns of J that far apart)."""
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(),
                              torch.nn.Linear(32, 4)).double()
    spread = torch.ones(16, dtype=torch.float64) if spread is None else spread

    def f(x):  # y[i] reads x[i] and x[i-1]: a proved pattern
        x = x * spread
        return mlp(x + torch.cat([torch.zeros(1, 16, dtype=x.dtype), 0.1 * x[:-1]]))
    x = torch.randn(rows, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return f, x


def _exact_csr(f, x):
    """jacrev's Jacobian as CSR on the proved pattern (row b reads rows b and b-1 of x)."""
    dense = torch.func.jacrev(f)(x).reshape(f(x).numel(), x.numel())
    rows = torch.arange(dense.shape[0]) // 4
    cols = torch.arange(dense.shape[1]) // 16
    mask = (cols[None, :] == rows[:, None]) | (cols[None, :] == rows[:, None] - 1)
    return torch.where(mask, dense, 0).to_sparse_csr(), dense


def _probe(m: int):
    signs = torch.randint(0, 2, (m,), generator=torch.Generator().manual_seed(7))
    return (signs * 2 - 1).double()


def _noise(y, x, v):
    """|vᵀJ measured with factors 3 and 5/7 - vᵀJ|, per entry, at its largest."""
    plain = torch.autograd.grad(y.reshape(-1), x, v, retain_graph=True)[0].reshape(-1)
    worst = torch.zeros_like(plain)
    for c in (3.0, 5 / 7):
        again = torch.autograd.grad(y.reshape(-1), x, v * c, retain_graph=True)[0]
        worst = torch.maximum(worst, (again.reshape(-1) / c - plain).abs())
    return plain, worst


def test_the_correct_matrix_passes_where_the_first_judgement_alone_refuses_it():
    f, x = _mlp_with_a_row_leak(rows=256)
    matrix, _ = _exact_csr(f, x)
    x.requires_grad_()
    y = f(x)
    first = [sparse_check.checked(y, x, matrix, seed) for seed in range(4)]
    assert not all(first)  # the class this guards: the probe tolerance alone refuses it
    assert all(sparse_check.checked(y, x, matrix, seed, proved=True) for seed in range(4))


def test_the_mlp_takes_the_sparse_path_and_equals_jacrev():
    f, x = _mlp_with_a_row_leak(rows=256)
    expected = torch.func.jacrev(f)(x)
    x.requires_grad_()
    for seed in range(4):
        r = vjp_magic.differentiate(f(x), x, seed=seed)
        assert r.inputs["x"].sparse is not None, (seed, r.notes)
        torch.testing.assert_close(r.jacobian("x"), expected)


def _refused(y, x, matrix, v, observed):
    return not sparse_check.checked(y, x, matrix, 0, known=(v, observed), draws=1,
                                    proved=True)


def _with(matrix, row, col, value):
    crow, cols = matrix.crow_indices(), matrix.col_indices()
    values = matrix.values().clone()
    k = int(crow[row]) + int((cols[crow[row]:crow[row + 1]] == col).nonzero()[0, 0])
    values[k] = value
    return torch.sparse_csr_tensor(crow, cols, values, matrix.shape)


def test_a_dropped_entry_in_the_most_cancelling_column_is_refused():
    f, x = _mlp_with_a_row_leak()
    matrix, dense = _exact_csr(f, x)
    x.requires_grad_()
    y = f(x)
    v = _probe(y.numel())
    observed, noise = _noise(y, x, v)
    assert not _refused(y, x, matrix, v, observed)
    col = int(noise.argmax())
    rows = dense[:, col].abs().nonzero()[:, 0]
    row = int(rows[dense[rows, col].abs().argmin()])  # its smallest entry
    assert dense[row, col].abs() > 1e6 * noise[col]
    assert _refused(y, x, _with(matrix, row, col, 0.0), v, observed)
    neighbour = col + 1 if col % 16 < 15 else col - 1  # the same row of x, next entry
    small = dense[row, neighbour].abs()
    assert small > 1e6 * noise[neighbour]
    assert _refused(y, x, _with(matrix, row, neighbour, 0.0), v, observed)


def test_a_loud_column_does_not_loosen_a_quiet_one():
    """An error far below the loudest column's noise, but far above the quiet column's own
    bound, is refused: the noise is judged entry by entry."""
    spread = torch.ones(16, dtype=torch.float64)
    spread[0], spread[1] = 1e6, 1e-6  # feature 0 loud, feature 1 quiet
    f, x = _mlp_with_a_row_leak(spread=spread)
    x = x / spread  # x·spread: the same pre-activations, with 1e6 and 1e-6 derivatives
    matrix, dense = _exact_csr(f, x)
    x.requires_grad_()
    y = f(x)
    v = _probe(y.numel())
    observed, noise = _noise(y, x, v)
    scale = (v.abs() @ dense.abs())
    bound = 256 * torch.finfo(torch.float64).eps * scale + 16 * noise
    quiet = int((bound / bound.max()).argmin())
    shift = bound.max() / 100
    assert shift > 100 * bound[quiet]
    assert shift < 16 * noise.max()  # one noise for all columns would take it
    row = int(dense[:, quiet].abs().argmax())
    wrong = _with(matrix, row, quiet, float(dense[row, quiet] + shift))
    assert _refused(y, x, wrong, v, observed)


def test_an_observed_pattern_is_not_judged_by_the_noise():
    """Without ``proved`` the first judgement stands (a coupling below a column's rounding
    noise could be real): the correct matrix the proved check takes is refused here."""
    f, x = _mlp_with_a_row_leak(rows=256)
    matrix, _ = _exact_csr(f, x)
    x.requires_grad_()
    y = f(x)
    refused = [seed for seed in range(4) if not sparse_check.checked(y, x, matrix, seed)]
    assert refused
    assert all(sparse_check.checked(y, x, matrix, s, proved=True) for s in refused)


def test_along_rows_in_bfloat16():
    v = torch.tensor([1.5, -2.0, 0.25], dtype=torch.bfloat16)
    crow = torch.tensor([0, 2, 2, 5])
    got = sparse_check.along_rows(v, crow)
    assert got.dtype == torch.bfloat16
    assert got.tolist() == [1.5, 1.5, 0.25, 0.25, 0.25]
