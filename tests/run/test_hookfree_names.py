"""gradient_hooks names a hooked tensor by the name the namespace gives it, and reads the
namespace only when the record holds a hook."""
import torch

from vjp_magic.run.hookfree import gradient_hooks
from vjp_magic.run.record import recording


class Exploding(dict):
    def items(self):
        raise AssertionError("the namespace was read with no hook in the record")


def test_a_hooked_tensor_is_named_from_the_namespace():
    x = torch.randn(3, requires_grad=True)
    with recording() as rec:
        h = x * 2
        h.register_hook(lambda g: g)
        y = h.sin()
        k = x + 1
        k.register_hook(lambda g: g)  # not on y's way
    assert gradient_hooks(rec, {"x": x}, y, {"h": h, "k": k, "y": y}) == ["h"]
    assert gradient_hooks(rec, {"x": x}, y, {}) == ["a tensor of shape (3,)"]


def test_no_hook_reads_no_namespace():
    x = torch.randn(3, requires_grad=True)
    with recording() as rec:
        y = (x * 2).sin()
    assert gradient_hooks(rec, {"x": x}, y, Exploding(y=y)) == []
