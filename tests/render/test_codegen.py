"""render/codegen: the one code generator (component loop, expression names, r.code).

The generated code is executed in a namespace holding the cell's tensors; what it computes is
compared with the tutorial's numbers or with ``torch.autograd.functional.jacobian`` — never
with numbers the code under test produced.
"""
from __future__ import annotations

import pytest
import torch
from torch.autograd.functional import jacobian as reference_jacobian

import cells
from vjp_magic import differentiate
from vjp_magic.render.codegen import (
    component_loop,
    derivative_name,
    display_loop,
    expression,
    fresh,
    identifiers,
    reproducing_code,
)


def cell_namespace(source: str) -> dict:
    namespace = {"torch": torch}
    exec(source, namespace)
    return namespace


def run(code: str, namespace: dict) -> dict:
    """Execute generated code as a student would paste it: no vjp_magic import needed."""
    assert "vjp_magic" not in code
    ns = dict(namespace)
    exec(compile(code, "<generated>", "exec"), ns)
    return ns


# -- the loop -------------------------------------------------------------------------------
@pytest.mark.parametrize("shape, points, letters, index, header", [
    ((2,), [], ("k",), "k", "for k in range(2):"),
    ((4, 2), [0], ("k",), ":, k", "for k in range(2):"),
    ((2, 3), [1], ("k",), "k", "for k in range(2):"),
    ((3, 2), [], ("i", "j"), "i, j", "for i, j in itertools.product(range(3), range(2)):"),
    ((5, 3, 2), [0], ("i", "j"), ":, i, j",
     "for i, j in itertools.product(range(3), range(2)):"),
])
def test_component_loop_letters_index_and_header(shape, points, letters, index, header):
    loop = component_loop(shape, points)
    assert (loop.letters, loop.index, loop.header) == (letters, index, header)
    # the code shown runs as pasted, with its own imports (itertools for several letters) and
    # nothing else: one backward per component, each reading row k of the Jacobian of 2·x
    x = torch.arange(float(torch.Size(shape).numel())).reshape(shape).requires_grad_()
    rows = []
    code = "\n".join([*loop.imports,
                      *loop.lines("y", ["rows.append(x.grad.clone()); x.grad = None"])])
    run(code, {"torch": torch, "x": x, "y": 2 * x, "rows": rows})
    assert len(rows) == loop.count == torch.Size(loop.shape).numel()
    assert all(((row == 0) | (row == 2)).all() for row in rows)
    torch.testing.assert_close(sum(rows), torch.full(shape, 2.0))


def test_component_loop_counts_and_one_hot_line():
    loop = component_loop((4, 3), [0])
    assert loop.shape == (3,) and loop.count == 3
    assert loop.one_hot("y") == "v = torch.zeros_like(y); v[:, k] = 1"
    assert loop.backward("y", inputs=["x", "w"]) == \
        "y.backward(gradient=v, retain_graph=True, inputs=[x, w])"
    assert loop.lines("y", ["print(x.grad)"]) == [
        "for k in range(3):", "    v = torch.zeros_like(y); v[:, k] = 1",
        "    y.backward(gradient=v, retain_graph=True)", "    print(x.grad)"]


def test_component_loop_letters_never_clash_with_the_cells_names():
    taken = {"k", "i", "k2"}
    assert component_loop((3,), [], taken).letters == ("k3",)
    assert component_loop((2, 2), [], taken).letters == ("i2", "j")
    assert {"k3", "i2", "j"} <= taken


def test_names_and_expressions():
    assert expression("x") == "x" and expression("layer.weight") == "layer.weight"
    assert expression("x.T @ w") == "(x.T @ w)" and expression("x[0]") == "(x[0])"
    assert derivative_name("layer.weight") == "d_layer_weight"
    taken = {"d_x"}
    assert derivative_name("x", taken) == "d_x2" and "d_x2" in taken
    assert fresh("v", {"v", "v2"}) == "v3"
    assert identifiers(["x.T @ w", "torch.sin(a)"]) == {"x", "w", "torch", "a"}


# -- r.code reproduces the derivatives --------------------------------------------------------
def check(result, namespace: dict) -> dict:
    """Run r.code; each d_<name> is the expected tensor; every .grad is as it was."""
    leaves = {name: item.tensor for name, item in result.inputs.items() if item.tensor.is_leaf}
    before = {name: tensor.grad for name, tensor in leaves.items()}
    ns = run(reproducing_code(result), namespace)
    for name, tensor in leaves.items():
        assert tensor.grad is before[name]
    return ns


@pytest.mark.parametrize("cell", cells.TUTORIAL, ids=cells.ids(cells.TUTORIAL))
def test_code_reproduces_the_tutorials_numbers(cell):
    ns = cell_namespace(cell.short)
    r = differentiate(ns["y"], ns["x"], output_name="y")
    got = check(r, ns)["d_x"]
    expected = torch.tensor(cell.derivatives, dtype=got.dtype)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("cell", cells.TUTORIAL, ids=cells.ids(cells.TUTORIAL))
def test_the_short_display_loop_gives_the_tutorials_numbers(cell):
    ns = cell_namespace(cell.short)
    r = differentiate(ns["y"], ns["x"], output_name="y")
    code = display_loop(r)
    assert len(code.splitlines()) <= 7  # the tutorial's own loop, its .grad cleared first
    out = run(code, ns)
    got = out["d_x"] if "d_x" in out else ns["x"].grad
    torch.testing.assert_close(got, torch.tensor(cell.derivatives, dtype=got.dtype))
    ns["x"].grad = None


def test_code_for_several_inputs_with_different_structures():
    ns = cell_namespace("x = torch.linspace(-1, 1, 4, requires_grad=True)\n"
                        "w = torch.tensor([2., 3.], requires_grad=True)\n"
                        "u = torch.ones(2, requires_grad=True)\n"
                        "y = torch.sin(x) * w.sum()")
    r = differentiate(ns["y"], {"x": ns["x"], "w": ns["w"], "u": ns["u"]}, output_name="y")
    out = check(r, ns)
    x = ns["x"].detach()
    torch.testing.assert_close(out["d_x"], torch.cos(x) * 5)  # d(5 sin x)/dx at each point
    torch.testing.assert_close(out["d_w"], torch.sin(x)[:, None].expand(4, 2))
    torch.testing.assert_close(out["d_u"], torch.zeros(4, 2))


def test_code_for_an_expression_output_and_a_full_jacobian():
    ns = cell_namespace("x = torch.tensor([[1., 2.], [3., 4.]], requires_grad=True)\n"
                        "w = torch.tensor([[0.5, -1.], [2., 1.]])")
    output = ns["x"].T @ ns["w"]
    r = differentiate(output, ns["x"], output_name="x.T @ w", full=True)
    code = reproducing_code(r)
    assert "y = x.T @ w" in code or "out = x.T @ w" in code
    expected = reference_jacobian(lambda t: t.T @ ns["w"], ns["x"].detach())
    torch.testing.assert_close(check(r, ns)["d_x"], expected)


def test_code_for_a_non_leaf_input_keeps_the_leaf_alone():
    ns = cell_namespace("x = torch.tensor([1., 2., 3.], requires_grad=True)\nh = x * 2\n"
                        "y = torch.stack([h**2, h.sum().expand(3)])")
    r = differentiate(ns["y"], {"h": ns["h"]}, output_name="y")
    out = check(r, ns)
    # h = (2, 4, 6): d(h²)/dh = diag(2h); the expanded sum has all-ones rows
    expected = reference_jacobian(lambda h: torch.stack([h**2, h.sum().expand(3)]),
                                  ns["h"].detach())
    torch.testing.assert_close(out["d_h"], r.jacobian("h"))
    torch.testing.assert_close(r.jacobian("h"), expected)
    assert ns["x"].grad is None


def test_code_keeps_an_existing_grad():
    ns = cell_namespace("a = torch.tensor([1., 2.], requires_grad=True)\n"
                        "b = torch.tensor([3., 4.], requires_grad=True)\n"
                        "(a * b).sum().backward()\n"
                        "y = torch.stack([a * b, a ** 2])")
    a_grad, b_grad = ns["a"].grad.clone(), ns["b"].grad.clone()
    r = differentiate(ns["y"], {"a": ns["a"]}, output_name="y")
    out = check(r, ns)
    torch.testing.assert_close(out["d_a"], torch.tensor([[3.0, 4.0], [2.0, 4.0]]))
    assert torch.equal(ns["a"].grad, a_grad) and torch.equal(ns["b"].grad, b_grad)


def test_code_never_clobbers_the_cells_names():
    ns = cell_namespace("k = torch.tensor([1., 2.], requires_grad=True)\n"
                        "v = torch.tensor(3., requires_grad=True)\n"
                        "y = torch.stack([k * v, k ** 2])")
    r = differentiate(ns["y"], {"k": ns["k"], "v": ns["v"]}, output_name="y")
    out = check(r, ns)
    torch.testing.assert_close(out["d_v"], torch.tensor([[1.0, 2.0], [0.0, 0.0]]))
    # entry i of y's rows uses entry i of k only: ∂(k v)/∂k_i = v = 3, ∂k²/∂k_i = 2 k_i
    assert r.point_axes["k"] == ((1, 0),)
    torch.testing.assert_close(out["d_k"], torch.tensor([[3.0, 3.0], [2.0, 4.0]]))
    assert out["k"] is ns["k"] and out["v"] is ns["v"]  # the inputs still name the inputs


def test_code_for_attribute_input_names():
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2)
    x = torch.randn(4, 3)
    y = layer(x)
    r = differentiate(y, {"layer.weight": layer.weight}, output_name="y")
    out = check(r, {"torch": torch, "layer": layer, "x": x, "y": y})
    b = layer.bias.detach()
    expected = reference_jacobian(lambda w: x @ w.T + b, layer.weight.detach())  # (4,2,2,3)
    # column c of y uses row c of W only: d[n] = Σ_c ∂y[n, c]/∂W, J summed over y's columns
    assert r.point_axes["layer.weight"] == ((1, 0),)
    torch.testing.assert_close(out["d_layer_weight"], expected.sum(1))
    assert layer.weight.grad is None
