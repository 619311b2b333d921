"""s36 F5: advice for a cell without an output that has history, as a class.

- the requires_grad advice where the cell writes its input in place (a leaf that requires
  grad refuses the write): followed as written, the cell runs and gives the derivative of
  the output at the input's values after the writes (mathematics: y = x² → 2x);
- an input that requires grad (from this cell or an earlier one) cut from the output by
  ``torch.no_grad()``, ``inference_mode``, ``set_grad_enabled(False)``, ``.detach()`` /
  ``.data`` of a computed value, ``y.detach_()``: the line that cut it is named, never "None of
  the cell's tensors requires grad";
- an output turned into a list or a NumPy array: named as such.
"""
from __future__ import annotations

import re

import pytest

IN_PLACE = {  # body, x after the writes (y = x**2 at it: dy/dx = 2x)
    "add_": ("x = torch.ones(3)\nx.add_(1)\ny = x**2", [2.0, 2.0, 2.0]),
    "init": ("x = torch.zeros(3)\ntorch.nn.init.constant_(x, 3.)\ny = x**2", [3.0] * 3),
    "loop": ("x = torch.ones(3)\nfor k in range(2):\n    x *= 2\ny = x**2", [4.0] * 3),
    "entry-add": ("x = torch.ones(3)\nx[1] += 2\ny = x**2", [1.0, 3.0, 1.0]),
    "fill_": ("x = torch.ones(3)\nx[:2].fill_(0.5)\ny = x**2", [0.5, 0.5, 1.0]),
}


def _followed(message: str, body: str) -> str:
    added, after = re.search(r"the line (x\.requires_grad_\(\)) after line (\d+)\.",
                             message).groups()
    lines = body.splitlines()
    return "\n".join([*lines[:int(after)], added, *lines[int(after):]])


@pytest.mark.parametrize("case", list(IN_PLACE))
def test_in_place_advice_followed_runs_and_differentiates_at_the_written_values(
        run_vjp, usage_error, case):
    body, values = IN_PLACE[case]
    message = usage_error("%%vjp\n" + body)
    assert "requires_grad=True" not in message, message
    r = run_vjp(_followed(message, body))
    assert r.derivatives["x"].tolist() == [2 * v for v in values]  # elementwise: f' per point


def test_in_place_advice_for_an_earlier_cells_input(run_ok, run_vjp, usage_error):
    run_ok("x = torch.ones(2)")
    body = "x *= 3\ny = x**2"
    message = usage_error("%%vjp\n" + body)
    run_ok("x = torch.ones(2)")  # the refused cell ran: x is 3 now
    r = run_vjp(_followed(message, body))
    assert r.derivatives["x"].tolist() == [6.0, 6.0]


def test_a_write_after_the_input_was_used_is_said_to_come_too_late(usage_error):
    message = usage_error("%%vjp\nx = torch.ones(3)\ny = x**2\nx.add_(1)")
    assert "line 3 (x.add_(1)) after line 2 computed from it" in message, message


CUTS = {  # body after x (requires grad, an earlier cell), the line and words to name
    "inner-no_grad": ("with torch.no_grad():\n    h = x * 2\nz = h**2", "line 2 (h = x * 2)",
                      "torch.no_grad()"),
    "inference_mode": ("with torch.inference_mode():\n    z = x**2", "line 2", "inference_mode"),
    "set_grad_enabled": ("torch.set_grad_enabled(False)\nz = x**2\ntorch.set_grad_enabled(True)",
                         "line 2", "set_grad_enabled(False)"),
    "data": ("z = (x * 3).data", "line 1", "Leave out .data: z = x * 3"),
    "detach_": ("z = x**2\nz.detach_()", "line 2 (z.detach_())", "Delete that line"),
    "two-steps": ("h = (x + 1).detach()\nz = h * h", "line 1", "h = x + 1"),
    "numpy": ("z = torch.from_numpy((x**2).detach().numpy())", "line 1",
              ".numpy() leaves autograd too"),
}


@pytest.mark.parametrize("case", list(CUTS))
def test_the_line_that_cut_the_graph_is_named(run_ok, usage_error, case):
    body, line, words = CUTS[case]
    run_ok("x = torch.linspace(-2, 2, 5, requires_grad=True)")
    message = usage_error("%%vjp\n" + body)
    assert "although x requires grad" in message and line in message and words in message, \
        message
    assert "None of the cell's tensors" not in message


@pytest.mark.parametrize("body, kind", [
    ("y = [[v] for v in (x**2).tolist()]", "list"),
    ("y = (x**2).detach().cpu().numpy()", "NumPy array"),
])
def test_an_output_that_left_autograd_is_named(run_ok, usage_error, body, kind):
    run_ok("x = torch.linspace(-2, 2, 5, requires_grad=True)")
    message = usage_error("%%vjp\n" + body)
    assert f"y is a {kind} (line 1" in message and "Keep it a tensor" in message, message
