"""Adversarial review, session 30 (second pass): user mistakes in ``%%vjp --wrt``. A mistake
gets a short usage error or does what was asked; an input is never dropped silently.
Expected: mathematics (d(sin(x)·z)/dz = sin(x)). Strict xfails are bugs."""
from __future__ import annotations

import torch

SETUP = ("x = torch.linspace(0.1, 1, 3, dtype=torch.float64, requires_grad=True)\n"
         "z = torch.linspace(1, 2, 3, dtype=torch.float64, requires_grad=True)\n")
CELL = "\ny = torch.sin(x) * z"


def test_one_name_twice_is_taken_once(ip, run_ok):
    ip.run_cell(SETUP)
    r = run_ok("%%vjp --wrt x x" + CELL)
    assert sorted(r.derivatives) == ["x"]
    x = ip.user_ns["x"].detach()
    torch.testing.assert_close(r.jacobian("x"), torch.diag(torch.cos(x) * ip.user_ns["z"].detach()))


def test_wrt_given_twice_keeps_both_or_says_so(ip):
    ip.run_cell(SETUP)
    result = ip.run_cell("%%vjp --wrt x --wrt z" + CELL)
    assert not result.success or sorted(result.result.derivatives) == ["x", "z"]


def test_one_entry_twice_is_taken_once(ip):
    """The same expression twice is one input: the cell ends as with it once (here the usage
    error that x[0] makes a new tensor y was not computed from), not "two inputs named"."""
    ip.run_cell(SETUP)
    once = ip.run_cell("%%vjp --wrt x[0]" + CELL)
    twice = ip.run_cell("%%vjp --wrt x[0] x[0]" + CELL)
    assert str(twice.error_in_exec) == str(once.error_in_exec)
    assert "Two different inputs" not in str(twice.error_in_exec)
