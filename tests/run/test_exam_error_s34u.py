"""Exam mode hides the derivatives, not the error that stopped the student's cell (s34 U9): a
plain cell shows PyTorch's error; exam mode shows it too, without the coaching's fix."""
from __future__ import annotations

import pytest

NON_SCALAR = ("x = torch.linspace(-1, 1, 4, requires_grad=True)\n"
              "y = x**2\n"
              "y.backward()")  # PyTorch: grad can be implicitly created only for scalar outputs


def _shown(ip, cell: str) -> str:
    ip.run_line_magic("config", "VJPMagics.exam = True")
    try:
        run = ip.run_cell(cell)
    finally:
        ip.run_line_magic("config", "VJPMagics.exam = False")
    assert run.success, run.error_in_exec
    shown = run.result._repr_mimebundle_()
    shown = shown[0] if isinstance(shown, tuple) else shown
    return " ".join(shown["text/plain"].split())


@pytest.mark.parametrize("line", ["", "--check x.grad"], ids=["no-check", "check"])
def test_the_error_is_shown_at_its_line_without_the_fix(ip, line):
    text = _shown(ip, f"%%vjp {line}\n{NON_SCALAR}")
    assert "line 3 (y.backward())" in text, text
    assert "RuntimeError: grad can be implicitly created only for scalar outputs" in text, text
    assert "torch.ones_like" not in text and "Corrected" not in text, text  # no answer given


def test_a_cell_that_ran_through_says_nothing_of_stopping(ip):
    text = _shown(ip, "%%vjp\nx = torch.linspace(-1, 1, 4, requires_grad=True)\n"
                      "y = (x**2).sum()\ny.backward()")
    assert "stopped" not in text, text
