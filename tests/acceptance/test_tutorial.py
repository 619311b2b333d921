"""Every worked example of the tutorial, run verbatim through %%vjp (the cells are in cells.py).

Expected numbers, printed output and gradient arguments are the ones the tutorial prints.
"""
from __future__ import annotations

import re

import pytest
import torch

import cells
from vjp_magic.render.latex import tex_problems  # the package's own list of unsafe TeX


def maths(text: str) -> list[str]:
    """The TeX of every formula in a markdown or LaTeX rendering (code left out)."""
    text = re.sub(r"```.*?```|\\begin\{verbatim\}.*?\\end\{verbatim\}|`[^`]*`", "", text,
                  flags=re.S)
    displays = [dollars or brackets for dollars, brackets
                in re.findall(r"\$\$(.+?)\$\$|\\\[(.+?)\\\]", text, flags=re.S)]
    text = re.sub(r"\$\$.+?\$\$|\\\[.+?\\\]", "", text, flags=re.S)
    return displays + re.findall(r"(?<!\\)\$(.+?)(?<!\\)\$", text, flags=re.S)


def check(result, cell, assert_tensor):
    """The tutorial's derivatives, gradient arguments and points for ``cell``."""
    assert_tensor(result.derivatives["x"], cell.derivatives)
    grads = result.gradients["x"]
    assert len(grads) == len(cell.gradients)
    for got, want in zip(grads, cell.gradients):
        assert_tensor(got, want)
    assert result.point_axes["x"] == cell.point_axes


@pytest.mark.parametrize("cell", cells.TUTORIAL, ids=cells.ids(cells.TUTORIAL))
def test_tutorial_cell(ip, run_vjp, assert_tensor, capsys, cell):
    r = run_vjp(cell.source)
    assert cell.stdout in capsys.readouterr().out  # the cell printed what the tutorial shows
    check(r, cell, assert_tensor)
    assert list(r.derivatives) == ["x"]  # w does not require grad: not an input
    if cell.value:  # the cell's own backward, untouched by the magic
        assert repr(ip.user_ns["x"].grad) == cell.value


@pytest.mark.parametrize("cell", cells.TUTORIAL, ids=cells.ids(cells.TUTORIAL))
def test_tutorial_cell_renders_safe_tex(run_vjp, cell):
    bundle = run_vjp(cell.source)._repr_mimebundle_()
    bundle = bundle[0] if isinstance(bundle, tuple) else bundle
    for mime in ("text/markdown", "text/latex"):
        formulas = maths(bundle[mime])
        assert formulas, mime  # the derivatives are shown as maths
        for tex in formulas:
            assert not tex_problems(tex), (mime, tex_problems(tex), tex)


def test_scalar_output_gradient_is_a_0_d_tensor(ip, run_vjp):
    r = run_vjp(cells.OVERVIEW_SINGLE_POINT.source)
    assert r.gradients["x"][0].shape == ()
    assert ip.user_ns["x"].grad.item() == 2.0  # the cell's own backward, untouched by the magic


def test_float64_points_stay_float64(run_vjp):
    r = run_vjp(cells.SCALAR_MULTIVARIATE_MULTIPLE_POINTS.source)
    assert r.derivatives["x"].dtype == torch.float64


@pytest.mark.parametrize("cell", [cells.VECTOR_UNIVARIATE_MULTIPLE_POINTS,
                                  cells.VECTOR_MULTIVARIATE_MULTIPLE_POINTS], ids=str)
def test_the_tutorials_itertools_vectors_are_ours(ip, run_vjp, assert_tensor, cell):
    r = run_vjp(cell.source)
    assert_tensor(r.gradients["x"][0], ip.user_ns["v1"])
    assert_tensor(r.gradients["x"][1], ip.user_ns["v2"])


@pytest.mark.parametrize("cell", cells.REVISITED[:5] + (cells.SCALAR_MULTIVARIATE_GRADIENT_ONE,
                                                        cells.MATRIX_INPUT_SCALAR_OUTPUT), ids=str)
def test_examples_revisited_gradient_is_ones_like_y(ip, run_vjp, assert_tensor, cell):
    r = run_vjp(cell.source)
    # the tutorial's v = torch.ones_like(y) is the gradient argument, same shape as y
    assert_tensor(r.gradients["x"][0], ip.user_ns["v"])
    assert r.derivatives["x"].shape == ip.user_ns["x"].shape


def test_matrix_valued_loop_gives_our_derivatives(ip, run_vjp, assert_tensor):
    r = run_vjp(cells.MATRIX_VALUED_UNIVARIATE.source)
    assert_tensor(r.derivatives["x"], ip.user_ns["derivatives"])


def test_matrix_input_grad_is_the_tutorials(ip, run_vjp, assert_tensor):
    run_vjp(cells.MATRIX_INPUT_SCALAR_OUTPUT.source)
    assert_tensor(ip.user_ns["x"].grad, cells.MATRIX_INPUT_SCALAR_OUTPUT.derivatives)
