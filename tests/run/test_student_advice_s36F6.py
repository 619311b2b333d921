"""s36 F6: advice to a student is code that, run, gives the derivatives asked for.

- requires_grad turned on after a line computed from the input (``x.requires_grad = True``
  after ``y = x**2``): never "make y require grad" (y would become a leaf of its own and
  x.grad stay None), but the input's own line made with requires_grad=True, the late line
  named; followed, the cell's backward gives dy/dx (mathematics: y = x² → 2x);
- a tensor computed in the cell, which a backward saved, edited in place (``z.add_(1)``,
  ``z += 1``, ``z.mul_(2)``): why, the line, and the out-of-place line; followed, the cell
  gives the derivatives torch.func.grad gives for the same function written out of place;
- a right answer shaped (5, 1) for derivatives shaped (5,): still ✓, and its shape and what
  broadcasting does with it said.
"""
from __future__ import annotations

import re

import pytest
import torch


def _message(ip, source: str) -> str:
    run = ip.run_cell(source)
    assert run.error_in_exec is not None, "the cell ran"
    notes = getattr(run.error_in_exec, "__notes__", [])
    return " ".join(" ".join([str(run.error_in_exec), *notes]).split())


# -- requires_grad set too late ------------------------------------------------------------------
LATE = {  # the cell, as a student writes it (y = x**2, then x turned on)
    "attribute": "x = torch.linspace(-2, 2, 5)\ny = x**2\nx.requires_grad = True\n"
                 "y.sum().backward()",
    "method": "x = torch.linspace(-2, 2, 5)\ny = x**2\nx.requires_grad_()\ny.sum().backward()",
    "tensor": "x = torch.tensor([-2., -1., 0., 1., 2.])\ny = x**2\nx.requires_grad_(True)\n"
              "y.sum().backward()",
}


@pytest.mark.parametrize("case", list(LATE))
def test_requires_grad_set_late_advice_followed_gives_2x(ip, case):
    body = LATE[case]
    message = _message(ip, "%%vjp\n" + body)
    assert "requires_grad_()" not in message.replace("x.requires_grad_()", ""), message
    assert "Make y require grad" not in message, message
    assert "line 3" in message and "line 2" in message, message
    made = re.search(r"(x = torch\.\w+\(.*requires_grad=True\)) \(line 1\)", message)
    assert made is not None, message
    followed = body.replace(body.splitlines()[0], made.group(1), 1)
    run = ip.run_cell(followed)
    assert run.error_in_exec is None, run.error_in_exec
    x = ip.user_ns["x"]
    torch.testing.assert_close(x.grad, 2 * x.detach())


def test_a_computed_tensor_of_an_earlier_cell_is_never_made_a_leaf(ip, run_ok):
    run_ok("x = torch.linspace(-2, 2, 5)")
    message = _message(ip, "%%vjp\ny = x**2\ny.sum().backward()")
    assert "y = (x**2).requires_grad_()" not in message, message
    assert "x.requires_grad_()" in message, message  # x, what y is computed from
    run_ok("x.requires_grad_()\ny = x**2\ny.sum().backward()")
    torch.testing.assert_close(ip.user_ns["x"].grad, 2 * ip.user_ns["x"].detach())


# -- a saved tensor edited in place --------------------------------------------------------------
SAVED = {  # (cell, the function out of place)
    "exp-add_": ("z = x.exp()\nz.add_(1)\nz.sum().backward()",
                 lambda x: (x.exp() + 1).sum()),
    "exp-iadd": ("z = x.exp()\nz += 1\nz.sum().backward()", lambda x: (x.exp() + 1).sum()),
    "sin-saved-by-mul": ("z = x.sin()\nw = z * z\nz += 1\nw.sum().backward()",
                         lambda x: (x.sin() * x.sin()).sum()),
    "tanh-mul_": ("z = torch.tanh(x)\nz.mul_(2)\nz.sum().backward()",
                  lambda x: (2 * torch.tanh(x)).sum()),
}


@pytest.mark.parametrize("case", list(SAVED))
def test_a_saved_tensor_edited_in_place_is_coached_and_the_fix_gives_the_derivatives(ip, case):
    body, f = SAVED[case]
    first = "x = torch.linspace(-2, 2, 5, requires_grad=True)\n"
    message = _message(ip, "%%vjp\n" + first + body)
    edit = body.splitlines()[1 if case != "sin-saved-by-mul" else 2]
    line = 3 if case != "sin-saved-by-mul" else 4
    assert "Why:" in message and f"{edit} on line {line}" in message, message
    fixed = re.search(r"Corrected: (z = .*?) \(a new tensor", message)
    assert fixed is not None, message
    run = ip.run_cell(first + body.replace(edit, fixed.group(1), 1))
    assert run.error_in_exec is None, run.error_in_exec
    x = ip.user_ns["x"]
    torch.testing.assert_close(x.grad, torch.func.grad(f)(x.detach()))


# -- a right answer of the wrong shape -----------------------------------------------------------
def _plain(result) -> str:
    shown = result._repr_mimebundle_()
    shown = shown[0] if isinstance(shown, tuple) else shown
    return " ".join(shown["text/plain"].split())


@pytest.mark.parametrize("shape, spread", [((5, 1), "(5, 5)"), ((1, 5), "(1, 5)")])
def test_a_right_answer_with_an_axis_of_size_1_is_right_and_told_its_shape(run_vjp, shape,
                                                                            spread):
    r = run_vjp("x = torch.linspace(-2, 2, 5, requires_grad=True)\ny = x**3\n"
                f"ans = (3*x**2).reshape{shape}", "--check ans")
    assert r.check.correct
    text = _plain(r)
    assert "✓ correct" in text
    assert f"shape {shape}" in text and f"broadcasts to shape {spread}" in text, text
    assert ".reshape(5)" in text, text
    # what the note says broadcasting does, as PyTorch does it
    x = torch.linspace(-2, 2, 5)
    assert str(tuple((x - 0.1 * (3 * x**2).reshape(shape)).shape)) == spread


def test_a_right_answer_of_the_right_shape_gets_no_shape_note(run_vjp):
    r = run_vjp("x = torch.linspace(-2, 2, 5, requires_grad=True)\ny = x**3\nans = 3*x**2",
                "--check ans")
    assert r.check.correct and "The numbers are right, but" not in _plain(r)
