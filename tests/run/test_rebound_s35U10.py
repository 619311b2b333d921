"""An input bound again after the output was computed from it is named (s35 U10)."""
from __future__ import annotations

from vjp_magic.run.grad_advice import rebound_hint

CELL = ("x = torch.tensor([1., 2.], requires_grad=True)\ny = x**2\n"
        "x = torch.tensor([5., 6.], requires_grad=True)")


def test_the_rebound_input_and_its_lines_are_named():
    hint = rebound_hint(CELL, "y")
    assert hint.startswith("x was bound again on line 3, after y was computed from it on line 2")
    assert "the x of line 1" in hint


def test_no_rebinding_no_hint():
    assert rebound_hint("x = torch.ones(2, requires_grad=True)\ny = x**2", "y") is None
    assert rebound_hint("y = x**2\nz = 3", "y") is None
