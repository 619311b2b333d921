"""``--symbolic``: formulas from SymPy for the tutorial's examples, cross-checked with autograd.

Expected formulas are the closed forms of the mathematics; numeric expectations come from
``torch.autograd.functional.jacobian``, never from the code under test.
"""
from __future__ import annotations

import math
import re
import time
import warnings

import pytest
import sympy
import torch
from torch.autograd.functional import jacobian as reference_jacobian

from conftest import run_ok, run_vjp
from vjp_magic import differentiate
from vjp_magic.symbolic import derive as symbolic
from vjp_magic.run.guard import keep_graphs
from vjp_magic.run.record import recording

x, x1, x2, x3, x4 = (sympy.Symbol(n, real=True) for n in ("x", "x_1", "x_2", "x_3", "x_4"))


def same(actual, expected) -> bool:
    """Mathematically equal (SymPy simplify), scalars and matrices alike."""
    if isinstance(expected, list):
        expected = sympy.Matrix(expected)
    if isinstance(expected, sympy.MatrixBase):
        if not isinstance(actual, sympy.MatrixBase) or actual.shape != expected.shape:
            return False
        return all(sympy.simplify(a - b) == 0 for a, b in zip(actual, expected))
    return not isinstance(actual, sympy.MatrixBase) and sympy.simplify(actual - expected) == 0


def symbolic_section(result):
    return next(s for s in result.sections if isinstance(s, symbolic.SymbolicSection))


def run_recorded(body: str, ns: dict | None = None):
    """Run ``body`` once, as the magic does: graphs kept, torch calls recorded."""
    ns = {"torch": torch, "print": lambda *a, **k: None} if ns is None else ns
    with keep_graphs(), recording() as record:
        exec(body, ns)  # noqa: S102
    return ns, record


# -- the tutorial's examples, verbatim ------------------------------------------------------------
TUTORIAL = {
    "single point": ("""
import torch
x = torch.tensor(1., requires_grad=True)
y = x**2
y.backward()
print(f"Derivative at a single point:")
print(x.grad.data)
""", 2 * x),
    "multiple points": ("""
x = torch.linspace(-2, 2, 5, requires_grad=True)
y = x**2
gradient = torch.ones_like(y)
y.backward(gradient)
print("Derivative at multiple points:")
print(x.grad.data)
""", 2 * x),
    "sum trick": ("""
x = torch.linspace(-2, 2, 5, requires_grad=True)
y = (x**2).sum()
y.backward()
""", [[2 * sympy.Symbol(f"x_{i}", real=True) for i in range(1, 6)]]),
    "scalar multivariate, single point": ("""
x = torch.tensor([-1., 2.], requires_grad=True)
w = torch.tensor([3., 5.])
y = (x*x*w).sum()
y.backward()
x.grad
""", [[6 * x1, 10 * x2]]),
    "scalar multivariate, multiple points": ("""
x = torch.arange(6, dtype=float).view(3, 2).requires_grad_(True)
w = torch.tensor([-1, 1])
y = (x*x*w).sum(1)
v = torch.ones_like(y)
y.backward(v)
x.grad
""", [[-2 * x1, 2 * x2]]),
    "vector-valued univariate, single point": ("""
import torch
x = torch.tensor(1., requires_grad=True)
y = torch.stack([-x**3, 5*x])

v1 = torch.tensor([1., 0.])
y.backward(v1, retain_graph=True)

print(f"f_1'({x.data.item()}) = {x.grad.data.item():>4}")

x.grad.zero_()

v2 = torch.tensor([0., 1.])
y.backward(v2)
print(f"f_2'({x.data.item()}) = {x.grad.data.item():>4}")
""", [[-3 * x**2], [5]]),
    "vector-valued univariate, multiple points": ("""
import torch
import itertools
x = torch.arange(3, dtype=float, requires_grad=True)
y = torch.stack([-x**3, 5*x])

ranges = [range(_) for _ in y.shape]

v1 = torch.tensor([1. if i == 0 else 0. for i, j in itertools.product(*ranges)]).view(*y.shape)
y.backward(v1, retain_graph=True)
print(f"Derivative of f_1(x)=-3x^2 at the points {tuple(x.data.view(-1).tolist())}:")
print(x.grad)

x.grad.zero_()

v2 = torch.tensor([1. if i == 1 else 0. for i, j in itertools.product(*ranges)]).view(*y.shape)
y.backward(v2)
print(f"\\nDerivative of f_2(x)=5x at the points {tuple(x.data.view(-1).tolist())}:")
print(x.grad)
""", [[-3 * x**2], [5]]),
    "vector-valued multivariate, single point": ("""
import torch
x = torch.arange(4, dtype=float, requires_grad=True)
y = torch.stack([x.sum(), (x**2).sum()])

print(f"x                 : {tuple(x.data.tolist())}")
print(f"y = (y_1, y_2)    : {tuple(y.data.tolist())}")

v1 = torch.tensor([1., 0.])
y.backward(v1, retain_graph=True)
print(f"gradient of y_1   : {tuple(x.grad.data.tolist())}")

x.grad.zero_()

v2 = torch.tensor([0., 1.])
y.backward(v2)
print(f"gradient of y_2   : {tuple(x.grad.data.tolist())}")
""", [[1, 1, 1, 1], [2 * x1, 2 * x2, 2 * x3, 2 * x4]]),
    "vector-valued multivariate, multiple points": ("""
import torch
import itertools
x = torch.arange(4*3, dtype=float).view(-1,4).requires_grad_(True)
y = torch.stack([x.sum(1), (x**2).sum(1)])
print("x:")
print(x.data)
ranges = [range(_) for _ in y.shape]
v1 = torch.tensor([1. if i == 0 else 0. for i, j in itertools.product(*ranges)]).view(*y.shape)
y.backward(v1, retain_graph=True)
print(x.grad)
x.grad.zero_()
v2 = torch.tensor([1. if i == 1 else 0. for i, j in itertools.product(*ranges)]).view(*y.shape)
y.backward(v2)
print(x.grad)
""", [[1, 1, 1, 1], [2 * x1, 2 * x2, 2 * x3, 2 * x4]]),
    "matrix-valued univariate": ("""
import torch
import itertools
x = torch.tensor(1., requires_grad=True)
y = torch.stack([x**i for i in range(6)]).view(3,2)
ranges = [range(_) for _ in y.shape]
derivatives = torch.zeros_like(y)
for i, j in itertools.product(*ranges):
    v = torch.zeros_like(y)
    v[i,j] = 1.
    if x.grad is not None: x.grad.zero_()
    y.backward(v, retain_graph=True)
    derivatives[i,j] = x.grad.item()
""", [[0, 1], [2 * x, 3 * x**2], [4 * x**3, 5 * x**4]]),
    "matrix input, scalar output": ("""
x = torch.arange(6, dtype=float).view(3,2).requires_grad_(True)
y = (x**2).sum()
v = torch.ones_like(y)
y.backward(v)
""", [[2 * sympy.Symbol(f"x_{{{i},{j}}}", real=True) for j in (1, 2)] for i in (1, 2, 3)]),
}


@pytest.mark.parametrize("case", list(TUTORIAL))
def test_tutorial_closed_forms(ip, case):
    cell, expected = TUTORIAL[case]
    r = run_vjp(ip, cell, "--symbolic")
    assert same(r.symbolic["x"], expected), r.symbolic["x"]
    assert r.symbolic_check["x"] is True


@pytest.mark.parametrize("make_x", [
    "torch.tensor(1., requires_grad=True)",
    "torch.tensor([1.], requires_grad=True)",
    "torch.tensor([[1.]], requires_grad=True)",
    "torch.linspace(-1, 1, 5, requires_grad=True)",
    "torch.linspace(-2, 2, 5).view(-1,1).requires_grad_(True)",
])
def test_examples_revisited_show_2x_once(ip, make_x):
    r = run_vjp(ip, f"""
import torch
x = {make_x}
y = x**2
v = torch.ones_like(y)
y.backward(v)
print(f"Shape of x         : {{tuple(x.shape)}}")
""", "--symbolic")
    formula = r.symbolic["x"]
    if isinstance(formula, sympy.MatrixBase):  # a 1 x 1 layout is fine too
        assert formula.shape == (1, 1)
        formula = formula[0]
    assert same(formula, 2 * x)
    assert r.symbolic_check["x"] is True


def test_generic_point_is_shown_once_in_latex(ip):
    cell, _ = TUTORIAL["vector-valued univariate, multiple points"]
    r = run_vjp(ip, cell, "--symbolic")
    tex = r._repr_latex_()
    assert tex.count("x^{2}") == 1  # -3x^2 once, not once per point
    assert "3 points" in tex
    # the formula comes before the numeric matrices
    assert tex.index("x^{2}") < tex.index("gradient argument")


def test_integral_float_constants_become_integers(ip):
    r = run_vjp(ip, "x = torch.linspace(1, 2, 3, requires_grad=True)\ny = 2.0 * x ** 3.0 - 0.5 * x",
                "--symbolic")
    formula = r.symbolic["x"]
    assert not formula.atoms(sympy.Float), formula
    assert same(formula, 6 * x**2 - sympy.Rational(1, 2))


# -- activations against autograd ------------------------------------------------------------------
def test_sigmoid_and_tanh_rows_match_autograd(ip):
    r = run_vjp(ip, "x = torch.linspace(-3, 3, 7, dtype=torch.float64, requires_grad=True)\n"
                    "y = torch.sigmoid(x) + torch.tanh(2 * x)", "--symbolic")
    formula = r.symbolic["x"]
    s = 1 / (1 + sympy.exp(-x))
    expected = s * (1 - s) + 2 * (1 - sympy.tanh(2 * x) ** 2)
    values = torch.linspace(-3, 3, 7, dtype=torch.float64)
    ref = torch.diagonal(reference_jacobian(lambda t: torch.sigmoid(t) + torch.tanh(2 * t), values))
    for value, want in zip(values.tolist(), ref.tolist()):
        assert float(formula.subs(x, value).evalf()) == pytest.approx(want, rel=1e-12)
        assert float(expected.subs(x, value).evalf()) == pytest.approx(want, rel=1e-12)
    assert r.symbolic_check["x"] is True


def test_softmax_rows_match_autograd(ip):
    r = run_vjp(ip, "torch.manual_seed(0)\n"
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
    assert r.symbolic_check["x"] is True


def test_relu_derivative_is_zero_at_zero_like_torch(ip):
    r = run_vjp(ip, "x = torch.tensor([-1., 0., 2.], requires_grad=True)\ny = torch.relu(x)",
                "--symbolic")
    assert same(r.symbolic["x"], sympy.Heaviside(x, 0))
    assert r.symbolic["x"].subs(x, 0) == 0
    assert r.symbolic_check["x"] is True


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
def test_each_rule_matches_autograd(ip, expression):
    values = torch.tensor([0.3, 1.2, 0.7, 2.0, 0.9, 1.5], dtype=torch.float64)
    ip.user_ns["t"] = values.clone().requires_grad_(True)
    r = run_ok(ip, f"%jacobian --symbolic {expression} wrt t")
    formula = r.symbolic["t"]
    assert formula is not None, symbolic_section(r).text()
    function = eval(f"lambda t: {expression}", {"torch": torch})  # noqa: S307
    want = reference_jacobian(function, values).reshape(-1, 6)
    subs = {sympy.Symbol(f"t_{i + 1}", real=True): v for i, v in enumerate(values.tolist())}
    got = sympy.Matrix(formula).subs(subs).evalf()
    torch.testing.assert_close(torch.tensor(got.tolist(), dtype=torch.float64), want)
    assert r.symbolic_check["t"] is True


def test_jacobian_symbolic_on_an_expression(ip):
    ip.user_ns["z"] = torch.tensor([1.0, 2.0], requires_grad=True)
    r = run_ok(ip, "%jacobian --symbolic torch.stack([z.prod(), (z**2).sum()]) wrt z")
    z1, z2 = sympy.symbols("z_1 z_2", real=True)
    assert same(r.symbolic["z"], [[z2, z1], [2 * z1, 2 * z2]])
    assert r.symbolic_check["z"] is True
    assert "J = " in r._repr_latex_()


def test_jacobian_symbolic_of_a_stored_tensor_says_why(ip):
    run_ok(ip, "z = torch.tensor([1.0, 2.0], requires_grad=True)\nw = z ** 3")
    r = run_ok(ip, "%jacobian --symbolic w z")
    assert r.symbolic["z"] is None
    assert "w is a stored tensor" in symbolic_section(r).text()
    torch.testing.assert_close(r.jacobian("z"), torch.diag(torch.tensor([3.0, 12.0])))


# -- graceful degradation -------------------------------------------------------------------------
@pytest.mark.parametrize("line, op", [
    ("y = torch.sort(x ** 2).values", "torch.sort"),
    ("y = (x ** 2).sort().values", "Tensor.sort"),
    ("y = torch.cumsum(x, 0)", "torch.cumsum"),
])
def test_unsupported_op_gives_one_line_and_the_numbers(ip, line, op):
    r = run_vjp(ip, f"x = torch.tensor([2., -1., 0.5], requires_grad=True)\n{line}", "--symbolic")
    assert r.symbolic["x"] is None and "x" not in r.symbolic_check
    note = symbolic_section(r).text()
    assert note == f"symbolic: {op} is not supported; numbers only"
    assert note in repr(r)
    assert f"{op} is not supported" in r._repr_latex_()
    y = ip.user_ns["y"]
    source = line.split("=", 1)[1]
    want = reference_jacobian(lambda t: eval(source, {"torch": torch, "x": t}),  # noqa: S307
                              ip.user_ns["x"].detach())
    torch.testing.assert_close(r.jacobian("x"), want)
    assert y.shape == (3,)


@pytest.mark.parametrize("cell, words", [
    ("x = torch.linspace(0.1, 1, 3, requires_grad=True)\ny = x * torch.arange(3)",
     "differs from point to point"),
    ("x = torch.linspace(0, 1, 5000, requires_grad=True)\ny = x ** 2", "5,000 entries"),
    ("x = torch.ones(2, requires_grad=True)\ny = x.detach() * x", "Tensor.detach"),
])
def test_what_cannot_be_followed_is_named(ip, cell, words):
    r = run_vjp(ip, cell, "--symbolic")
    assert r.symbolic["x"] is None
    assert words in symbolic_section(r).text()


def test_an_intermediate_from_an_earlier_cell_is_named(ip):
    run_ok(ip, "x = torch.tensor([1., 2.], requires_grad=True)\nh = x.exp()")
    r = run_vjp(ip, "y = h * 2", "--symbolic --wrt x")
    assert r.symbolic["x"] is None
    assert "h was computed from the inputs in an earlier cell" in symbolic_section(r).text()


def test_out_of_time_degrades(ip, monkeypatch):
    monkeypatch.setattr(symbolic, "RUN_SECONDS", 0.2)
    r = run_vjp(ip, "x = torch.linspace(0, 1, 3000, requires_grad=True)\ny = x\n"
                    "for _ in range(100):\n    y = torch.sin(y) * x", "--symbolic")
    assert r.symbolic["x"] is None
    assert "gave up after 0.2 s" in symbolic_section(r).text()


def test_disagreement_with_autograd_is_a_visible_warning(ip):
    ns, record = run_recorded("x = torch.linspace(-1, 1, 4, requires_grad=True)\ny = x ** 3")
    result = differentiate(ns["y"], {"x": ns["x"]})
    result.inputs["x"].derivatives = result.inputs["x"].derivatives + torch.tensor([0, 0, 1, 0])
    symbolic.attach(result, record=record, namespace=ns)
    assert same(result.symbolic["x"], 3 * x**2)
    assert result.symbolic_check["x"] is False
    assert "warning: the formula for x disagrees with autograd at 1 of 4 points" in repr(result)
    assert "warning" in result._repr_latex_()


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


@pytest.mark.parametrize("case", list(TUTORIAL))
def test_attach_leaves_the_namespace_and_grads_alone(case):
    cell, _ = TUTORIAL[case]
    ns, record = run_recorded(cell)  # as the magic does: the cell's own backward fills x.grad
    result = differentiate(ns["y"], {"x": ns["x"]})
    before = snapshot(ns)
    symbolic.attach(result, record=record, namespace=ns)
    assert record.calls == []  # released
    assert result.symbolic_check["x"] is True
    assert_same_state(before, snapshot(ns))


def test_magic_namespace_grad_and_random_state_match_a_plain_run(ip):
    cell = """
torch.manual_seed(1)
w = torch.randn(3)
x = torch.linspace(-1, 1, 3, requires_grad=True)
y = (x * w.sum()).exp()
y.backward(torch.ones_like(y))
"""
    run_vjp(ip, cell)
    plain = snapshot(ip.user_ns)
    plain_draw = torch.rand(1)
    plain_names = {n for n in ip.user_ns if not n.startswith("_")}
    r = run_vjp(ip, cell, "--symbolic")
    assert r.symbolic_check["x"] is True
    torch.testing.assert_close(torch.rand(1), plain_draw)  # nothing drew random numbers again
    assert {n for n in ip.user_ns if not n.startswith("_")} == plain_names
    x_grad = ip.user_ns["x"].grad
    torch.testing.assert_close(x_grad, plain["x"][2])  # the cell's own backward, once


def test_in_place_changes_to_earlier_objects_happen_once(ip):
    run_ok(ip, "w = torch.ones(3)\nacc = []")
    r = run_vjp(ip, "w.add_(1)\nacc.append(1)\nx = torch.ones(3, requires_grad=True)\ny = x * w",
                "--symbolic")
    torch.testing.assert_close(ip.user_ns["w"], torch.full((3,), 2.0))
    assert ip.user_ns["acc"] == [1]
    # Nothing runs again: the replay reads w as the cell used it (after its one add_).
    assert same(r.symbolic["x"], 2)
    assert r.symbolic_check["x"] is True
    assert "disagrees" not in repr(r)


# -- rendering limits ------------------------------------------------------------------------------
FORBIDDEN = (r"\newcommand", r"\boxed", r"\verb", r"\texttt")


def assert_safe_latex(tex: str) -> None:
    assert tex.count("$$") % 2 == 0
    for display in re.findall(r"\$\$(.*?)\$\$", tex, flags=re.S):
        assert len(display) < 4000
    for token in FORBIDDEN:
        assert token not in tex


def test_large_formula_is_not_typeset_but_still_checked(ip):
    r = run_vjp(ip, "x = torch.linspace(1, 2, 8, requires_grad=True)\ny = x * x.sum()",
                "--symbolic")
    assert r.symbolic["x"].shape == (8, 8)
    assert r.symbolic_check["x"] is True
    tex = r._repr_latex_()
    assert "symbolic form too large (8 x 8; shown up to 6 x 6)" in tex
    assert_safe_latex(tex)


@pytest.mark.parametrize("case", list(TUTORIAL))
def test_tutorial_latex_is_safe(ip, case):
    r = run_vjp(ip, TUTORIAL[case][0], "--symbolic")
    assert_safe_latex(r._repr_latex_())


def test_multiple_inputs_each_get_a_formula(ip):
    r = run_vjp(ip, "x = torch.tensor([0., 1.], requires_grad=True)\n"
                    "w = torch.tensor([2., 3.], requires_grad=True)\ny = x * w + x.sin()",
                "--symbolic")
    w = sympy.Symbol("w", real=True)
    assert same(r.symbolic["x"], w + sympy.cos(x))
    assert same(r.symbolic["w"], x)
    assert r.symbolic_check == {"x": True, "w": True}


def test_linear_layer(ip):
    r = run_vjp(ip, "torch.manual_seed(0)\nlayer = torch.nn.Linear(2, 1)\n"
                    "x = torch.ones(3, 2, requires_grad=True)\ny = layer(x)", "--symbolic --wrt x")
    weight = ip.user_ns["layer"].weight.detach()
    assert r.symbolic["x"].shape == (1, 2)
    got = torch.tensor([float(v) for v in r.symbolic["x"]])
    torch.testing.assert_close(got, weight.reshape(-1))
    assert r.symbolic_check["x"] is True


def test_unseeded_random_constants_are_replayed_exactly(ip):
    r = run_vjp(ip, "layer = torch.nn.Linear(2, 1)\nx = torch.ones(3, 2, requires_grad=True)\n"
                    "y = layer(x)", "--symbolic --wrt x")
    weight = ip.user_ns["layer"].weight.detach()
    got = torch.tensor([float(v) for v in r.symbolic["x"]])
    torch.testing.assert_close(got, weight.reshape(-1))
    assert r.symbolic_check["x"] is True


def test_an_output_missing_from_the_record_says_where_to_compute_it():
    ns, _ = run_recorded("layer = torch.nn.Linear(2, 1)\nx = torch.ones(3, 2, requires_grad=True)"
                         "\ny = layer(x)")
    _, record = run_recorded("z = torch.ones(2) * 3", ns)  # a later cell, without y
    r = differentiate(ns["y"], {"x": ns["x"]})
    symbolic.attach(r, record=record, namespace=ns)
    assert r.symbolic["x"] is None
    assert symbolic_section(r).text() == ("symbolic: y was computed in an earlier cell; put its "
                                          "computation in this cell to see the formula; "
                                          "numbers only")


def test_many_points_share_one_generic_formula(ip):
    r = run_vjp(ip, "x = torch.linspace(-2, 2, 4096, requires_grad=True)\n"
                    "y = torch.sigmoid(x) * x**2", "--symbolic")
    s = 1 / (1 + sympy.exp(-x))
    formula = r.symbolic["x"]
    for value in (-2.0, -0.3, 0.0, 1.7):
        want = (2 * x * s + x**2 * s * (1 - s)).subs(x, value).evalf()
        assert float(formula.subs(x, value).evalf()) == pytest.approx(float(want), rel=1e-12)
    assert r.symbolic_check["x"] is True
    assert "4,096 points" in repr(r)


def test_per_point_constants_with_one_derivative(ip):
    r = run_vjp(ip, "x = torch.linspace(-2, 2, 50, requires_grad=True)\ny = x + torch.arange(50)",
                "--symbolic")
    assert r.symbolic["x"] == 1 and r.symbolic_check["x"] is True
    assert "f(x) =" not in symbolic_section(r).text()  # f itself differs from point to point


# -- QA regressions --------------------------------------------------------------------------------
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
def test_element_assignment_gives_the_formula(ip, body, function):
    from sympy.utilities.exceptions import SymPyDeprecationWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = run_vjp(ip, body, "--symbolic --full")
    assert not [w for w in caught if issubclass(w.category, SymPyDeprecationWarning)]
    formula = r.symbolic["x"]
    assert formula is not None, symbolic_section(r).text()
    values = ip.user_ns["x"].detach().double()
    want = reference_jacobian(function, values).reshape(formula.shape)
    names = [s for s in sorted(formula.free_symbols, key=str)]
    n = values.numel()
    symbols = [sympy.Symbol(f"x_{i + 1}", real=True) for i in range(n)] if values.dim() == 1 else \
        [sympy.Symbol(f"x_{{{i + 1},{j + 1}}}", real=True) for i in range(2) for j in range(2)]
    assert set(names) <= set(symbols)
    got = formula.subs(dict(zip(symbols, values.reshape(-1).tolist()))).evalf()
    torch.testing.assert_close(torch.tensor(got.tolist(), dtype=torch.float64), want)
    assert r.symbolic_check["x"] is True


def test_a_bug_in_the_symbolic_stage_never_fails_the_cell(ip, monkeypatch):
    from vjp_magic.symbolic import symtensor

    def broken(input):
        raise ZeroDivisionError("boom")

    monkeypatch.setitem(symtensor.RULES, "exp", broken)
    r = run_vjp(ip, "x = torch.tensor([1., 2.], requires_grad=True)\ny = x.exp()", "--symbolic")
    assert r.symbolic["x"] is None and "x" not in r.symbolic_check
    note = symbolic_section(r).text()
    assert note.startswith("symbolic: ") and note.endswith("; numbers only") and "boom" in note
    torch.testing.assert_close(r.derivatives["x"], torch.tensor([1.0, 2.0]).exp())

    monkeypatch.setattr(symbolic, "_formula", lambda *a: {}["missing"])
    r = run_vjp(ip, "x = torch.tensor([1., 2.], requires_grad=True)\ny = x ** 2", "--symbolic")
    assert r.symbolic["x"] is None and "KeyError" in symbolic_section(r).text()
    assert "numbers only" in r._repr_latex_()


@pytest.mark.parametrize("body, function, values", [
    ("x = torch.tensor([-20., 20.], requires_grad=True)\ny = torch.sigmoid(x)",
     torch.sigmoid, [-20.0, 20.0]),
    ("A = torch.tensor([[1., 2], [3, 4], [5, 6]])\nx = torch.tensor([1., 2], requires_grad=True)\n"
     "y = torch.sigmoid(A @ x)",
     lambda t: torch.sigmoid(torch.tensor([[1., 2], [3, 4], [5, 6]], dtype=t.dtype) @ t),
     [1.0, 2.0]),
])
def test_float32_underflow_is_not_a_disagreement(ip, body, function, values):
    r = run_vjp(ip, body, "--symbolic")
    assert r.symbolic_check["x"] is True, symbolic_section(r).text()
    assert "disagrees" not in repr(r)
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
    symbolic.attach(result, record=record, namespace=ns)
    assert result.symbolic_check["x"] is False


def test_compare_treats_inf_and_nan_consistently():
    got = torch.tensor([[math.inf], [math.nan], [math.inf], [math.inf], [1.0]]).numpy()
    compared = symbolic._compare(
        got, torch.tensor([[math.inf], [math.nan], [-math.inf], [1.0], [1.0]]).numpy(), 5,
        torch.float32)
    # opposite infinities disagree; inf where autograd gives 1 is undefined, not a disagreement
    assert (compared.agree, compared.mismatches, compared.undefined) == (False, 1, 1)
    assert compared.undefined_side == "formula" and math.isnan(compared.worst)
    compared = symbolic._compare(got[[0, 1, 4]], got[[0, 1, 4]], 3, torch.float64)
    assert (compared.agree, compared.mismatches, compared.undefined) == (True, 0, 0)
    compared = symbolic._compare(got[[4, 4]], got[[3, 4]], 2, torch.float64)
    assert (compared.agree, compared.undefined, compared.undefined_side) == (True, 1, "autograd")


def test_log_and_sqrt_at_zero_leak_no_numpy_warnings(ip):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = run_vjp(ip, "x = torch.tensor([0., 1.], requires_grad=True)\n"
                        "y = torch.sqrt(x) + torch.log(x)", "--symbolic")
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)], \
        [str(w.message) for w in caught]
    assert same(r.symbolic["x"], 1 / x + 1 / (2 * sympy.sqrt(x)))
    assert r.symbolic_check["x"] is True  # inf at 0 on both sides


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


@pytest.mark.parametrize("name, entry", [
    ("x_1", r"x_{1;\,1,2}"), ("w_2", r"w_{2;\,1,2}"), ("x_in", r"x_{\mathrm{in};\,1,2}"),
    ("x__", r"{\mathtt{x\_\_}}_{1,2}"), ("α", r"\alpha_{1,2}"), ("x", r"x_{1,2}"),
])
def test_symbol_names_are_valid_latex(ip, name, entry):
    r = run_vjp(ip, f"{name} = torch.ones(2, 2, requires_grad=True)\ny = {name} ** 2",
                "--symbolic --full")
    tex = symbolic_section(r).latex()
    assert entry in tex, tex
    assert not _double_subscript(tex), tex
    assert r.symbolic_check[name] is True
    assert _double_subscript(r"x_1_{1,1}") and _double_subscript(r"x_{in}_{1,1}")


def test_inputs_whose_symbols_would_clash_are_named(ip):
    r = run_vjp(ip, "x = torch.tensor([1., 2.], requires_grad=True)\n"
                    "x_1 = torch.tensor(3., requires_grad=True)\ny = x * x_1", "--symbolic")
    assert r.symbolic["x"] is None
    assert "would share the symbol x_1" in symbolic_section(r).text()


def test_a_name_updated_from_its_own_earlier_value_is_replayed(ip):
    run_ok(ip, "c = torch.tensor(2.)")
    r = run_vjp(ip, "x = torch.tensor([1., 2.], requires_grad=True)\nc = c * 2\ny = c * x**2",
                "--symbolic")
    assert same(r.symbolic["x"], 8 * x)
    assert r.symbolic_check["x"] is True
    torch.testing.assert_close(ip.user_ns["c"], torch.tensor(4.0))  # the cell ran once


def test_deadline_interrupts_a_long_call_and_restores_the_previous_handler():
    import signal
    import threading

    from vjp_magic.symbolic.symtensor import OutOfTime, deadline

    def spin(seconds):
        start = time.monotonic()
        while time.monotonic() - start < seconds:  # no spend() inside: one long SymPy call
            pass

    def mine(signum, frame):
        raise AssertionError("the previous handler must not run")

    previous = signal.signal(signal.SIGALRM, mine)
    try:
        start = time.monotonic()
        with pytest.raises(OutOfTime), deadline(0.2):
            spin(3.0)
        assert time.monotonic() - start < 1.5
        assert signal.getsignal(signal.SIGALRM) is mine
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
        with deadline(5.0):  # finishing in time leaves no timer running
            spin(0.05)
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
        assert signal.getsignal(signal.SIGALRM) is mine
    finally:
        signal.signal(signal.SIGALRM, previous)
    errors = []

    def elsewhere():  # off the main thread: no signals, checked between ops as before
        try:
            with deadline(0.05):
                spin(0.1)
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join()
    assert errors == []


def test_a_cell_with_huge_expressions_comes_back_in_time(ip, monkeypatch):
    monkeypatch.setattr(symbolic, "RUN_SECONDS", 1.0)
    start = time.monotonic()
    r = run_vjp(ip, "torch.manual_seed(0)\nx = torch.randn(6, requires_grad=True)\ny = x\n"
                    "for _ in range(6):\n    y = torch.sin(torch.softmax(y, 0))", "--symbolic")
    elapsed = time.monotonic() - start
    assert r.symbolic["x"] is None
    assert "gave up after 1 s" in symbolic_section(r).text()
    assert elapsed < 2 * 1.0 + symbolic.RENDER_SECONDS + 2.0, elapsed
    assert r.derivatives["x"].shape == (6, 6) or r.jacobian("x").shape == (6, 6)


# -- the cell runs once: its torch calls are recorded and replayed ---------------------------------
def test_a_function_with_a_side_effect_runs_once(ip):
    run_ok(ip, "calls = []\ndef f(t):\n    calls.append(1)\n    return t.sin()")
    r = run_vjp(ip, "x = torch.linspace(0, 1, 3, requires_grad=True)\ny = f(x) * 2", "--symbolic")
    assert ip.user_ns["calls"] == [1]
    assert same(r.symbolic["x"], 2 * sympy.cos(x))
    assert r.symbolic_check["x"] is True


def test_a_generator_advances_once(ip):
    run_ok(ip, "def powers():\n    k = 2\n    while True:\n        yield k\n        k += 1\n"
               "g = powers()")
    r = run_vjp(ip, "x = torch.linspace(1, 2, 3, requires_grad=True)\nk = next(g)\ny = x ** k",
                "--symbolic")
    assert ip.user_ns["k"] == 2 and next(ip.user_ns["g"]) == 3
    assert same(r.symbolic["x"], 2 * x)
    assert r.symbolic_check["x"] is True


def test_a_file_is_written_once(ip, tmp_path):
    path = tmp_path / "log.txt"
    ip.user_ns["path"] = str(path)
    r = run_vjp(ip, "with open(path, 'a') as f:\n    f.write('run\\n')\n"
                    "x = torch.tensor([1., 2.], requires_grad=True)\ny = x.exp()", "--symbolic")
    assert path.read_text() == "run\n"
    assert same(r.symbolic["x"], sympy.exp(x))


def test_a_forward_hook_runs_once_and_its_change_is_in_the_formula(ip):
    run_ok(ip, "torch.manual_seed(0)\nhits = []\nlayer = torch.nn.Linear(2, 1)\n"
               "def hook(module, inputs, output):\n    hits.append(1)\n    return output * 3\n"
               "handle = layer.register_forward_hook(hook)")
    r = run_vjp(ip, "x = torch.ones(4, 2, requires_grad=True)\ny = layer(x)", "--symbolic --wrt x")
    assert ip.user_ns["hits"] == [1]
    weight = ip.user_ns["layer"].weight.detach().reshape(-1)
    got = torch.tensor([float(v) for v in r.symbolic["x"]])
    torch.testing.assert_close(got, 3 * weight)  # d(3 (w . x + b))/dx = 3 w
    assert r.symbolic_check["x"] is True


def test_an_optimizer_step_moves_the_parameter_once(ip):
    run_ok(ip, "w = torch.tensor(1.0, requires_grad=True)\nopt = torch.optim.SGD([w], lr=0.1)")
    r = run_vjp(ip, "x = torch.tensor([1., 2.], requires_grad=True)\nopt.zero_grad()\n"
                    "(w * 2).backward()\nopt.step()\ny = x ** 2 * w", "--symbolic --wrt x")
    torch.testing.assert_close(ip.user_ns["w"].detach(), torch.tensor(0.8))  # 1 - 0.1 * 2, once
    torch.testing.assert_close(ip.user_ns["w"].grad, torch.tensor(2.0))  # zero_grad ran once
    assert same(r.symbolic["x"], sympy.Rational(8, 5) * x)
    assert r.symbolic_check["x"] is True


@pytest.mark.parametrize("values, expected", [
    ("[0.5, 1.5]", 2 * x),  # x.sum() > 0: the cell took y = x**2
    ("[-0.5, -1.5]", 3 * x**2),  # otherwise y = x**3
])
def test_a_data_dependent_branch_gives_the_formula_of_the_branch_taken(ip, values, expected):
    r = run_vjp(ip, f"x = torch.tensor({values}, requires_grad=True)\n"
                    "if x.sum() > 0:\n    y = x**2\nelse:\n    y = x**3", "--symbolic")
    assert same(r.symbolic["x"], expected)
    assert r.symbolic_check["x"] is True


def test_element_assignment_into_a_plain_tensor(ip):
    r = run_vjp(ip, "x = torch.tensor([1., 2., 3.], requires_grad=True)\ny = torch.zeros(3)\n"
                    "y[0] = x[0] ** 2\ny[2] = x[1] * x[2]", "--symbolic --full")
    assert same(r.symbolic["x"], [[2 * x1, 0, 0], [0, 0, 0], [0, x3, x2]])
    assert r.symbolic_check["x"] is True


@pytest.mark.parametrize("expression", ["torch.linalg.norm(x)", "x.norm()"])
def test_the_norm_at_zero_is_undefined_not_a_disagreement(ip, expression):
    r = run_vjp(ip, f"x = torch.zeros(3, requires_grad=True)\ny = {expression}", "--symbolic")
    norm = sympy.sqrt(x1**2 + x2**2 + x3**2)
    assert same(r.symbolic["x"], [[x1 / norm, x2 / norm, x3 / norm]])
    assert r.symbolic_check["x"] is True
    text = symbolic_section(r).text()
    assert "undefined at the point" in text and "disagrees" not in text
    assert "undefined" in r._repr_latex_()


def test_undefined_points_are_counted_apart_from_the_others(ip):
    r = run_vjp(ip, "x = torch.tensor([[0., 0.], [3., 4.], [1., 0.]], requires_grad=True)\n"
                    "y = torch.linalg.norm(x, dim=1)", "--symbolic")
    norm = sympy.sqrt(x1**2 + x2**2)
    assert same(r.symbolic["x"], [[x1 / norm, x2 / norm]])
    assert r.symbolic_check["x"] is True
    assert "agrees with autograd at 2 of 3 points; undefined at the other 1" in repr(r)


def test_a_constant_changed_in_place_later_is_read_as_it_was_used():
    ns, record = run_recorded("w = torch.ones(3)\n"
                              "x = torch.tensor([1., 2., 3.], requires_grad=True)"
                              "\ny = x + w\nw.add_(1)")
    r = differentiate(ns["y"], {"x": ns["x"]})
    symbolic.attach(r, record=record, namespace=ns)
    assert same(symbolic_section(r).function, x + 1)  # w was 1 when y was computed, 2 now
    assert r.symbolic_check["x"] is True


def test_a_constant_changed_in_place_without_a_copy_is_named(monkeypatch):
    from vjp_magic.run import record as record_module

    monkeypatch.setattr(record_module, "MAX_COPY_ENTRIES", 0)
    ns, record = run_recorded("w = torch.ones(3)\n"
                              "x = torch.tensor([1., 2., 3.], requires_grad=True)"
                              "\ny = x * 2 + w\nw.add_(1)")
    r = differentiate(ns["y"], {"x": ns["x"]})
    symbolic.attach(r, record=record, namespace=ns)
    assert r.symbolic["x"] is None
    assert "w was changed in place after the cell used it" in symbolic_section(r).text()


def test_jacobian_replays_the_recorded_expression():
    ns, _ = run_recorded("z = torch.tensor([1.0, 2.0], requires_grad=True)")
    with recording() as record:
        output = eval("torch.stack([z.prod(), (z**2).sum()])", ns)  # noqa: S307
    r = differentiate(output, {"z": ns["z"]})
    r.show_jacobian = True
    symbolic.attach(r, record=record, namespace=ns,
                    output_source="torch.stack([z.prod(), (z**2).sum()])")
    z1, z2 = sympy.symbols("z_1 z_2", real=True)
    assert same(r.symbolic["z"], [[z2, z1], [2 * z1, 2 * z2]])
    assert r.symbolic_check["z"] is True


# -- the recorder ----------------------------------------------------------------------------------
def test_recording_keeps_results_and_exceptions_and_only_outermost_calls():
    import torch.nn.functional as F

    x_ = torch.linspace(-1, 1, 5, requires_grad=True)
    with recording() as record:
        soft = F.softmax(x_, 0)
        norm = x_.norm()
    assert [c.result for c in record.calls] == [soft, norm]  # not softmax's or norm's insides
    torch.testing.assert_close(soft, torch.softmax(x_.detach(), 0))
    with pytest.raises(RuntimeError) as plain:
        torch.ones(2) @ torch.ones(3)
    with pytest.raises(RuntimeError) as recorded, recording() as failed:
        torch.ones(2) @ torch.ones(3)
    assert str(recorded.value) == str(plain.value)
    assert failed.calls == []  # released: the cell raised


def test_a_cell_with_too_many_calls_is_not_replayed(monkeypatch):
    from vjp_magic.run import record as record_module

    monkeypatch.setattr(record_module, "MAX_CALLS", 3)
    ns, record = run_recorded("x = torch.tensor([1., 2.], requires_grad=True)\n"
                              "y = x * 2 + 1 - x ** 2")
    assert record.failed and record.calls == []  # gave up and let go of what it held
    r = differentiate(ns["y"], {"x": ns["x"]})
    symbolic.attach(r, record=record, namespace=ns)
    assert symbolic_section(r).text() == ("symbolic: the cell made more than 3 torch calls, so "
                                          "there is no record to replay; numbers only")


def test_a_released_record_keeps_nothing_alive():
    import gc
    import weakref

    with recording() as record:
        big = torch.ones(1000) * 2
        big.add_(1)
    ref = weakref.ref(big)
    assert len(record) == 3 and record.calls[2].before[0][1] is not None  # ones, *, add_
    del big
    gc.collect()
    assert ref() is not None  # the record holds it
    record.release()
    gc.collect()
    assert ref() is None
