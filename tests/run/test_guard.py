"""The guard (``run/guard.py``): graphs kept, then released as a plain cell would; ``.grad``
left alone."""
from __future__ import annotations

import pytest
import torch
from torch.autograd.variable import Variable

from vjp_magic.core.torch_api import ENGINE, TorchError, autograd_grad, torch_error
from vjp_magic.run.guard import keep_graphs, retained_grads_kept


def _second_pass(y):
    with pytest.raises(RuntimeError) as info:
        y.backward()
    return info.value


# -- keep_graphs: graphs kept while the cell runs, released as a plain run releases them -----------

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
