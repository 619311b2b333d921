"""The content of the display (render/sections, render/notation), --explain and --code.

Tests read the document nodes — what is said — not one renderer's spelling. Expected numbers
come from the tutorial (tests/cells.py) or from the mathematics.
"""
from __future__ import annotations

import pytest
import torch

import cells
from vjp_magic import differentiate
from vjp_magic.render import document as D
from vjp_magic.render.notation import math_name, name_tex
from vjp_magic.render.options import RenderOptions
from vjp_magic.render.sections import derivatives_sections, jacobian_block
from vjp_magic.teach.code import code_section
from vjp_magic.teach.explain import explain_sections

OPTIONS = RenderOptions()


def result_of(source: str, wrt=("x",), output="y", **kw):
    ns = {"torch": torch}
    exec(source, ns)
    return differentiate(ns[output], {n: ns[n] for n in wrt}, output_name=output, **kw), ns


def spans_text(spans) -> str:
    return "".join(s.plain if isinstance(s, D.Math) else s.text for s in spans)


def matrix_rows(matrix: D.Matrix) -> list[list[str]]:
    return [[e.plain for e in row] for row in matrix.rows]


def blocks(sections):
    return [b for s in sections for b in s.blocks]


def prose(sections) -> str:
    """Every paragraph's words, one per line (matrices and code left out)."""
    return "\n".join(spans_text(b.spans) for b in blocks(sections) if isinstance(b, D.Paragraph))


def formulas(sections) -> list[D.Formula]:
    """The matrices shown (the structure in index notation, a formula without one, aside)."""
    return [b for b in blocks(sections) if isinstance(b, D.Formula) and b.matrix is not None]


def codes(sections) -> list[str]:
    return [b.source for b in blocks(sections) if isinstance(b, D.CodeBlock)]


# -- the headline: paired axes and evidence ---------------------------------------------------
MATMUL = ("torch.manual_seed(0)\nx = torch.randn(4, 3, requires_grad=True)\n"
          "W = torch.randn(3, 2)\n")


@pytest.mark.parametrize("line, name, phrase", [
    ("y = x @ W", "x", "row i of y uses row i of x only (proved for every x)"),
    ("xt = torch.randn(3, 4, requires_grad=True)\ny = xt.T @ W", "xt",
     "row i of y uses column i of xt only (proved for every xt)"),
    ("xc = torch.randn(3, 4, requires_grad=True)\ny = W.T @ xc", "xc",
     "column i of y uses column i of xc only (proved for every xc)"),
    ("v = torch.randn(5, requires_grad=True)\ny = torch.sin(v)", "v",
     "entry i of y uses entry i of v only (proved for every v)"),
    ("m = torch.randn(2, 3, requires_grad=True)\ny = m ** 2", "m",
     "entry (i, j) of y uses entry (i, j) of m only (proved for every m)"),
])
def test_headline_names_the_paired_axes(line, name, phrase):
    r, _ = result_of(MATMUL + line, wrt=(name,))
    assert phrase in prose(derivatives_sections(r, OPTIONS))


def test_headline_says_when_points_are_only_checked_at_this_input():
    r, _ = result_of("x = torch.linspace(-2, 2, 5, requires_grad=True)\ny = x**2",
                     graph_proof=False)
    text = prose(derivatives_sections(r, OPTIONS))
    assert "entry i of y uses entry i of x only (checked at this x only)" in text
    assert "proved" not in text


def test_the_tutorial_notation_at_many_points():
    r, _ = result_of(cells.MULTIPLE_POINTS.short)
    sections = derivatives_sections(r, OPTIONS)
    assert "y = F(x) applies one function f at 5 points x^(i)" in prose(sections)
    (formula,) = formulas(sections)
    assert formula.lhs.tex == r"f'\big(x^{(i)}\big)"
    assert matrix_rows(formula.matrix) == [["-4", "-2", "0", "2", "4"]]  # the tutorial's


def test_components_at_points_rows_labelled_from_one():
    r, _ = result_of(cells.STACK_AT_POINTS.short)
    sections = derivatives_sections(r, OPTIONS)
    v0, derivative = formulas(sections)
    assert v0.lhs.plain == "v_1" and matrix_rows(v0.matrix) == [["1", "1", "1"], ["0", "0", "0"]]
    assert [e.plain for e in derivative.matrix.row_labels] == ["f_1'", "f_2'"]
    assert matrix_rows(derivative.matrix) == [["0", "-3", "-12"], ["5", "5", "5"]]
    assert "Counted from 1 as the tutorial does, from 0 in the code: f_1 is y[0]" in prose(
        sections)


# -- shapes, sizes, v in words ---------------------------------------------------------------
def test_shapes_with_times_and_full_dtype():
    r, _ = result_of(cells.SCALAR_MULTIVARIATE_MULTIPLE_POINTS.short)
    first = prose(derivatives_sections(r, OPTIONS)).splitlines()[0]
    assert first == "From x (3 × 2) to y (3), torch.float64."


def test_sizes_have_thousands_separators():
    r, _ = result_of("x = torch.linspace(0, 1, 200_000, requires_grad=True)\ny = torch.sin(x)")
    text = prose(derivatives_sections(r, OPTIONS) + explain_sections(r, OPTIONS))
    assert "200,000 points" in text and "200000" not in text
    assert "m × n = 200,000 × 200,000" in text


def test_the_gradient_argument_is_described_in_words():
    for cell in cells.TUTORIAL:
        r, _ = result_of(cell.short)
        text = prose(derivatives_sections(r, OPTIONS))
        assert "gradient argument(s)" not in text and ": 1\n" not in text
    r, _ = result_of(cells.SCALAR_MULTIVARIATE_SINGLE_POINT.short)
    assert "needs no gradient argument (v = 1, the default)" in \
        prose(derivatives_sections(r, OPTIONS))


def test_the_short_loop_is_shown_once_and_as_short_as_the_tutorials():
    r, ns = result_of(cells.MATRIX_VALUED_UNIVARIATE.short)
    (code,) = codes(derivatives_sections(r, OPTIONS))
    assert "for i, j in itertools.product(range(3), range(2)):" in code
    assert "v[i, j] = 1" in code and len(code.splitlines()) <= 7  # (.grad cleared first)


# -- the cell's own names ---------------------------------------------------------------------
def test_names_as_maths():
    assert name_tex("x") == "x" and name_tex("x_1") == "x_{1}"
    assert name_tex("w_hidden") == r"w_{\mathrm{hidden}}" and name_tex("α") == r"\alpha"
    assert name_tex("xs") == r"\mathrm{xs}"
    assert name_tex("x.T @ w").startswith(r"\mathtt{")
    assert math_name("layer.weight").plain == "layer.weight"


def test_jacobian_view_uses_the_cells_names_and_labels():
    r, _ = result_of("a = torch.tensor([[1., 2.], [3., 4.]], requires_grad=True)\n"
                     "b = torch.tensor([1., -1.], requires_grad=True)\ns = a @ b",
                     wrt=("a", "b"), output="s")
    sections = derivatives_sections(r, OPTIONS, jacobian=True)
    ja, jb = formulas(sections)
    assert ja.lhs.plain == "∂s_i/∂a_j" and jb.lhs.plain == "∂s_i/∂b_j"
    assert spans_text(ja.caption).startswith("m × n = 2 × 4")
    assert [e.plain for e in ja.matrix.col_labels] == ["a[0,0]", "a[0,1]", "a[1,0]", "a[1,1]"]
    # s_i = Σ_j a_ij b_j: ∂s_i/∂a_kj = δ_ik b_j; ∂s_i/∂b_j = a_ij
    assert matrix_rows(ja.matrix) == [["1", "-1", "0", "0"], ["0", "0", "1", "-1"]]
    assert matrix_rows(jb.matrix) == [["1", "2"], ["3", "4"]]
    assert not codes(sections)  # the full Jacobian needs no v and no loop


def test_jacobian_between_points_is_exactly_zero_where_a_derivative_is_infinite():
    r, _ = result_of("x = torch.tensor([0., 1., 4.], requires_grad=True)\ny = x.sqrt()")
    block = jacobian_block(r, "x")
    J = block.get_block(torch.arange(3), torch.arange(3))
    torch.testing.assert_close(J, torch.diag(torch.tensor([float("inf"), 0.5, 0.25])))


# -- notes ------------------------------------------------------------------------------------
def test_a_note_says_when_f_itself_is_nan():
    r, _ = result_of("x = torch.tensor([-1., 0.5, 2.], requires_grad=True)\ny = torch.log(x)")
    text = prose(derivatives_sections(r, OPTIONS))
    assert "y itself is NaN at 1 of its 3 entries" in text
    (formula,) = formulas(derivatives_sections(r, OPTIONS))
    assert matrix_rows(formula.matrix) == [["-1", "2", "0.5"]]  # 1/x, as autograd gives it


def test_result_notes_are_paragraphs():
    r, _ = result_of("x = torch.tensor([0., 1.], requires_grad=True)\ny = x.sqrt()")
    assert r.notes
    assert r.notes[0] in prose(derivatives_sections(r, OPTIONS))


# -- --explain and --code --------------------------------------------------------------------
def test_explain_names_times_and_one_based_steps():
    r, _ = result_of("a = torch.linspace(-2, 2, 5, requires_grad=True)\ns = a**2",
                     wrt=("a",), output="s")
    sections = explain_sections(r, OPTIONS)
    text = prose(sections)
    assert "m × n = 5 × 5" in text and " x n" not in text
    assert "∂s_i/∂a_j" in text and "∂y" not in text
    assert "Counted from 1 as the tutorial does, from 0 in the code: a_1 is a[0]" in text
    (J,) = formulas(sections)
    assert matrix_rows(J.matrix)[0] == ["-4", "0", "0", "0", "0"]  # J = diag(2a)


def test_explain_does_not_repeat_v_or_the_derivatives():
    r, _ = result_of(cells.STACK_AT_POINTS.short)
    explained = explain_sections(r, OPTIONS)
    shown = explained + derivatives_sections(r, OPTIONS)
    lhs = [f.lhs.plain for f in formulas(shown)]
    assert lhs.count("v_1") + lhs.count("V") == 1  # v shown once
    assert lhs.count("J_F") == 1
    # the derivatives' row [0, -3, -12] appears in J (as its non-zero entries) and once below
    rows = [row for f in formulas(shown) for row in matrix_rows(f.matrix)]
    assert rows.count(["0", "-3", "-12"]) == 1


def test_explain_shows_every_v_as_rows_of_V_when_the_display_does_not():
    r, _ = result_of(cells.VECTOR_MULTIVARIATE_SINGLE_POINT.short)
    V = [f for f in formulas(explain_sections(r, OPTIONS)) if f.lhs.plain == "V"]
    assert [e.plain for e in V[0].matrix.row_labels] == ["v_1^T", "v_2^T"]
    assert matrix_rows(V[0].matrix) == [["1", "0"], ["0", "1"]]


def test_code_section_points_to_the_careful_version():
    r, _ = result_of(cells.MULTIPLE_POINTS.short)
    section = code_section(r)
    assert "r.code" in prose((section,)) and "d_x" in prose((section,))


@pytest.mark.parametrize("cell", cells.TUTORIAL, ids=cells.ids(cells.TUTORIAL))
def test_each_tutorial_output_with_explain_fits_one_screen(cell):
    """1280 × 800: about 40 lines of 100 characters, a matrix row costing ~1.5 lines."""
    plain = pytest.importorskip("vjp_magic.render.plain")
    r, _ = result_of(cell.short)
    document = D.Document(explain_sections(r, OPTIONS) + derivatives_sections(r, OPTIONS))
    lines = plain.render(document).splitlines()
    assert len(lines) <= 52, "\n".join(lines)
    assert max(len(line) for line in lines) <= 100


def test_explain_names_each_inputs_jacobian_for_it():
    a = torch.tensor([1., 2., 3.], requires_grad=True)
    b = torch.tensor([0.5, -1., 2.], requires_grad=True)
    r = differentiate(a * b + a**2, {"a": a, "b": b}, output_name="s")
    sections = explain_sections(r, OPTIONS)
    text = prose(sections)
    assert "With respect to a:" in text and "With respect to b:" in text
    lhs = [f.lhs.plain for f in formulas(sections)]
    assert lhs == ["J_a", "J_b"]  # one name per matrix, never J_F for both
    rows = {f.lhs.plain: matrix_rows(f.matrix) for f in formulas(sections)}
    # ∂s/∂a = diag(b + 2a) = diag(2.5, 3, 8); ∂s/∂b = diag(a)
    assert [rows["J_a"][k][k] for k in range(3)] == ["2.5", "3", "8"]
    assert [rows["J_b"][k][k] for k in range(3)] == ["1", "2", "3"]
