"""The code beneath a sparse Hessian (issue 23, session 31): pasted as-is after the cell, it
gives H exactly as torch.func.hessian does, whatever colouring core picked — a star colouring
(entries read from the other side, H symmetric) as well as a distance-2 one (lattice, greedy,
diagonal, banded, wrap-around)."""
from __future__ import annotations

import pytest
import torch

import vjp_magic
from vjp_magic.core.colouring import valid_rows
from vjp_magic.render.hessian_sparse import product_code
from vjp_magic.render.sparse import layout_of, sparse_of


def periodic(x):  # a wrap-around chain whose length 3 does not divide: a star colouring
    return ((x - x.roll(1)) ** 2 * x).sum() + (x ** 4).sum()


def torus(x):  # a periodic 2-D grid: a star colouring (8 colours) at 64 x 64
    return (((x - x.roll(1, 0)) ** 2) * x).sum() + (((x - x.roll(1, 1)) ** 2) * x).sum() \
        + (x ** 4).sum()


def rosenbrock(x):
    return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()


def laplacian(x):  # 2-D 5-point Laplacian energy, x a grid
    return ((x[1:] - x[:-1]) ** 2).sum() + ((x[:, 1:] - x[:, :-1]) ** 2).sum() \
        + (x ** 4).sum() / 4


def flat_laplacian(x):  # the same on a flat x (no closed form for the colours)
    return laplacian(x.reshape(60, 55))


def diagonal(x):
    return (x ** 4).sum()


def banded(x):  # pentadiagonal
    return (x[2:] * x[:-2] ** 2).sum() + (x[1:] * x[:-1]).sum() + (x ** 4).sum()


CASES = [(periodic, (3002,)), (periodic, (3001,)), (periodic, (3000,)), (rosenbrock, (3000,)),
         (laplacian, (60, 55)), (flat_laplacian, (3300,)), (diagonal, (3000,)),
         (banded, (3000,)), (torus, (64, 64))]


def _pasted(f, shape) -> tuple:
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x.requires_grad_(True)
    y = f(x)
    h = vjp_magic.hessian(y, x, seed=0)
    sparse = sparse_of(h, "x")
    assert sparse is not None, "expected the sparse path"
    code = product_code(h, "x", layout_of(sparse, x.shape, x.shape).form)
    namespace = {"torch": torch, "x": x, "y": y, "_": h}
    exec(compile(code, "<hessian code>", "exec"), namespace)  # noqa: S102 - written to run
    return x, sparse, namespace, code


@pytest.mark.parametrize("f, shape", CASES, ids=lambda c: getattr(c, "__name__", str(c)))
def test_the_code_gives_the_hessian(f, shape):
    x, _, namespace, code = _pasted(f, shape)
    expected = torch.func.hessian(f)(x.detach()).reshape(x.numel(), x.numel())
    if "H" in namespace:  # the code reads H off itself
        torch.testing.assert_close(namespace["H"].to_dense(), expected)
        return
    # a closed-form distance-2 colouring: self-contained, the rule in its comment
    assert "H[p, q] = Hu[colour[q], p] at each nonzero" in code and "_" not in code.split()
    rows, cols = expected.nonzero().unbind(1)
    torch.testing.assert_close(namespace["Hu"][namespace["colour"][cols], rows],
                               expected[rows, cols])


def test_a_star_colouring_is_among_the_cases():
    """The case the old comment (H[p, q] = Hu[colour[q], p] for every entry) got wrong."""
    x, sparse, namespace, _ = _pasted(periodic, (3002,))
    matrix = namespace["H"]
    crow, col = sparse.matrix.crow_indices(), sparse.matrix.col_indices()
    colours = sparse.colours.reshape(-1)
    assert not valid_rows(crow.numpy(), col.numpy(), x.numel(), colours.numpy())
    # the one-sided reading differs from the Hessian; the code's does not
    rows = torch.repeat_interleave(torch.arange(x.numel()), crow.diff())
    one_sided = torch.stack([torch.autograd.grad(torch.autograd.grad(
        periodic(x), x, create_graph=True)[0], x, (colours == c).to(x))[0]
        for c in range(sparse.count)])[colours[col], rows]
    expected = torch.func.hessian(periodic)(x.detach())[rows, col]
    assert not torch.allclose(one_sided, expected)
    torch.testing.assert_close(matrix.values(), expected)
