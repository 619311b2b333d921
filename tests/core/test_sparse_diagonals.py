"""Patterns held as diagonals (row r reads r + a few fixed offsets: :class:`Diagonals`): the
index arrays equal the general offsets' ones, the values read off per diagonal equal
torch.func.jacrev's, and the probe check still judges the matrix it is given. Expected
values from torch.func.jacrev and from the general builder (:func:`offsets.csr`)."""
from __future__ import annotations

import numpy as np
import pytest
from stencils import laplacian, tridiagonal
import torch
import torch.nn.functional as F

import vjp_magic
from vjp_magic.core.colouring import proved_lattice
from vjp_magic.core.compressed import colour_passes
from vjp_magic.core.indexmaps import offsets, proved_pattern, walk
from vjp_magic.core.indexmaps.relation import Meter
from vjp_magic.core.pattern import deleted, expanded
from vjp_magic.core.sparse_check import checked
from vjp_magic.core.sparse_layout import csr_matrix

BUDGET = 2**32


def _gapped(x):  # offset 0 held by two boxes with a gap between them
    return torch.cat([x[:3], x.new_zeros(3), x[6:]]) * F.pad(x, (1, 0))[:-1]


def _shorter(x):  # m = n - 1
    return x[1:] * x[:-1].sin()


def _grid_rows(x):  # 2-D, offsets along the first axis only: rows of the grid
    u = x.reshape(6, 5)
    return (F.pad(u, (0, 0, 2, 0))[:-2] * u + u.roll(0, 0) ** 2).reshape(-1)


def _wide(x):  # five offsets, some rows missing several
    return sum(F.pad(x, (s, 0))[:-s] * (s + 1) for s in (1, 2, 3, 4)) + x.cos()


CASES = [(tridiagonal, 50), (laplacian, 49), (_gapped, 40), (_shorter, 30),
         (_grid_rows, 30), (_wide, 25), (tridiagonal, 4)]


@pytest.mark.parametrize("f,n", CASES)
def test_the_diagonals_give_the_general_index_arrays(f, n):
    x = torch.randn(n, dtype=torch.float64, requires_grad=True)
    relation = walk._walk(f(x), x, Meter(BUDGET))
    assert isinstance(relation, offsets.Offsets)
    found = offsets.diagonal_csr(relation, Meter(BUDGET))
    assert found is not None
    crow, cols, most, diagonals = found
    expected = offsets.csr(relation, Meter(BUDGET))
    assert np.array_equal(crow, expected[0]) and np.array_equal(cols, expected[1])
    assert most == expected[2] == diagonals.most


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("f,n", CASES)
def test_values_read_off_the_diagonals_equal_jacrev(f, n, dtype):
    x = torch.randn(n, dtype=dtype, requires_grad=True)
    y = f(x)
    pattern = proved_pattern(y, x, BUDGET)
    assert pattern is not None and pattern.diagonals is not None
    jacobian = vjp_magic.sparse_jacobian(y, x, seed=3)
    expected = torch.func.jacrev(f)(x.detach())
    torch.testing.assert_close(jacobian.to_dense(), expected, rtol=0, atol=0)


@pytest.mark.parametrize("missing", [[], [0], [9], [0, 1, 9], [3], [0, 4, 5, 9]])
def test_deleted_and_expanded_are_inverse(missing):
    missing = np.array(missing, dtype=np.int64)
    full = torch.arange(10, dtype=torch.float64) + 1
    kept = deleted(full, missing)
    assert kept.tolist() == [v for i, v in enumerate(full.tolist()) if i not in missing]
    back = expanded(kept, missing, 10)
    assert back.tolist() == [0.0 if i in missing else v for i, v in enumerate(full.tolist())]
    assert deleted(full.numpy(), missing).tolist() == kept.tolist()


@pytest.mark.parametrize("f,n", [(tridiagonal, 60), (laplacian, 64)])
def test_the_check_judges_the_matrix_it_is_given(f, n):
    x = torch.randn(n, dtype=torch.float64, requires_grad=True)
    y = f(x)
    pattern = proved_pattern(y, x, BUDGET)
    colours = torch.from_numpy(proved_lattice(pattern.lattice))
    passes = colour_passes(y, x, pattern, colours, BUDGET)
    right = csr_matrix(pattern.crow, pattern.col, passes.held, pattern.shape)
    assert checked(y, x, right, 5, passes=passes, draws=1)
    for k in (0, n, passes.held.numel() - 1):  # one value wrong, the index arrays the same
        held = passes.held.clone()
        held[k] += 0.5
        wrong = csr_matrix(pattern.crow, pattern.col, held, pattern.shape)
        assert not checked(y, x, wrong, 5, passes=passes, draws=1)
    held = passes.held.clone()  # an entry zeroed where the table still holds it
    held[n] = 0
    assert not checked(y, x, csr_matrix(pattern.crow, pattern.col, held, pattern.shape), 5,
                       passes=passes, draws=1)


@pytest.mark.parametrize("f,n", [(tridiagonal, 2), (_wide, 3)])
def test_mostly_missing_diagonals_are_left_to_the_general_builder(f, n):
    x = torch.randn(n, dtype=torch.float64, requires_grad=True)
    y = f(x)
    relation = walk._walk(y, x, Meter(BUDGET))
    assert offsets.diagonal_csr(relation, Meter(BUDGET)) is None  # > 1/4 of m·K missing
    pattern = proved_pattern(y, x, BUDGET)
    assert pattern is None or pattern.diagonals is None
    expected = torch.func.jacrev(f)(x.detach())
    torch.testing.assert_close(vjp_magic.sparse_jacobian(y, x, seed=1).to_dense(), expected,
                               rtol=0, atol=0)


@pytest.mark.parametrize("p", [1, 2, 3, 5, 7])
@pytest.mark.parametrize("size", [0, 1, 2, 3, 10, 101, 1000])
def test_periodic_colours_repeat_the_period(p, size):
    from vjp_magic.core.colouring import _periodic

    period = np.arange(p, dtype=np.int64)[::-1].copy()
    expected = [int(period[i % p]) for i in range(size)]
    assert _periodic(period, size).tolist() == expected


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_check_probes_are_reproducible_signed_powers_of_two(dtype):
    from vjp_magic.core.probes import probe_plan
    from vjp_magic.core.sparse_check import _check_probe

    flat = torch.zeros(60_000, dtype=dtype)
    v = _check_probe(flat, 11, 0)
    assert v.dtype == dtype and v.shape == flat.shape
    assert torch.equal(v, _check_probe(flat, 11, 0))  # the seed gives the same probe
    assert not torch.equal(v, _check_probe(flat, 11, 1))  # another draw, another probe
    span = probe_plan(dtype).exponents
    exponents = torch.log2(v.abs())
    assert torch.equal(exponents, exponents.round())
    assert int(exponents.min()) == -span and int(exponents.max()) == span
    values, counts = torch.unique(v, return_counts=True)
    assert len(values) == probe_plan(dtype).values  # every value drawn, about as often
    expected = flat.numel() / len(values)
    assert int(counts.min()) > 0.8 * expected and int(counts.max()) < 1.2 * expected


def test_the_flat_indices_of_diagonal_passes_are_built_when_read():
    x = torch.randn(30, dtype=torch.float64, requires_grad=True)
    y = tridiagonal(x)
    pattern = proved_pattern(y, x, BUDGET)
    colours = torch.from_numpy(proved_lattice(pattern.lattice))
    passes = colour_passes(y, x, pattern, colours, BUDGET)
    assert passes.diagonals is not None
    rows = torch.repeat_interleave(torch.arange(30), pattern.crow.diff())
    expected = colours[rows] * 30 + pattern.col  # c_i·n + j
    assert passes.at.tolist() == expected.tolist()
    assert torch.equal(passes.values.reshape(-1)[passes.at.long()], passes.held)
    replaced = passes._replace(held=passes.held * 2)
    assert torch.equal(replaced.at, passes.at) and torch.equal(replaced.values, passes.values)
