"""The code the display teaches changes no ``.grad`` it does not read (s38 G24-6, its class).

Every kind of snippet beneath a result — the points loop, the v = ones line, a scalar's
backward, the coloured backward passes (one colour and several), the forward-mode passes, and
``r.code`` — is run as a student pastes it, in a namespace holding the cell's tensors, with
another tensor that requires grad in the graph (a second input, a model's parameter) whose
``.grad`` holds a sentinel: it must hold it still, and the derivatives the code reads must be
the Jacobian's (``torch.autograd.functional.jacobian`` or the mathematics of the map).
"""
from __future__ import annotations

import re

import pytest
import torch
from sparse_cells_s31 import bundle

import vjp_magic

N = 400


def blocks(result) -> list[str]:
    return re.findall(r"```python\n(.*?)```", bundle(result)["text/markdown"], flags=re.S)


def pasted(code: str, namespace: dict) -> dict:
    assert "vjp_magic" not in code
    exec(compile(code, "<display>", "exec"), namespace)  # noqa: S102 - the display's code
    return namespace


def sentinel(*tensors: torch.Tensor) -> None:
    for t in tensors:
        t.grad = torch.full_like(t, 7.0)


def untouched(*tensors: torch.Tensor) -> bool:
    return all(torch.equal(t.grad, torch.full_like(t, 7.0)) for t in tensors)


def test_the_points_loop_leaves_a_models_parameters_alone():
    """y = lin(x): rows are points, 2 components; the loop for x must not add into
    lin.weight.grad / lin.bias.grad (they are no input of the result)."""
    lin = torch.nn.Linear(3, 2).double()
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    y = lin(x)
    r = vjp_magic.differentiate(y, x)
    code = blocks(r)
    assert len(code) == 1 and "inputs=[x]" in code[0]
    sentinel(lin.weight, lin.bias)
    ns = pasted(code[0], {"torch": torch, "x": x, "y": y, "_": r})
    assert untouched(lin.weight, lin.bias)
    expected = lin.weight.detach()[:, None, :].expand(2, 5, 3)  # dy[i, k]/dx[i] = W[k]
    torch.testing.assert_close(ns["d_x"], expected)


def test_two_point_groups_leave_each_others_grad_alone():
    """y[i, j] = x[i]·w[j]: x's points are y's rows, w's its columns, so each has its own
    loop; without inputs=[x] the loop for x adds into w.grad (and w's into x.grad)."""
    x = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64, requires_grad=True)
    w = torch.tensor([5.0, 6.0, 7.0], dtype=torch.float64, requires_grad=True)
    y = x[:, None] * w[None, :]
    r = vjp_magic.differentiate(y, {"x": x, "w": w})
    code = blocks(r)[0]  # x's (w's is not shown, to fit one screen)
    assert "inputs=[x]" in code
    sentinel(w)
    ns = pasted(code, {"torch": torch, "x": x, "w": w, "y": y, "_": r})
    assert untouched(w) and x.grad is None  # its own cleared, no other touched
    torch.testing.assert_close(ns["d_x"], w.detach()[:, None].expand(3, 4))  # d_x[j, i] = w[j]


def test_a_scalars_backward_names_its_input():
    x = torch.linspace(-1, 1, 6, dtype=torch.float64, requires_grad=True)
    w = torch.linspace(2, 3, 6, dtype=torch.float64, requires_grad=True)
    loss = (x * w).sum()
    r = vjp_magic.differentiate(loss, x, output_name="loss")
    (code,) = blocks(r)
    assert "inputs=[x]" in code
    sentinel(w)
    x.grad = None
    pasted(code, {"torch": torch, "x": x, "w": w, "loss": loss, "_": r})
    assert untouched(w)
    torch.testing.assert_close(x.grad, w.detach())  # d(Σ x·w)/dx = w


def test_the_tutorials_line_stays_where_nothing_else_requires_grad():
    """The tutorial's own call, unchanged, where the output reads no other such tensor."""
    x = torch.linspace(-2, 2, 5, requires_grad=True)
    r = vjp_magic.differentiate(x ** 2, x, output_name="y")
    (code,) = blocks(r)
    assert "y.backward(gradient=torch.ones_like(y))" in code and "inputs=" not in code


@pytest.mark.parametrize("label", ["one colour", "colours", "columns"])
def test_the_coloured_passes_leave_the_other_inputs_grad_alone(label):
    x = torch.linspace(-1, 1, N, dtype=torch.float64, requires_grad=True)
    w = torch.linspace(0, 1, N, dtype=torch.float64, requires_grad=True)
    maps = {"one colour": lambda t: t.flip(0) * w,  # a permutation: one colour
            "colours": lambda t: t.roll(1) * w + t * w.roll(-2) + t ** 2,
            "columns": lambda t: t * w + t[0] * t}  # a dense column: forward mode
    f = maps[label]
    y = f(x)
    r = vjp_magic.differentiate(y, {"x": x, "w": w})
    sparse = r.inputs["x"].sparse
    assert sparse is not None and (sparse.mode == "columns") == (label == "columns")
    assert (sparse.count == 1) == (label == "one colour")
    code = blocks(r)[0]
    sentinel(w)
    ns = pasted(code, {"torch": torch, "x": x, "w": w, "y": y, "_": r})
    assert untouched(w)
    expected = torch.autograd.functional.jacobian(f, x.detach())
    nz = expected.nonzero()
    p, q = nz[:, 0], nz[:, 1]
    if label == "one colour":
        got = ns["g"][q]
    elif label == "colours":
        got = ns["g"][ns["colour"][p], q]
    else:
        got = ns["Ju"][ns["colour"][q], p]
    torch.testing.assert_close(got, expected[p, q])


def test_r_code_of_a_sparse_input_leaves_the_other_inputs_grad_alone():
    x = torch.linspace(-1, 1, N, dtype=torch.float64, requires_grad=True)
    w = torch.linspace(0, 1, N, dtype=torch.float64, requires_grad=True)
    y = x.roll(1) * w + x * w.roll(-2) + x ** 2
    r = vjp_magic.differentiate(y, {"x": x, "w": w})
    assert r.inputs["x"].sparse is not None
    sentinel(x, w)
    ns = pasted(r.code, {"torch": torch, "x": x, "w": w, "y": y, "r": r})
    assert untouched(x, w)  # r.code restores what .grad held
    expected = torch.autograd.functional.jacobian(
        lambda a, b: a.roll(1) * b + a * b.roll(-2) + a ** 2, (x.detach(), w.detach()))
    torch.testing.assert_close(ns["d_x"].to_dense(), expected[0])
    torch.testing.assert_close(ns["d_w"].to_dense(), expected[1])


LINEAR_CELL = ("torch.manual_seed(0)\nlin = torch.nn.Linear(3, 2)\n"
               "x = torch.randn(5, 3, requires_grad=True)\ny = lin(x)\n")


@pytest.mark.parametrize("backward", ["", "y.backward(torch.ones_like(y), retain_graph=True)\n"])
def test_pasted_after_a_cell_its_loop_leaves_the_models_grads_alone(ip, run_vjp, backward):
    """%%vjp on y = lin(x) (with the cell's own backward or not): the code beneath, run as
    the next cell, adds nothing into lin.weight.grad."""
    r = run_vjp(LINEAR_CELL + backward)
    (code,) = [c for c in blocks(r) if "backward" in c]
    assert "inputs=[x]" in code
    lin = ip.user_ns["lin"]
    sentinel(lin.weight, lin.bias)
    run = ip.run_cell(code)
    assert run.success, run.error_in_exec
    assert untouched(lin.weight, lin.bias)
    expected = lin.weight.detach()[:, None, :].expand(2, 5, 3)  # dy[i, k]/dx[i] = W[k]
    torch.testing.assert_close(ip.user_ns["d_x"], expected)


def test_after_a_backward_that_freed_the_graph_the_loop_still_names_its_input(run_vjp):
    """The graph's saved values freed by the cell's backward: which .grad a backward fills is
    read off the graph's edges, which survive the free, so the code (to run once the cell
    keeps its graph, as it says) still says inputs=[x]."""
    r = run_vjp(LINEAR_CELL + "y.backward(torch.ones_like(y))\n")
    (code,) = [c for c in blocks(r) if "backward" in c]
    assert "freed" in code and "inputs=[x]" in code
