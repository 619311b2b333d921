"""reentrant.judged_once: one walk of a graph serves refuse_recomputing and refuse_reentrant
within one entry point's start, and nothing is kept past it (s36 D8)."""
import pytest
import torch
from custom_functions import Twice

from vjp_magic.core import reentrant
from vjp_magic.core.errors import VJPUsageError


def _counting(monkeypatch):
    walks = []
    real = reentrant.walk_nodes

    def walk(roots, *args, **kwargs):
        walks.append(roots)
        return real(roots, *args, **kwargs)

    monkeypatch.setattr(reentrant, "walk_nodes", walk)
    return walks


def test_one_walk_for_both_judgements_inside(monkeypatch):
    walks = _counting(monkeypatch)
    x = torch.randn(4, requires_grad=True)
    y = torch.tanh(x * 2)
    with reentrant.judged_once():
        reentrant.refuse_recomputing(y, "y", "advice")
        reentrant.refuse_reentrant(y, "y")
    assert len(walks) == 1
    reentrant.refuse_reentrant(y, "y")  # outside: walked again
    assert len(walks) == 2


def test_nothing_kept_past_the_scope():
    """A ctx given a dispatching subclass after one scope is seen by the next judgement."""
    class Dispatching(torch.Tensor):
        @classmethod
        def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    x = torch.randn(3, requires_grad=True)
    y = Twice.apply(x)
    with reentrant.judged_once():
        reentrant.refuse_reentrant(y, "y")
    y.grad_fn.held = torch.Tensor._make_subclass(Dispatching, torch.zeros(2))
    with pytest.raises(VJPUsageError, match="__torch_dispatch__"):
        with reentrant.judged_once():
            reentrant.refuse_reentrant(y, "y")


def test_a_hooked_graph_is_still_refused_inside(monkeypatch):
    walks = _counting(monkeypatch)
    x = torch.randn(4, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
        y = torch.sin(x)
    with reentrant.judged_once():
        with pytest.raises(VJPUsageError, match="saved_tensors_hooks"):
            reentrant.refuse_recomputing(y, "y", "advice")
        reentrant.refuse_reentrant(y, "y")  # (no reentrant node: passes, same walk)
        with pytest.raises(VJPUsageError, match="saved_tensors_hooks"):
            reentrant.refuse_recomputing(y, "y", "advice")
    assert len(walks) == 1
