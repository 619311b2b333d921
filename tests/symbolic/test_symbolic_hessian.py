"""``--symbolic`` for second derivatives: the formulas, checked against the numbers."""
from __future__ import annotations

import torch
from hessians import leaf

from vjp_magic.core.hessian import second_derivatives
from vjp_magic.render import latex


# -- --symbolic: the formulas, checked against the numbers --------------------------------------
def _derived(body: str, name: str = "x"):
    """Run ``body`` as the magic does (graphs kept, torch calls recorded), then the Hessian
    of its ``y`` and the symbolic report."""
    from vjp_magic.run.guard import keep_graphs
    from vjp_magic.run.record import recording
    from vjp_magic.symbolic import derive

    ns = {"torch": torch}
    with keep_graphs(), recording() as record:
        exec(body, ns)  # noqa: S102
    h = second_derivatives(ns["y"], {name: ns[name]})
    return h, derive(h, record=record, namespace=ns)


def _report_text(report) -> str:
    from vjp_magic.render import markdown, plain
    from vjp_magic.render.document import Document

    for tex in markdown.maths(markdown.render(Document(report.sections()))):
        assert latex.tex_problems(tex) == [], tex
    return " ".join(plain.render(Document(report.sections())).split())


def test_symbolic_elementwise():
    import sympy

    _, report = _derived("x = torch.linspace(0.5, 2, 4, requires_grad=True)\ny = torch.sin(x)")
    x = sympy.Symbol("x", real=True)
    assert sympy.simplify(report.formulas["x"] + sympy.sin(x)) == 0
    assert report.crosscheck == {"x": True}
    text = _report_text(report)
    assert "f″(x) = -sin(x)" in text and "agrees with autograd at all 4 points" in text


def test_symbolic_scalar_of_a_vector():
    import sympy

    _, report = _derived("x = torch.tensor([-1.2, 1.0], dtype=torch.float64, "
                         "requires_grad=True)\ny = (1 - x[0])**2 + 100*(x[1] - x[0]**2)**2")
    x1, x2 = sympy.symbols("x_1 x_2", real=True)
    expected = sympy.Matrix([[1200 * x1**2 - 400 * x2 + 2, -400 * x1], [-400 * x1, 200]])
    assert sympy.simplify(report.formulas["x"] - expected) == sympy.zeros(2, 2)
    assert report.crosscheck == {"x": True}
    assert "∇²f(x) =" in _report_text(report)


def test_symbolic_components_at_points():
    import sympy

    _, report = _derived("x = torch.linspace(0.5, 2, 3, requires_grad=True)\n"
                         "y = torch.stack([-x**3, 5*x])")
    x = sympy.Symbol("x", real=True)
    assert report.formulas["x"] == sympy.Matrix([[-6 * x], [0]])
    assert report.crosscheck == {"x": True}


def test_symbolic_disagreement_is_reported():
    from vjp_magic.run.guard import keep_graphs
    from vjp_magic.run.record import recording
    from vjp_magic.symbolic import derive

    ns = {"torch": torch}
    with keep_graphs(), recording() as record:
        exec("x = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)\n"
             "y = (x**3).sum()", ns)  # noqa: S102
    h = second_derivatives(ns["y"], ns["x"])
    h.inputs["x"].derivatives = h.inputs["x"].derivatives + 1  # wrong numbers
    report = derive(h, record=record, namespace=ns)
    assert report.crosscheck == {"x": False}
    assert "disagrees with autograd" in _report_text(report)


def test_symbolic_without_a_record_says_why():
    from vjp_magic.symbolic import derive

    x = leaf([1.0, 2.0], torch.float64)
    h = second_derivatives((x**3).sum(), x)
    report = derive(h, record=None, namespace={})
    assert report.formulas == {"x": None} and "numbers only" in report.note


def test_hessian_refuses_the_picture_flag(usage_error, run_ok):
    run_ok("x = torch.ones(3, requires_grad=True)")
    message = usage_error("%hessian --picture (x**3).sum() wrt x")
    assert "--picture" in message and "Jacobian of its gradient" in message
