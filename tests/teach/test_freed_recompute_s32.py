"""The code beneath a cell whose own backward freed the graph computes the output again only
from the line that made it as it is: where a later line changes y itself (y *= x, a loop
rebinding y), that line is not the output, and pasted it gave other numbers than the display."""
from __future__ import annotations

import pytest
import torch
from jupyter_harness import python_fences


@pytest.mark.parametrize("body, expected", [
    ("y = x**2\ny *= x\ny.backward(torch.ones_like(y))", [3.0, 0.0, 3.0]),
    ("y = x**2\nfor _ in range(2):\n    y = y * x\ny.backward(torch.ones_like(y))",
     [-4.0, 0.0, 4.0]),
])
def test_pasted_code_gives_the_numbers_shown(ip, body, expected):
    ip.run_cell("import torch")
    r = ip.run_cell_magic("vjp", "", "x = torch.linspace(-1, 1, 3, requires_grad=True)\n" + body)
    torch.testing.assert_close(r.derivatives["x"], torch.tensor(expected))
    shown = r._repr_mimebundle_()
    markdown = (shown[0] if isinstance(shown, tuple) else shown)["text/markdown"]
    (code,) = python_fences(markdown)
    outcome = ip.run_cell(code)
    if outcome.error_in_exec is not None:  # said what to do instead (retain_graph=True)
        assert "retain_graph=True" in code, code
        return
    torch.testing.assert_close(ip.user_ns["x"].grad, torch.tensor(expected))
