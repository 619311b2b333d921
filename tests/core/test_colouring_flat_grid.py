"""A 5-point stencil computed on a flat x (reshaped to a grid inside the map) still gets its
optimal lattice colouring when the caller passes the flat shapes: the grid is guessed from
the pattern's offsets, as when no shape is given."""
import numpy as np

from vjp_magic.core.colouring import colour_count, colour_rows, valid_rows


def five_point(k: int):
    """CSR of the 5-point stencil on a k × k grid, flattened row-major (from its definition)."""
    rows, cols = [], []
    for i in range(k):
        for j in range(k):
            for di, dj in ((-1, 0), (0, -1), (0, 0), (0, 1), (1, 0)):
                if 0 <= i + di < k and 0 <= j + dj < k:
                    rows.append(i * k + j)
                    cols.append((i + di) * k + j + dj)
    crow = np.zeros(k * k + 1, dtype=np.int64)
    np.add.at(crow, np.array(rows) + 1, 1)
    return np.cumsum(crow), np.array(cols, dtype=np.int64)


def test_flat_shapes_still_find_the_five_colours():
    k = 150  # large enough that only natural greedy runs after the lattice: 7 colours
    crow, col = five_point(k)
    colours = colour_rows(crow, col, k * k, shape=((k * k,), (k * k,)))
    assert colour_count(colours) == 5  # one entry is read by 5 rows: the optimum
    assert valid_rows(crow, col, k * k, colours)
