"""Lattice row colourings reach the optimum on stencils (the lower bound: the most rows
reading one column), verified pair by pair; column colourings are valid."""
import time

import numpy as np
from stencils import csr, stencil
import pytest

from vjp_magic.core.colouring import (colour_columns, colour_count, colour_rows,
                                      natural_greedy, valid_rows)

FIVE = [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)]
SEVEN = [(0, 0, 0), (1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)]


def _pairwise_valid(crow, col, colours):
    """Independent of the module's own check: rows sharing a column, pair by pair."""
    rows = np.repeat(np.arange(len(crow) - 1), np.diff(crow))
    order = np.argsort(col, kind="stable")
    by_col, sorted_cols = rows[order], col[order]
    for c in np.unique(sorted_cols):
        readers = by_col[sorted_cols == c]
        assert len(set(colours[readers].tolist())) == len(readers)


@pytest.mark.parametrize("k", [3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 16, 25])
def test_five_point_stencil_takes_five_colours_on_any_grid(k):
    # a row and its four neighbours pairwise share a column: 5 is a lower bound
    crow, col = stencil((k, k), FIVE)
    colours = colour_rows(crow, col, k * k, shape=((k, k), (k, k)))
    _pairwise_valid(crow, col, colours)
    assert colour_count(colours) == 5


@pytest.mark.parametrize("k", [3, 4, 6, 8, 11])
def test_seven_point_stencil_takes_seven_colours(k):
    crow, col = stencil((k, k, k), SEVEN)
    colours = colour_rows(crow, col, k ** 3, shape=((k, k, k), (k, k, k)))
    _pairwise_valid(crow, col, colours)
    assert colour_count(colours) == 7


@pytest.mark.parametrize("n", [3, 4, 7, 100, 1001])
def test_tridiagonal_and_periodic_bands(n):
    crow, col = stencil((n,), [(-1,), (0,), (1,)])
    colours = colour_rows(crow, col, n)
    _pairwise_valid(crow, col, colours)
    assert colour_count(colours) == 3
    # half-width 2: rows i..i+4 pairwise share a column, 5 is optimal
    crow, col = stencil((n,), [(d,) for d in range(-2, 3)])
    assert colour_count(colour_rows(crow, col, n)) == min(n, 5)


def test_periodic_band_is_valid():
    # wrap-around: n not a multiple of 3 needs a 4th colour (a lattice mod 3 collides)
    for n in (9, 10, 11, 12):
        crow, col = stencil((n,), [(-1,), (0,), (1,)], periodic=True)
        colours = colour_rows(crow, col, n)
        _pairwise_valid(crow, col, colours)
        assert colour_count(colours) == (3 if n % 3 == 0 else 4)


def test_tridiagonal_at_a_million_rows_is_fast_and_optimal():
    n = 10 ** 6
    crow, col = stencil((n,), [(-1,), (0,), (1,)])
    start = time.perf_counter()
    colours = colour_rows(crow, col, n)
    elapsed = time.perf_counter() - start
    assert colour_count(colours) == 3
    assert np.array_equal(colours, np.arange(n) % 3) or valid_rows(crow, col, n, colours)
    assert elapsed < 2.0  # vectorised (a Python loop over rows takes seconds)


def test_a_lattice_that_does_not_fit_is_rejected_by_the_verification():
    # rows share a column only near the middle of a band of rows: the screen (on interior
    # rows) may pass a lattice the whole pattern breaks; the result must still be valid
    rng = np.random.default_rng(3)
    crow, col = stencil((60,), [(-1,), (0,), (1,)])
    extra_r = rng.integers(0, 60, 30)
    extra_c = rng.integers(0, 60, 30)
    rows = np.concatenate([np.repeat(np.arange(60), np.diff(crow)), extra_r])
    keys = np.unique(rows * 60 + np.concatenate([col, extra_c]))
    crow, col = csr(keys // 60, keys % 60, 60)
    _pairwise_valid(crow, col, colour_rows(crow, col, 60))


def test_column_colouring_is_valid_and_few_on_a_wide_pattern():
    # each row reads a block of 4 neighbouring inputs (stride 4): columns never share a row
    # within a block's complement, so 4 forward passes suffice where rows need many
    m, n = 50, 200
    rows = np.repeat(np.arange(m), 4)
    cols = (np.arange(m)[:, None] * 4 + np.arange(4)[None]).reshape(-1)
    crow, col = csr(rows, cols, m)
    colours = colour_columns(crow, col, n)
    assert colour_count(colours) == 4
    cols_of = colours[col]
    for r in range(m):
        mine = cols_of[crow[r]:crow[r + 1]]
        assert len(set(mine.tolist())) == len(mine)


def test_random_patterns_take_at_most_natural_greedys_colours():
    rng = np.random.default_rng(0)
    for _ in range(100):
        m, n = rng.integers(1, 150, size=2)
        dense = rng.random((m, n)) < rng.uniform(0.01, 0.2)
        rows, cols = dense.nonzero()
        crow, col = csr(rows, cols, m)
        colours = colour_rows(crow, col, n)
        _pairwise_valid(crow, col, colours)
        assert colour_count(colours) <= 1.1 * colour_count(natural_greedy(crow, col, n))
        columns = colour_columns(crow, col, n)
        t_crow, t_col = csr(cols, rows, n)
        _pairwise_valid(t_crow, t_col, columns)


@pytest.mark.parametrize("k", [130, 141])
def test_a_grid_is_guessed_from_a_square_patterns_offsets(k):
    # without shape=: the flat index alone gives 5 colours only for k mod 5 in (2, 3), and
    # greedy (natural order only at this size) takes 7; the offsets ±k of the middle row
    # name the grid
    crow, col = stencil((k, k), FIVE)
    colours = colour_rows(crow, col, k * k)
    rows = np.repeat(np.arange(k * k), np.diff(crow))
    keys = col * 5 + colours[rows]  # (column, colour) pairs: each at most once
    assert len(np.unique(keys)) == len(keys)
    assert colour_count(colours) == 5
    assert colour_count(natural_greedy(crow, col, k * k)) == 7
