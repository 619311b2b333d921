"""``--symbolic``: formulas from SymPy for the tutorial's examples, cross-checked with autograd.

Expected formulas are the closed forms of the mathematics; numeric expectations come from
``torch.autograd.functional.jacobian``, never from the code under test. Through the magics a
test reads ``r.symbolic`` / ``r.crosscheck`` and the plain display; called directly,
:func:`vjp_magic.symbolic.derive` gives a report whose sections are rendered as the notebook
would (markdown) and checked with the package's own LaTeX-safety test.
"""
from __future__ import annotations

import math
import time
import warnings

import cells
import numpy as np
import pytest
import sympy
import torch
from closed_forms import run_recorded, same, shown, words, x, x1, x2, x3, x4
from torch.autograd.functional import jacobian as reference_jacobian

from vjp_magic import differentiate
from vjp_magic.render import latex, markdown
from vjp_magic.render.document import Document, Formula, Paragraph
from vjp_magic.render.options import DISPLAY_WIDTH
from vjp_magic.symbolic import crosscheck, derive, display, registry
from vjp_magic.symbolic import formulas as symbolic_formulas
from vjp_magic.symbolic import report as report_module
from vjp_magic.symbolic.width import fits, width


def derived(body: str, name: str = "x", **options):
    """Run ``body``, differentiate its ``y`` with respect to ``name``, derive the formulas."""
    ns, record = run_recorded(body)
    result = differentiate(ns["y"], {name: ns[name]}, full=options.pop("full", False))
    return ns, result, derive(result, record=record, namespace=ns, **options)


def assert_safe(report) -> None:
    """Every display of the report typesets in MathJax 3 and KaTeX, far below their limits;
    the LaTeX rendering holds the same maths."""
    shown_md = markdown.render(Document(report.sections()))
    assert shown_md.count("$$") % 2 == 0
    for tex in markdown.maths(shown_md):
        assert len(tex) < 4000
        assert latex.tex_problems(tex) == [], tex


# -- the tutorial's examples, from tests/cells.py -------------------------------------------------
_TWO_X = 2 * x
EXPECTED = {
    "overview_single_point": _TWO_X,
    "overview_multiple_points": _TWO_X,
    "sum_trick": [[2 * sympy.Symbol(f"x_{i}", real=True) for i in range(1, 6)]],
    "scalar_univariate_single_point": _TWO_X,
    "scalar_univariate_multiple_points": _TWO_X,
    "scalar_multivariate_single_point": [[6 * x1, 10 * x2]],
    "scalar_multivariate_multiple_points": [[-2 * x1, 2 * x2]],
    "vector_univariate_single_point": [[-3 * x**2], [5]],
    "vector_univariate_multiple_points": [[-3 * x**2], [5]],
    "vector_multivariate_single_point": [[1, 1, 1, 1], [2 * x1, 2 * x2, 2 * x3, 2 * x4]],
    "vector_multivariate_multiple_points": [[1, 1, 1, 1], [2 * x1, 2 * x2, 2 * x3, 2 * x4]],
    "revisited_scalar": _TWO_X,  # the examples revisited show 2x once, whatever x's shape
    "revisited_vector_of_one": _TWO_X,
    "revisited_matrix_of_one": _TWO_X,
    "revisited_points": _TWO_X,
    "revisited_column": _TWO_X,
    "matrix_valued_univariate": [[0, 1], [2 * x, 3 * x**2], [4 * x**3, 5 * x**4]],
    "scalar_multivariate_gradient_one": [[6 * x1, 10 * x2]],
    "matrix_input_scalar_output": [[2 * sympy.Symbol(f"x_{{{i},{j}}}", real=True) for j in (1, 2)]
                                   for i in (1, 2, 3)],
}
TUTORIAL = pytest.mark.parametrize("cell", cells.TUTORIAL, ids=cells.ids(cells.TUTORIAL))


def test_every_tutorial_cell_has_an_expected_formula():
    assert set(EXPECTED) == {cell.name for cell in cells.TUTORIAL}


@TUTORIAL
def test_tutorial_closed_forms(run_vjp, cell):
    r = run_vjp(cell.source, "--symbolic")
    assert same(r.symbolic["x"], EXPECTED[cell.name]), r.symbolic["x"]
    assert r.crosscheck["x"] is True


@TUTORIAL
def test_tutorial_displays_are_safe_and_name_the_check(cell):
    _, _, report = derived(cell.source)
    assert report.note is None and report.crosscheck == {"x": True}
    assert_safe(report)
    assert "agrees with autograd" in words(report)


def test_generic_point_is_shown_once(run_vjp):
    cell = cells.STACK_AT_POINTS
    _, _, report = derived(cell.source)
    tex = markdown.render(Document(report.sections()))
    assert tex.count("x^{2}") == 1  # -3x^2 once, not once per point
    assert "3 points" in words(report)
    text = shown(run_vjp(cell.source, "--symbolic"))
    assert text.index("-3*x**2") < text.index("-12")  # the formula above the numbers


def test_integral_float_constants_become_integers(run_vjp):
    r = run_vjp("x = torch.linspace(1, 2, 3, requires_grad=True)\ny = 2.0 * x ** 3.0 - 0.5 * x",
                "--symbolic")
    formula = r.symbolic["x"]
    assert not formula.atoms(sympy.Float), formula
    assert same(formula, 6 * x**2 - sympy.Rational(1, 2))


# -- activations against autograd ------------------------------------------------------------------
def test_sigmoid_and_tanh_rows_match_autograd(run_vjp):
    r = run_vjp("x = torch.linspace(-3, 3, 7, dtype=torch.float64, requires_grad=True)\n"
                "y = torch.sigmoid(x) + torch.tanh(2 * x)", "--symbolic")
    formula = r.symbolic["x"]
    s = 1 / (1 + sympy.exp(-x))
    expected = s * (1 - s) + 2 * (1 - sympy.tanh(2 * x) ** 2)
    values = torch.linspace(-3, 3, 7, dtype=torch.float64)
    ref = torch.diagonal(reference_jacobian(lambda t: torch.sigmoid(t) + torch.tanh(2 * t), values))
    for value, want in zip(values.tolist(), ref.tolist()):
        assert float(formula.subs(x, value).evalf()) == pytest.approx(want, rel=1e-12)
        assert float(expected.subs(x, value).evalf()) == pytest.approx(want, rel=1e-12)
    assert r.crosscheck["x"] is True


def test_softmax_rows_match_autograd(ip, run_vjp):
    r = run_vjp("torch.manual_seed(0)\n"
                "x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)\n"
                "y = torch.softmax(x, dim=1)", "--symbolic")
    formula = r.symbolic["x"]
    assert formula.shape == (3, 3)
    xs = [x1, x2, x3]
    total = sum(sympy.exp(v) for v in xs)
    soft = [sympy.exp(v) / total for v in xs]
    closed = sympy.Matrix(3, 3, lambda i, j: soft[i] * ((1 if i == j else 0) - soft[j]))
    assert same(formula, closed)
    for row in ip.user_ns["x"].detach():
        want = reference_jacobian(lambda t: torch.softmax(t, 0), row)
        got = formula.subs(dict(zip(xs, row.tolist()))).evalf()
        torch.testing.assert_close(torch.tensor(got.tolist(), dtype=torch.float64), want)
    assert r.crosscheck["x"] is True


def test_relu_derivative_is_zero_at_zero_like_torch(run_vjp):
    r = run_vjp("x = torch.tensor([-1., 0., 2.], requires_grad=True)\ny = torch.relu(x)",
                "--symbolic")
    assert same(r.symbolic["x"], sympy.Heaviside(x, 0))
    assert r.symbolic["x"].subs(x, 0) == 0
    assert r.crosscheck["x"] is True


# -- the rule table, op by op, against torch.autograd.functional.jacobian --------------------------
OPS = [
    "t + 1", "3 - t", "t - torch.ones(6)", "2 * t", "t / 3", "1 / t", "t ** 3", "2 ** t",
    "(-t)", "abs(t)", "t.exp()", "t.log()", "torch.sin(t)", "torch.cos(t)", "torch.tan(t)",
    "torch.tanh(t)", "torch.sigmoid(t)", "torch.relu(t)", "torch.sqrt(t)", "t.sum()",
    "t.mean()", "t.prod()", "t.view(2, 3).sum(0)", "t.reshape(3, 2).sum(1)",
    "t.view(2, 3).T.flatten()", "t.view(2, 3).permute(1, 0).reshape(-1)",
    "t.view(2, 3).transpose(0, 1)[0]", "t[1:4] * t[:3]", "t[[0, 2]]", "t.view(2, 3)[:, 2]",
    "t.view(2, 3) @ torch.arange(3.).double()", "torch.arange(2.).double() @ t.view(2, 3)",
    "torch.mm(t.view(2, 3), t.view(3, 2)).flatten()", "torch.mv(t.view(3, 2), t[:2])",
    "torch.dot(t, t)", "torch.stack([t[0] * t[1], t[2]])", "torch.cat([t, t ** 2])",
    "torch.softmax(t, 0)", "torch.log_softmax(t.view(2, 3), 1).flatten()",
    "torch.nn.functional.gelu(t)", "torch.nn.functional.silu(t)",
    "torch.nn.functional.softplus(t)", "t.norm()", "t.flip(0) * t", "t.unsqueeze(0).expand(2, 6)",
    "t.view(2, 3).repeat(2, 1).flatten()", "torch.where(torch.arange(6) > 2, t, t ** 2)",
    "torch.tensor([1., 2.]) * t[:2]", "t.clone().float().double()", "t.square() + t.rsqrt()",
    "torch.linalg.norm(t)", "torch.special.expit(t)", "torch.outer(t[:2], t[2:4]).flatten()",
]




@pytest.mark.parametrize("expression", OPS)
def test_each_rule_matches_autograd(ip, run_ok, expression):
    values = torch.tensor([0.3, 1.2, 0.7, 2.0, 0.9, 1.5], dtype=torch.float64)
    ip.user_ns["t"] = values.clone().requires_grad_(True)
    r = run_ok(f"%jacobian --symbolic {expression} wrt t")
    formula = r.symbolic["t"]
    assert formula is not None, shown(r)
    function = eval(f"lambda t: {expression}", {"torch": torch})  # noqa: S307
    want = reference_jacobian(function, values).reshape(-1, 6)
    subs = {sympy.Symbol(f"t_{i + 1}", real=True): v for i, v in enumerate(values.tolist())}
    got = sympy.Matrix(formula).subs(subs).evalf()
    torch.testing.assert_close(torch.tensor(got.tolist(), dtype=torch.float64), want)
    assert r.crosscheck["t"] is True


def test_jacobian_symbolic_on_an_expression(ip, run_ok):
    ip.user_ns["z"] = torch.tensor([1.0, 2.0], requires_grad=True)
    r = run_ok("%jacobian --symbolic torch.stack([z.prod(), (z**2).sum()]) wrt z")
    z1, z2 = sympy.symbols("z_1 z_2", real=True)
    assert same(r.symbolic["z"], [[z2, z1], [2 * z1, 2 * z2]])
    assert r.crosscheck["z"] is True
    assert "J_f(z) = [[z_2, z_1], [2*z_1, 2*z_2]]" in shown(r)


def test_jacobian_symbolic_of_a_stored_tensor_says_why(run_ok):
    run_ok("z = torch.tensor([1.0, 2.0], requires_grad=True)\nw = z ** 3")
    r = run_ok("%jacobian --symbolic w z")
    assert r.symbolic["z"] is None
    assert "w is a stored tensor" in shown(r)
    torch.testing.assert_close(r.jacobian("z"), torch.diag(torch.tensor([3.0, 12.0])))


# -- graceful degradation -------------------------------------------------------------------------
@pytest.mark.parametrize("line, op", [
    ("y = torch.sort(x ** 2).values", "torch.sort"),
    ("y = (x ** 2).sort().values", "Tensor.sort"),
    ("y = torch.cumsum(x, 0)", "torch.cumsum"),
])
def test_unsupported_op_gives_one_line_and_the_numbers(ip, run_vjp, line, op):
    body = f"x = torch.tensor([2., -1., 0.5], requires_grad=True)\n{line}"
    r = run_vjp(body, "--symbolic")
    assert r.symbolic["x"] is None and "x" not in r.crosscheck
    note = f"symbolic: {op} is not supported; numbers only"
    assert note in shown(r)
    y = ip.user_ns["y"]
    source = line.split("=", 1)[1]
    want = reference_jacobian(lambda t: eval(source, {"torch": torch, "x": t}),  # noqa: S307
                              ip.user_ns["x"].detach())
    torch.testing.assert_close(r.jacobian("x"), want)
    assert y.shape == (3,)
    _, _, report = derived(body)
    assert report.note == note and words(report) == note
    assert report.formulas == {"x": None} and report.crosscheck == {}


@pytest.mark.parametrize("cell, words_", [
    ("x = torch.linspace(0.1, 1, 3, requires_grad=True)\ny = x * torch.arange(3)",
     "differs from point to point"),
    ("x = torch.linspace(0, 1, 5000, requires_grad=True)\ny = x ** 2", "5,000 entries"),
    ("x = torch.ones(2, requires_grad=True)\ny = x.detach() * x", "Tensor.detach"),
])
def test_what_cannot_be_followed_is_named(run_vjp, cell, words_):
    r = run_vjp(cell, "--symbolic")
    assert r.symbolic["x"] is None
    assert words_ in shown(r)


def test_an_intermediate_from_an_earlier_cell_is_named(run_ok, run_vjp):
    run_ok("x = torch.tensor([1., 2.], requires_grad=True)\nh = x.exp()")
    r = run_vjp("y = h * 2", "--symbolic --wrt x")
    assert r.symbolic["x"] is None
    assert "h was computed from the inputs in an earlier cell" in shown(r)


def test_out_of_time_degrades(run_vjp, monkeypatch):
    monkeypatch.setattr(report_module, "RUN_SECONDS", 0.2)
    r = run_vjp("x = torch.linspace(0, 1, 3000, requires_grad=True)\ny = x\n"
                "for _ in range(100):\n    y = torch.sin(y) * x", "--symbolic")
    assert r.symbolic["x"] is None
    assert "gave up after 0.2 s" in shown(r)


def test_disagreement_with_autograd_is_a_visible_warning():
    ns, record = run_recorded("x = torch.linspace(-1, 1, 4, requires_grad=True)\ny = x ** 3")
    result = differentiate(ns["y"], {"x": ns["x"]})
    result.inputs["x"].derivatives = result.inputs["x"].derivatives + torch.tensor([0, 0, 1, 0])
    report = derive(result, record=record, namespace=ns)
    assert same(report.formulas["x"], 3 * x**2)
    assert report.crosscheck["x"] is False
    assert "warning: the formula for x disagrees with autograd at 1 of 4 points" in words(report)


# -- the user's world is untouched -----------------------------------------------------------------
def snapshot(ns):
    state = {}
    for name, value in ns.items():
        if isinstance(value, torch.Tensor):
            grad = value.grad.clone() if value.is_leaf and value.grad is not None else None
            state[name] = (id(value), value.detach().clone(), grad)
        else:
            state[name] = (id(value), None, None)
    return state


def assert_same_state(before, after):
    assert before.keys() == after.keys()
    for name, (ident, data, grad) in before.items():
        ident2, data2, grad2 = after[name]
        assert ident == ident2, name
        if data is not None:
            torch.testing.assert_close(data2, data, equal_nan=True)
            assert (grad is None) == (grad2 is None), name
            if grad is not None:
                torch.testing.assert_close(grad2, grad)


@TUTORIAL
def test_derive_leaves_the_namespace_and_grads_alone(cell):
    ns, record = run_recorded(cell.source)  # as the magic does: the cell's own backward ran
    result = differentiate(ns["y"], {"x": ns["x"]})
    before = snapshot(ns)
    report = derive(result, record=record, namespace=ns)
    assert record.calls == []  # released
    assert report.crosscheck["x"] is True
    assert_same_state(before, snapshot(ns))


def test_magic_namespace_grad_and_random_state_match_a_plain_run(ip, run_vjp):
    cell = """
torch.manual_seed(1)
w = torch.randn(3)
x = torch.linspace(-1, 1, 3, requires_grad=True)
y = (x * w.sum()).exp()
y.backward(torch.ones_like(y))
"""
    run_vjp(cell)
    plain_state = snapshot(ip.user_ns)
    plain_draw = torch.rand(1)
    plain_names = {n for n in ip.user_ns if not n.startswith("_")}
    r = run_vjp(cell, "--symbolic")
    assert r.crosscheck["x"] is True
    torch.testing.assert_close(torch.rand(1), plain_draw)  # nothing drew random numbers again
    assert {n for n in ip.user_ns if not n.startswith("_")} == plain_names
    x_grad = ip.user_ns["x"].grad
    torch.testing.assert_close(x_grad, plain_state["x"][2])  # the cell's own backward, once


def test_in_place_changes_to_earlier_objects_happen_once(ip, run_ok, run_vjp):
    run_ok("w = torch.ones(3)\nacc = []")
    r = run_vjp("w.add_(1)\nacc.append(1)\nx = torch.ones(3, requires_grad=True)\ny = x * w",
                "--symbolic")
    torch.testing.assert_close(ip.user_ns["w"], torch.full((3,), 2.0))
    assert ip.user_ns["acc"] == [1]
    # Nothing runs again: the replay reads w as the cell used it (after its one add_).
    assert same(r.symbolic["x"], 2)
    assert r.crosscheck["x"] is True
    assert "disagrees" not in shown(r)


# -- rendering limits ------------------------------------------------------------------------------
def test_large_formula_is_not_typeset_but_still_checked(run_vjp):
    body = "x = torch.linspace(1, 2, 8, requires_grad=True)\ny = x * x.sum()"
    r = run_vjp(body, "--symbolic")
    assert r.symbolic["x"].shape == (8, 8)
    assert r.crosscheck["x"] is True
    assert "symbolic form too large (8 × 8; shown up to 6 × 6)" in shown(r)
    _, _, report = derived(body)
    assert "symbolic form too large (8 × 8; shown up to 6 × 6)" in words(report)
    assert_safe(report)


def test_each_formula_is_its_own_display_and_prose_is_prose():
    _, _, report = derived("x = torch.tensor([0., 1.], requires_grad=True)\n"
                           "w = torch.tensor([2., 3.], requires_grad=True)\ny = x * w + x.sin()",
                           full=True)
    blocks = [b for s in report.sections() for b in s.blocks]
    assert isinstance(blocks[0], Paragraph) and blocks[0].strong
    formulas = [b for b in blocks if isinstance(b, Formula)]
    assert formulas and all(b.lhs.tex.count("=") == 1 for b in formulas)
    assert all("\\text" not in b.lhs.tex for b in formulas)  # no sentences inside maths


def test_a_wide_sum_breaks_over_lines_that_fit_the_screen():
    _, _, report = derived("x = torch.linspace(-2, 2, 5, requires_grad=True)\n"
                           "y = torch.sigmoid(x) * x**2 + torch.tanh(x) / (1 + x**2)"
                           " - x.exp() * x.sin()")
    derivative = [b for s in report.sections() for b in s.blocks
                  if isinstance(b, Formula) and b.lhs.plain.startswith("f'(x) =")]
    assert len(derivative) == 1 and r"\begin{array}{l}f'(x) = " in derivative[0].lhs.tex
    assert derivative[0].lhs.tex.count(r"\qquad") >= 1
    assert report.crosscheck == {"x": True}
    assert_safe(report)


def test_a_small_matrix_too_wide_is_shown_entry_by_entry():
    _, _, report = derived("torch.manual_seed(0)\n"
                           "x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)\n"
                           "y = torch.softmax(x, dim=1)")
    entries = [b.lhs for s in report.sections() for b in s.blocks
               if isinstance(b, Formula) and b.lhs.tex.startswith(r"\frac{\partial f_{")]
    assert len(entries) == 9 and entries[1].tex.startswith(
        r"\frac{\partial f_{1}}{\partial x_{2}} = ")  # J_f's entry (1, 2), as ∇f_1's 2nd
    assert entries[1].plain.startswith("∂f_1/∂x_2 = -exp(x_1)*exp(x_2)/")
    assert_safe(report)


def test_the_width_estimate_follows_the_layout():
    y = sympy.Symbol("y", real=True)
    assert width(x / (x + y)) < width(x) + width(x + y)  # a fraction: its wider part
    assert width(sympy.Matrix([[x, y]])) > width(sympy.Matrix([[x], [y]]))
    assert width(sympy.Symbol("x_{1,2}", real=True)) > width(sympy.Symbol("x_1", real=True))
    assert fits(DISPLAY_WIDTH / 1.2) and not fits(DISPLAY_WIDTH)


def test_multiple_inputs_each_get_a_formula(run_vjp):
    r = run_vjp("x = torch.tensor([0., 1.], requires_grad=True)\n"
                "w = torch.tensor([2., 3.], requires_grad=True)\ny = x * w + x.sin()",
                "--symbolic")
    w = sympy.Symbol("w", real=True)
    assert same(r.symbolic["x"], w + sympy.cos(x))
    assert same(r.symbolic["w"], x)
    assert r.crosscheck == {"x": True, "w": True}


def test_linear_layer(ip, run_vjp):
    r = run_vjp("torch.manual_seed(0)\nlayer = torch.nn.Linear(2, 1)\n"
                "x = torch.ones(3, 2, requires_grad=True)\ny = layer(x)", "--symbolic --wrt x")
    weight = ip.user_ns["layer"].weight.detach()
    assert r.symbolic["x"].shape == (1, 2)
    got = torch.tensor([float(v) for v in r.symbolic["x"]])
    torch.testing.assert_close(got, weight.reshape(-1))
    assert r.crosscheck["x"] is True


def test_unseeded_random_constants_are_replayed_exactly(ip, run_vjp):
    r = run_vjp("layer = torch.nn.Linear(2, 1)\nx = torch.ones(3, 2, requires_grad=True)\n"
                "y = layer(x)", "--symbolic --wrt x")
    weight = ip.user_ns["layer"].weight.detach()
    got = torch.tensor([float(v) for v in r.symbolic["x"]])
    torch.testing.assert_close(got, weight.reshape(-1))
    assert r.crosscheck["x"] is True


def test_an_output_missing_from_the_record_says_where_to_compute_it():
    ns, _ = run_recorded("layer = torch.nn.Linear(2, 1)\nx = torch.ones(3, 2, requires_grad=True)"
                         "\ny = layer(x)")
    _, record = run_recorded("z = torch.ones(2) * 3", ns)  # a later cell, without y
    r = differentiate(ns["y"], {"x": ns["x"]})
    report = derive(r, record=record, namespace=ns)
    assert report.formulas["x"] is None
    assert report.note == ("symbolic: y was computed in an earlier cell; put its computation in "
                           "this cell to see the formula; numbers only")


def test_many_points_share_one_generic_formula(run_vjp):
    r = run_vjp("x = torch.linspace(-2, 2, 4096, requires_grad=True)\n"
                "y = torch.sigmoid(x) * x**2", "--symbolic")
    s = 1 / (1 + sympy.exp(-x))
    formula = r.symbolic["x"]
    for value in (-2.0, -0.3, 0.0, 1.7):
        want = (2 * x * s + x**2 * s * (1 - s)).subs(x, value).evalf()
        assert float(formula.subs(x, value).evalf()) == pytest.approx(float(want), rel=1e-12)
    assert r.crosscheck["x"] is True
    assert "4,096 points" in shown(r)


def test_per_point_constants_with_one_derivative(run_vjp):
    body = "x = torch.linspace(-2, 2, 50, requires_grad=True)\ny = x + torch.arange(50)"
    r = run_vjp(body, "--symbolic")
    assert r.symbolic["x"] == 1 and r.crosscheck["x"] is True
    _, _, report = derived(body)
    assert report.function is None  # f itself differs from point to point
    assert "f(x) =" not in words(report)


# -- element assignment, float32 underflow and non-finite values: agreement judged fairly ----------
@pytest.mark.parametrize("body, function", [
    ("x = torch.tensor([1., 2.], requires_grad=True)\ny = x.clone()\ny[0] = x[1]**2",
     lambda t: torch.stack([t[1] ** 2, t[1]])),
    ("x = torch.tensor([1., 2.], requires_grad=True)\ny = x**2\ny[1] = 0",
     lambda t: torch.stack([t[0] ** 2, 0 * t[1]])),
    ("x = torch.tensor([1., 2.], requires_grad=True)\ny = x**2\ny[0] = 5.0",
     lambda t: torch.stack([0 * t[0] + 5, t[1] ** 2])),
    ("x = torch.tensor([[1., 2.], [3., 4.]], requires_grad=True)\ny = x * 1\n"
     "y[0, 1] = x[1, 0] * x[0, 0]",
     lambda t: torch.stack([t[0, 0], t[1, 0] * t[0, 0], t[1, 0], t[1, 1]]).view(2, 2)),
])
def test_element_assignment_gives_the_formula(ip, run_vjp, body, function):
    from sympy.utilities.exceptions import SymPyDeprecationWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = run_vjp(body, "--symbolic --full")
    assert not [w for w in caught if issubclass(w.category, SymPyDeprecationWarning)]
    formula = r.symbolic["x"]
    assert formula is not None, shown(r)
    values = ip.user_ns["x"].detach().double()
    want = reference_jacobian(function, values).reshape(formula.shape)
    names = [s for s in sorted(formula.free_symbols, key=str)]
    n = values.numel()
    symbols = [sympy.Symbol(f"x_{i + 1}", real=True) for i in range(n)] if values.dim() == 1 else \
        [sympy.Symbol(f"x_{{{i + 1},{j + 1}}}", real=True) for i in range(2) for j in range(2)]
    assert set(names) <= set(symbols)
    got = formula.subs(dict(zip(symbols, values.reshape(-1).tolist()))).evalf()
    torch.testing.assert_close(torch.tensor(got.tolist(), dtype=torch.float64), want)
    assert r.crosscheck["x"] is True


def test_a_bug_in_the_symbolic_stage_never_fails_the_cell(run_vjp, monkeypatch):
    def broken(input):
        raise ZeroDivisionError("boom")

    monkeypatch.setitem(registry.RULES, "exp", broken)
    body = "x = torch.tensor([1., 2.], requires_grad=True)\ny = x.exp()"
    r = run_vjp(body, "--symbolic")
    assert r.symbolic["x"] is None and "x" not in r.crosscheck
    assert "boom" in shown(r)
    torch.testing.assert_close(r.derivatives["x"], torch.tensor([1.0, 2.0]).exp())
    note = derived(body)[2].note
    assert note.startswith("symbolic: ") and note.endswith("; numbers only") and "boom" in note

    monkeypatch.setattr(report_module, "symbolic_derivative", lambda *a: {}["missing"])
    r = run_vjp("x = torch.tensor([1., 2.], requires_grad=True)\ny = x ** 2", "--symbolic")
    assert r.symbolic["x"] is None and "KeyError" in shown(r) and "numbers only" in shown(r)


@pytest.mark.parametrize("body, function, values", [
    ("x = torch.tensor([-20., 20.], requires_grad=True)\ny = torch.sigmoid(x)",
     torch.sigmoid, [-20.0, 20.0]),
    ("A = torch.tensor([[1., 2], [3, 4], [5, 6]])\nx = torch.tensor([1., 2], requires_grad=True)\n"
     "y = torch.sigmoid(A @ x)",
     lambda t: torch.sigmoid(torch.tensor([[1., 2], [3, 4], [5, 6]], dtype=t.dtype) @ t),
     [1.0, 2.0]),
])
def test_float32_underflow_is_not_a_disagreement(run_vjp, body, function, values):
    r = run_vjp(body, "--symbolic")
    assert r.crosscheck["x"] is True, shown(r)
    assert "disagrees" not in shown(r)
    # the formula itself is right: in float64 it matches autograd to rounding
    want = reference_jacobian(function, torch.tensor(values, dtype=torch.float64))
    formula = r.symbolic["x"]
    if isinstance(formula, sympy.MatrixBase):
        subs = {sympy.Symbol(f"x_{i + 1}", real=True): v for i, v in enumerate(values)}
        got = torch.tensor(formula.subs(subs).evalf().tolist(), dtype=torch.float64)
    else:
        got = torch.tensor([float(formula.subs(x, v).evalf()) for v in values],
                           dtype=torch.float64)
        want = torch.diagonal(want)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("body", [
    "x = torch.tensor([-20., 20.], requires_grad=True)\ny = torch.sigmoid(x)",
    "A = torch.tensor([[1., 2], [3, 4], [5, 6]])\nx = torch.tensor([1., 2], requires_grad=True)\n"
    "y = torch.sigmoid(A @ x)",
])
def test_a_wrong_number_is_still_flagged_next_to_underflow(body):
    ns, record = run_recorded(body)
    result = differentiate(ns["y"], {"x": ns["x"]})
    numbers = result.inputs["x"].derivatives.clone()
    numbers[(0,) * numbers.dim()] += 1e-3  # far above float32 rounding
    result.inputs["x"].derivatives = numbers
    assert derive(result, record=record, namespace=ns).crosscheck["x"] is False


def test_differentiate_puts_the_variables_axes_after_the_entries():
    a, b, c = sympy.symbols("a b c")
    y = np.array([a * b, b * c**2], dtype=object)
    v = np.array([a, b, c], dtype=object)
    first = symbolic_formulas.differentiate(y, v)
    assert first.shape == (2, 3) and first[0, 0] == b and first[1, 2] == 2 * b * c
    second = symbolic_formulas.differentiate(y, v, 2)  # [i, j, k]: ∂²y_i / ∂v_j ∂v_k
    assert second.shape == (2, 3, 3) and second[1, 1, 2] == 2 * c and second[1, 2, 2] == 2 * b
    assert second[0, 0, 1] == second[0, 1, 0] == 1 and second[0, 2, 2] == 0
    scalar = symbolic_formulas.differentiate(np.array(a**3, dtype=object),
                                             np.array(a, dtype=object), 2)
    assert scalar.shape == () and scalar[()] == 6 * a
    empty = symbolic_formulas.differentiate(np.empty((2, 0), dtype=object), v)
    assert empty.shape == (2, 0, 3)


def test_derive_gives_second_derivatives_for_a_hessian_result():
    from vjp_magic.core.hessian import second_derivatives

    body = "x = torch.linspace(0.5, 2, 3, requires_grad=True)\ny = torch.stack([-x**3, 5*x])"
    ns, record = run_recorded(body)
    h = second_derivatives(ns["y"], {"x": ns["x"]})
    report = derive(h, record=record, namespace=ns)
    assert report.formulas == {"x": sympy.Matrix([[-6 * x], [0]])}  # (-x³)″, (5x)″
    assert report.crosscheck == {"x": True}
    assert "f_k″(x) =" in words(report)


def test_compare_treats_inf_and_nan_consistently():
    got = torch.tensor([[math.inf], [math.nan], [math.inf], [math.inf], [1.0]]).numpy()
    compared = crosscheck.compare(
        got, torch.tensor([[math.inf], [math.nan], [-math.inf], [1.0], [1.0]]).numpy(), 5,
        torch.float32)
    # opposite infinities disagree; inf where autograd gives 1 is undefined, not a disagreement
    assert (compared.agree, compared.mismatches, compared.undefined) == (False, 1, 1)
    assert compared.undefined_side == "formula" and math.isnan(compared.worst)
    compared = crosscheck.compare(got[[0, 1, 4]], got[[0, 1, 4]], 3, torch.float64)
    assert (compared.agree, compared.mismatches, compared.undefined) == (True, 0, 0)
    compared = crosscheck.compare(got[[4, 4]], got[[3, 4]], 2, torch.float64)
    assert (compared.agree, compared.undefined, compared.undefined_side) == (True, 1, "autograd")


def test_log_and_sqrt_at_zero_leak_no_numpy_warnings(run_vjp):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = run_vjp("x = torch.tensor([0., 1.], requires_grad=True)\n"
                    "y = torch.sqrt(x) + torch.log(x)", "--symbolic")
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)], \
        [str(w.message) for w in caught]
    assert same(r.symbolic["x"], 1 / x + 1 / (2 * sympy.sqrt(x)))
    assert r.crosscheck["x"] is True  # inf at 0 on both sides


def _double_subscript(tex: str) -> bool:
    """True if some subscript is followed directly by another (TeX's "Double subscript")."""
    i = 0
    while i < len(tex):
        if tex[i] == "_" and (i == 0 or tex[i - 1] != "\\"):
            j = i + 1
            if j < len(tex) and tex[j] == "{":
                depth = 0
                while j < len(tex):
                    depth += {"{": 1, "}": -1}.get(tex[j], 0)
                    j += 1
                    if depth == 0:
                        break
            elif j < len(tex) and tex[j] == "\\":
                j += 1
                while j < len(tex) and tex[j].isalpha():
                    j += 1
            else:
                j += 1
            if tex[j:j + 1] == "_":
                return True
            i = j
        else:
            i += 1
    return False


# -- symbol names, names updated from their own value, the time budget -----------------------------
@pytest.mark.parametrize("name, entry", [
    ("x_1", r"x_{1;\,1,2}"), ("w_2", r"w_{2;\,1,2}"), ("x_in", r"x_{\mathrm{in};\,1,2}"),
    ("x__", r"{\mathtt{x\_\_}}_{1,2}"), ("α", r"\alpha_{1,2}"), ("x", r"x_{1,2}"),
])
def test_symbol_names_are_valid_latex(name, entry):
    _, _, report = derived(f"{name} = torch.ones(2, 2, requires_grad=True)\ny = {name} ** 2",
                           name, full=True)
    tex = markdown.render(Document(report.sections()))
    assert entry in tex, tex
    assert not _double_subscript(tex), tex
    assert_safe(report)
    assert report.crosscheck[name] is True
    assert _double_subscript(r"x_1_{1,1}") and _double_subscript(r"x_{in}_{1,1}")


def test_inputs_whose_symbols_would_clash_are_named(run_vjp):
    r = run_vjp("x = torch.tensor([1., 2.], requires_grad=True)\n"
                "x_1 = torch.tensor(3., requires_grad=True)\ny = x * x_1", "--symbolic")
    assert r.symbolic["x"] is None
    assert "would share the symbol x_1" in shown(r)


def test_a_name_updated_from_its_own_earlier_value_is_replayed(ip, run_ok, run_vjp):
    run_ok("c = torch.tensor(2.)")
    r = run_vjp("x = torch.tensor([1., 2.], requires_grad=True)\nc = c * 2\ny = c * x**2",
                "--symbolic")
    assert same(r.symbolic["x"], 8 * x)
    assert r.crosscheck["x"] is True
    torch.testing.assert_close(ip.user_ns["c"], torch.tensor(4.0))  # the cell ran once


def test_a_cell_with_huge_expressions_comes_back_in_time(run_vjp, monkeypatch):
    monkeypatch.setattr(report_module, "RUN_SECONDS", 1.0)
    start = time.monotonic()
    r = run_vjp("torch.manual_seed(0)\nx = torch.randn(6, requires_grad=True)\ny = x\n"
                "for _ in range(6):\n    y = torch.sin(torch.softmax(y, 0))", "--symbolic")
    elapsed = time.monotonic() - start
    assert r.symbolic["x"] is None
    assert "gave up after 1 s" in shown(r)
    assert elapsed < 2 * 1.0 + display.RENDER_SECONDS + 2.0, elapsed
    assert r.derivatives["x"].shape == (6, 6) or r.jacobian("x").shape == (6, 6)


# -- points where the derivative is undefined: counted apart, never a disagreement -----------------
@pytest.mark.parametrize("expression", ["torch.linalg.norm(x)", "x.norm()"])
def test_the_norm_at_zero_is_undefined_not_a_disagreement(run_vjp, expression):
    r = run_vjp(f"x = torch.zeros(3, requires_grad=True)\ny = {expression}", "--symbolic")
    norm = sympy.sqrt(x1**2 + x2**2 + x3**2)
    assert same(r.symbolic["x"], [[x1 / norm, x2 / norm, x3 / norm]])
    assert r.crosscheck["x"] is True
    text = shown(r)
    assert "undefined at the point" in text and "disagrees" not in text


def test_undefined_points_are_counted_apart_from_the_others(run_vjp):
    r = run_vjp("x = torch.tensor([[0., 0.], [3., 4.], [1., 0.]], requires_grad=True)\n"
                "y = torch.linalg.norm(x, dim=1)", "--symbolic")
    norm = sympy.sqrt(x1**2 + x2**2)
    assert same(r.symbolic["x"], [[x1 / norm, x2 / norm]])
    assert r.crosscheck["x"] is True
    assert "agrees with autograd at 2 of 3 points; undefined at the other 1" in shown(r)
