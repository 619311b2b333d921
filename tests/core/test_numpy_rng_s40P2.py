"""numpy's global generator saved and put back by its bytes (core.numpy_rng, session 40 P2):
the whole state as ``numpy.random.get_state`` reports it (the 624 key words, the position, the
cached Gaussian ``randn`` leaves) comes back, after draws, a reseeding, a bit generator swapped
in, nested guards and an analysis whose custom backward draws; the next draws are those a run
without the draws in between makes. Expected values: numpy's own get_state and draws."""
from __future__ import annotations

import itertools
import warnings

import numpy
import pytest
import torch

import vjp_magic
from vjp_magic.core import numpy_rng
from vjp_magic.core.quiet import generators_kept


@pytest.fixture(autouse=True)
def _global_generator_back():
    state = numpy.random.get_state(legacy=False)
    bits = numpy.random.mtrand._rand._bit_generator
    yield
    numpy.random.set_bit_generator(bits)
    numpy.random.set_state(state)


def _cached_gaussian_state():
    """A seeded global generator holding a cached Gaussian (randn drew a pair)."""
    numpy.random.seed(7)
    numpy.random.randn()
    state = numpy.random.get_state()
    assert state[3] == 1  # has_gauss: a draw now consumes it without moving the key
    return state


def _assert_same(got, expected) -> None:
    assert got[0] == expected[0] and numpy.array_equal(got[1], expected[1])
    assert got[2:] == expected[2:]  # position, has_gauss, gauss


def _next_draws():
    return numpy.random.randn(3), numpy.random.rand(5), numpy.random.randint(0, 10**9, 4)


def test_this_numpy_has_the_fast_layout():
    """The layout is found and checked here (else every save is get_state's, still exact)."""
    assert numpy_rng._LAYOUT is not None
    assert isinstance(numpy_rng.saved(), numpy_rng._Bytes)


@pytest.mark.parametrize("disturb", [
    lambda: numpy.random.randn(),  # the cached Gaussian alone, the key unmoved
    lambda: numpy.random.rand(1000),
    lambda: (numpy.random.randn(5), numpy.random.standard_normal(3)),
    lambda: numpy.random.seed(123),
    lambda: numpy.random.set_state(("MT19937", numpy.arange(624, dtype=numpy.uint32), 3,
                                    1, 2.5)),
])
def test_the_whole_state_comes_back(disturb):
    expected = _cached_gaussian_state()
    draws = _next_draws()
    numpy.random.set_state(expected)
    state = numpy_rng.saved()
    disturb()
    numpy_rng.restore(state)
    _assert_same(numpy.random.get_state(), expected)
    for got, want in zip(_next_draws(), draws):
        assert numpy.array_equal(got, want)


def test_a_bit_generator_swapped_in_is_swapped_out():
    expected = _cached_gaussian_state()
    bits = numpy.random.mtrand._rand._bit_generator
    state = numpy_rng.saved()
    numpy.random.set_bit_generator(numpy.random.PCG64(3))
    numpy.random.randn(4)
    numpy_rng.restore(state)
    assert numpy.random.mtrand._rand._bit_generator is bits
    _assert_same(numpy.random.get_state(), expected)


def test_another_bit_generator_is_saved_by_numpy_without_a_warning():
    numpy.random.set_bit_generator(numpy.random.PCG64(5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        state = numpy_rng.saved()
        draws = numpy.random.rand(4)
        numpy_rng.restore(state)
    assert not isinstance(state, numpy_rng._Bytes)
    assert numpy.array_equal(numpy.random.rand(4), draws)


def test_nested_guards_leave_the_state_of_the_outermost_entry():
    expected = _cached_gaussian_state()
    with generators_kept():
        numpy.random.randn()
        with generators_kept():
            numpy.random.rand(10)
            numpy.random.seed(1)
        numpy.random.randn(7)
    _assert_same(numpy.random.get_state(), expected)


class _Gaussian(torch.autograd.Function):
    """x**2 whose backward draws one Gaussian from numpy (the cached one, where there is one:
    the key does not move) and adds it times 0. Its calls are counted in an
    ``itertools.count``, whose state no put-back of the Python state a backward changes
    (core/user_effects, s43) reaches: a class attribute counter is put back."""

    calls = itertools.count()

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x ** 2

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        next(_Gaussian.calls)
        return 2 * g * x + 0 * float(numpy.random.randn())


def test_an_analysis_whose_backward_draws_the_cached_gaussian_leaves_it_cached():
    x = torch.linspace(1., 2., 6, dtype=torch.float64, requires_grad=True)
    expected = _cached_gaussian_state()
    before = next(_Gaussian.calls)
    r = vjp_magic.differentiate(_Gaussian.apply(x), x)
    assert next(_Gaussian.calls) > before + 1  # (the backward ran)
    torch.testing.assert_close(r.derivatives["x"], 2 * x.detach())
    _assert_same(numpy.random.get_state(), expected)


def test_without_the_layout_numpys_own_calls_bring_back_the_same(monkeypatch):
    monkeypatch.setattr(numpy_rng, "_LAYOUT", None)
    expected = _cached_gaussian_state()
    bits = numpy.random.mtrand._rand._bit_generator
    state = numpy_rng.saved()
    numpy.random.randn()
    numpy.random.set_bit_generator(numpy.random.PCG64(3))
    numpy_rng.restore(state)
    assert numpy.random.mtrand._rand._bit_generator is bits
    _assert_same(numpy.random.get_state(), expected)
