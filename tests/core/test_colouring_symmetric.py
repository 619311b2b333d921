"""Symmetric colourings: every nonzero of a symmetric matrix read directly from one product
per colour (distance-2 or star colouring), checked against torch.func.hessian."""
import numpy as np
import pytest
import torch

from vjp_magic.core.colouring import (colour_count, colour_symmetric, recover_symmetric,
                                      star_colouring, symmetrised)


def _csr(rows, cols, n):
    keys = np.unique(rows * n + cols)
    rows, cols = keys // n, keys % n
    return np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))]), cols


def _recovered_dense(crow, col, n, matrix):
    """Colour, multiply by the colour indicators, recover, scatter into a dense matrix."""
    colours = colour_symmetric(crow, col, n)
    scrow, scol = symmetrised(crow, col, n)
    v = torch.nn.functional.one_hot(torch.from_numpy(colours)).to(matrix.dtype)  # n × k
    compressed = (matrix @ v).T  # k × n: row c = H v_c
    values = recover_symmetric(scrow, scol, colours, compressed)
    rows = np.repeat(np.arange(n), np.diff(scrow))
    dense = torch.zeros(n, n, dtype=matrix.dtype)
    dense[torch.from_numpy(rows), torch.from_numpy(scol)] = values
    return dense, colours


def _random_symmetric(pattern, rng):
    values = rng.standard_normal(pattern.shape) * pattern
    return torch.from_numpy(np.triu(values) + np.triu(values, 1).T)


@pytest.mark.parametrize("n", [2, 3, 4, 10, 101])
def test_tridiagonal_takes_at_most_three_colours(n):
    rows = np.concatenate([np.arange(n), np.arange(n - 1), np.arange(1, n)])
    cols = np.concatenate([np.arange(n), np.arange(1, n), np.arange(n - 1)])
    crow, col = _csr(rows, cols, n)
    rng = np.random.default_rng(n)
    matrix = _random_symmetric(np.abs(np.subtract.outer(np.arange(n), np.arange(n))) <= 1, rng)
    dense, colours = _recovered_dense(crow, col, n, matrix)
    assert colour_count(colours) <= 3
    torch.testing.assert_close(dense, matrix, rtol=0, atol=0)


def test_an_arrow_takes_two_colours_by_star_colouring():
    # distance-2 would need n colours (every pair is two steps apart through entry 0)
    n = 60
    rows = np.concatenate([np.zeros(n, int), np.arange(n), np.arange(n)])
    cols = np.concatenate([np.arange(n), np.zeros(n, int), np.arange(n)])
    crow, col = _csr(rows, cols, n)
    pattern = np.eye(n, dtype=bool)
    pattern[0] = pattern[:, 0] = True
    matrix = _random_symmetric(pattern, np.random.default_rng(1))
    dense, colours = _recovered_dense(crow, col, n, matrix)
    assert colour_count(colours) == 2
    torch.testing.assert_close(dense, matrix, rtol=0, atol=0)


@pytest.mark.parametrize("width", [1, 2, 3])
def test_banded_patterns_are_recovered(width):
    n = 40
    pattern = np.abs(np.subtract.outer(np.arange(n), np.arange(n))) <= width
    rows, cols = pattern.nonzero()
    crow, col = _csr(rows, cols, n)
    matrix = _random_symmetric(pattern, np.random.default_rng(width))
    dense, colours = _recovered_dense(crow, col, n, matrix)
    assert colour_count(colours) <= 2 * width + 1
    torch.testing.assert_close(dense, matrix, rtol=0, atol=0)


def test_random_symmetric_patterns_are_recovered_exactly():
    rng = np.random.default_rng(0)
    for _ in range(60):
        n = int(rng.integers(1, 60))
        pattern = rng.random((n, n)) < rng.uniform(0.01, 0.3)
        pattern = pattern | pattern.T
        rows, cols = pattern.nonzero()
        crow, col = _csr(rows, cols, n)
        matrix = _random_symmetric(pattern | np.eye(n, dtype=bool), rng)
        dense, _ = _recovered_dense(crow, col, n, matrix)
        torch.testing.assert_close(dense, matrix, rtol=0, atol=0)


def test_star_colouring_has_no_two_coloured_path_of_four():
    rng = np.random.default_rng(5)
    for _ in range(40):
        n = int(rng.integers(2, 30))
        pattern = rng.random((n, n)) < 0.2
        pattern = pattern | pattern.T
        crow, col = symmetrised(*_csr(*pattern.nonzero(), n), n)
        colours = star_colouring(crow, col)
        adj = [set(col[crow[v]:crow[v + 1]].tolist()) - {v} for v in range(n)]
        for a in range(n):
            for b in adj[a]:
                assert colours[a] != colours[b]
                for c in adj[b] - {a}:
                    for d in adj[c] - {a, b}:
                        assert len({colours[a], colours[b], colours[c], colours[d]}) >= 3


def test_hessian_of_a_sparse_function_from_hessian_vector_products():
    # f couples x_i and x_j along random edges: its Hessian's pattern is the graph's
    rng = np.random.default_rng(2)
    n = 30
    edges = rng.integers(0, n, (45, 2))
    i, j = torch.from_numpy(edges[:, 0]), torch.from_numpy(edges[:, 1])

    def f(x):
        return torch.sin(x[i] * x[j]).sum() + (x ** 4).sum() / 12

    x = torch.randn(n, dtype=torch.float64)
    expected = torch.func.hessian(f)(x)
    rows = np.concatenate([edges[:, 0], edges[:, 1], np.arange(n)])
    cols = np.concatenate([edges[:, 1], edges[:, 0], np.arange(n)])
    crow, col = _csr(rows, cols, n)
    colours = colour_symmetric(crow, col, n)
    scrow, scol = symmetrised(crow, col, n)
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(f(xg), xg, create_graph=True)
    products = [torch.autograd.grad(g, xg, (torch.from_numpy(colours) == c).double(),
                                    retain_graph=True)[0] for c in range(colour_count(colours))]
    values = recover_symmetric(scrow, scol, colours, torch.stack(products))
    dense = torch.zeros(n, n, dtype=torch.float64)
    dense[torch.from_numpy(np.repeat(np.arange(n), np.diff(scrow))), torch.from_numpy(scol)] \
        = values
    torch.testing.assert_close(dense, expected)
