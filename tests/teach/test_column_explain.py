"""``--explain`` for a Jacobian computed by columns (forward-mode passes): why entries of x of
one colour cannot collide. The entries it names (which outputs read two entries of x of one
colour) are checked against torch.autograd.functional.jacobian."""
from __future__ import annotations

import torch
from torch.autograd.functional import jacobian

from render.test_column_display import by_columns, grid_with_corner, stencil_and_x0
from vjp_magic.render import latex, markdown, plain
from vjp_magic.render.document import Document
from vjp_magic.render.options import RenderOptions
from vjp_magic.teach.sparse_explain import explained_sections


def said(r) -> str:
    return " ".join(plain.render(Document(explained_sections(r, RenderOptions()))).split())


def read_by(f, x, column: int) -> list[int]:
    """The flat outputs that read entry ``column`` of x, from jacobian()."""
    jac = jacobian(f, x.detach()).reshape(-1, x.numel())
    return jac[:, column].nonzero().squeeze(1).tolist()


def test_why_columns_of_one_colour_cannot_collide():
    r, y, x = by_columns(stencil_and_x0, torch.randn(30, dtype=torch.float64))
    text = said(r)
    colours = r.inputs["x"].sparse.colours
    assert int((colours == colours[0]).sum()) == 1  # x[0], read by every entry, alone
    p, q = (colours == colours[1]).nonzero().squeeze(1)[:2].tolist()
    first, second = read_by(stencil_and_x0, x, p), read_by(stencil_and_x0, x, q)
    assert first and second and not set(first) & set(second)
    listed = lambda rows: ", ".join(f"y[{i}]" for i in rows)  # noqa: E731
    assert (f"x[{p}] is read by {listed(first)}; x[{q}], of the same colour, by "
            f"{listed(second)}: columns {p} and {q} of J are nonzero in disjoint rows") in text
    assert "An entry of y reads up to 4 entries of x, which must all differ in colour: no " \
           "colouring needs fewer than 4 passes; this one is the fewest." in text
    assert "Colouring the entries of y instead would take at least 30 backward passes" in text
    assert f"u = e{p} + e{q} + …" in text and "nothing collides" in text
    assert "the vector-Jacobian product of g with u is J·u" in text
    assert f"4 in all, gives every one of the {r.inputs['x'].sparse.nnz} nonzeros" in text


def test_maths_is_safe_in_every_client():
    r, _, _ = by_columns(grid_with_corner, torch.randn(5, 6))
    text = markdown.render(Document(explained_sections(r, RenderOptions())))
    for tex in markdown.maths(text):
        assert latex.tex_problems(tex) == [], tex
