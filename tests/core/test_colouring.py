"""Row colouring over CSR patterns: valid everywhere, optimal on a tridiagonal pattern."""
import numpy as np
from stencils import csr, stencil

from vjp_magic.core.colouring import colour_count, colour_rows


def _valid(crow, col, colours):
    rows = np.repeat(np.arange(len(crow) - 1), np.diff(crow))
    pairs = set()
    for r, c in zip(rows, col):
        key = (colours[r], c)
        assert key not in pairs  # two rows of one colour read the same column
        pairs.add(key)


def test_tridiagonal_takes_three_colours_the_optimum():
    # rows i and i+1, i+2 share a column: any three consecutive rows differ, so 3 is a lower
    # bound, and i mod 3 reaches it
    for n in (3, 10, 1000):
        crow, col = stencil((n,), [(-1,), (0,), (1,)])
        colours = colour_rows(crow, col, n)
        _valid(crow, col, colours)
        assert colour_count(colours) == 3


def test_five_point_stencil_is_valid_and_within_seven():
    # the optimum is 5 (a row and its four neighbours pairwise share a column); natural-order
    # greedy takes 7 there (see the module's note: DSATUR would find 5)
    crow, col = stencil((20, 20), [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)])
    colours = colour_rows(crow, col, 400)
    _valid(crow, col, colours)
    assert 5 <= colour_count(colours) <= 7


def test_random_patterns_are_coloured_validly():
    rng = np.random.default_rng(0)
    for _ in range(50):
        m, n = rng.integers(1, 40, size=2)
        dense = rng.random((m, n)) < 0.1
        rows, cols = dense.nonzero()
        crow, col = csr(rows, cols, m)
        _valid(crow, col, colour_rows(crow, col, n))


def test_a_dense_column_is_refused():
    m = 100
    crow, col = csr(np.arange(m), np.zeros(m, dtype=np.int64), m)
    assert colour_rows(crow, col, 1, max_pairs=1000) is None
