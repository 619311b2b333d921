"""The display of second derivatives (``render/hessian.py``: the one ``View``, body of order
2): its markdown, LaTeX and plain text."""
from __future__ import annotations

import re

import torch
from hessians import W, displayed, leaf

from vjp_magic.core.hessian import second_derivatives
from vjp_magic.render import latex
from vjp_magic.render.view import View

# -- the display ------------------------------------------------------------------------------


def _check_tex(bundle):
    for tex in re.findall(r"\$\$(.*?)\$\$", bundle["text/markdown"], re.S):
        assert not latex.tex_problems(tex), latex.tex_problems(tex)


def test_display_of_an_elementwise_map():
    x = leaf(torch.linspace(-2, 2, 5), torch.float32)
    bundle = displayed(second_derivatives(torch.sin(x), x))
    assert set(bundle) == {"text/markdown", "text/latex", "text/plain"}
    assert "at each of the 5 points of x" in bundle["text/plain"]
    assert "∂²y_i/∂x_i²" in bundle["text/plain"]
    assert r"\partial^2 y_{i}" in bundle["text/markdown"]
    assert "-0.9093" in bundle["text/plain"] and "0.9093" in bundle["text/plain"]
    _check_tex(bundle)


def test_display_of_a_scalar_of_a_vector():
    x = leaf([0.5, -1.0, 2.0], torch.float64)
    h = second_derivatives((x**2).sum() + x[0] * x[1], x, output_name="s")
    bundle = displayed(h)
    plain = bundle["text/plain"]
    assert "The 3 × 3 Hessian of s with respect to x, symmetric" in plain
    assert "∂²s/∂x_i∂x_j" in plain
    assert repr(h) == plain
    _check_tex(bundle)


def test_display_of_a_large_map_is_summarised():
    x = leaf(torch.linspace(-3, 3, 100_000), torch.float32)
    bundle = displayed(second_derivatives(torch.exp(x), x))
    assert len(bundle["text/latex"]) < 20_000
    assert "100,000 points" in bundle["text/plain"]


def test_display_of_a_row_wise_layer_shows_a_few_hessians():
    x = leaf(torch.randn(50, 4), torch.float32)
    bundle = displayed(second_derivatives(torch.tanh(x @ W).sum(1), x))
    plain = bundle["text/plain"]
    assert "4 × 4 Hessian" in plain and "50 points" in plain
    assert "∇²f(x^(1))" in plain and "∇²f(x^(50))" in plain and "∇²f(x^(2))" not in plain
    _check_tex(bundle)


def test_display_of_several_inputs_says_no_cross_terms():
    x = leaf([0.5, 1.5], torch.float32)
    w = leaf([2.0, -1.0], torch.float32)
    h = second_derivatives((x**2 * w**3).sum(), [x, w], ["x", "w"], output_name="s")
    plain = " ".join(displayed(h)["text/plain"].split())
    assert "With respect to x: the 2 × 2 Hessian of s" in plain
    assert "mixed second derivatives of s with respect to two different inputs" in plain


def test_display_without_a_view_is_short():
    x = leaf([1.0, 2.0], torch.float32)
    h = second_derivatives(torch.sin(x), x)
    assert repr(h) == "<HessianResult: y (2,) of x (2,)>"


def test_the_document_of_second_derivatives_is_built_once(monkeypatch):
    """One View for both orders: a notebook asks for the bundle and the repr again and again,
    and the second derivatives' document is made once (HessianView made it every time)."""
    from vjp_magic.render import view as view_module

    built = []
    real = view_module.hessian_sections
    monkeypatch.setattr(view_module, "hessian_sections",
                        lambda h, options: built.append(h) or real(h, options))
    x = leaf([0.5, 1.0], torch.float32)
    h = second_derivatives(torch.sin(x), x)
    h.view = View()
    first = h._repr_mimebundle_()
    assert h._repr_mimebundle_() == first and repr(h) == first["text/plain"]
    assert len(built) == 1


def test_first_and_second_derivatives_are_one_family():
    from vjp_magic.core.result import DerivativeResult, VJPResult

    x = leaf([0.5, 1.0], torch.float64)
    h = second_derivatives(torch.sin(x), x)
    assert isinstance(h, DerivativeResult) and h.order == 2 and VJPResult.order == 1
    assert h.input_name() == "x" and h.crosscheck == {} and h.symbolic == {}
