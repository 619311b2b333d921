"""A graph the guard kept for the analysis is freed as the cell's own backward would have freed
it, whatever hooks sit on its nodes (R1-3's class) and on every way out of the cell (R1-4's):
other members than the review's (an old-style module backward hook, a pre-hook on a custom
Function's node, a node hook freed by :func:`free_graph` itself, an interrupt while the
analysis runs).

Expected values: a plain run of the same cell, and PyTorch's own behaviour on the same graph."""
from __future__ import annotations

import warnings

import pytest
import torch

from vjp_magic.run.passes import free_graph

SQUARE = '''
import torch
calls = []
class Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x); return x ** 2
    @staticmethod
    def backward(ctx, g):
        x, = ctx.saved_tensors; return 2 * x * g
x = torch.linspace(-1, 1, 5, requires_grad=True)
lin = torch.nn.Linear(5, 5)
'''
_TAIL = "y2 = y1.sin()\ny2.sum().backward()\n"
HOOKED = {
    "old-style module backward hook": (
        "lin.register_backward_hook(lambda m, gi, go: calls.append('old'))",
        "y1 = lin(Square.apply(x)).sin()\n"),
    "custom node's prehook": ("", "s = Square.apply(x)\n"
                                  "s.grad_fn.register_prehook(lambda g: calls.append('cp'))\n"
                                  "y1 = s * x.sin()\n"),
    "two hooks on one node": ("", "y1 = Square.apply(x) * x.sin()\n"
                                  "y1.grad_fn.register_prehook(lambda g: calls.append('a'))\n"
                                  "y1.grad_fn.register_prehook(lambda g: calls.append('b'))\n"),
}


def _then_next_backward(ip, earlier: str, cell: str, magic: bool):
    torch.manual_seed(0)
    assert ip.run_cell(SQUARE).success
    if earlier:
        assert ip.run_cell(earlier).success
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the old-style hook's deprecation
        ip.run_cell(("%%vjp\n" if magic else "") + cell + _TAIL)
        first = ip.user_ns["x"].grad.clone()
        later = ip.run_cell("y1.sum().backward()")
    error = type(later.error_in_exec).__name__ if later.error_in_exec else None
    return error, list(ip.user_ns["calls"]), first, ip.user_ns["x"].grad.clone()


@pytest.mark.parametrize("hooked", list(HOOKED))
def test_a_kept_graph_with_hooks_on_its_nodes_is_freed_as_a_plain_cell_frees_it(ip, hooked):
    plain = _then_next_backward(ip, *HOOKED[hooked], magic=False)
    assert plain[0] == "RuntimeError"
    magic = _then_next_backward(ip, *HOOKED[hooked], magic=True)
    assert magic[:2] == plain[:2]
    torch.testing.assert_close(magic[2], plain[2])
    torch.testing.assert_close(magic[3], plain[3])


def _hooked_graph(calls: list):
    x = torch.linspace(-1, 1, 5, requires_grad=True)
    y = (x.exp() * x.sin()).sum()
    y.grad_fn.next_functions[0][0].register_prehook(lambda g: calls.append("pre"))
    y.grad_fn.next_functions[0][0].register_hook(lambda gi, go: calls.append("post"))
    return x, y


def test_free_graph_frees_through_node_hooks_without_running_them():
    calls: list = []
    x, y = _hooked_graph(calls)
    free_graph([y], None)
    assert calls == [] and x.grad is None  # none of the user's code ran, nothing added
    with pytest.raises(RuntimeError, match="second time"):
        y.backward()
    plain_calls: list = []
    _, plain = _hooked_graph(plain_calls)
    plain.backward()  # PyTorch's own: the hooks fire, the graph is freed
    with pytest.raises(RuntimeError, match="second time"):
        plain.backward()
    assert calls == plain_calls[:1]  # the pre-hook is still there: it fires, as in PyTorch


@pytest.mark.parametrize("stage", ["FromCell", "pipeline"])
def test_an_interrupt_while_the_analysis_runs_frees_the_graph(ip, monkeypatch, stage):
    """Ctrl-C as the analysis takes the cell's output, or while it computes."""
    import vjp_magic.magics as magics

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    outcomes = []
    for magic in (False, True):
        assert ip.run_cell(SQUARE).success
        if magic:
            monkeypatch.setattr(magics, stage, interrupted)
        ip.run_cell(("%%vjp\n" if magic else "") + "y1 = Square.apply(x) * x.sin()\n" + _TAIL)
        monkeypatch.undo()
        first = ip.user_ns["x"].grad.clone()
        later = ip.run_cell("y1.sum().backward()")
        outcomes.append((type(later.error_in_exec).__name__, first,
                         ip.user_ns["x"].grad.clone()))
    (error, first, after), magic = outcomes
    assert error == "RuntimeError" and magic[0] == error
    torch.testing.assert_close(magic[1], first)
    torch.testing.assert_close(magic[2], after)


@pytest.mark.parametrize("end", ["", "raise ValueError('mine')\n"], ids=["ends", "raises"])
def test_a_graph_freed_before_many_later_calls_is_freed_as_a_plain_cell(ip, end):
    """The tensor the cell differentiated (a temporary ``y1.sin().sum()``) is held for the
    freeing by the cell's record alone once nine later calls pushed it out of the log."""
    cell = ("y1 = Square.apply(x) * x.sin()\ny1.sin().sum().backward()\n"
            "for i in range(9):\n    x.cos().sum().backward()\n" + end)
    outcomes = []
    for magic in (False, True):
        assert ip.run_cell(SQUARE).success
        ip.run_cell(("%%vjp\n" if magic else "") + cell)
        first = ip.user_ns["x"].grad.clone()
        later = ip.run_cell("y1.sum().backward()")
        outcomes.append((type(later.error_in_exec).__name__, first,
                         ip.user_ns["x"].grad.clone()))
    (error, first, after), magic = outcomes
    assert error == "RuntimeError" and magic[0] == error
    torch.testing.assert_close(magic[1], first)
    torch.testing.assert_close(magic[2], after)
