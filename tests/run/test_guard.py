"""Running a cell: the guard (graphs kept, then released as a plain cell would; ``.grad`` left
alone), the record of one run (:func:`run_cell`), and PyTorch's words (``core/torch_api``)."""
from __future__ import annotations

import pytest
import torch
from torch.autograd.variable import Variable

from vjp_magic.core.torch_api import (ENGINE, FREED_MESSAGE, TorchError, autograd_grad,
                                      gradient_position, torch_error)
from vjp_magic.run.execute import CellSyntaxError, run_cell
from vjp_magic.run.guard import keep_graphs, retained_grads_kept
from vjp_magic.run.mistakes import MistakeKind


def _second_pass(y):
    with pytest.raises(RuntimeError) as info:
        y.backward()
    return info.value


# -- core/torch_api: the error texts are PyTorch's own -------------------------------------------

def _raised(make) -> RuntimeError:
    with pytest.raises(RuntimeError) as info:
        make()
    return info.value


def _implicit():
    (torch.ones(3, requires_grad=True) * 2).backward()


def _shape():
    (torch.ones(3, requires_grad=True) * 2).backward(torch.ones(2))


def _twice():
    y = torch.ones(2, requires_grad=True).exp().sum()
    y.backward()
    y.backward()


def _inplace():
    w = torch.ones(2, requires_grad=True)
    y = (w**2).sum()
    with torch.no_grad():
        w.add_(1)
    y.backward()


@pytest.mark.parametrize("make, kind", [
    (_implicit, TorchError.IMPLICIT_SCALAR), (_shape, TorchError.GRADIENT_SHAPE),
    (_twice, TorchError.SECOND_PASS), (_inplace, TorchError.INPLACE),
])
def test_torch_error_recognises_pytorchs_own_messages(make, kind):
    error = _raised(make)
    assert torch_error(error) is kind
    assert torch_error(str(error)) is kind


def test_torch_error_ignores_other_errors():
    assert torch_error(RuntimeError("something else")) is None
    assert torch_error(ValueError(TorchError.SECOND_PASS.value)) is None  # not autograd's


def test_freed_message_is_pytorchs_text_and_gradient_position_reads_the_index():
    assert str(_raised(_twice)) == FREED_MESSAGE
    assert gradient_position(_raised(_shape)) == 0
    assert gradient_position("Mismatch in shape: grad_output[2] has a shape of") == 2
    assert gradient_position("no index here") is None


def test_real_autograd_captured_once():
    assert autograd_grad is torch.autograd.grad
    assert ENGINE is Variable._execution_engine  # outside a guarded block: the real engine


# -- run/guard: keep_graphs ----------------------------------------------------------------------

def test_graph_kept_in_the_block_then_freed_as_a_plain_cell_would():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    with keep_graphs() as log:
        y = (x.exp()).sum()
        y.backward()  # no retain_graph: the user's code frees the graph ...
        assert torch_error(_second_pass(y)) is TorchError.SECOND_PASS  # ... as PyTorch says
    assert Variable._execution_engine is ENGINE
    (g,) = autograd_grad(y, x, retain_graph=True)  # after the cell the analysis reads it
    torch.testing.assert_close(g, x.detach().exp())
    log.release()
    assert torch_error(_second_pass(y)) is TorchError.SECOND_PASS  # really freed now


def test_release_does_not_touch_grad_and_retained_graphs_stay():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    with keep_graphs() as log:
        y = (x**3).sum()
        y.backward(retain_graph=True)
        z = (x**2).sum()
        z.backward()
    after_cell = x.grad.clone()
    log.release()
    assert torch.equal(x.grad, after_cell)  # the freeing pass adds nothing
    y.backward()  # retain_graph=True: the user's graph is still usable
    torch.testing.assert_close(x.grad, after_cell + 3 * x.detach() ** 2)


def test_calls_are_recorded_with_their_line_and_grad_before():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    x.grad = torch.tensor([5.0, 5.0])
    source = "y = x * 2\ny.backward(torch.ones(2))\n"
    code = compile(source, "<cell-guard>", "exec")
    with keep_graphs("<cell-guard>") as log:
        exec(code, {"x": x, "torch": torch})
    (call,) = log.records
    assert (call.kind, call.line, call.error) == ("backward", 2, None)
    assert torch.equal(call.gradients[0], torch.ones(2))
    leaf, before = log.grad_before[id(x)]
    assert leaf is x and torch.equal(before, torch.tensor([5.0, 5.0]))
    log.release()


def test_a_failure_before_the_engine_is_rebuilt_from_its_frames():
    source = "y = x * 2\ny.backward()\n"
    code = compile(source, "<cell-fail>", "exec")
    x = torch.ones(3, requires_grad=True)
    with keep_graphs("<cell-fail>") as log:
        with pytest.raises(RuntimeError) as info:
            exec(code, {"x": x})
    log.record_failure(info.value)
    log.record_failure(info.value)  # once only
    (call,) = log.records
    assert call.error is info.value and call.line == 2 and call.kind == "backward"
    assert log.errors == [info.value]
    log.release()
    assert info.value.__traceback__ is None  # the cell's frames are not held


def test_engine_restored_when_the_block_raises():
    with pytest.raises(KeyError), keep_graphs():
        raise KeyError("mine")
    assert Variable._execution_engine is ENGINE


def test_retained_grads_kept():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    h = x * 3
    h.retain_grad()
    y = (h**2).sum()
    y.backward(retain_graph=True)
    before = h.grad.clone()
    with retained_grads_kept({"h": h, "pair": (h, 1)}):
        autograd_grad(y, x, retain_graph=True)  # the retain_grad hook fires here ...
        h.grad.add_(1)
    assert torch.equal(h.grad, before)  # ... and is undone


# -- run/execute: one run, one record ------------------------------------------------------------

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
