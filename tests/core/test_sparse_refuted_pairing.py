"""differentiate on large sparse maps: a pairing with points refuted by the compressed Jacobian
(a finite nonzero off its points) needs no VJP or probe of its own; a proved pattern with an
entry off the points but a zero value there (a superset of J's nonzeros) refutes nothing. The
sparse derivatives are a COO tensor made when first read. Expected values from
torch.func.jacrev or from the definition of the pairing's points."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

import vjp_magic
from pass_counter import counted
from vjp_magic.core.result import SparseDerivatives, with_tensor
from vjp_magic.core.sparse_choice import off_points


def _tridiagonal(x):
    return F.pad(x, (1, 0))[:-1] + x ** 3 + F.pad(x, (0, 1))[1:]


def test_the_refuted_pairing_is_recorded_and_the_jacobian_is_jacrevs():
    x = torch.randn(3000, dtype=torch.float64, requires_grad=True)
    result = vjp_magic.differentiate(_tridiagonal(x), x, seed=3)
    item = result.inputs["x"]
    assert item.sparse is not None and item.sparse.count == 3
    assert ((0, 0),) in [tuple(p) for p in item.rejected]  # the elementwise pairing
    expected = torch.func.jacrev(_tridiagonal)(x.detach())
    torch.testing.assert_close(result.derivatives["x"].to_dense(), expected)


def test_a_zero_weighted_neighbour_refutes_nothing():
    """The graph proves a pattern with the left neighbour (0 · shift), whose values are 0:
    the elementwise pairing is judged by the probes as before and accepted."""
    x = torch.randn(3000, dtype=torch.float64, requires_grad=True)

    def f(t):
        return t ** 3 + 0.0 * F.pad(t, (1, 0))[:-1]

    result = vjp_magic.differentiate(f(x), x, seed=5)
    assert tuple(result.inputs["x"].pairing) == ((0, 0),)
    assert result.inputs["x"].sparse is None
    torch.testing.assert_close(result.derivatives["x"], 3 * x.detach() ** 2)


def test_a_neighbour_in_a_few_rows_still_refutes():
    """Only the last rows read a neighbour: the scan reaches them (blocks past the first)."""
    n = 50_000
    x = torch.randn(n, dtype=torch.float64, requires_grad=True)

    def f(t):
        shifted = F.pad(t, (1, 0))[:-1]
        mask = torch.zeros(n, dtype=t.dtype)
        mask[-3:] = 1
        return t ** 3 + mask * shifted

    result, passes = counted(lambda: vjp_magic.differentiate(f(x), x, seed=2))
    assert passes <= 4  # probe 0 and the colours (2 or 3)
    item = result.inputs["x"]
    assert item.sparse is not None
    assert ((0, 0),) in [tuple(p) for p in item.rejected]
    coo = item.derivatives  # (too large to densify)
    nonzero = coo.values() != 0  # the proved pattern's entries, some of them 0 here
    rows, cols = coo.indices()[:, nonzero]
    values = coo.values()[nonzero]
    on = rows == cols
    torch.testing.assert_close(values[on], 3 * x.detach()[rows[on]] ** 2)
    assert rows[~on].tolist() == [n - 3, n - 2, n - 1]
    assert cols[~on].tolist() == [n - 4, n - 3, n - 2]
    torch.testing.assert_close(values[~on], torch.ones(3, dtype=x.dtype))
    assert int(on.sum()) == n


def test_sparse_derivatives_are_made_when_read():
    x = torch.randn(2000, requires_grad=True)
    result = vjp_magic.differentiate(_tridiagonal(x), x, seed=1)
    item = result.inputs["x"]
    assert isinstance(item.__dict__["_derivatives"], SparseDerivatives)  # not made yet
    csr = result.jacobian("x", layout=torch.sparse_csr)
    moved = with_tensor(item, x)
    assert isinstance(moved.__dict__["_derivatives"], SparseDerivatives)
    expected = torch.func.jacrev(_tridiagonal)(x.detach())
    coo = item.derivatives
    assert coo.layout == torch.sparse_coo and coo.shape == (2000, 2000) and coo.is_coalesced()
    torch.testing.assert_close(coo.to_dense(), expected)
    torch.testing.assert_close(moved.derivatives.to_dense(), expected)
    torch.testing.assert_close(csr.to_dense(), expected)
    assert item.derivatives is coo  # kept once made


def _brute_off(rows, cols, values, out_shape, in_shape, pairing) -> bool:
    for i, j, v in zip(rows, cols, values):
        if v == 0 or not torch.isfinite(torch.tensor(v)):
            continue
        oi, ij = torch.unravel_index(torch.tensor(i), out_shape), \
            torch.unravel_index(torch.tensor(j), in_shape)
        if any(int(oi[a]) != int(ij[b]) for a, b in pairing):
            return True
    return False


@pytest.mark.parametrize("seed", range(12))
def test_off_points_agrees_with_an_entry_by_entry_look(seed):
    g = torch.Generator().manual_seed(seed)
    out_shape, in_shape = (3, 4, 5), (4, 3)
    m, n = 60, 12
    dense = torch.where(torch.rand(m, n, generator=g) < 0.02, torch.randn(m, n, generator=g),
                        torch.zeros(()))
    dense[torch.rand(m, n, generator=g) < 0.01] = float("nan")
    csr = dense.to_sparse_csr()
    crow, col, values = csr.crow_indices(), csr.col_indices(), csr.values()
    rows = torch.repeat_interleave(torch.arange(m), crow.diff())
    for pairing in [((1, 0),), ((0, 1),), ((1, 0), (0, 1)), ((2, 1),)]:
        want = _brute_off(rows.tolist(), col.tolist(), values.tolist(), out_shape, in_shape,
                          pairing)
        assert off_points(crow, col, values, out_shape, in_shape, pairing) == want
        with_zeros = _brute_off(rows.tolist(), col.tolist(), [1.0] * len(col), out_shape,
                                in_shape, pairing)
        assert off_points(crow, col, None, out_shape, in_shape, pairing) == with_zeros


def test_off_points_reads_rows_past_the_first_block():
    m = 10_000
    for last in itertools.chain([0, 1023, 1024, 5000], [m - 1]):
        rows = torch.arange(m)
        cols = rows.clone()
        cols[last] = (last + 1) % m
        crow = torch.arange(m + 1)
        assert off_points(crow, cols, torch.ones(m), (m,), (m,), ((0, 0),))
        assert not off_points(crow, rows, torch.ones(m), (m,), (m,), ((0, 0),))


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_an_elementwise_pattern_is_on_every_pairings_points_and_a_moved_entry_is_not(dtype):
    """The identity pattern (entry (i, i) alone: an elementwise map's), input and output of one
    shape, lies on the points of every pairing; the same pattern with one entry moved to
    another point's column does not: both as the entry-by-entry look says (s39 E1)."""
    shape = (3, 4, 5)
    m = 60
    crow = torch.arange(m + 1, dtype=dtype)
    for pairing in [((0, 0),), ((1, 1),), ((0, 0), (2, 2)), ((0, 0), (1, 1), (2, 2))]:
        rows = list(range(m))
        assert not _brute_off(rows, rows, [1.0] * m, shape, shape, pairing)
        assert not off_points(crow, torch.arange(m, dtype=dtype), None, shape, shape, pairing)
        for moved in (0, 37, m - 1):
            cols = torch.arange(m, dtype=dtype)
            cols[moved] = (moved + 26) % m  # another index on every axis here (26 = 20 + 5 + 1)
            want = _brute_off(rows, cols.tolist(), [1.0] * m, shape, shape, pairing)
            assert want and off_points(crow, cols, None, shape, shape, pairing)
