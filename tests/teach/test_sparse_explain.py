"""``--explain`` for a Jacobian computed by compressed passes (issue 20, item 6): why entries
of one colour cannot collide, in the cell's names. What it names (which entries of x two rows
read) is checked against ``torch.autograd.functional.jacobian``."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.autograd.functional import jacobian

import vjp_magic
from vjp_magic.core.colouring import colour_rows
from vjp_magic.core.compressed import SparseJacobian
from vjp_magic.core.pairing import Evidence
from vjp_magic.render import latex, markdown, plain
from vjp_magic.render.document import Document
from vjp_magic.render.options import RenderOptions
from vjp_magic.teach.explain import explain_sections
from vjp_magic.teach.sparse_explain import explained_sections


def stencil(x):
    p = F.pad(x, (1, 1))
    return p[:-2] - 2 * p[1:-1] ** 3 + p[2:]


def laplacian(x):
    p = F.pad(x, (1, 1, 1, 1))
    return p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] - 4 * x


def with_sparse(f, x):
    """A real result of f at x, given the compressed passes' result (whatever path the
    analysis took at this size)."""
    x = x.detach().requires_grad_(True)
    y = f(x)
    r = vjp_magic.differentiate(y, x)
    matrix = vjp_magic.sparse_jacobian(y, x)
    colours = torch.from_numpy(colour_rows(matrix.crow_indices().numpy(),
                                           matrix.col_indices().numpy(), matrix.shape[1]))
    r.inputs["x"].sparse = SparseJacobian(matrix, colours, int(colours.max()) + 1,
                                          Evidence.OBSERVED, 0)
    return r, x


def said(r) -> str:
    return " ".join(plain.render(Document(explained_sections(r, RenderOptions()))).split())


def reads(f, x, row: int) -> list[int]:
    """The flat entries of x that output entry ``row`` reads, from jacobian()."""
    jac = jacobian(f, x.detach()).reshape(-1, x.numel())
    return jac[row].nonzero().squeeze(1).tolist()


def test_tridiagonal_why_one_colour_cannot_collide():
    r, x = with_sparse(stencil, torch.linspace(-1, 1, 12))
    text = said(r)
    first, second = reads(stencil, x, 0), reads(stencil, x, 3)
    assert not set(first) & set(second)
    listed = lambda cols: ", ".join(f"x[{c}]" for c in cols)  # noqa: E731
    assert (f"y[0] reads {listed(first)}; y[3], of the same colour, reads {listed(second)}: "
            "rows 0 and 3 of J read disjoint entries of x") in text
    # x[1] is read by y[0], y[1], y[2]: three colours at least, and 3 are used
    assert "An entry of x is read by up to 3 entries of y, which must all differ in colour: " \
           "no colouring needs fewer than 3 passes; this one is the fewest." in text
    assert "v = e0 + e3 + …" in text and "nothing collides" in text
    assert "3 in all, gives every one of the 34 nonzeros of J" in text


def test_laplacian_names_grid_entries():
    r, x = with_sparse(laplacian, torch.randn(5, 6))
    text = said(r)
    colours = r.inputs["x"].sparse.colours
    p, q = (colours == 0).nonzero().squeeze(1)[:2].tolist()
    first, second = reads(laplacian, x, p), reads(laplacian, x, q)
    assert not set(first) & set(second)
    entry = lambda flat: "x[{},{}]".format(*divmod(flat, 6))  # noqa: E731
    assert f"reads {', '.join(entry(c) for c in first)};" in text
    assert "5-point stencil" in text
    assert "no colouring needs fewer than 5 passes" in text


def test_maths_is_safe_in_every_client():
    r, _ = with_sparse(stencil, torch.linspace(-1, 1, 12))
    text = markdown.render(Document(explained_sections(r, RenderOptions())))
    for tex in markdown.maths(text):
        assert latex.tex_problems(tex) == [], tex


def test_inputs_without_compressed_passes_are_explained_as_before():
    x = torch.linspace(-2, 2, 5, requires_grad=True)
    r = vjp_magic.differentiate(x ** 2, x)
    options = RenderOptions()
    assert explained_sections(r, options) == explain_sections(r, options)


def test_the_magic_explains_a_large_stencil(run_vjp):
    r = run_vjp("x = torch.linspace(-1, 1, 3000, requires_grad=True)\n"
                "p = torch.nn.functional.pad(x, (1, 1))\n"
                "y = p[:-2] - 2 * p[1:-1] ** 3 + p[2:]", line="--explain")
    if r.inputs["x"].sparse is None:
        pytest.skip("the analysis took the exact path at this size")
    text = " ".join(repr(r).split())
    assert "rows 0 and 3 of J read disjoint entries of x" in text
    assert "nothing collides" in text
    assert "backward passes give all" not in text  # v is said by the explanation, once
