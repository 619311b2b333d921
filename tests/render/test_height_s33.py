"""One height rule for every display (session 33, F2): a vector Hessian's display shrinks
with the height budget as the Jacobian's does (fewer rows, the first and last inputs, the
first Hessian then the rest counted), and a multi-row TeX formula (a ``--symbolic`` matrix, a
``cases`` or ``array`` display) counts as tall as its rows, as a matrix of numbers with as
many rows does.

Expected numbers come from torch.autograd.functional.hessian; heights are compared with the
height of a numeric matrix of as many rows (the calibrated rule), never with a constant."""
from __future__ import annotations

import sympy
import torch
from torch.autograd.functional import hessian as reference_hessian

import vjp_magic
from vjp_magic.render.budget import formula_height, height
from vjp_magic.render.document import Formula, Math, Matrix
from vjp_magic.render.options import DISPLAY_HEIGHT, RenderOptions


def f(x, w):
    return torch.stack([(x * w).sin().sum() * k for k in range(1, 6)])


def vector_hessian(options=None):
    x = torch.linspace(-1, 1, 9, requires_grad=True)
    w = torch.linspace(-1, 2, 9, requires_grad=True)
    return x, w, vjp_magic.hessian(f(x, w), {"x": x, "w": w}, options=options)


def plain(h) -> str:
    return " ".join(h._repr_mimebundle_()["text/plain"].split())


def test_a_vector_hessian_fits_one_screen_and_says_what_it_left_out():
    x, w, h = vector_hessian()
    assert height(h.view.document(h).sections) <= DISPLAY_HEIGHT
    text = plain(h)
    assert "3 more Hessians, all in r.derivatives['x']" in text
    assert "Not shown, to fit one screen: 1 more input, w (9)" in text
    for k in range(5):  # what is left out is still there, and right
        expected = reference_hessian(lambda t, k=k: f(t, w.detach())[k], x.detach())
        torch.testing.assert_close(h.derivatives["x"][k], expected)


def test_a_taller_budget_shows_both_inputs():
    *_, h = vector_hessian(RenderOptions(height=4 * DISPLAY_HEIGHT))
    text = plain(h)
    assert "Not shown" not in text and "With respect to w" in text
    assert "3 more Hessians, all in r.derivatives['w']" in text


def test_presentation_mode_leads_with_the_shown_inputs_only():
    *_, h = vector_hessian()
    h.view.present = True
    h.view._last = ()
    sections = h.view.document(h).sections
    assert height(sections) <= DISPLAY_HEIGHT
    lead = [b for b in sections[0].blocks if isinstance(b, Formula)]
    assert lead and all("w" not in b.lhs.plain for b in lead)


# -- multi-row TeX -----------------------------------------------------------------------------
def numeric(rows: int) -> Formula:
    entry = Math("1", "1")
    return Formula(Math("J", "J"), Matrix(tuple((entry, entry) for _ in range(rows))))


def symbolic(tex: str) -> Formula:
    return Formula(Math(tex, tex))


def test_a_symbolic_matrix_is_as_tall_as_its_rows():
    a, b = sympy.symbols("a b")
    for rows in (2, 4, 6):
        tex = "J = " + sympy.latex(sympy.Matrix([[a * k, -b * k] for k in range(1, rows + 1)]))
        assert formula_height(symbolic(tex)) == formula_height(numeric(rows))


def test_cases_inside_a_matrix_row_make_it_taller():
    a = sympy.Symbol("a")
    piecewise = sympy.Piecewise((a, a > 0), (0, True))  # two lines in one cell
    tex = sympy.latex(sympy.Matrix([[piecewise, 1], [a, 2]]))
    assert r"\begin{cases}" in tex
    assert formula_height(symbolic(tex)) == formula_height(numeric(3))


def test_a_sum_broken_over_lines_counts_each_line():
    tex = r"\begin{array}{l}f = a + b \\ \qquad + c \\ \qquad + d\end{array}"
    assert formula_height(symbolic(tex)) == formula_height(numeric(3))
    aligned = r"\begin{aligned}a &= b \\ c &= d\end{aligned}"
    assert formula_height(symbolic(aligned)) == formula_height(numeric(2))


def test_a_symbolic_jacobian_above_the_numbers_is_counted_whole(run_vjp):
    """Six rows of J_f(x) above the derivatives: the output's height counts them (it counted
    one line, so the derivatives beneath took room the formula had)."""
    body = ("W = torch.tensor([[k, -k] for k in range(1, 7)], dtype=torch.float32)\n"
            "x = torch.tensor([1., 2.], requires_grad=True)\ny = W @ x")
    r = run_vjp(body, "--symbolic")
    shown = [b for s in r.view.before for b in s.blocks if isinstance(b, Formula)]
    assert any(r"\begin{matrix}" in b.lhs.tex for b in shown)
    assert height(r.view.before) >= formula_height(numeric(6))
