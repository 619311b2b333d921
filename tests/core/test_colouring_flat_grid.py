"""A 5-point stencil computed on a flat x (reshaped to a grid inside the map) still gets its
optimal lattice colouring when the caller passes the flat shapes: the grid is guessed from
the pattern's offsets, as when no shape is given."""
from stencils import stencil

from vjp_magic.core.colouring import colour_count, colour_rows, valid_rows


def test_flat_shapes_still_find_the_five_colours():
    k = 150  # large enough that only natural greedy runs after the lattice: 7 colours
    crow, col = stencil((k, k), [(-1, 0), (0, -1), (0, 0), (0, 1), (1, 0)])
    colours = colour_rows(crow, col, k * k, shape=((k * k,), (k * k,)))
    assert colour_count(colours) == 5  # one entry is read by 5 rows: the optimum
    assert valid_rows(crow, col, k * k, colours)
