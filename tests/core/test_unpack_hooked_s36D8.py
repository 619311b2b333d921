"""graph_facts.unpack_hooked: the one answer to "does reading this saved value run an unpack
hook", failing closed where the hook cannot be seen (s36 D8)."""
import torch

from vjp_magic.core import graph_facts
from vjp_magic.core.graph_facts import raw_names, unpack_hooked


class _Blind:
    """A saved value as torch 2.5 shows it: no ``unpack_hook`` attribute."""


def _node_under(pack, unpack):
    x = torch.randn(4, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        y = x.sin()
    return y.grad_fn


def test_a_plain_saved_tensor_is_not_hooked():
    node = torch.randn(4, requires_grad=True).sin().grad_fn
    assert raw_names(type(node)) == ("_raw_saved_self",)
    assert not unpack_hooked(node._raw_saved_self)


def test_a_saved_tensors_hook_is_seen_without_running_it():
    ran = []
    node = _node_under(lambda t: t, lambda t: ran.append(1) or t)
    assert unpack_hooked(node._raw_saved_self)
    assert ran == []


def test_fails_closed_where_the_hook_cannot_be_seen():
    assert unpack_hooked(_Blind())
    assert unpack_hooked([None, _Blind()])


def test_nothing_saved_is_not_hooked():
    assert not unpack_hooked(None)
    assert not unpack_hooked([])
    assert not unpack_hooked((None,))


def test_lists_of_saved_tensors_are_read_item_by_item():
    class F(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a, b):
            ctx.save_for_backward(a, b)
            return a * b

        @staticmethod
        def backward(ctx, g):
            a, b = ctx.saved_tensors
            return g * b, g * a

    a, b = torch.randn(3, requires_grad=True), torch.randn(3)
    plain = F.apply(a, b).grad_fn
    assert raw_names(type(plain)) == ("_raw_saved_tensors",)
    assert not unpack_hooked(plain._raw_saved_tensors)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
        hooked = F.apply(a, b).grad_fn
    assert unpack_hooked(hooked._raw_saved_tensors)


def test_raw_names_are_the_class_names_not_a_ctx_attribute():
    class G(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a):
            ctx._raw_saved_mine = 1
            return a * 2

        @staticmethod
        def backward(ctx, g):
            return 2 * g

    node = G.apply(torch.randn(2, requires_grad=True)).grad_fn
    assert raw_names(type(node)) == ("_raw_saved_tensors",)


def test_the_walks_saved_read_stops_at_a_hook():
    """The one-function walk's saved-value read asks unpack_hooked: never through a hook."""
    ran = []
    node = _node_under(lambda t: t, lambda t: ran.append(1) or t)
    try:
        graph_facts._saved(node, "_saved_self")
    except graph_facts._Hooked:
        pass
    else:
        raise AssertionError("a hooked saved value was read")
    assert ran == []
