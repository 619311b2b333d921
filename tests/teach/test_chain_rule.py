"""The tutorial's special case with the cell's own numbers (issue 21, item 5).

A cell that calls ``y.backward(v)`` with a v that is not one-hot (v = ∇ℓ(y), a loss's
gradient) is shown v, J and vᵀJ = ∇(ℓ∘f)(x) with its values: in the plain display (the
coaching note) and, once, in ``--explain``. The expected numbers come from
``torch.func.jacrev``/``torch.func.grad``, never from the code under test.
"""
from __future__ import annotations

import re

import torch
from torch.func import grad, jacrev

from vjp_magic.render import plain
from vjp_magic.render.document import Formula

PRODUCT = "vᵀJ = ∇(ℓ∘f)(x)"


def tutorial_f(x):
    """The tutorial's In [17]: f(x_1, …, x_n) = (x_1 + … + x_n, x_1² + … + x_n²)."""
    return torch.stack([x.sum(), (x**2).sum()])


def loss(y):
    """ℓ(y) = y_1²/2 + y_2, a scalar function of the output: v = ∇ℓ(y) = (y_1, 1)."""
    return y[0] ** 2 / 2 + y[1]


TUTORIAL_CELL = ("x = torch.arange(4, dtype=float, requires_grad=True)\n"
                 "y = torch.stack([x.sum(), (x**2).sum()])\n"
                 "v = torch.tensor([6., 1.], dtype=float)  # ∇ℓ(y) at y = (6, 14)\n"
                 "y.backward(v)")


def shown_formulas(r) -> list[Formula]:
    return [b for s in r.view.document(r).sections for b in s.blocks
            if isinstance(b, Formula) and b.matrix is not None]


def numbers(formula: Formula) -> list[float]:
    return [float(e.plain) for row in formula.matrix.rows for e in row]


def expected():
    x = torch.arange(4, dtype=torch.float64)
    v = grad(loss)(tutorial_f(x))
    return x, v, jacrev(tutorial_f)(x), jacrev(lambda t: loss(tutorial_f(t)))(x)


def test_the_expected_numbers_are_the_tutorials_special_case():
    x, v, J, chained = expected()
    assert tutorial_f(x).tolist() == [6.0, 14.0]  # the tutorial's y = (y_1, y_2)
    assert J.tolist() == [[1, 1, 1, 1], [0, 2, 4, 6]]  # its gradients of y_1 and y_2
    assert v.tolist() == [6.0, 1.0]
    torch.testing.assert_close(v @ J, chained)  # vᵀJ = ∇(ℓ∘f)(x)


def test_the_plain_display_shows_v_j_and_vtj_with_the_cells_numbers(run_vjp):
    _, v, J, chained = expected()
    r = run_vjp(TUTORIAL_CELL)
    by_lhs = {f.lhs.plain: f for f in shown_formulas(r)}
    assert numbers(by_lhs["v"]) == v.tolist()
    assert numbers(by_lhs["J"]) == J.reshape(-1).tolist()
    assert numbers(by_lhs[PRODUCT]) == chained.tolist() == [6.0, 8.0, 10.0, 12.0]
    text = " ".join(plain.render(r.view.document(r)).split())
    assert "the tutorial's vᵀJ = ∇(ℓ∘f)(x)" in text
    assert "with v = v" not in text  # the numbers, not the variable's name again
    markdown = r._repr_mimebundle_()["text/markdown"]
    assert r"$$v^\top J = \nabla(\ell\circ f)(x) = \begin{bmatrix}6 & 8 & 10 & 12" in markdown


def test_explain_shows_the_chain_rule_once(run_vjp):
    _, v, _, chained = expected()
    r = run_vjp(TUTORIAL_CELL, "--explain")
    products = [f for f in shown_formulas(r) if f.lhs.plain == PRODUCT]
    assert len(products) == 1 and numbers(products[0]) == chained.tolist()
    assert [numbers(f) for f in shown_formulas(r) if f.lhs.plain == "v"] == [v.tolist()]
    text = " ".join(plain.render(r.view.document(r)).split())
    assert "this cell's numbers are in the explanation" in text


def test_at_many_points_vtj_is_the_gradient_of_the_loss(run_vjp):
    """y = x² at the tutorial's five points, v = ∇ℓ(y) for ℓ(y) = Σ y²: vᵀJ = 4x³."""
    r = run_vjp("x = torch.linspace(-2, 2, 5, requires_grad=True)\n"
                "y = x**2\n"
                "y.backward(2 * y.detach())")
    x = torch.linspace(-2, 2, 5)
    chained = jacrev(lambda t: ((t**2) ** 2).sum())(x)
    (product,) = [f for f in shown_formulas(r) if f.lhs.plain == PRODUCT]
    assert numbers(product) == chained.tolist() == [-32.0, -4.0, 0.0, 4.0, 32.0]
    assert torch.equal(r.inputs["x"].tensor.grad, chained)  # what the cell's own call left


def test_one_hot_v_gets_no_chain_rule(run_vjp):
    r = run_vjp("x = torch.tensor(1., requires_grad=True)\n"
                "y = torch.stack([-x**3, 5*x])\n"
                "y.backward(torch.tensor([1., 0.]))")
    assert not [f for f in shown_formulas(r) if f.lhs.plain == PRODUCT]
    assert not re.search(r"special case", plain.render(r.view.document(r)))
