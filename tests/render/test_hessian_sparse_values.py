"""Above the dense size a Hessian's display shows some of its values, says where all of them
are, and shows the coloured Hessian-vector products as code that runs as pasted and gives
the Hessian of torch.func.hessian (expected values from mathematics or torch, never from
the code under test)."""
from __future__ import annotations

import re

import pytest
import torch

import vjp_magic


def _plain(h) -> str:
    return " ".join(h._repr_mimebundle_()["text/plain"].split())


def _code(h) -> str:
    blocks = re.findall(r"```python\n(.*?)```", h._repr_mimebundle_()["text/markdown"],
                        flags=re.S)
    assert len(blocks) == 1, blocks
    return blocks[0]


def _rosenbrock(x):
    return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()


def _grid(x):
    return ((x[1:] - x[:-1]) ** 2).sum() + ((x[:, 1:] - x[:, :-1]) ** 2).sum() \
        + (x ** 4).sum()


def _cyclic(x):
    return ((x - x.roll(1)) ** 4).sum()


def test_a_diagonal_hessian_shows_its_first_value():
    x = torch.linspace(-1, 1, 20_000, requires_grad=True)
    text = _plain(vjp_magic.hessian((x ** 3).sum(), x))
    assert "-6" in text and "h.hessian('x', layout=torch.sparse_csr)" in text
    assert "h.derivatives['x']" in text


def test_the_tridiagonal_values_shown_are_the_analytic_ones():
    x = torch.linspace(-1, 1, 20_000, dtype=torch.float64, requires_grad=True)
    text = _plain(vjp_magic.hessian(_rosenbrock(x), x))
    # row 0 at x[0] = -1, x[1] = -1 + 2/19999: H[0,0] = 1200 x0² - 400 x1 + 2, H[0,1] = -400 x0
    x0, x1 = -1.0, -1.0 + 2 / 19_999
    assert f"{1200 * x0 ** 2 - 400 * x1 + 2:.4g}" in text and "400" in text


@pytest.mark.parametrize("f, shape", [(_rosenbrock, (6000,)), (_grid, (48, 48)),
                                      (_cyclic, (5000,))])
def test_the_shown_code_runs_as_pasted_and_gives_the_hessian(f, shape):
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    h = vjp_magic.hessian(f(x), x)
    code = _code(h)
    # pasted in the next cell: `_` is the displayed result (colours no formula gives are read
    # off it, behind the check `_.seed == …`)
    namespace = {"torch": torch, "x": x, "y": f(x), "_": h}
    exec(code, namespace)  # noqa: S102 - the display's own code, as a student runs it
    hu, colour = namespace["Hu"], namespace["colour"]
    n = x.numel()
    expected = torch.func.hessian(f)(x.detach()).reshape(n, n)
    rows, cols = expected.nonzero().unbind(1)
    torch.testing.assert_close(hu[colour[cols], rows], expected[rows, cols])
    assert int((colour[cols[rows == 3]]).unique().numel()) == len(cols[rows == 3])  # a colouring
    assert x.grad is None


def test_the_code_uses_fresh_names_where_the_cell_has_them():
    g = torch.linspace(-1, 1, 6000, dtype=torch.float64, requires_grad=True)
    h = vjp_magic.hessian(_rosenbrock(g), g, names=["g"])
    code = _code(h)
    assert "(g2,) = torch.autograd.grad(y, g, create_graph=True)" in code
    namespace = {"torch": torch, "g": g, "y": _rosenbrock(g)}
    exec(code, namespace)  # noqa: S102
    n = g.numel()
    expected = torch.func.hessian(_rosenbrock)(g.detach()).reshape(n, n)
    rows, cols = expected.nonzero().unbind(1)
    torch.testing.assert_close(namespace["Hu"][namespace["colour"][cols], rows],
                               expected[rows, cols])


@pytest.mark.parametrize("f, shape", [(_rosenbrock, (20_000,)), (_grid, (64, 64)),
                                      (_cyclic, (5000,))])
def test_the_sparse_hessian_display_fits_one_screen(f, shape):
    from vjp_magic.render.budget import height
    from vjp_magic.render.options import DISPLAY_HEIGHT

    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    h = vjp_magic.hessian(f(x), x)
    assert height(h.view.document(h).sections) <= DISPLAY_HEIGHT
    assert "h.hessian('x', layout=torch.sparse_csr)" in _plain(h)


def test_colours_without_a_closed_form_are_read_off_the_result():
    torch.manual_seed(0)
    perm = torch.randperm(3000)

    def f(x):
        return ((x[perm] * x) ** 2).sum()

    x = torch.randn(3000, dtype=torch.float64, requires_grad=True)
    h = vjp_magic.hessian(f(x), x)
    code = _code(h)
    assert "_.inputs['x'].sparse.colours" in code
    namespace = {"torch": torch, "x": x, "y": f(x), "_": h}  # _: the cell's result
    exec(code, namespace)  # noqa: S102
    expected = torch.func.hessian(f)(x.detach())
    rows, cols = expected.nonzero().unbind(1)
    torch.testing.assert_close(namespace["Hu"][namespace["colour"][cols], rows],
                               expected[rows, cols])
