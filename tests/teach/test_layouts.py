"""Layouts a course uses, graded as right answers where their shape says which they are (issue
21, item 8): one Jacobian per row, (N, m, d), and the full Jacobian flattened to m × n as
``%jacobian`` shows it. Expected values come from ``torch.func`` and
``torch.autograd.functional.jacobian``, never from the code under test.
"""
from __future__ import annotations

import pytest
import torch
from torch.autograd.functional import jacobian as reference_jacobian

import vjp_magic
from vjp_magic.teach.grading import grade

N, D, M = 5, 3, 2  # rows, features in, features out


def layer(x, w, b):
    return torch.tanh(x @ w.T + b)


@pytest.fixture
def row_problem():
    torch.manual_seed(0)
    x = torch.randn(N, D, dtype=torch.float64, requires_grad=True)
    w = torch.randn(M, D, dtype=torch.float64)
    b = torch.randn(M, dtype=torch.float64)
    per_row = torch.func.vmap(torch.func.jacrev(lambda row: layer(row, w, b)))(x.detach())
    return x, w, b, per_row  # per_row: (N, M, D)


def test_per_row_jacobians_are_right_and_named(row_problem):
    x, w, b, per_row = row_problem
    r = vjp_magic.differentiate(layer(x, w, b), x)
    assert per_row.shape == (N, M, D)
    check = grade(per_row, r, answer_name="J")
    assert (check.correct, check.form) == (True, "per-row")
    assert check.headline == f"✓ correct (one Jacobian per row, shape ({N}, {M}, {D}))"
    assert grade(per_row.permute(1, 0, 2), r).form == "derivatives"  # the plain layout too


def test_per_row_with_wrong_numbers_is_not_right(row_problem):
    x, w, b, per_row = row_problem
    r = vjp_magic.differentiate(layer(x, w, b), x)
    wrong = per_row.clone()
    wrong[2] *= -1
    assert not grade(wrong, r).correct
    assert not grade(per_row.transpose(1, 2).reshape(N, M, D), r).correct


def test_per_row_where_rows_and_outputs_are_as_many_stays_transposed():
    """N == m: the shape cannot tell the per-row layout from a transposed answer."""
    torch.manual_seed(1)
    x = torch.randn(M, D, requires_grad=True)
    w = torch.randn(M, D)
    r = vjp_magic.differentiate(x @ w.T, x)
    per_row = torch.func.vmap(torch.func.jacrev(lambda row: row @ w.T))(x.detach())
    check = grade(per_row, r)
    assert (check.correct, check.kind) == (False, "transposed")


@pytest.mark.parametrize("f, shape", [
    (lambda x: torch.stack([-x**3, 5 * x]), (3,)),
    (lambda x: torch.outer(x, x).sin(), (3,)),
    (lambda x: x.reshape(2, 2) @ x.reshape(2, 2), (4,)),
])
def test_flattened_jacobian_is_right_and_named(f, shape):
    x = torch.linspace(0.5, 2, shape[0], requires_grad=True)
    y = f(x)
    r = vjp_magic.differentiate(y, x)
    full = reference_jacobian(f, x.detach())
    m, n = y.numel(), x.numel()
    check = grade(full.reshape(m, n), r, answer_name="J")
    assert (check.correct, check.form) == (True, "flat-jacobian")
    assert check.headline == f"✓ correct (as the full Jacobian, flattened to {m} × {n})"
    plain = r.derivatives["x"].shape == full.shape  # no points: the derivatives are J
    assert grade(full, r).headline == "✓ correct" + ("" if plain else " (as the full Jacobian)")
    assert not grade(full.reshape(m, n).T, r).correct


def test_flattened_jacobian_of_a_matrix_input():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], requires_grad=True)
    w = torch.tensor([[1.0, -1.0], [0.5, 2.0]])

    def f(t):
        return (t @ w).exp().sum(0)

    r = vjp_magic.differentiate(f(x), x)
    full = reference_jacobian(f, x.detach())  # (2, 3, 2)
    check = grade(full.reshape(2, 6), r)
    assert (check.correct, check.form) == (True, "flat-jacobian")


def test_magic_names_the_layout(run_vjp):
    r = run_vjp("x = torch.tensor([1., 2., 3.], requires_grad=True)\n"
                "y = torch.stack([-x**3, 5*x])\n"
                "J = torch.autograd.functional.jacobian(lambda t: torch.stack([-t**3, 5*t]), "
                "x.detach()).reshape(6, 3)", "--check J")
    assert r.check.correct and r.check.form == "flat-jacobian"
    assert "✓ correct (as the full Jacobian, flattened to 6 × 3)" in \
        r._repr_mimebundle_()["text/plain"]
