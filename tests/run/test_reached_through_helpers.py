"""What a custom Function reaches only through the user's own helper functions counts as
reached: a generator held in a helper module's globals (its forward calls ``draw``, which
calls ``_uniform``, which draws from the module's ``G``) is replayed and left as a plain run
leaves it, and a tensor a helper of its backward writes is put back and named. The helpers
live in a real module imported from a file, as a user's ``utils.py`` would."""
from __future__ import annotations

import importlib.util
import textwrap

import numpy
import pytest
import torch

import vjp_magic
from vjp_magic.core.errors import VJPUsageError
from vjp_magic.run.record import recording
from vjp_magic.run.refusals import NotReplayable
from vjp_magic.run.replay import build

HELPERS = textwrap.dedent('''
    import numpy as np
    import torch
    G = torch.Generator().manual_seed(3)
    R = np.random.default_rng(4)
    T = torch.linspace(1., 2., 3)
    def _uniform(shape):
        return torch.rand(shape, generator=G) + torch.from_numpy(R.random(shape)).float()
    def draw(shape):
        return _uniform(shape) > 1.0
    def bump():
        T.mul_(2)
''')


@pytest.fixture
def helpers(tmp_path):
    path = tmp_path / "user_helpers.py"
    path.write_text(HELPERS)
    spec = importlib.util.spec_from_file_location("user_helpers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _mask(helpers):
    class Mask(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            m = helpers.draw(x.shape).to(x.dtype) * 2
            ctx.save_for_backward(m)
            return x * m

        @staticmethod
        def backward(ctx, g):
            m, = ctx.saved_tensors
            return g * m
    return Mask


def test_generators_reached_through_two_helper_calls_replay_the_cells_draws(helpers):
    Mask = _mask(helpers)
    g, r = torch.Generator().manual_seed(3), numpy.random.default_rng(4)
    x = torch.linspace(1.0, 2.0, 8, requires_grad=True)
    expected = (torch.rand(8, generator=g) + torch.from_numpy(r.random(8)).float() > 1.0) * 2 * x
    with recording() as rec:
        y = Mask.apply(x)
    assert torch.equal(y.detach(), expected.detach())
    replay = build(rec, {"x": x}, y)
    assert torch.equal(replay(x=x.detach()), y.detach())  # the cell's draws again
    assert torch.equal(helpers.G.get_state(), g.get_state())  # as a plain run leaves them
    assert helpers.R.bit_generator.state == r.bit_generator.state
    with pytest.raises(NotReplayable, match="Mask .* random draws"):
        replay.with_dtype(torch.float64)
    assert torch.equal(helpers.G.get_state(), g.get_state())


def test_a_tensor_a_backwards_helper_writes_is_put_back_and_named(helpers):
    class Bumps(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return 3 * x

        @staticmethod
        def backward(ctx, g):
            helpers.bump()
            return 3 * g

    x = torch.linspace(1., 2., 3, requires_grad=True)
    with pytest.raises(VJPUsageError, match="Bumps's backward writes"):
        vjp_magic.differentiate(Bumps.apply(x), x)
    assert torch.equal(helpers.T, torch.linspace(1., 2., 3)) and helpers.T._version == 0


def test_library_functions_are_not_followed():
    from vjp_magic.core.reach import read_by

    def uses_torch(x):
        return torch.nn.functional.relu(x)

    read = read_by(uses_torch)
    assert torch.nn.functional.relu in read  # what it names is read ...
    assert not any(isinstance(v, torch.Tensor) for v in read)  # ... library globals are not
