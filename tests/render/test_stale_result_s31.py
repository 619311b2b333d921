"""The code beneath a sparse result whose colours have no closed form reads the result from
IPython's ``_`` (session 31, K2): it first checks ``_`` is that cell's result (its seed), so run
after another cell's output (another result, the same shapes) it raises instead of silently
decompressing with another result's colours or pattern; run right after the cell it gives
what torch.func.jacrev / torch.func.hessian give."""
from __future__ import annotations

import pytest
import torch

import vjp_magic
from render.test_sparse_display import code_of, made, stencil
from vjp_magic.render.codelines import CODE_WIDTH
from vjp_magic.render.hessian_sparse import product_code
from vjp_magic.render.sparse import layout_of, sparse_of

SHUFFLED = torch.tensor([0, 1, 2, 3, 0, 2, 1, 3, 0, 1, 2, 3])  # valid (any 3 in a row differ),
# no closed form


def _jacobian_result(seed: int, colours=SHUFFLED):
    x = torch.randn(12, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    r, y, x = made(stencil, x, colours=colours)
    r.seed = seed
    return r, y, x


def _run(code: str, namespace: dict) -> dict:
    exec(compile(code, "<shown code>", "exec"), namespace)  # noqa: S102 - written to run
    return namespace


def test_the_jacobian_code_checks_underscore_first():
    r, y, x = _jacobian_result(2 ** 62 + 12345)
    code = code_of(r)
    lines = code.splitlines()
    assert lines[0] == f'assert _.seed == {r.seed}, "_ is stale"'
    assert len(lines[0]) <= CODE_WIDTH  # a 63-bit seed still fits one code line
    assert "_.gradients['x']" in code and "%" not in code


def test_a_stale_underscore_raises_and_the_right_one_equals_jacrev():
    r, y, x = _jacobian_result(7)
    stale, _, _ = _jacobian_result(8, colours=torch.arange(12) % 3)  # same shapes
    code = code_of(r)
    with pytest.raises(AssertionError, match="_ is stale"):
        _run(code, {"torch": torch, "y": y, "x": x, "_": stale})
    assert x.grad is None
    ns = _run(code, {"torch": torch, "y": y, "x": x, "_": r})
    expected = torch.func.jacrev(stencil)(x.detach())
    rows, cols = expected.nonzero(as_tuple=True)
    g, colour = ns["g"], ns["colour"]
    assert torch.equal(colour, SHUFFLED)
    torch.testing.assert_close(g[colour[rows], cols], expected[rows, cols])
    assert x.grad is None


def flat_laplacian(x):  # a 5-point Laplacian energy on a flat x: colours read off h
    g = x.reshape(60, 55)
    return ((g[1:] - g[:-1]) ** 2).sum() + ((g[:, 1:] - g[:, :-1]) ** 2).sum() \
        + (g ** 4).sum() / 4


def _hessian(seed: int, shift: float = 0.0):
    x = torch.randn(3300, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x = (x + shift).requires_grad_(True)
    y = flat_laplacian(x)
    return vjp_magic.hessian(y, x, seed=seed), y, x


def test_a_stale_hessian_underscore_raises_and_the_right_one_equals_hessian():
    h, y, x = _hessian(5)
    sparse = sparse_of(h, "x")
    assert sparse is not None, "expected the sparse path"
    form = layout_of(sparse, x.shape, x.shape).form
    code = product_code(h, "x", form)
    assert "_.inputs['x'].sparse.colours" in code  # no closed form: read off _
    assert code.splitlines()[1] == f'assert _.seed == {h.seed}, "_ is stale"'
    stale, _, _ = _hessian(6, shift=0.5)  # another result, the same shapes
    with pytest.raises(AssertionError, match="_ is stale"):
        _run(code, {"torch": torch, "x": x, "y": y, "_": stale})
    ns = _run(code, {"torch": torch, "x": x, "y": y, "_": h})
    expected = torch.func.hessian(flat_laplacian)(x.detach())
    torch.testing.assert_close(ns["H"].to_dense(), expected)
