"""The pass that frees a kept graph (:func:`vjp_magic.run.passes.free_graph`) touches no
``retain_grad()`` tensor's ``.grad``, also one it is not told about (an earlier cell's tensor
the cell never reads): a ``.grad`` that was None stays None, a set one keeps its identity,
version and bits (a zero added would make -0.0 +0.0), as after a plain run (s43 F9).

Expected values: PyTorch's own plain run of the same cell (the graph freed: a second
backward raises; each ``.grad`` as the cell's own backward left it)."""
from __future__ import annotations

import pytest
import torch

from vjp_magic.run.passes import free_graph


class Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x ** 2

    @staticmethod
    def backward(ctx, g):
        x, = ctx.saved_tensors
        return 2 * x * g


@pytest.mark.parametrize("before", [None, "set", "negative zeros"])
def test_free_graph_leaves_an_untold_retain_grad_tensors_grad_alone(before):
    x = torch.linspace(-1, 1, 5, requires_grad=True)
    h = x * 2
    h.retain_grad()
    if before is not None:
        h.grad = torch.ones(5) if before == "set" else torch.full((5,), -0.0)
    grad = h.grad
    version = None if grad is None else grad._version
    bits = None if grad is None else grad.clone()
    y = (Square.apply(x) + h.sin() * h).sum()
    free_graph([y], None)
    assert h.grad is grad
    if grad is not None:
        assert grad._version == version
        assert torch.equal(torch.signbit(grad), torch.signbit(bits)) and torch.equal(grad, bits)
    with pytest.raises(RuntimeError, match="second time"):
        y.backward()  # freed, as the cell's own pass would have freed it


SETUP = '''
import torch
class Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x); return x ** 2
    @staticmethod
    def backward(ctx, g):
        x, = ctx.saved_tensors; return 2 * x * g
x = torch.linspace(-1, 1, 5, requires_grad=True)
h = x * 2
h.retain_grad()
z = h * 1
'''
CELL = "y = Square.apply(x) + z\ny.backward(gradient=torch.full((5,), -0.0))\n"


def test_an_earlier_cells_retain_grad_tensor_is_as_after_a_plain_cell(ip):
    outcomes = []
    for magic in (False, True):
        assert ip.run_cell(SETUP).success
        ip.run_cell(("%%vjp\n" if magic else "") + CELL)
        g = ip.user_ns["h"].grad
        later = ip.run_cell("y.sum().backward()")
        outcomes.append((torch.signbit(g).tolist(), g.tolist(), g._version,
                         type(later.error_in_exec).__name__))
    assert outcomes[1] == outcomes[0]
    assert outcomes[0][0] == [True] * 5 and outcomes[0][3] == "RuntimeError"
