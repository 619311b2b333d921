"""The code beneath a freed graph recomputes ``y`` only from names that still hold what the
record's calls on that line saw (s35 T9, G15's finding 5): a name rebound by an import, a
``match`` capture or ``exec`` — which no assignment in the cell's text shows — gets the two
comment lines instead; a name whose value is unchanged still gets the line, which, pasted,
gives the numbers shown. Expected numbers: mathematics (y = x·k → k)."""
from __future__ import annotations

import re

import pytest
import torch

X = "x = torch.linspace(-1, 1, 5, requires_grad=True)\n"


def _code_beneath(result) -> str:
    text = result._repr_mimebundle_()["text/plain"]
    for block in re.findall(r"((?:^    .*\n?)+)", text, flags=re.MULTILINE):
        if "again" in block:
            return "\n".join(line[4:] for line in block.splitlines())
    raise AssertionError("no code block beneath")


@pytest.mark.parametrize("rebinding", [
    "from math import e as k\n", "import math as k\n", "match 3.0:\n    case k:\n        pass\n",
    "exec('k = 3.0')\n", "globals()['k'] = 3.0\n"])
def test_a_name_rebound_outside_an_assignment_is_not_recomputed(ip, rebinding):
    body = X + "k = 2.0\ny = x * k\ny.sum().backward()\n" + rebinding
    code = _code_beneath(ip.run_cell("%%vjp\n" + body).result)
    assert "y = x * k" not in code
    assert "retain_graph=True" in code


def test_a_tensor_changed_in_place_by_exec_is_not_recomputed(ip):
    body = (X + "w = torch.ones(5)\ny = torch.sin(x) + w\ny.sum().backward()\n"
            "exec('w.add_(1)')\n")  # (sin saves x, not w: no saved tensor was changed)
    code = _code_beneath(ip.run_cell("%%vjp\n" + body).result)
    assert "y = torch.sin(x) + w" not in code
    assert "retain_graph=True" in code


@pytest.mark.parametrize("line, slope", [
    ("k = 2.0\ny = x * k", 2.0),
    ("k = 2.0\ny = x * k + k", 2.0),
    ("y = x * -2.0", -2.0),
    ("w = torch.tensor(3.)\ny = x * w", 3.0),
    ("k = 2.0\ny = x * k\nexec('k = 2.0')", 2.0),  # rebound to the value the line saw
])
def test_the_line_whose_names_hold_what_it_saw_is_recomputed(ip, line, slope):
    result = ip.run_cell("%%vjp\n" + X + line + "\ny.sum().backward()\n").result
    code = _code_beneath(result)
    assert code.splitlines()[1].startswith("y = ")
    namespace = dict(ip.user_ns)
    exec(code, namespace)
    torch.testing.assert_close(namespace["x"].grad, torch.full((5,), slope))
