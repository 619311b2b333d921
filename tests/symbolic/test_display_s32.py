"""``--symbolic`` as the other displays are: numbers in the digits the dtype holds, the width
``--width`` / ``%config VJPMagics.width`` sets, one screen of height, text/plain a terminal's
width (session 32, G7's findings 4-6).

Expected numbers come from numpy (the shortest decimal that round-trips, Dragon4) and from
torch.autograd.functional.jacobian / hessian, never from the code under test.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
import sympy
import torch
from torch.autograd.functional import hessian as reference_hessian
from torch.autograd.functional import jacobian as reference_jacobian

from vjp_magic.render.budget import height
from vjp_magic.render.options import DISPLAY_HEIGHT
from vjp_magic.render.plain import WRAP
from vjp_magic.symbolic.digits import round_trip_digits

W = [[0.6213, -0.4519, -0.1661], [-1.523, 0.3817, -1.028], [-0.5631, -0.8923, -0.05825]]
LINEAR = f"W = torch.tensor({W})\nx = torch.tensor([1., 2., 3.], requires_grad=True)\n"


def bundle(result) -> dict:
    shown = result._repr_mimebundle_()
    return shown[0] if isinstance(shown, tuple) else shown


def symbolic_part(text: str) -> str:
    """The symbolic display: from its heading to its crosscheck line (the last one)."""
    return text.split("Symbolic (SymPy)")[1].rsplit("with autograd", 1)[0]


def decimals(text: str) -> list[str]:
    return re.findall(r"-?\d+\.\d+(?:e[-+]\d+)?", text)


# -- digits -------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype, cast", [(torch.float32, np.float32), (torch.float16, np.float16),
                                         (torch.float64, np.float64)])
def test_round_trip_digits_are_numpys_shortest(dtype, cast):
    values = np.random.default_rng(0).standard_normal(200) * np.logspace(-6, 4, 200)
    for v in values.astype(cast):
        shortest = np.format_float_scientific(v, unique=True, trim="-").split("e")[0]
        expected = len(shortest.replace("-", "").replace(".", "").lstrip("0"))
        assert round_trip_digits(float(v), dtype) == expected, v


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_constants_read_back_as_the_tensors_own_numbers(run_vjp, dtype):
    r = run_vjp(LINEAR.replace("])\n", f"], dtype=torch.{dtype})\n", 1)
                .replace("[1., 2., 3.]", f"[1., 2., 3.], dtype=torch.{dtype}") + "y = W @ x",
                "--symbolic")
    w = torch.tensor(W, dtype=getattr(torch, dtype))
    cast = np.float32 if dtype == "float32" else np.float64
    expected = {abs(float(v)) for v in w.reshape(-1)}  # LaTeX sets a sign apart: "- 1.523"
    for mime in ("text/markdown", "text/plain", "text/latex"):
        shown = decimals(symbolic_part(bundle(r)[mime]))
        assert shown, mime
        # every constant shown gives back W's own number in W's dtype ...
        assert {abs(float(cast(float(s)))) for s in shown} == expected, (mime, shown)
        # ... and is its shortest decimal (numpy's)
        assert all(s.lstrip("-") == np.format_float_positional(cast(abs(float(s))), unique=True,
                                                               trim="-") for s in shown)
    # the formula itself keeps the exact values
    assert r.symbolic["x"][0, 0] == sympy.Float(float(w[0, 0]))


def test_a_product_of_float32_constants_shows_float32_digits(run_vjp):
    r = run_vjp(LINEAR + "y = ((W @ x) ** 2).sum()", "--symbolic")
    shown = decimals(symbolic_part(bundle(r)["text/plain"]))
    assert shown and all(len(s.lstrip("-").replace(".", "").lstrip("0")) <= 9 for s in shown)
    x = r.inputs["x"].tensor.detach()
    expected = reference_jacobian(lambda t: ((torch.tensor(W) @ t) ** 2).sum(), x)
    torch.testing.assert_close(r.derivatives["x"], expected)
    assert r.crosscheck == {"x": True}


# -- width --------------------------------------------------------------------------------------
SUM = ("x = torch.tensor([0.1, 0.2], requires_grad=True)\n"
       "y = torch.sin(x) * torch.exp(x) + x**3 / (1 + x**2)")


def test_the_formulas_follow_width_and_config(ip, run_vjp):
    def lines(r) -> int:
        tex = symbolic_part(bundle(r)["text/markdown"])
        return tex.count(r"\qquad") + tex.count("$$") // 2

    default = lines(run_vjp(SUM, "--symbolic"))
    assert lines(run_vjp(SUM, "--symbolic --width 20")) > default
    ip.run_line_magic("config", "VJPMagics.width = 20")
    try:
        assert lines(run_vjp(SUM, "--symbolic")) > default
    finally:
        ip.run_line_magic("config", "VJPMagics.width = 50")
    assert lines(run_vjp(SUM, "--symbolic")) == default


# -- text/plain ---------------------------------------------------------------------------------
@pytest.mark.parametrize("body, line", [
    ("x = torch.tensor([0.1, 0.2, 0.3, 0.4], requires_grad=True)\ny = torch.softmax(x, 0)",
     "--symbolic --full-matrix"),
    (SUM, "--symbolic"),
    (LINEAR + "y = torch.sin(W @ x)", "--symbolic --full-matrix"),
])
def test_plain_formulas_fit_the_plain_width(run_vjp, body, line):
    text = symbolic_part(bundle(run_vjp(body, line))["text/plain"])
    assert "=" in text
    widest = max(text.splitlines(), key=len)
    assert len(widest) <= WRAP, widest


# -- height -------------------------------------------------------------------------------------
SOFTMAX = "x = torch.tensor([0.1, 0.2, 0.3], requires_grad=True)\ny = torch.softmax(x, 0)"


def test_nine_entries_apart_are_summarised_to_one_screen(run_vjp):
    r = run_vjp(SOFTMAX, "--symbolic")
    assert height(r.view.document(r).sections) <= DISPLAY_HEIGHT
    assert "more entries not shown (r.symbolic['x'] holds every entry)" in bundle(r)["text/plain"]
    # the formula is whole, and right, whatever is shown
    x = r.inputs["x"].tensor.detach()
    expected = reference_jacobian(lambda t: torch.softmax(t, 0), x)
    values = sympy.lambdify(sorted(r.symbolic["x"].free_symbols, key=str), r.symbolic["x"])
    torch.testing.assert_close(torch.tensor(np.array(values(*x.tolist()), dtype=np.float64),
                                            dtype=torch.float32), expected)
    assert r.crosscheck == {"x": True}


def test_full_matrix_shows_every_entry(run_vjp):
    r = run_vjp(SOFTMAX, "--symbolic --full-matrix")
    text = bundle(r)["text/plain"]
    assert "not shown" not in symbolic_part(text)
    assert symbolic_part(text).count("[J_f(x)][") == 9 and "f(x) = " in text


def test_a_hessians_formulas_fit_one_screen(run_ok):
    run_ok("x = torch.tensor([0.1, 0.2, 0.3], requires_grad=True)")
    h = run_ok("%hessian --symbolic torch.softmax(x, 0)[0] * torch.sin(x).sum() wrt x")
    assert height(h.view.document(h).sections) <= DISPLAY_HEIGHT
    x = torch.tensor([0.1, 0.2, 0.3])
    expected = reference_hessian(lambda t: torch.softmax(t, 0)[0] * torch.sin(t).sum(), x)
    torch.testing.assert_close(h.derivatives["x"], expected)
    assert h.crosscheck == {"x": True}


def test_a_vector_hessians_formulas_take_at_most_half_a_screen(run_ok):
    """Three components of 3 × 3 Hessians with fractions: the first component's first entry,
    the rest counted; the numbers beneath keep the other half."""
    run_ok("x = torch.tensor([0.1, 0.2, 0.3], requires_grad=True)")
    h = run_ok("%hessian --symbolic torch.softmax(x, 0) wrt x")
    assert height(h.view.before) <= DISPLAY_HEIGHT / 2
    text = bundle(h)["text/plain"]
    assert "2 more components not shown (r.symbolic['x'] holds each)" in text
    assert len(h.symbolic["x"]) == 3 and h.crosscheck == {"x": True}
    x = torch.tensor([0.1, 0.2, 0.3])
    for k in range(3):
        expected = reference_hessian(lambda t, k=k: torch.softmax(t, 0)[k], x)
        torch.testing.assert_close(h.derivatives["x"][k], expected)
