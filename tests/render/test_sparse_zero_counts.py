"""A proved pattern holds every entry the graph allows; at an x where some of them are exactly 0
(3x² at x = 0) the words count them as the pattern's entries, never as nonzero derivatives.
The counts come from ``torch.func.jacrev`` and ``torch.func.hessian``."""
from __future__ import annotations

import torch
import torch.nn.functional as F

import vjp_magic
from vjp_magic.render import plain
from vjp_magic.render.document import Document
from vjp_magic.render.options import RenderOptions
from vjp_magic.teach.sparse_explain import explained_sections


def stencil(x):
    return F.pad(x, (1, 0))[:-1] + x ** 3 + F.pad(x, (0, 1))[1:]


def _x(zeros: bool):
    x = torch.randn(3000, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    if zeros:
        x[1::3] = 0
    return x


def _counts(f, x) -> tuple[int, int]:
    """(entries a tridiagonal pattern allows, nonzero derivatives at x), from jacrev."""
    n = x.numel()
    return 3 * n - 2, int(torch.func.jacrev(f)(x).count_nonzero())


def _words(r) -> str:
    markdown = r._repr_mimebundle_()["text/markdown"]
    explained = plain.render(Document(explained_sections(r, RenderOptions())))
    return " ".join((markdown + " " + explained).split())


def test_zero_derivatives_of_a_proved_pattern_are_not_called_nonzero():
    x = _x(zeros=True)
    allowed, nonzero = _counts(stencil, x)
    assert nonzero < allowed  # the premise: 1,000 diagonal entries are 0 here
    x.requires_grad_()
    r = vjp_magic.differentiate(stencil(x), x, seed=0)
    assert r.inputs["x"].sparse is not None and r.inputs["x"].sparse.nnz == allowed
    text = _words(r)
    assert f"{allowed:,} nonzero" not in text and f"all {allowed:,} nonzeros" not in text
    assert f"({nonzero:,} nonzero here)" in text
    assert f"give all {allowed:,} derivatives its pattern allows" in text
    assert f"every one of the {allowed:,} entries its pattern allows" in text


def test_where_every_entry_is_nonzero_the_words_stay():
    x = _x(zeros=False)
    allowed, nonzero = _counts(stencil, x)
    assert nonzero == allowed
    x.requires_grad_()
    text = _words(vjp_magic.differentiate(stencil(x), x, seed=0))
    assert f"give all {allowed:,} nonzero derivatives" in text and "nonzero here" not in text


def test_a_hessian_with_zero_entries_at_x_counts_them_truly():
    def f(x):
        return (x ** 4).sum() + (x[1:] * x[:-1]).sum()

    x = _x(zeros=True)
    expected = torch.func.hessian(f)(x)
    nonzero, allowed = int(expected.count_nonzero()), 3 * x.numel() - 2
    assert nonzero < allowed
    x.requires_grad_()
    text = " ".join(repr(vjp_magic.hessian(f(x), x)).split())
    assert f"tridiagonal: {allowed:,} entries its pattern allows ({nonzero:,} nonzero here)" \
        in text
    assert f"{allowed:,} nonzeros" not in text
