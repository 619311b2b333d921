"""A %%vjp cell with no backward of its own whose output's graph saved a value the cell then
changed in place (``z = x.exp(); z.add_(1)``): the usage error names the write, its line and
the out-of-place line (as the cell's own backward gets since s36 F6), not the generic "e.g.
w -= lr * w.grad"; followed, the cell gives the derivatives torch.func.grad gives for the
same function written out of place.
"""
from __future__ import annotations

import re

import pytest
import torch
from IPython.core.error import UsageError

CELLS = {  # the cell, the function of x it means (out of place), for torch.func.grad
    "exp-add_": ("z = x.exp()\nz.add_(1)\nw = (z * z).sum()",
                 lambda x: ((x.exp() + 1) ** 2).sum()),
    "sigmoid-mul_": ("s = torch.sigmoid(x)\nt = s * x\ns.mul_(3)\nw = (t + s).sum()",
                     lambda x: (torch.sigmoid(x) * x + 3 * torch.sigmoid(x)).sum()),
    "tanh-iadd": ("h = torch.tanh(x)\nh += 2\nw = (h ** 2).sum()",
                  lambda x: ((torch.tanh(x) + 2) ** 2).sum()),
}


def _error(ip, source: str) -> str:
    run = ip.run_cell(source)
    assert isinstance(run.error_in_exec, UsageError), run.error_in_exec
    return " ".join(str(run.error_in_exec).split())


@pytest.mark.parametrize("case", list(CELLS))
def test_the_write_is_named_with_its_line_and_the_fix_runs(ip, case):
    body, function = CELLS[case]
    lines = body.splitlines()
    message = _error(ip, "%%vjp\nx = torch.linspace(-1, 1, 5, requires_grad=True)\n" + body)
    assert "w -= lr" not in message, message
    written = next(i for i, line in enumerate(lines) if "_(" in line or "+=" in line)
    assert f"{lines[written]} on line {written + 2}" in message, message
    fixed = re.search(r"Corrected: (.+?) \(a new tensor", message)
    assert fixed is not None, message
    lines[written] = fixed.group(1)
    run = ip.run_cell("x = torch.linspace(-1, 1, 5, requires_grad=True)\n"
                      + "\n".join(lines) + "\nw.backward()")
    assert run.error_in_exec is None, run.error_in_exec
    x = ip.user_ns["x"]
    expected = torch.func.grad(function)(x.detach())
    torch.testing.assert_close(x.grad, expected)


def test_an_input_updated_in_place_keeps_its_own_message(ip):
    message = _error(ip, "%%vjp\nw0 = torch.ones(3, requires_grad=True)\ny = (w0 * w0).sum()\n"
                         "with torch.no_grad():\n    w0 -= 0.1")
    assert "w0" in message and "modified in place" in message, message
