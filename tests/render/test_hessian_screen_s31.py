"""A sparse Hessian's display fits one screen (session 31, K2; helper H3 measured a periodic
chain at n = 3002 at 872 px, a flat 5-point Laplacian energy at 810 px, against 647 px), for
every colouring core picks — star (wrap-around chains, a torus), greedy distance-2 (a flat
grid), closed forms (banded) — as the sparse Jacobian's does: the values summarised, then the
code's comment lines dropped, then the values left to ``h.hessian(...)``, which the display
names. The code shown still runs, and gives what torch.func.hessian gives."""
from __future__ import annotations

import pytest
import torch

import vjp_magic
from render.test_hessian_sparse_code_s31 import (banded, flat_laplacian, periodic,
                                                 rosenbrock, torus)
from vjp_magic.render.budget import height
from vjp_magic.render.document import CodeBlock, Formula
from vjp_magic.render.options import DISPLAY_HEIGHT

CASES = [(periodic, (3002,)), (periodic, (3001,)), (flat_laplacian, (3300,)),
         (torus, (64, 64)), (banded, (3000,)), (rosenbrock, (3000,))]


def _shown(f, shape):
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x.requires_grad_(True)
    y = f(x)
    h = vjp_magic.hessian(y, x, seed=0)
    assert h.inputs["x"].sparse is not None, "expected the sparse path"
    sections = h.view.document(h).sections
    return x, y, h, sections


@pytest.mark.parametrize("f, shape", CASES, ids=lambda c: getattr(c, "__name__", str(c)))
def test_the_display_fits_and_its_code_gives_the_hessian(f, shape):
    x, y, h, sections = _shown(f, shape)
    assert height(sections) <= DISPLAY_HEIGHT
    plain = " ".join(h._repr_mimebundle_()["text/plain"].split())
    assert "h.hessian('x', layout=torch.sparse_csr)" in plain  # where every value is
    codes = [b.source for s in sections for b in s.blocks if isinstance(b, CodeBlock)]
    assert len(codes) == 1
    namespace = {"torch": torch, "x": x, "y": y, "_": h}
    exec(compile(codes[0], "<shown code>", "exec"), namespace)  # noqa: S102 - written to run
    expected = torch.func.hessian(f)(x.detach()).reshape(x.numel(), x.numel())
    if "H" in namespace:
        torch.testing.assert_close(namespace["H"].to_dense(), expected)
    else:  # a closed-form distance-2 colouring: H[p, q] = Hu[colour[q], p]
        rows, cols = expected.nonzero().unbind(1)
        torch.testing.assert_close(namespace["Hu"][namespace["colour"][cols], rows],
                                   expected[rows, cols])
    if "_." in codes[0]:  # read off the result: checked first
        assert f'assert _.seed == {h.seed}, "_ is stale"' in codes[0]


def test_the_values_and_comments_stay_where_they_fit():
    *_, sections = _shown(banded, (3000,))
    assert any(isinstance(b, Formula) for s in sections for b in s.blocks)
    code = [b.source for s in sections for b in s.blocks if isinstance(b, CodeBlock)][0]
    assert "# row c: H u; H[p, q] = Hu[colour[q], p] at each nonzero" in code
