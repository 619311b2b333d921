"""The code beneath a cell gives the numbers shown when pasted into the next cell, whatever
state the cell left: .grad set by its own backward, retain_graph or not, the graph freed
(s32, G7's class). Expected numbers: torch.autograd.functional.jacobian."""
from __future__ import annotations

import pytest
import torch
from jupyter_harness import python_fences

X5 = "x = torch.linspace(-1, 1, 5, requires_grad=True)\n"
X3 = "x = torch.linspace(-1, 1, 3, requires_grad=True)\n"


def _code(result) -> str:
    bundle = result._repr_mimebundle_()
    bundle = bundle[0] if isinstance(bundle, tuple) else bundle
    (code,) = [c for c in python_fences(bundle["text/markdown"])
               if "x.grad = None" in c and "backward" in c]
    return code  # the code beneath the derivatives (a note may show its own x.grad = None)


def _pasted(ip, result):
    """The code run as the next cell: d_x where it defines one, else its final x.grad."""
    ip.user_ns.pop("d_x", None)
    run = ip.run_cell(_code(result))
    assert run.success, run.error_in_exec
    return ip.user_ns["d_x"] if "d_x" in ip.user_ns else run.result


@pytest.mark.parametrize("body", [
    X5 + "y = x**2\ny.backward(torch.ones_like(y))",  # the graph freed, x.grad set
    X5 + "y = x**2\ny.backward(torch.ones_like(y), retain_graph=True)",  # kept, x.grad set
    X5 + "y = (x**3).sum()\ny.backward()",  # a scalar, freed
    X5 + "y = x.sum()\ny.backward()\ny.backward()",  # nothing saved: runs again, x.grad = 2
    X3 + "y = torch.stack([x**2, x**3])\ny.backward(torch.ones_like(y))",  # components, freed
    X3 + "y = torch.stack([x**2, x**3])\nfor k in range(2):\n"
         "    y.backward(torch.ones_like(y), retain_graph=True)",  # x.grad summed twice
    X3 + "w = torch.tensor(2.)\ny = torch.sin(x) * w\ny.backward(torch.ones_like(y))",
])
def test_the_pasted_code_gives_the_numbers_shown(ip, run_vjp, body):
    r = run_vjp(body)
    got = _pasted(ip, r)
    torch.testing.assert_close(got, r.derivatives["x"])
    x = ip.user_ns["x"].detach()
    extra = {k: v for k, v in ip.user_ns.items() if k == "w"}
    ref = torch.autograd.functional.jacobian(lambda t: _forward(body, t, extra), x)
    expected = ref if ref.dim() == 1 else ref.diagonal(dim1=-2, dim2=-1)  # at each point
    torch.testing.assert_close(got.to(expected.dtype), expected)


def _forward(body: str, t: torch.Tensor, extra: dict) -> torch.Tensor:
    """The cell's output line run on ``t`` in place of x (plain PyTorch)."""
    line = next(s for s in body.splitlines() if s.startswith("y = "))
    return eval(line.split(" = ", 1)[1], {"torch": torch, "x": t, **extra})


def test_a_freed_graph_that_cannot_be_rebuilt_in_one_line_says_what_to_do(ip, run_vjp):
    r = run_vjp(X3 + "h = x * 2\ny = h.sin()\ny.backward(torch.ones_like(y))")
    code = _code(r)
    assert code.startswith("# the cell's backward (line 4) freed y's graph")
    assert "retain_graph=True" in code.splitlines()[1]


def test_a_random_line_is_never_computed_again(ip, run_vjp):
    r = run_vjp(X3 + "y = torch.nn.functional.dropout(x.sin(), 0.5)\n"
                "y.backward(torch.ones_like(y))")
    assert "dropout" not in _code(r)


@pytest.mark.parametrize("body", [
    X3 + "w = torch.ones(3)\ny = x*w\ny.backward(torch.ones_like(y))\nw += 1",
    X3 + "k = 2.0\ny = x**k\ny.backward(torch.ones_like(y))\nk = 3.0",
    X3 + "w = torch.ones(3)\ny = x*w\ny.backward(torch.ones_like(y))\nw.mul_(2)",
    X3 + "w = torch.ones(3)\ny = x*w\ny.backward(torch.ones_like(y))\nw[0] = 5",
])
def test_a_line_whose_reads_changed_later_is_never_computed_again(ip, run_vjp, body):
    r = run_vjp(body)
    code = _code(r)
    assert code.startswith("#"), code  # says what to do instead of a line giving other numbers


def test_a_saved_tensor_changed_in_place_is_said(ip, run_vjp):
    r = run_vjp(X3 + "w = torch.ones(3)\ny = x*w\nw += 1")
    assert "changed in place" in _code(r)
    torch.testing.assert_close(r.derivatives["x"], torch.ones(3))


@pytest.mark.parametrize("line, body", [
    ("--wrt h", X3 + "h = x*2\ny = h**2\ny.backward(torch.ones_like(y))"),
    ("", "x = torch.linspace(-1, 1, 300, dtype=torch.float64, requires_grad=True)\n"
         "y = x.roll(1) - 2*x + x.roll(-1)\ny.backward(torch.ones_like(y))"),
    ("", "x = torch.linspace(-1, 1, 300, dtype=torch.float64, requires_grad=True)\n"
         "w = torch.ones(300, dtype=torch.float64)\n"
         "y = (x.roll(1) - 2*x + x.roll(-1)) * w\ny.backward(torch.ones_like(y))\nw += 1"),
], ids=["non-leaf", "coloured", "coloured-changed"])
def test_every_code_beneath_runs_or_says_why_after_the_cells_backward(ip, run_vjp, line, body):
    r = run_vjp(body, line)
    bundle = r._repr_mimebundle_()
    for code in python_fences(bundle["text/markdown"]):
        if code.startswith("#"):
            continue  # it says what to do first
        result = ip.run_cell(code)
        assert result.success, (code, result.error_in_exec)


def test_the_coloured_code_after_the_cells_backward_gives_the_values(ip, run_vjp):
    r = run_vjp("x = torch.linspace(-1, 1, 300, dtype=torch.float64, requires_grad=True)\n"
                "y = x.roll(1) - 2*x + x.roll(-1)\ny.backward(torch.ones_like(y))")
    (code,) = python_fences(r._repr_mimebundle_()["text/markdown"])
    assert code.startswith("# y again")
    assert ip.run_cell(code).success
    g = ip.user_ns["g"]  # row c: vᵀJ for colour c; every J entry of this stencil is 1 or -2
    assert set(g.unique().tolist()) <= {-2.0, 0.0, 1.0}
