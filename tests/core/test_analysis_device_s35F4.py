"""The CPU as the analysis's default device is the analysis's alone (s35 F4): the user's code
that runs during it (the exercise's f of --against) makes its tensors on the user's
default device, as a plain run does; the cell's own
torch.set_default_device is in force after a %%vjp cell as after a plain one."""
from __future__ import annotations

import pytest
import torch

F = """
seen = []
def f(x):
    seen.append(torch.empty(0).device.type)
    return torch.sin(x)
"""
CELL = ("x = torch.linspace(-1, 1, 3, device='cpu', requires_grad=True)\ny = torch.sin(x)\n"
        "ans = torch.cos(x.detach())")


def test_the_exercises_f_sees_the_users_default_device(ip, run_ok):
    """(Before: --against f ran f with the CPU as the default, a plain call of f under meta.)"""
    run_ok(F)
    torch.set_default_device("meta")
    try:
        run_ok(CELL + "\nf(x)")  # the plain run of f
        r = run_ok("%%vjp --check ans --against f\n" + CELL)
        assert torch.get_default_device().type == "meta"
    finally:
        torch.set_default_device(None)
    assert ip.user_ns["seen"] == ["meta", "meta"]
    assert r.check.correct


BODY = ("x = torch.linspace(-1, 1, 3, requires_grad=True)\ny = torch.sin(x)\n"
        "torch.set_default_device({!r})")


@pytest.mark.parametrize("before, set_in_cell", [(None, "meta"), ("meta", None),
                                                 ("meta", "cpu")])
def test_the_cells_default_device_is_in_force_after_it(ip, run_ok, before, set_in_cell):
    after = []
    for magic in ("", "%%vjp\n"):
        torch.set_default_device(before)
        try:
            run_ok("x = None")
            run_ok(magic + BODY.format(set_in_cell).replace(
                "linspace(-1, 1, 3,", "linspace(-1, 1, 3, device='cpu',"))
            after.append((torch.get_default_device().type, torch.zeros(1).device.type))
        finally:
            torch.set_default_device(None)
    assert after[1] == after[0]
