"""The display of a Jacobian computed by columns (forward-mode passes, core/column_passes.py):
u in words, the code to write (run here, its values against torch.func.jacrev), the coloured
tangents in r.tangents (r.gradients still the output's 0/1 vectors), the picture's compressed
J·U."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vjp_magic.core.column_passes import column_attempt, column_colours
from vjp_magic.core.indexmaps import proved_pattern
from vjp_magic.core.result import InputResult, VJPResult
from vjp_magic.render import latex, markdown
from vjp_magic.render import sparse as display
from vjp_magic.render.document import CodeBlock
from vjp_magic.render.view import View

BUDGET = 2 ** 30


def stencil_and_x0(x):  # every output reads x[0], and its neighbours
    p = F.pad(x, (1, 1))
    return p[2:] - 2 * x + p[:-2] + x[0] * torch.cos(x)


def tridiagonal(x):
    p = F.pad(x, (1, 1))
    return p[2:] + p[:-2] - 2 * x + x ** 3


def grid_with_corner(x):
    p = F.pad(x, (1, 1, 1, 1))
    return p[1:-1, 2:] + p[1:-1, :-2] + p[2:, 1:-1] + p[:-2, 1:-1] - 4 * x + x[0, 0] * x


def by_columns(f, x):
    """A result around f(x)'s Jacobian computed by columns (whatever the analysis chose)."""
    x = x.detach().requires_grad_(True)
    y = f(x)
    pattern = proved_pattern(y, x, BUDGET)
    colours = column_colours(pattern, None, y.shape, x.shape)
    sparse = column_attempt(y, x, pattern, colours, BUDGET, 0)
    assert sparse is not None and sparse.mode == "columns"
    derivatives = sparse.matrix.to_dense().reshape(tuple(y.shape) + tuple(x.shape))
    item = InputResult(name="x", tensor=x, pairing=(), derivatives=derivatives.to_sparse())
    item.sparse = sparse
    return VJPResult(output=y, output_name="y", inputs={"x": item}, view=View()), y, x


def said(r) -> str:
    return " ".join(repr(r).split())


def code_of(r) -> str:
    blocks = [b for s in r.view.document(r).sections for b in s.blocks
              if isinstance(b, CodeBlock)]
    assert len(blocks) == 1
    return blocks[0].source


def test_u_in_words_with_its_closed_form():
    r, _, _ = by_columns(tridiagonal, torch.linspace(-1, 1, 40))
    text = said(r)
    assert "Entries of x of one colour are never read by one entry of y, so one forward-mode " \
           "pass per colour: u is 1 on entries 0, 3, 6, … of x and 0 elsewhere: 3 " \
           "forward-mode passes (J·u) give all 118 nonzero derivatives." in text
    assert "backward pass" not in text
    assert "torch.arange(x.numel()) % 3" in code_of(r)


def test_a_dense_column_points_to_the_tangents():
    r, _, _ = by_columns(stencil_and_x0, torch.randn(50))
    text = said(r)
    assert "u is 1 on entry 0 of x (the first colour; every colour is in r.tangents['x'])" \
        in text
    assert "4 forward-mode passes (J·u) give all" in text


@pytest.mark.parametrize("f, x", [(stencil_and_x0, torch.randn(37, dtype=torch.float64)),
                                  (tridiagonal, torch.randn(20, dtype=torch.float64)),
                                  (grid_with_corner, torch.randn(5, 7, dtype=torch.float64))])
def test_the_code_gives_every_nonzero(f, x):
    r, y, x = by_columns(f, x)
    namespace = {"torch": torch, "y": y, "x": x, "_": r}  # _: the result, as IPython binds it
    exec(code_of(r), namespace)  # noqa: S102 - the code the display tells a student to run
    assert x.grad is None
    ju, colour = namespace["Ju"], namespace["colour"]
    expected = torch.func.jacrev(f)(x.detach()).reshape(y.numel(), x.numel())
    rows, cols = expected.nonzero(as_tuple=True)
    assert len(rows) > 0
    torch.testing.assert_close(ju[colour[cols], rows], expected[rows, cols])
    assert f"range({x.numel()})" not in display.sparse_code(r)  # coloured, never one-hot


def test_tangents_are_coloured_and_shaped_like_x():
    r, y, x = by_columns(grid_with_corner, torch.randn(6, 5, dtype=torch.float64))
    us = r.tangents["x"]
    sparse = r.inputs["x"].sparse
    assert len(us) == sparse.count and all(u.shape == x.shape for u in us)
    assert torch.equal(torch.stack(list(us)).sum(0), torch.ones_like(x))  # each entry once
    expected = torch.func.jacrev(grid_with_corner)(x.detach()).reshape(y.numel(), -1) != 0
    for u in us:  # no row reads two entries of one colour
        assert int((expected.double() @ u.reshape(-1)).max()) <= 1


@pytest.mark.parametrize("f, x", [(stencil_and_x0, torch.randn(37, dtype=torch.float64)),
                                  (grid_with_corner, torch.randn(6, 5, dtype=torch.float64))])
def test_gradients_stay_the_outputs_vectors_and_their_backward_passes_give_j(f, x):
    """By columns too, r.gradients holds 0/1 vectors shaped like the output, covering each
    entry once, of colours whose rows read disjoint entries of x: one backward each gives J."""
    r, y, x = by_columns(f, x)
    vs = list(r.gradients["x"])
    assert all(v.shape == y.shape for v in vs)
    stacked = torch.stack([v.reshape(-1) for v in vs])
    assert ((stacked == 0) | (stacked == 1)).all()
    assert torch.equal(stacked.sum(0), torch.ones(y.numel(), dtype=stacked.dtype))
    expected = torch.func.jacrev(f)(x.detach()).reshape(y.numel(), x.numel())
    colour = stacked.argmax(0)
    for c, v in enumerate(vs):
        (g,) = torch.autograd.grad(y, x, v, retain_graph=True)
        rows = (colour == c).nonzero().squeeze(1)
        on = expected[rows] != 0
        assert int(on.sum(0).max()) <= 1  # rows of one colour read disjoint entries
        torch.testing.assert_close(g.reshape(-1).expand(len(rows), -1)[on], expected[rows][on])


def test_the_picture_compresses_into_one_column_a_colour():
    from vjp_magic.render.sparse_picture import coloured_cells, sparse_picture

    r, y, x = by_columns(stencil_and_x0, torch.randn(60))
    sparse = r.inputs["x"].sparse
    pattern, compressed = coloured_cells(sparse)
    expected = torch.func.jacrev(stencil_and_x0)(x.detach())[:40, :pattern.shape[1]] != 0
    colours = sparse.colours[:pattern.shape[1]]
    assert torch.equal(pattern, torch.where(expected, colours[None, :] + 1, 0))
    assert compressed.shape == (40, sparse.count)
    for c in range(sparse.count):  # column c: the rows that read an entry of colour c
        assert torch.equal(compressed[:, c] != 0, (pattern == c + 1).any(1))
    pytest.importorskip("matplotlib")
    picture = sparse_picture(r, "x")
    assert picture.png.startswith(b"\x89PNG")
    assert f"compressed 60 × {sparse.count} matrix: column c is J·u" in picture.alt


def test_maths_is_safe():
    r, _, _ = by_columns(grid_with_corner, torch.randn(5, 7))
    for tex in markdown.maths(r._repr_mimebundle_()["text/markdown"]):
        assert latex.tex_problems(tex) == [], tex


def test_where_no_row_colouring_is_made_the_gradients_are_one_hot_rows():
    """x[0] read by all 7,200 rows: the row colouring is refused (over 5·10⁷ row pairs), the
    values come by columns, and r.gradients is one 0/1 vector per output entry (no two rows
    may share a colour), r.tangents the few u of the passes."""
    import vjp_magic

    x = torch.linspace(-1, 1, 7200, dtype=torch.float64, requires_grad=True)
    y = torch.sin(x) + x[0] * x
    r = vjp_magic.differentiate(y, x)
    sparse = r.inputs["x"].sparse
    assert sparse is not None and sparse.mode == "columns"
    vs = r.gradients["x"]
    assert len(vs) == y.numel() and len(r.tangents["x"]) == sparse.count < 10
    for k in (0, 1, 7199):
        expected = torch.zeros_like(y)
        expected[k] = 1
        assert torch.equal(vs[k], expected)
