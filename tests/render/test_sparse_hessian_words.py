"""A sparse Hessian's pattern is worded by render/sparse, as a Jacobian's is (one owner of the
words): the patterns below are known from mathematics, never from the code under test."""
import time

import pytest
import torch

import vjp_magic
from vjp_magic.core.sparse_hessian import SparseHessian


def _text(h) -> str:
    return " ".join(repr(h).split())


def rosenbrock(x):
    return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()


def test_rosenbrock_is_tridiagonal_in_the_jacobians_words():
    x = torch.randn(5000, dtype=torch.float64, requires_grad=True)
    text = _text(vjp_magic.hessian(rosenbrock(x), x))
    assert "The Hessian is tridiagonal: 14,998 nonzeros from 3 Hessian-vector products " \
        "(the pattern proved from the graph for every x; the values checked with random " \
        "probes" in text


def test_two_axes_laplacian_energy_is_a_5_point_stencil():
    x = torch.randn(64, 64, dtype=torch.float64, requires_grad=True)
    f = ((x[1:] - x[:-1]) ** 2).sum() + ((x[:, 1:] - x[:, :-1]) ** 2).sum() + (x ** 4).sum()
    nonzeros = 64 * 64 + 2 * 2 * 63 * 64  # the diagonal, and both neighbours along each axis
    assert f"The Hessian is a 5-point stencil: {nonzeros:,} nonzeros from 5 Hessian-vector" \
        in _text(vjp_magic.hessian(f, x))


def test_second_neighbours_are_a_band_and_roll_wraps_around():
    n = 5000
    x = torch.randn(n, dtype=torch.float64, requires_grad=True)
    band = ((x[2:] * x[:-2]) ** 2).sum() + (x[1:] * x[:-1]).sum()
    text = _text(vjp_magic.hessian(band, x))
    assert f"The Hessian is banded (-2 to 2 about the diagonal): {5 * n - 6:,} nonzeros" in text
    cyclic = ((x - x.roll(1)) ** 4).sum()
    assert f"The Hessian is cyclic tridiagonal: {3 * n:,} nonzeros" in _text(
        vjp_magic.hessian(cyclic, x))


def test_the_words_are_the_displays_not_cores():
    x = torch.randn(5000, dtype=torch.float64, requires_grad=True)
    h = vjp_magic.hessian(rosenbrock(x), x)
    assert not hasattr(SparseHessian, "summary") and "kind" not in SparseHessian._fields
    assert not any("Hessian-vector" in note for note in h.notes)  # said once, by render
    assert _text(h).count("Hessian-vector products") == 1


def test_a_large_pattern_is_read_off_every_row_and_stays_fast():
    n = 1_000_000
    x = torch.randn(n, dtype=torch.float64, requires_grad=True)
    h = vjp_magic.hessian(rosenbrock(x), x)
    start = time.perf_counter()
    text = _text(h)
    took = time.perf_counter() - start
    assert f"The Hessian is tridiagonal: {3 * n - 2:,} nonzeros" in text
    assert "read off" not in text  # every row, not a sample (issue 20, s31)
    assert took < 1.0, took


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_observed_pattern_says_how_it_was_found(dtype):
    n = 3000
    x = torch.randn(n, dtype=dtype, requires_grad=True)
    y = torch.nn.functional.conv1d(x[None, None], torch.ones(1, 1, 3, dtype=dtype), padding=1)
    f = (y.reshape(-1) ** 2).sum() * torch.exp(torch.zeros((), dtype=dtype))
    h = vjp_magic.hessian(f, x)
    if h.inputs["x"].sparse is None:
        pytest.skip("the dense path took it")
    text = _text(h)
    assert "The Hessian is banded (-2 to 2 about the diagonal)" in text
    assert ("the pattern proved from the graph" in text) or ("the pattern found at this x by"
                                                              in text)


def test_every_spelling_of_the_sentence_is_safe():
    from vjp_magic.render import latex, markdown

    x_1 = torch.randn(3000, dtype=torch.float64, requires_grad=True)
    h = vjp_magic.hessian(rosenbrock(x_1), x_1, ["x_1"])
    bundle = h._repr_mimebundle_()
    said = " ".join(bundle["text/markdown"].split())
    assert "The Hessian is tridiagonal: 8,998 nonzeros" in said
    assert "the pattern proved from the graph for every $x_{1}$;" in said  # the cell's name
    for tex in markdown.maths(bundle["text/markdown"]):
        assert latex.tex_problems(tex) == [], tex
    assert "The Hessian is tridiagonal" in latex.render(h.view.document(h))
