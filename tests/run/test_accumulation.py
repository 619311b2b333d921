"""A ``.grad`` summed over several backward calls (``run/accumulation.py``)."""
from __future__ import annotations

import torch
from coached import cell_error

from vjp_magic.run import accumulation
from vjp_magic.run.guard import keep_graphs


def test_accumulations_find_summed_grads_and_only_those():
    source = ("y = torch.stack([-x**3, 5*x])\n"
              "y.backward(torch.tensor([1., 0.]), retain_graph=True)\n"
              "y.backward(torch.tensor([0., 1.]), retain_graph=True)\n"
              "z = (w**2).sum()\nz.backward()")
    x, w = torch.tensor(1., requires_grad=True), torch.tensor(2., requires_grad=True)
    log, error = cell_error(source, {"torch": torch, "x": x, "w": w})
    assert error is None
    (found,) = accumulation.accumulations({"x": x, "w": w}, log)  # w: one call, nothing summed
    assert found == accumulation.Accumulation("x", 2, False, (2, 3))
    x.grad = None
    assert accumulation.accumulations({"x": x}, log) == []


def test_summed_calls_reads_any_value_against_the_log():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    y = x**3
    with keep_graphs() as log:
        y.backward(torch.ones_like(y), retain_graph=True)
        y.backward(torch.ones_like(y))
    twice = 2 * 3 * x.detach()**2  # d/dx x³ = 3x², added twice
    found = accumulation.summed_calls(twice, "x", x, log)
    assert (found.summed, found.with_before) == (2, False)
    assert accumulation.summed_calls(3 * x.detach()**2, "x", x, log).summed == 1
    assert accumulation.summed_calls(x.detach(), "x", x, log) is None
    assert accumulation.summed_calls(twice, "x", x, None) is None
