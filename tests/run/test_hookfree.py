"""The analysis differentiates a hook-free copy of the cell's graph (run/hookfree.py), and the
guard keeps a graph only where that copy cannot be made, freeing exactly the nodes the engine
ran (run/guard.py).

Expected values come from mathematics or from torch.autograd.functional.jacobian; the states
compared with a plain run come from running the same code without the magic.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.autograd.functional import jacobian as reference_jacobian

from vjp_magic.run.passes import nodes_run
from vjp_magic.run.hookfree import analysed_graph
from vjp_magic.run.record import recording


# -- the copy ------------------------------------------------------------------------------
def test_copy_is_rebuilt_on_fresh_leaves_and_fires_no_hook():
    x = torch.linspace(-1, 1, 7, requires_grad=True)
    calls = []
    with recording() as record:
        h = x * 3
        h.register_hook(lambda g: calls.append(g))
        y = torch.sin(h)
    graph = analysed_graph(record, {"x": x}, y, {"h": h})
    assert graph.replayed and graph.reason is None
    assert graph.inputs["x"] is not x and graph.inputs["x"].is_leaf
    (g,) = torch.autograd.grad(graph.output, graph.inputs["x"], torch.ones_like(y))
    torch.testing.assert_close(g, 3 * torch.cos(3 * x.detach()))  # d/dx sin(3x)
    assert calls == [] and x.grad is None
    assert graph.hooks == ["h"]


def test_copy_draws_the_cells_own_random_numbers_and_moves_no_generator():
    x = torch.randn(500, requires_grad=True)
    with recording() as record:
        y = F.dropout(x, 0.5, training=True) * 2 + torch.rand_like(x)
    state = torch.get_rng_state()
    graph = analysed_graph(record, {"x": x}, y)
    assert graph.replayed and torch.equal(graph.output.detach(), y.detach())
    assert torch.equal(state, torch.get_rng_state())
    (g,) = torch.autograd.grad(graph.output, graph.inputs["x"], torch.ones_like(y))
    assert set(g.unique().tolist()) <= {0.0, 4.0} and bool((g == 4).any())  # mask·2/(1−p)


class _Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t):
        ctx.save_for_backward(t)
        return t * t

    @staticmethod
    def backward(ctx, g):
        (t,) = ctx.saved_tensors
        return 2 * t * g


def test_custom_function_keeps_the_cells_own_graph_and_says_why():
    x = torch.randn(4, requires_grad=True)
    with recording() as record:
        y = _Square.apply(x) + 1
    graph = analysed_graph(record, {"x": x}, y)
    assert not graph.replayed and graph.output is y and "_Square" in graph.reason
    assert "own graph" in " ".join(graph.notes("y"))


def test_an_input_computed_from_another_keeps_the_cells_graph():
    x = torch.randn(3, requires_grad=True)
    with recording() as record:
        h = x * 2
        y = h ** 2
    graph = analysed_graph(record, {"h": h, "x": x}, y)
    assert not graph.replayed and "h is computed from x" in graph.reason


# -- the guard: nodes the engine runs ---------------------------------------------------------
def test_nodes_run_with_inputs_are_only_those_on_the_way():
    x = torch.randn(3, requires_grad=True)
    w = torch.randn(3, requires_grad=True)
    a = torch.sin(x)  # below loss, but not on the way to w
    loss = (w * a).sum()
    ran = {type(n).__name__ for n in nodes_run([loss.grad_fn], [w])}
    assert ran == {"SumBackward0", "MulBackward0"}
    assert "SinBackward0" in {type(n).__name__ for n in nodes_run([loss.grad_fn], ())}


# -- through the magic, against a plain run ---------------------------------------------------
PARTIAL = """
w = torch.tensor([1., 2., 3.], requires_grad=True)
b = torch.tensor([0.5, -1., 2.], requires_grad=True)
a = torch.sin(b)
loss = (w * a).sum()
{first}
a.sum().backward()
"""


@pytest.mark.parametrize("first", ["loss.backward(inputs=[w])",
                                   "(gw,) = torch.autograd.grad(loss, w)"])
def test_a_pass_that_ran_part_of_a_graph_frees_only_that_part(ip, run_ok, first):
    source = PARTIAL.format(first=first)
    run_ok(source)  # the plain cell: the second pass goes through sin's node, never freed
    plain = ip.user_ns["b"].grad.clone()
    r = run_ok("%%vjp --of loss --wrt w\n" + source)
    torch.testing.assert_close(ip.user_ns["b"].grad, plain)
    torch.testing.assert_close(r.derivatives["w"], torch.sin(ip.user_ns["b"]).detach())


def test_a_cell_that_raises_after_its_backward_leaves_the_graph_freed(ip, run_ok):
    result = ip.run_cell("%%vjp\nx = torch.tensor([1., 2.], requires_grad=True)\n"
                         "loss = (x ** 3).sum()\nloss.backward()\nraise ValueError('mine')")
    assert isinstance(result.error_in_exec, ValueError)
    again = ip.run_cell("loss.backward()")
    assert isinstance(again.error_in_exec, RuntimeError)  # as after a plain cell
    torch.testing.assert_close(ip.user_ns["x"].grad, torch.tensor([3., 12.]))


def test_hooks_and_retained_grads_end_as_after_a_plain_cell(ip, run_ok):
    setup = ("torch.manual_seed(0)\nnet = torch.nn.Linear(3, 3)\ncounts = []\n"
             "net.register_full_backward_hook(lambda *a: counts.append('module'))\n")
    body = ("x = torch.randn(4, 3, requires_grad=True)\nh = net(x)\nh.retain_grad()\n"
            "h.register_hook(lambda g: counts.append('tensor'))\ny = torch.tanh(h)\n"
            "y.sum().backward()\n")
    run_ok(setup + body)
    plain = (list(ip.user_ns["counts"]), ip.user_ns["h"].grad.clone(),
             ip.user_ns["x"].grad.clone(), torch.get_rng_state())
    run_ok(setup)
    r = run_ok("%%vjp --of y --wrt x\n" + body)
    assert ip.user_ns["counts"] == plain[0] == ["tensor", "module"]
    assert torch.equal(ip.user_ns["h"].grad, plain[1])
    assert torch.equal(ip.user_ns["x"].grad, plain[2])
    assert torch.equal(torch.get_rng_state(), plain[3])
    net, x = ip.user_ns["net"], ip.user_ns["x"].detach()
    expected = reference_jacobian(lambda t: torch.tanh(net(t)), x).detach()
    torch.testing.assert_close(r.jacobian("x"), expected)
    assert "a module's backward hook" in " ".join(r.notes)


def test_a_checkpointed_block_runs_as_often_as_in_a_plain_cell(ip, run_ok):
    setup = "import torch.utils.checkpoint as cp\nruns = []\n" \
            "def block(t):\n    runs.append(1)\n    return torch.tanh(t) * 2\n"
    body = "x = torch.linspace(-1, 1, 5, requires_grad=True)\n" \
           "y = cp.checkpoint(block, x * 3, use_reentrant=False)\n"
    run_ok(setup)
    r = run_ok("%%vjp\n" + body)
    assert ip.user_ns["runs"] == [1]  # the forward only: the analysis reran nothing
    x = ip.user_ns["x"].detach()
    torch.testing.assert_close(r.derivatives["x"], 6 / torch.cosh(3 * x) ** 2)
    run_ok("y.sum().backward()")  # the plain cell's graph is intact: its backward reruns it
    assert ip.user_ns["runs"] == [1, 1]


def test_a_hook_that_changes_the_gradient_is_named(ip, run_vjp):
    r = run_vjp("x = torch.linspace(-1, 1, 5, requires_grad=True)\n"
                "x.register_hook(lambda g: g * 2)\ny = x ** 2\ny.sum().backward()")
    x = r.inputs["x"].tensor.detach()
    torch.testing.assert_close(r.derivatives["x"], 2 * x)  # d/dx x², not the hook's 4x
    torch.testing.assert_close(r.inputs["x"].tensor.grad, 4 * x)  # the plain cell's x.grad
    assert any("Gradient hooks on the way (x)" in note for note in r.notes)
    assert "Gradient hooks on the way" in repr(r)
