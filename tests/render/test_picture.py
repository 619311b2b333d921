"""Pictures of a Jacobian's nonzero pattern (render/picture.py).

The expected patterns come from ``torch.autograd.functional.jacobian`` (entries ≠ 0), flattened
to m × n, and pooled where the picture has fewer cells than the Jacobian has entries (entry
row r lies in cell row r·R // m, the binning the module documents).
"""
from __future__ import annotations

import io
import sys

import pytest
import torch
from torch.autograd.functional import jacobian

from vjp_magic import differentiate
from vjp_magic.render.options import RenderOptions
from vjp_magic.render.picture import (Picture, pattern, pattern_picture,
                                      pictures, wants_picture)

Image = pytest.importorskip("PIL.Image")
pytest.importorskip("matplotlib")

torch.manual_seed(0)


def true_pattern(f, inputs, which: int) -> torch.Tensor:
    """The m × n nonzero pattern of ∂f/∂inputs[which], from the full Jacobian."""
    out = f(*inputs)
    full = jacobian(f, tuple(inputs))[which]
    return (full != 0).reshape(out.numel(), inputs[which].numel())


def pooled(exact: torch.Tensor, nrows: int, ncols: int) -> torch.Tensor:
    """Any-pooling of a boolean m × n pattern into nrows × ncols cells."""
    m, n = exact.shape
    cells = torch.zeros(nrows, ncols, dtype=torch.bool)
    rows, cols = exact.nonzero(as_tuple=True)
    cells[rows * nrows // m, cols * ncols // n] = True
    return cells


def conv(x):
    kernel = torch.tensor([[[0.5, -1.0, 2.0, 1.5, -0.25]]], dtype=x.dtype)
    return torch.nn.functional.conv1d(x[None, None], kernel, padding=2)[0, 0]


def attention(q):
    return torch.softmax(q @ q.T / 2, dim=-1) @ q


W = torch.randn(4, 3, dtype=torch.float64)
CASES = {  # name: (function, input shapes, which input, structure word)
    "elementwise": (torch.sin, [(7,)], 0, "diagonal"),
    "rows x@W": (lambda x: x @ W, [(6, 4)], 0, "block-diagonal"),
    "columns W.T@x": (lambda x: W.T @ x, [(4, 5)], 0, "diagonal blocks"),
    "weight of x@w": (lambda x, w: x @ w, [(6, 4), (4, 3)], 1, "diagonal blocks"),
    "transposed": (lambda x: torch.exp(x.T), [(3, 4)], 0, "permuted diagonal"),
    "batched bmm": (torch.bmm, [(3, 2, 4), (3, 4, 2)], 0, "block-diagonal"),
    "conv1d band": (conv, [(30,)], 0, "banded"),
    "softmax": (lambda x: torch.softmax(x, 0), [(6,)], 0, "dense"),
    "attention": (attention, [(5, 3)], 0, "dense"),
}


def make(case):
    f, shapes, which, word = CASES[case]
    inputs = [torch.randn(s, dtype=torch.float64, requires_grad=True) for s in shapes]
    names = [f"t{k}" for k in range(len(inputs))]
    result = differentiate(f(*inputs), dict(zip(names, inputs)))
    return f, inputs, which, names[which], word, result


@pytest.mark.parametrize("case", list(CASES))
def test_the_pattern_is_the_jacobians(case):
    f, inputs, which, name, word, result = make(case)
    expected = true_pattern(f, inputs, which)
    cells = pattern(result, name).cells
    assert cells.dtype == torch.bool
    assert torch.equal(cells, expected)
    assert pattern(result, name).word == word


@pytest.mark.parametrize("case", ["conv1d band", "attention", "rows x@W", "columns W.T@x"])
def test_a_pooled_pattern_is_the_jacobians_pooled(case):
    f, inputs, which, name, _, result = make(case)
    exact = true_pattern(f, inputs, which)
    cells = pattern(result, name, max_cells=7).cells
    assert cells.shape == (min(exact.shape[0], 7), min(exact.shape[1], 7))
    # few cells: whole point blocks or pooled, but always what the Jacobian's nonzeros fill
    p = pattern(result, name, max_cells=7)
    if p.points == p.total_points:
        assert torch.equal(cells, pooled(exact, *cells.shape))


def test_many_points_picture_the_first_ones():
    x = torch.randn(500, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, dtype=torch.float64)
    result = differentiate(torch.tanh(x @ w), x)
    p = pattern(result, max_cells=64)
    assert 1 < p.points < p.total_points == 500
    exact = true_pattern(lambda t: torch.tanh(t @ w), [x[:p.points].detach()], 0)
    assert (p.rows, p.cols) == (3 * p.points, 4 * p.points)
    assert torch.equal(p.cells, pooled(exact, *p.cells.shape))


def test_the_first_points_along_a_trailing_point_axis():
    x = torch.randn(3, 400, dtype=torch.float64, requires_grad=True)
    a = torch.randn(2, 3, dtype=torch.float64)
    result = differentiate(a @ x, x)
    p = pattern(result, max_cells=64)
    k = p.points
    assert 1 < k < 400 and p.out_shape == (2, k) and p.in_shape == (3, k)
    exact = true_pattern(lambda t: a @ t, [x[:, :k].detach()], 0)
    assert torch.equal(p.cells, pooled(exact, *p.cells.shape))
    assert p.word == "diagonal blocks"


@pytest.mark.parametrize("rows", [30, 5])  # the inner point axis cut, or kept whole
def test_the_first_points_of_two_point_axes(rows):
    a = torch.randn(40, rows, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(40, 2, 3, dtype=torch.float64)
    result = differentiate(torch.bmm(a, b), a)  # points: (batch, row)
    p = pattern(result, max_cells=64)
    assert p.total_points == 40 * rows and 1 < p.points < 40 * rows
    assert (p.in_shape[0] == 1) == (rows == 30)
    kept_batches, kept_rows = p.in_shape[:2]
    assert p.points == kept_batches * kept_rows
    part = a[:kept_batches, :kept_rows].detach()
    exact = true_pattern(lambda t: torch.bmm(t, b[:kept_batches]), [part], 0)
    assert torch.equal(p.cells, pooled(exact, *p.cells.shape))


def test_a_million_points_without_the_jacobian():
    x = torch.randn(10**6, requires_grad=True)
    result = differentiate(torch.sin(x), x, memory_budget=2**24)
    with pytest.raises(Exception, match="Jacobian"):
        result.jacobian("x")  # 4 TB: refused, and the picture never asks for it
    picture = pattern_picture(result)
    p = pattern(result)
    assert p.total_points == 10**6 and p.points < 10**6
    assert torch.equal(p.cells, torch.eye(p.points, dtype=torch.bool))
    assert f"first {p.points:,} of 1,000,000 points" in picture.alt


def test_the_png_is_a_displayable_image():
    x = torch.randn(20, 4, requires_grad=True)
    result = differentiate(x @ torch.randn(4, 3), x)
    picture = pattern_picture(result)
    image = Image.open(io.BytesIO(picture.png))
    assert image.format == "PNG" and image.size == (picture.width, picture.height)
    assert picture.width <= 560 and picture.height <= 480
    data, metadata = picture._repr_mimebundle_()
    assert data["image/png"] == picture.png and data["text/plain"] == picture.alt
    assert metadata["image/png"] == {"width": picture.width, "height": picture.height,
                                     "alt": picture.alt}
    assert picture._repr_png_() == picture.png and picture.png.startswith(b"\x89PNG")
    assert repr(picture) == picture.alt
    assert "block-diagonal, 20 points" in picture.alt and "∂y/∂x" in picture.alt


def test_drawing_leaves_no_pyplot_figures():
    import matplotlib._pylab_helpers as helpers

    before = helpers.Gcf.get_num_fig_managers()
    x = torch.randn(5, requires_grad=True)
    pattern_picture(differentiate(torch.sin(x), x))
    assert helpers.Gcf.get_num_fig_managers() == before


def test_without_matplotlib_a_note(monkeypatch):
    for module in [m for m in sys.modules if m.split(".")[0] == "matplotlib"] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, module, None)  # import matplotlib… raises ImportError
    x = torch.randn(5, requires_grad=True)
    picture = pattern_picture(differentiate(torch.sin(x), x))
    assert isinstance(picture, Picture) and picture.png is None
    assert "matplotlib" in picture.alt and "[plot]" in picture.alt
    assert picture._repr_mimebundle_() == {"text/plain": picture.alt}
    assert picture._repr_png_() is None


def test_one_picture_per_input():
    x = torch.randn(6, 4, requires_grad=True)
    w = torch.randn(4, 3, requires_grad=True)
    result = differentiate(x @ w, {"x": x, "w": w})
    assert [p.alt.split("∂y/∂")[1][0] for p in pictures(result)] == ["x", "w"]
    assert len(pictures(result, "w")) == 1


def test_a_picture_is_wanted_past_the_threshold():
    options = RenderOptions(threshold=10)
    small = torch.randn(4, requires_grad=True)
    assert not wants_picture(differentiate(torch.sin(small), small), "x", options)
    big = torch.randn(11, requires_grad=True)
    assert wants_picture(differentiate(torch.sin(big), big), "x", options)
    wide = torch.randn(30, requires_grad=True)
    assert wants_picture(differentiate(wide.sum(), wide), None, options)
    unused = torch.randn(30, requires_grad=True)
    result = differentiate(torch.sin(big), {"x": big, "u": unused})
    assert not wants_picture(result, "u", options)


def test_ipython_displays_it_as_an_image(ip):
    x = torch.randn(6, requires_grad=True)
    picture = pattern_picture(differentiate(torch.sin(x), x))
    data, metadata = ip.display_formatter.format(picture)
    assert data["image/png"] == picture.png and data["text/plain"] == picture.alt
    assert metadata["image/png"]["width"] == picture.width


# -- beneath a magic's display -------------------------------------------------------------------
def test_picture_flag_shows_the_picture_beneath_the_result(ip, capsys):
    """``--picture``: the picture is displayed after the cell, below the result's own display."""
    ip.run_cell("%%vjp --picture\nx = torch.linspace(-1, 1, 6, requires_grad=True)\ny = x**3")
    shown = capsys.readouterr().out
    assert "Nonzero pattern of" in shown
    assert shown.index("From x") < shown.index("Nonzero pattern of")
    ip.run_cell("%%vjp\nx = torch.linspace(-1, 1, 6, requires_grad=True)\ny = x**3")
    assert "Nonzero pattern of" not in capsys.readouterr().out  # only when asked


def test_jacobian_too_large_to_show_gets_a_picture(ip, capsys):
    ip.run_cell("x = torch.linspace(-1, 1, 30, requires_grad=True)")
    ip.run_cell("%jacobian torch.softmax(x, 0) wrt x")
    assert "Nonzero pattern of" in capsys.readouterr().out
    ip.run_cell("%jacobian torch.softmax(x[:4], 0) wrt x")  # 4 × 30: columns summarised
    assert "Nonzero pattern of" in capsys.readouterr().out
    ip.run_cell("z = torch.tensor([1., 2.], requires_grad=True)\n%jacobian z**2 wrt z")
    assert "Nonzero pattern of" not in capsys.readouterr().out  # shown in full already


def test_no_picture_when_the_display_is_hidden(ip, capsys):
    ip.run_cell("%%vjp --picture\nx = torch.linspace(-1, 1, 6, requires_grad=True)\ny = x**3;")
    assert "Nonzero pattern of" not in capsys.readouterr().out
