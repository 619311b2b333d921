"""The point structure in index notation (render/indices.py).

Each formula is read back from its TeX (the δs and the derivative's indices) and evaluated at
every index of the Jacobian: it must equal ``torch.autograd.functional.jacobian`` everywhere,
so in particular the Jacobian is 0 wherever a δ is.
"""
from __future__ import annotations

import itertools
import re

import pytest
import torch
from torch.autograd.functional import jacobian

from vjp_magic import differentiate
from vjp_magic.render import latex, markdown, plain
from vjp_magic.render.document import Document, Formula, Section
from vjp_magic.render.indices import index_formula

torch.manual_seed(0)
LHS = re.compile(r"\\frac\{\\partial (\w+)_\{(\w+)\}\}\{\\partial (\w+)_\{(\w+)\}\} = ")
DELTA = re.compile(r"\\delta_\{(\w)(\w)\}")
F_PRIME = re.compile(r"f'\((\w+)\^\{\((\w+(?:,\w+)*)\)\}\)$")  # the tutorial's f'(x^{(i)})
D_ENTRY = re.compile(r"\(D_\{(\w+)\}\)_\{(?:(\w+),\\,)?(\w+)\}$")


def evaluate(tex: str, derivatives: torch.Tensor, out_shape, in_shape) -> torch.Tensor:
    """The Jacobian (shape out_shape + in_shape) the formula ``tex`` spells, entry by entry."""
    _, out, _, inn = LHS.match(tex).groups()
    deltas = DELTA.findall(tex)
    f_prime, d_entry = F_PRIME.search(tex), D_ENTRY.search(tex)
    comp, at = ("", f_prime.group(2).replace(",", "")) if f_prime else (
        d_entry.group(2) or "", d_entry.group(3))
    assert len(out) == len(out_shape) and len(inn) == len(in_shape)
    result = torch.zeros(tuple(out_shape) + tuple(in_shape), dtype=derivatives.dtype)
    for index in itertools.product(*[range(n) for n in tuple(out_shape) + tuple(in_shape)]):
        value = dict(zip(out + inn, index))
        if all(value[a] == value[b] for a, b in deltas):
            entry = derivatives[tuple(value[c] for c in comp + at)]
            result[index] = entry.reshape(()) if f_prime else entry  # a point of one entry
    return result


def check(formula: Formula, result, name: str, f, inputs, which: int) -> None:
    """The formula equals the true Jacobian at every entry (and is 0 where any δ is)."""
    full = jacobian(f, tuple(inputs))[which]
    spelled = evaluate(formula.lhs.tex, result.inputs[name].derivatives,
                       result.output.shape, inputs[which].shape)
    torch.testing.assert_close(spelled, full)


def tensors(*shapes):
    return [torch.randn(s, dtype=torch.float64, requires_grad=True) for s in shapes]


def test_elementwise():
    (x,) = tensors((5,))
    result = differentiate(torch.sin(x), x)
    formula = index_formula(result, "x")
    assert formula.lhs.tex == r"\frac{\partial y_{i}}{\partial x_{j}} = \delta_{ij}\,f'(x^{(i)})"
    assert formula.lhs.plain == "∂y_i/∂x_j = δ_ij f'(x^(i))"
    check(formula, result, "x", torch.sin, [x], 0)


def test_elementwise_on_a_matrix():
    (x,) = tensors((3, 4))
    result = differentiate(torch.exp(x), x, names=["X"])
    formula = index_formula(result)
    assert formula.lhs.plain == "∂y_ij/∂X_kl = δ_ik δ_jl f'(X^(i,j))"
    check(formula, result, "X", torch.exp, [x], 0)


def test_x_at_w_both_inputs():
    x, w = tensors((4, 3), (3, 2))
    result = differentiate(x @ w, {"x": x, "w": w})
    fx, fw = index_formula(result, "x"), index_formula(result, "w")
    assert fx.lhs.tex == (r"\frac{\partial y_{ik}}{\partial x_{jl}} = "
                          r"\delta_{ij}\,(D_{x})_{k,\,il}")
    assert fx.lhs.plain == "∂y_ik/∂x_jl = δ_ij (D_x)_k,il"
    assert fw.lhs.plain == "∂y_ki/∂w_jl = δ_il (D_w)_k,ji"
    check(fx, result, "x", torch.matmul, [x, w], 0)
    check(fw, result, "w", torch.matmul, [x, w], 1)


def test_w_at_x_makes_columns_points():
    (x,) = tensors((3, 5))
    w = torch.randn(2, 3, dtype=torch.float64)
    result = differentiate(w @ x, x)
    formula = index_formula(result)
    assert formula.lhs.plain == "∂y_ki/∂x_jl = δ_il (D_x)_k,ji"
    check(formula, result, "x", lambda t: w @ t, [x], 0)


def test_x_transposed_at_w():
    (x,) = tensors((3, 4))
    w = torch.randn(3, 2, dtype=torch.float64)
    result = differentiate(x.T @ w, x)
    formula = index_formula(result)
    assert formula.lhs.plain == "∂y_ik/∂x_jl = δ_il (D_x)_k,ji"
    check(formula, result, "x", lambda t: t.T @ w, [x], 0)


def test_batched_bmm():
    a, b = tensors((3, 2, 4), (3, 4, 2))
    result = differentiate(torch.bmm(a, b), {"A": a, "B": b})
    fa, fb = index_formula(result, "A"), index_formula(result, "B")
    assert fa.lhs.plain == "∂y_ijk/∂A_lmn = δ_il δ_jm (D_A)_k,ijn"
    assert fb.lhs.plain == "∂y_ikj/∂B_lmn = δ_il δ_jn (D_B)_k,imj"
    check(fa, result, "A", torch.bmm, [a, b], 0)
    check(fb, result, "B", torch.bmm, [a, b], 1)


def test_a_layer_with_a_bias():
    x, w, bias = tensors((4, 3), (2, 3), (2,))
    f = torch.nn.functional.linear
    result = differentiate(torch.tanh(f(x, w, bias)), {"x": x, "w": w, "b": bias})
    assert index_formula(result, "b").lhs.plain == "∂y_ki/∂b_j = δ_ij (D_b)_k,i"
    for which, name in enumerate(["x", "w", "b"]):
        formula = index_formula(result, name)
        assert formula is not None
        check(formula, result, name, lambda *t: torch.tanh(f(*t)), [x, w, bias], which)


@pytest.mark.parametrize("make", [
    lambda x: x.sum(),                         # a scalar of a vector
    lambda x: torch.softmax(x, 0),             # no points: dense
    lambda x: torch.outer(x, x),               # no points
])
def test_nothing_to_say_without_points(make):
    (x,) = tensors((4,))
    assert index_formula(differentiate(make(x), x)) is None


def test_only_where_the_graph_proves_it():
    (x,) = tensors((5,))
    observed = differentiate(torch.sin(x), x, graph_proof=False)
    assert observed.inputs["x"].evidence == "observed"
    assert index_formula(observed) is None
    assert index_formula(differentiate(torch.sin(x), x, full=True)) is None


def test_the_caption_names_delta_and_d():
    x, w = tensors((4, 3), (3, 2))
    formula = index_formula(differentiate(x @ w, {"x": x, "w": w}), "x")
    document = Document((Section((formula,)),))
    text = " ".join(plain.render(document).split())
    assert "δ_ij is 1 when i = j, else 0; D_x (2 × 4 × 3) holds the derivatives below." in text
    assert r"\delta_{ij}" in markdown.render(document)
    assert r"\delta_{ij}" in latex.render(document)


def test_the_letters_are_the_displays():
    """The point is named as the headline names it (row i of y), the component as the loop
    beneath counts it (v[:, k] = 1)."""
    (x,) = tensors((4, 3))
    w = torch.randn(3, 2, dtype=torch.float64)
    result = differentiate(x @ w, x)
    text = " ".join(plain.render(result.view.document(result)).split())
    assert "row i of y uses row i of x" in text and "v[:, k] = 1" in text
    assert index_formula(result).lhs.plain.startswith("∂y_ik/∂x_jl = δ_ij")
