"""--present fits one 1024 x 768 screen as every display does (s32, G7's class): the height
budget applies, the result's formulas counted at their larger size."""
from __future__ import annotations

import pytest

import cells
from vjp_magic.render.budget import height
from vjp_magic.render.document import Formula
from vjp_magic.render.options import DISPLAY_HEIGHT


def _fits(result) -> None:
    sections = result.view.document(result).sections
    assert height(sections) <= DISPLAY_HEIGHT
    large = [b for s in sections for b in s.blocks if isinstance(b, Formula) and b.large]
    assert large, "the result's formulas come first, larger"


@pytest.mark.parametrize("cell", cells.TUTORIAL, ids=cells.ids(cells.TUTORIAL))
def test_present_of_every_tutorial_cell_fits_one_screen(run_vjp, cell):
    _fits(run_vjp(cell.short, "--present"))


@pytest.mark.parametrize("line", [
    "%jacobian --present torch.stack([x.sum(1), (x**2).sum(1)]) wrt x",
    "%hessian --present (x**3).sum() wrt x",
    "%jacobian --present x.sin() * 3",
])
def test_present_of_the_line_magics_fits_one_screen(run_ok, line):
    run_ok("x = torch.linspace(-1, 1, 24).reshape(6, 4).requires_grad_()")
    _fits(run_ok(line))


def test_present_of_many_components_fits_one_screen(run_vjp):
    _fits(run_vjp("x = torch.linspace(-1, 1, 20).reshape(5, 4).requires_grad_()\n"
                  "y = torch.stack([x.sum(1) * k for k in range(1, 7)])", "--present"))


def test_present_with_explain_and_code_keeps_the_derivatives_on_the_first_screen(run_vjp):
    r = run_vjp(cells.VECTOR_MULTIVARIATE_MULTIPLE_POINTS.short, "--present --explain")
    first = r.view.document(r).sections[0]
    assert any(isinstance(b, Formula) and b.large for b in first.blocks)
