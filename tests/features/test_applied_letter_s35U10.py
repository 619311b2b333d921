"""The maths calls the map by the notebook's own one-letter function where the output applies
it, and by a free letter otherwise (s35 U10)."""
from __future__ import annotations

import torch


def plain(result) -> str:
    shown = result._repr_mimebundle_()
    return " ".join((shown[0] if isinstance(shown, tuple) else shown)["text/plain"].split())


def test_a_jacobian_of_the_students_h_says_h(run_ok):
    run_ok("def h(t):\n    return t.sin()\nx = torch.linspace(-1, 1, 4, requires_grad=True)")
    r = run_ok("%jacobian h(x) wrt x")
    torch.testing.assert_close(torch.diagonal(r.jacobian("x")), torch.cos(torch.linspace(-1, 1, 4)))
    text = plain(r)
    assert "one function h at 4 points" in text and "h'(x^(i))" in text, text[:300]


def test_a_hessian_of_the_students_h_says_h(run_ok):
    run_ok("def h(t):\n    return t.sin()\nx = torch.linspace(-1, 1, 4, requires_grad=True)")
    text = plain(run_ok("%hessian h(x) wrt x"))
    assert "h″ at each of the 4 points" in text, text[:300]


def test_a_notebook_f_the_output_does_not_apply_is_avoided(run_ok, run_vjp):
    run_ok("def f(t):\n    return t**3")
    text = plain(run_vjp("x = torch.linspace(-2, 2, 5, requires_grad=True)\ny = x**2"))
    assert "one function g at 5 points" in text and "f'" not in text, text[:300]


def test_a_vector_valued_students_f_names_its_components(run_ok, run_vjp):
    run_ok("def f(t):\n    return torch.stack([t**2, t])")
    r = run_vjp("x = torch.linspace(-2, 2, 3, requires_grad=True)\ny = f(x)")
    # f_1' = 2x, f_2' = 1 (mathematics)
    assert r.derivatives["x"].tolist() == [[-4.0, 0.0, 4.0], [1.0, 1.0, 1.0]]
    assert "2 functions f_k at 3 points" in plain(r)
