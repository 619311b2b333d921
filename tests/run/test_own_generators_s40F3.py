"""A custom Function's forward that draws from the user's OWN generator (a torch.Generator, a
numpy default_rng, a random.Random, reached by a global name, a closure, apply's arguments or
only through a torch call's ``generator=``) is known to draw (G1-2): its float64 replay is
refused before it runs, its same-dtype replays draw the cell's numbers, and every generator
ends as a plain run leaves it. The expected states come from running the same draws plainly."""
from __future__ import annotations

import random

import numpy
import pytest
import torch

from vjp_magic.run.record import recording
from vjp_magic.run.refusals import NotReplayable
from vjp_magic.run.replay import build


def _functions(kind: str):
    """(a Function drawing from its own generator of ``kind``, that generator, extra args)."""
    gen = {"torch": lambda: torch.Generator().manual_seed(3),
           "numpy": lambda: numpy.random.default_rng(4),
           "legacy": lambda: numpy.random.RandomState(5),
           "random": lambda: random.Random(6),
           "hidden": lambda: torch.Generator().manual_seed(7)}[kind]()
    box = type("Box", (), {})()
    box.gen = gen  # "hidden": reached only as ``generator=`` of a torch call in the forward
    direct = None if kind == "hidden" else gen

    def mask(n, g):
        if isinstance(g, torch.Generator):
            return torch.rand(n, generator=g)
        if isinstance(g, random.Random):
            return torch.tensor([g.random() for _ in range(n)])
        return torch.tensor(g.random(n) if hasattr(g, "integers") else g.rand(n))

    class Mask(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, *rest):
            m = (mask(x.shape[0], box.gen if direct is None else direct) > 0.5).to(x.dtype) * 2
            ctx.save_for_backward(m)
            return x * m

        @staticmethod
        def backward(ctx, g):
            m, = ctx.saved_tensors
            return (g * m,) + (None,) * (len(ctx.needs_input_grad) - 1)

    return Mask, gen


def _state(gen):
    if isinstance(gen, torch.Generator):
        return gen.get_state()
    if isinstance(gen, numpy.random.Generator):
        return repr(gen.bit_generator.state)
    if isinstance(gen, numpy.random.RandomState):
        return gen.get_state()[1].copy(), gen.get_state()[2]
    return gen.getstate()


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, tuple) and isinstance(a[0], numpy.ndarray):
        return numpy.array_equal(a[0], b[0]) and a[1] == b[1]
    return a == b


KINDS = ["torch", "numpy", "legacy", "random", "hidden"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_forward_drawing_from_its_own_generator_replays_the_cells_draws(kind):
    Mask, gen = _functions(kind)
    plain_fn, plain_gen = _functions(kind)
    x = torch.linspace(1.0, 2.0, 40, requires_grad=True)
    expected = plain_fn.apply(x.detach())  # a plain run: one draw
    with recording() as rec:
        y = Mask.apply(x)
    assert torch.equal(y.detach(), expected)
    replay = build(rec, {"x": x}, y)
    assert torch.equal(replay(x=x.detach()), y.detach())  # the cell's mask again
    assert _equal(_state(gen), _state(plain_gen))  # the replay moved the generator back
    with pytest.raises(NotReplayable, match="Mask .* random draws"):
        replay.with_dtype(torch.float64)
    assert _equal(_state(gen), _state(plain_gen))


@pytest.mark.parametrize("where", ["argument", "closure"])
def test_the_generator_is_found_as_an_argument_and_in_a_closure(where):
    rng, plain = numpy.random.default_rng(8), numpy.random.default_rng(8)

    def make(g):
        class Scale(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x, given=None):
                ctx.s = float((given or g).random())
                return x * ctx.s

            @staticmethod
            def backward(ctx, grad):
                return grad * ctx.s, None
        return Scale

    Scale = make(None if where == "argument" else rng)
    x = torch.ones(3, requires_grad=True)
    with recording() as rec:
        y = Scale.apply(x, rng) if where == "argument" else Scale.apply(x)
    plain.random()
    replay = build(rec, {"x": x}, y)
    assert torch.equal(replay(x=x.detach()), y.detach())
    assert rng.bit_generator.state == plain.bit_generator.state
    with pytest.raises(NotReplayable, match="Scale .* random draws"):
        replay.with_dtype(torch.float64)


class _SometimesDraws(torch.autograd.Function):
    """x·(1 + 0·u), u drawn from its own generator only where some x is negative."""

    gen = torch.Generator().manual_seed(9)

    @staticmethod
    def forward(ctx, x):
        if bool((x < 0).any()):
            return x * (1 + 0 * torch.rand(x.shape, generator=_SometimesDraws.gen))
        return x * 1

    @staticmethod
    def backward(ctx, g):
        return g


@pytest.mark.parametrize("negative", [False, True])
def test_a_forward_that_draws_only_on_some_inputs_is_refused_only_where_it_drew(negative):
    x = torch.linspace(-1.0 if negative else 1.0, 2.0, 5, requires_grad=True)
    before = _SometimesDraws.gen.get_state()
    with recording() as rec:
        y = _SometimesDraws.apply(x)
    after = _SometimesDraws.gen.get_state()
    assert torch.equal(before, after) is not negative  # drew only with a negative entry
    replay = build(rec, {"x": x}, y)
    if negative:
        with pytest.raises(NotReplayable, match="_SometimesDraws .* random draws"):
            replay.with_dtype(torch.float64)
    else:
        wide = replay.with_dtype(torch.float64)  # drew nothing: nothing refused
        assert torch.equal(wide(x=x.detach().double()), x.detach().double())
    assert torch.equal(_SometimesDraws.gen.get_state(), after)


def test_a_torch_call_given_the_users_generator_replays_its_draws():
    g, plain = torch.Generator().manual_seed(10), torch.Generator().manual_seed(10)
    x = torch.linspace(1.0, 2.0, 6, requires_grad=True)
    with recording() as rec:
        y = x * torch.rand(6, generator=g)
    torch.rand(6, generator=plain)
    replay = build(rec, {"x": x}, y)
    assert torch.equal(replay(x=x.detach()), y.detach())
    assert torch.equal(g.get_state(), plain.get_state())


OWN = '''
import random as _random
G = _random.Random(11)
class Pick(torch.autograd.Function):      # a hand-written dropout drawing from random.Random
    @staticmethod
    def forward(ctx, x):
        m = torch.tensor([2. * (G.random() > 0.5) for _ in range(x.shape[0])], dtype=x.dtype)
        ctx.save_for_backward(m); return x * m
    @staticmethod
    def backward(ctx, g): m, = ctx.saved_tensors; return g * m
'''


def test_gradcheck_refuses_a_forward_drawing_from_random_Random_before_it_reruns(ip, run_ok):
    run_ok(OWN)
    r = run_ok("%%vjp --gradcheck\nx = torch.linspace(1., 2., 6, requires_grad=True)\n"
               "y = (Pick.apply(x) ** 2).sum()")
    assert r.gradcheck.ok is None and "Pick" in r.gradcheck.note and "random draws" in \
        r.gradcheck.note
    plain = random.Random(11)
    [plain.random() for _ in range(6)]  # a plain run: one forward, six draws
    assert ip.user_ns["G"].getstate() == plain.getstate()
