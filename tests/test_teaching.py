"""--explain (the tutorial's steps for the cell) and r.code (plain PyTorch reproducing the numbers).

Expected numbers come from the tutorial or from mathematics; r.code is tested by executing it.
"""
from __future__ import annotations

import re
import time

import pytest
import torch
from torch.autograd.functional import jacobian as reference_jacobian

from conftest import assert_tensor, run_ok, run_vjp
from vjp_magic import differentiate
from vjp_magic.render.codegen import derivative_name
from vjp_magic.render.latex import code as code_tex

STACK_AT_3_POINTS = """
x = torch.arange(3, dtype=float, requires_grad=True)
y = torch.stack([-x**3, 5*x])
"""


# -- --explain ------------------------------------------------------------------------------

def test_explain_components_at_points_shows_J_each_v_and_vTJ(ip):
    r = run_vjp(ip, STACK_AT_3_POINTS, line="--explain")
    text = repr(r)
    # J of (x ↦ (-x³, 5x)) at x = 0, 1, 2, flattened: 6 × 3, zero except at each point
    assert "J (6 x 3)" in text
    rows = {" ".join(line.replace("[", " ").replace("]", " ").split())
            for line in text.splitlines()}
    for row in ["y_1,1 0 0 0", "y_1,2 0 -3 0", "y_1,3 0 0 -12", "y_2,1 5 0 0", "y_2,3 0 0 5"]:
        assert row in rows
    # the tutorial's v1, v2 (one-hot on the component, ones along the points), flattened
    assert "v_1^T = [1  1  1  0  0  0]" in text
    assert "v_2^T = [0  0  0  1  1  1]" in text
    # vᵀJ: f_1' = -3x² and f_2' = 5 at the 3 points
    assert "v_1^T J = [0  -3  -12]" in text
    assert "v_2^T J = [5  5  5]" in text
    latex = r._repr_latex_()
    assert r"J = \left[\begin{array}" in latex and "y_{1,1}" in latex  # rows and columns labelled
    assert r"v_{1}^\top J = " in latex
    assert "block-diagonal" in latex
    assert latex.index("Explained") < latex.index(r"f_{1}'")  # steps above the derivatives


def test_explain_points_says_why_ones_work(ip):
    r = run_vjp(ip, "x = torch.linspace(-2, 2, 5, requires_grad=True)\ny = x**2", line="--explain")
    text = repr(r)
    assert "J is diagonal" in text and "v = ones" in text
    assert "v^T = [1  1  1  1  1]" in text
    assert "v^T J = [-4  -2  0  2  4]" in text  # the tutorial's derivatives at 5 points
    assert "[-4   0  0  0  0]" in text  # J = diag(2x)


def test_explain_scalar_output(ip):
    r = run_vjp(ip, "x = torch.tensor([-1., 2.], requires_grad=True)\n"
                    "w = torch.tensor([3., 5.])\ny = (x*x*w).sum()", line="--explain")
    text = repr(r)
    assert "v = 1" in text and "v^T J = [-6  20]" in text  # the tutorial's gradient


def test_explain_full_jacobian_one_hot_rows(ip):
    r = run_vjp(ip, "x = torch.tensor([1., 2., 3.], requires_grad=True)\ny = torch.cumsum(x, 0)",
                line="--explain")
    text = repr(r)
    # cumsum: J is lower-triangular ones; v_k = e_k picks row k
    assert "[1  0  0]" in text and "[1  1  0]" in text and "[1  1  1]" in text
    assert "v_2^T = [0  1  0]" in text and "v_2^T J = [1  1  0]" in text


def test_explain_many_components_shows_a_few(ip):
    r = run_vjp(ip, "x = torch.tensor(1., requires_grad=True)\n"
                    "y = torch.stack([x**i for i in range(6)]).view(3,2)", line="--explain")
    latex = r._repr_latex_()
    shown = sorted(set(re.findall(r"v_\{(\d+)\}\^\\top =", latex)), key=int)
    assert shown == ["1", "2", "5", "6"]
    assert r"$$\vdots$$" in latex
    text = repr(r)
    assert "v_6^T J = [5]" in text  # d/dx x^5 at 1


def test_explain_several_inputs(ip):
    run_ok(ip, "a = torch.tensor([1., 2., 3.], requires_grad=True)\n"
               "b = torch.tensor(2., requires_grad=True)")
    r = run_vjp(ip, "y = b * a**2", line="--explain")
    text = repr(r)
    assert "Explained (with respect to a)" in text and "Explained (with respect to b)" in text
    assert "v^T J = [4  8  12]" in text  # d(b a²)/da = 2ab at b = 2
    latex = r._repr_latex_()
    assert "with respect to a" in latex and "with respect to b" in latex


def test_explain_is_summarised_and_fast_when_large(ip):
    start = time.perf_counter()
    r = run_vjp(ip, "x = torch.linspace(0, 1, 200_000, requires_grad=True)\ny = torch.sin(x)",
                line="--explain")
    latex = r._repr_latex_()
    elapsed = time.perf_counter() - start
    assert len(latex) < 20_000
    assert r"\cdots" in latex and r"\ddots" in latex
    assert elapsed < 30  # nothing of size 200_000² is built
    assert "200,000 points" in repr(r) or "200000 points" in repr(r)


def test_explain_latex_is_balanced(ip):
    r = run_vjp(ip, STACK_AT_3_POINTS, line="--explain --code")
    latex = r._repr_latex_()
    assert latex.count("$$") % 2 == 0
    for display in re.findall(r"\$\$(.*?)\$\$", latex, flags=re.S):
        depth = 0
        for ch in display.replace(r"\{", "").replace(r"\}", ""):
            depth += {"{": 1, "}": -1}.get(ch, 0)
            assert depth >= 0
        assert depth == 0, display
        assert display.count(r"\begin{") == display.count(r"\end{")


# -- r.code ---------------------------------------------------------------------------------

def run_code(code: str, namespace: dict) -> dict:
    """Execute generated code in a copy of the namespace (it must not need vjp_magic)."""
    assert "vjp_magic" not in code
    ns = dict(namespace)
    exec(compile(code, "<r.code>", "exec"), ns)
    return ns


def check_code(r, namespace: dict) -> dict:
    grads_before = {name: item.tensor.grad if item.tensor.is_leaf else None
                    for name, item in r.inputs.items()}
    copies = {name: (g.clone() if g is not None else None) for name, g in grads_before.items()}
    ns = run_code(r.code, namespace)
    for name, item in r.inputs.items():
        got = ns[derivative_name(name)]
        assert got.shape == item.derivatives.shape, (name, got.shape, item.derivatives.shape)
        torch.testing.assert_close(got, item.derivatives)
        # x.grad is the notebook's again: the same tensor object, with the same values
        assert item.tensor.grad is grads_before[name]
        if copies[name] is not None:
            assert torch.equal(item.tensor.grad, copies[name])
    return ns


TUTORIAL_CELLS = {
    "single_point": "x = torch.tensor(1., requires_grad=True)\ny = x**2",
    "points": "x = torch.linspace(-2, 2, 5, requires_grad=True)\ny = x**2",
    "sum_trick": "x = torch.linspace(-2, 2, 5, requires_grad=True)\ny = (x**2).sum()",
    "gradient_at_points": "x = torch.arange(6, dtype=float).view(3, 2).requires_grad_(True)\n"
                          "w = torch.tensor([-1, 1])\ny = (x*x*w).sum(1)",
    "vector_valued": "x = torch.tensor(1., requires_grad=True)\ny = torch.stack([-x**3, 5*x])",
    "vector_valued_points": STACK_AT_3_POINTS,
    "gradients_single": "x = torch.arange(4, dtype=float, requires_grad=True)\n"
                        "y = torch.stack([x.sum(), (x**2).sum()])",
    "gradients_points": "x = torch.arange(4*3, dtype=float).view(-1,4).requires_grad_(True)\n"
                        "y = torch.stack([x.sum(1), (x**2).sum(1)])",
    "matrix_valued": "x = torch.tensor(1., requires_grad=True)\n"
                     "y = torch.stack([x**i for i in range(6)]).view(3,2)",
    "column_vector": "x = torch.linspace(-2, 2, 5).view(-1,1).requires_grad_(True)\ny = x**2",
}


@pytest.mark.parametrize("case", sorted(TUTORIAL_CELLS))
def test_code_reproduces_every_tutorial_example(ip, case):
    r = run_vjp(ip, TUTORIAL_CELLS[case])
    ns = check_code(r, ip.user_ns)
    assert "y.backward(" in r.code
    assert ip.user_ns["x"].grad is None  # running the code left the notebook's x.grad alone
    assert "d_x" in ns


def test_code_matches_the_tutorial_numbers(ip):
    r = run_vjp(ip, STACK_AT_3_POINTS)
    ns = run_code(r.code, ip.user_ns)
    assert_tensor(ns["d_x"], [[0.0, -3.0, -12.0], [5.0, 5.0, 5.0]])
    assert "retain_graph=True" in r.code and "x.grad.zero_()" in r.code
    assert "v[k] = 1" in r.code


def test_code_keeps_an_existing_grad_and_other_leaves(ip):
    run_ok(ip, "a = torch.tensor([1., 2.], requires_grad=True)\n"
               "b = torch.tensor([3., 4.], requires_grad=True)\n"
               "(a * b).sum().backward()")
    a_grad, b_grad = ip.user_ns["a"].grad.clone(), ip.user_ns["b"].grad.clone()
    r = run_vjp(ip, "y = torch.stack([a * b, a ** 2])", line="--wrt a")
    ns = check_code(r, ip.user_ns)
    assert_tensor(ns["d_a"], [[3.0, 4.0], [2.0, 4.0]])  # ∂(ab)/∂a = b, ∂a²/∂a = 2a
    assert torch.equal(ip.user_ns["a"].grad, a_grad)
    assert torch.equal(ip.user_ns["b"].grad, b_grad)  # not an input: not touched either


def test_code_for_several_inputs_with_different_structures(ip):
    r = run_vjp(ip, "x = torch.linspace(-1, 1, 4, requires_grad=True)\n"
                    "w = torch.tensor([2., 3.], requires_grad=True)\n"
                    "y = torch.sin(x) * w.sum()")
    assert r.point_axes["x"] == ((0, 0),) and r.point_axes["w"] == ()
    check_code(r, ip.user_ns)


def test_code_for_attribute_input_names(ip):
    run_ok(ip, "torch.manual_seed(0)\nlayer = torch.nn.Linear(3, 2)\nx = torch.randn(4, 3)")
    r = run_vjp(ip, "y = layer(x)", line="--wrt layer.weight layer.bias")
    ns = check_code(r, ip.user_ns)
    w = ip.user_ns["layer"].weight.detach()
    b = ip.user_ns["layer"].bias.detach()
    x = ip.user_ns["x"]
    ref = reference_jacobian(lambda w: x @ w.T + b, w)  # (4, 2, 2, 3)
    assert ns["d_layer_weight"].shape == r.derivatives["layer.weight"].shape
    torch.testing.assert_close(r.jacobian("layer.weight"), ref)
    assert ip.user_ns["layer"].weight.grad is None


def test_code_for_an_expression_output_and_full_jacobian(ip):
    run_ok(ip, "x = torch.tensor([1., 2., 3.], requires_grad=True)")
    r = run_ok(ip, "%jacobian torch.softmax(x, 0) wrt x")
    ns = check_code(r, ip.user_ns)
    ref = reference_jacobian(lambda t: torch.softmax(t, 0), ip.user_ns["x"].detach())
    torch.testing.assert_close(ns["d_x"], ref)
    r = run_vjp(ip, "y = x**2", line="--full")
    ns = check_code(r, ip.user_ns)
    assert_tensor(ns["d_x"], torch.diag(torch.tensor([2.0, 4.0, 6.0])))


def test_code_for_final_expression_and_unused_input(ip):
    r = run_vjp(ip, "x = torch.arange(3., requires_grad=True)\n"
                    "w = torch.ones(2, requires_grad=True)\nx.exp()", line="--wrt x w")
    ns = check_code(r, ip.user_ns)
    torch.testing.assert_close(ns["d_x"], torch.arange(3.0).exp())
    assert_tensor(ns["d_w"], torch.zeros(3, 2))


def test_code_avoids_clobbering_loop_names_that_are_inputs(ip):
    r = run_vjp(ip, "k = torch.tensor([1., 2.], requires_grad=True)\n"
                    "v = torch.tensor(3., requires_grad=True)\ny = torch.stack([k * v, k ** 2])")
    ns = check_code(r, ip.user_ns)
    assert_tensor(ns["d_v"], [[1.0, 2.0], [0.0, 0.0]])


def test_code_is_always_set_and_shown_with_flag(ip):
    r = run_vjp(ip, "x = torch.linspace(-2, 2, 5, requires_grad=True)\ny = x**2")
    assert r.code and "y.backward(gradient=torch.ones_like(y)" in r.code
    assert not any(getattr(s, "position", None) == "bottom" for s in r.sections)
    r = run_vjp(ip, "x = torch.linspace(-2, 2, 5, requires_grad=True)\ny = x**2", line="--code")
    latex = r._repr_latex_()
    line = code_tex("y.backward(gradient=torch.ones_like(y), retain_graph=True, inputs=[x])")
    assert line in latex
    assert latex.index(line) > latex.index(r"f'(x) = ")  # beneath the matrices
    assert "defines d_x" in repr(r) and "    d_x = x.grad" in repr(r)


def test_code_from_plain_python():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64, requires_grad=True)
    y = torch.softmax(x, 1)
    r = differentiate(y, x)
    assert r.point_axes["x"] == ((0, 0),)  # rows are points
    ns = check_code(r, {"x": x, "y": y, "torch": torch})
    ref = reference_jacobian(lambda t: torch.softmax(t, 1), x.detach())
    torch.testing.assert_close(r.jacobian("x"), ref)
    assert ns["d_x"].shape == (2,) + tuple(x.shape)


def test_code_low_precision(ip):
    r = run_vjp(ip, "x = torch.linspace(-2, 2, 5, dtype=torch.bfloat16, requires_grad=True)\n"
                    "y = torch.stack([x**2, 3*x])")
    ns = check_code(r, ip.user_ns)
    assert ns["d_x"].dtype == torch.bfloat16
    assert_tensor(ns["d_x"], [[-4.0, -2.0, 0.0, 2.0, 4.0], [3.0] * 5])


def test_code_for_an_intermediate_input(ip, recwarn):
    r = run_vjp(ip, "x = torch.tensor([1., 2., 3.], requires_grad=True)\nh = x * 2\n"
                    "y = torch.stack([h**2, h.sum().expand(3)])", line="--wrt h")
    ns = check_code(r, ip.user_ns)
    # h = 2x = (2, 4, 6): d(h²)/dh = diag(2h); the expanded sum has all-ones gradients
    assert r.point_axes["h"] == ()
    assert_tensor(ns["d_h"], [torch.diag(torch.tensor([4.0, 8.0, 12.0])).tolist(),
                              [[1.0] * 3] * 3])
    assert ip.user_ns["x"].grad is None  # only h was asked for
    assert not [w for w in recwarn if "not a leaf" in str(w.message)]


def test_explain_says_J_is_block_diagonal_only_after_reordering_by_point(ip):
    r = run_vjp(ip, STACK_AT_3_POINTS, line="--explain")
    text = repr(r)
    # rows y_1,1..y_1,3, y_2,1..y_2,3 are row-major: the nonzeros of a point are 3 rows apart
    assert ("J is zero except where the output entry and the input entry belong to the same "
            "point; after reordering the entries by point, J is block-diagonal (shown here in "
            "row-major order).") in text
    assert "ordered by point)" not in text


def test_explain_shows_zero_between_points_where_a_derivative_is_infinite(ip):
    r = run_vjp(ip, "x = torch.tensor([0., 1., 4.], requires_grad=True)\ny = x.sqrt()",
                line="--explain")
    text = repr(r)
    # d√x/dx = 1/(2√x): ∞ at 0, 1/2 at 1, 1/4 at 4; J = diag of those, exactly 0 elsewhere
    j_rows = text.split("2. The Jacobian", 1)[1].split("3. The gradient", 1)[0]
    assert "nan" not in j_rows.lower()
    assert "inf" in j_rows
    from vjp_magic.teach.teaching import _explained_jacobian

    block = _explained_jacobian(r, "x")
    J = block.get_block(torch.arange(3), torch.arange(3))
    expected = torch.diag(torch.tensor([float("inf"), 0.5, 0.25]))
    torch.testing.assert_close(J, expected)
    assert "nan" not in r._repr_latex_().split("J = ", 1)[1].split("$$", 1)[0].lower()
