"""Running a cell (``run/execute.py``): one run, one record, as IPython runs a plain cell
(IPython syntax, top-level await)."""
from __future__ import annotations

import pytest
import torch
from torch.autograd.variable import Variable

from vjp_magic.core.torch_api import ENGINE
from vjp_magic.run.execute import CellSyntaxError, run_cell
from vjp_magic.run.mistakes import MistakeKind

# -- one run, one record: IPython syntax, assignment order, errors as Python shows them ------------

def test_run_cell_runs_once_and_records_assignment_order(ip):
    ip.user_ns["runs"] = []
    run = run_cell(ip, "runs.append(1)\nx = torch.ones(2, requires_grad=True)\n"
                       "y = x * 2\nd = {}\nd['z'] = y + 1\nx = x\ny * 3")
    assert ip.user_ns["runs"] == [1]
    assert run.assigned == ["y", "d", "d['z']", "x"]  # by last binding
    assert set(run.targets) == {"d['z']"} and run.targets["d['z']"] is ip.user_ns["d"]["z"]
    assert run.final_source == "y * 3"
    torch.testing.assert_close(run.final_value, torch.full((2,), 6.0))
    assert run.reads[:2] == ["runs", "torch"] and run.mistake is None and run.record is None
    run.release()


def test_run_cell_ipython_syntax_is_transformed(ip):
    run = run_cell(ip, "x = torch.ones(2, requires_grad=True)\n%time y = x * 2\n")
    assert "y" in run.assigned
    run.release()


def test_run_cell_keeps_a_coached_mistake_and_stops_there(ip):
    run = run_cell(ip, "x = torch.ones(3, requires_grad=True)\ny = x * 2\ny.backward()\nz = 1")
    assert run.mistake.kind is MistakeKind.IMPLICIT_SCALAR and run.mistake.line == 3
    assert "z" not in ip.user_ns and run.assigned == ["x", "y"]
    run.release()


def test_run_cell_other_errors_propagate_and_syntax_errors_look_like_pythons(ip):
    with pytest.raises(KeyError):
        run_cell(ip, "x = 1\nraise KeyError('mine')")
    assert Variable._execution_engine is ENGINE
    with pytest.raises(CellSyntaxError) as info:
        run_cell(ip, "x = (1,\n")
    assert type(info.value).__name__ == "SyntaxError"
    assert isinstance(info.value.syntax_error, SyntaxError)


def test_run_cell_records_torch_calls_when_asked(ip):
    run = run_cell(ip, "x = torch.ones(2, requires_grad=True)\ny = x.exp()", record_ops=True)
    assert run.record is not None and len(run.record.calls) >= 1
    run.release()
    assert run.record.calls == []


# -- top-level await, as in a plain IPython cell ------------------------------------------------

def test_top_level_await_runs_as_in_a_plain_cell(ip, assert_tensor, run_vjp):
    r = run_vjp("import asyncio\nawait asyncio.sleep(0)\n"
                "g = torch.tensor([0., 1.], requires_grad=True)\nh = g.exp()")
    assert_tensor(r.derivatives["g"], torch.tensor([0.0, 1.0]).exp())
    r = run_vjp("async def twice(t):\n    return t * 2\nawait twice(g)")
    assert_tensor(r.derivatives["g"], [2.0, 2.0])
    assert ip.user_ns["g"].grad is None
