"""The graph facts read in core (core/graph_facts, s34 D6): one function f proved on a graph whose
saved values a backward freed, where the freed ones were values of the graph; nothing claimed
where a freed value could differ per point; a node class's saved names read once per class,
a custom Function's node each time; and 'one function' read only where a display may say it.
Expected answers from mathematics (x**2 applies one f at every point; x * w applies w[i]·x)."""
import torch

from vjp_magic.core import graph_facts
from vjp_magic.core.pairing import Pairing


class _Item:
    def __init__(self, tensor, pairs):
        self.tensor, self.pairing = tensor, Pairing(pairs)


def _one_f(y, x, pairs=((0, 0),)) -> bool:
    return "x" in graph_facts.facts(y, {"x": _Item(x, pairs)})["one_function"]


def _freed(make):
    x = torch.linspace(-2, 2, 5, requires_grad=True)
    y = make(x)
    kept = _one_f(y, x)
    y.backward(torch.ones_like(y))  # frees the saved values
    return kept, _one_f(y, x)


def test_one_function_after_backward_freed_the_saved_input():
    # x ** 2, x.sin(), tanh(x) (saves its result), x * x: one f at every point, freed or not
    for make in (lambda x: x ** 2, torch.sin, torch.tanh, lambda x: x * x,
                 lambda x: torch.exp(x) * x):
        assert _freed(make) == (True, True)


def test_no_one_function_where_a_freed_value_may_differ_per_point():
    w = torch.arange(5.)
    mask = torch.arange(5) > 2
    for make in (lambda x: x * w, lambda x: x ** w,
                 lambda x: torch.where(mask, x.sin(), x.cos())):
        assert _freed(make) == (False, False)


def test_a_freed_operand_from_another_leaf_is_not_known():
    w = torch.arange(1., 6., requires_grad=True)  # requires grad, but not from x: may differ
    x = torch.linspace(-2, 2, 5, requires_grad=True)
    y = x * w
    assert not _one_f(y, x)
    y.backward(torch.ones_like(y))
    assert not _one_f(y, x)


def test_saved_names_cached_per_class_but_not_for_a_custom_function():
    class Double(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a):
            ctx.save_for_backward(a)
            return 2 * a

        @staticmethod
        def backward(ctx, g):
            return 2 * g

    x = torch.ones(3, requires_grad=True)
    node = x.sin().grad_fn
    names, flag = graph_facts.saved_attributes(node)
    assert "_saved_self" in names and flag is None
    assert type(node) in graph_facts._CLASSES
    custom = Double.apply(x).grad_fn
    graph_facts.saved_attributes(custom)
    assert type(custom) not in graph_facts._CLASSES  # its attributes are its own


def test_one_function_asked_only_where_a_display_may_say_it():
    W = torch.randn(4, 4)
    x = torch.randn(4, requires_grad=True)
    y = torch.tanh(W @ x)
    found = graph_facts.facts(y, {"x": _Item(x, ())})  # no points, 4 numbers: never said
    assert found["one_function"] == frozenset()
    s = torch.randn((), requires_grad=True)  # one number per point: asked (and proved here)
    assert "x" in graph_facts.facts(torch.sin(s) * 3, {"x": _Item(s, ())})["one_function"]


def test_sparse_grad_read_in_one_walk_for_every_input():
    emb = torch.nn.Embedding(10, 3, sparse=True)
    dense = torch.randn(3, requires_grad=True)
    y = emb(torch.tensor([1, 2])) * dense
    found = graph_facts.facts(y, {"x": _Item(emb.weight, ()), "d": _Item(dense, ())})
    assert found["sparse_grads"] == frozenset({"x"})
