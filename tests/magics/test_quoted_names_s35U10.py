"""Every option that takes names reads the quoted spelling %%vjp? shows for --of (s35 U10)."""
from __future__ import annotations

import pytest
import torch

SETUP = ("x = torch.linspace(-1, 1, 5, requires_grad=True)\n"
         "w = torch.linspace(1, 2, 5, requires_grad=True)\n")


@pytest.mark.parametrize("line", ['--wrt "x"', "--wrt 'x'", '--wrt "x, w"', '--wrt "x w"',
                                  '--wrt "x" w'])
def test_quoted_wrt_names_are_the_names(run_vjp, line):
    r = run_vjp(SETUP + "y = torch.sin(x) * w", line)
    names = [n for n in ("x", "w") if f"{n}" in line.replace("--wrt", "")]
    assert list(r.derivatives) == names
    x, w = torch.linspace(-1, 1, 5), torch.linspace(1, 2, 5)
    torch.testing.assert_close(r.derivatives["x"], torch.cos(x) * w)  # d(sin x · w)/dx


def test_a_quoted_check_name_is_the_answer(run_vjp):
    r = run_vjp(SETUP + "y = (x**2).sum()\nans = 2 * x.detach()", '--check "ans"')
    assert r.check.correct  # d(Σx²)/dx = 2x


@pytest.mark.parametrize("line", ['%jacobian "y" wrt "x"', "%jacobian y wrt 'x, w'",
                                  '%jacobian "y * 1" "x"'])
def test_quoted_names_in_a_jacobian_line(run_ok, line):
    run_ok(SETUP + "y = torch.sin(x) * w")
    r = run_ok(line)
    x, w = torch.linspace(-1, 1, 5), torch.linspace(1, 2, 5)
    torch.testing.assert_close(r.jacobian("x"), torch.diag(torch.cos(x) * w))
