"""Flags that only mean something beside another: refused before the cell runs, with the flag
that is missing, and nothing the cell would assign is lost (it never ran)."""
from __future__ import annotations

import pytest


@pytest.mark.parametrize("flag", ["--reveal", "--against torch.stack([-x**3, 5*x])"])
def test_a_grading_flag_without_check_names_the_missing_flag(ip, usage_error, flag):
    ip.user_ns.pop("fresh", None)
    message = usage_error(f"%%vjp {flag}\nfresh = torch.ones(3, requires_grad=True)\n"
                          "y = torch.stack([-fresh**3, 5*fresh])")
    name = flag.split()[0]
    assert f"{name} goes with --check NAME" in message
    assert "fresh" not in ip.user_ns  # refused before the cell ran: nothing half-done


def test_against_with_check_runs(run_vjp):
    r = run_vjp("x = torch.tensor([0., 1., 2.], requires_grad=True)\n"
                "y = torch.stack([-x**3, 5*x])\n"
                "ans = torch.tensor([[0., -3., -12.], [5., 5., 5.]])",  # -3x², 5 at 0, 1, 2
                "--check ans --against torch.stack([-x**3, 5*x])")
    assert r.check.correct
