"""core.graph_walk: one walk of each graph per call serves every stage (s39 D11).

The walk's order is checked against a depth-first walk written here; the stages that read it
answer inside :func:`walked_once` as they do outside it (hooks, retain_grad, checkpoints); a
call of the pipeline walks each graph once; nothing is kept past the call, and a graph built
after :func:`seal` is not held."""
import collections

import pytest
import torch
import torch.utils.checkpoint as cp

import vjp_magic
from vjp_magic.core import graph_facts, graph_walk, reentrant, retained
from vjp_magic.core.errors import VJPUsageError
from vjp_magic.run import hookfree


def _reference(root) -> list:
    """Every node below ``root``, depth first, the last edge first (a stack)."""
    order, seen, stack = [], set(), [root]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        order.append(node)
        stack.extend(n for n, _ in node.next_functions)
    return order


def _counting(monkeypatch) -> collections.Counter:
    walks: collections.Counter = collections.Counter()
    real_walk, real_lazy = graph_walk._walk, graph_walk._lazy

    def walk(root):
        walks[root] += 1
        return real_walk(root)

    def lazy(roots):  # (outside the scope: the cell's own backward, run by the cell)
        walks["lazy" if getattr(graph_walk._SCOPE, "walks", None) is not None
              else "lazy outside"] += 1
        return real_lazy(roots)

    monkeypatch.setattr(graph_walk, "_walk", walk)
    monkeypatch.setattr(graph_walk, "_lazy", lazy)
    return walks


def _diamond():
    x = torch.randn(5, requires_grad=True)
    w = torch.randn(5, requires_grad=True)
    a = torch.sin(x) * w
    return x, w, (a * torch.cos(a) + a.exp()).sum()


def test_order_postorder_and_members():
    x, w, y = _diamond()
    walked = graph_walk.walk(y.grad_fn)
    assert list(walked.nodes) == _reference(y.grad_fn)
    assert list(graph_walk.walk_nodes([y.grad_fn])) == _reference(y.grad_fn)  # lazy
    assert walked.members == frozenset(_reference(y.grad_fn))
    order = walked.postorder
    assert sorted(map(id, order)) == sorted(map(id, walked.nodes)) and order[-1] is y.grad_fn
    for k, node in enumerate(order):  # each node after every node it points to
        below = {child for child, _ in node.next_functions if child is not None}
        assert below <= set(order[:k])
    leaves = {id(n.variable) for n in walked.nodes if hasattr(n, "variable")}
    assert leaves == {id(x), id(w)}


def test_one_walk_inside_the_scope_none_kept_past_it(monkeypatch):
    walks = _counting(monkeypatch)
    _, _, y = _diamond()
    with graph_walk.walked_once():
        first = list(graph_walk.walk_nodes([y.grad_fn]))
        assert graph_walk.postorder(y.grad_fn)[-1] is y.grad_fn
        assert list(graph_walk.walk_nodes([y.grad_fn])) == first
    assert walks[y.grad_fn] == 1
    graph_walk.walk(y.grad_fn)  # outside: walked again
    assert walks[y.grad_fn] == 2


def test_a_graph_built_after_seal_is_not_held(monkeypatch):
    walks = _counting(monkeypatch)
    x, _, y = _diamond()
    with graph_walk.walked_once():
        graph_walk.seal(y)
        g, = torch.autograd.grad(y, x, create_graph=True)  # the analysis's own graph
        graph_walk.walk(g.grad_fn), graph_walk.walk(g.grad_fn)
        graph_walk.walk(y.grad_fn), graph_walk.walk(y.grad_fn)
    assert walks[g.grad_fn] == 2 and walks[y.grad_fn] == 1


def _retaining():
    x = torch.randn(4, requires_grad=True)
    h = torch.tanh(x * 2)
    h.retain_grad()
    return x, h, torch.sin(h) * h


def _checkpointed(reentrant_kind: bool):
    x = torch.randn(4, requires_grad=True)
    return x, cp.checkpoint(lambda v: torch.sin(v) * v, x, use_reentrant=reentrant_kind) * 2


def _engine_hook():
    x = torch.randn(4, requires_grad=True)
    torch.autograd.graph.register_multi_grad_hook((x,), lambda grads: None, mode="all")
    return x, torch.sin(x) * 3


def _answers(x, y) -> tuple:
    """What each stage reading the walk says of ``y``'s graph (its error's words, if any)."""
    def said(stage):
        try:
            return stage()
        except VJPUsageError as error:
            return str(error)
    return (said(lambda: reentrant.reentrant_nodes(y)),
            said(lambda: reentrant._judged(y, probe=False)),
            said(lambda: hookfree.refuse_grad_only_hooks(y, {"x": x})),
            [id(t) for t in retained.retained(y)],
            [type(n).__name__ for n in graph_facts.nodes_of(y)])


@pytest.mark.parametrize("make", [_retaining, lambda: _checkpointed(True),
                                  lambda: _checkpointed(False), _engine_hook],
                         ids=["retain_grad", "reentrant checkpoint", "checkpoint", "hook"])
def test_every_stage_answers_inside_as_outside(make):
    made = make()
    x, y = made[0], made[-1]
    fired = []
    for node in _reference(y.grad_fn):
        node.register_prehook(lambda g, node=node: fired.append(node.name()))
    outside = _answers(x, y)
    with graph_walk.walked_once():
        inside, again = _answers(x, y), _answers(x, y)
    assert inside == outside == again
    assert fired == [] and x.grad is None
    if make is _retaining:
        assert outside[3] == [id(made[1])] and made[1].grad is None


def test_a_call_walks_each_graph_once(monkeypatch):
    walks = _counting(monkeypatch)
    torch.manual_seed(0)
    w1, w2 = torch.randn(16, 16), torch.randn(16, 16)
    x = torch.randn(16, requires_grad=True)
    y = torch.tanh(w2 @ torch.tanh(w1 @ x))
    r = vjp_magic.differentiate(y, x)
    torch.testing.assert_close(r.jacobian("x"), torch.func.jacrev(
        lambda v: torch.tanh(w2 @ torch.tanh(w1 @ v)))(x.detach()))
    assert walks == {y.grad_fn: 1}


def test_a_call_keeps_the_retain_grad_and_walks_once(monkeypatch):
    walks = _counting(monkeypatch)
    x, h, y = _retaining()
    r = vjp_magic.differentiate(y, x)
    expected = torch.func.jacrev(lambda v: torch.sin(torch.tanh(v * 2)) * torch.tanh(v * 2))
    torch.testing.assert_close(r.jacobian("x"), expected(x.detach()))
    assert h.grad is None and x.grad is None
    assert walks == {y.grad_fn: 1}
    y.sum().backward()  # the user's own backward still fills it, as a plain run would
    torch.testing.assert_close(h.grad, torch.cos(h.detach()) * h.detach() + torch.sin(h.detach()))


def test_a_cell_walks_each_graph_once(monkeypatch, ip, run_vjp):
    """A %%vjp cell whose graph carries a hook and a retain_grad tensor (its analysis on the
    hook-free copy): each graph, the cell's and the copy's, walked at most once; the hook
    fires as a plain run fires it (once, in the cell's own backward), h.grad as it left it."""
    walks = _counting(monkeypatch)
    ip.run_cell("x = torch.linspace(-1, 1, 5, requires_grad=True)\nfired = []")
    r = run_vjp("h = torch.sin(x) * 2\nh.retain_grad()\nh.register_hook(lambda g: fired.append(1))"
                "\ny = h ** 2\ny.sum().backward(retain_graph=True)")
    x, h = ip.user_ns["x"], ip.user_ns["h"]
    expected = torch.func.jacrev(lambda v: (torch.sin(v) * 2) ** 2)(x.detach())
    torch.testing.assert_close(r.jacobian("x"), expected)
    assert ip.user_ns["fired"] == [1]
    torch.testing.assert_close(h.grad, 2 * h.detach())
    torch.testing.assert_close(x.grad, torch.diagonal(expected))
    walks.pop("lazy outside", None)  # the cell's run (its backward's guard), not the analysis
    assert walks["lazy"] == 0 and max(walks.values()) == 1, walks
