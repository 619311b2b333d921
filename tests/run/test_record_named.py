"""What the recorder reads off a function's name is remembered per function (not per custom
Function's apply, made per call), and reads the same on every call."""
import torch

from vjp_magic.run import record
from vjp_magic.run.record import FunctionApply, in_place_targets, recording, rng_states


class Double(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return 2 * x

    @staticmethod
    def backward(ctx, g):
        return 2 * g


def test_in_place_and_random_calls_read_alike_every_time():
    x = torch.zeros(3)
    for _ in range(3):
        assert in_place_targets(torch.Tensor.add_, (x, 1), {})[0] is x
        assert in_place_targets(torch.Tensor.__setitem__, (x, 0, 1.0), {})[0] is x
        assert in_place_targets(torch.relu, (x,), {"inplace": True})[0] is x
        assert in_place_targets(torch.add, (x, 1), {"out": x})[0] is x
        assert in_place_targets(torch.add, (x, 1), {}) == ()
        assert in_place_targets(torch.Tensor.requires_grad_, (x,), {}) == ()
        assert in_place_targets(torch.Tensor.__iadd__, (x, 1), {})[0] is x
        assert in_place_targets(torch.Tensor.__add__, (x, 1), {}) == ()
        assert rng_states(torch.nn.functional.dropout, [x]) is not None
        assert rng_states(torch.randn_like, [x]) is not None
        assert rng_states(torch.add, [x]) is None


def test_a_custom_functions_apply_is_not_kept():
    x = torch.ones(2, requires_grad=True)
    before = len(record._NAMED)
    with recording() as rec:
        for _ in range(5):
            Double.apply(x)
    assert [type(c.func) for c in rec.calls] == [FunctionApply] * 5
    assert not any(isinstance(f, FunctionApply) for f in record._NAMED)
    assert len(record._NAMED) <= before + 1


def test_call_sites_are_the_cells_lines():
    source = "y = torch.sin(x)\nz = (y * 2).sum()\n"
    code = compile(source, "<my cell>", "exec")
    ns = {"torch": torch, "x": torch.ones(3, requires_grad=True)}
    with recording() as rec:
        exec(code, ns)
    lines = [c.site[2] for c in rec.calls]
    assert lines == [1, 2, 2] and all(c.site[0].co_filename == "<my cell>" for c in rec.calls)
