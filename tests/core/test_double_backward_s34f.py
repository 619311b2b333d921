"""Only PyTorch's own "no double backward" errors send a double-backward shortcut to the path
without one (G14's s34 finding 7); a freed graph, out of memory or any other error (a bug of
ours) goes on up. The errors are PyTorch's, raised here by the real passes."""
import pytest
import torch
from torch.autograd.function import once_differentiable

from vjp_magic.core.torch_api import no_double_backward


class _Once(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x**2

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * x * grad


def _second_pass_error(make) -> BaseException:
    x = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    y = make(x)
    u = torch.ones_like(y, requires_grad=True)
    try:
        (g,) = torch.autograd.grad(y, x, u, create_graph=True)
        torch.autograd.grad(g.sum(), u)
    except (RuntimeError, NotImplementedError) as error:
        return error
    raise AssertionError("the double backward ran")


@pytest.mark.parametrize("make", [lambda x: torch.cdist(x, x + 1.0), _Once.apply],
                         ids=["cdist", "once-differentiable"])
def test_pytorchs_missing_double_backward_is_recognised(make):
    assert no_double_backward(_second_pass_error(make))


def test_a_freed_graph_is_not_a_missing_double_backward():
    x = torch.randn(3, requires_grad=True)
    y = (x.exp() * 2).sum()
    y.backward()
    with pytest.raises(RuntimeError) as freed:
        y.backward()
    assert not no_double_backward(freed.value)


@pytest.mark.parametrize("error", [
    RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    torch.OutOfMemoryError("CUDA out of memory."),
    RuntimeError("The size of tensor a (3) must match the size of tensor b (4)"),
    NotImplementedError("a bug of ours"),
], ids=["oom-text", "oom", "shape-bug", "not-implemented-bug"])
def test_any_other_error_goes_on_up(error):
    assert not no_double_backward(error)
