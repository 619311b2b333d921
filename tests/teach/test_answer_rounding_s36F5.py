"""s36 F5: an answer's own rounding forgives only rounding (teach/grading._own_rounding).

The answer's calls, replayed in float64 from the cell's record, must leave every entry within
1% of its own value, finite: a float32 formula that lost every digit (tanh by exponentials at
x = 1e-9 gives 0: exp(2e-9) is 1 in float32) or overflowed (exp(120) is inf) is ✗, though
its formula is right. Expected values: mathematics (tanh(1e-9) = 1e-9, not 0).
"""
from __future__ import annotations

import pytest

TANH = "(torch.exp(2 * x.detach()) - 1) / (torch.exp(2 * x.detach()) + 1)"


@pytest.mark.parametrize("values, right", [
    ("[1e-4, 2e-4, 3e-4]", True),  # ~1e-4 relative off: rounding
    ("[1e-9, 2e-9, 3e-9]", False),  # 0 for 1e-9: no digit right
    ("[1.0, 2.0, 60.0]", False),  # nan at 60: exp(120) overflows, tanh(60) = 1
])
def test_only_rounding_is_forgiven(run_ok, run_vjp, values, right):
    run_ok("def f(t):\n    return torch.log(torch.cosh(t))")
    r = run_vjp(f"x = torch.tensor({values}, requires_grad=True)\n"
                f"y = torch.log(torch.cosh(x))\nans = {TANH}", "--check ans --against f")
    assert r.check.correct is right, r.check.hint


def test_a_wrong_formula_replayed_in_float64_stays_wrong(run_ok, run_vjp):
    run_ok("def f(t):\n    return torch.log(torch.cosh(t))")
    r = run_vjp("x = torch.tensor([1e-4, 2e-4, 3e-4], requires_grad=True)\n"
                "y = torch.log(torch.cosh(x))\nans = torch.tanh(x.detach()) * 1.001",
                "--check ans")
    assert not r.check.correct and "own float32" not in r.check.hint
