"""Row colourings of patterns that wrap around (x.roll: a circulant band, a torus stencil):
valid pair by pair, and as few colours as the mathematics allows where it says how many.

- The k-th power of the cycle C_m (rows within cyclic distance k conflict) needs
  ⌈m / ⌊m / (k + 1)⌋⌉ colours: a colour holds at most ⌊m / (k + 1)⌋ rows, since k + 1
  cyclically consecutive rows pairwise conflict (Prowse and Woodall 2003).
- The periodic 5-point stencil on an a × b torus: a row and its 4 neighbours pairwise share a
  column, so 5 is a lower bound, met only where 5 divides a·b (in a 5-colouring every such
  5-row neighbourhood holds each colour once, so each colour holds a·b / 5 rows).
"""
import numpy as np
import pytest
import torch
from stencils import stencil

from vjp_magic.core.colouring import (circulant_offsets, colour_count, colour_rows,
                                      natural_greedy, peeling_order, repaired, row_colouring,
                                      valid_rows)
from vjp_magic.core.indexmaps import proved_pattern

FIVE = [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)]


def _pairwise_valid(crow, col, colours):
    """Independent of the module's own check: rows sharing a column, pair by pair."""
    rows = np.repeat(np.arange(len(crow) - 1), np.diff(crow))
    order = np.argsort(col, kind="stable")
    by_col, sorted_cols = rows[order], col[order]
    for c in np.unique(sorted_cols):
        readers = by_col[sorted_cols == c]
        assert len(set(colours[readers].tolist())) == len(readers)


def _band(m, half):
    """Row i reads x[i - half .. i + half] cyclically: rows within 2·half conflict."""
    return stencil((m,), [(d,) for d in range(-half, half + 1)], periodic=True)


@pytest.mark.parametrize("m, half", [(502, 2), (7, 1), (100, 1), (1001, 3), (50, 2),
                                     (10_001, 2), (97, 4)])
def test_a_cyclic_band_takes_the_chromatic_number_of_the_cycle_power(m, half):
    crow, col = _band(m, half)
    colours = colour_rows(crow, col, m)
    _pairwise_valid(crow, col, colours)
    k = 2 * half
    assert colour_count(colours) == -(-m // (m // (k + 1)))


def test_a_partial_cyclic_band_is_valid_and_no_worse_than_greedy():
    m = 301  # rows read x[i - 2], x[i], x[i + 2]: conflicts at distances 2 and 4 only
    crow, col = stencil((m,), [(-2,), (0,), (2,)], periodic=True)
    colours = colour_rows(crow, col, m)
    _pairwise_valid(crow, col, colours)
    assert colour_count(colours) <= colour_count(natural_greedy(crow, col, m))


def test_circulant_offsets_are_found_only_on_a_band_that_wraps():
    crow, col = _band(40, 2)
    assert circulant_offsets(crow, col, 40).tolist() == [0, 1, 2, 38, 39]
    crow, col = stencil((40,), [(d,) for d in range(-2, 3)])  # cut at the ends
    assert circulant_offsets(crow, col, 40) is None


def _torus(u):
    return u.roll(1, 0) + u.roll(-1, 0) + u.roll(1, 1) + u.roll(-1, 1) - 4 * u + u ** 3


@pytest.mark.parametrize("shape, most", [((24, 24), 6), ((15, 15), 5), ((20, 30), 5),
                                         ((16, 16), 8), ((32, 32), 8), ((10, 12), 6)])
def test_the_periodic_laplacian_on_a_torus(shape, most):
    u = torch.rand(shape, dtype=torch.float64, requires_grad=True)
    y = _torus(u)
    pattern = proved_pattern(y, u, 2**30)
    assert pattern is not None and pattern.lattice is not None
    crow, col = pattern.crow.numpy(), pattern.col.numpy()
    colours, _ = row_colouring(crow, col, u.numel(), lattice=pattern.lattice,
                               shape=(shape, shape))
    jac = torch.autograd.functional.jacobian(_torus, u.detach()).reshape(u.numel(), -1) != 0
    for c in range(colour_count(colours)):  # rows of a colour read disjoint entries of u
        assert int(jac[torch.from_numpy(colours == c)].sum(0).max()) <= 1
    lower = 5 if (shape[0] * shape[1]) % 5 == 0 else 6
    assert lower <= colour_count(colours) <= most
    if most == lower:
        assert colour_count(colours) == lower  # optimal


def test_the_periodic_laplacian_without_its_proof_is_no_worse_than_greedy():
    shape = (16, 16)
    crow, col = stencil(shape, FIVE, periodic=True)
    colours = colour_rows(crow, col, 256, shape=(shape, shape))
    _pairwise_valid(crow, col, colours)
    assert colour_count(colours) <= colour_count(natural_greedy(crow, col, 256))


def test_repaired_keeps_the_colours_that_hold_and_mends_the_seam():
    m = 100  # i mod 3 on a cyclic tridiagonal band: rows 99 and 0 clash (99 ≡ 0)
    crow, col = _band(m, 1)
    first = np.arange(m) % 3
    assert not valid_rows(crow, col, m, first)
    mended = repaired(crow, col, m, first)
    _pairwise_valid(crow, col, mended)
    assert (mended[:97] == first[:97]).all()  # far from the seam: as they were


def _tree(m, seed):
    """Rows 0..m-1; row v and its random parent p < v share a column of their own: the
    conflict graph is that tree (degeneracy 1)."""
    parent = np.random.default_rng(seed).integers(0, np.arange(1, m))
    rows = np.concatenate([np.arange(1, m), parent])
    cols = np.concatenate([np.arange(m - 1), np.arange(m - 1)])
    order = np.lexsort((cols, rows))
    crow = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=m))])
    return crow, cols[order], m - 1, parent


@pytest.mark.parametrize("m, seed", [(50, 0), (2000, 1), (200_000, 2)])
def test_greedy_in_the_peeling_order_takes_two_colours_on_a_tree(m, seed):
    # a tree has degeneracy 1: greedy in a smallest-last order takes at most 2 colours
    crow, col, n, parent = _tree(m, seed)
    counts = np.bincount(col, minlength=n)
    colours = natural_greedy(crow, col, n, peeling_order(crow, col, n, counts, m))
    assert (colours[1:] != colours[parent]).all()  # each tree edge: two colours
    assert colour_count(colours) == 2
