"""F13 (session 37): the classes behind G23's modes and reads findings.

1. core/modes' bookkeeping is a stack by identity: modes_aside / users_modes nested three deep
   (an entry point called by the user's code), with equal-looking (empty) entries and an
   exception raised in the innermost, leaves torch's stacks and modes._SAVED as they were, and
   the user's mode sees the user's calls only.
2. run/cuts.find_reads: a read after the output's last call that may rebind the output (a
   branch, a loop, a conditional expression, a bound number) counts; one in a statement that
   only shows a value (print, a logger) does not.
3. a numpy view of x (x.detach().numpy()) is no value going back into torch.
Expected claims come from the mathematics: at another x the other branch's formula x * x.sum()
has every off-diagonal Jacobian entry non-zero (torch.autograd.functional.jacobian).
"""
from __future__ import annotations

import pytest
import torch
from torch.overrides import _get_current_function_mode_stack

from mode_loggers import FunctionLog, mode_stacks

from vjp_magic.core import modes
from vjp_magic.core.modes import modes_aside, users_modes


def _stack():
    return mode_stacks()[0]


@pytest.fixture
def entered():
    mode = FunctionLog()
    mode.__enter__()
    before = list(modes._SAVED.entries)
    try:
        yield mode
    finally:
        assert modes._SAVED.entries == before  # each modes_aside took its own entry off
        while _get_current_function_mode_stack():
            torch._C._pop_torch_function_stack()


def _nest(mode, depth: int, fail_at: int | None = None):
    """modes_aside, an analysis call, users_modes, the user's call, then the same nested."""
    with modes_aside():
        assert _stack() == []
        torch.cos(torch.ones(1))  # the analysis: not the user's
        with modes_aside():  # an empty entry inside (equal to any other empty one)
            with users_modes():
                assert _stack() == ["FunctionLog"]
                torch.sin(torch.ones(1))  # the user's
                if depth > 1:
                    _nest(mode, depth - 1, fail_at)
                elif fail_at is not None:
                    raise KeyError("user")
                assert _stack() == ["FunctionLog"]
            assert _stack() == []


def test_three_deep_entry_points_keep_the_users_mode(entered):
    _nest(entered, 3)
    assert _stack() == ["FunctionLog"]
    assert [n for n in entered.names if n in ("sin", "cos")] == ["sin"] * 3


def test_an_exception_three_deep_puts_everything_back(entered):
    with pytest.raises(KeyError):
        _nest(entered, 3, fail_at=3)
    assert _stack() == ["FunctionLog"]
    assert [n for n in entered.names if n in ("sin", "cos")] == ["sin"] * 3


def test_a_mode_entered_by_the_users_code_three_deep_stays_entered(entered):
    second = FunctionLog()
    with modes_aside():
        with users_modes():
            with modes_aside():
                with users_modes():
                    with modes_aside(), users_modes():
                        second.__enter__()
                    assert _stack() == ["FunctionLog", "FunctionLog"]
            assert _stack() == ["FunctionLog", "FunctionLog"]
        assert _stack() == []
    assert _stack() == ["FunctionLog", "FunctionLog"]
    torch._C._pop_torch_function_stack()


_POINT = "x = torch.tensor([0.3, -1.2, 2.0, 0.7, -0.1], dtype=torch.float64, requires_grad=True)\n"


def _every_x(r) -> bool:
    return "(proved for every x)" in r._repr_mimebundle_()["text/plain"]


def test_the_other_branch_is_dense():  # the premise of the cells below
    other = torch.tensor([0.3, -1.2, -2.0, 0.7, -0.1], dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda t: t * t.sum(), other)
    assert jac[~torch.eye(5, dtype=torch.bool)].abs().min() > 0


@pytest.mark.parametrize("source", [
    "y = x ** 2\nwhile x.sum() < 0:\n    y = x * x.sum()\n    break\n",
    "y = x ** 2\nif x.sum().item() < 0:\n    y = x * x.sum()\n",
    "y = x ** 2\ns = x.sum().item()\nif s < 0:\n    y = x * x.sum()\n",
    "y = x ** 2\nif (x < 0).all():\n    y = x * x.sum()\n",
    "y = x ** 2\ny = x * x.sum() if x.sum() < 0 else y\n",
    "y = x ** 2\nprint(y.sum().item()) if x.sum() > 0 else None\n",
    "y = x ** 2\nif -5.0 in x:\n    y = x * x.sum()\n",
    "import numpy as np\ny = x ** 2\nif np.asarray(x.detach()).sum() < 0:\n    y = x * x.sum()\n",
    "y = x ** 2 if x.detach().cpu().numpy().sum() > 0 else x * x.sum()\n",
])
def test_a_read_that_may_rebind_the_output_counts(run_vjp, source):
    assert not _every_x(run_vjp(_POINT + source))


@pytest.mark.parametrize("source", [
    "y = x ** 2\nprint(y.sum().item())\n",
    "y = x ** 2\nprint(f'{x.sum():.3f}', float(y.max()))\n",
    "import logging\ny = x ** 2\nlogging.getLogger('t').info('%s', x.sum().item())\n",
    "losses = []\ny = x ** 2\nlosses.append(y.sum().item())\n",
    "print(x.sum())\ny = x ** 2\nprint(x.detach().numpy())\n",
])
def test_a_value_only_shown_after_the_output_is_no_read(run_vjp, source):
    r = run_vjp(_POINT + source)
    assert _every_x(r) and not r.cuts
