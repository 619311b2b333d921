"""The record of the cell's one run (``run/record.py``): the cell's code runs once (side
effects, generators, files, hooks and optimizer steps happen once, and a replay of the record
gives the formulas), what the recorder keeps, and when it gives up."""
from __future__ import annotations

import pytest
import sympy
import torch
from closed_forms import run_recorded, same, x, x1, x2, x3

from vjp_magic import differentiate
from vjp_magic.run import record as record_module
from vjp_magic.run.record import recording
from vjp_magic.symbolic import derive


# -- the cell runs once: its effects happen once, the replay of its record gives the formula -------
def test_a_function_with_a_side_effect_runs_once(ip, run_ok, run_vjp):
    run_ok("calls = []\ndef f(t):\n    calls.append(1)\n    return t.sin()")
    r = run_vjp("x = torch.linspace(0, 1, 3, requires_grad=True)\ny = f(x) * 2", "--symbolic")
    assert ip.user_ns["calls"] == [1]
    assert same(r.symbolic["x"], 2 * sympy.cos(x))
    assert r.crosscheck["x"] is True


def test_a_generator_advances_once(ip, run_ok, run_vjp):
    run_ok("def powers():\n    k = 2\n    while True:\n        yield k\n        k += 1\n"
               "g = powers()")
    r = run_vjp("x = torch.linspace(1, 2, 3, requires_grad=True)\nk = next(g)\ny = x ** k",
                "--symbolic")
    assert ip.user_ns["k"] == 2 and next(ip.user_ns["g"]) == 3
    assert same(r.symbolic["x"], 2 * x)
    assert r.crosscheck["x"] is True


def test_a_file_is_written_once(ip, run_vjp, tmp_path):
    path = tmp_path / "log.txt"
    ip.user_ns["path"] = str(path)
    r = run_vjp("with open(path, 'a') as f:\n    f.write('run\\n')\n"
                "x = torch.tensor([1., 2.], requires_grad=True)\ny = x.exp()", "--symbolic")
    assert path.read_text() == "run\n"
    assert same(r.symbolic["x"], sympy.exp(x))


def test_a_forward_hook_runs_once_and_its_change_is_in_the_formula(ip, run_ok, run_vjp):
    run_ok("torch.manual_seed(0)\nhits = []\nlayer = torch.nn.Linear(2, 1)\n"
           "def hook(module, inputs, output):\n    hits.append(1)\n    return output * 3\n"
           "handle = layer.register_forward_hook(hook)")
    r = run_vjp("x = torch.ones(4, 2, requires_grad=True)\ny = layer(x)", "--symbolic --wrt x")
    assert ip.user_ns["hits"] == [1]
    weight = ip.user_ns["layer"].weight.detach().reshape(-1)
    got = torch.tensor([float(v) for v in r.symbolic["x"]])
    torch.testing.assert_close(got, 3 * weight)  # d(3 (w . x + b))/dx = 3 w
    assert r.crosscheck["x"] is True


def test_an_optimizer_step_moves_the_parameter_once(ip, run_ok, run_vjp):
    run_ok("w = torch.tensor(1.0, requires_grad=True)\nopt = torch.optim.SGD([w], lr=0.1)")
    r = run_vjp("x = torch.tensor([1., 2.], requires_grad=True)\nopt.zero_grad()\n"
                "(w * 2).backward()\nopt.step()\ny = x ** 2 * w", "--symbolic --wrt x")
    torch.testing.assert_close(ip.user_ns["w"].detach(), torch.tensor(0.8))  # 1 - 0.1 * 2, once
    torch.testing.assert_close(ip.user_ns["w"].grad, torch.tensor(2.0))  # zero_grad ran once
    assert same(r.symbolic["x"], sympy.Rational(8, 5) * x)
    assert r.crosscheck["x"] is True


@pytest.mark.parametrize("values, expected", [
    ("[0.5, 1.5]", 2 * x),  # x.sum() > 0: the cell took y = x**2
    ("[-0.5, -1.5]", 3 * x**2),  # otherwise y = x**3
])
def test_a_data_dependent_branch_gives_the_formula_of_the_branch_taken(run_vjp, values, expected):
    r = run_vjp(f"x = torch.tensor({values}, requires_grad=True)\n"
                "if x.sum() > 0:\n    y = x**2\nelse:\n    y = x**3", "--symbolic")
    assert same(r.symbolic["x"], expected)
    assert r.crosscheck["x"] is True


def test_element_assignment_into_a_plain_tensor(run_vjp):
    r = run_vjp("x = torch.tensor([1., 2., 3.], requires_grad=True)\ny = torch.zeros(3)\n"
                "y[0] = x[0] ** 2\ny[2] = x[1] * x[2]", "--symbolic --full")
    assert same(r.symbolic["x"], [[2 * x1, 0, 0], [0, 0, 0], [0, x3, x2]])
    assert r.crosscheck["x"] is True


# -- the recorder: results, exceptions, outermost calls only; when it gives up ---------------------
def test_recording_keeps_results_and_exceptions_and_only_outermost_calls():
    import torch.nn.functional as F

    x_ = torch.linspace(-1, 1, 5, requires_grad=True)
    with recording() as record:
        soft = F.softmax(x_, 0)
        norm = x_.norm()
    assert [c.result for c in record.calls] == [soft, norm]  # not softmax's or norm's insides
    torch.testing.assert_close(soft, torch.softmax(x_.detach(), 0))
    with pytest.raises(RuntimeError) as unrecorded:
        torch.ones(2) @ torch.ones(3)
    with pytest.raises(RuntimeError) as recorded, recording() as failed:
        torch.ones(2) @ torch.ones(3)
    assert str(recorded.value) == str(unrecorded.value)
    assert failed.calls == []  # released: the cell raised


def test_a_cell_with_too_many_calls_is_not_replayed(monkeypatch):
    from vjp_magic.run import record as record_module

    monkeypatch.setattr(record_module, "MAX_CALLS", 3)
    ns, record = run_recorded("x = torch.tensor([1., 2.], requires_grad=True)\n"
                              "y = x * 2 + 1 - x ** 2")
    assert record.failed and record.calls == []  # gave up and let go of what it held
    r = differentiate(ns["y"], {"x": ns["x"]})
    report = derive(r, record=record, namespace=ns)
    assert report.note == ("symbolic: the cell made more than 3 torch calls, so there is no "
                           "record to replay; numbers only")


def test_a_released_record_keeps_nothing_alive():
    import gc
    import weakref

    with recording() as record:
        big = torch.ones(1000) * 2
        big.add_(1)
    ref = weakref.ref(big)
    assert len(record) == 3 and record.calls[2].before[0][1] is not None  # ones, *, add_
    del big
    gc.collect()
    assert ref() is not None  # the record holds it
    record.release()
    gc.collect()
    assert ref() is None


def test_record_gives_up_past_its_memory_cap(monkeypatch):
    monkeypatch.setattr(record_module, "MAX_HELD_BYTES", 1000)
    dataset = torch.zeros(10_000)  # the cell's own memory: a view of it pins nothing new
    x = torch.randn(10)
    with recording() as rec:
        for _ in range(5):
            x = x * 2  # 40 bytes a result
        batch = dataset[:100] + 0  # 400 bytes
        assert rec.failed is None and rec.held_bytes == 5 * 40 + 400
        big = torch.zeros(1000)  # 4,000 bytes: past the cap, the record gives up
    assert rec.failed is not None and "more than a record may hold" in rec.failed
    assert rec.calls == [] and rec.held_bytes == 0
    assert big.shape == (1000,) and batch.shape == (100,)
