"""--gradcheck's replays run a custom autograd.Function's forward (the user's own code) again:
the display says how many times, and what that means for the user's state (a list the forward
appends to is put back, a file it writes is not); where no replay ran it, the note still says
it "runs only once". Every count expected here is the number of lines the user's forward
wrote to a file (beyond any put-back), read after the cell."""
from __future__ import annotations

import re

import pytest
import torch

from vjp_magic.run.steps import forwards_run

LOGGED = '''
import torch, torch.nn as nn
LOG = []
RUNS = None                                # a file each forward writes a line to
def _log():
    LOG.append("forward")
    if RUNS:
        with open(RUNS, "a") as f: f.write("forward\\n")
class Logged(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x): _log(); ctx.save_for_backward(x); return x**2
    @staticmethod
    def backward(ctx, g): x, = ctx.saved_tensors; return 2*g*x
class Noisy(torch.autograd.Function):      # draws random numbers: no float64 replay of it
    @staticmethod
    def forward(ctx, x): _log(); return x * (1 + 0.0 * torch.rand_like(x))
    @staticmethod
    def backward(ctx, g): return g
class Net(nn.Module):
    def __init__(self):
        super().__init__(); self.l = nn.Linear(3, 2)
    def forward(self, x): return Logged.apply(self.l(x)).sum()
torch.manual_seed(0)
net = Net()
'''

_X = "x = torch.linspace(1., 2., 5, requires_grad=True)\n"


def _text(r) -> str:
    return " ".join(r._repr_mimebundle_()["text/plain"].split())


def _said_more(text: str) -> tuple[int, ...]:
    """The extra runs the display states: in the note, and in the check's sentence."""
    note = re.findall(r"ran once, in the cell, and (\d+) more times? in --gradcheck", text)
    check = re.findall(r"replays ran Logged's forward (\d+) more times?", text)
    return tuple(int(n) for n in note + check)


@pytest.mark.parametrize("cell", [_X + "y = Logged.apply(x)", _X + "y = Logged.apply(x).sum()",
                                  "x = torch.randn(4, 3)\nloss = net(x)"],
                         ids=["y", "y.sum()", "model --wrt net"])
def test_the_display_says_how_many_more_times_the_check_ran_the_forward(ip, run_ok, cell,
                                                                       tmp_path):
    run_ok(LOGGED)
    run_ok(f"RUNS = {str(tmp_path / 'runs')!r}")
    line = "--gradcheck --wrt net" if "net(" in cell else "--gradcheck"
    r = run_ok(f"%%vjp {line}\n{cell}")
    runs = (tmp_path / "runs").read_text().split().count("forward")  # the cell's, the check's
    assert ip.user_ns["LOG"] == ["forward"]  # the list: as the plain cell leaves it
    text = _text(r)
    assert runs > 1 and "runs only once" not in text, (runs, text)
    assert _said_more(text) == (runs - 1, runs - 1), (runs, text)
    assert r.gradcheck.reran == {"Logged": runs - 1}
    assert "Drop --gradcheck to run it only once" in text and "a list it appends to" in text
    assert "writing a file" in text
    assert r.gradcheck.ok is True


def test_without_gradcheck_the_forward_runs_once_as_said(ip, run_ok):
    run_ok(LOGGED)
    r = run_ok(f"%%vjp\n{_X}y = Logged.apply(x).sum()")
    assert ip.user_ns["LOG"] == ["forward"]
    assert "runs only once" in _text(r) and "Drop --gradcheck" not in _text(r)


def test_a_check_that_runs_no_forward_keeps_runs_only_once(ip, run_ok):
    """A forward that draws random numbers is refused for the float64 replay before any
    replay runs it: the check is not run, the forward ran once, and the note says so."""
    run_ok(LOGGED)
    r = run_ok(f"%%vjp --gradcheck\n{_X}y = Noisy.apply(x).sum()")
    text = _text(r)
    assert ip.user_ns["LOG"] == ["forward"]
    assert r.gradcheck.ok is None and r.gradcheck.reran == {}
    assert "runs only once" in text and "Drop --gradcheck" not in text, text


def test_a_check_of_torch_operations_only_says_nothing_of_forwards(ip, run_ok):
    r = run_ok(f"%%vjp --gradcheck\n{_X}y = (x ** 2).sum()")
    assert r.gradcheck.ok is True and r.gradcheck.reran == {}
    assert "forward" not in _text(r)


def test_forwards_run_counts_each_open_counter_apart():
    """Nested counters each count the runs made while they are open; closing one (equal in
    value to another) leaves the other counting."""
    from vjp_magic.run.record import FunctionApply
    from vjp_magic.run.steps import Interpreter, Step

    class Twice(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return 2 * x

        @staticmethod
        def backward(ctx, g):
            return 2 * g

    x = torch.ones(2)
    y = Twice.apply(x)
    step = Step(FunctionApply(Twice), (x,), {}, y, (), True, {})
    with forwards_run() as outer:
        with forwards_run() as empty:  # closed while equal to outer ({}): outer counts on
            pass
        with forwards_run() as inner:
            Interpreter([step]).run({})
        Interpreter([step]).run({})
    Interpreter([step]).run({})
    assert (outer, inner, empty) == ({"Twice": 2}, {"Twice": 1}, {})
