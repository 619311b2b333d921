"""An option given twice never drops the first silently: ``--wrt`` gathers every name given
(``--wrt x --wrt z`` is ``--wrt x z``), any other option that takes values is a usage error
saying to give it once. Expected: mathematics (d(sin(x)·z)/dx = cos(x)·z, d/dz = sin(x))."""
from __future__ import annotations

import pytest
import torch

SETUP = ("x = torch.linspace(0.1, 1, 3, dtype=torch.float64, requires_grad=True)\n"
         "z = torch.linspace(1, 2, 3, dtype=torch.float64, requires_grad=True)\n")
CELL = "\ny = torch.sin(x) * z\nw = y * 2"


def test_wrt_given_twice_gathers_both(ip, run_ok):
    run_ok(SETUP)
    r = run_ok("%%vjp --wrt x --wrt z" + CELL)
    x, z = ip.user_ns["x"].detach(), ip.user_ns["z"].detach()
    assert sorted(r.derivatives) == ["x", "z"]
    torch.testing.assert_close(r.jacobian("x"), torch.diag(2 * torch.cos(x) * z))
    torch.testing.assert_close(r.jacobian("z"), torch.diag(2 * torch.sin(x)))


@pytest.mark.parametrize("line", ["--of y --of w", "--of y --wrt x --of w",
                                  "--check a --check b", "--of=y --of w"])
def test_another_option_given_twice_is_a_usage_error(run_ok, usage_error, line):
    run_ok(SETUP)
    message = usage_error(f"%%vjp {line}" + CELL)
    option = line.split()[0].partition("=")[0]
    assert f"{option} is given 2 times; give it once" in message
